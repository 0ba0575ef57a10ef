//! issuer-api's settings: every flag also reads an environment variable.

use std::net::SocketAddr;

use clap::Parser;
use coupon_core::config::{DatabaseArgs, KafkaArgs, RedisArgs};
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
    /// Bearer token that authorises creating coupons. Required; never logged.
    #[arg(long, env = "ISSUER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// HTTP worker threads; 0 means one per CPU.
    #[arg(long, env = "ISSUER_HTTP_WORKERS", default_value_t = 0)]
    pub http_workers: usize,
    /// How long the broker may take to acknowledge an event before the request answers 503.
    #[arg(long, env = "PUBLISH_TIMEOUT_MS", default_value_t = 3000)]
    pub publish_timeout_ms: u64,
    #[command(flatten)]
    pub redis: RedisArgs,
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
