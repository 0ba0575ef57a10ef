//! Issuing one coupon to one user: admit in Redis, hand the event to the queue, answer.
//!
//! Invariants: a SUCCESS answer is given only once the event is durably queued: in Kafka
//! mode after the broker acknowledged it; in the Redis queue mode the admission script
//! appended it to the coupon's stream in the same atomic step as taking the slot.
//! Every slot taken ends either given back (the event certainly never reached the log) or
//! as exactly one row (the event was, or may have been, published: it is held in doubt
//! and published again until acknowledged; the sink is idempotent). Who may give a slot
//! back or publish it again is the ledger's to say (`coupon_core::ledger`).
//! A user is told "yours" only when it is known: while someone else's publish of their
//! event is unresolved, the answer is 503, retry.

use std::time::Duration;

use coupon_core::admission::{AdmissionScripts, AdmitReply};
use coupon_core::config::KafkaArgs;
use coupon_core::db::coupons::{coupon_holders, find_coupon};
use coupon_core::db::pool::PgPool;
use coupon_core::domain::{Admission, CouponId, UserId};
use coupon_core::kafka::wait_for_group;
use coupon_core::ledger::{Claim, Ledger, PendingEntry};
use redis::aio::ConnectionManager;

use coupon_core::producer::Persistence;

use crate::error::ApiError;
use crate::publisher::Publisher;

/// A rebuild lease outlives the longest rebuild wait, so two never overlap; a crashed
/// rebuilder's lease runs out and the next request starts over.
const REBUILD_LEASE_MARGIN: Duration = Duration::from_secs(30);
/// librdkafka reports every message by its message timeout; this margin covers the
/// report's way back to the request.
pub const PUBLISH_REPORT_MARGIN: Duration = Duration::from_secs(2);
/// How long a request for a user whose event another request is publishing waits for that
/// outcome before answering 503, and its first pause between looks (doubled each time, so a
/// broker outage's retries cost a handful of looks each, not a hundred).
const BUSY_WAIT: Duration = Duration::from_millis(500);
const BUSY_FIRST_PAUSE: Duration = Duration::from_millis(5);

/// Where admitted events go.
#[derive(Clone)]
pub enum Delivery {
    /// Published to the issue topic; a rebuild waits for `worker_group` to reach its end.
    Kafka {
        publisher: Publisher,
        ledger: Ledger,
        kafka: KafkaArgs,
        worker_group: String,
    },
    /// Already on the coupon's stream when the admission script returns.
    RedisStream,
}

#[derive(Clone)]
pub struct Issuer {
    pub redis: ConnectionManager,
    pub scripts: AdmissionScripts,
    pub pool: PgPool,
    pub delivery: Delivery,
    pub rebuild_timeout: Duration,
    /// Longest a first publish can take to report: a pending slot older than this whose
    /// request never reported belongs to an API that died, and is published by others.
    pub publish_window: Duration,
}

/// What an explicit rebuild did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rebuilt {
    /// Restored with this many holders.
    Restored { holders: usize },
    /// Another process is rebuilding this coupon right now.
    AlreadyRunning,
}

impl Issuer {
    /// Runs the whole decision on its own task: if the client goes away mid-request, the
    /// admission and its publish (or release) still finish, so no slot is left taken
    /// without an event behind it.
    pub async fn issue(&self, coupon: CouponId, user: UserId) -> Result<Admission, ApiError> {
        let this = self.clone();
        tokio::spawn(async move { this.admit_and_publish(coupon, user).await })
            .await
            .map_err(|e| ApiError::Internal(e.into()))?
    }

    async fn admit_and_publish(
        &self,
        coupon: CouponId,
        user: UserId,
    ) -> Result<Admission, ApiError> {
        let mut redis = self.redis.clone();
        let waiting_since = tokio::time::Instant::now();
        let mut pause = BUSY_FIRST_PAUSE;
        loop {
            let reply = self.scripts.admit(&mut redis, coupon, user).await?;
            match (reply, &self.delivery) {
                (AdmitReply::NotLoaded, _) => return Err(self.start_rebuild(coupon).await),
                (AdmitReply::Refused(admission), _) => return Ok(admission),
                (AdmitReply::Admitted(_), Delivery::RedisStream) => return Ok(Admission::Success),
                (AdmitReply::Admitted(event), Delivery::Kafka { .. }) => {
                    return self
                        .publish_new(PendingEntry::admitted(event))
                        .await
                        .map(|()| Admission::Success);
                }
                (AdmitReply::Pending, _) => match self.claim(coupon, user).await? {
                    Claim::Claimed(entry) => {
                        return self.republish(entry).await.map(|()| Admission::Success);
                    }
                    // Another request is publishing this user's event. Its outcome usually
                    // comes within milliseconds (a double click): wait for it, then ask
                    // admission again, which then knows the truth. Past the wait, nobody
                    // knows yet, and saying "yours" (409) could be a lie.
                    Claim::Busy(_) if waiting_since.elapsed() < BUSY_WAIT => {
                        let left = BUSY_WAIT.saturating_sub(waiting_since.elapsed());
                        tokio::time::sleep(pause.min(left)).await;
                        pause *= 2;
                    }
                    Claim::Busy(_) => return Err(ApiError::PublishUnresolved),
                    // Settled or given back between the two scripts: admission knows now.
                    Claim::Absent => {}
                },
            }
        }
    }

    /// The publisher and the ledger: Kafka mode's delivery.
    fn kafka(&self) -> Result<(&Publisher, &Ledger), ApiError> {
        match &self.delivery {
            Delivery::Kafka {
                publisher, ledger, ..
            } => Ok((publisher, ledger)),
            // Pending entries exist only in Kafka mode; one left by a Kafka-mode run under a
            // Redis-mode API stays for a Kafka-mode API to settle.
            Delivery::RedisStream => Err(ApiError::Internal(
                "a Kafka-mode pending slot met a Redis-queue-mode API".into(),
            )),
        }
    }

    /// Takes the user's pending entry to publish it again, if its owner's window is over.
    pub async fn claim(&self, coupon: CouponId, user: UserId) -> Result<Claim, ApiError> {
        let (_, ledger) = self.kafka()?;
        Ok(ledger
            .claim(&mut self.redis.clone(), coupon, user, self.publish_window)
            .await?)
    }

    /// The first publish of a new admission, by the request that owns it.
    async fn publish_new(&self, entry: PendingEntry) -> Result<(), ApiError> {
        let (publisher, ledger) = self.kafka()?;
        let mut redis = self.redis.clone();
        let (coupon, user) = (entry.event.coupon_id, entry.event.user_id);
        let Err(failure) = publisher.publish(&entry.event).await else {
            self.settle(ledger, &entry).await;
            return Ok(());
        };
        let handed_over = match failure.persistence {
            // The event never reached the log: the slot goes back to the stock now.
            Persistence::NotPersisted => ledger.release(&mut redis, &entry).await,
            // The broker may have it: the slot stays, for anyone to publish again.
            Persistence::PossiblyPersisted => ledger.mark_in_doubt(&mut redis, &entry).await,
        };
        match handed_over {
            Ok(true) => {}
            // Past the window a retry or a reconciler took the entry: its fate is theirs.
            Ok(false) => {
                tracing::warn!(%coupon, %user, "publish failed after another took over the slot")
            }
            // Left inflight, it is claimed by a retry or a reconciler once its window passes.
            Err(err) => tracing::error!(%coupon, %user, error = %err,
                "publish failed and its pending entry could not be updated"),
        }
        Err(ApiError::unavailable("kafka", failure))
    }

    /// Publishes a claimed entry again. On acknowledgement the slot is settled; on any
    /// failure the entry is handed back in doubt (an earlier attempt may have reached the
    /// log), for the next retry or reconciler pass.
    pub async fn republish(&self, entry: PendingEntry) -> Result<(), ApiError> {
        let (publisher, ledger) = self.kafka()?;
        match publisher.publish(&entry.event).await {
            Ok(()) => {
                self.settle(ledger, &entry).await;
                Ok(())
            }
            Err(failure) => {
                if let Err(err) = ledger.mark_in_doubt(&mut self.redis.clone(), &entry).await {
                    // Left claimed, it is claimable again once its window passes.
                    tracing::warn!(coupon = %entry.event.coupon_id, user = %entry.event.user_id,
                        error = %err, "could not hand the entry back");
                }
                Err(ApiError::unavailable("kafka", failure))
            }
        }
    }

    /// The event is acknowledged. Should clearing its pending entry fail, the entry is
    /// published once more later: a duplicate the worker ignores, never a loss.
    async fn settle(&self, ledger: &Ledger, entry: &PendingEntry) {
        if let Err(err) = ledger.settle(&mut self.redis.clone(), &entry.event).await {
            tracing::warn!(coupon = %entry.event.coupon_id, user = %entry.event.user_id,
                error = %err, "acknowledged, but the pending entry stays until it is claimed");
        }
    }

    /// Redis has no state for this coupon (Redis restarted empty, say): answer 404 at once
    /// if PostgreSQL does not know it either, else start rebuilding in the background and
    /// answer 503 until admission reopens.
    async fn start_rebuild(&self, coupon: CouponId) -> ApiError {
        let exists = async {
            let mut conn = self.pool.get().await?;
            Ok::<_, ApiError>(find_coupon(&mut conn, coupon).await?.is_some())
        };
        match exists.await {
            Ok(true) => {}
            Ok(false) => return ApiError::CouponNotFound(coupon.get()),
            Err(err) => return err,
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(err) = this.rebuild(&[coupon]).await {
                tracing::warn!(%coupon, error = %err, "rebuilding the coupon's Redis state failed");
            }
        });
        ApiError::Rebuilding(coupon.get())
    }

    /// Restores coupons' Redis state from PostgreSQL, safely. In Kafka mode the workers
    /// must first have persisted every event published so far, so that PostgreSQL's
    /// holders plus the pending entries are everyone who won. In the Redis queue mode the
    /// events not yet persisted are on the coupon's stream (in the same Redis: if Redis
    /// lost them, they are lost, see the README's trade-off table), so no wait is needed.
    /// Only then is each meta written, which reopens admission. Many coupons share one wait.
    pub async fn rebuild(
        &self,
        coupons: &[CouponId],
    ) -> Result<Vec<(CouponId, Rebuilt)>, ApiError> {
        let mut redis = self.redis.clone();
        let lease = self.publish_window + self.rebuild_timeout + REBUILD_LEASE_MARGIN;
        let (mut leased, mut done) = (Vec::new(), Vec::new());
        for &coupon in coupons {
            if self
                .scripts
                .try_lease_rebuild(&mut redis, coupon, lease)
                .await?
            {
                leased.push(coupon);
            } else {
                done.push((coupon, Rebuilt::AlreadyRunning));
            }
        }
        if leased.is_empty() {
            return Ok(done);
        }
        let rebuilt = self.rebuild_leased(&leased).await;
        for &coupon in &leased {
            if let Err(err) = self.scripts.end_rebuild_lease(&mut redis, coupon).await {
                tracing::warn!(%coupon, error = %err, "rebuild lease not released; it will expire");
            }
        }
        done.extend(rebuilt?);
        Ok(done)
    }

    async fn rebuild_leased(
        &self,
        coupons: &[CouponId],
    ) -> Result<Vec<(CouponId, Rebuilt)>, ApiError> {
        if let Delivery::Kafka {
            kafka,
            worker_group,
            ..
        } = &self.delivery
        {
            // A publish admitted before Redis lost the coupons may still be on its way to
            // the broker; once a full publish window has passed, every such event has
            // landed (or failed) and the high-water mark captured next covers it.
            tracing::info!(
                coupons = coupons.len(),
                "rebuild: letting publishes admitted before the loss report"
            );
            tokio::time::sleep(self.publish_window).await;
            tracing::info!(group = %worker_group, "rebuild: waiting for the workers to reach the end of the topic");
            wait_for_group(kafka, worker_group, self.rebuild_timeout)
                .await
                .map_err(|e| ApiError::unavailable("kafka", e))?;
        }
        let mut redis = self.redis.clone();
        let mut rebuilt = Vec::with_capacity(coupons.len());
        for &coupon in coupons {
            let (record, mut holders) = {
                let mut conn = self.pool.get().await?;
                let record = find_coupon(&mut conn, coupon)
                    .await?
                    .ok_or(ApiError::CouponNotFound(coupon.get()))?;
                (record, coupon_holders(&mut conn, coupon).await?)
            };
            if let Delivery::Kafka { ledger, .. } = &self.delivery {
                let pending = ledger.entries(&mut redis, coupon).await?;
                holders.extend(pending.iter().map(|entry| entry.event.user_id.get()));
            }
            holders.extend(self.scripts.stream_users(&mut redis, coupon).await?);
            self.scripts.restore(&mut redis, &record, &holders).await?;
            tracing::info!(%coupon, holders = holders.len(), "rebuild: admission reopened");
            rebuilt.push((
                coupon,
                Rebuilt::Restored {
                    holders: holders.len(),
                },
            ));
        }
        Ok(rebuilt)
    }
}
