//! Kafka client settings and topic provisioning shared by the API and the worker, the
//! consumer group's offsets a rebuild waits on, and the producer (`producer`).
//!
//! Nothing here is specific to one broker: it speaks the Kafka API through librdkafka.

pub mod producer;

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::KafkaArgs;

/// Base settings for every client of this product: where the brokers are, and how to reach
/// them (TLS, SASL; `KafkaSecurity`). The configuration holds the SASL password: it is
/// never logged or formatted.
pub fn client_config(args: &KafkaArgs, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.kafka_brokers)
        .set("client.id", client_id)
        // Keep librdkafka's own log lines out of our structured logs unless asked.
        .set("log_level", "4");
    for (key, value) in args.security.settings() {
        config.set(key, value);
    }
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

/// Remembers the last error librdkafka logged for a client: a TLS handshake or a SASL login
/// the brokers refused shows up in its log and nowhere else, while the request that needed
/// the connection only times out. The log reaches it when the client's main queue is
/// polled.
#[derive(Default)]
struct ReportingContext {
    last_error: std::sync::Mutex<Option<String>>,
}

impl ReportingContext {
    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl rdkafka::ClientContext for ReportingContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel::{Alert, Critical, Emerg, Error};
        if matches!(level, Emerg | Alert | Critical | Error) {
            tracing::error!(facility = fac, message, "librdkafka");
            *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(message.to_owned());
        } else {
            tracing::warn!(facility = fac, message, "librdkafka");
        }
    }
}

/// Asks the brokers for metadata, once, within TOPICS_TIMEOUT; if they cannot be reached,
/// the error carries what librdkafka logged on the way (a refused certificate, a refused
/// password), not just the timeout.
fn reach_brokers(args: &KafkaArgs) -> Result<(), TopicsError> {
    use rdkafka::producer::{BaseProducer, Producer};
    let probe: BaseProducer<ReportingContext> = client_config(args, "coupon-probe")
        .create_with_context(ReportingContext::default())
        .map_err(|error| TopicsError {
            error,
            reason: None,
        })?;
    match probe.client().fetch_metadata(None, TOPICS_TIMEOUT) {
        Ok(_) => Ok(()),
        Err(error) => {
            // The log lines wait on the client's main queue until polled.
            probe.poll(Duration::ZERO);
            Err(TopicsError {
                error,
                reason: probe.context().last_error(),
            })
        }
    }
}

/// Only to read metadata through a producer, whose poll serves the main queue; it sends
/// nothing.
impl rdkafka::producer::ProducerContext for ReportingContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

/// Topics could not be made sure of, with what the brokers last said.
#[derive(Debug, thiserror::Error)]
#[error("{error}{}", reason.as_ref().map(|r| format!("; the client's last error: {r}")).unwrap_or_default())]
pub struct TopicsError {
    pub error: KafkaError,
    pub reason: Option<String>,
}

/// How long start-up waits for the brokers before it says why it cannot reach them.
const TOPICS_TIMEOUT: Duration = Duration::from_secs(10);

/// Creates the issue topic and its dead-letter topic when they are missing, so that a
/// fresh cluster works; existing topics are left exactly as they are. Brokers that refuse
/// this client (a certificate, a password) end it within 10 s, saying why.
pub async fn ensure_topics(args: &KafkaArgs) -> Result<(), TopicsError> {
    let probe = args.clone();
    tokio::task::spawn_blocking(move || reach_brokers(&probe))
        .await
        .map_err(|_| TopicsError {
            error: KafkaError::Canceled,
            reason: None,
        })??;
    let failed = |error| TopicsError {
        error,
        reason: None,
    };
    let admin: AdminClient<DefaultClientContext> = client_config(args, "coupon-admin")
        .create()
        .map_err(failed)?;
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
    let options = AdminOptions::new()
        .operation_timeout(Some(TOPICS_TIMEOUT))
        .request_timeout(Some(TOPICS_TIMEOUT));
    let created = admin
        .create_topics(&topics, &options)
        .await
        .map_err(failed)?;
    for result in created {
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
                return Err(failed(KafkaError::AdminOp(code)));
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
