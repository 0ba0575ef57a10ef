//! The dead-letter topic: where events that cannot become rows are published, with
//! their reason and origin in headers, so that other tools can see them too.

use std::time::Duration;

use coupon_core::config::KafkaArgs;
use coupon_core::db::batch_insert::FailedEvent;
use coupon_core::kafka::producer_config;
use futures_util::future::try_join_all;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

const DLQ_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetters {
    pub fn new(args: &KafkaArgs) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: producer_config(args, "issuer-worker-dlq", DLQ_MESSAGE_TIMEOUT).create()?,
            topic: args.dlq_topic(),
        })
    }

    /// Publishes every failed event and waits for all acknowledgements; an error means
    /// some may not have arrived, and the caller must not commit past them.
    pub async fn publish(&self, failed: &[FailedEvent]) -> Result<(), KafkaError> {
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
            async move {
                let key = event.coupon_id.map(|id| id.to_string()).unwrap_or_default();
                let record = FutureRecord::to(&self.topic)
                    .key(&key)
                    .payload(&event.payload)
                    .headers(headers);
                self.producer
                    .send(record, Timeout::After(DLQ_MESSAGE_TIMEOUT))
                    .await
                    .map(|_| ())
                    .map_err(|(err, _)| err)
            }
        }))
        .await
        .map(|_| ())
    }

    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}
