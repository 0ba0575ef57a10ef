//! The consumer group's progress on the issue topic, read without joining it: what a
//! rebuild waits on, and the backlog the probes report.

use std::time::Duration;

use rdkafka::error::KafkaError;

use super::settings::client_config;
use crate::config::KafkaArgs;

#[derive(Debug, thiserror::Error)]
pub enum GroupWaitError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("consumer group {group} is still behind on {behind} partition(s) after {waited:?}")]
    Behind {
        group: String,
        behind: usize,
        waited: Duration,
    },
    #[error("waiting for the consumer group failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Waits until consumer group `group` has committed, on every partition of the issue topic,
/// an offset at or past that partition's high-water mark as it is *now*: then every event
/// published before this call is in PostgreSQL.
pub async fn wait_for_group(
    args: &KafkaArgs,
    group: &str,
    patience: Duration,
) -> Result<(), GroupWaitError> {
    let args = args.clone();
    let group = group.to_owned();
    tokio::task::spawn_blocking(move || wait_for_group_blocking(&args, &group, patience)).await?
}

fn wait_for_group_blocking(
    args: &KafkaArgs,
    group: &str,
    patience: Duration,
) -> Result<(), GroupWaitError> {
    let started = std::time::Instant::now();
    let offsets = GroupOffsets::new(args, group)?;
    let targets = offsets.log_ends()?;
    loop {
        let committed = offsets.committed(&targets)?;
        let behind = targets
            .iter()
            .zip(&committed)
            .filter(|(end, committed)| match committed {
                Some(offset) => *offset < end.high,
                None => end.high > 0,
            })
            .count();
        if behind == 0 {
            return Ok(());
        }
        if started.elapsed() >= patience {
            return Err(GroupWaitError::Behind {
                group: group.to_owned(),
                behind,
                waited: started.elapsed(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One partition's log: its first and next offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogEnd {
    pub partition: i32,
    pub low: i64,
    pub high: i64,
}

/// A consumer group's progress on the issue topic, read without joining the group, so
/// reading never moves partitions away from the workers. Blocking calls: run them on a
/// blocking thread.
pub struct GroupOffsets {
    consumer: rdkafka::consumer::BaseConsumer,
    topic: String,
}

const OFFSETS_TIMEOUT: Duration = Duration::from_secs(5);

impl GroupOffsets {
    pub fn new(args: &KafkaArgs, group: &str) -> Result<Self, KafkaError> {
        Ok(Self {
            consumer: client_config(args, "coupon-group-watch")
                .set("group.id", group)
                .set("enable.auto.commit", "false")
                .create()?,
            topic: args.issue_topic.clone(),
        })
    }

    /// Every partition's log as it is now.
    pub fn log_ends(&self) -> Result<Vec<LogEnd>, KafkaError> {
        use rdkafka::consumer::Consumer;
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), OFFSETS_TIMEOUT)?;
        let mut ends = Vec::new();
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (low, high) =
                self.consumer
                    .fetch_watermarks(&self.topic, partition.id(), OFFSETS_TIMEOUT)?;
            ends.push(LogEnd {
                partition: partition.id(),
                low,
                high,
            });
        }
        Ok(ends)
    }

    /// The group's committed offset on each of `partitions`, in their order; None where it
    /// has committed none.
    pub fn committed(&self, partitions: &[LogEnd]) -> Result<Vec<Option<i64>>, KafkaError> {
        use rdkafka::consumer::Consumer;
        use rdkafka::{Offset, TopicPartitionList};
        let mut list = TopicPartitionList::new();
        for end in partitions {
            list.add_partition(&self.topic, end.partition);
        }
        let committed = self.consumer.committed_offsets(list, OFFSETS_TIMEOUT)?;
        Ok(partitions
            .iter()
            .map(|end| {
                match committed
                    .find_partition(&self.topic, end.partition)
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(offset)) => Some(offset),
                    _ => None,
                }
            })
            .collect())
    }

    /// Per partition, the events the group has not committed yet: from its committed
    /// offset, or from the log's start when it has committed none, to the log's end.
    pub fn lag(&self) -> Result<Vec<(i32, i64)>, KafkaError> {
        let ends = self.log_ends()?;
        let committed = self.committed(&ends)?;
        Ok(ends
            .iter()
            .zip(committed)
            .map(|(end, committed)| {
                let from = committed.unwrap_or(end.low).max(end.low);
                (end.partition, (end.high - from).max(0))
            })
            .collect())
    }
}
