//! A coupon's quantity raised during its sale (the operators' action): PostgreSQL first, then
//! Redis, as `coupon_core::db::raise` says and `coupon-core/tests/bucket_model.rs` checks.
//!
//! The API that raises lands the raise in Redis at once, and answers whether it did. A raise
//! it could not land (its coupon's state, or one of its buckets, is being rebuilt; Redis
//! failed; the API died) stays recorded in PostgreSQL as not landed, and every API's lander
//! lands it within a second of Redis being able to hold it.

use std::time::Duration;

use coupon_core::buckets::mover::{MoveError, Mover};
use coupon_core::db::raise::{
    RaiseRefused, Raised, raise_quantity, record_landed, unlanded_raises,
};
use coupon_core::domain::CouponId;
use tokio_util::sync::CancellationToken;

use super::Issuer;
use crate::error::ApiError;
use crate::layouts::Layout;

/// How often each API looks for raises not landed yet.
const LAND_EVERY: Duration = Duration::from_secs(1);

/// Where a raise stands once the API answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Raise {
    /// Redis holds the new quantity: admission sells it now.
    Landed(Raised),
    /// PostgreSQL holds it, and Redis will once the coupon's state is open again (the
    /// landers see to it).
    Landing(Raised),
}

impl Issuer {
    /// Raises `coupon`'s quantity to `quantity` (the same quantity again lands a raise that
    /// did not land before), then lands it in Redis.
    pub async fn raise_quantity(&self, coupon: CouponId, quantity: i64) -> Result<Raise, ApiError> {
        let raised = {
            let mut db = self.pool.get().await?;
            raise_quantity(&mut db, coupon, quantity).await?
        };
        let raised = raised.map_err(|refused| match refused {
            RaiseRefused::NotFound(id) => ApiError::CouponNotFound(id),
            below @ RaiseRefused::Below { .. } => ApiError::Conflict(below.to_string()),
        })?;
        // The coupon's read is kept a second: the next one shows the new quantity.
        self.coupon_reads.forget(coupon);
        Ok(if self.land(&raised).await? {
            Raise::Landed(raised)
        } else {
            Raise::Landing(raised)
        })
    }

    /// Lands `raised` in Redis and records it: false if the coupon's state is not open now
    /// (not loaded, or a bucket not verified under the stamps known here), for a later try.
    async fn land(&self, raised: &Raised) -> Result<bool, ApiError> {
        let coupon = raised.coupon;
        let mut redis = self.redis.clone();
        match self.layouts.get(coupon).await? {
            None => Err(ApiError::CouponNotFound(coupon.get())),
            Some(Layout::Single) => {
                if !self
                    .scripts
                    .raise_quantity(&mut redis, coupon, raised.quantity)
                    .await?
                {
                    return Ok(false);
                }
                let mut db = self.pool.get().await?;
                record_landed(&mut db, coupon, raised.quantity).await?;
                tracing::info!(%coupon, quantity = raised.quantity, "raised quantity landed");
                Ok(true)
            }
            Some(Layout::Buckets(places)) => {
                let mover = Mover {
                    places: &places,
                    pool: &self.pool,
                    owner: self.layouts.owner(),
                };
                match mover.land(&mut redis, raised).await {
                    Ok(_) => Ok(true),
                    // Its stamps are read again at the next try; a closed bucket's own
                    // requests start its rebuild.
                    Err(MoveError::Unverified(_)) => {
                        self.layouts.forget(coupon);
                        Ok(false)
                    }
                    Err(err) => Err(err.into()),
                }
            }
        }
    }

    /// Until `stop`: lands every raise and every change of settings (`settings.rs`) that
    /// PostgreSQL has not recorded as landed (its API died or could not land it), each with
    /// whatever PostgreSQL holds then.
    pub async fn land_raises(&self, stop: CancellationToken) {
        loop {
            if let Err(err) = self.land_unlanded().await {
                tracing::warn!(error = %err, "cannot land raised quantities now; again shortly");
            }
            if let Err(err) = self.land_unlanded_settings().await {
                tracing::warn!(error = %err, "cannot land coupon settings now; again shortly");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(LAND_EVERY) => {}
            }
        }
    }

    /// One pass of [`Issuer::land_raises`]: how many raises landed.
    pub async fn land_unlanded(&self) -> Result<usize, ApiError> {
        let coupons = unlanded_raises(&mut *self.pool.get().await?).await?;
        let mut landed = 0;
        for coupon in coupons {
            let raised = {
                let mut db = self.pool.get().await?;
                coupon_core::db::raise::raised(&mut db, coupon).await?
            };
            let Some(raised) = raised else { continue };
            match self.land(&raised).await {
                Ok(true) => landed += 1,
                Ok(false) => {
                    tracing::info!(%coupon, "raised quantity not landed yet: the coupon's state is not open")
                }
                Err(err) => {
                    tracing::warn!(%coupon, error = %err, "raised quantity not landed now")
                }
            }
        }
        Ok(landed)
    }
}
