//! The Kafka producer: an issue event counts as published only once the broker acked it.

use std::time::Duration;

use coupon_core::config::KafkaArgs;
use coupon_core::event::IssueEvent;
use coupon_core::kafka::producer_config;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

/// How long a request may wait for room in librdkafka's local queue. A full queue means
/// the broker is not keeping up or not there: better a fast 503 than a pile-up.
const ENQUEUE_TIMEOUT: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    topic: String,
}

impl Publisher {
    pub fn new(args: &KafkaArgs, message_timeout: Duration) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: producer_config(args, "issuer-api", message_timeout).create()?,
            topic: args.issue_topic.clone(),
        })
    }

    /// Resolves once the broker acknowledged the event (acks=all), or fails within the
    /// message timeout.
    pub async fn publish(&self, event: &IssueEvent) -> Result<(), KafkaError> {
        let key = event.key();
        let payload = event.encode();
        let record = FutureRecord::to(&self.topic).key(&key).payload(&payload);
        self.producer
            .send(record, Timeout::After(ENQUEUE_TIMEOUT))
            .await
            .map(|_delivery| ())
            .map_err(|(err, _message)| err)
    }

    /// Whether the cluster answers a metadata request for our topic.
    pub async fn check(&self) -> Result<(), KafkaError> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
                .map(|_| ())
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled))
    }

    /// Waits for in-flight events at shutdown so that no acknowledged request is lost
    /// and no request in flight is left without its answer.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}
