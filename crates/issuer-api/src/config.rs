//! issuer-api's settings: every flag also reads an environment variable.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use coupon_core::config::{DatabaseArgs, KafkaArgs, QueueKind, RedisArgs};
use coupon_core::telemetry::LogArgs;

#[derive(Parser, Clone)]
#[command(
    name = "issuer-api",
    version,
    about = "First-come-first-served coupon issuing API"
)]
pub struct Config {
    /// Address the HTTP server listens on.
    #[arg(long, env = "ISSUER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// A separate address for /metrics, /healthz and /readyz, which then leave the public
    /// listener; unset, they are served beside the API.
    #[arg(long, env = "ISSUER_OPS_LISTEN")]
    pub ops_listen: Option<SocketAddr>,
    /// Bearer token that authorises creating coupons. Required; never logged.
    #[arg(long, env = "ISSUER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// Where admitted events go: `kafka` (answer after the broker's acknowledgement) or
    /// `redis` (a stream per coupon, appended by the admission script; no broker needed).
    #[arg(long, env = "ISSUE_QUEUE", value_enum, default_value_t = QueueKind::Kafka)]
    pub queue: QueueKind,
    /// HTTP worker threads; 0 means one per CPU.
    #[arg(long, env = "ISSUER_HTTP_WORKERS", default_value_t = 0)]
    pub http_workers: usize,
    /// How long the broker may take to acknowledge an event before the request answers 503.
    #[arg(long, env = "PUBLISH_TIMEOUT_MS", default_value_t = 3000)]
    pub publish_timeout_ms: u64,
    /// How often in-doubt events nobody retried are published again (and how old they
    /// must be first, so a user's own retry goes first).
    #[arg(long, env = "RECONCILE_INTERVAL_MS", default_value_t = 5000)]
    pub reconcile_interval_ms: u64,
    /// The workers' consumer group: rebuilding a coupon's Redis state waits for it to
    /// reach the end of the topic.
    #[arg(long, env = "WORKER_GROUP_ID", default_value = "coupon-issue-worker")]
    pub worker_group_id: String,
    /// How long a rebuild waits for the workers before giving up (requests keep answering
    /// 503 and the next one tries again).
    #[arg(long, env = "REBUILD_TIMEOUT_MS", default_value_t = 30_000)]
    pub rebuild_timeout_ms: u64,
    /// Redis replicas that must confirm an admission (WAIT) before it is answered SUCCESS;
    /// 0 answers once the primary has it. Fewer confirmations in time answer 503 (the
    /// admission stands; a retry learns the outcome).
    #[arg(long, env = "REDIS_MIN_REPLICAS", default_value_t = 0)]
    pub redis_min_replicas: u32,
    /// How long the replicas get to confirm; below REDIS_TIMEOUT_MS, which bounds every
    /// Redis command.
    #[arg(long, env = "REDIS_REPLICA_TIMEOUT_MS", default_value_t = 500)]
    pub redis_replica_timeout_ms: u64,
    /// Issue requests one user may send per rate window, across every API replica; 0 is no
    /// limit. The default lets a person retry freely and stops a script.
    #[arg(long, env = "ISSUER_RATE_PER_USER", default_value_t = 10)]
    pub rate_per_user: u32,
    /// Issue requests one client address may send per rate window; 0 (the default) is no
    /// limit. Behind a proxy every client has the proxy's address: set
    /// ISSUER_CLIENT_ADDRESS_HEADER before turning this on there.
    #[arg(long, env = "ISSUER_RATE_PER_ADDRESS", default_value_t = 0)]
    pub rate_per_address: u32,
    /// The rate limits' window.
    #[arg(long, env = "ISSUER_RATE_WINDOW_MS", default_value_t = 1000)]
    pub rate_window_ms: u64,
    /// The header a trusted proxy in front sets to the client's address (its last entry is
    /// used); unset, the connection's peer address. Set it only behind such a proxy: anyone
    /// can send any header.
    #[arg(long, env = "ISSUER_CLIENT_ADDRESS_HEADER")]
    pub client_address_header: Option<String>,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Serve the HTTP API (what runs without a command).
    Serve,
    /// Rebuild coupons' Redis state from PostgreSQL after Redis lost it: waits for the
    /// workers to persist everything already published, then restores quantity, window and
    /// every holder. Admission for a coupon stays closed (503) until its state is back.
    RebuildRedis {
        /// The coupon to rebuild.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        coupon: Option<coupon_core::domain::CouponId>,
        /// Every coupon PostgreSQL knows.
        #[arg(long)]
        all: bool,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Config::command().debug_assert();
    }
}
