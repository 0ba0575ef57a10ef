//! `issuer-bench connections`: the admission script under one concurrent load, over one
//! multiplexed connection (what issuer-api uses) and over pools of exclusive connections
//! (what deadpool-redis gives: each request holds a connection for its round trip), so
//! that the choice is measured rather than assumed. Talks to Redis only.

use std::time::Instant;

use coupon_core::buckets::BucketCount;
use coupon_core::domain::QueueKind;
use coupon_core::domain::{Coupon, CouponId, UserId};
use coupon_core::redis::admission::AdmissionScripts;
use deadpool::unmanaged::Pool;
use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use serde::Serialize;

use crate::latency::{Latency, histogram};
use crate::report::Report;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionsRow {
    pub connections: String,
    pub rps: f64,
    #[serde(flatten)]
    pub latency: Latency,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionsReport {
    pub requests: u64,
    pub concurrency: usize,
    pub rows: Vec<ConnectionsRow>,
}

/// Runs `requests` admissions from `concurrency` closed-loop clients on a sold-out coupon
/// (the flash sale after its first second), once over one multiplexed connection and
/// once per pool size.
pub async fn run(
    redis_url: &str,
    requests: u64,
    concurrency: usize,
    pool_sizes: &[usize],
) -> anyhow::Result<ConnectionsReport> {
    let client = redis::Client::open(redis_url)?;
    let prefix = format!("connections-{}:", uuid::Uuid::new_v4().simple());
    let scripts = AdmissionScripts::new(prefix.clone(), QueueKind::Kafka);
    let coupon = Coupon {
        id: CouponId::new(1)?,
        name: "connections".into(),
        total_quantity: 1,
        persisted_count: 0,
        starts_at: None,
        ends_at: None,
        buckets: BucketCount::ONE,
        settings: Default::default(),
    };
    let mut setup = client.get_multiplexed_async_connection().await?;
    scripts.load_meta(&mut setup, &coupon).await?;

    let mut rows = Vec::new();
    let multiplexed = client.get_multiplexed_async_connection().await?;
    let (rps, latency) = drive(&scripts, requests, concurrency, || {
        // Boxed only to be handled like a pooled object; every request shares the socket.
        let con = Box::new(multiplexed.clone());
        async move { Ok::<_, anyhow::Error>(con) }
    })
    .await?;
    rows.push(ConnectionsRow {
        connections: "1 multiplexed".into(),
        rps,
        latency,
    });
    for &size in pool_sizes {
        let mut connections = Vec::with_capacity(size);
        for _ in 0..size {
            connections.push(client.get_multiplexed_async_connection().await?);
        }
        let pool = Pool::from(connections);
        let (rps, latency) = drive(&scripts, requests, concurrency, || {
            let pool = pool.clone();
            async move { Ok(pool.get().await?) }
        })
        .await?;
        rows.push(ConnectionsRow {
            connections: format!("pool of {size} exclusive"),
            rps,
            latency,
        });
    }
    let keys = scripts.keys(coupon.id);
    let _: () = redis::cmd("DEL")
        .arg(&[keys.meta, keys.issued, keys.pending][..])
        .query_async(&mut setup)
        .await?;
    Ok(ConnectionsReport {
        requests,
        concurrency,
        rows,
    })
}

/// Closed loop: each client takes a connection, admits one user, gives it back, repeats.
async fn drive<C, F, Fut>(
    scripts: &AdmissionScripts,
    requests: u64,
    concurrency: usize,
    checkout: F,
) -> anyhow::Result<(f64, Latency)>
where
    C: std::ops::DerefMut<Target = MultiplexedConnection>,
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<C>>,
{
    let next = std::cell::Cell::new(0u64);
    let started = Instant::now();
    let clients = (0..concurrency).map(|_| async {
        let mut took = Vec::new();
        loop {
            let i = next.get();
            if i >= requests {
                return Ok::<_, anyhow::Error>(took);
            }
            next.set(i + 1);
            let sent = Instant::now();
            let mut con = checkout().await?;
            let user = UserId::new(i as i64 + 1)?;
            scripts.admit(&mut *con, CouponId::new(1)?, user).await?;
            drop(con);
            took.push(sent.elapsed());
        }
    });
    let mut latency = histogram();
    for took in join_all(clients).await {
        for d in took? {
            latency.saturating_record(d.as_micros() as u64);
        }
    }
    let rps = requests as f64 / started.elapsed().as_secs_f64();
    Ok((rps, Latency::of(&latency)))
}

impl Report for ConnectionsReport {
    fn name(&self) -> &'static str {
        "connections"
    }

    fn markdown(&self) -> String {
        let mut out = format!(
            "Admission script, {} requests from {} concurrent clients (sold-out coupon)\n\n\
             | Redis connections | admissions/s | P50 | P99 | max |\n|---|---:|---:|---:|---:|\n",
            self.requests, self.concurrency
        );
        for row in &self.rows {
            out.push_str(&format!(
                "| {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms |\n",
                row.connections,
                row.rps,
                row.latency.p50_ms,
                row.latency.p99_ms,
                row.latency.max_ms
            ));
        }
        out
    }
}
