//! Admission in Redis: the Lua scripts and the few reads that sit beside them.
//!
//! Invariant: for every coupon, `|issued set| <= quantity`, and a user is in the set at
//! most once. The whole check-and-add runs as one script, so no interleaving of
//! requests, replicas or connections can break it (the seed lost this race without Lua).

use chrono::{DateTime, Utc};
use redis::aio::ConnectionLike;
use redis::{AsyncCommands, RedisError, Script};

use crate::domain::{Admission, Coupon, CouponId, UserId};
use crate::event::IssueEvent;
use crate::redis_keys::CouponKeys;

/// Users added per SADD when restoring a coupon's issued set, so one command never
/// blocks Redis for long.
const RESTORE_CHUNK: usize = 10_000;

/// What the admission script said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdmitReply {
    /// Redis holds no state for this coupon: rebuild it from PostgreSQL, then ask again.
    NotLoaded,
    Decided {
        admission: Admission,
        /// Redis's clock at the decision.
        at: DateTime<Utc>,
    },
    /// The user holds a slot whose event may not have reached Kafka: publish it again.
    InDoubt(IssueEvent),
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
        let (code, now_ms, pending): (i64, i64, String) = self
            .admit
            .key(&keys.meta)
            .key(&keys.issued)
            .key(&keys.in_doubt)
            .arg(user.get())
            .invoke_async(con)
            .await?;
        let admission = match code {
            0 => return Ok(AdmitReply::NotLoaded),
            6 => return decode_in_doubt(&pending).map(AdmitReply::InDoubt),
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

    /// Records that this user's event may or may not be in Kafka; their slot stays taken
    /// until the event is acknowledged (see [`Self::resolve_in_doubt`]).
    pub async fn mark_in_doubt<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        event: &IssueEvent,
    ) -> Result<(), RedisError> {
        let keys = self.keys(event.coupon_id);
        let json = String::from_utf8_lossy(&event.encode()).into_owned();
        let () = con.hset(&keys.in_doubt, event.user_id.get(), json).await?;
        con.sadd(
            CouponKeys::in_doubt_registry(&self.key_prefix),
            event.coupon_id.get(),
        )
        .await
    }

    /// The event is acknowledged: the user's slot is settled.
    pub async fn resolve_in_doubt<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        event: &IssueEvent,
    ) -> Result<(), RedisError> {
        con.hdel(self.keys(event.coupon_id).in_doubt, event.user_id.get())
            .await
    }

    /// Coupons that have in-doubt entries.
    pub async fn in_doubt_coupons<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
    ) -> Result<Vec<CouponId>, RedisError> {
        let ids: Vec<i64> = con
            .smembers(CouponKeys::in_doubt_registry(&self.key_prefix))
            .await?;
        Ok(ids
            .into_iter()
            .filter_map(|id| CouponId::new(id).ok())
            .collect())
    }

    /// The coupon's in-doubt events. When there are none left, the coupon leaves the
    /// registry; checking again after removing it means an entry marked meanwhile is
    /// never stranded outside the registry.
    pub async fn in_doubt_events<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        coupon: CouponId,
    ) -> Result<Vec<IssueEvent>, RedisError> {
        let keys = self.keys(coupon);
        let registry = CouponKeys::in_doubt_registry(&self.key_prefix);
        let mut entries: Vec<(i64, String)> = con.hgetall(&keys.in_doubt).await?;
        if entries.is_empty() {
            let () = con.srem(&registry, coupon.get()).await?;
            entries = con.hgetall(&keys.in_doubt).await?;
            if !entries.is_empty() {
                let () = con.sadd(&registry, coupon.get()).await?;
            }
        }
        entries
            .iter()
            .map(|(_, json)| decode_in_doubt(json))
            .collect()
    }

    /// Restores a coupon's state after Redis lost it: adds the users PostgreSQL (and the
    /// caller) know to hold the coupon, then the meta last, because a present meta is what
    /// opens admission. Users already in the set stay; nothing is removed.
    pub async fn restore<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        coupon: &Coupon,
        holders: &[i64],
    ) -> Result<(), RedisError> {
        let issued = self.keys(coupon.id).issued;
        for chunk in holders.chunks(RESTORE_CHUNK) {
            let _: i64 = con.sadd(&issued, chunk).await?;
        }
        self.load_meta(con, coupon).await.map(|_| ())
    }

    /// Takes the coupon's rebuild lease: only one process rebuilds a coupon at a time,
    /// and a crashed rebuilder's lease expires.
    pub async fn try_lease_rebuild<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        coupon: CouponId,
        lease: std::time::Duration,
    ) -> Result<bool, RedisError> {
        let taken: Option<String> = redis::cmd("SET")
            .arg(self.keys(coupon).rebuilding)
            .arg("1")
            .arg("NX")
            .arg("PX")
            .arg(lease.as_millis() as u64)
            .query_async(con)
            .await?;
        Ok(taken.is_some())
    }

    pub async fn end_rebuild_lease<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        coupon: CouponId,
    ) -> Result<(), RedisError> {
        con.del(self.keys(coupon).rebuilding).await
    }

    pub async fn has_meta<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        coupon: CouponId,
    ) -> Result<bool, RedisError> {
        con.exists(self.keys(coupon).meta).await
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

fn decode_in_doubt(json: &str) -> Result<IssueEvent, RedisError> {
    IssueEvent::decode(json.as_bytes()).map_err(|e| {
        RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "unreadable in-doubt entry",
            e.to_string(),
        ))
    })
}
