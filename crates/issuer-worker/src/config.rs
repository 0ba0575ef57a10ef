//! issuer-worker's settings: every flag also reads an environment variable.

use clap::{Parser, Subcommand};
use coupon_core::config::{
    DatabaseArgs, KafkaArgs, RedisArgs, ReplicaArgs, SHARED_SECRETS, parse_refusing_secrets,
};
use coupon_core::db::failed_events::Status;
use coupon_core::domain::QueueKind;
use coupon_core::telemetry::LogArgs;

#[derive(Parser, Clone)]
#[command(
    name = "issuer-worker",
    version,
    about = "Persists issue events from Kafka or Redis Streams into PostgreSQL"
)]
pub struct Config {
    /// Where issue events come from: `kafka` (the issue topic) or `redis` (the coupon
    /// streams the admission script appends to). Must match issuer-api's.
    #[arg(long, env = "ISSUE_QUEUE", value_enum, default_value_t = QueueKind::Kafka)]
    pub queue: QueueKind,
    /// Consumer group (Kafka consumer group, or the streams' consumer group); in Kafka mode
    /// run one process per partition at most for full parallelism.
    #[arg(long, env = "WORKER_GROUP_ID", default_value = "coupon-issue-worker")]
    pub group_id: String,
    /// A stable identity for this worker (static group membership): restarted with the
    /// same id, it takes its partitions back at once instead of after the dead session
    /// times out. Give each worker its own (a StatefulSet's pod name, say). Unset: dynamic.
    /// In the Redis queue mode it is the stream consumer name (unset: a random one).
    #[arg(long, env = "WORKER_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Most events written in one PostgreSQL transaction. 2,000 drains a backlog at over
    /// 80% of a bare consumer's read rate here, 500 at about 75% (docs/performance.md);
    /// a quiet stream still flushes after the linger, whatever the size.
    #[arg(long, env = "WORKER_BATCH_SIZE", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// How long a batch may wait to fill after its first event arrived.
    #[arg(long, env = "WORKER_BATCH_LINGER_MS", default_value_t = 20)]
    pub batch_linger_ms: u64,
    /// Longest pause between retries of a batch PostgreSQL refused (it doubles up to this).
    #[arg(long, env = "WORKER_RETRY_MAX_MS", default_value_t = 5000)]
    pub retry_max_ms: u64,
    /// How often failed events whose retry time has come are retried.
    #[arg(long, env = "WORKER_REDRIVE_INTERVAL_MS", default_value_t = 5000)]
    pub redrive_interval_ms: u64,
    /// Redis queue mode: how long a stream entry may sit unacknowledged with its consumer
    /// before another worker claims it (the consumer died, or is stuck retrying).
    #[arg(long, env = "WORKER_CLAIM_IDLE_MS", default_value_t = 15_000)]
    pub claim_idle_ms: u64,
    /// Where to serve `/metrics` and `/healthz` (for example 0.0.0.0:9464). Unset: not served.
    #[arg(long, env = "WORKER_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub replicas: ReplicaArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Config {
    /// The process's own settings, refusing a secret given on the command line, where any
    /// user of the machine can read it.
    pub fn from_process() -> anyhow::Result<Self> {
        Self::from_args(std::env::args_os())
    }

    fn from_args(
        args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>,
    ) -> anyhow::Result<Self> {
        let secrets = SHARED_SECRETS.map(|(id, variable)| (id, variable, ""));
        Ok(parse_refusing_secrets(args, &secrets)?)
    }
}

#[derive(Subcommand, Clone, Debug)]
pub enum Command {
    /// Consume and persist (what runs without a command).
    Run,
    /// See and re-drive the events set aside in `failed_events` (and the dead-letter topic).
    #[command(subcommand)]
    Dlq(DlqCommand),
}

#[derive(Subcommand, Clone, Debug)]
pub enum DlqCommand {
    /// List failed events, newest first.
    List {
        #[arg(long, value_enum)]
        status: Option<Status>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Retry failed events now, whatever their schedule says.
    Replay {
        /// The failed event's id, as `dlq list` shows it.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// Every failed event not yet recovered.
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

    #[test]
    fn the_sasl_password_is_refused_on_the_command_line() {
        let err = super::Config::from_args(["issuer-worker", "--kafka-sasl-password=abc"])
            .err()
            .expect("taken");
        assert!(
            err.to_string()
                .contains("KAFKA_SASL_PASSWORD in the environment"),
            "{err}"
        );
    }
}
