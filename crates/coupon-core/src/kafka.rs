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
        // A short linger batches concurrent requests into one produce without adding
        // noticeable latency to any of them.
        .set("linger.ms", "2")
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
    let topics = [args.issue_topic.as_str(), dlq.as_str()].map(|name| {
        NewTopic::new(
            name,
            args.topic_partitions,
            TopicReplication::Fixed(args.topic_replication),
        )
    });
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&topics, &options).await? {
        match result {
            Ok(topic) => {
                tracing::info!(%topic, partitions = args.topic_partitions, "created topic")
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
