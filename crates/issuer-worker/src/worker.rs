//! The worker loop: collect a batch, persist it, dead-letter what failed, commit offsets.
//!
//! Invariant: an offset is committed only after every event before it is a row or a
//! failed event in PostgreSQL (and in the dead-letter topic). A crash anywhere re-reads
//! from the last commit, and the idempotent sink makes the re-read harmless.

use std::collections::BTreeMap;
use std::time::Duration;

use coupon_core::db::batch_insert::{
    BatchOutcome, FailedEvent, FailureReason, SourcedIssue, persist_batch,
};
use coupon_core::db::failed_events::{Redriven, redrive_due};
use coupon_core::db::pool::PgPool;
use coupon_core::startup::prepare;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Message;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::consumer::{Consumed, IssueConsumer, commit, read, subscribe};
use crate::dead_letter::DeadLetters;

/// After the shutdown signal, how long the batch in hand may keep retrying before it is
/// abandoned uncommitted (it will be re-read by whoever owns the partition next).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Batch {
    issues: Vec<SourcedIssue>,
    undecodable: Vec<FailedEvent>,
    /// Per partition, the offset to commit once this batch is persisted.
    next_offsets: BTreeMap<i32, i64>,
    len: usize,
}

#[derive(Debug, thiserror::Error)]
enum SinkError {
    #[error("no PostgreSQL connection: {0}")]
    Pool(#[from] coupon_core::db::pool::PoolError),
    #[error("batch insert failed: {0}")]
    Query(#[from] diesel::result::Error),
}

pub struct Worker {
    config: Config,
    consumer: IssueConsumer,
    pool: PgPool,
    dead_letters: DeadLetters,
}

impl Worker {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        prepare(&config.database.database_url, &config.kafka).await?;
        Ok(Self {
            pool: config.database.pool()?,
            dead_letters: DeadLetters::new(&config.kafka)?,
            consumer: subscribe(
                &config.kafka,
                &config.group_id,
                config.instance_id.as_deref(),
            )?,
            config,
        })
    }

    /// Runs until `shutdown` is cancelled: then finishes the batch in hand, commits, and
    /// leaves the group.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(
            group = %self.config.group_id, topic = %self.config.kafka.issue_topic,
            batch_size = self.config.batch_size, linger_ms = self.config.batch_linger_ms,
            "issuer-worker consuming"
        );
        let redriving = tokio::spawn(redrive_failed(
            self.pool.clone(),
            Duration::from_millis(self.config.redrive_interval_ms),
            shutdown.clone(),
        ));
        while !shutdown.is_cancelled() {
            let batch = self.collect(&shutdown).await;
            if batch.len > 0 {
                self.process(batch, &shutdown).await;
            }
        }
        redriving.await?;
        // Leaving the group now hands our partitions over at once instead of after the
        // session timeout; everything persisted was committed batch by batch.
        self.consumer.unsubscribe();
        self.dead_letters.flush(SHUTDOWN_GRACE).await?;
        tracing::info!("issuer-worker stopped");
        Ok(())
    }

    /// Waits for a first event, then takes more until the batch is full or has lingered
    /// long enough. Returns early (possibly empty) on shutdown.
    async fn collect(&self, shutdown: &CancellationToken) -> Batch {
        let mut batch = Batch::default();
        let mut deadline = None;
        while batch.len < self.config.batch_size as usize {
            let linger = async {
                match deadline {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let received = tokio::select! {
                () = shutdown.cancelled() => break,
                () = linger => break,
                received = self.consumer.recv() => received,
            };
            let message = match received {
                Ok(message) => message,
                Err(err) => {
                    // Broker hiccups surface here; librdkafka reconnects on its own.
                    tracing::warn!(error = %err, "consume error");
                    sleep(FIRST_RETRY_DELAY).await;
                    continue;
                }
            };
            deadline.get_or_insert_with(|| {
                Instant::now() + Duration::from_millis(self.config.batch_linger_ms)
            });
            batch
                .next_offsets
                .insert(message.partition(), message.offset() + 1);
            batch.len += 1;
            match read(&message) {
                Consumed::Issue(issue) => batch.issues.push(issue),
                Consumed::Undecodable(failed) => batch.undecodable.push(failed),
            }
        }
        batch
    }

    async fn process(&self, batch: Batch, shutdown: &CancellationToken) {
        let started = Instant::now();
        let Some(outcome) = self
            .retry(shutdown, "persist batch", async || {
                self.persist(&batch).await
            })
            .await
        else {
            return;
        };
        if !outcome.failed.is_empty() {
            self.report_failed(&outcome.failed);
            let published = self
                .retry(shutdown, "publish dead letters", async || {
                    self.dead_letters.publish(&outcome.failed).await
                })
                .await;
            if published.is_none() {
                return;
            }
        }
        let topic = &self.config.kafka.issue_topic;
        let mode = if shutdown.is_cancelled() {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        if let Err(err) = commit(&self.consumer, topic, &batch.next_offsets, mode) {
            // Persisted but not committed: the events will be re-read and found present.
            tracing::warn!(error = %err, "offset commit failed");
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

    async fn persist(&self, batch: &Batch) -> Result<BatchOutcome, SinkError> {
        let mut conn = self.pool.get().await?;
        Ok(persist_batch(&mut conn, &batch.issues, batch.undecodable.clone()).await?)
    }

    fn report_failed(&self, failed: &[FailedEvent]) {
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
                    "event set aside to the dead-letter topic"
                );
            }
        }
    }

    /// Retries `op` with capped exponential backoff until it succeeds. Meanwhile the
    /// partitions are paused but the consumer is still polled, so the worker stays in the
    /// group however long PostgreSQL is away and resumes exactly where it stopped. After
    /// shutdown was requested it keeps trying only for the grace period, then gives up
    /// (None), leaving the batch uncommitted.
    async fn retry<T, E: std::fmt::Display>(
        &self,
        shutdown: &CancellationToken,
        what: &str,
        mut op: impl AsyncFnMut() -> Result<T, E>,
    ) -> Option<T> {
        let max_delay = Duration::from_millis(self.config.retry_max_ms);
        let mut delay = FIRST_RETRY_DELAY.min(max_delay);
        let mut give_up_at: Option<Instant> = None;
        let mut paused: Option<Paused> = None;
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
                    tracing::warn!("{what}: giving up at shutdown; the batch stays uncommitted");
                    break None;
                }
            }
            let paused = paused.get_or_insert_with(|| self.pause());
            self.idle(delay, paused).await;
            delay = (delay * 2).min(max_delay);
        };
        if let Some(paused) = paused {
            self.resume(paused);
        }
        outcome
    }

    fn pause(&self) -> Paused {
        let partitions = self.consumer.assignment().unwrap_or_default();
        if let Err(err) = self.consumer.pause(&partitions) {
            tracing::warn!(error = %err, "could not pause fetching");
        }
        Paused {
            partitions,
            rewind: BTreeMap::new(),
        }
    }

    /// Waits `delay` while polling the paused consumer (which keeps its group membership
    /// alive). A message that still arrives (fetched before the pause, or from a partition
    /// assigned meanwhile) is noted, to be read again after resuming.
    async fn idle(&self, delay: Duration, paused: &mut Paused) {
        let deadline = Instant::now() + delay;
        loop {
            tokio::select! {
                () = sleep_until(deadline) => return,
                received = self.consumer.recv() => match received {
                    Ok(message) => {
                        let offset = message.offset();
                        paused
                            .rewind
                            .entry(message.partition())
                            .and_modify(|first| *first = (*first).min(offset))
                            .or_insert(offset);
                    }
                    Err(_) => sleep(FIRST_RETRY_DELAY.min(delay)).await,
                },
            }
        }
    }

    fn resume(&self, paused: Paused) {
        if let Err(err) = self.consumer.resume(&paused.partitions) {
            tracing::warn!(error = %err, "could not resume fetching");
        }
        let topic = &self.config.kafka.issue_topic;
        for (partition, offset) in paused.rewind {
            let at = rdkafka::Offset::Offset(offset);
            if let Err(err) = self
                .consumer
                .seek(topic, partition, at, Duration::from_secs(5))
            {
                // Not ours any more: its new owner starts from the committed offset.
                tracing::warn!(partition, error = %err, "could not rewind after the pause");
            }
        }
    }
}

/// Partitions paused while a batch is retried, and where to read again after.
struct Paused {
    partitions: rdkafka::TopicPartitionList,
    rewind: BTreeMap<i32, i64>,
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
