//! Keeping the registry of coupons with work complete (`coupon_core::redis::registry`): a
//! registry whose instance changed since it was last found complete (a restart, a replica
//! promoted) may have lost registrations, and a coupon missing from it is never reconciled
//! (Kafka mode) nor read (the Redis queue mode). Each API looks once a second, and completes
//! it from PostgreSQL when it must. On a cluster this is what keeps the loss of the
//! registry's shard from dropping coupons whose own shards are healthy: nothing sends those
//! through a rebuild, which would register them again.

use std::time::Duration;

use coupon_core::db::coupons::coupons_with_work;
use coupon_core::domain::CouponId;
use tokio_util::sync::CancellationToken;

use super::Issuer;
use crate::error::ApiError;

/// How often each API asks whether the registry is still the one found complete.
const REGISTRY_CHECK: Duration = Duration::from_secs(1);

impl Issuer {
    /// Until `stop`: completes the registry whenever its instance changed.
    pub async fn watch_registry(&self, stop: CancellationToken) {
        loop {
            if let Err(err) = self.complete_registry().await {
                tracing::warn!(error = %err, "cannot check the registry of coupons with work; again shortly");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(REGISTRY_CHECK) => {}
            }
        }
    }

    /// Registers again every coupon that may have work, if the registry's instance is not
    /// the one it was last found complete under; returns how many were registered. Another
    /// API doing the same at once only registers them twice (a registration is a new
    /// generation, and a retire judged on the older one waits for the next pass).
    pub async fn complete_registry(&self) -> Result<usize, ApiError> {
        let mut redis = self.redis.clone();
        let registry = self.scripts.registry();
        let Some(epoch) = registry.unchecked(&mut redis).await? else {
            return Ok(0);
        };
        let ids = coupons_with_work(&mut *self.pool.get().await?).await?;
        for coupon in ids.iter().copied().filter_map(|id| CouponId::new(id).ok()) {
            registry.register(&mut redis, coupon).await?;
        }
        if registry.checked(&mut redis, &epoch).await? {
            tracing::info!(
                coupons = ids.len(),
                "the registry of coupons with work was completed from PostgreSQL"
            );
        }
        Ok(ids.len())
    }
}
