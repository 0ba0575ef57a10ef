//! The registry of coupons that need work: how the reconciler (Kafka mode) and the stream
//! workers (Redis queue mode) find a coupon without scanning the keyspace.
//!
//! Invariants:
//! - A coupon open for admission is registered. Registration comes before the meta that
//!   opens admission (`AdmissionScripts::load_meta`), so a failure in between leaves at
//!   worst a registered coupon that is not open, which costs one look per pass.
//! - A coupon leaves only when finished (`scripts/finished.lua`: admission can take no more
//!   slots and every slot taken is settled), and only if its registration is still the one
//!   judged finished: each registration has a generation never used before, and the retire
//!   compares it, so a rebuild that registered the coupon again meanwhile keeps it.
//!
//! - A registry that may have lost registrations is completed from PostgreSQL before it is
//!   trusted again: it records the epoch it was last found complete under, and an instance
//!   with another (restarted, or a replica promoted) has every coupon that may still have work
//!   registered again ([`Registry::unchecked`], [`Registry::checked`]). On one node a lost
//!   registration goes with its coupon's state, whose rebuild registers it again; on a
//!   cluster the registry's shard may lose it alone, and nothing else would bring it back.
//!
//! The registry is a key of its own (another cluster slot than the coupon's keys), so the
//! finished check and the retire are two scripts; the generation is what joins them.

use redis::aio::ConnectionLike;
use redis::{AsyncCommands, Cmd, FromRedisValue, ParsingError, RedisError, Value};

use crate::domain::CouponId;
use crate::domain::QueueKind;
use crate::redis::keys::CouponKeys;
use crate::redis::library::{self, Function};

/// The registry stream only wakes workers; a few recent entries are all it needs to keep.
const WAKE_STREAM_LEN: usize = 1_000;

/// One coupon's current registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub coupon: CouponId,
    pub generation: Generation,
}

/// A registration's generation, never given twice: `<epoch>.<count>`, the registry
/// instance's epoch (`scripts/epoch.lua`) and its counter. The counter alone rewinds when a
/// replica that lacked its last increments is promoted, and would give again a generation
/// a retire may have read on the lost primary (`a_generation_lost_in_a_failover_is_never_given_again`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation(String);

impl FromRedisValue for Generation {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        String::from_redis_value(value).map(Self)
    }
}

#[derive(Clone)]
pub struct Registry {
    key_prefix: String,
    queue: QueueKind,
}

impl Registry {
    pub fn new(key_prefix: impl Into<String>, queue: QueueKind) -> Self {
        Self {
            key_prefix: key_prefix.into(),
            queue,
        }
    }

    /// Registers the coupon (again, if it was), with a new generation. In the Redis queue
    /// mode a coupon new to the registry also wakes the blocked stream readers, so its
    /// first events are read at once rather than at their next refresh.
    pub async fn register<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        coupon: CouponId,
    ) -> Result<Registration, RedisError> {
        let mut call = self.call("register");
        call.arg(coupon.get());
        let (generation, added): (Generation, i64) = library::invoke(con, &call).await?;
        if added == 1 && self.queue == QueueKind::Redis {
            let _: String = con
                .xadd_maxlen(
                    CouponKeys::registry_stream(&self.key_prefix),
                    redis::streams::StreamMaxlen::Approx(WAKE_STREAM_LEN),
                    "*",
                    &[("couponId", coupon.get())],
                )
                .await?;
        }
        Ok(Registration { coupon, generation })
    }

    /// Every registered coupon, with its registration.
    pub async fn members<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
    ) -> Result<Vec<Registration>, RedisError> {
        let all: Vec<(i64, Generation)> = con
            .hgetall(CouponKeys::active_registry(&self.key_prefix))
            .await?;
        Ok(all
            .into_iter()
            .filter_map(|(id, generation)| {
                CouponId::new(id)
                    .ok()
                    .map(|coupon| Registration { coupon, generation })
            })
            .collect())
    }

    /// Whether the coupon needs no more work (see `scripts/finished.lua`); `group` is the
    /// stream workers' consumer group in the Redis queue mode.
    pub async fn is_finished<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        coupon: CouponId,
        group: &str,
    ) -> Result<bool, RedisError> {
        let keys = CouponKeys::new(&self.key_prefix, coupon);
        let mut call = library::call(Function::Finished, &keys.state(self.queue));
        call.arg(group);
        let finished: i64 = library::invoke(con, &call).await?;
        Ok(finished == 1)
    }

    /// Removes a finished coupon, unless it was registered again since `registration` was
    /// read. Returns whether it was removed.
    pub async fn retire<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        registration: Registration,
    ) -> Result<bool, RedisError> {
        let mut call = self.call("retire");
        call.arg(registration.coupon.get())
            .arg(&registration.generation.0);
        let removed: i64 = library::invoke(con, &call).await?;
        Ok(removed == 1)
    }

    /// The epoch of the registry's instance, if the registry was not found complete under
    /// it: the caller registers every coupon that may have work again, then reports that
    /// with [`Registry::checked`].
    pub async fn unchecked<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
    ) -> Result<Option<String>, RedisError> {
        library::invoke(con, &self.call("unchecked")).await
    }

    /// Records that every coupon that may have work was registered again under `epoch`;
    /// false if the instance changed meanwhile (then it is found unchecked again).
    pub async fn checked<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        epoch: &str,
    ) -> Result<bool, RedisError> {
        let mut call = self.call("checked");
        call.arg(epoch);
        let recorded: i64 = library::invoke(con, &call).await?;
        Ok(recorded == 1)
    }

    /// A call of the registry's function for `op`; its arguments follow.
    fn call(&self, op: &str) -> Cmd {
        let mut call = library::call(
            Function::Registry,
            &[
                &CouponKeys::active_registry(&self.key_prefix),
                &CouponKeys::registry_generation(&self.key_prefix),
                &CouponKeys::registry_checked(&self.key_prefix),
            ],
        );
        call.arg(op);
        call
    }

    /// Retires the coupon if it is finished; returns whether it left the registry.
    pub async fn retire_if_finished<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        registration: Registration,
        group: &str,
    ) -> Result<bool, RedisError> {
        if !self.is_finished(con, registration.coupon, group).await? {
            return Ok(false);
        }
        let coupon = registration.coupon;
        let retired = self.retire(con, registration).await?;
        if retired {
            tracing::info!(%coupon, "coupon finished: it leaves the registry");
        }
        Ok(retired)
    }
}
