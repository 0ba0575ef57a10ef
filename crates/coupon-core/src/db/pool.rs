//! The PostgreSQL connection pool, built in one place with explicit timeouts.

use std::time::Duration;

use deadpool::{Runtime, managed::Timeouts};
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::deadpool::{BuildError, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use futures_util::FutureExt;

use crate::config::DatabaseArgs;
use crate::db::connect::{PgTarget, PgTlsError, PgTlsFiles};

pub type PgPool = Pool<AsyncPgConnection>;
pub use diesel_async::pooled_connection::deadpool::PoolError;

/// Waiting longer than this for a connection means the database is saturated or
/// gone; callers answer "unavailable, retry" rather than queueing without bound.
const WAIT_TIMEOUT: Duration = Duration::from_secs(2);
const CREATE_TIMEOUT: Duration = Duration::from_secs(3);
const RECYCLE_TIMEOUT: Duration = Duration::from_secs(2);

pub fn build_pool(target: &PgTarget, max_size: usize) -> Result<PgPool, BuildError> {
    let mut config = ManagerConfig::default();
    let connecting = target.clone();
    // Every pooled connection is opened as `PgTarget` says (TLS or not), never by the
    // manager's own plain default.
    config.custom_setup = Box::new(move |_url| {
        let target = connecting.clone();
        async move { target.connect().await }.boxed()
    });
    let manager =
        AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(target.url(), config);
    Pool::builder(manager)
        .max_size(max_size)
        .timeouts(Timeouts {
            wait: Some(WAIT_TIMEOUT),
            create: Some(CREATE_TIMEOUT),
            recycle: Some(RECYCLE_TIMEOUT),
        })
        .runtime(Runtime::Tokio1)
        .build()
}

#[derive(Debug, thiserror::Error)]
pub enum PoolSetupError {
    #[error(transparent)]
    Tls(#[from] PgTlsError),
    #[error(transparent)]
    Build(#[from] BuildError),
}

impl DatabaseArgs {
    pub fn target(&self) -> Result<PgTarget, PgTlsError> {
        let client = self
            .database_client_cert_file
            .as_deref()
            .zip(self.database_client_key_file.as_deref());
        let files = PgTlsFiles {
            ca: self.database_ca_file.as_deref(),
            client,
        };
        PgTarget::new(&self.database_url, files)
    }

    pub fn pool(&self) -> Result<PgPool, PoolSetupError> {
        Ok(build_pool(&self.target()?, self.database_pool_size)?)
    }
}
