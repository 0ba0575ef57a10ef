//! What the worker needs from a queue, and nothing more: batches of events in,
//! acknowledgements out. The sink, the batching rules, the quantity guard and the
//! failed-event path are the worker's and shared; a queue (Kafka topic or Redis Streams)
//! only says how events arrive and how "persisted, don't deliver again" is told back.

use std::time::Duration;

use coupon_core::db::batch_insert::{FailedEvent, SourcedIssue};
use tokio_util::sync::CancellationToken;

/// One consumed message, decoded or set aside, with where it came from.
pub enum Consumed {
    Issue(SourcedIssue),
    Undecodable(FailedEvent),
    /// A rebuild's fence (Kafka mode): nothing to store, only to acknowledge.
    Fence,
}

/// Events taken together into one PostgreSQL transaction.
pub struct Batch<R> {
    pub issues: Vec<SourcedIssue>,
    pub undecodable: Vec<FailedEvent>,
    /// What acknowledging the batch takes: offsets per partition, or stream entry ids.
    pub receipt: R,
    pub len: usize,
}

impl<R: Default> Default for Batch<R> {
    fn default() -> Self {
        Self {
            issues: Vec::new(),
            undecodable: Vec::new(),
            receipt: R::default(),
            len: 0,
        }
    }
}

impl<R> Batch<R> {
    pub fn push(&mut self, consumed: Consumed) {
        self.len += 1;
        match consumed {
            Consumed::Issue(issue) => self.issues.push(issue),
            Consumed::Undecodable(failed) => self.undecodable.push(failed),
            Consumed::Fence => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("kafka publish: {0}")]
    Publish(#[from] coupon_core::kafka::producer::PublishError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// A source of issue events with at-least-once delivery: whatever is not acknowledged is
/// delivered again (to this worker or another), so acknowledging only after PostgreSQL
/// committed is what makes every admitted event a row.
pub trait IssueQueue {
    type Receipt: Default;

    /// Waits for a first event, then takes more until `size` are in hand or `linger` has
    /// passed since the first. Returns early (possibly empty) on shutdown.
    async fn collect(
        &self,
        size: usize,
        linger: Duration,
        shutdown: &CancellationToken,
    ) -> Batch<Self::Receipt>;

    /// Publishes events that cannot become rows where other services can see them, beyond
    /// `failed_events` (which the sink already wrote). A queue without such a place does
    /// nothing.
    async fn dead_letter(&self, failed: &[FailedEvent]) -> Result<(), QueueError>;

    /// The batch is in PostgreSQL: do not deliver it again. `last` is the final
    /// acknowledgement before shutdown, which must not be left in flight.
    async fn acknowledge(&self, receipt: &Self::Receipt, last: bool) -> Result<(), QueueError>;

    /// Waits `delay` between retries of a batch that could not be persisted, keeping the
    /// queue's hold on the events in hand (and on nothing newer).
    async fn wait_between_retries(&self, delay: Duration);

    /// The retried batch went through (or was given up): consume normally again.
    fn retries_over(&self);

    /// At shutdown, after the last acknowledgement: hand what this worker owns to others.
    async fn leave(&self) -> Result<(), QueueError>;
}
