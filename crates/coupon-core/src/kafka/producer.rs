//! The Kafka producer both services use: a send completes only on the broker's
//! acknowledgement, and a failure says whether the message may still be in the log.
//!
//! Two things librdkafka leaves to the application are done here:
//! - reading the message persistence status, which lets the API give a slot back at once
//!   when publishing certainly failed and hold it (in doubt) when the broker may have it;
//! - replacing the producer after a fatal error (an idempotent producer fenced after a
//!   timeout, say), which librdkafka requires and which otherwise fails every later send.
//!
//! Losing every broker needs nothing here: librdkafka reconnects, and Apache Kafka takes the
//! idempotent session back where it stood (the failover tests kill two of three brokers).

use std::sync::atomic::{AtomicU64, Ordering};
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
use crate::kafka::settings::producer_config;

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
pub struct DeliveryContext {
    session: u64,
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "Kafka client error");
    }
}

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

/// The producer in use and how to make another.
struct Shared {
    current: RwLock<Inner>,
    config: ClientConfig,
    sessions: AtomicU64,
}

impl Shared {
    fn create(&self) -> Result<Inner, KafkaError> {
        let context = DeliveryContext {
            session: self.sessions.fetch_add(1, Ordering::Relaxed),
        };
        Ok(Arc::new(self.config.create_with_context(context)?))
    }

    /// Replaces session `session` (only the first caller for it does anything). Messages the
    /// old session still holds are failed at once, so that it never resends them.
    fn replace(&self, session: u64, why: &str) {
        let old = {
            let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
            if current.context().session != session {
                return;
            }
            match self.create() {
                Ok(fresh) => std::mem::replace(&mut *current, fresh),
                Err(err) => {
                    tracing::error!(error = %err, "cannot recreate the Kafka producer");
                    return;
                }
            }
        };
        tracing::warn!(why, "Kafka producer replaced by a fresh session");
        old.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
    }
}

#[derive(Clone)]
pub struct Producer {
    shared: Arc<Shared>,
}

impl Producer {
    pub fn new(
        args: &KafkaArgs,
        client_id: &str,
        message_timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let config = producer_config(args, client_id, message_timeout);
        let first = config.create_with_context(DeliveryContext { session: 0 })?;
        let shared = Arc::new(Shared {
            current: RwLock::new(Arc::new(first)),
            config,
            sessions: AtomicU64::new(1),
        });
        Ok(Self { shared })
    }

    fn current(&self) -> Inner {
        self.shared
            .current
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
        if refused_identity || seen.client().fatal_error().is_some() {
            self.shared
                .replace(seen.context().session, "the producer is no longer usable");
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
