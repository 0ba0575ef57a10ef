//! Issuing one coupon to one user: admit in Redis, publish to Kafka, answer.
//!
//! Invariant: a SUCCESS answer is given only after the broker acknowledged the event, and
//! a slot whose event could not be published is given back, so that stock never leaks.

use coupon_core::admission::{AdmissionScripts, AdmitReply};
use coupon_core::db::coupons::find_coupon;
use coupon_core::db::pool::PgPool;
use coupon_core::domain::{Admission, CouponId, UserId};
use coupon_core::event::IssueEvent;
use redis::aio::ConnectionManager;

use crate::error::ApiError;
use crate::publisher::Publisher;

#[derive(Clone)]
pub struct Issuer {
    pub redis: ConnectionManager,
    pub scripts: AdmissionScripts,
    pub pool: PgPool,
    pub publisher: Publisher,
}

impl Issuer {
    /// Runs the whole decision on its own task: if the client goes away mid-request, the
    /// admission and its publish (or release) still finish, so no slot is left taken
    /// without an event behind it.
    pub async fn issue(&self, coupon: CouponId, user: UserId) -> Result<Admission, ApiError> {
        let this = self.clone();
        tokio::spawn(async move { this.admit_and_publish(coupon, user).await })
            .await
            .map_err(|e| ApiError::Internal(e.into()))?
    }

    async fn admit_and_publish(
        &self,
        coupon: CouponId,
        user: UserId,
    ) -> Result<Admission, ApiError> {
        let mut redis = self.redis.clone();
        let mut reply = self.scripts.admit(&mut redis, coupon, user).await?;
        if reply == AdmitReply::NotLoaded {
            self.load_coupon(coupon).await?;
            reply = self.scripts.admit(&mut redis, coupon, user).await?;
        }
        let AdmitReply::Decided { admission, at } = reply else {
            return Err(ApiError::unavailable(
                "redis",
                "coupon state vanished from Redis while loading it",
            ));
        };
        if admission != Admission::Success {
            return Ok(admission);
        }

        let event = IssueEvent::new(coupon, user, at);
        match self.publisher.publish(&event).await {
            Ok(()) => Ok(Admission::Success),
            Err(publish_err) => {
                if let Err(release_err) = self.scripts.release(&mut redis, coupon, user).await {
                    tracing::error!(
                        coupon = %coupon, user = %user, error = %release_err,
                        "publish failed and the slot could not be released"
                    );
                }
                Err(ApiError::unavailable("kafka", publish_err))
            }
        }
    }

    /// Redis has no state for this coupon (first request after a Redis restart, say):
    /// cache its quantity and window from PostgreSQL, without touching any issued set.
    async fn load_coupon(&self, id: CouponId) -> Result<(), ApiError> {
        let mut conn = self.pool.get().await?;
        let coupon = find_coupon(&mut conn, id)
            .await?
            .ok_or(ApiError::CouponNotFound(id.get()))?;
        drop(conn);
        let wrote = self
            .scripts
            .load_meta(&mut self.redis.clone(), &coupon)
            .await?;
        tracing::info!(coupon = %id, wrote, "loaded coupon meta into Redis from PostgreSQL");
        Ok(())
    }
}
