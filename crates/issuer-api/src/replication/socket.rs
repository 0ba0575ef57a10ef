//! Confirming admissions on one node's Redis replicas (`REDIS_MIN_REPLICAS`, or Sentinel's),
//! in groups.
//!
//! WAIT confirms every write its connection made before it, and blocks that connection
//! while it waits. One WAIT per admission on the shared connection serialised every request
//! behind the replicas' round trips (3.4k req/s against 15.1k without, docs/performance.md).
//! So one task sends the WAITs, one at a time: each covers every admission that asked for
//! confirmation before it was sent, however many.
//!
//! Invariants:
//! - A write is confirmed only by a WAIT sent on the very socket that carried it, after its
//!   reply came back. A client that reconnects on its own would send the WAIT on a new
//!   socket, whose last write is none: WAIT returns at once, "confirming" a write the
//!   replicas may never get (and, after a failover, made on another server). So the
//!   admissions that need confirming run on a [`Socket`]: one connection at a time, numbered,
//!   replaced only when it broke, and an asker whose write went out on another number than
//!   the WAIT's is told "unknown" (503).
//! - A refusal that rests on an earlier write (ALREADY_ISSUED, SOLD_OUT) is as durable as
//!   that write, whoever made it: each WAIT follows a write of its own on the same socket
//!   (`CouponKeys::replication_fence`), and a replica that acknowledged it has every write
//!   the primary applied before it, the ones the refusal read among them.
//! - Each WAIT waits for the replicas `coupon_core::redis::replicas` requires now (under
//!   Sentinel, every replica the Sentinels know).

use std::sync::Arc;
use std::time::Duration;

use coupon_core::redis::connection::{Bound, Socket};
use coupon_core::redis::replicas::Required;
use redis::RedisError;
use tokio::sync::{mpsc, oneshot};

use crate::error::ApiError;

/// What one WAIT found: how many replicas confirmed, of how many it waited for.
type Confirmed = Result<(u32, u32), String>;
/// An asker: the socket its write went out on, and where its answer goes.
type Asker = (u64, oneshot::Sender<Confirmed>);

#[derive(Clone)]
pub struct Replication {
    timeout: Duration,
    socket: Arc<Socket>,
    askers: mpsc::UnboundedSender<Asker>,
}

impl Replication {
    /// Starts the task that sends the WAITs on `socket`, which the admissions needing
    /// confirmation use too; `fence` is the key each WAIT's own write goes to. The tasks
    /// end when the last handle is dropped.
    pub fn start(socket: Socket, fence: String, required: Required, timeout: Duration) -> Self {
        let socket = Arc::new(socket);
        let (askers, waiting) = mpsc::unbounded_channel();
        // The count (and under Sentinel its recount) lives as long as the task that reads
        // it, which ends with the last handle (the channel closes).
        tokio::spawn(confirm_in_groups(
            socket.clone(),
            fence,
            required,
            timeout,
            waiting,
        ));
        Self {
            timeout,
            socket,
            askers,
        }
    }

    /// Longest one confirmation (WAIT) may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The socket to send a write that will need confirming on.
    pub async fn connection(&self) -> Result<Bound, ApiError> {
        Ok(self.socket.get().await?)
    }

    /// Reports an error met on a socket [`Replication::connection`] gave.
    pub fn failed(&self, generation: u64, err: &RedisError) {
        self.socket.failed(generation, err);
    }

    /// Returns once the required replicas have everything the primary applied before this call,
    /// as seen on socket `generation` (the caller's write, or the writes its refusal read);
    /// 503 if fewer confirm within the timeout, or if that socket is gone.
    pub async fn confirm(&self, generation: u64) -> Result<(), ApiError> {
        let (tell, told) = oneshot::channel();
        self.askers
            .send((generation, tell))
            .map_err(|_| ApiError::Internal("the replication task has stopped".into()))?;
        let (confirmed, required) = told
            .await
            .map_err(|_| ApiError::Internal("the replication task has stopped".into()))?
            .map_err(|err| ApiError::unavailable("redis replicas", err))?;
        if confirmed < required {
            return Err(ApiError::unavailable(
                "redis replicas",
                format!(
                    "{confirmed} of {required} replicas confirmed the admission in {:?}",
                    self.timeout
                ),
            ));
        }
        Ok(())
    }
}

async fn confirm_in_groups(
    socket: Arc<Socket>,
    fence: String,
    required: Required,
    timeout: Duration,
    mut waiting: mpsc::UnboundedReceiver<Asker>,
) {
    while let Some(first) = waiting.recv().await {
        let mut group = vec![first];
        while let Ok(next) = waiting.try_recv() {
            group.push(next);
        }
        let min = required.count();
        let confirmed: Result<(u64, u32), String> = async {
            let mut bound = socket.get().await.map_err(|err| err.to_string())?;
            let (_, count): (i64, u32) = redis::pipe()
                .incr(&fence, 1)
                .cmd("WAIT")
                .arg(min)
                .arg(timeout.as_millis() as u64)
                .query_async(&mut bound.connection)
                .await
                .map_err(|err| {
                    socket.failed(bound.generation, &err);
                    err.to_string()
                })?;
            Ok((bound.generation, count))
        }
        .await;
        for (generation, asker) in group {
            let answer = match &confirmed {
                Ok((waited_on, count)) if *waited_on == generation => Ok((*count, min)),
                Ok(_) => Err("the socket the write went out on broke before its WAIT: \
                              whether the replicas have it is unknown"
                    .to_owned()),
                Err(err) => Err(err.clone()),
            };
            // An asker that went away needs no answer.
            let _ = asker.send(answer);
        }
    }
}
