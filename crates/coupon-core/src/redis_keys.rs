//! Where a coupon lives in Redis.
//!
//! Every key of one coupon carries the coupon id as its hash tag (`coupon:{42}:…`), so
//! they sit on one Redis Cluster slot and one script may touch them all atomically.

use crate::domain::CouponId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CouponKeys {
    /// Hash: `quantity`, and `starts_at` / `ends_at` in epoch milliseconds when set.
    pub meta: String,
    /// Set of admitted user ids: its size is the number of slots taken.
    pub issued: String,
    /// Hash user id → event JSON: admitted users whose event may or may not have reached
    /// Kafka (publish timed out after sending). Their slot stays taken until the event is
    /// acknowledged on a retry or by the reconciler.
    pub in_doubt: String,
    /// Present while one process rebuilds this coupon's state from PostgreSQL.
    pub rebuilding: String,
}

impl CouponKeys {
    /// `prefix` lets several environments (or test runs) share one Redis without
    /// sharing coupons; it is prepended verbatim and may be empty.
    pub fn new(prefix: &str, coupon: CouponId) -> Self {
        Self {
            meta: format!("{prefix}coupon:{{{coupon}}}:meta"),
            issued: format!("{prefix}coupon:{{{coupon}}}:issued"),
            in_doubt: format!("{prefix}coupon:{{{coupon}}}:in_doubt"),
            rebuilding: format!("{prefix}coupon:{{{coupon}}}:rebuilding"),
        }
    }

    /// Set of coupon ids that have in-doubt entries, so the reconciler finds them without
    /// scanning the keyspace. A key of its own (another cluster slot), written after the
    /// coupon's entry.
    pub fn in_doubt_registry(prefix: &str) -> String {
        format!("{prefix}coupons:in_doubt")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_coupon_share_its_hash_tag() {
        let keys = CouponKeys::new("", CouponId::new(42).unwrap());
        assert_eq!(keys.meta, "coupon:{42}:meta");
        assert_eq!(keys.issued, "coupon:{42}:issued");
        assert_eq!(keys.in_doubt, "coupon:{42}:in_doubt");
        let prefixed = CouponKeys::new("test-1:", CouponId::new(7).unwrap());
        assert_eq!(prefixed.issued, "test-1:coupon:{7}:issued");
    }
}
