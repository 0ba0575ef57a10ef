//! issuer-bench: drives a running issuer-api and reads PostgreSQL to see rows land.

mod client;
mod seed;

use std::time::Duration;

use anyhow::bail;
use clap::{Parser, Subcommand};

use crate::client::ApiClient;

#[derive(Parser)]
#[command(
    name = "issuer-bench",
    version,
    about = "Load generator for coupon-issuance"
)]
struct Cli {
    /// Base URL of a running issuer-api.
    #[arg(long, env = "BENCH_API", default_value = "http://127.0.0.1:8080")]
    api: String,
    /// Admin token of that API (to create the coupons under test).
    #[arg(long, env = "ISSUER_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// The database the workers write to, read to time Phase 2.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://coupon:coupon@127.0.0.1:5432/coupon_issuance",
        hide_env_values = true
    )]
    database_url: String,
    /// Write the report as JSON instead of a Markdown table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    scenario: Option<Scenario>,
}

#[derive(Subcommand)]
enum Scenario {
    /// The seed report's experiment (default): distinct users at once on one coupon.
    Seed {
        #[arg(long, default_value_t = 5000)]
        users: u64,
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..))]
        quantity: i64,
    },
}

#[actix_rt::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Thousands of simultaneous connections need as many descriptors, on both ends.
    let limit = rlimit::increase_nofile_limit(u64::MAX)?;
    let scenario = cli.scenario.unwrap_or(Scenario::Seed {
        users: 5000,
        quantity: 500,
    });
    let api = ApiClient::new(&cli.api, &cli.admin_token);
    api.wait_ready(Duration::from_secs(30)).await?;
    match scenario {
        Scenario::Seed { users, quantity } => {
            if users + 64 > limit {
                bail!(
                    "{users} connections need more open files than this process may have ({limit})"
                );
            }
            let report = seed::run(&api, &cli.database_url, users, quantity).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", report.markdown());
            }
            let wrong = report.violations();
            if !wrong.is_empty() {
                bail!("invariants violated: {}", wrong.join("; "));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
