//! Admission in Redis: the Lua scripts and the few reads that sit beside them.
//!
//! Invariant: for every coupon, `|issued set| <= quantity`, and a user is in the set at
//! most once. The whole check-and-add runs as one script, so no interleaving of
//! requests, replicas or connections can break it (the seed lost this race without Lua).

use chrono::{DateTime, Utc};
use redis::aio::ConnectionLike;
use redis::{AsyncCommands, RedisError, Script};

use crate::domain::{Admission, Coupon, CouponId, UserId};
use crate::redis_keys::CouponKeys;

/// What the admission script said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmitReply {
    /// Redis holds no meta for this coupon: load it from PostgreSQL, then ask again.
    NotLoaded,
    Decided {
        admission: Admission,
        /// Redis's clock at the decision.
        at: DateTime<Utc>,
    },
}

/// The scripts, hashed once; redis-rs runs them by EVALSHA and falls back to EVAL
/// (loading the script) when the server answers NOSCRIPT, e.g. after a Redis restart.
#[derive(Clone)]
pub struct AdmissionScripts {
    key_prefix: String,
    admit: Script,
    load_meta: Script,
}

impl AdmissionScripts {
    pub fn new(key_prefix: impl Into<String>) -> Self {
        Self {
            key_prefix: key_prefix.into(),
            admit: Script::new(include_str!("scripts/admission.lua")),
            load_meta: Script::new(include_str!("scripts/load_meta.lua")),
        }
    }

    pub fn keys(&self, coupon: CouponId) -> CouponKeys {
        CouponKeys::new(&self.key_prefix, coupon)
    }

    pub async fn admit<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        coupon: CouponId,
        user: UserId,
    ) -> Result<AdmitReply, RedisError> {
        let keys = self.keys(coupon);
        let (code, now_ms): (i64, i64) = self
            .admit
            .key(&keys.meta)
            .key(&keys.issued)
            .arg(user.get())
            .invoke_async(con)
            .await?;
        let admission = match code {
            0 => return Ok(AdmitReply::NotLoaded),
            1 => Admission::Success,
            2 => Admission::AlreadyIssued,
            3 => Admission::SoldOut,
            4 => Admission::NotStarted,
            5 => Admission::Ended,
            other => {
                return Err(RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "admission script returned an unknown code",
                    other.to_string(),
                )));
            }
        };
        let at = DateTime::from_timestamp_millis(now_ms).unwrap_or_else(Utc::now);
        Ok(AdmitReply::Decided { admission, at })
    }

    /// Caches quantity and window beside the issued set, never overwriting a meta that is
    /// already there. Returns whether this call wrote it.
    pub async fn load_meta<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        coupon: &Coupon,
    ) -> Result<bool, RedisError> {
        let millis = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp_millis().to_string());
        self.load_meta
            .key(self.keys(coupon.id).meta)
            .arg(coupon.total_quantity)
            .arg(millis(coupon.starts_at).unwrap_or_default())
            .arg(millis(coupon.ends_at).unwrap_or_default())
            .invoke_async(con)
            .await
    }

    /// Gives a reserved slot back. SREM touches only this user, so a concurrent
    /// admission of someone else is never undone.
    pub async fn release<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        coupon: CouponId,
        user: UserId,
    ) -> Result<bool, RedisError> {
        con.srem(self.keys(coupon).issued, user.get()).await
    }

    pub async fn admitted_count<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        coupon: CouponId,
    ) -> Result<i64, RedisError> {
        con.scard(self.keys(coupon).issued).await
    }

    pub async fn is_admitted<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        coupon: CouponId,
        user: UserId,
    ) -> Result<bool, RedisError> {
        con.sismember(self.keys(coupon).issued, user.get()).await
    }
}
