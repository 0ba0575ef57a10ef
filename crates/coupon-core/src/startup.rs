//! What every service does before it serves: bring the schema up to date and, in Kafka
//! mode, make sure the topics exist, so that a fresh database and a fresh cluster both work.

use crate::config::{KafkaArgs, KafkaSecurityError};
use crate::db::connect::PgTarget;
use crate::db::migrate::{MigrateError, run_migrations};
use crate::kafka::topics::{TopicsError, ensure_topics};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error(transparent)]
    KafkaSecurity(#[from] KafkaSecurityError),
    #[error("cannot create the Kafka topics: {0}")]
    Topics(#[from] TopicsError),
}

/// `kafka` is None in the Redis queue mode, which needs no broker at all.
pub async fn prepare(database: &PgTarget, kafka: Option<&KafkaArgs>) -> Result<(), StartupError> {
    let applied = run_migrations(database).await?;
    tracing::info!(applied, "database schema is current");
    if let Some(kafka) = kafka {
        kafka.security.check()?;
        ensure_topics(kafka).await?;
    }
    Ok(())
}
