//! Issuing one coupon to one user: admit in Redis, hand the event to its delivery, answer;
//! and the reads the HTTP contract makes beside it.
//!
//! Invariants: a SUCCESS answer is given only once the event is durably queued (see
//! `crate::delivery`). A user is told "yours" only when it is known: while someone else's
//! publish of their event is unresolved, the answer is 503, retry.

mod rebuild;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use coupon_core::admission::{AdmissionScripts, AdmitReply};
use coupon_core::db::coupons::{
    NewCoupon, find_coupon, find_coupons, find_issue, insert_coupon, user_coupons,
};
use coupon_core::db::failed_events;
use coupon_core::db::pool::PgPool;
use coupon_core::domain::{Admission, Coupon, CouponId, UserId};
use coupon_core::ledger::Claim;
use diesel_async::RunQueryDsl;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tracing::Instrument;

use crate::delivery::{Backlog, Delivery};
use crate::error::ApiError;
use crate::metrics::{Metrics, StateLabels};
use crate::replication::Replication;

pub use rebuild::Rebuilt;

/// How long a request for a user whose event another request is publishing waits for that
/// outcome before answering 503, and its first pause between looks (doubled each time, so a
/// broker outage's retries cost a handful of looks each, not a hundred).
const BUSY_WAIT: Duration = Duration::from_millis(500);
const BUSY_FIRST_PAUSE: Duration = Duration::from_millis(5);

#[derive(Clone)]
pub struct Issuer {
    redis: ConnectionManager,
    scripts: AdmissionScripts,
    pool: PgPool,
    delivery: Delivery,
    rebuild_timeout: Duration,
    /// Confirms each admission on the replicas first, when REDIS_MIN_REPLICAS is set.
    replication: Option<Replication>,
    metrics: Arc<Metrics>,
}

/// One active coupon's stock, for the per-coupon gauges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stock {
    pub coupon: CouponId,
    pub quantity: i64,
    /// Slots admission has taken (Redis).
    pub issued: i64,
    /// Rows the workers have written (PostgreSQL).
    pub persisted: i64,
}

/// Where a user stands with a coupon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holding {
    /// The row is in PostgreSQL.
    Persisted(DateTime<Utc>),
    /// Admitted, but the database set the event aside for good, for this reason (the
    /// quantity guard's OVER_QUANTITY, say): no row will come without an operator.
    Refused(String),
    /// Admitted; the row is on its way.
    Admitted,
    None,
}

impl Issuer {
    pub fn new(
        redis: ConnectionManager,
        scripts: AdmissionScripts,
        pool: PgPool,
        delivery: Delivery,
        rebuild_timeout: Duration,
        replication: Option<Replication>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            redis,
            scripts,
            pool,
            delivery,
            rebuild_timeout,
            replication,
            metrics,
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// Runs the whole decision on its own task: if the client goes away mid-request, the
    /// admission and its publish (or release) still finish, so no slot is left taken
    /// without an event behind it.
    pub async fn issue(&self, coupon: CouponId, user: UserId) -> Result<Admission, ApiError> {
        let this = self.clone();
        // The task carries the request's span: its admission and publish are in its trace.
        let work = async move { this.admit_and_deliver(coupon, user).await };
        tokio::spawn(work.instrument(tracing::Span::current()))
            .await
            .map_err(|e| ApiError::Internal(e.into()))?
    }

    async fn admit_and_deliver(
        &self,
        coupon: CouponId,
        user: UserId,
    ) -> Result<Admission, ApiError> {
        let mut redis = self.redis.clone();
        let waiting_since = tokio::time::Instant::now();
        let mut pause = BUSY_FIRST_PAUSE;
        loop {
            let started = std::time::Instant::now();
            let reply = self
                .scripts
                .admit(&mut redis, coupon, user)
                .instrument(tracing::debug_span!("admission_script", %coupon, %user))
                .await;
            self.metrics
                .admission_script
                .observe(started.elapsed().as_secs_f64());
            let reply = reply?;
            let kafka = match reply {
                AdmitReply::NotLoaded | AdmitReply::Unverified => {
                    return Err(self.start_rebuild(coupon).await);
                }
                AdmitReply::Refused(admission) => return Ok(admission),
                AdmitReply::Admitted(event) => {
                    // Both must hold before "yes": the event queued, and the slot on the
                    // replicas a failover could promote.
                    let (delivered, replicated) =
                        tokio::join!(self.delivery.deliver(event), self.replicated());
                    delivered?;
                    replicated?;
                    return Ok(Admission::Success);
                }
                AdmitReply::Pending => self.delivery.kafka().ok_or_else(|| {
                    // A Kafka-mode run's entry under a Redis-queue-mode API: it stays for a
                    // Kafka-mode API to settle.
                    ApiError::Internal(
                        "a Kafka-mode pending slot met a Redis-queue-mode API".into(),
                    )
                })?,
            };
            match kafka.claim(&mut redis, coupon, user).await? {
                Claim::Claimed(entry) => {
                    return kafka.republish(entry).await.map(|()| Admission::Success);
                }
                // Another request is publishing this user's event. Its outcome usually comes
                // within milliseconds (a double click): wait for it, then ask admission
                // again, which then knows the truth. Past the wait, nobody knows yet, and
                // saying "yours" (409) could be a lie.
                Claim::Busy(_) if waiting_since.elapsed() < BUSY_WAIT => {
                    let left = BUSY_WAIT.saturating_sub(waiting_since.elapsed());
                    tokio::time::sleep(pause.min(left)).await;
                    pause *= 2;
                }
                Claim::Busy(_) => return Err(ApiError::PublishUnresolved),
                // Settled or given back between the two scripts: admission knows now.
                Claim::Absent => {}
            }
        }
    }

    /// The admission (its script has returned) is on the configured number of replicas.
    async fn replicated(&self) -> Result<(), ApiError> {
        match &self.replication {
            Some(replication) => replication.confirm().await,
            None => Ok(()),
        }
    }

    /// Stores a new coupon, then pre-warms Redis so the sale's first request does not pay
    /// for the load. If Redis is down now, the first request loads it lazily instead: the
    /// coupon exists either way.
    pub async fn create_coupon(&self, new: &NewCoupon) -> Result<Coupon, ApiError> {
        let coupon = {
            let mut conn = self.pool.get().await?;
            insert_coupon(&mut conn, new).await?
        };
        if let Err(err) = self
            .scripts
            .load_meta(&mut self.redis.clone(), &coupon)
            .await
        {
            tracing::warn!(coupon = %coupon.id, error = %err, "could not pre-warm Redis");
        }
        Ok(coupon)
    }

    /// The coupon as PostgreSQL holds it, and how many slots admission has taken.
    pub async fn coupon(&self, id: CouponId) -> Result<(Coupon, i64), ApiError> {
        let coupon = {
            let mut conn = self.pool.get().await?;
            find_coupon(&mut conn, id).await?
        }
        .ok_or(ApiError::CouponNotFound(id.get()))?;
        let admitted = self
            .scripts
            .admitted_count(&mut self.redis.clone(), id)
            .await?;
        Ok((coupon, admitted))
    }

    pub async fn holding(&self, coupon: CouponId, user: UserId) -> Result<Holding, ApiError> {
        let (issued_at, refusal) = {
            let mut conn = self.pool.get().await?;
            if find_coupon(&mut conn, coupon).await?.is_none() {
                return Err(ApiError::CouponNotFound(coupon.get()));
            }
            match find_issue(&mut conn, coupon, user).await? {
                Some(at) => (Some(at), None),
                None => (None, failed_events::refusal(&mut conn, coupon, user).await?),
            }
        };
        Ok(match (issued_at, refusal) {
            (Some(at), _) => Holding::Persisted(at),
            (None, Some(reason)) => Holding::Refused(reason),
            (None, None)
                if self
                    .scripts
                    .is_admitted(&mut self.redis.clone(), coupon, user)
                    .await? =>
            {
                Holding::Admitted
            }
            (None, None) => Holding::None,
        })
    }

    /// The user's coupons with their rows' times.
    pub async fn user_coupons(&self, user: UserId) -> Result<Vec<(i64, DateTime<Utc>)>, ApiError> {
        let mut conn = self.pool.get().await?;
        Ok(user_coupons(&mut conn, user).await?)
    }

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
        Ok(coupons
            .into_iter()
            .map(|coupon| Stock {
                coupon: coupon.id,
                quantity: coupon.total_quantity,
                issued: issued.get(&coupon.id).copied().unwrap_or_default(),
                persisted: coupon.issued_count,
            })
            .collect())
    }

    /// Sets the database pool's gauges.
    pub fn record_pool(&self, gauges: &coupon_core::metrics::GaugeSet<StateLabels>) {
        coupon_core::metrics::record_pool(gauges, &self.pool);
    }

    /// Each dependency's answer: `Err` holds what went wrong.
    pub async fn readiness(&self) -> Vec<(&'static str, Result<(), String>)> {
        let redis = async {
            let mut con = self.redis.clone();
            con.ping::<String>()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let postgres = async {
            let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
            diesel::sql_query("SELECT 1")
                .execute(&mut conn)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let (redis, postgres, kafka) = tokio::join!(redis, postgres, self.delivery.check());
        let mut checks = vec![("redis", redis), ("postgresql", postgres)];
        checks.extend(kafka.map(|kafka| ("kafka", kafka)));
        checks
    }
}
