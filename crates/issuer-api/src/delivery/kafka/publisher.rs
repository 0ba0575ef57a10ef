//! Publishing issue events, and a rebuild's fences: keyed by coupon id, so one coupon's
//! messages stay in order on one partition.

use std::time::Duration;

use coupon_core::config::KafkaArgs;
use coupon_core::event::{Fence, IssueEvent};
use coupon_core::kafka::producer::{Producer, PublishError};
use coupon_core::trace_context::{self, TraceParent};
use prometheus_client::metrics::histogram::Histogram;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use tracing::Instrument;

#[derive(Clone)]
pub struct Publisher {
    producer: Producer,
    topic: String,
    /// `coupon_publish_ack_duration_seconds`.
    ack_duration: Histogram,
}

impl Publisher {
    pub fn new(
        args: &KafkaArgs,
        message_timeout: Duration,
        ack_duration: Histogram,
    ) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: Producer::new(args, "issuer-api", message_timeout)?,
            topic: args.issue_topic.clone(),
            ack_duration,
        })
    }

    /// Resolves once the broker acknowledged the event. While tracing, the event carries
    /// the publish span's context in a `traceparent` header.
    pub async fn publish(&self, event: &IssueEvent) -> Result<(), PublishError> {
        let span =
            tracing::debug_span!("publish", coupon = %event.coupon_id, user = %event.user_id);
        let headers = span.in_scope(TraceParent::current).map(|parent| {
            OwnedHeaders::new().insert(Header {
                key: trace_context::FIELD,
                value: Some(parent.as_str()),
            })
        });
        let started = std::time::Instant::now();
        let published = self
            .producer
            .send(
                &self.topic,
                event.key().as_bytes(),
                &event.encode(),
                headers,
            )
            .instrument(span)
            .await;
        self.ack_duration.observe(started.elapsed().as_secs_f64());
        published
    }

    /// Resolves once the broker acknowledged a fence on the coupon's partition (see
    /// [`Fence`]): sent by the producer that sends the events, with their key.
    pub async fn fence(&self, fence: Fence) -> Result<(), PublishError> {
        // The key is the coupon id, which the header names too.
        let key = fence.key();
        let header = OwnedHeaders::new().insert(Header {
            key: Fence::HEADER,
            value: Some(key.as_str()),
        });
        self.producer
            .send(&self.topic, key.as_bytes(), &[], Some(header))
            .await
    }

    pub async fn check(&self) -> Result<(), KafkaError> {
        self.producer.check(&self.topic).await
    }

    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout).await
    }
}
