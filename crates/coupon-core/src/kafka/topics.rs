//! The topics made sure of at start-up (the issue topic and its dead-letter topic), and
//! why brokers that refuse this client do: what librdkafka logged on the way.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::settings::client_config;
use crate::config::KafkaArgs;

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
