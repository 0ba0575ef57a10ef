//! `issuer-bench ceiling`: the product against the hand-built ceiling
//! (`../shared/tools/ceiling`: actix-web, the smallest admission script, an rdkafka produce
//! awaiting its acknowledgement, nothing else), under the same closed load, in one run,
//! alternating which goes first each round. The ratio is the product's median over the
//! ceiling's.
//!
//! Two shapes: every request admitted (the product's Kafka path against the ceiling's
//! `/full`; in the Redis queue mode, where the script's stream append is the whole path,
//! against its admission-only `/admit`), and every request sold out (against `/admit`).

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use coupon_core::domain::QueueKind;
use serde::Serialize;

use crate::client::{ApiClient, IssueRoute};
use crate::report::Report;
use crate::sustained::{self, Load, SustainedReport};
use testkit::credentials::UserCredentials;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// Every request is a new user on a coupon with stock left: 201.
    Admitted,
    /// Every request meets a sold-out coupon: 410.
    SoldOut,
}

impl Shape {
    fn answer(self) -> &'static str {
        match self {
            Self::Admitted => "SUCCESS",
            Self::SoldOut => "SOLD_OUT",
        }
    }
}

pub struct Targets<'a> {
    pub product: &'a str,
    pub admin_token: &'a str,
    pub users: UserCredentials,
    pub ceiling: &'a str,
    /// The ceiling's QTY: how many users each of its coupons admits.
    pub ceiling_quantity: i64,
}

pub struct Options {
    pub shapes: Vec<Shape>,
    pub connections: Vec<usize>,
    pub requests: u64,
    pub rounds: u32,
    pub queue: QueueKind,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub shape: Shape,
    pub connections: usize,
    pub product_rps: Vec<f64>,
    pub ceiling_rps: Vec<f64>,
    pub product_p99_ms: Vec<f64>,
    pub ceiling_p99_ms: Vec<f64>,
    /// Answers other than the shape's, per side, over every round: a run that is not
    /// the shape it claims does not count quietly.
    pub off_shape: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CeilingReport {
    pub queue: QueueKind,
    pub requests: u64,
    pub rounds: u32,
    pub rows: Vec<Row>,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

impl Row {
    pub fn ratio(&self) -> f64 {
        median(&self.product_rps) / median(&self.ceiling_rps)
    }
}

pub async fn run(targets: &Targets<'_>, options: &Options) -> anyhow::Result<CeilingReport> {
    anyhow::ensure!(
        targets.ceiling_quantity > 0,
        "--ceiling-quantity must be the ceiling's QTY"
    );
    // The ceiling keeps its sets across runs: every round takes coupon ids of its own.
    let mut next_ceiling_coupon = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() * 1000;
    let mut rows: Vec<Row> = Vec::new();
    for round in 0..options.rounds {
        for &shape in &options.shapes {
            for &connections in &options.connections {
                let product = ApiClient::pooled(
                    targets.product,
                    targets.admin_token,
                    targets.users.clone(),
                    connections,
                );
                let route = match (shape, options.queue) {
                    (Shape::Admitted, QueueKind::Kafka) => IssueRoute::CeilingFull,
                    (Shape::Admitted, QueueKind::Redis) | (Shape::SoldOut, _) => {
                        IssueRoute::CeilingAdmit
                    }
                };
                let ceiling =
                    ApiClient::pooled(targets.ceiling, "", targets.users.clone(), connections)
                        .on_route(route);
                let ceiling_coupons = ceiling_coupons(
                    &ceiling,
                    shape,
                    options.requests,
                    targets.ceiling_quantity,
                    &mut next_ceiling_coupon,
                )
                .await;
                let product_coupons = product_coupons(&product, shape, options.requests).await?;
                let load = || Load::Concurrency(connections);
                // Futures are lazy: each side runs when awaited, one after the other.
                let product_run =
                    sustained::run(Rc::new(product), &product_coupons, options.requests, load());
                let ceiling_run =
                    sustained::run(Rc::new(ceiling), &ceiling_coupons, options.requests, load());
                // Alternate which side goes first, so neither always meets a warmer box.
                let (p, c) = if round % 2 == 0 {
                    let p = product_run.await?;
                    (p, ceiling_run.await?)
                } else {
                    let c = ceiling_run.await?;
                    (product_run.await?, c)
                };
                let row = match rows
                    .iter_mut()
                    .find(|r| r.shape == shape && r.connections == connections)
                {
                    Some(row) => row,
                    None => {
                        rows.push(Row {
                            shape,
                            connections,
                            product_rps: Vec::new(),
                            ceiling_rps: Vec::new(),
                            product_p99_ms: Vec::new(),
                            ceiling_p99_ms: Vec::new(),
                            off_shape: BTreeMap::new(),
                        });
                        rows.last_mut().expect("just pushed")
                    }
                };
                record(row, "product", &p);
                record(row, "ceiling", &c);
                eprintln!(
                    "round {}: {shape:?} at {connections} connections: product {:.0} req/s, ceiling {:.0} req/s",
                    round + 1,
                    p.rps,
                    c.rps
                );
            }
        }
    }
    Ok(CeilingReport {
        queue: options.queue,
        requests: options.requests,
        rounds: options.rounds,
        rows,
    })
}

fn record(row: &mut Row, side: &str, report: &SustainedReport) {
    let (rps, p99) = match side {
        "product" => (&mut row.product_rps, &mut row.product_p99_ms),
        _ => (&mut row.ceiling_rps, &mut row.ceiling_p99_ms),
    };
    rps.push(report.rps);
    p99.push(report.latency.p99_ms);
    for (answer, count) in &report.answers {
        if answer != row.shape.answer() {
            *row.off_shape.entry(format!("{side} {answer}")).or_default() += count;
        }
    }
}

/// Coupons of the product for `shape`: with stock for every request, or sold out (a
/// quantity of one, taken by a first user before the measurement).
async fn product_coupons(api: &ApiClient, shape: Shape, requests: u64) -> anyhow::Result<Vec<i64>> {
    let mut ids = Vec::new();
    for n in 0..COUPONS {
        let quantity = match shape {
            Shape::Admitted => requests as i64,
            Shape::SoldOut => 1,
        };
        let id = api
            .create_coupon(&format!("ceiling comparison {n}"), quantity, 1)
            .await?;
        if shape == Shape::SoldOut {
            api.issue(id, i64::MAX - n as i64).await;
        }
        ids.push(id);
    }
    Ok(ids)
}

/// Coupon ids of the ceiling for `shape`. Admitted: enough fresh coupons that none sells
/// out. Sold out: fresh coupons filled to its quantity first, through the ceiling itself.
async fn ceiling_coupons(
    api: &ApiClient,
    shape: Shape,
    requests: u64,
    quantity: i64,
    next: &mut u64,
) -> Vec<i64> {
    let count = match shape {
        Shape::Admitted => requests.div_ceil(quantity as u64).max(COUPONS),
        Shape::SoldOut => COUPONS,
    };
    let ids: Vec<i64> = (0..count).map(|n| (*next + n) as i64).collect();
    *next += count;
    if shape == Shape::SoldOut {
        for &id in &ids {
            let fills = (0..quantity).map(|user| api.issue(id, i64::MAX - user));
            futures_util::future::join_all(fills).await;
        }
    }
    ids
}

/// Coupons the load spreads over, as in the issue's wrk runs.
const COUPONS: u64 = 100;

impl Report for CeilingReport {
    fn name(&self) -> &'static str {
        "ceiling"
    }

    fn markdown(&self) -> String {
        let mut out = format!(
            "Product ({} queue mode) against the ceiling ({}): {} requests per run, closed \
             load, medians of {} alternating rounds\n\n\
             | shape | connections | product | ceiling | ratio | product P99 | ceiling P99 | other answers |\n\
             |---|---:|---:|---:|---:|---:|---:|---|\n",
            self.queue,
            match self.queue {
                QueueKind::Kafka => "admitted against /full, sold out against /admit",
                QueueKind::Redis => "both shapes against /admit",
            },
            self.requests,
            self.rounds
        );
        for row in &self.rows {
            let others = if row.off_shape.is_empty() {
                "none".to_owned()
            } else {
                row.off_shape
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            out.push_str(&format!(
                "| {:?} | {} | {:.0} req/s | {:.0} req/s | {:.2}× | {:.1} ms | {:.1} ms | {others} |\n",
                row.shape,
                row.connections,
                median(&row.product_rps),
                median(&row.ceiling_rps),
                row.ratio(),
                median(&row.product_p99_ms),
                median(&row.ceiling_p99_ms),
            ));
        }
        out
    }
}
