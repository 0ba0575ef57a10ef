//! issuer-bench: drives a running issuer-api and reads PostgreSQL to see rows land.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use coupon_core::domain::QueueKind;
use issuer_bench::ceiling::{self, Shape};
use issuer_bench::chaos::{self, ChaosOptions, RedisTopology};
use issuer_bench::client::ApiClient;
use issuer_bench::report::Report;
use issuer_bench::{bucket_spread, connections, drain, race, seed, sustained};
use testkit::credentials::UserCredentials;
use testkit::redis_stats;

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
    /// Base URL of that API's operations listener (its ISSUER_OPS_LISTEN), for readiness.
    #[arg(long, env = "BENCH_OPS", default_value = "http://127.0.0.1:8081")]
    ops: String,
    /// Admin token of that API (to create the coupons under test).
    #[arg(long, env = "ISSUER_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// The HS256 secret that API verifies users' tokens with: the bench signs a token per
    /// user. Like the admin token, taken from the environment only.
    #[arg(long, env = "ISSUER_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// How the bench's users prove who they are: as that API's ISSUER_USER_AUTH says.
    #[arg(long, env = "ISSUER_USER_AUTH", value_enum, default_value_t = UserAuth::Jwt)]
    user_auth: UserAuth,
    /// The gateway's user header, in gateway-header mode.
    #[arg(long, env = "ISSUER_USER_HEADER", default_value = "x-user-id")]
    user_header: String,
    /// The gateway's secret, in gateway-header mode (the bench stands in for the gateway).
    /// Taken from the environment only.
    #[arg(long, env = "ISSUER_GATEWAY_SECRET", hide_env_values = true)]
    gateway_secret: Option<String>,
    /// The header carrying the gateway's secret.
    #[arg(
        long,
        env = "ISSUER_GATEWAY_SECRET_HEADER",
        default_value = "x-gateway-secret"
    )]
    gateway_secret_header: String,
    /// The database the workers write to, read to time Phase 2.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = coupon_core::config::DEFAULT_DATABASE_URL,
        hide_env_values = true
    )]
    database_url: String,
    /// Kafka bootstrap servers, for the `drain` scenario.
    #[arg(long, env = "KAFKA_BROKERS", default_value = coupon_core::config::DEFAULT_KAFKA_BROKERS)]
    kafka_brokers: String,
    /// Redis, for the `race` and `connections` scenarios (which talk to nothing else) and
    /// the services `seed --mode` starts.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = coupon_core::config::DEFAULT_REDIS_URL,
        hide_env_values = true
    )]
    redis_url: String,
    /// Write the report as JSON instead of a Markdown table.
    #[arg(long, global = true)]
    json: bool,
    /// Also write an HTML page with the report and its plots into this directory.
    #[arg(long, global = true, value_name = "DIR")]
    report: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Option<Scenario>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum UserAuth {
    /// A bearer JWT per user, signed with ISSUER_JWT_SECRET.
    Jwt,
    /// The header a gateway sets (ISSUER_USER_HEADER).
    GatewayHeader,
}

impl Cli {
    /// The process's own arguments; secrets given on the command line, where any user of
    /// the machine can read them, are refused.
    fn from_process() -> anyhow::Result<Self> {
        let matches = Self::command().get_matches();
        for (id, variable) in [
            ("admin_token", "ISSUER_ADMIN_TOKEN"),
            ("jwt_secret", "ISSUER_JWT_SECRET"),
            ("gateway_secret", "ISSUER_GATEWAY_SECRET"),
        ] {
            if matches.value_source(id) == Some(ValueSource::CommandLine) {
                bail!("secrets are not taken on the command line: set {variable}");
            }
        }
        Ok(Self::from_arg_matches(&matches)?)
    }

    fn users(&self) -> anyhow::Result<UserCredentials> {
        match self.user_auth {
            UserAuth::Jwt => {
                let secret = self.jwt_secret.as_deref().context(
                    "set ISSUER_JWT_SECRET to the API's HS256 secret (or ISSUER_USER_AUTH=gateway-header)",
                )?;
                Ok(UserCredentials::jwt(secret)?)
            }
            UserAuth::GatewayHeader => Ok(UserCredentials::GatewayHeader {
                user_header: self.user_header.clone(),
                secret_header: self.gateway_secret_header.clone(),
                secret: self
                    .gateway_secret
                    .clone()
                    .context("set ISSUER_GATEWAY_SECRET to the API's gateway secret")?,
            }),
        }
    }
}

#[derive(Subcommand)]
enum Scenario {
    /// The seed report's experiment (default): distinct users at once on one coupon.
    /// Without `--mode` it drives the API at `--api`; with `--mode` (repeatable) it starts
    /// an issuer-api and issuer-worker per queue mode itself and prints the modes side by
    /// side, each beside the seed's figures for the same design.
    Seed {
        #[arg(long, default_value_t = 5000)]
        users: u64,
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..))]
        quantity: i64,
        #[arg(long = "mode", value_enum)]
        modes: Vec<QueueKind>,
        /// Where issuer-api and issuer-worker are (with `--mode`); default: beside this binary.
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Besides all at once, the same users from this many clients (the seed's own
        /// concurrency by Little's law); 0 runs all at once only.
        #[arg(long, default_value_t = seed::SEED_CLIENTS)]
        clients: u64,
        /// How many buckets the coupon's stock is split into (above 1: Kafka mode only).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
        buckets: u16,
    },
    /// Many coupons, a stream of requests at a fixed rate (`--rate`, open model, latency
    /// corrected for coordinated omission) or from fixed clients (`--concurrency`).
    Sustained {
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        coupons: u64,
        #[arg(long, default_value_t = 50_000)]
        requests: u64,
        /// Quantity of each coupon: at least requests / coupons for all admissions to
        /// succeed; small for the sold-out shape of a flash sale after its first second.
        #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(i64).range(1..))]
        quantity: i64,
        #[arg(long, conflicts_with = "concurrency")]
        rate: Option<f64>,
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Redis nodes (`host:port,...`: a cluster's primaries, or the one node) whose `INFO
        /// commandstats` are reset before the run and printed after it, with how evenly
        /// the nodes shared the scripts.
        #[arg(long, value_delimiter = ',')]
        redis_stats: Vec<String>,
        /// How many buckets each coupon's stock is split into (above 1: Kafka mode only):
        /// with `--coupons 1`, one hot coupon's spread over a cluster's primaries.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
        buckets: u16,
    },
    /// The product against the hand-built ceiling (`../shared/tools/ceiling`), same closed
    /// load, alternating, in one run: the ratio of their medians per shape and connections.
    Ceiling {
        /// Base URL of the running ceiling.
        #[arg(long, env = "BENCH_CEILING", default_value = "http://127.0.0.1:18080")]
        ceiling: String,
        /// The ceiling's QTY (users per coupon), which it was started with.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..))]
        ceiling_quantity: i64,
        #[arg(long = "shape", value_enum, default_values_t = [Shape::Admitted, Shape::SoldOut])]
        shapes: Vec<Shape>,
        /// Concurrent connections (repeat the flag).
        #[arg(long = "connections", default_values_t = [100, 400])]
        connections: Vec<usize>,
        /// Requests per run.
        #[arg(long, default_value_t = 50_000)]
        requests: u64,
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        rounds: u32,
        /// The product's queue mode, as it was started with. In the Redis queue mode its
        /// admitted path waits for no broker, so it is compared with the ceiling's `/admit`.
        #[arg(long, env = "ISSUE_QUEUE", value_enum, default_value_t = QueueKind::Kafka)]
        queue: QueueKind,
    },
    /// Persist rate of a backlog published with no worker running, against a bare consumer
    /// reading it from the same broker; one row per `--worker-batch` size.
    Drain {
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        /// Worker batch sizes to compare (repeat the flag); 1 is the seed's mode.
        #[arg(long = "worker-batch", default_values_t = [2000, 1])]
        worker_batch: Vec<u32>,
        /// Events drained one transaction at a time, at most (the seed's mode is slow).
        #[arg(long, default_value_t = 3000)]
        per_message_events: usize,
        /// Where issuer-worker is; default: beside this binary.
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    /// One hot coupon on a Redis Cluster, in 1 and in K buckets, alternating: each
    /// primary's share of its script calls and µs, and Redis µs per admitted request.
    /// Coupons are created in PostgreSQL (`DATABASE_URL`), their tags from the slot map.
    BucketSpread {
        /// The cluster's nodes (`host:port,...`), as `REDIS_CLUSTER_NODES` takes them; the
        /// default is the test suite's cluster (`make test-cluster`).
        #[arg(
            long,
            env = "REDIS_CLUSTER_NODES",
            default_value = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103"
        )]
        cluster_nodes: String,
        #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
        requests: u64,
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
        concurrency: u64,
        /// Rounds, each on a new coupon (a new id, so new tags) per bucket count.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        coupons: u32,
        /// The bucket counts compared (repeat the flag).
        #[arg(long = "buckets", default_values_t = [1, 3], value_parser = clap::value_parser!(u16).range(1..=16))]
        buckets: Vec<u16>,
    },
    /// The seed's "before Lua" race against Redis: a naive SCARD-then-SADD versus the
    /// admission script, same load; repeats until the naive path goes wrong.
    Race {
        #[arg(long, default_value_t = 5000)]
        users: u64,
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..))]
        quantity: i64,
        /// Most trials before reporting that the naive path happened to be right.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
        trials: u32,
    },
    /// The admission script over one multiplexed Redis connection versus pools of
    /// exclusive connections, same concurrent load (Redis only).
    Connections {
        #[arg(long, default_value_t = 200_000)]
        requests: u64,
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        concurrency: u64,
        /// Pool sizes to compare (repeat the flag).
        #[arg(long = "pool", default_values_t = [8, 32, 128])]
        pools: Vec<usize>,
    },
    /// Faults under load on a cluster of its own (Redis, broker, two APIs, two workers),
    /// then every invariant checked; exits non-zero on a violation.
    Chaos {
        /// The queue mode of the cluster's services.
        #[arg(long, value_enum, default_value_t = QueueKind::Kafka)]
        queue: QueueKind,
        /// The Redis the cluster runs: one node (its faults: restarts, a lost file tail, a
        /// lagging replica promoted) or a primary with replicas under Sentinel (its faults:
        /// the primary killed, then failed back to).
        #[arg(long, value_enum, default_value_t = RedisTopology::Single)]
        redis_topology: RedisTopology,
        /// How long the load runs; the faults are spread over it.
        #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u64).range(30..))]
        duration_secs: u64,
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1000))]
        coupons: u64,
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(i64).range(1..))]
        quantity: i64,
        /// How many buckets each coupon's stock is split into (above 1: Kafka mode only).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
        buckets: u16,
        /// Where issuer-api and issuer-worker are; default: beside this binary.
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Keep the chaos database afterwards, to look at.
        #[arg(long)]
        keep: bool,
    },
}

#[actix_rt::main]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::from_process()?;
    // Thousands of simultaneous connections need as many descriptors, on both ends.
    let limit = rlimit::increase_nofile_limit(u64::MAX)?;
    let scenario = cli.scenario.take().unwrap_or(Scenario::Seed {
        users: 5000,
        quantity: 500,
        modes: Vec::new(),
        bin_dir: None,
        clients: seed::SEED_CLIENTS,
        buckets: 1,
    });
    match scenario {
        Scenario::Drain {
            events,
            worker_batch,
            per_message_events,
            bin_dir,
        } => {
            let bin_dir = bin_dir_or_own(bin_dir)?;
            let report = drain::run(
                &bin_dir,
                &cli.kafka_brokers,
                &cli.database_url,
                events,
                &worker_batch,
                per_message_events,
            )
            .await?;
            report.emit(cli.json, cli.report.as_deref())?;
        }
        Scenario::Sustained {
            coupons,
            requests,
            quantity,
            rate,
            concurrency,
            redis_stats: stats_nodes,
            buckets,
        } => {
            let api = std::rc::Rc::new(ApiClient::pooled(
                &cli.api,
                &cli.admin_token,
                cli.users()?,
                concurrency,
            ));
            api.wait_ready(&cli.ops, Duration::from_secs(30)).await?;
            let mut ids = Vec::new();
            for n in 0..coupons {
                ids.push(
                    api.create_coupon(&format!("sustained {n}"), quantity, buckets)
                        .await?,
                );
            }
            let load = match rate {
                Some(rate) => sustained::Load::Rate(rate),
                None => sustained::Load::Concurrency(concurrency),
            };
            redis_stats::reset(&stats_nodes).await?;
            let report = sustained::run(api, &ids, requests, load).await?;
            report.emit(cli.json, cli.report.as_deref())?;
            if !stats_nodes.is_empty() {
                let answered = report.answers.values().sum();
                redis_stats::print(&redis_stats::read(&stats_nodes).await?, answered);
            }
        }
        Scenario::Ceiling {
            ceiling: ceiling_url,
            ceiling_quantity,
            shapes,
            connections,
            requests,
            rounds,
            queue,
        } => {
            let targets = ceiling::Targets {
                product: &cli.api,
                admin_token: &cli.admin_token,
                users: cli.users()?,
                ceiling: &ceiling_url,
                ceiling_quantity,
            };
            ApiClient::new(&cli.api, &cli.admin_token, cli.users()?)
                .wait_ready(&cli.ops, Duration::from_secs(30))
                .await?;
            let options = ceiling::Options {
                shapes,
                connections,
                requests,
                rounds,
                queue,
            };
            ceiling::run(&targets, &options)
                .await?
                .emit(cli.json, cli.report.as_deref())?;
        }
        Scenario::BucketSpread {
            cluster_nodes,
            requests,
            concurrency,
            coupons,
            buckets,
        } => {
            let options = bucket_spread::SpreadOptions {
                cluster_nodes: &cluster_nodes,
                database_url: &cli.database_url,
                requests,
                concurrency: concurrency as usize,
                coupons,
                buckets: &buckets,
            };
            bucket_spread::run(options)
                .await?
                .emit(cli.json, cli.report.as_deref())?;
        }
        Scenario::Race {
            users,
            quantity,
            trials,
        } => {
            race::run(&cli.redis_url, users, quantity, trials)
                .await?
                .emit(cli.json, cli.report.as_deref())?;
        }
        Scenario::Connections {
            requests,
            concurrency,
            pools,
        } => {
            connections::run(&cli.redis_url, requests, concurrency as usize, &pools)
                .await?
                .emit(cli.json, cli.report.as_deref())?;
        }
        Scenario::Chaos {
            queue,
            redis_topology,
            duration_secs,
            coupons,
            quantity,
            buckets,
            bin_dir,
            keep,
        } => {
            let bin_dir = bin_dir_or_own(bin_dir)?;
            let options = ChaosOptions {
                queue,
                topology: redis_topology,
                duration: Duration::from_secs(duration_secs),
                coupons: coupons as usize,
                quantity,
                buckets,
                keep,
            };
            if !chaos::run(&bin_dir, &cli.database_url, options).await? {
                bail!("chaos: invariants violated (see the tables above)");
            }
        }
        Scenario::Seed {
            users,
            quantity,
            modes,
            bin_dir,
            clients,
            buckets,
        } => {
            let mut models = vec![seed::LoadModel::AllAtOnce];
            if clients > 0 {
                models.push(seed::LoadModel::Clients(clients));
            }
            if users + 64 > limit {
                bail!(
                    "{users} connections need more open files than this process may have ({limit})"
                );
            }
            if !modes.is_empty() {
                let bin_dir = bin_dir_or_own(bin_dir)?;
                let services = seed::Services {
                    bin_dir: &bin_dir,
                    database_url: &cli.database_url,
                    redis_url: &cli.redis_url,
                    kafka_brokers: &cli.kafka_brokers,
                    admin_token: &cli.admin_token,
                    jwt_secret: cli.jwt_secret.as_deref().context(
                        "set ISSUER_JWT_SECRET: the services started here verify users' tokens with it",
                    )?,
                };
                let comparison =
                    seed::compare(&services, &modes, users, quantity, buckets, &models).await?;
                comparison.emit(cli.json, cli.report.as_deref())?;
                let wrong = comparison.violations();
                if !wrong.is_empty() {
                    bail!("invariants violated: {}", wrong.join("; "));
                }
                return Ok(());
            }
            let api = ApiClient::new(&cli.api, &cli.admin_token, cli.users()?);
            api.wait_ready(&cli.ops, Duration::from_secs(30)).await?;
            // The API's queue mode is not known from here: its column is the seed's Kafka one.
            let mut comparison = seed::SeedComparison { runs: Vec::new() };
            for model in models {
                let report =
                    seed::run(&api, &cli.database_url, users, quantity, buckets, model).await?;
                comparison.runs.push((QueueKind::Kafka, report));
            }
            comparison.emit(cli.json, cli.report.as_deref())?;
            let wrong = comparison.violations();
            if !wrong.is_empty() {
                bail!("invariants violated: {}", wrong.join("; "));
            }
        }
    }
    Ok(())
}

/// The service binaries live beside this one unless said otherwise.
fn bin_dir_or_own(bin_dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match bin_dir {
        Some(dir) => Ok(dir),
        None => Ok(std::env::current_exe()?
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
