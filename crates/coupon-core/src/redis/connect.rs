//! A Redis connection built from the settings (`crate::config::RedisArgs`): the URL's node,
//! with its TLS files, the primary the Sentinels name, or a Redis Cluster's nodes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};

use crate::config::RedisArgs;
use crate::redis::connection::{RedisConnection, Socket, Target};
use crate::redis::replicas::Sentinels;

/// Why a Redis client could not be set up; the URL is never part of it.
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    #[error("REDIS_CA_FILE and REDIS_CLIENT_CERT_FILE apply to rediss:// URLs only")]
    TlsFilesWithoutTls,
    #[error("cannot read {path}: {error}")]
    File { path: String, error: std::io::Error },
    #[error("REDIS_SENTINELS works with redis:// URLs; TLS through Sentinel is not supported yet")]
    SentinelWithTls,
    #[error(
        "REDIS_CLUSTER_NODES: {0:?} is not host:port (the scheme, user and password come from REDIS_URL)"
    )]
    ClusterNode(String),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

impl RedisArgs {
    /// One multiplexed connection, pipelining every caller's commands over one socket:
    /// measured far faster than a pool of exclusive connections on the hot path, and
    /// it reconnects on its own after Redis restarts (through Sentinel: to the primary
    /// they name then).
    pub async fn connect(&self) -> Result<RedisConnection, RedisSetupError> {
        self.connect_blocking(Duration::ZERO).await
    }

    /// A connection of its own for commands that block on the server for up to `block`:
    /// on a shared multiplexed connection they would hold up every other caller.
    pub async fn connect_blocking(
        &self,
        block: Duration,
    ) -> Result<RedisConnection, RedisSetupError> {
        let timeout = Duration::from_millis(self.redis_timeout_ms);
        if !self.redis_cluster_nodes.is_empty() {
            return self.connect_cluster(timeout, block).await;
        }
        if !self.redis_sentinels.is_empty() {
            let socket = Socket::new(self.target()?, timeout + block);
            // As below: what is refused for good ends start-up now; an unreachable primary
            // is waited for by the next command.
            if let Err(err) = socket.get().await
                && !(err.is_connection_refusal() || err.is_timeout())
            {
                return Err(err.into());
            }
            return Ok(RedisConnection::Following(Arc::new(socket)));
        }
        let client = self.client()?;
        // One attempt first: a certificate or the credentials Redis refuses stay refused,
        // so they end start-up now, with their reason. A Redis that is not up yet (refused
        // or silent) is the manager's to wait for, with its backoff.
        let probe = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        if let Err(err) = client
            .get_multiplexed_async_connection_with_config(&probe)
            .await
            && !(err.is_connection_refusal() || err.is_timeout())
        {
            return Err(err.into());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout + block));
        Ok(RedisConnection::Managed(
            ConnectionManager::new_with_config(client, config).await?,
        ))
    }

    /// A Redis Cluster's client, from the seed nodes. Its own retries follow `MOVED` and
    /// `ASK` and wait out `TRYAGAIN` (a slot migration) and `CLUSTERDOWN` (a failover in
    /// progress) within REDIS_TIMEOUT_MS; it may also resend a command whose connection
    /// dropped, which is harmless here: no answer on a cluster rests on which connection
    /// carried a write (replica confirmations are refused there, see
    /// `crate::redis::replicas`), and a resent admission finds its own slot taken
    /// (ALREADY_ISSUED, true).
    async fn connect_cluster(
        &self,
        timeout: Duration,
        block: Duration,
    ) -> Result<RedisConnection, RedisSetupError> {
        let template = redis::IntoConnectionInfo::into_connection_info(self.redis_url.as_str())?;
        let nodes = self
            .redis_cluster_nodes
            .iter()
            .map(|node| {
                let (host, port) = node
                    .rsplit_once(':')
                    .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
                    .ok_or_else(|| RedisSetupError::ClusterNode(node.clone()))?;
                let addr = match template.addr() {
                    redis::ConnectionAddr::TcpTls {
                        insecure,
                        tls_params,
                        ..
                    } => redis::ConnectionAddr::TcpTls {
                        host: host.to_owned(),
                        port,
                        insecure: *insecure,
                        tls_params: tls_params.clone(),
                    },
                    _ => redis::ConnectionAddr::Tcp(host.to_owned(), port),
                };
                Ok(template.clone().set_addr(addr))
            })
            .collect::<Result<Vec<_>, RedisSetupError>>()?;
        let mut builder = ClusterClientBuilder::new(nodes)
            .connection_timeout(timeout)
            .response_timeout(timeout + block);
        if let Some(certificates) = self.tls_certificates()? {
            builder = builder.certs(certificates);
        }
        let client = builder.build()?;
        // As for one node: what is refused for good (credentials, certificates, no
        // cluster there) ends start-up now, with its reason.
        Ok(RedisConnection::Cluster(
            client.get_async_connection().await?,
        ))
    }

    /// Where a socket of its own connects: the URL's node, or the primary the Sentinels
    /// name.
    pub fn target(&self) -> Result<Target, RedisSetupError> {
        if self.redis_sentinels.is_empty() {
            return Ok(Target::Url(self.client()?));
        }
        let node = redis::IntoConnectionInfo::into_connection_info(self.redis_url.as_str())?;
        if !matches!(node.addr(), redis::ConnectionAddr::Tcp(..)) {
            return Err(RedisSetupError::SentinelWithTls);
        }
        let sentinels: Vec<String> = self
            .redis_sentinels
            .iter()
            .map(|address| format!("redis://{address}"))
            .collect();
        let nodes = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(node.redis_settings().clone());
        Ok(Target::Sentinel(tokio::sync::Mutex::new(
            SentinelClient::build(
                sentinels,
                self.redis_sentinel_master.clone(),
                Some(nodes),
                SentinelServerType::Master,
            )?,
        )))
    }

    /// A client for the node at `host:port` with REDIS_URL's credentials and database: a
    /// node the Sentinels name, reached directly.
    pub fn node_client(&self, host: &str, port: u16) -> Result<redis::Client, RedisSetupError> {
        let info = redis::IntoConnectionInfo::into_connection_info(self.redis_url.as_str())?
            .set_addr(redis::ConnectionAddr::Tcp(host.to_owned(), port));
        Ok(redis::Client::open(info)?)
    }

    /// The Sentinels, when REDIS_SENTINELS names any.
    pub fn sentinels(&self) -> Option<Sentinels> {
        (!self.redis_sentinels.is_empty()).then(|| Sentinels {
            addresses: self.redis_sentinels.clone(),
            master: self.redis_sentinel_master.clone(),
            timeout: Duration::from_millis(self.redis_timeout_ms),
        })
    }

    /// The client, with the TLS files when set. A wrong CA or wrong credentials fail the
    /// first connection, within REDIS_TIMEOUT_MS, with the server's or the handshake's
    /// reason.
    pub fn client(&self) -> Result<redis::Client, RedisSetupError> {
        match self.tls_certificates()? {
            None => Ok(redis::Client::open(self.redis_url.as_str())?),
            Some(certificates) => Ok(redis::Client::build_with_tls(
                self.redis_url.as_str(),
                certificates,
            )?),
        }
    }

    /// The TLS files' contents, when any is set (for `rediss://` only).
    fn tls_certificates(&self) -> Result<Option<redis::TlsCertificates>, RedisSetupError> {
        let tls = self.redis_url.starts_with("rediss://");
        let files = self.redis_ca_file.is_some() || self.redis_client_cert_file.is_some();
        if !files {
            return Ok(None);
        }
        if !tls {
            return Err(RedisSetupError::TlsFilesWithoutTls);
        }
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|error| RedisSetupError::File {
                path: path.display().to_string(),
                error,
            })
        };
        let client_tls = match (&self.redis_client_cert_file, &self.redis_client_key_file) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
            _ => None,
        };
        let root_cert = self.redis_ca_file.as_ref().map(read).transpose()?;
        Ok(Some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}
