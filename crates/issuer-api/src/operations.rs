//! What `/readyz` and `/metrics` report about the dependencies, kept fresh by one background
//! task: readiness, the failed events, the database pool and the active coupons' stock. Neither endpoint queries a dependency per call, so a load balancer or a scraper
//! polling them cannot load the database. And neither shows raw error text: an answer says
//! which dependency is unavailable, and the details go to the log.

pub mod history;

use std::sync::RwLock;
use std::time::{Duration, Instant};

use coupon_core::db::pool::PgPool;
use tokio_util::sync::CancellationToken;

use self::history::{History, Sample};
use crate::delivery::Backlog;
use crate::issuing::Issuer;
use crate::metrics::{BucketLabels, CouponLabels, DependencyLabels, FailedLabels, PartitionLabels};

/// How often the dependencies are checked and the failed events counted.
const REFRESH: Duration = Duration::from_secs(1);
/// Most coupons with gauges of their own (the newest active ones): each adds three series.
pub const COUPON_GAUGES_MAX: usize = 50;
/// A view older than this (the refresher stuck) is reported as not ready.
const STALE_AFTER: Duration = Duration::from_secs(5);

/// The last look at the dependencies.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Each dependency, and whether it answered.
    pub checks: Vec<(&'static str, bool)>,
    taken: Instant,
}

impl Snapshot {
    pub fn ready(&self) -> bool {
        self.taken.elapsed() < STALE_AFTER && self.checks.iter().all(|(_, ok)| *ok)
    }
}

pub struct Operations {
    snapshot: RwLock<Snapshot>,
    /// Readiness's own connection to PostgreSQL: a flood of requests that empties the
    /// requests' pool must not make every instance look unready at once.
    probe_pool: PgPool,
    /// The console's charts, sampled at each refresh.
    history: History,
}

impl Operations {
    /// Takes the first look before anything is served.
    pub async fn start(issuer: &Issuer, probe_pool: PgPool) -> Self {
        let operations = Self {
            snapshot: RwLock::new(Snapshot {
                checks: Vec::new(),
                taken: Instant::now(),
            }),
            probe_pool,
            history: History::default(),
        };
        operations.refresh(issuer).await;
        operations
    }

    pub fn snapshot(&self) -> Snapshot {
        // A poisoned lock still holds a whole snapshot: it is only ever replaced.
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    async fn refresh(&self, issuer: &Issuer) {
        // The registry is read once, for the stock gauges and the backlog both.
        let (checks, failed, active) = tokio::join!(
            issuer.readiness(&self.probe_pool),
            issuer.failed_event_counts(),
            issuer.active_coupons()
        );
        let checks: Vec<(&str, bool)> = checks
            .into_iter()
            .map(|(name, result)| {
                if let Err(err) = &result {
                    tracing::warn!(dependency = name, error = %err, "not ready");
                }
                (name, result.is_ok())
            })
            .collect();
        let metrics = issuer.metrics();
        issuer.record_pool(&metrics.pool_connections);
        metrics.dependency_up.replace(
            checks
                .iter()
                .map(|&(dependency, up)| (DependencyLabels { dependency }, i64::from(up))),
        );
        {
            let mut snapshot = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
            snapshot.checks = checks;
            snapshot.taken = Instant::now();
        }
        match failed {
            Ok(failed) => metrics.failed_events.replace(
                failed
                    .into_iter()
                    .map(|(reason, status, count)| (FailedLabels { reason, status }, count)),
            ),
            Err(err) => {
                tracing::warn!(error = %err, "failed events not counted; the last count stands")
            }
        }
        let active = match active {
            Ok(active) => active,
            Err(err) => {
                tracing::warn!(error = %err, "active coupons not read; their gauges stand");
                return;
            }
        };
        // Gauges of their own for the newest coupons only: the label set stays bounded
        // however many are active.
        let newest = &active[..active.len().min(COUPON_GAUGES_MAX)];
        let (stock, backlog) = tokio::join!(issuer.active_stock(newest), issuer.backlog(&active));
        self.history.record(Sample {
            answers: metrics.answer_counts(),
            coupons: stock
                .iter()
                .flatten()
                .map(|s| (s.coupon, (s.issued, s.persisted)))
                .collect(),
        });
        match stock {
            Ok(stock) => {
                let label = |coupon: &crate::issuing::Stock| CouponLabels {
                    coupon: coupon.coupon.to_string(),
                };
                metrics
                    .coupon_issued
                    .replace(stock.iter().map(|s| (label(s), s.issued)));
                metrics
                    .coupon_persisted
                    .replace(stock.iter().map(|s| (label(s), s.persisted)));
                metrics.coupon_remaining.replace(
                    stock
                        .iter()
                        .map(|s| (label(s), (s.quantity - s.issued).max(0))),
                );
                let per_bucket = |read: fn(&crate::issuing::BucketStock) -> i64| {
                    stock
                        .iter()
                        .flat_map(|s| s.buckets.iter().map(move |b| (s.coupon, b)))
                        .map(move |(coupon, b)| {
                            let labels = BucketLabels {
                                coupon: coupon.to_string(),
                                bucket: b.bucket.index().to_string(),
                            };
                            (labels, read(b))
                        })
                };
                metrics.bucket_stock.replace(per_bucket(|b| b.stock));
                metrics.bucket_issued.replace(per_bucket(|b| b.issued));
            }
            Err(err) => {
                tracing::warn!(error = %err, "active coupons' stock not read; their gauges stand")
            }
        }
        match backlog {
            Ok(Backlog::Partitions(lag)) => metrics.queue_lag.replace(
                lag.into_iter()
                    .map(|(partition, lag)| (PartitionLabels { partition }, lag)),
            ),
            Ok(Backlog::Streams { unread, pending }) => {
                metrics.stream_unread.set(unread);
                metrics.stream_pending.set(pending);
            }
            Err(err) => tracing::warn!(error = %err, "the workers' backlog not read; it stands"),
        }
    }

    /// Refreshes the view every second until `shutdown`.
    pub async fn run(&self, issuer: Issuer, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(REFRESH) => {}
            }
            self.refresh(&issuer).await;
        }
    }
}
