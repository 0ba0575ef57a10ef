//! Databases of their own for tests, next to the one `make up` starts.

// A panic here is the failure report wanted.
#![allow(clippy::unwrap_used)]

use coupon_core::db::migrate::run_migrations;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

/// The configured database (override with `DATABASE_URL`), next to which tests create theirs.
fn base_database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| coupon_core::config::DEFAULT_DATABASE_URL.into())
}

/// A connection to a new, migrated database of its own: for a test of queries alone.
pub async fn scratch_database() -> AsyncPgConnection {
    AsyncPgConnection::establish(&scratch_database_url().await)
        .await
        .unwrap()
}

/// The URL of a new, migrated database of its own.
pub async fn scratch_database_url() -> String {
    create_database(&format!("coupon_test_{}", uuid::Uuid::new_v4().simple())).await
}

/// Creates an empty database next to the configured one, migrates it, and returns its URL.
pub async fn create_database(name: &str) -> String {
    let base = base_database_url();
    let mut admin = AsyncPgConnection::establish(&base).await.unwrap();
    diesel::sql_query(format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let (server, _) = base.rsplit_once('/').unwrap();
    let url = format!("{server}/{name}");
    let target = coupon_core::db::connect::PgTarget::new(&url, Default::default()).unwrap();
    run_migrations(&target).await.unwrap();
    url
}
