//! `issuer-bench sustained`: many coupons, a long stream of requests at a fixed arrival
//! rate (open model) or as fast as a fixed number of clients go (closed model).
//!
//! In the open model each request has a scheduled send time and its latency counts from
//! that time, not from when it was actually sent: a server that stalls cannot hide the
//! requests that queued up behind the stall (coordinated omission).

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::ApiClient;
use crate::html::{Figure, Plot, Series};
use crate::latency::{Latency, histogram};
use crate::progress::bar;
use crate::report::Report;

pub enum Load {
    /// Requests per second, scheduled regardless of answers.
    Rate(f64),
    /// Clients each sending their next request when the previous one is answered.
    Concurrency(usize),
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Second {
    pub second: u64,
    pub answered: u64,
    pub p99_ms: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SustainedReport {
    pub model: String,
    pub coupons: usize,
    pub requests: u64,
    pub duration_ms: f64,
    pub rps: f64,
    #[serde(flatten)]
    pub latency: Latency,
    pub answers: BTreeMap<String, u64>,
    pub series: Vec<Second>,
    /// Every latency (ms), for the HTML report's histogram.
    #[serde(skip)]
    pub latencies_ms: Vec<f64>,
}

pub async fn run(
    api: Rc<ApiClient>,
    coupons: &[i64],
    requests: u64,
    load: Load,
) -> anyhow::Result<SustainedReport> {
    let started = Instant::now();
    let target = |i: u64| (coupons[i as usize % coupons.len()], i as i64 + 1);
    let progress = bar(requests, "answered");
    let (model, results) = match load {
        Load::Rate(rate) => {
            let tasks = (0..requests).map(|i| {
                let api = api.clone();
                let (coupon, user) = target(i);
                let due = started + Duration::from_secs_f64(i as f64 / rate);
                let progress = progress.clone();
                actix_rt::spawn(async move {
                    actix_rt::time::sleep_until(due.into()).await;
                    let kind = api.issue(coupon, user).await;
                    progress.inc(1);
                    (kind, due, Instant::now())
                })
            });
            let done = join_all(tasks)
                .await
                .into_iter()
                .filter_map(Result::ok)
                .collect();
            (format!("open, {rate:.0} req/s offered"), done)
        }
        Load::Concurrency(clients) => {
            let next = Rc::new(std::cell::Cell::new(0u64));
            let tasks = (0..clients).map(|_| {
                let (api, next, progress) = (api.clone(), next.clone(), progress.clone());
                async move {
                    let mut done = Vec::new();
                    loop {
                        let i = next.get();
                        if i >= requests {
                            return done;
                        }
                        next.set(i + 1);
                        let (coupon, user) = target(i);
                        let sent = Instant::now();
                        let kind = api.issue(coupon, user).await;
                        progress.inc(1);
                        done.push((kind, sent, Instant::now()));
                    }
                }
            });
            let done = join_all(tasks).await.into_iter().flatten().collect();
            (format!("closed, {clients} clients"), done)
        }
    };
    let duration = started.elapsed();
    progress.finish_and_clear();
    Ok(summarise(model, coupons.len(), started, duration, results))
}

fn summarise(
    model: String,
    coupons: usize,
    started: Instant,
    duration: Duration,
    results: Vec<(String, Instant, Instant)>,
) -> SustainedReport {
    let new_histogram =
        || Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
    let mut all = new_histogram();
    let mut seconds: BTreeMap<u64, Histogram<u64>> = BTreeMap::new();
    let mut answers: BTreeMap<String, u64> = BTreeMap::new();
    let mut latencies_ms = Vec::with_capacity(results.len());
    for (kind, from, answered) in &results {
        let micros = answered.saturating_duration_since(*from).as_micros() as u64;
        all.saturating_record(micros);
        latencies_ms.push(micros as f64 / 1000.0);
        let second = answered.saturating_duration_since(started).as_secs();
        seconds
            .entry(second)
            .or_insert_with(histogram)
            .saturating_record(micros);
        *answers.entry(kind.clone()).or_default() += 1;
    }
    let ms = |micros: u64| micros as f64 / 1000.0;
    SustainedReport {
        model,
        coupons,
        requests: results.len() as u64,
        duration_ms: duration.as_secs_f64() * 1000.0,
        rps: results.len() as f64 / duration.as_secs_f64(),
        latency: Latency::of(&all),
        answers,
        series: seconds
            .into_iter()
            .map(|(second, h)| Second {
                second,
                answered: h.len(),
                p99_ms: ms(h.value_at_quantile(0.99)),
            })
            .collect(),
        latencies_ms,
    }
}

impl Report for SustainedReport {
    fn name(&self) -> &'static str {
        "sustained"
    }

    fn figures(&self) -> Vec<Figure> {
        let over_time = |name: &str, y: fn(&Second) -> f64| {
            Plot::Lines(vec![Series {
                name: name.into(),
                points: self
                    .series
                    .iter()
                    .map(|s| (s.second as f64, y(s)))
                    .collect(),
            }])
        };
        vec![
            Figure {
                title: "Latency of every answer".into(),
                x_label: "latency (ms)".into(),
                y_label: "answers".into(),
                plot: Plot::Histogram(vec![(self.model.clone(), self.latencies_ms.clone())]),
            },
            Figure {
                title: "Throughput over time".into(),
                x_label: "second".into(),
                y_label: "answers/s".into(),
                plot: over_time("answered", |s| s.answered as f64),
            },
            Figure {
                title: "P99 latency over time".into(),
                x_label: "second".into(),
                y_label: "P99 (ms)".into(),
                plot: over_time("P99", |s| s.p99_ms),
            },
        ]
    }

    fn markdown(&self) -> String {
        let mut out = format!(
            "Sustained: {} requests over {} coupons ({})\n\n\
             | throughput | P50 | P95 | P99 | max | duration |\n|---:|---:|---:|---:|---:|---:|\n\
             | {:.0} req/s | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.0} ms |\n\n\
             | answer | count |\n|---|---:|\n",
            self.requests,
            self.coupons,
            self.model,
            self.rps,
            self.latency.p50_ms,
            self.latency.p95_ms,
            self.latency.p99_ms,
            self.latency.max_ms,
            self.duration_ms
        );
        for (kind, count) in &self.answers {
            out.push_str(&format!("| {kind} | {count} |\n"));
        }
        out.push_str("\n| second | answered | P99 |\n|---:|---:|---:|\n");
        for s in &self.series {
            out.push_str(&format!(
                "| {} | {} | {:.1} ms |\n",
                s.second, s.answered, s.p99_ms
            ));
        }
        out
    }
}
