//! The issue event: the one message that crosses from issuer-api to issuer-worker.
//!
//! Versioned JSON so that a consumer can refuse (and dead-letter) what it does not
//! understand instead of guessing.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{CouponId, UserId};

/// The only schema version this build writes and reads.
pub const EVENT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssueEvent {
    pub v: u32,
    /// Unique per admission, so that a row can be traced back to the event that wrote it.
    pub event_id: Uuid,
    pub coupon_id: CouponId,
    pub user_id: UserId,
    /// When admission decided, by the Redis clock (shared by every API replica).
    pub issued_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("not a v{EVENT_VERSION} issue event: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("unsupported event version {0} (this build reads v{EVENT_VERSION})")]
    UnsupportedVersion(u32),
}

impl IssueEvent {
    pub fn new(coupon_id: CouponId, user_id: UserId, issued_at: DateTime<Utc>) -> Self {
        Self {
            v: EVENT_VERSION,
            event_id: Uuid::new_v4(),
            coupon_id,
            user_id,
            issued_at,
        }
    }

    /// The partitioning key: one coupon's events stay ordered on one partition.
    pub fn key(&self) -> String {
        self.coupon_id.to_string()
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an IssueEvent always serialises")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EventError> {
        let event: Self = serde_json::from_slice(bytes)?;
        if event.v != EVENT_VERSION {
            return Err(EventError::UnsupportedVersion(event.v));
        }
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_the_documented_shape() {
        let event = IssueEvent::new(
            CouponId::new(42).unwrap(),
            UserId::new(7).unwrap(),
            DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
        );
        let json: serde_json::Value = serde_json::from_slice(&event.encode()).unwrap();
        assert_eq!(json["v"], 1);
        assert_eq!(json["couponId"], 42);
        assert_eq!(json["userId"], 7);
        assert_eq!(json["issuedAt"], "2023-11-14T22:13:20.123Z");
        assert_eq!(json["eventId"], event.event_id.to_string());
        assert_eq!(IssueEvent::decode(&event.encode()).unwrap(), event);
        assert_eq!(event.key(), "42");
    }

    #[test]
    fn refuses_garbage_and_other_versions() {
        assert!(matches!(
            IssueEvent::decode(b"not json"),
            Err(EventError::Malformed(_))
        ));
        assert!(matches!(
            IssueEvent::decode(br#"{"v":1,"couponId":0,"userId":1}"#),
            Err(EventError::Malformed(_))
        ));
        let v2 = br#"{"v":2,"eventId":"6f1c4f1e-4a8e-4f1e-9a8e-4f1e4a8e4f1e","couponId":1,"userId":1,"issuedAt":"2024-01-01T00:00:00Z"}"#;
        assert!(matches!(
            IssueEvent::decode(v2),
            Err(EventError::UnsupportedVersion(2))
        ));
    }
}
