//! The Kafka side of the worker: joining the group, turning messages into events, and
//! committing offsets only for what PostgreSQL already holds.

use std::collections::BTreeMap;

use coupon_core::config::KafkaArgs;
use coupon_core::db::batch_insert::{FailedEvent, FailureReason, SourcedIssue};
use coupon_core::event::IssueEvent;
use coupon_core::kafka::client_config;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

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

pub fn subscribe(
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

/// One consumed message, decoded or set aside, with where it came from.
pub enum Consumed {
    Issue(SourcedIssue),
    Undecodable(FailedEvent),
}

pub fn read(message: &BorrowedMessage<'_>) -> Consumed {
    let source = format!(
        "kafka:{}/{}/{}",
        message.topic(),
        message.partition(),
        message.offset()
    );
    let payload = message.payload().unwrap_or_default();
    match IssueEvent::decode(payload) {
        Ok(event) => Consumed::Issue(SourcedIssue { event, source }),
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
pub fn commit(
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
