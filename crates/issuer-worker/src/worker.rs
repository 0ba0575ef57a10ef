//! The worker loop: collect a batch, persist it, dead-letter what failed, acknowledge.
//!
//! Invariant: a batch is acknowledged to its queue (offsets committed, stream entries
//! XACKed) only after every event in it is a row or a failed event in PostgreSQL. A crash
//! anywhere delivers the unacknowledged events again, and the idempotent sink makes the
//! redelivery harmless. This loop is the same for every queue; only `IssueQueue` differs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use coupon_core::db::batch_insert::{BatchOutcome, FailedEvent, FailureReason, persist_isolating};
use coupon_core::db::pool::PgPool;
use coupon_core::db::redrive::{Redriven, redrive_due};
use coupon_core::domain::QueueKind;
use coupon_core::startup::prepare;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Config;
use crate::kafka_queue::KafkaQueue;
use crate::metrics::{self, Metrics, OperationLabels, ReasonLabels};
use crate::ops::OpsServer;
use crate::queue::{Batch, IssueQueue};
use crate::stream_queue::StreamQueue;

/// After the shutdown signal, how long the batch in hand may keep retrying before it is
/// abandoned unacknowledged (it will be delivered again, to whoever consumes next).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
enum SinkError {
    #[error("no PostgreSQL connection: {0}")]
    Pool(#[from] coupon_core::db::pool::PoolError),
    #[error("batch insert failed: {0}")]
    Query(#[from] diesel::result::Error),
}

/// A worker on the queue its configuration names.
pub struct Worker {
    config: Config,
    pool: PgPool,
    queue: Queue,
    metrics: Arc<Metrics>,
    ops: Option<OpsServer>,
}

enum Queue {
    Kafka(KafkaQueue),
    // Boxed only to keep the two variants of similar size; there is one per process.
    Redis(Box<StreamQueue>),
}

impl Worker {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let kafka = (config.queue == QueueKind::Kafka).then_some(&config.kafka);
        prepare(&config.database.target()?, kafka).await?;
        let queue = match config.queue {
            QueueKind::Kafka => Queue::Kafka(KafkaQueue::new(
                &config.kafka,
                &config.group_id,
                config.instance_id.as_deref(),
            )?),
            QueueKind::Redis => {
                // Under Sentinel, or with REDIS_MIN_REPLICAS, an entry is persisted only
                // once the replicas have it (`stream_queue::confirm`).
                let required = config
                    .replicas
                    .required(&config.redis, QueueKind::Redis)
                    .await?;
                Queue::Redis(Box::new(StreamQueue::connect(&config, required).await?))
            }
        };
        let metrics = Arc::new(Metrics::default());
        let ops = match config.metrics_listen {
            Some(listen) => Some(OpsServer::start(listen, metrics.clone())?),
            None => None,
        };
        Ok(Self {
            pool: config.database.pool()?,
            queue,
            config,
            metrics,
            ops,
        })
    }

    /// Where `/metrics` is served, when WORKER_METRICS_LISTEN asked for it.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().map(OpsServer::addr)
    }

    /// Runs until `shutdown` is cancelled: then finishes the batch in hand, acknowledges
    /// it, and hands over to the other workers.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(
            queue = %self.config.queue, group = %self.config.group_id,
            batch_size = self.config.batch_size, linger_ms = self.config.batch_linger_ms,
            "issuer-worker consuming"
        );
        let redriving = tokio::spawn(redrive_failed(
            self.pool.clone(),
            Duration::from_millis(self.config.redrive_interval_ms),
            shutdown.clone(),
        ));
        match &self.queue {
            Queue::Kafka(queue) => self.consume(queue, &shutdown).await?,
            Queue::Redis(queue) => self.consume(queue.as_ref(), &shutdown).await?,
        }
        redriving.await?;
        if let Some(ops) = self.ops {
            ops.stop().await?;
        }
        tracing::info!("issuer-worker stopped");
        Ok(())
    }

    async fn consume<Q: IssueQueue>(
        &self,
        queue: &Q,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let linger = Duration::from_millis(self.config.batch_linger_ms);
        while !shutdown.is_cancelled() {
            let batch = queue
                .collect(self.config.batch_size as usize, linger, shutdown)
                .await;
            if batch.len > 0 {
                self.process(queue, batch, shutdown).await;
            }
        }
        // Leaving is a courtesy: a Kafka member that does not leave is dropped after its
        // session, and a stream consumer's name is removed by the others once silent. What it
        // persisted is acknowledged already; what it did not is claimed.
        if let Err(err) = queue.leave().await {
            tracing::warn!(error = %err, "could not leave the group cleanly; the others will drop this member");
        }
        Ok(())
    }

    async fn process<Q: IssueQueue>(
        &self,
        queue: &Q,
        batch: Batch<Q::Receipt>,
        shutdown: &CancellationToken,
    ) {
        let started = Instant::now();
        let span = tracing::debug_span!("batch", events = batch.len);
        let Some(outcome) = self
            .retry(queue, shutdown, metrics::PERSIST, async || {
                self.persist(&batch).instrument(span.clone()).await
            })
            .await
        else {
            return;
        };
        self.metrics.batch_size.observe(batch.len as f64);
        coupon_core::metrics::record_pool(&self.metrics.pool_connections, &self.pool);
        self.metrics.rows_inserted.inc_by(outcome.inserted as u64);
        self.metrics.duplicates.inc_by(outcome.duplicates as u64);
        for failed in &outcome.failed {
            let reason = failed.reason.as_str();
            self.metrics
                .failed_events
                .get_or_create(&ReasonLabels { reason })
                .inc();
        }
        if !outcome.failed.is_empty() {
            report_failed(&outcome.failed);
            let published = self
                .retry(queue, shutdown, metrics::DEAD_LETTER, async || {
                    queue.dead_letter(&outcome.failed).await
                })
                .await;
            if published.is_none() {
                return;
            }
        }
        if let Err(err) = queue
            .acknowledge(&batch.receipt, shutdown.is_cancelled())
            .await
        {
            // Persisted but not acknowledged: the events come again and are found present.
            tracing::warn!(error = %err, "acknowledgement failed");
        }
        tracing::debug!(
            events = batch.len,
            inserted = outcome.inserted,
            duplicates = outcome.duplicates,
            failed = outcome.failed.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "batch persisted"
        );
    }

    async fn persist<R>(&self, batch: &Batch<R>) -> Result<BatchOutcome, SinkError> {
        let mut conn = self.pool.get().await?;
        // One span per traced event, in the trace its request began, covering the
        // transaction that writes its row: the trace runs from the request to the row.
        let _inserts: Vec<tracing::Span> = batch
            .issues
            .iter()
            .filter_map(|issue| {
                let parent = issue.trace.as_ref()?;
                let span = tracing::debug_span!(
                    "insert",
                    coupon = %issue.event.coupon_id,
                    user = %issue.event.user_id
                );
                parent.adopt(&span);
                Some(span)
            })
            .collect();
        let started = Instant::now();
        let outcome =
            persist_isolating(&mut conn, &batch.issues, batch.undecodable.clone()).await?;
        self.metrics
            .batch_commit
            .observe(started.elapsed().as_secs_f64());
        Ok(outcome)
    }

    /// Retries `op` with capped exponential backoff until it succeeds, the queue holding
    /// the batch's events meanwhile, so the worker resumes exactly where it stopped however
    /// long PostgreSQL is away. After shutdown was requested it keeps trying only for the
    /// grace period, then gives up (None), leaving the batch unacknowledged.
    async fn retry<Q: IssueQueue, T, E: std::fmt::Display>(
        &self,
        queue: &Q,
        shutdown: &CancellationToken,
        what: &'static str,
        mut op: impl AsyncFnMut() -> Result<T, E>,
    ) -> Option<T> {
        let max_delay = Duration::from_millis(self.config.retry_max_ms);
        let mut delay = FIRST_RETRY_DELAY.min(max_delay);
        let mut give_up_at: Option<Instant> = None;
        let mut retried = false;
        let mut attempt = 0u32;
        let outcome = loop {
            attempt += 1;
            match op().await {
                Ok(value) => break Some(value),
                Err(err) => tracing::warn!(attempt, error = %err, "{what} failed; retrying"),
            }
            if shutdown.is_cancelled() {
                let at = *give_up_at.get_or_insert_with(|| Instant::now() + SHUTDOWN_GRACE);
                if Instant::now() >= at {
                    tracing::warn!("{what}: giving up at shutdown; the batch stays unacknowledged");
                    break None;
                }
            }
            retried = true;
            self.metrics
                .retries
                .get_or_create(&OperationLabels { operation: what })
                .inc();
            queue.wait_between_retries(delay).await;
            delay = (delay * 2).min(max_delay);
        };
        if retried {
            queue.retries_over();
        }
        outcome
    }
}

fn report_failed(failed: &[FailedEvent]) {
    for event in failed {
        if event.reason == FailureReason::OverQuantity {
            // Only possible if Redis admitted more than the quantity (it lost state):
            // PostgreSQL refused the surplus, and a person should know at once.
            tracing::error!(
                source = %event.source, coupon = ?event.coupon_id, user = ?event.user_id,
                "OVER_QUANTITY: admitted beyond the coupon's quantity; kept as a failed event"
            );
        } else {
            tracing::warn!(
                source = %event.source, reason = event.reason.as_str(), detail = %event.detail,
                "event set aside as a failed event"
            );
        }
    }
}

/// Retries failed events on their schedule until shutdown. Several workers may run this
/// at once: each event is taken under `SKIP LOCKED`.
async fn redrive_failed(pool: PgPool, interval: Duration, shutdown: CancellationToken) {
    const BATCH: i64 = 100;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = sleep(interval) => {}
        }
        let redriven = match pool.get().await {
            Ok(mut conn) => redrive_due(&mut conn, BATCH)
                .await
                .map_err(|e| e.to_string()),
            Err(err) => Err(err.to_string()),
        };
        match redriven {
            Ok(done) => {
                for (id, result) in done {
                    match result {
                        Redriven::Recovered => tracing::info!(id, "failed event recovered"),
                        Redriven::RetryAt(at) => {
                            tracing::info!(id, %at, "failed event still failing; retrying later")
                        }
                        Redriven::Abandoned(why) => {
                            tracing::error!(id, %why, "failed event ABANDONED: needs a person (issuer-worker dlq list)")
                        }
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "could not retry failed events"),
        }
    }
}
