//! Confirming admissions on Redis replicas (`REDIS_MIN_REPLICAS`), in groups.
//!
//! WAIT confirms every write its connection made before it, and blocks that connection
//! while it waits. One WAIT per admission on the shared connection serialised every request
//! behind the replicas' round trips (3.4k req/s against 15.1k without, docs/performance.md).
//! So one task sends the WAITs, one at a time: each covers every admission that asked for
//! confirmation before it was sent, however many.
//!
//! Invariant: an admission is confirmed only by a WAIT sent after its script's reply came
//! back on the same connection. A caller asks only once its script has returned, and the
//! task takes the askers it has before it sends the WAIT.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};

use crate::error::ApiError;

type Confirmation = oneshot::Sender<Result<u32, String>>;

#[derive(Clone)]
pub struct Replication {
    min: u32,
    timeout: Duration,
    askers: mpsc::UnboundedSender<Confirmation>,
}

impl Replication {
    /// Starts the task that sends the WAITs on `redis`, the connection the admissions use.
    /// It ends when the last handle is dropped.
    pub fn start(redis: ConnectionManager, min: u32, timeout: Duration) -> Self {
        let (askers, waiting) = mpsc::unbounded_channel();
        tokio::spawn(confirm_in_groups(redis, min, timeout, waiting));
        Self {
            min,
            timeout,
            askers,
        }
    }

    /// Returns once `min` replicas have every write the connection made before this call
    /// (the caller's admission among them); 503 if fewer confirm within the timeout.
    pub async fn confirm(&self) -> Result<(), ApiError> {
        let (tell, told) = oneshot::channel();
        self.askers
            .send(tell)
            .map_err(|_| ApiError::Internal("the replication task has stopped".into()))?;
        let confirmed = told
            .await
            .map_err(|_| ApiError::Internal("the replication task has stopped".into()))?
            .map_err(|err| ApiError::unavailable("redis replicas", err))?;
        if confirmed < self.min {
            return Err(ApiError::unavailable(
                "redis replicas",
                format!(
                    "{confirmed} of {} replicas confirmed the admission in {:?}",
                    self.min, self.timeout
                ),
            ));
        }
        Ok(())
    }
}

async fn confirm_in_groups(
    mut redis: ConnectionManager,
    min: u32,
    timeout: Duration,
    mut waiting: mpsc::UnboundedReceiver<Confirmation>,
) {
    while let Some(first) = waiting.recv().await {
        let mut group = vec![first];
        while let Ok(next) = waiting.try_recv() {
            group.push(next);
        }
        let confirmed: Result<u32, String> = redis::cmd("WAIT")
            .arg(min)
            .arg(timeout.as_millis() as u64)
            .query_async(&mut redis)
            .await
            .map_err(|err| err.to_string());
        for asker in group {
            // An asker that went away needs no answer.
            let _ = asker.send(confirmed.clone());
        }
    }
}
