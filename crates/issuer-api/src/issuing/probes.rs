//! What the operations view and readiness ask of the dependencies: active coupons, their
//! stock, the workers' backlog, failed events, the pool, and whether each answers.

use coupon_core::db::coupons::find_coupons;
use coupon_core::db::failed_events;
use coupon_core::domain::CouponId;
use diesel_async::RunQueryDsl;
use redis::AsyncCommands;

use super::Issuer;
use super::buckets::BucketStock;
use crate::delivery::Backlog;
use crate::error::ApiError;
use crate::layouts::Layout;
use crate::metrics::StateLabels;

/// One active coupon's stock, for the per-coupon gauges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stock {
    pub coupon: CouponId,
    pub quantity: i64,
    /// Slots admission has taken (Redis).
    pub issued: i64,
    /// Rows the workers have written (PostgreSQL).
    pub persisted: i64,
    /// A coupon in buckets: each one's (those verified under the stamps known here).
    pub buckets: Vec<BucketStock>,
}

impl Issuer {
    /// Events set aside by the workers, counted by reason and state.
    pub async fn failed_event_counts(&self) -> Result<Vec<(String, String, i64)>, ApiError> {
        let mut conn = self.pool.get().await?;
        Ok(failed_events::counts(&mut conn).await?)
    }

    /// The coupons still needing work (the registry's), newest ids first.
    pub async fn active_coupons(&self) -> Result<Vec<CouponId>, ApiError> {
        let mut ids: Vec<CouponId> = self
            .scripts
            .registry()
            .members(&mut self.redis.clone())
            .await?
            .into_iter()
            .map(|registration| registration.coupon)
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        Ok(ids)
    }

    /// How far the workers are behind (`crate::delivery::Backlog`); `active` are the
    /// coupons [`Issuer::active_coupons`] returned.
    pub async fn backlog(&self, active: &[CouponId]) -> Result<Backlog, ApiError> {
        self.delivery.backlog(&mut self.redis.clone(), active).await
    }

    /// Stock of the coupons `ids` (active ones, as [`Issuer::active_coupons`] returned).
    pub async fn active_stock(&self, ids: &[CouponId]) -> Result<Vec<Stock>, ApiError> {
        let mut redis = self.redis.clone();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut counts = redis::pipe();
        for &id in ids {
            counts.scard(self.scripts.keys(id).issued);
        }
        let issued: Vec<i64> = counts.query_async(&mut redis).await?;
        let issued: std::collections::HashMap<CouponId, i64> =
            ids.iter().copied().zip(issued).collect();
        let coupons = {
            let mut conn = self.pool.get().await?;
            find_coupons(&mut conn, ids).await?
        };
        let mut stock = Vec::with_capacity(coupons.len());
        for coupon in coupons {
            let (issued, buckets) = match self.layouts.get(coupon.id).await? {
                Some(Layout::Buckets(places)) => {
                    let buckets = self.bucket_stock(&places).await?;
                    (buckets.iter().map(|read| read.issued).sum(), buckets)
                }
                Some(Layout::Single) | None => (
                    issued.get(&coupon.id).copied().unwrap_or_default(),
                    Vec::new(),
                ),
            };
            stock.push(Stock {
                coupon: coupon.id,
                quantity: coupon.total_quantity,
                issued,
                persisted: coupon.persisted_count,
                buckets,
            });
        }
        Ok(stock)
    }

    /// Sets the database pool's gauges.
    pub fn record_pool(&self, gauges: &coupon_core::metrics::GaugeSet<StateLabels>) {
        coupon_core::metrics::record_pool(gauges, &self.pool);
    }

    /// Each dependency's answer: `Err` holds what went wrong. PostgreSQL is asked on
    /// `probe_pool`, a pool of readiness's own.
    pub async fn readiness(
        &self,
        probe_pool: &coupon_core::db::pool::PgPool,
    ) -> Vec<(&'static str, Result<(), String>)> {
        let redis = async {
            let mut con = self.redis.clone();
            con.ping::<String>()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let postgres = async {
            let mut conn = probe_pool.get().await.map_err(|e| e.to_string())?;
            diesel::sql_query("SELECT 1")
                .execute(&mut conn)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let (redis, postgres, queue) = tokio::join!(redis, postgres, self.delivery.check());
        let mut checks = vec![("redis", redis), ("postgresql", postgres)];
        checks.extend(queue);
        checks
    }
}
