//! The seed report's experiment: one coupon, many distinct users, then wait for PostgreSQL
//! to hold every SUCCESS. Measured exactly as the seed's table is, in two load models:
//!
//! - all at once: every user's request is sent at the same moment, so the accept queue holds
//!   thousands and most of each answer's latency is queueing;
//! - the seed's own concurrency: its figures imply about 140 requests in flight (3,611 req/s
//!   × 39 ms, Little's law), so a closed model of that many clients, each sending the next
//!   user's request when its last one is answered, is the like-for-like latency comparison.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use coupon_core::db::schema::coupon_issues;
use coupon_core::domain::QueueKind;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::future::join_all;
use serde::Serialize;

use crate::client::ApiClient;
use crate::html::{Figure, Plot, Series};
use crate::latency::{Latency, histogram};
use crate::report::Report;
use testkit::credentials::{DEV_AUDIENCE, DEV_ISSUER, UserCredentials};
use testkit::process::{Service, free_port};

const PHASE2_PATIENCE: Duration = Duration::from_secs(120);

/// How the users' requests are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LoadModel {
    /// Every request at once.
    AllAtOnce,
    /// This many clients, each sending its next request when the last one is answered.
    Clients(u64),
}

impl std::fmt::Display for LoadModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AllAtOnce => f.write_str("all at once"),
            Self::Clients(n) => write!(f, "{n} clients"),
        }
    }
}

/// The seed's implied concurrency: 3,611 req/s × 39 ms ≈ 141 requests in flight.
pub const SEED_CLIENTS: u64 = 140;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedReport {
    pub model: LoadModel,
    pub users: u64,
    pub quantity: i64,
    pub phase1_ms: f64,
    pub phase2_ms: f64,
    pub total_ms: f64,
    pub success: u64,
    pub rows: i64,
    pub rps: f64,
    /// How many buckets the coupon's stock was split into (`coupon_core::buckets`).
    pub buckets: u16,
    /// When the last SUCCESS answer arrived, after the first send.
    pub last_unit_ms: f64,
    /// From when every answer that arrived was SOLD_OUT: the last answer that was neither
    /// SUCCESS nor SOLD_OUT (a 503 while stock moved between buckets, say), or the last
    /// unit if none came later.
    pub sold_out_for_all_ms: f64,
    #[serde(flatten)]
    pub latency: Latency,
    /// Every answer by kind, SUCCESS included.
    pub answers: BTreeMap<String, u64>,
    /// Per answer: when it arrived after the first send, and its latency (ms), for plots.
    #[serde(skip)]
    pub samples: Vec<(f64, f64)>,
}

pub async fn run(
    api: &ApiClient,
    database_url: &str,
    users: u64,
    quantity: i64,
    buckets: u16,
    model: LoadModel,
) -> anyhow::Result<SeedReport> {
    let coupon = api
        .create_coupon("seed experiment", quantity, buckets)
        .await?;
    let mut db = AsyncPgConnection::establish(database_url).await?;

    let started = Instant::now();
    let one = |user: u64| async move {
        let sent = Instant::now();
        let kind = api.issue(coupon, user as i64).await;
        (kind, sent.elapsed(), started.elapsed())
    };
    let answers: Vec<_> = match model {
        LoadModel::AllAtOnce => join_all((1..=users).map(one)).await,
        LoadModel::Clients(clients) => {
            let next = std::cell::Cell::new(1u64);
            let client = || async {
                let mut done = Vec::new();
                while next.get() <= users {
                    let user = next.get();
                    next.set(user + 1);
                    done.push(one(user).await);
                }
                done
            };
            join_all((0..clients).map(|_| client()))
                .await
                .into_iter()
                .flatten()
                .collect()
        }
    };
    let phase1 = started.elapsed();

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut latency = histogram();
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut samples = Vec::with_capacity(answers.len());
    let (mut last_unit, mut last_unsure) = (Duration::ZERO, Duration::ZERO);
    for (kind, took, at) in answers {
        latency.saturating_record(took.as_micros() as u64);
        samples.push((ms(at), ms(took)));
        match kind.as_str() {
            "SUCCESS" => last_unit = last_unit.max(at),
            "SOLD_OUT" => {}
            _ => last_unsure = last_unsure.max(at),
        }
        *kinds.entry(kind).or_default() += 1;
    }
    let success = kinds.get("SUCCESS").copied().unwrap_or(0);

    let phase2_started = Instant::now();
    let rows = loop {
        let rows: i64 = coupon_issues::table
            .filter(coupon_issues::coupon_id.eq(coupon))
            .count()
            .get_result(&mut db)
            .await?;
        if rows >= success as i64 {
            break rows;
        }
        if phase2_started.elapsed() > PHASE2_PATIENCE {
            bail!(
                "after {PHASE2_PATIENCE:?} PostgreSQL holds {rows} of {success} SUCCESS rows; is issuer-worker running?"
            );
        }
        actix_rt::time::sleep(Duration::from_millis(2)).await;
    };
    let phase2 = phase2_started.elapsed();

    Ok(SeedReport {
        model,
        users,
        quantity,
        phase1_ms: ms(phase1),
        phase2_ms: ms(phase2),
        total_ms: ms(phase1 + phase2),
        success,
        rows,
        rps: users as f64 / phase1.as_secs_f64(),
        buckets,
        last_unit_ms: ms(last_unit),
        sold_out_for_all_ms: ms(last_unit.max(last_unsure)),
        latency: Latency::of(&latency),
        answers: kinds,
        samples,
    })
}

/// Width of a throughput bucket in the seed's plots: Phase 1 lasts a few hundred ms.
const THROUGHPUT_BUCKET_MS: f64 = 10.0;

/// Latency histogram and answers per second over Phase 1, one colour per run.
fn seed_figures(runs: &[(String, &SeedReport)]) -> Vec<Figure> {
    let latencies = runs
        .iter()
        .map(|(name, r)| (name.clone(), r.samples.iter().map(|s| s.1).collect()))
        .collect();
    let throughput = runs
        .iter()
        .map(|(name, r)| {
            let mut buckets: BTreeMap<u64, u64> = BTreeMap::new();
            for (at, _) in &r.samples {
                *buckets
                    .entry((at / THROUGHPUT_BUCKET_MS) as u64)
                    .or_default() += 1;
            }
            let per_second = 1000.0 / THROUGHPUT_BUCKET_MS;
            let last = buckets.keys().next_back().copied().unwrap_or(0);
            // Empty buckets are drawn as zero, not bridged.
            Series {
                name: name.clone(),
                points: (0..=last)
                    .map(|b| {
                        let n = buckets.get(&b).copied().unwrap_or(0);
                        (b as f64 * THROUGHPUT_BUCKET_MS, n as f64 * per_second)
                    })
                    .collect(),
            }
        })
        .collect();
    vec![
        Figure {
            title: "Latency of every answer".into(),
            x_label: "latency (ms)".into(),
            y_label: "answers".into(),
            plot: Plot::Histogram(latencies),
        },
        Figure {
            title: format!("Answers per second over Phase 1 ({THROUGHPUT_BUCKET_MS} ms buckets)"),
            x_label: "time since the first request (ms)".into(),
            y_label: "answers/s".into(),
            plot: Plot::Lines(throughput),
        },
    ]
}

/// One of the seed's published columns.
struct Seed {
    label: &'static str,
    phase1_ms: f64,
    phase2_ms: f64,
    total_ms: f64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

const SEED_KAFKA: Seed = Seed {
    label: "seed, Redis + Kafka",
    phase1_ms: 1385.0,
    phase2_ms: 7345.0,
    total_ms: 8730.0,
    rps: 3611.0,
    p50_ms: 39.0,
    p99_ms: 233.0,
};

const SEED_REDIS: Seed = Seed {
    label: "seed, Redis only",
    phase1_ms: 1701.0,
    phase2_ms: 1171.0,
    total_ms: 2872.0,
    rps: 2939.0,
    p50_ms: 43.0,
    p99_ms: 426.0,
};

fn seed_for(queue: QueueKind) -> &'static Seed {
    match queue {
        QueueKind::Kafka => &SEED_KAFKA,
        QueueKind::Redis => &SEED_REDIS,
    }
}

/// The seed's table, each of our runs beside the seed's column for the same design, with
/// the speed-up; lower is better except throughput.
fn comparison_table(runs: &[(QueueKind, &SeedReport)]) -> String {
    fn ms(v: f64) -> String {
        format!("{v:.0} ms")
    }
    fn faster(seed: f64, ours: f64) -> String {
        format!("{:.1}×", seed / ours.max(0.001))
    }
    type Metric = fn(&Seed, &SeedReport) -> [String; 3];
    let metrics: [(&str, Metric); 10] = [
        ("Phase 1, answering requests", |s, r| {
            [
                ms(s.phase1_ms),
                ms(r.phase1_ms),
                faster(s.phase1_ms, r.phase1_ms),
            ]
        }),
        ("Phase 2, rows reaching the DB", |s, r| {
            [
                ms(s.phase2_ms),
                ms(r.phase2_ms),
                faster(s.phase2_ms, r.phase2_ms),
            ]
        }),
        ("Total", |s, r| {
            [
                ms(s.total_ms),
                ms(r.total_ms),
                faster(s.total_ms, r.total_ms),
            ]
        }),
        ("SUCCESS answers / rows in DB", |_, r| {
            [
                "500 / 500".into(),
                format!("{} / {}", r.success, r.rows),
                String::new(),
            ]
        }),
        ("Buckets; last unit → SOLD_OUT for all", |_, r| {
            [
                "1".into(),
                format!(
                    "{}; {:.0} ms → {:.0} ms",
                    r.buckets, r.last_unit_ms, r.sold_out_for_all_ms
                ),
                String::new(),
            ]
        }),
        ("Throughput", |s, r| {
            [
                format!("{:.0} req/s", s.rps),
                format!("{:.0} req/s", r.rps),
                faster(r.rps, s.rps),
            ]
        }),
        ("P50 latency", |s, r| {
            [
                ms(s.p50_ms),
                format!("{:.1} ms", r.latency.p50_ms),
                faster(s.p50_ms, r.latency.p50_ms),
            ]
        }),
        ("P95 latency", |_, r| {
            [
                "-".into(),
                format!("{:.1} ms", r.latency.p95_ms),
                String::new(),
            ]
        }),
        ("P99 latency", |s, r| {
            [
                ms(s.p99_ms),
                format!("{:.1} ms", r.latency.p99_ms),
                faster(s.p99_ms, r.latency.p99_ms),
            ]
        }),
        ("Max latency", |_, r| {
            [
                "-".into(),
                format!("{:.1} ms", r.latency.max_ms),
                String::new(),
            ]
        }),
    ];
    let mut out = String::from("| |");
    for (queue, report) in runs {
        out.push_str(&format!(
            " {} | coupon-issuance, {queue} queue, {} | speed-up |",
            seed_for(*queue).label,
            report.model
        ));
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|---:|---:|".repeat(runs.len()));
    out.push('\n');
    for (name, metric) in metrics {
        out.push_str(&format!("| {name} |"));
        for (queue, report) in runs {
            for cell in metric(seed_for(*queue), report) {
                out.push_str(&format!(" {cell} |"));
            }
        }
        out.push('\n');
    }
    out
}

fn answers_table(runs: &[(QueueKind, &SeedReport)]) -> String {
    let mut out = String::from("| answer |");
    for (queue, report) in runs {
        out.push_str(&format!(" {queue} queue, {} |", report.model));
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(runs.len()));
    out.push('\n');
    let kinds: std::collections::BTreeSet<&String> =
        runs.iter().flat_map(|(_, r)| r.answers.keys()).collect();
    for kind in kinds {
        out.push_str(&format!("| {kind} |"));
        for (_, report) in runs {
            let count = report.answers.get(kind).copied().unwrap_or(0);
            out.push_str(&format!(" {count} |"));
        }
        out.push('\n');
    }
    out
}

/// The seed experiment per queue mode and load model, in the order asked for. JSON: one
/// object keyed by both (`{"kafka, all at once": {...}, "kafka, 140 clients": {...}}`).
#[derive(Debug)]
pub struct SeedComparison {
    pub runs: Vec<(QueueKind, SeedReport)>,
}

impl Serialize for SeedComparison {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(
            self.runs
                .iter()
                .map(|(queue, r)| (format!("{queue}, {}", r.model), r)),
        )
    }
}

impl Report for SeedComparison {
    fn name(&self) -> &'static str {
        "seed"
    }

    fn figures(&self) -> Vec<Figure> {
        let runs: Vec<(String, &SeedReport)> = self
            .runs
            .iter()
            .map(|(queue, r)| (format!("{queue} queue"), r))
            .collect();
        seed_figures(&runs)
    }

    /// One table per load model, each with every queue mode beside the seed's column.
    fn markdown(&self) -> String {
        let mut models: Vec<LoadModel> = Vec::new();
        for (_, report) in &self.runs {
            if !models.contains(&report.model) {
                models.push(report.model);
            }
        }
        let mut out = String::new();
        for model in models {
            let runs: Vec<(QueueKind, &SeedReport)> = self
                .runs
                .iter()
                .filter(|(_, r)| r.model == model)
                .map(|(queue, r)| (*queue, r))
                .collect();
            let Some((_, first)) = runs.as_slice().first() else {
                continue;
            };
            let explained = match model {
                LoadModel::AllAtOnce => {
                    "every request sent at the same moment: the latency is mostly queueing"
                        .to_owned()
                }
                LoadModel::Clients(n) => format!(
                    "{n} clients, each sending the next user when answered: the seed's own concurrency (3,611 req/s × 39 ms, Little's law)"
                ),
            };
            out.push_str(&format!(
                "Seed experiment, {model}: {} users, coupon of {} ({explained})\n\n{}\nAnswers by kind:\n\n{}\n",
                first.users,
                first.quantity,
                comparison_table(&runs),
                answers_table(&runs)
            ));
        }
        out
    }
}

impl SeedComparison {
    pub fn violations(&self) -> Vec<String> {
        self.runs
            .iter()
            .flat_map(|(mode, report)| {
                report
                    .violations()
                    .into_iter()
                    .map(move |v| format!("{mode} queue: {v}"))
            })
            .collect()
    }
}

/// Where the services a comparison starts find their dependencies.
pub struct Services<'a> {
    pub bin_dir: &'a Path,
    pub database_url: &'a str,
    pub redis_url: &'a str,
    pub kafka_brokers: &'a str,
    pub admin_token: &'a str,
    pub jwt_secret: &'a str,
}

/// Runs the experiment once per queue mode, each on a fresh issuer-api and issuer-worker
/// of that mode (own Redis key prefix, own topic and group), stopped afterwards.
pub async fn compare(
    services: &Services<'_>,
    modes: &[QueueKind],
    users: u64,
    quantity: i64,
    buckets: u16,
    models: &[LoadModel],
) -> anyhow::Result<SeedComparison> {
    let logs = std::env::temp_dir().join("issuer-bench");
    std::fs::create_dir_all(&logs)?;
    let mut comparison = SeedComparison { runs: Vec::new() };
    for &queue in modes {
        let port = free_port()?;
        let env: Vec<(String, String)> = [
            ("ISSUE_QUEUE", queue.to_string()),
            ("ISSUER_LISTEN", format!("127.0.0.1:{port}")),
            ("ISSUER_ADMIN_TOKEN", services.admin_token.to_owned()),
            ("ISSUER_JWT_SECRET", services.jwt_secret.to_owned()),
            // The machine's own run, on the development secrets, its readiness asked on
            // the API's listener.
            ("ISSUER_DEV_SECRETS", "allow".to_owned()),
            ("ISSUER_JWT_ISSUER", DEV_ISSUER.to_owned()),
            ("ISSUER_JWT_AUDIENCE", DEV_AUDIENCE.to_owned()),
            ("ISSUER_OPS_LISTEN", "public".to_owned()),
            ("DATABASE_URL", services.database_url.to_owned()),
            ("REDIS_URL", services.redis_url.to_owned()),
            ("REDIS_KEY_PREFIX", format!("bench-{queue}:")),
            ("KAFKA_BROKERS", services.kafka_brokers.to_owned()),
            ("ISSUE_TOPIC", "coupon-issue-bench".to_owned()),
            ("WORKER_GROUP_ID", "issuer-bench-worker".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let log = |name: &str| logs.join(format!("{queue}-{name}.log"));
        let worker = Service::spawn(
            "issuer-worker",
            &services.bin_dir.join("issuer-worker"),
            &[],
            &env,
            &logs,
            &log("worker"),
        )?;
        let api = Service::spawn(
            "issuer-api",
            &services.bin_dir.join("issuer-api"),
            &[],
            &env,
            &logs,
            &log("api"),
        )?;
        let base = format!("http://127.0.0.1:{port}");
        let client = ApiClient::new(
            &base,
            services.admin_token,
            UserCredentials::jwt(services.jwt_secret)?,
        );
        client
            .wait_ready(&base, Duration::from_secs(60))
            .await
            .with_context(|| format!("{queue} queue services (logs in {})", logs.display()))?;
        let mut reports = Vec::new();
        for &model in models {
            reports.push(
                run(
                    &client,
                    services.database_url,
                    users,
                    quantity,
                    buckets,
                    model,
                )
                .await,
            );
        }
        api.terminate(Duration::from_secs(15));
        worker.terminate(Duration::from_secs(15));
        for report in reports {
            comparison.runs.push((queue, report?));
        }
    }
    Ok(comparison)
}

impl SeedReport {
    /// The invariants the run must show: never more winners than coupons, every winner a row.
    pub fn violations(&self) -> Vec<String> {
        let mut wrong = Vec::new();
        let expected = self.quantity.min(self.users as i64) as u64;
        if self.success != expected {
            wrong.push(format!(
                "{} SUCCESS answers, expected {expected}",
                self.success
            ));
        }
        if self.rows != self.success as i64 {
            wrong.push(format!(
                "{} rows for {} SUCCESS answers",
                self.rows, self.success
            ));
        }
        wrong
    }
}
