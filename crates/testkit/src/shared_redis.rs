//! What the script-level tests share: the real Redis, a coupon, and keys of their own.

// A panic here is the failure report wanted.
#![allow(clippy::unwrap_used)]

use coupon_core::buckets::BucketCount;
use coupon_core::domain::{Coupon, CouponId};
use redis::aio::MultiplexedConnection;

pub async fn redis() -> MultiplexedConnection {
    redis::Client::open(
        std::env::var("REDIS_URL")
            .unwrap_or_else(|_| coupon_core::config::DEFAULT_REDIS_URL.into()),
    )
    .unwrap()
    .get_multiplexed_async_connection()
    .await
    .unwrap()
}

/// Coupon 1, with no window.
pub fn coupon(name: &str, total_quantity: i64) -> Coupon {
    Coupon {
        id: CouponId::new(1).unwrap(),
        name: name.into(),
        total_quantity,
        persisted_count: 0,
        starts_at: None,
        ends_at: None,
        buckets: BucketCount::ONE,
        settings: Default::default(),
    }
}

/// A key prefix no other test uses.
pub fn prefix() -> String {
    format!("test-{}:", uuid::Uuid::new_v4().simple())
}
