//! The Kafka queue: a consumer-group member of the issue topic, committing offsets only
//! for what PostgreSQL already holds, and publishing dead letters to `<topic>.dlq`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use coupon_core::config::KafkaArgs;
use coupon_core::db::batch_insert::{FailedEvent, FailureReason, SourcedIssue};
use coupon_core::event::{Fence, IssueEvent};
use coupon_core::kafka::settings::client_config;
use coupon_core::trace_context::{self, TraceParent};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::dead_letter::DeadLetters;
use crate::queue::{Batch, Consumed, IssueQueue, QueueError};

/// How long a consume error is left to clear before the next poll.
const CONSUME_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// At shutdown, how long dead letters still in flight may take.
const DEAD_LETTER_FLUSH: Duration = Duration::from_secs(10);

/// Logs partition movements: the first thing to look at when throughput changes.
pub struct GroupContext;

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        tracing::info!(?rebalance, "rebalance starting");
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        tracing::info!(?rebalance, "rebalance done");
    }
}

pub type IssueConsumer = StreamConsumer<GroupContext>;

pub struct KafkaQueue {
    consumer: IssueConsumer,
    topic: String,
    dead_letters: DeadLetters,
    /// Set while a batch is retried: fetching is paused, and what still arrives is noted
    /// to be read again.
    paused: Mutex<Option<Paused>>,
}

/// Offsets per partition: the next to read once the batch is persisted.
pub type Offsets = BTreeMap<i32, i64>;

impl KafkaQueue {
    pub fn new(
        args: &KafkaArgs,
        group_id: &str,
        instance_id: Option<&str>,
    ) -> Result<Self, KafkaError> {
        Ok(Self {
            consumer: subscribe(args, group_id, instance_id)?,
            topic: args.issue_topic.clone(),
            dead_letters: DeadLetters::new(args)?,
            paused: Mutex::new(None),
        })
    }

    fn paused(&self) -> std::sync::MutexGuard<'_, Option<Paused>> {
        // Only this worker's one task touches it; a poisoned lock still holds valid data.
        self.paused.lock().unwrap_or_else(|e| e.into_inner())
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
}

/// Partitions paused while a batch is retried, and where to read again after.
struct Paused {
    partitions: TopicPartitionList,
    rewind: BTreeMap<i32, i64>,
}

impl IssueQueue for KafkaQueue {
    type Receipt = Offsets;

    async fn collect(
        &self,
        size: usize,
        linger: Duration,
        shutdown: &CancellationToken,
    ) -> Batch<Offsets> {
        let mut batch = Batch::<Offsets>::default();
        let mut deadline = None;
        while batch.len < size {
            let lingered = async {
                match deadline {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let received = tokio::select! {
                () = shutdown.cancelled() => break,
                () = lingered => break,
                received = self.consumer.recv() => received,
            };
            let message = match received {
                Ok(message) => message,
                Err(err) => {
                    // Broker hiccups surface here; librdkafka reconnects on its own.
                    tracing::warn!(error = %err, "consume error");
                    sleep(CONSUME_ERROR_PAUSE).await;
                    continue;
                }
            };
            deadline.get_or_insert_with(|| Instant::now() + linger);
            batch
                .receipt
                .insert(message.partition(), message.offset() + 1);
            batch.push(read(&message));
        }
        batch
    }

    async fn dead_letter(&self, failed: &[FailedEvent]) -> Result<(), QueueError> {
        Ok(self.dead_letters.publish(failed).await?)
    }

    async fn acknowledge(&self, offsets: &Offsets, last: bool) -> Result<(), QueueError> {
        let mode = if last {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        Ok(commit(&self.consumer, &self.topic, offsets, mode)?)
    }

    /// Polls the paused consumer meanwhile, which keeps its group membership alive. A
    /// message that still arrives (fetched before the pause, or from a partition assigned
    /// meanwhile) is noted, to be read again after resuming.
    async fn wait_between_retries(&self, delay: Duration) {
        if self.paused().is_none() {
            let paused = self.pause();
            *self.paused() = Some(paused);
        }
        let deadline = Instant::now() + delay;
        loop {
            tokio::select! {
                () = sleep_until(deadline) => return,
                received = self.consumer.recv() => match received {
                    Ok(message) => {
                        let (partition, offset) = (message.partition(), message.offset());
                        if let Some(paused) = self.paused().as_mut() {
                            paused
                                .rewind
                                .entry(partition)
                                .and_modify(|first| *first = (*first).min(offset))
                                .or_insert(offset);
                        }
                    }
                    Err(_) => sleep(CONSUME_ERROR_PAUSE.min(delay)).await,
                },
            }
        }
    }

    fn retries_over(&self) {
        let Some(paused) = self.paused().take() else {
            return;
        };
        if let Err(err) = self.consumer.resume(&paused.partitions) {
            tracing::warn!(error = %err, "could not resume fetching");
        }
        for (partition, offset) in paused.rewind {
            let at = Offset::Offset(offset);
            if let Err(err) = self
                .consumer
                .seek(&self.topic, partition, at, Duration::from_secs(5))
            {
                // Not ours any more: its new owner starts from the committed offset.
                tracing::warn!(partition, error = %err, "could not rewind after the pause");
            }
        }
    }

    /// Leaving the group hands our partitions over at once instead of after the session
    /// timeout; everything persisted was committed batch by batch.
    async fn leave(&self) -> Result<(), QueueError> {
        self.consumer.unsubscribe();
        Ok(self.dead_letters.flush(DEAD_LETTER_FLUSH).await?)
    }
}

fn subscribe(
    args: &KafkaArgs,
    group_id: &str,
    instance_id: Option<&str>,
) -> Result<IssueConsumer, KafkaError> {
    let mut config = client_config(args, "issuer-worker");
    if let Some(instance) = instance_id {
        config.set("group.instance.id", instance);
    }
    let consumer: IssueConsumer = config
        .set("group.id", group_id)
        // Offsets are committed by hand after the rows are committed, never before.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A new group starts at the beginning: events published before the first worker
        // started are SUCCESS answers that must still become rows.
        .set("auto.offset.reset", "earliest")
        // A killed member's partitions move to a live one within seconds, not the default 45.
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "2000")
        // Incremental rebalances: a joining or leaving worker moves only the partitions that
        // must move, and the others keep consuming meanwhile.
        .set("partition.assignment.strategy", "cooperative-sticky")
        // Short fetch waits keep the time from acknowledgement to row low when traffic is light.
        .set("fetch.wait.max.ms", "50")
        .create_with_context(GroupContext)?;
    consumer.subscribe(&[&args.issue_topic])?;
    Ok(consumer)
}

/// The `traceparent` header the API's publish carried, if tracing is on.
fn trace_header(message: &BorrowedMessage<'_>) -> Option<TraceParent> {
    use rdkafka::message::Headers;
    let headers = message.headers()?;
    headers
        .iter()
        .find(|header| header.key == trace_context::FIELD)
        .and_then(|header| std::str::from_utf8(header.value?).ok())
        .and_then(TraceParent::parse)
}

/// A rebuild's fence (`coupon_core::event::Fence`), not an event.
fn is_fence(message: &BorrowedMessage<'_>) -> bool {
    use rdkafka::message::Headers;
    message
        .headers()
        .is_some_and(|headers| headers.iter().any(|header| header.key == Fence::HEADER))
}

fn read(message: &BorrowedMessage<'_>) -> Consumed {
    if is_fence(message) {
        return Consumed::Fence;
    }
    let source = format!(
        "kafka:{}/{}/{}",
        message.topic(),
        message.partition(),
        message.offset()
    );
    let payload = message.payload().unwrap_or_default();
    match IssueEvent::decode(payload) {
        Ok(event) => Consumed::Issue(SourcedIssue {
            event,
            source,
            trace: trace_header(message),
        }),
        Err(err) => Consumed::Undecodable(FailedEvent {
            reason: FailureReason::Undecodable,
            detail: err.to_string(),
            source,
            coupon_id: None,
            user_id: None,
            payload: payload.to_vec(),
        }),
    }
}

/// Commits "next offset to read" per partition, skipping partitions this member no
/// longer owns: their new owner re-reads them (harmlessly, the sink is idempotent), and
/// a late commit from us must not move its offset backwards.
fn commit(
    consumer: &IssueConsumer,
    topic: &str,
    next_offsets: &BTreeMap<i32, i64>,
    mode: CommitMode,
) -> Result<(), KafkaError> {
    let owned = consumer.assignment()?;
    let mut list = TopicPartitionList::new();
    for (&partition, &next) in next_offsets {
        if owned.find_partition(topic, partition).is_some() {
            list.add_partition_offset(topic, partition, Offset::Offset(next))?;
        }
    }
    if list.count() == 0 {
        return Ok(());
    }
    consumer.commit(&list, mode)
}
