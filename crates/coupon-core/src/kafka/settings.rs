//! Every Kafka client's settings: where the brokers are and how to reach them, and what a
//! producer's acknowledgement must mean.

use std::time::Duration;

use rdkafka::ClientConfig;

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
