//! One hot coupon on a Redis Cluster, split into K buckets or not: how the primaries share
//! its admission (script calls and their µs, from `INFO commandstats`), and what one admitted
//! request costs Redis in all. Driven at the scripts, as the API's admission and mover run
//! them (`coupon_core::buckets`), with each coupon created in PostgreSQL as the API creates
//! it, so that its tags are chosen from the cluster's slot map. The stock is twice the
//! requests: the common case, in which no bucket runs dry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use coupon_core::buckets::BucketCount;
use coupon_core::buckets::mover::{Mover, Places};
use coupon_core::buckets::open::open_buckets;
use coupon_core::db::buckets::insert_bucketed_coupon;
use coupon_core::db::connect::PgTarget;
use coupon_core::db::coupons::NewCoupon;
use coupon_core::db::pool::{PgPool, build_pool};
use coupon_core::domain::{QueueKind, UserId};
use coupon_core::redis::admission::{AdmissionScripts, AdmitReply};
use coupon_core::redis::buckets::slot_owners;
use futures_util::future::join_all;
use redis::cluster_async::ClusterConnection;
use testkit::redis_stats;

use crate::report::Report;

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpreadRow {
    pub buckets: u16,
    pub coupon: i64,
    pub admitted: u64,
    /// Per primary: its share of the script calls and of their µs, in percent.
    pub call_shares: Vec<f64>,
    pub usec_shares: Vec<f64>,
    /// Per primary: its script µs per admitted request. Scripts only: `INFO commandstats`
    /// counts the commands a script calls both in the script's µs and on their own lines.
    pub usec_per_admitted: Vec<f64>,
    /// All primaries' script µs per admitted request.
    pub total_usec_per_admitted: f64,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpreadReport {
    pub primaries: Vec<String>,
    pub requests: u64,
    pub concurrency: usize,
    pub rows: Vec<SpreadRow>,
}

pub struct SpreadOptions<'a> {
    pub cluster_nodes: &'a str,
    pub database_url: &'a str,
    pub requests: u64,
    pub concurrency: usize,
    pub coupons: u32,
    pub buckets: &'a [u16],
}

pub async fn run(options: SpreadOptions<'_>) -> anyhow::Result<SpreadReport> {
    let seeds: Vec<String> = options
        .cluster_nodes
        .split(',')
        .map(|node| format!("redis://{node}"))
        .collect();
    let mut con = redis::cluster::ClusterClient::new(seeds)?
        .get_async_connection()
        .await
        .context("cannot reach the Redis Cluster")?;
    let owners = slot_owners(&mut con).await?;
    let primaries = primary_addresses(&mut con).await?;
    let pool = build_pool(&PgTarget::new(options.database_url, Default::default())?, 8)?;
    let mut rows = Vec::new();
    // Alternating: each coupon round runs every bucket count once.
    for _ in 0..options.coupons {
        for &buckets in options.buckets {
            let count = BucketCount::new(buckets.into())?;
            rows.push(one_run(&options, &pool, &mut con, &owners, &primaries, count).await?);
        }
    }
    Ok(SpreadReport {
        primaries,
        requests: options.requests,
        concurrency: options.concurrency,
        rows,
    })
}

/// Each primary's `host:port`, as `CLUSTER SLOTS` names it, in a fixed order.
async fn primary_addresses(con: &mut ClusterConnection) -> anyhow::Result<Vec<String>> {
    let ranges: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query_async(con).await?;
    let mut primaries = Vec::new();
    for range in ranges {
        let redis::Value::Array(range) = range else {
            anyhow::bail!("CLUSTER SLOTS answered {range:?}");
        };
        let primary: Vec<redis::Value> =
            redis::FromRedisValue::from_redis_value(range.get(2).cloned().context("no primary")?)?;
        let host: String =
            redis::FromRedisValue::from_redis_value(primary.first().cloned().context("no host")?)?;
        let port: u16 =
            redis::FromRedisValue::from_redis_value(primary.get(1).cloned().context("no port")?)?;
        primaries.push(format!("{host}:{port}"));
    }
    primaries.sort();
    primaries.dedup();
    Ok(primaries)
}

async fn one_run(
    options: &SpreadOptions<'_>,
    pool: &PgPool,
    con: &mut ClusterConnection,
    owners: &coupon_core::buckets::SlotOwners,
    primaries: &[String],
    count: BucketCount,
) -> anyhow::Result<SpreadRow> {
    let quantity = 2 * options.requests as i64;
    let new = NewCoupon {
        name: format!("bucket spread, {} buckets", count.get()),
        total_quantity: quantity,
        starts_at: None,
        ends_at: None,
        buckets: count.get() as i16,
    };
    let mut db = pool.get().await?;
    let coupon = insert_bucketed_coupon(&mut db, &new, Some(owners)).await?;
    let prefix = format!("spread-{}:", uuid::Uuid::new_v4().simple());
    let scripts = AdmissionScripts::new(prefix.clone(), QueueKind::Kafka);
    let places = if count == BucketCount::ONE {
        scripts.load_meta(con, &coupon).await?;
        Places {
            coupon: coupon.id,
            count,
            places: Vec::new(),
        }
    } else {
        open_buckets(con, &mut db, &prefix, &coupon).await?
    };
    drop(db);
    let places = Arc::new(places);
    redis_stats::reset(primaries).await?;
    let next = Arc::new(AtomicU64::new(1));
    let admitted = Arc::new(AtomicU64::new(0));
    let workers = (0..options.concurrency).map(|_| {
        let (mut con, scripts, places, pool) =
            (con.clone(), scripts.clone(), places.clone(), pool.clone());
        let (next, admitted, requests) = (next.clone(), admitted.clone(), options.requests);
        let coupon = coupon.id;
        async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n > requests {
                    return Ok::<_, anyhow::Error>(());
                }
                let user = UserId::new(n as i64)?;
                let home = count.home(user);
                loop {
                    let reply = if places.places.is_empty() {
                        scripts.admit(&mut con, coupon, user).await?
                    } else {
                        let place = &places.places[usize::from(home.index())];
                        scripts
                            .admit_in(&mut con, &place.keys, coupon, user, Some(&place.stamp))
                            .await?
                    };
                    match reply {
                        AdmitReply::Admitted(_) => {
                            admitted.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        AdmitReply::Dry => {
                            let mover = Mover {
                                places: &places,
                                pool: &pool,
                                owner: "bench",
                            };
                            mover.supply(&mut con, home).await?;
                        }
                        other => anyhow::bail!("user {user}: {other:?}"),
                    }
                }
            }
        }
    });
    for worker in join_all(workers).await {
        worker?;
    }
    let stats = redis_stats::read(primaries).await?;
    let admitted = admitted.load(Ordering::Relaxed);
    let share = |of: &dyn Fn(&redis_stats::NodeStats) -> u64| {
        let total: u64 = stats.iter().map(of).sum();
        stats
            .iter()
            .map(|node| 100.0 * of(node) as f64 / total.max(1) as f64)
            .collect()
    };
    let total: u64 = stats.iter().map(|node| node.scripts().1).sum();
    Ok(SpreadRow {
        buckets: count.get(),
        coupon: coupon.id.get(),
        admitted,
        call_shares: share(&|node| node.scripts().0),
        usec_shares: share(&|node| node.scripts().1),
        usec_per_admitted: stats
            .iter()
            .map(|node| node.scripts().1 as f64 / admitted.max(1) as f64)
            .collect(),
        total_usec_per_admitted: total as f64 / admitted.max(1) as f64,
    })
}

impl Report for SpreadReport {
    fn name(&self) -> &'static str {
        "bucket-spread"
    }

    fn markdown(&self) -> String {
        let shares = |values: &[f64]| {
            values
                .iter()
                .map(|v| format!("{v:.0}%"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let micros = |values: &[f64]| {
            values
                .iter()
                .map(|v| format!("{v:.2}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let mut out = format!(
            "One coupon, {} admissions from {} tasks, on the primaries {} (in that order)\n\n\
             | buckets | coupon | admitted | script calls | script µs | script µs per admitted, per primary | all primaries |\n\
             |---:|---:|---:|---|---|---|---:|\n",
            self.requests,
            self.concurrency,
            self.primaries.join(", ")
        );
        for row in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {:.2} |\n",
                row.buckets,
                row.coupon,
                row.admitted,
                shares(&row.call_shares),
                shares(&row.usec_shares),
                micros(&row.usec_per_admitted),
                row.total_usec_per_admitted
            ));
        }
        out
    }
}
