//! The Kafka producer both services use: a send completes only on the broker's
//! acknowledgement, and a failure says whether the message may still be in the log.
//!
//! Two things librdkafka leaves to the application are done here:
//! - reading the message persistence status, which lets the API give a slot back at once
//!   when publishing certainly failed and hold it (in doubt) when the broker may have it;
//! - replacing the producer after a fatal error (an idempotent producer fenced after a
//!   timeout, say), which librdkafka requires and which otherwise fails every later send.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::bindings::{rd_kafka_message_status, rd_kafka_msg_status_t};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use rdkafka::{ClientConfig, ClientContext};
use tokio::sync::oneshot;

use crate::config::KafkaArgs;
use crate::kafka::producer_config;

/// Whether a failed message may nonetheless be in the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Never written to the log: the message certainly does not exist downstream.
    NotPersisted,
    /// Transmitted without an acknowledgement (or acknowledged with an error after the
    /// write): consumers may yet see it.
    PossiblyPersisted,
}

#[derive(Debug, thiserror::Error)]
#[error("publish failed ({persistence:?}): {error}")]
pub struct PublishError {
    pub error: KafkaError,
    pub persistence: Persistence,
}

type DeliverySender = oneshot::Sender<Result<(), PublishError>>;

/// Hands each delivery report, with librdkafka's persistence status, back to the sender.
pub struct DeliveryContext;

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<DeliverySender>;

    fn delivery(&self, result: &DeliveryResult<'_>, waiter: Box<DeliverySender>) {
        let outcome = match result {
            Ok(_) => Ok(()),
            Err((error, message)) => Err(PublishError {
                error: error.clone(),
                persistence: persistence(message),
            }),
        };
        // The sender may have gone (its client disconnected): nobody to tell, nothing lost.
        let _ = waiter.send(outcome);
    }
}

/// rust-rdkafka does not wrap `rd_kafka_message_status`, so it is called here directly.
#[allow(unsafe_code)]
fn persistence(message: &BorrowedMessage<'_>) -> Persistence {
    // SAFETY: `ptr()` is the message librdkafka passed to this delivery callback; it stays
    // valid for the callback's duration and the status function only reads it.
    let status = unsafe { rd_kafka_message_status(message.ptr()) };
    match status {
        rd_kafka_msg_status_t::RD_KAFKA_MSG_STATUS_NOT_PERSISTED => Persistence::NotPersisted,
        _ => Persistence::PossiblyPersisted,
    }
}

type Inner = Arc<ThreadedProducer<DeliveryContext>>;

#[derive(Clone)]
pub struct Producer {
    current: Arc<RwLock<Inner>>,
    config: ClientConfig,
}

impl Producer {
    pub fn new(
        args: &KafkaArgs,
        client_id: &str,
        message_timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let config = producer_config(args, client_id, message_timeout);
        let producer = Arc::new(config.create_with_context(DeliveryContext)?);
        Ok(Self {
            current: Arc::new(RwLock::new(producer)),
            config,
        })
    }

    fn current(&self) -> Inner {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Resolves once the broker acknowledged the message (acks=all), or fails within the
    /// message timeout saying whether the message may be in the log.
    pub async fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<(), PublishError> {
        let producer = self.current();
        let (waiter, acknowledged) = oneshot::channel();
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(waiter))
            .key(key)
            .payload(payload);
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        // Refused at enqueue (local queue full, message too large, ...): it never left
        // this process. A full queue means the broker is not keeping up or not there, and
        // failing fast beats a pile-up.
        let outcome = match producer.send(record) {
            Err((error, _)) => Err(PublishError {
                error,
                persistence: Persistence::NotPersisted,
            }),
            Ok(()) => acknowledged.await.unwrap_or(Err(PublishError {
                // The producer was dropped with the message inside: we cannot know.
                error: KafkaError::Canceled,
                persistence: Persistence::PossiblyPersisted,
            })),
        };
        if let Err(failure) = &outcome {
            self.replace_if_dead(&producer, &failure.error);
        }
        outcome
    }

    /// librdkafka: after a fatal error "the producer instance is no longer usable" and must
    /// be recreated. A producer whose idempotence state the broker refuses (fenced after a
    /// timeout, say) is in the same state without the fatal flag: every later send fails.
    /// Only the first caller to see a given dead producer replaces it.
    fn replace_if_dead(&self, seen: &Inner, error: &KafkaError) {
        use rdkafka::types::RDKafkaErrorCode::{
            InvalidProducerEpoch, InvalidProducerIdMapping, OutOfOrderSequenceNumber,
            ProducerFenced, UnknownProducerId,
        };
        let refused_identity = matches!(
            error.rdkafka_error_code(),
            Some(
                ProducerFenced
                    | InvalidProducerEpoch
                    | InvalidProducerIdMapping
                    | OutOfOrderSequenceNumber
                    | UnknownProducerId
            )
        );
        let fatal = seen.client().fatal_error();
        if fatal.is_none() && !refused_identity {
            return;
        }
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&current, seen) {
            return;
        }
        match self.config.create_with_context(DeliveryContext) {
            Ok(fresh) => {
                tracing::warn!(?fatal, %error, "Kafka producer is no longer usable; replaced it");
                *current = Arc::new(fresh);
            }
            Err(err) => tracing::error!(error = %err, "cannot recreate the Kafka producer"),
        }
    }

    /// Whether the cluster answers a metadata request for `topic`.
    pub async fn check(&self, topic: &str) -> Result<(), KafkaError> {
        let producer = self.current();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
                .map(|_| ())
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled))
    }

    /// Waits for messages in flight, at shutdown.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let producer = self.current();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }
}
