//! Kafka mode: each admitted event is published by the request that admitted it, and the
//! request answers SUCCESS only once the broker acknowledged it.
//!
//! Invariants: every slot taken ends either given back (the event certainly never reached
//! the log) or as exactly one row (the event was, or may have been, published: it is held in
//! doubt and published again until acknowledged; the sink is idempotent). Who may give a
//! slot back or publish it again is the ledger's to say (`coupon_core::redis::ledger`). A publish
//! of an entry starts as soon as its owner holds it, so every publish is over (acknowledged
//! or failed) within one publish window of the last moment Redis knew its entry: what a
//! rebuild waits out, then fences each coupon's partition, before it looks at the log.

pub mod publisher;
pub mod reconciler;
pub mod settler;

use std::sync::Arc;
use std::time::Duration;

use coupon_core::buckets::mover::Mover;
use coupon_core::config::KafkaArgs;
use coupon_core::db::pool::PgPool;
use coupon_core::db::publish_window;
use coupon_core::domain::{CouponId, UserId};
use coupon_core::event::{Fence, IssueEvent};
use coupon_core::kafka::offsets::{GroupOffsets, wait_for_group};
use coupon_core::kafka::producer::Persistence;
use coupon_core::redis::connection::RedisConnection;
use coupon_core::redis::ledger::{Claim, Ledger, LedgerAt, PendingEntry, PendingState};
use coupon_core::redis::registry::Registry;
use futures_util::future::join_all;
use redis::aio::ConnectionLike;

use crate::error::ApiError;
use crate::layouts::{Layout, Layouts};
use crate::metrics::Metrics;
use crate::replication::Replication;
use publisher::Publisher;
use settler::Settler;

/// librdkafka reports every message by its message timeout; this margin covers the
/// report's way back to the request.
pub const PUBLISH_REPORT_MARGIN: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct KafkaDelivery {
    publisher: Publisher,
    ledger: Ledger,
    settler: Settler,
    registry: Registry,
    redis: RedisConnection,
    kafka: KafkaArgs,
    /// The workers' group, whose progress a rebuild waits for.
    worker_group: String,
    rebuild_timeout: Duration,
    metrics: Arc<Metrics>,
    /// The workers' group's progress, for the lag gauges.
    offsets: Arc<GroupOffsets>,
    /// Longest a publish can take to report: a pending slot older than this whose request
    /// never reported belongs to an API that died, and is published by others.
    publish_window: Duration,
    reconcile_interval: Duration,
    pool: PgPool,
    replication: Option<Replication>,
    /// Where each coupon's pending entries are kept, for the reconciler.
    layouts: Arc<Layouts>,
}

/// How a KafkaDelivery is put together.
pub struct KafkaSettings {
    pub kafka: KafkaArgs,
    pub key_prefix: String,
    pub worker_group: String,
    pub publish_timeout: Duration,
    pub rebuild_timeout: Duration,
    /// Pause between the reconciler's passes.
    pub reconcile_interval: Duration,
    /// Where the publish window every rebuild honours is kept.
    pub pool: PgPool,
    /// When replicas must confirm: a claim is confirmed before its republish.
    pub replication: Option<Replication>,
    pub layouts: Arc<Layouts>,
    /// How long a slot given back is held before it is sold again (the finished gates').
    pub reopen_hold: Duration,
}

impl KafkaDelivery {
    pub fn new(
        settings: KafkaSettings,
        redis: RedisConnection,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ApiError> {
        let KafkaSettings {
            kafka,
            key_prefix,
            worker_group,
            publish_timeout,
            rebuild_timeout,
            reconcile_interval,
            pool,
            replication,
            layouts,
            reopen_hold,
        } = settings;
        // With replicas required, a publish starts only after its confirmation: up to two
        // WAITs (the one under way, then the asker's own).
        let confirmations = replication
            .as_ref()
            .map_or(Duration::ZERO, |replication| 2 * replication.timeout());
        let publish_window = publish_timeout + PUBLISH_REPORT_MARGIN + confirmations;
        metrics.publish_window.set(publish_window.as_secs_f64());
        Ok(Self {
            publisher: Publisher::new(&kafka, publish_timeout, metrics.publish_ack.clone())
                .map_err(|e| ApiError::unavailable("kafka", e))?,
            ledger: Ledger::new(key_prefix.clone()).with_reopen_hold(reopen_hold),
            settler: Settler::start(Ledger::new(key_prefix.clone()), redis.clone()),
            registry: Registry::new(key_prefix, coupon_core::domain::QueueKind::Kafka),
            offsets: Arc::new(
                GroupOffsets::new(&kafka, &worker_group)
                    .map_err(|e| ApiError::unavailable("kafka", e))?,
            ),
            redis,
            kafka,
            worker_group,
            rebuild_timeout,
            metrics,
            publish_window,
            reconcile_interval,
            pool,
            replication,
            layouts,
        })
    }

    /// Records this process's publish window where every process reads it (at start), and
    /// returns the longest any has recorded: a rebuild run from a process with a shorter
    /// PUBLISH_TIMEOUT_MS than the APIs' (`rebuild-redis` with default settings) must
    /// still wait for theirs.
    pub async fn record_publish_window(&self) -> Result<Duration, ApiError> {
        let mut conn = self.pool.get().await?;
        Ok(publish_window::record(&mut conn, self.publish_window).await?)
    }

    /// The longest publish window any process recorded, this one's included.
    pub async fn shared_publish_window(&self) -> Result<Duration, ApiError> {
        let mut conn = self.pool.get().await?;
        Ok(publish_window::longest(&mut conn, self.publish_window).await?)
    }

    /// The first publish of a new admission, by the request that owns its entry, kept `at`.
    pub async fn publish_new(&self, event: IssueEvent, at: LedgerAt) -> Result<(), ApiError> {
        let entry = PendingEntry::admitted(event);
        let mut redis = self.redis.clone();
        let (coupon, user) = (entry.event.coupon_id, entry.event.user_id);
        let Err(failure) = self.publisher.publish(&entry.event).await else {
            // Acknowledged: the answer need not wait for the entry to go (`settler`).
            self.settler.settle(at, entry.event);
            return Ok(());
        };
        let handed_over = match failure.persistence {
            // The event never reached the log: the slot goes back to the stock now.
            Persistence::NotPersisted => self.ledger.release(&mut redis, &at, &entry).await,
            // The broker may have it: the slot stays, for anyone to publish again.
            Persistence::PossiblyPersisted => {
                self.ledger.mark_in_doubt(&mut redis, &at, &entry).await
            }
        };
        match handed_over {
            // In a bucket the slot was only flagged: it is put up for sale at once.
            Ok(true) if matches!(at, LedgerAt::Bucket(_)) => {
                if failure.persistence == Persistence::NotPersisted
                    && let Err(err) = self.reopen_released(coupon).await
                {
                    // Left flagged, it is reopened by the reconciler's next pass.
                    tracing::warn!(%coupon, error = %err, "could not put a slot given back up for sale");
                }
            }
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

    /// Takes the user's pending entry to publish it again, if its owner's window is over.
    /// When replicas must confirm, the claim runs on the replication socket and is
    /// confirmed before it is returned: a primary cut off from its replicas (a split brain)
    /// then republishes nothing a promoted replica does not know of.
    pub async fn claim<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        at: &LedgerAt,
        coupon: CouponId,
        user: UserId,
    ) -> Result<Claim, ApiError> {
        let Some(replication) = &self.replication else {
            return Ok(self
                .ledger
                .claim(con, at, coupon, user, self.publish_window)
                .await?);
        };
        let mut bound = replication.connection().await?;
        let claim = self
            .ledger
            .claim(&mut bound.connection, at, coupon, user, self.publish_window)
            .await
            .inspect_err(|err| replication.failed(bound.generation, err))?;
        if let Claim::Claimed(_) = &claim {
            replication.confirm(bound.generation).await?;
        }
        Ok(claim)
    }

    /// Publishes a claimed entry again. On acknowledgement the slot is settled; on any
    /// failure the entry is handed back in doubt (an earlier attempt may have reached the
    /// log), for the next retry or reconciler pass.
    pub async fn republish(&self, entry: PendingEntry, at: LedgerAt) -> Result<(), ApiError> {
        match self.publisher.publish(&entry.event).await {
            Ok(()) => {
                self.settler.settle(at, entry.event);
                Ok(())
            }
            Err(failure) => {
                let handed_back = self
                    .ledger
                    .mark_in_doubt(&mut self.redis.clone(), &at, &entry)
                    .await;
                if let Err(err) = handed_back {
                    // Left claimed, it is claimable again once its window passes.
                    tracing::warn!(coupon = %entry.event.coupon_id, user = %entry.event.user_id,
                        error = %err, "could not hand the entry back");
                }
                Err(ApiError::unavailable("kafka", failure))
            }
        }
    }

    /// Users whose events the broker has not acknowledged yet, of those kept `at`. A slot
    /// being given back (a bucket's `releasing` entry) is not among them: its event
    /// certainly never reached the log.
    pub async fn unsettled_users<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        at: &LedgerAt,
        coupon: CouponId,
    ) -> Result<Vec<i64>, ApiError> {
        let pending = self.ledger.entries(con, at, coupon).await?;
        Ok(pending
            .iter()
            .filter(|entry| entry.state != PendingState::Releasing)
            .map(|entry| entry.event.user_id.get())
            .collect())
    }

    /// Puts a bucketed coupon's slots being given back up for sale again; how many.
    pub async fn reopen_released(&self, coupon: CouponId) -> Result<i64, ApiError> {
        let Some(Layout::Buckets(places)) = self.layouts.get(coupon).await? else {
            return Ok(0);
        };
        let mover = Mover {
            places: &places,
            pool: &self.pool,
            owner: self.layouts.owner(),
        };
        Ok(mover
            .reopen_released(&mut self.redis.clone())
            .await?
            .unwrap_or(0))
    }

    /// Lets every publish started before Redis lost its entries report, then settles what
    /// they sent: a publish starts as soon as its entry is owned, so one publish window
    /// after the loss every such publish has reported; a send that ended in doubt may
    /// still sit in the leader's log uncommitted (a follower in the in-sync set holds the
    /// high watermark back, for as long as it stays there), so a fence on each coupon's
    /// partition is acknowledged next: then each such send is committed, before the log's
    /// end taken next, or never will be. Returns the coupons whose fence was acknowledged;
    /// the others (their partition cannot commit now) are left out of this rebuild, and
    /// the next request starts theirs over. None acknowledged is the first one's error.
    pub async fn let_publishes_report(
        &self,
        coupons: &[CouponId],
    ) -> Result<Vec<CouponId>, ApiError> {
        let window = self.shared_publish_window().await?;
        tracing::info!(
            window_ms = window.as_millis() as u64,
            "rebuild: letting publishes started before the loss report"
        );
        tokio::time::sleep(window).await;
        let fences = coupons
            .iter()
            .map(|&coupon_id| self.publisher.fence(Fence { coupon_id }));
        let mut fenced = Vec::with_capacity(coupons.len());
        let mut first_failure = None;
        for (&coupon, outcome) in coupons.iter().zip(join_all(fences).await) {
            match outcome {
                Ok(()) => fenced.push(coupon),
                Err(err) => {
                    tracing::warn!(%coupon, error = %err, "rebuild: the fence was not acknowledged; the coupon stays closed");
                    first_failure.get_or_insert(err);
                }
            }
        }
        match first_failure {
            Some(err) if fenced.is_empty() => Err(ApiError::unavailable("kafka", err)),
            _ => Ok(fenced),
        }
    }

    /// Waits for the workers to persist everything the log holds now.
    pub async fn await_persisted(&self) -> Result<(), ApiError> {
        tracing::info!(group = %self.worker_group, "rebuild: waiting for the workers to reach the end of the topic");
        wait_for_group(&self.kafka, &self.worker_group, self.rebuild_timeout)
            .await
            .map_err(|e| ApiError::unavailable("kafka", e))
    }

    pub async fn check(&self) -> Result<(), String> {
        self.publisher.check().await.map_err(|e| e.to_string())
    }

    /// Per partition, the events the workers' group has not committed yet.
    pub async fn lag(&self) -> Result<Vec<(i32, i64)>, ApiError> {
        let offsets = self.offsets.clone();
        tokio::task::spawn_blocking(move || offsets.lag())
            .await
            .map_err(|e| ApiError::Internal(e.into()))?
            .map_err(|e| ApiError::unavailable("kafka", e))
    }

    /// At shutdown: waits for the broker's outstanding acknowledgements, then settles
    /// every acknowledged entry.
    pub async fn flush(&self, timeout: Duration) -> Result<(), ApiError> {
        let flushed = self
            .publisher
            .flush(timeout)
            .await
            .map_err(|e| ApiError::unavailable("kafka", e));
        self.settler.stop().await;
        flushed
    }
}
