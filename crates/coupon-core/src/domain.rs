//! The words of the domain: ids, coupons, and what admission can answer.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::buckets::BucketCount;

/// Why a text or JSON value is not an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} must be a positive 64-bit integer")]
pub struct InvalidId(pub &'static str);

/// Ids are positive 64-bit integers everywhere (JSON, paths, events, database);
/// the newtypes keep coupon and user ids from being swapped and refuse 0 and negatives
/// at the edge, so nothing downstream has to check again.
macro_rules! positive_id {
    ($name:ident, $what:literal) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(i64);

        impl $name {
            pub fn new(value: i64) -> Result<Self, InvalidId> {
                if value > 0 {
                    Ok(Self(value))
                } else {
                    Err(InvalidId($what))
                }
            }

            pub fn get(self) -> i64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                // `i64::from_str` accepts a leading '+'; an id in a path should be plain digits.
                // One spelling per id: "007" is refused rather than read as 7, or two
                // accounts of an identity provider ("7" and "007") would share one slot and
                // read each other's status.
                if s.is_empty() || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(InvalidId($what));
                }
                s.parse::<i64>()
                    .map_err(|_| InvalidId($what))
                    .and_then(Self::new)
            }
        }

        /// JSON ids must be integers: `"7"`, `7.0` and `-7` are refused.
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let value =
                    i64::deserialize(d).map_err(|_| serde::de::Error::custom(InvalidId($what)))?;
                Self::new(value).map_err(serde::de::Error::custom)
            }
        }
    };
}

positive_id!(CouponId, "couponId");
positive_id!(UserId, "userId");

/// A coupon as PostgreSQL holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coupon {
    pub id: CouponId,
    pub name: String,
    pub total_quantity: i64,
    /// Rows in `coupon_issues`, kept by the worker in the same transaction as its inserts
    /// (the API's `issuedCount` counts the users Redis admitted).
    pub persisted_count: i64,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    /// How many buckets its stock is split into (`crate::buckets`); one for most coupons.
    pub buckets: BucketCount,
    /// What an operator set: paused or not, under the version that set it.
    pub settings: CouponSettings,
}

/// A coupon's operator settings as PostgreSQL holds them. Redis's meta takes them only from
/// a higher version (`coupon-core/tests/settings_model.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CouponSettings {
    /// Admission refuses new users (`PAUSED`) while set.
    pub paused: bool,
    /// Moved by every change; 0 for a coupon never changed.
    pub version: i64,
}

/// What the admission script decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Admission {
    /// A slot was taken for this user just now.
    Success,
    AlreadyIssued,
    SoldOut,
    NotStarted,
    Ended,
    /// An operator paused the coupon's admission.
    Paused,
}

impl Admission {
    pub const ALL: [Self; 6] = [
        Self::Success,
        Self::AlreadyIssued,
        Self::SoldOut,
        Self::NotStarted,
        Self::Ended,
        Self::Paused,
    ];

    /// The answer's name, as the HTTP contract's `result` and the metrics' label spell it
    /// (serde's rename above produces the same; a test holds them together).
    pub fn label(self) -> &'static str {
        match self {
            Self::Success => "SUCCESS",
            Self::AlreadyIssued => "ALREADY_ISSUED",
            Self::SoldOut => "SOLD_OUT",
            Self::NotStarted => "NOT_STARTED",
            Self::Ended => "ENDED",
            Self::Paused => "PAUSED",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admission_is_labelled_as_it_is_serialised() {
        for admission in Admission::ALL {
            assert_eq!(
                serde_json::to_string(&admission).unwrap(),
                format!("\"{}\"", admission.label())
            );
        }
    }

    #[test]
    fn ids_accept_positive_integers_only() {
        assert_eq!("42".parse::<CouponId>().map(CouponId::get), Ok(42));
        assert_eq!(
            "9223372036854775807".parse::<UserId>().map(UserId::get),
            Ok(i64::MAX)
        );
        for bad in [
            "0",
            "-1",
            "+1",
            "",
            "1.5",
            "abc",
            "9223372036854775808",
            " 1",
            // One user, one spelling: "007" and "7" would otherwise be two accounts of an
            // identity provider sharing one slot and reading each other's status.
            "007",
            "07",
            "00",
        ] {
            assert!(bad.parse::<UserId>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn json_ids_must_be_integers() {
        assert_eq!(
            serde_json::from_str::<UserId>("7").map(UserId::get).ok(),
            Some(7)
        );
        for bad in ["\"7\"", "7.0", "-7", "0", "null", "18446744073709551615"] {
            let err = serde_json::from_str::<UserId>(bad).expect_err(bad);
            assert!(
                err.to_string().contains("userId must be a positive"),
                "{err}"
            );
        }
    }
}

/// Where admitted issue events travel from issuer-api to issuer-worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    /// A Kafka topic: the API answers once the broker acknowledged the event.
    Kafka,
    /// A Redis Stream per coupon, appended by the admission script in the same atomic step.
    Redis,
}

impl std::fmt::Display for QueueKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Kafka => "kafka",
            Self::Redis => "redis",
        })
    }
}
