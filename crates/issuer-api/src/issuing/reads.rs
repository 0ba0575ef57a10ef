//! The reads the HTTP contract makes beside issuing: a coupon, a user's standing with it,
//! a user's coupons.

use chrono::{DateTime, Utc};
use coupon_core::db::coupons::{find_coupon, find_issue, user_coupons};
use coupon_core::db::failed_events;
use coupon_core::domain::{Coupon, CouponId, UserId};

use super::Issuer;
use crate::error::ApiError;

/// Where a user stands with a coupon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holding {
    /// The row is in PostgreSQL.
    Persisted(DateTime<Utc>),
    /// Admitted, but the database set the event aside for good, for this reason (the
    /// quantity guard's OVER_QUANTITY, say): no row will come without an operator.
    Refused(String),
    /// Admitted; the row is on its way.
    Admitted,
    None,
}

impl Issuer {
    /// The coupon as PostgreSQL holds it, and how many slots admission has taken.
    pub async fn coupon(&self, id: CouponId) -> Result<(Coupon, i64), ApiError> {
        let coupon = {
            let mut conn = self.pool.get().await?;
            find_coupon(&mut conn, id).await?
        }
        .ok_or(ApiError::CouponNotFound(id.get()))?;
        let admitted = self
            .scripts
            .admitted_count(&mut self.redis.clone(), id)
            .await?;
        Ok((coupon, admitted))
    }

    pub async fn holding(&self, coupon: CouponId, user: UserId) -> Result<Holding, ApiError> {
        let (issued_at, refusal) = {
            let mut conn = self.pool.get().await?;
            if find_coupon(&mut conn, coupon).await?.is_none() {
                return Err(ApiError::CouponNotFound(coupon.get()));
            }
            match find_issue(&mut conn, coupon, user).await? {
                Some(at) => (Some(at), None),
                None => (None, failed_events::refusal(&mut conn, coupon, user).await?),
            }
        };
        Ok(match (issued_at, refusal) {
            (Some(at), _) => Holding::Persisted(at),
            (None, Some(reason)) => Holding::Refused(reason),
            (None, None)
                if self
                    .scripts
                    .is_admitted(&mut self.redis.clone(), coupon, user)
                    .await? =>
            {
                Holding::Admitted
            }
            (None, None) => Holding::None,
        })
    }

    /// The user's coupons with their rows' times.
    pub async fn user_coupons(&self, user: UserId) -> Result<Vec<(i64, DateTime<Utc>)>, ApiError> {
        let mut conn = self.pool.get().await?;
        Ok(user_coupons(&mut conn, user).await?)
    }
}
