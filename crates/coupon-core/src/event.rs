//! The issue event: the one message that crosses from issuer-api to issuer-worker, and the
//! fence a rebuild writes beside it on the issue topic (Kafka mode), which carries none.
//!
//! Versioned JSON so that a consumer can refuse (and dead-letter) what it does not
//! understand instead of guessing. In the Redis queue mode the same fields travel as a
//! stream entry's field-value pairs (written by the admission script, which cannot format
//! dates: `issuedAt` is epoch milliseconds there).

use std::collections::HashMap;

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

/// The key of every message about `coupon` on the issue topic: one coupon's messages, its
/// events and its rebuilds' fences, share one partition and its order.
pub fn partition_key(coupon: CouponId) -> String {
    coupon.to_string()
}

/// A rebuild's fence on a coupon's partition (Kafka mode). Its acknowledgement means that
/// every send that reached the partition before it is committed, or never will be: the
/// high watermark only ever passes a message once every message before it is committed.
/// Workers skip it. It is marked by a header, its payload empty, so that no reader of
/// events can take it for one; a worker older than the fence dead-letters it, harmlessly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub coupon_id: CouponId,
}

impl Fence {
    /// The header naming a fence; its value is the coupon id.
    pub const HEADER: &'static str = "coupon-fence";

    pub fn key(&self) -> String {
        partition_key(self.coupon_id)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("not a v{EVENT_VERSION} issue event: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("unsupported event version {0} (this build reads v{EVENT_VERSION})")]
    UnsupportedVersion(u32),
    #[error("stream entry field {field:?} is missing or invalid")]
    BadField { field: &'static str },
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
        partition_key(self.coupon_id)
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

    /// The event as a stream entry's fields, in the order the admission script writes them.
    pub fn stream_fields(&self) -> [(&'static str, String); 5] {
        [
            ("v", self.v.to_string()),
            ("eventId", self.event_id.to_string()),
            ("couponId", self.coupon_id.to_string()),
            ("userId", self.user_id.to_string()),
            ("issuedAt", self.issued_at.timestamp_millis().to_string()),
        ]
    }

    pub fn from_stream_fields(fields: &HashMap<String, String>) -> Result<Self, EventError> {
        fn field<T: std::str::FromStr>(
            fields: &HashMap<String, String>,
            field: &'static str,
        ) -> Result<T, EventError> {
            fields
                .get(field)
                .and_then(|v| v.parse().ok())
                .ok_or(EventError::BadField { field })
        }
        let v: u32 = field(fields, "v")?;
        if v != EVENT_VERSION {
            return Err(EventError::UnsupportedVersion(v));
        }
        let issued_ms: i64 = field(fields, "issuedAt")?;
        Ok(Self {
            v,
            event_id: field(fields, "eventId")?,
            coupon_id: field(fields, "couponId")?,
            user_id: field(fields, "userId")?,
            issued_at: DateTime::from_timestamp_millis(issued_ms)
                .ok_or(EventError::BadField { field: "issuedAt" })?,
        })
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
    fn round_trips_as_stream_fields_and_refuses_bad_ones() {
        let event = IssueEvent::new(
            CouponId::new(42).unwrap(),
            UserId::new(7).unwrap(),
            DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
        );
        let fields: HashMap<String, String> = event
            .stream_fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(fields["issuedAt"], "1700000000123");
        assert_eq!(IssueEvent::from_stream_fields(&fields).unwrap(), event);

        let mut bad = fields.clone();
        bad.insert("userId".into(), "-3".into());
        assert!(matches!(
            IssueEvent::from_stream_fields(&bad),
            Err(EventError::BadField { field: "userId" })
        ));
        let mut v2 = fields;
        v2.insert("v".into(), "2".into());
        assert!(matches!(
            IssueEvent::from_stream_fields(&v2),
            Err(EventError::UnsupportedVersion(2))
        ));
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
