//! Schema migrations, embedded in the binaries and applied at start-up.
//!
//! Several API replicas and workers start at once: a PostgreSQL advisory lock makes
//! exactly one of them migrate while the others wait, then find nothing pending.

use diesel::connection::SimpleConnection;
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::db::connect::PgTarget;

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// Arbitrary but fixed: every process of this product agrees on it.
const MIGRATION_LOCK_KEY: i64 = 0x636f_7570_6f6e; // "coupon"

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot connect to PostgreSQL to migrate: {0}")]
    Connect(#[from] diesel::ConnectionError),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("migration task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Applies pending migrations; returns how many were applied.
pub async fn run_migrations(target: &PgTarget) -> Result<usize, MigrateError> {
    let connection = target.connect().await?;
    // The migration harness is synchronous; the wrapper drives diesel-async's connection
    // from a blocking thread so the runtime's workers are never blocked.
    tokio::task::spawn_blocking(move || -> Result<usize, MigrateError> {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::from(connection);
        let failed = |e: &dyn std::fmt::Display| MigrateError::Migration(e.to_string());
        conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
            .map_err(|e| failed(&e))?;
        let applied = conn.run_pending_migrations(MIGRATIONS).map(|v| v.len());
        // Unlock even when migrating failed; closing the connection would too, but
        // saying so keeps the lock's lifetime obvious.
        let unlocked =
            conn.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"));
        let applied = applied.map_err(|e| failed(&e))?;
        unlocked.map_err(|e| failed(&e))?;
        Ok(applied)
    })
    .await?
}
