//! The seed report's experiment: one coupon, many distinct users at once, then wait for
//! PostgreSQL to hold every SUCCESS. Measured exactly as the seed's table is.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use coupon_core::db::schema::coupon_issues;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::future::join_all;
use serde::Serialize;

use crate::client::ApiClient;
use crate::latency::{Latency, histogram};
use crate::report::Report;

const PHASE2_PATIENCE: Duration = Duration::from_secs(120);

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedReport {
    pub users: u64,
    pub quantity: i64,
    pub phase1_ms: f64,
    pub phase2_ms: f64,
    pub total_ms: f64,
    pub success: u64,
    pub rows: i64,
    pub rps: f64,
    #[serde(flatten)]
    pub latency: Latency,
    /// Every answer by kind, SUCCESS included.
    pub answers: BTreeMap<String, u64>,
}

pub async fn run(
    api: &ApiClient,
    database_url: &str,
    users: u64,
    quantity: i64,
) -> anyhow::Result<SeedReport> {
    let coupon = api.create_coupon("seed experiment", quantity).await?;
    let mut db = AsyncPgConnection::establish(database_url).await?;

    let started = Instant::now();
    let answers = join_all((1..=users).map(|user| async move {
        let sent = Instant::now();
        let kind = api.issue(coupon, user as i64).await;
        (kind, sent.elapsed())
    }))
    .await;
    let phase1 = started.elapsed();

    let mut latency = histogram();
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for (kind, took) in answers {
        latency.saturating_record(took.as_micros() as u64);
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

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(SeedReport {
        users,
        quantity,
        phase1_ms: ms(phase1),
        phase2_ms: ms(phase2),
        total_ms: ms(phase1 + phase2),
        success,
        rows,
        rps: users as f64 / phase1.as_secs_f64(),
        latency: Latency::of(&latency),
        answers: kinds,
    })
}

/// The seed's published Redis + Kafka column.
struct Seed {
    phase1_ms: f64,
    phase2_ms: f64,
    total_ms: f64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

const SEED_KAFKA: Seed = Seed {
    phase1_ms: 1385.0,
    phase2_ms: 7345.0,
    total_ms: 8730.0,
    rps: 3611.0,
    p50_ms: 39.0,
    p99_ms: 233.0,
};

impl Report for SeedReport {
    /// The seed's table with our column beside it; lower is better except throughput.
    fn markdown(&self) -> String {
        let s = &SEED_KAFKA;
        let faster = |seed: f64, ours: f64| format!("{:.1}×", seed / ours.max(0.001));
        let mut out = format!(
            "Seed experiment: {} users at once, coupon of {}\n\n\
             | | seed (Spring, Redis + Kafka) | coupon-issuance | speed-up |\n|---|---:|---:|---:|\n",
            self.users, self.quantity
        );
        let mut row = |name: &str, seed: String, ours: String, factor: String| {
            out.push_str(&format!("| {name} | {seed} | {ours} | {factor} |\n"));
        };
        row(
            "Phase 1, answering requests",
            format!("{:.0} ms", s.phase1_ms),
            format!("{:.0} ms", self.phase1_ms),
            faster(s.phase1_ms, self.phase1_ms),
        );
        row(
            "Phase 2, rows reaching the DB",
            format!("{:.0} ms", s.phase2_ms),
            format!("{:.0} ms", self.phase2_ms),
            faster(s.phase2_ms, self.phase2_ms),
        );
        row(
            "Total",
            format!("{:.0} ms", s.total_ms),
            format!("{:.0} ms", self.total_ms),
            faster(s.total_ms, self.total_ms),
        );
        row(
            "SUCCESS answers / rows in DB",
            "500 / 500".into(),
            format!("{} / {}", self.success, self.rows),
            String::new(),
        );
        row(
            "Throughput",
            format!("{:.0} req/s", s.rps),
            format!("{:.0} req/s", self.rps),
            faster(self.rps, s.rps),
        );
        row(
            "P50 latency",
            format!("{:.0} ms", s.p50_ms),
            format!("{:.1} ms", self.latency.p50_ms),
            faster(s.p50_ms, self.latency.p50_ms),
        );
        row(
            "P95 latency",
            "-".into(),
            format!("{:.1} ms", self.latency.p95_ms),
            String::new(),
        );
        row(
            "P99 latency",
            format!("{:.0} ms", s.p99_ms),
            format!("{:.1} ms", self.latency.p99_ms),
            faster(s.p99_ms, self.latency.p99_ms),
        );
        row(
            "Max latency",
            "-".into(),
            format!("{:.1} ms", self.latency.max_ms),
            String::new(),
        );
        out.push_str("\nAnswers by kind:\n\n| answer | count |\n|---|---:|\n");
        for (kind, count) in &self.answers {
            out.push_str(&format!("| {kind} | {count} |\n"));
        }
        out
    }
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
