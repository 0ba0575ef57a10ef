//! An entry is persisted only once every replica that could be promoted has it.
//!
//! A worker can stay connected to a primary that was cut off from the Sentinels and
//! replaced (its socket never broke). That primary's stream may hold an entry the API
//! answered 503 (the replicas never confirmed it), which the promoted node never got: its
//! rebuild counts the slot free and sells it again. Persisting that entry would take the
//! slot of a user told yes, whose event the database guard then refuses.
//!
//! So each read (XREADGROUP, XAUTOCLAIM) is followed, in the same pipeline and so on the
//! same socket, by a write of its own (`CouponKeys::replication_fence`) and a WAIT for the
//! replicas `coupon_core::redis::replicas` requires. A replica that acknowledged the fence
//! has every write the primary applied before it, the entries just read among them. What
//! is not confirmed is left pending under this consumer, and claimed again (and confirmed
//! again) once idle for WORKER_CLAIM_IDLE_MS.

use std::time::Duration;

use coupon_core::redis::connection::RedisConnection;
use coupon_core::redis::replicas::Required;
use redis::{FromRedisValue, RedisError};

pub(super) struct Confirmation {
    pub(super) required: Required,
    pub(super) fence: String,
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

impl Confirmation {
    /// Sends `read`, then the fence write and the WAIT, in one pipeline on `connection`.
    pub(super) async fn read<T: FromRedisValue>(
        &self,
        connection: &mut RedisConnection,
        read: redis::Cmd,
    ) -> Result<Read<T>, RedisError> {
        let required = self.required.count();
        let (reply, confirmed): (T, u32) = redis::pipe()
            .add_command(read)
            .incr(&self.fence, 1)
            .ignore()
            .cmd("WAIT")
            .arg(required)
            .arg(self.timeout.as_millis() as u64)
            .query_async(connection)
            .await?;
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
