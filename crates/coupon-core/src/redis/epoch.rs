//! The Redis instance's epoch: its run id, and the replication id it had at the first call of
//! its function library since the library was last loaded (`scripts/epoch.lua`).
//!
//! Invariant: a coupon admits only on state verified under the instance that holds it now.
//! A Redis that restarted from an append-only file missing its tail, or a replica promoted
//! before it caught up, holds a rewound copy: the meta may still be there while the last
//! admissions are not, and admitting on it would sell their slots again. Each such instance
//! has a new epoch, so the coupon's meta, stamped with the epoch it was verified under
//! (`scripts/load_meta.lua`), no longer matches, and the admission script sends the request
//! down the rebuild path (`scripts/admission.lua`, code UNVERIFIED).
//!
//! Why the epoch, read by the scripts themselves: anything written into the keyspace (a
//! marker key, even one kept out of the AOF) comes back from an AOF rewrite or a snapshot,
//! and anything the API remembers can be stale the moment Redis restarts; the run id is the
//! server's own and cannot be rewound. The replication id joins it because a full sync keeps
//! the process and its run id but replaces the data set: a primary failed over while its
//! replica lagged, resynced from that replica and failed back to would otherwise find its
//! own old stamp, copied back, matching it (`failover_model.rs`, `Bug::EpochSurvivesResync`).
//!
//! The run id alone does not catch a node that kept running while another took over: a
//! failback to the old primary, or a node re-pointed at a stale one and promoted, keeps its
//! run id and a meta stamped with it, and the state is rewound all the same. So the meta
//! holds a [`Stamp`], the epoch and a nonce of one verification, and PostgreSQL keeps the
//! stamp in force for each coupon (`crate::db::coupons::redis_stamp`): it outlives any
//! Redis node and any API. An API passes the stamp in force with each admission; a meta
//! that carries another one (the old primary's, from before the takeover) does not admit.

use std::fmt;
use std::sync::Arc;

use redis::aio::ConnectionLike;
use redis::{FromRedisValue, RedisError, Value};

use crate::redis::library::{self, Function};

/// One verification of a coupon's Redis state: `<epoch>/<nonce>`, made by the scripts
/// that verify (`scripts/load_meta.lua`); compared whole, never taken apart here.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Stamp(Arc<str>);

impl Stamp {
    pub fn new(text: impl Into<Arc<str>>) -> Self {
        Self(text.into())
    }

    /// A new verification's stamp under `epoch`, with a nonce of its own (`load_meta.lua`
    /// builds the same shape for a creation's first load).
    pub fn fresh(epoch: &str) -> Self {
        Self::new(format!("{epoch}/{}", uuid::Uuid::new_v4().simple()))
    }

    /// The stamp of a state whose stamp in force is not known: no state carries it (a
    /// loaded state's stamp is never empty), so every step passed it is refused as
    /// unverified, and the state is rebuilt.
    pub fn unknown() -> Self {
        Self::new("")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromRedisValue for Stamp {
    fn from_redis_value(value: Value) -> Result<Self, redis::ParsingError> {
        String::from_redis_value(value).map(Self::new)
    }
}

/// The epoch of the instance that holds `key` (on a Redis Cluster, the primary of its slot:
/// a coupon's epoch is its own node's), as the scripts read it: through the library, whose
/// call goes where its first key lives.
pub async fn instance_epoch<C: ConnectionLike + Send + Sync>(
    con: &mut C,
    key: &str,
) -> Result<String, RedisError> {
    library::invoke(con, &library::call(Function::Epoch, &[key])).await
}
