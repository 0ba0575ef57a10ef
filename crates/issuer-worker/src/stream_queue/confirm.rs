//! An entry is persisted only once every replica that could be promoted has it.
//!
//! A worker can stay connected to a primary that was cut off from the Sentinels and
//! replaced (its socket never broke). That primary's stream may hold an entry the API
//! answered 503 (the replicas never confirmed it), which the promoted node never got: its
//! rebuild counts the slot free and sells it again. Persisting that entry would take the
//! slot of a user told yes, whose event the database guard then refuses.
//!
//! So each read (XREADGROUP, XAUTOCLAIM) is followed, in the same pipeline and so on the
//! same socket, by a write of its own to `CouponKeys::replication_fence` (on a cluster, to
//! the coupon's own fence, on its shard) and a WAIT for the replicas
//! `coupon_core::redis::replicas` requires. A replica that acknowledged the fence
//! has every write the primary applied before it, the entries just read among them. What
//! is not confirmed is left pending under this consumer, and claimed again (and confirmed
//! again) once idle for WORKER_CLAIM_IDLE_MS.
//!
//! The fence write renews the key's expiry (PEXPIRE) rather than INCR it as the API does:
//! INCR may allocate, so a Redis full to `maxmemory` under `noeviction` refuses it, and the
//! workers could then never drain the streams that filled it. PEXPIRE allocates nothing,
//! and is replicated only if the key exists: when it does not (a Redis that lost
//! everything), the read counts as unconfirmed and the key is created for the next one.

use std::time::Duration;

use coupon_core::redis::connection::RedisConnection;
use coupon_core::redis::replicas::Required;
use redis::{FromRedisValue, RedisError};

pub(super) struct Confirmation {
    pub(super) required: Required,
    pub(super) timeout: Duration,
}

/// A read's reply, and whether the replicas confirmed it.
pub(super) enum Read<T> {
    Confirmed(T),
    /// Fewer replicas than required acknowledged the read in time: what it read must not
    /// be persisted.
    Unconfirmed {
        reply: T,
        confirmed: u32,
        required: u32,
    },
}

/// The fence key's expiry, renewed by every confirmed read: long enough never to lapse
/// while a worker runs.
const FENCE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

impl Confirmation {
    /// Sends `read`, then the write to `fence` and the WAIT (for at most `wait`), in one
    /// pipeline on one connection to the node that holds `fence` (on a cluster, the coupon's
    /// own fence on its shard: the read's stream is there too).
    pub(super) async fn read<T: FromRedisValue>(
        &self,
        connection: &mut RedisConnection,
        read: redis::Cmd,
        fence: &str,
        wait: Duration,
    ) -> Result<Read<T>, RedisError> {
        let required = self.required.count();
        let mut pipe = redis::pipe();
        pipe.add_command(read)
            .pexpire(fence, FENCE_TTL.as_millis() as i64)
            .cmd("WAIT")
            .arg(required)
            .arg(wait.as_millis() as u64);
        let (reply, fenced, confirmed): (T, bool, u32) =
            connection.pipeline_on_node_of(fence, &pipe).await?;
        if !fenced {
            // Nothing was replicated, so the WAIT confirmed an older write of this socket's.
            let created: Result<i64, RedisError> =
                redis::cmd("INCR").arg(fence).query_async(connection).await;
            if let Err(err) = created {
                tracing::warn!(error = %err, "cannot create the replication fence");
            }
            return Ok(Read::Unconfirmed {
                reply,
                confirmed: 0,
                required,
            });
        }
        Ok(if confirmed >= required {
            Read::Confirmed(reply)
        } else {
            Read::Unconfirmed {
                reply,
                confirmed,
                required,
            }
        })
    }
}
