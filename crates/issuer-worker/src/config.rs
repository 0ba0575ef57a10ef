//! issuer-worker's settings: every flag also reads an environment variable.

use clap::Parser;
use coupon_core::config::{DatabaseArgs, KafkaArgs};
use coupon_core::telemetry::LogArgs;

#[derive(Parser, Clone)]
#[command(
    name = "issuer-worker",
    version,
    about = "Persists issue events from Kafka into PostgreSQL"
)]
pub struct Config {
    /// Kafka consumer group; run one process per partition at most for full parallelism.
    #[arg(long, env = "WORKER_GROUP_ID", default_value = "coupon-issue-worker")]
    pub group_id: String,
    /// Most events written in one PostgreSQL transaction.
    #[arg(long, env = "WORKER_BATCH_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// How long a batch may wait to fill after its first event arrived.
    #[arg(long, env = "WORKER_BATCH_LINGER_MS", default_value_t = 20)]
    pub batch_linger_ms: u64,
    /// Longest pause between retries of a batch PostgreSQL refused (it doubles up to this).
    #[arg(long, env = "WORKER_RETRY_MAX_MS", default_value_t = 5000)]
    pub retry_max_ms: u64,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Config::command().debug_assert();
    }
}
