//! The dead-letter topic: where events that cannot become rows are published, with
//! their reason and origin in headers, so that other tools can see them too.

use std::time::Duration;

use coupon_core::config::KafkaArgs;
use coupon_core::db::batch_insert::FailedEvent;
use coupon_core::kafka::producer::{Producer, PublishError};
use futures_util::future::try_join_all;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};

const DLQ_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct DeadLetters {
    producer: Producer,
    topic: String,
}

impl DeadLetters {
    pub fn new(args: &KafkaArgs) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: Producer::new(args, "issuer-worker-dlq", DLQ_MESSAGE_TIMEOUT)?,
            topic: args.dlq_topic(),
        })
    }

    /// Publishes every failed event and waits for all acknowledgements; an error means
    /// some may not have arrived, and the caller must not commit past them.
    pub async fn publish(&self, failed: &[FailedEvent]) -> Result<(), PublishError> {
        try_join_all(failed.iter().map(|event| {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "reason",
                    value: Some(event.reason.as_str()),
                })
                .insert(Header {
                    key: "detail",
                    value: Some(event.detail.as_str()),
                })
                .insert(Header {
                    key: "source",
                    value: Some(event.source.as_str()),
                });
            let key = event.coupon_id.map(|id| id.to_string()).unwrap_or_default();
            async move {
                self.producer
                    .send(&self.topic, key.as_bytes(), &event.payload, Some(headers))
                    .await
            }
        }))
        .await
        .map(|_| ())
    }

    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout).await
    }
}
