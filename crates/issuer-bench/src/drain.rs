//! `issuer-bench drain`: a backlog of issue events published while no worker runs, then
//! the worker's persist rate against a bare consumer reading the same backlog from the same
//! broker. With several `--worker-batch` sizes, the seed's per-message transactions (1)
//! and our batches side by side.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use coupon_core::config::KafkaArgs;
use coupon_core::db::coupons::{NewCoupon, insert_coupon};
use coupon_core::db::schema;
use coupon_core::domain::{CouponId, UserId};
use coupon_core::event::IssueEvent;
use coupon_core::kafka::producer::Producer;
use coupon_core::kafka::topics::ensure_topics;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::future::try_join_all;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde::Serialize;

use crate::progress::bar;
use crate::report::Report;
use testkit::process::Service;

const COUPONS: usize = 10;
const PUBLISH_WAVE: usize = 20_000;
const PATIENCE: Duration = Duration::from_secs(600);

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainRun {
    pub batch_size: u32,
    pub events: usize,
    /// From the first row to the last.
    pub persist_ms: f64,
    pub rows_per_sec: f64,
    /// The same, over the worker's whole life from its start (joining the group included).
    pub wall_ms: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainReport {
    pub events: usize,
    pub bare_consumer_per_sec: f64,
    /// How fast the first backlog was published and acknowledged (acks=all, idempotent,
    /// 20,000 sends in flight): the broker's write capacity that issuer-api's answers in
    /// Kafka mode wait on.
    pub producer_per_sec: f64,
    pub runs: Vec<DrainRun>,
}

pub async fn run(
    bin_dir: &Path,
    brokers: &str,
    database_url: &str,
    events: usize,
    batch_sizes: &[u32],
    per_message_cap: usize,
) -> anyhow::Result<DrainReport> {
    let worker = bin_dir.join("issuer-worker");
    if !worker.exists() {
        bail!(
            "{} not found; build it first (make bench does)",
            worker.display()
        );
    }
    let mut db = AsyncPgConnection::establish(database_url)
        .await
        .context("cannot reach PostgreSQL")?;
    let mut runs = Vec::new();
    let mut bare = None;
    let mut produced = None;
    for &batch_size in batch_sizes {
        // One message per transaction is the seed's mode: thousands suffice to measure it.
        let count = if batch_size == 1 {
            events.min(per_message_cap)
        } else {
            events
        };
        let args = KafkaArgs {
            kafka_brokers: brokers.to_owned(),
            issue_topic: format!("coupon-drain-{}", uuid::Uuid::new_v4().simple()),
            topic_partitions: 3,
            topic_replication: 1,
            topic_min_insync_replicas: 1,
            producer_linger_ms: 2,
            security: Default::default(),
        };
        ensure_topics(&args).await?;
        let coupons = create_coupons(&mut db, count).await?;
        eprintln!("publishing {count} events to {} ...", args.issue_topic);
        let publishing = Instant::now();
        publish_backlog(&args, &coupons, count).await?;
        let rate = count as f64 / publishing.elapsed().as_secs_f64();
        produced.get_or_insert(rate);
        if bare.is_none() {
            bare = Some(bare_read_rate(&args, count).await?);
        }
        eprintln!("draining with --batch-size {batch_size} ...");
        runs.push(
            drain(
                &worker,
                &args,
                database_url,
                &mut db,
                &coupons,
                count,
                batch_size,
            )
            .await?,
        );
    }
    Ok(DrainReport {
        events,
        bare_consumer_per_sec: bare.unwrap_or_default(),
        producer_per_sec: produced.unwrap_or_default(),
        runs,
    })
}

async fn create_coupons(db: &mut AsyncPgConnection, events: usize) -> anyhow::Result<Vec<i64>> {
    let mut ids = Vec::new();
    for n in 0..COUPONS {
        let new = NewCoupon {
            name: format!("drain {n}"),
            total_quantity: events as i64,
            starts_at: None,
            ends_at: None,
            buckets: 1,
        };
        ids.push(insert_coupon(db, &new).await?.id.get());
    }
    Ok(ids)
}

async fn publish_backlog(args: &KafkaArgs, coupons: &[i64], events: usize) -> anyhow::Result<()> {
    let producer = Producer::new(args, "issuer-bench-drain", Duration::from_secs(60))?;
    let topic = args.issue_topic.as_str();
    let progress = bar(events as u64, "published");
    for wave in (0..events).collect::<Vec<_>>().chunks(PUBLISH_WAVE) {
        try_join_all(wave.iter().map(|&i| {
            let coupon = CouponId::new(coupons[i % coupons.len()]).expect("ids are positive");
            let user = UserId::new(i as i64 + 1).expect("ids are positive");
            let event = IssueEvent::new(coupon, user, Utc::now());
            let producer = producer.clone();
            async move {
                producer
                    .send(topic, event.key().as_bytes(), &event.encode(), None)
                    .await
            }
        }))
        .await?;
        progress.inc(wave.len() as u64);
    }
    progress.finish_and_clear();
    producer.flush(Duration::from_secs(30)).await?;
    Ok(())
}

/// How fast a consumer that does nothing with the messages reads the backlog.
async fn bare_read_rate(args: &KafkaArgs, events: usize) -> anyhow::Result<f64> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.kafka_brokers)
        .set(
            "group.id",
            format!("drain-bare-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()?;
    consumer.subscribe(&[&args.issue_topic])?;
    let first = consumer.recv().await?;
    drop(first);
    let started = Instant::now();
    let mut read = 1;
    while read < events {
        consumer.recv().await?;
        read += 1;
    }
    Ok((events - 1) as f64 / started.elapsed().as_secs_f64())
}

async fn drain(
    worker: &Path,
    args: &KafkaArgs,
    database_url: &str,
    db: &mut AsyncPgConnection,
    coupons: &[i64],
    events: usize,
    batch_size: u32,
) -> anyhow::Result<DrainRun> {
    let env: Vec<(String, String)> = [
        ("KAFKA_BROKERS", args.kafka_brokers.clone()),
        ("ISSUE_TOPIC", args.issue_topic.clone()),
        ("WORKER_GROUP_ID", format!("{}-worker", args.issue_topic)),
        ("DATABASE_URL", database_url.to_owned()),
        ("WORKER_BATCH_SIZE", batch_size.to_string()),
        ("RUST_LOG", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let dir = std::env::temp_dir();
    let log = dir.join(format!("{}.log", args.issue_topic));
    let started = Instant::now();
    let process = Service::spawn("issuer-worker", worker, &[], &env, &dir, &log)?;
    let progress = bar(events as u64, "persisted");
    let mut first_row = None;
    loop {
        // The coupons' counters, kept by the worker in the same transaction as the rows:
        // counting the rows themselves every poll cost PostgreSQL 6% of the machine in a
        // profile, taken from the worker being measured.
        let rows: i64 = schema::coupons::table
            .filter(schema::coupons::id.eq_any(coupons))
            .select(schema::coupons::persisted_count)
            .load::<i64>(db)
            .await?
            .into_iter()
            .sum();
        if rows > 0 && first_row.is_none() {
            first_row = Some(Instant::now());
        }
        progress.set_position(rows as u64);
        if rows as usize >= events {
            break;
        }
        if started.elapsed() > PATIENCE {
            bail!(
                "the worker persisted {rows} of {events} in {PATIENCE:?} (log: {})",
                log.display()
            );
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = started.elapsed();
    let persist = first_row.map_or(wall, |t| t.elapsed());
    progress.finish_and_clear();
    process.terminate(Duration::from_secs(20));
    Ok(DrainRun {
        batch_size,
        events,
        persist_ms: persist.as_secs_f64() * 1000.0,
        rows_per_sec: events as f64 / persist.as_secs_f64(),
        wall_ms: wall.as_secs_f64() * 1000.0,
    })
}

impl Report for DrainReport {
    fn name(&self) -> &'static str {
        "drain"
    }

    fn markdown(&self) -> String {
        let mut out = format!(
            "Drain: a backlog published with no worker running, then persisted\n\n\
             Bare consumer, same broker, same backlog: {:.0} messages/s\n\
             Publishing the backlog (acks=all, idempotent): {:.0} messages/s\n\n\
             | worker batch size | events | persisted in | rows/s | of bare read rate | with start-up |\n\
             |---:|---:|---:|---:|---:|---:|\n",
            self.bare_consumer_per_sec, self.producer_per_sec
        );
        for run in &self.runs {
            out.push_str(&format!(
                "| {} | {} | {:.0} ms | {:.0} | {:.0}% | {:.0} ms |\n",
                run.batch_size,
                run.events,
                run.persist_ms,
                run.rows_per_sec,
                100.0 * run.rows_per_sec / self.bare_consumer_per_sec.max(1.0),
                run.wall_ms
            ));
        }
        out.push_str("\nThe seed, one transaction per message: about 68 rows/s.\n");
        out
    }
}
