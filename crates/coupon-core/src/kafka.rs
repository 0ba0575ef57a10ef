//! Kafka client settings and topic provisioning shared by the API and the worker.
//!
//! Nothing here is specific to one broker: it speaks the Kafka API through librdkafka.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::KafkaArgs;

/// Base settings for every client of this product.
pub fn client_config(args: &KafkaArgs, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.kafka_brokers)
        .set("client.id", client_id)
        // Keep librdkafka's own log lines out of our structured logs unless asked.
        .set("log_level", "4");
    config
}

/// A producer whose acknowledgement means "durably in the log": all in-sync replicas
/// have it, and retries cannot duplicate or reorder it.
pub fn producer_config(
    args: &KafkaArgs,
    client_id: &str,
    message_timeout: Duration,
) -> ClientConfig {
    let mut config = client_config(args, client_id);
    config
        .set("acks", "all")
        .set("enable.idempotence", "true")
        // Topics are created by `ensure_topics` with the configured partitions; a producer
        // must never create one by naming it (librdkafka's producer default would).
        .set("allow.auto.create.topics", "false")
        // A short linger batches concurrent requests into one produce without adding
        // noticeable latency to any of them.
        .set("linger.ms", args.producer_linger_ms.to_string())
        // librdkafka times messages out only when a broker thread wakes; while it backs off
        // from a dead broker (up to 10 s by default) reports came up to 7 s after a 3 s
        // message timeout here, past the publish window. Capped at 1 s, a lost broker is
        // also retried sooner when it comes back.
        .set("reconnect.backoff.max.ms", "1000")
        .set(
            "message.timeout.ms",
            message_timeout.as_millis().to_string(),
        )
        .set(
            "request.timeout.ms",
            message_timeout.as_millis().min(30_000).to_string(),
        );
    config
}

/// Creates the issue topic and its dead-letter topic when they are missing, so that a
/// fresh cluster works; existing topics are left exactly as they are.
pub async fn ensure_topics(args: &KafkaArgs) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(args, "coupon-admin").create()?;
    let dlq = args.dlq_topic();
    let min_isr = args.topic_min_insync_replicas.to_string();
    let topics = [args.issue_topic.as_str(), dlq.as_str()].map(|name| {
        NewTopic::new(
            name,
            args.topic_partitions,
            TopicReplication::Fixed(args.topic_replication),
        )
        .set("min.insync.replicas", &min_isr)
    });
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&topics, &options).await? {
        match result {
            Ok(topic) => {
                tracing::info!(
                    %topic,
                    partitions = args.topic_partitions,
                    replication = args.topic_replication,
                    min_insync_replicas = args.topic_min_insync_replicas,
                    "created topic"
                )
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                tracing::error!(%topic, ?code, "cannot create topic");
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    Ok(())
}

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
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};

    const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
    let started = std::time::Instant::now();
    let topic = args.issue_topic.as_str();
    // Reading a group's committed offsets does not join the group, so this never moves
    // partitions away from the workers.
    let consumer: BaseConsumer = client_config(args, "coupon-group-watch")
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
    let mut targets = Vec::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (_, high) = consumer.fetch_watermarks(topic, partition.id(), REQUEST_TIMEOUT)?;
        targets.push((partition.id(), high));
    }
    let mut list = TopicPartitionList::new();
    for (partition, _) in &targets {
        list.add_partition(topic, *partition);
    }
    loop {
        let committed = consumer.committed_offsets(list.clone(), REQUEST_TIMEOUT)?;
        let behind = targets
            .iter()
            .filter(|(partition, high)| {
                match committed
                    .find_partition(topic, *partition)
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(offset)) => offset < *high,
                    _ => *high > 0,
                }
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
