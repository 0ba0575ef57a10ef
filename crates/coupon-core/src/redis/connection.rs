//! The services' way to Redis: a connection that follows the primary.
//!
//! - On a plain `REDIS_URL` (one node, or a managed service's primary endpoint), one
//!   multiplexed connection that redis-rs's `ConnectionManager` reconnects on its own.
//! - Through Sentinel (`REDIS_SENTINELS`), a [`Socket`] whose every new connection asks the
//!   Sentinels where the primary is now, retired when it breaks or when the node it reached
//!   says it is a replica (`READONLY`: it was demoted by a failover) or has lost its
//!   replicas (`NOREPLICAS`: it may have been cut off and replaced).
//!
//! - On a Redis Cluster (`REDIS_CLUSTER_NODES`), redis-rs's cluster client: every command
//!   goes to the primary of its first key's slot, follows `MOVED` and `ASK` during a slot
//!   migration, and waits and retries on `TRYAGAIN` and `CLUSTERDOWN`. Every key of one
//!   command shares a hash tag (`crate::redis::keys`), so each is single-slot; a pipeline of
//!   commands on several slots is sent as its commands, side by side.
//!
//! A [`Socket`] also carries the writes that replicas must confirm, on either kind of
//! endpoint: its connections are numbered and never replaced behind the caller's back, so a
//! WAIT is known to follow its write on the same socket (`issuer-api`'s `replication`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::sentinel::SentinelClient;
use redis::{AsyncConnectionConfig, Cmd, FromRedisValue, Pipeline, RedisError, RedisFuture, Value};
use tokio::sync::Mutex;

/// Where a [`Socket`] connects.
pub enum Target {
    /// One address (resolved again at every connect: a DNS name may move).
    Url(redis::Client),
    /// The primary the Sentinels name at each connect.
    Sentinel(Mutex<SentinelClient>),
}

impl Target {
    async fn client(&self) -> Result<redis::Client, RedisError> {
        match self {
            Self::Url(client) => Ok(client.clone()),
            Self::Sentinel(sentinel) => sentinel.lock().await.async_get_client().await,
        }
    }
}

/// A connection the caller sent commands on, with the number of its socket.
#[derive(Clone)]
pub struct Bound {
    pub generation: u64,
    pub connection: MultiplexedConnection,
}

/// One connection at a time, never replaced behind its users' backs: a command that finds
/// it broken (or on a demoted primary) reports that, and the next caller gets a new one
/// with the next number.
pub struct Socket {
    target: Target,
    config: AsyncConnectionConfig,
    current: RwLock<Option<Bound>>,
    connecting: Mutex<()>,
    generations: AtomicU64,
    /// When a connection was last retired for a primary's `NOREPLICAS`.
    left_for_want_of_replicas: std::sync::Mutex<Option<Instant>>,
}

/// Least time between two connections retired for `NOREPLICAS`: a primary whose replicas
/// are merely late (a new primary's joining, a lag past `min-replicas-max-lag`) answers it
/// to every write, and asking the Sentinels again at each would only churn connections.
const NOREPLICAS_RECHECK: Duration = Duration::from_secs(1);

impl Socket {
    /// `timeout` bounds the connect and every command.
    pub fn new(target: Target, timeout: Duration) -> Self {
        Self {
            target,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout)),
            current: RwLock::new(None),
            connecting: Mutex::new(()),
            generations: AtomicU64::new(0),
            left_for_want_of_replicas: std::sync::Mutex::new(None),
        }
    }

    fn current(&self) -> Option<Bound> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The connection in use, connecting a new one if the last was retired.
    pub async fn get(&self) -> Result<Bound, RedisError> {
        if let Some(bound) = self.current() {
            return Ok(bound);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(bound) = self.current() {
            return Ok(bound);
        }
        let connection = self
            .target
            .client()
            .await?
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        let bound = Bound {
            generation: self.generations.fetch_add(1, Ordering::SeqCst) + 1,
            connection,
        };
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(bound.clone());
        Ok(bound)
    }

    /// Passes on what a command sent on connection `generation` came to, retiring the
    /// connection if it failed in a way that calls for that ([`Socket::failed`]).
    pub fn report<T>(&self, generation: u64, sent: Result<T, RedisError>) -> Result<T, RedisError> {
        if let Err(err) = &sent {
            self.failed(generation, err);
        }
        sent
    }

    /// The same for replies still as values: redis-rs hands a server's error reply (a
    /// script's `READONLY` or `NOREPLICAS`, say) back as a value, made an error only when the
    /// caller converts it, past this connection.
    fn report_replies<'a>(&self, generation: u64, replies: impl IntoIterator<Item = &'a Value>) {
        for reply in replies {
            if let Value::ServerError(err) = reply {
                self.failed(generation, &RedisError::from(err.clone()));
            }
        }
    }

    /// Reports an error met on connection `generation`: one that broke it, or that says the
    /// node is no longer the primary, retires it (a timeout does not: the connection, and
    /// what it carried, may still be good). A primary that refuses writes for want of
    /// replicas (`NOREPLICAS`) may have been cut off from them and replaced while this
    /// process still reaches it: through Sentinel, the next connect asks where the primary
    /// is again (once a second at most), rather than stay on it until the partition heals.
    pub fn failed(&self, generation: u64, err: &RedisError) {
        let demoted = match err.code() {
            Some("READONLY") => true,
            Some("NOREPLICAS") => self.may_leave_for_want_of_replicas(),
            _ => false,
        };
        if !(err.is_unrecoverable_error() || demoted) {
            return;
        }
        let mut current = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if current
            .as_ref()
            .is_some_and(|bound| bound.generation == generation)
        {
            tracing::warn!(generation, error = %err, "a Redis connection was retired");
            *current = None;
        }
    }

    /// Whether a `NOREPLICAS` may retire the connection now: only through Sentinel (a URL
    /// leads to the same node again), and once per [`NOREPLICAS_RECHECK`].
    fn may_leave_for_want_of_replicas(&self) -> bool {
        if !matches!(self.target, Target::Sentinel(_)) {
            return false;
        }
        let mut last = self
            .left_for_want_of_replicas
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < NOREPLICAS_RECHECK) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// The shared connection every service uses for its ordinary commands.
#[derive(Clone)]
pub enum RedisConnection {
    Managed(ConnectionManager),
    Following(Arc<Socket>),
    Cluster(ClusterConnection),
}

impl RedisConnection {
    /// Whether this is a Redis Cluster's client: commands on several slots cannot share a
    /// pipeline or a script.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Sends `pipeline` whole, on one connection to the node that holds `key` (on a
    /// cluster, the primary of its slot), and returns its replies: for a write and the WAIT
    /// that must follow it on that very connection. (Any other pipeline on a cluster is sent
    /// as its commands, each to its own slot's node.)
    pub async fn pipeline_on_node_of<T: FromRedisValue>(
        &mut self,
        key: &str,
        pipeline: &Pipeline,
    ) -> Result<T, RedisError> {
        match self {
            Self::Cluster(cluster) => {
                let route =
                    SingleNodeRoutingInfo::SpecificNode(Route::with_key(key, SlotAddr::Master));
                let count = pipeline.cmd_iter().count();
                let replies = cluster
                    .route_pipeline(pipeline.clone(), 0, count, route)
                    .await?;
                // A command's error reply is the pipeline's error, with its code (NOGROUP,
                // say), as a pipeline sent on one node reports it.
                if let Some(Value::ServerError(err)) = replies
                    .iter()
                    .find(|reply| matches!(reply, Value::ServerError(_)))
                {
                    return Err(err.clone().into());
                }
                Ok(T::from_redis_value(Value::Array(replies))?)
            }
            _ => pipeline.query_async(self).await,
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Managed(manager) => manager.req_packed_command(cmd),
            Self::Cluster(cluster) => cluster.req_packed_command(cmd),
            Self::Following(socket) => Box::pin(async move {
                let mut bound = socket.get().await?;
                let sent = bound.connection.req_packed_command(cmd).await;
                if let Ok(reply) = &sent {
                    socket.report_replies(bound.generation, [reply]);
                }
                socket.report(bound.generation, sent)
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Managed(manager) => manager.req_packed_commands(pipeline, offset, count),
            // A transaction must be single-slot, and is sent as one. Any other pipeline is a
            // batch of independent commands for the caller's convenience (one count per
            // coupon, one XACK per stream): on a cluster they may live on several nodes,
            // which one pipeline cannot reach, so each goes to its own slot's primary, all
            // at once. Replies keep the pipeline's order.
            Self::Cluster(cluster) if !pipeline.is_transaction() => {
                let cluster = cluster.clone();
                Box::pin(async move {
                    let sent = pipeline.cmd_iter().map(|cmd| {
                        let mut cluster = cluster.clone();
                        async move { cluster.req_packed_command(cmd).await }
                    });
                    futures_util::future::try_join_all(sent).await
                })
            }
            Self::Cluster(cluster) => cluster.req_packed_commands(pipeline, offset, count),
            Self::Following(socket) => Box::pin(async move {
                let mut bound = socket.get().await?;
                let sent = bound
                    .connection
                    .req_packed_commands(pipeline, offset, count)
                    .await;
                if let Ok(replies) = &sent {
                    socket.report_replies(bound.generation, replies);
                }
                socket.report(bound.generation, sent)
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Managed(manager) => manager.get_db(),
            Self::Cluster(cluster) => cluster.get_db(),
            Self::Following(socket) => socket
                .current()
                .map_or(0, |bound| bound.connection.get_db()),
        }
    }
}
