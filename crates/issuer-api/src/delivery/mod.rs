//! Where admitted events go, one file per queue mode (as the worker's `IssueQueue`):
//! - `kafka`: the API publishes each event and answers once the broker acknowledged it. It
//!   owns the pending ledger, the reconciler, and the rebuild's wait for the workers.
//! - `stream`: the admission script appended the event to the coupon's stream in the same
//!   step as taking the slot; nothing is left to do but to tell a rebuild who is still on it.
//!
//! The seam is total: issuing code reaches every queue-specific step through [`Delivery`]'s
//! methods, and never names a queue mode, so a new mode (or a new step) changes this folder
//! only.

pub mod kafka;
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

use coupon_core::domain::{CouponId, UserId};
use coupon_core::event::IssueEvent;
use coupon_core::redis::ledger::{Claim, LedgerAt};
use redis::aio::ConnectionLike;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use kafka::KafkaDelivery;
use stream::StreamDelivery;

/// How far the workers are behind, seen from outside them (a worker that is down cannot
/// report its own lag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backlog {
    /// Kafka: per partition of the issue topic, events the group has not committed.
    Partitions(Vec<(i32, i64)>),
    /// Redis queue mode, over the active coupons' streams: entries the group has not read
    /// yet, and entries read but not acknowledged.
    Streams { unread: i64, pending: i64 },
}

/// What became of a slot admission found taken but not yet delivered, once a request that
/// met it tried to resolve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// Its owner's window was over: this request delivered it, and the queue has it.
    Delivered,
    /// Its owner is delivering it within its window: the outcome is not known yet.
    Busy,
    /// Nothing is pending any more (delivered or given back meanwhile): admission knows.
    Absent,
}

/// Cloned with the issuer for every request's task (`Issuer::issue`): the Kafka side is
/// shared, not copied (a deep clone copied its scripts' text, kilobytes a request).
#[derive(Clone)]
pub enum Delivery {
    Kafka(Arc<KafkaDelivery>),
    Stream(StreamDelivery),
}

impl Delivery {
    /// Hands a newly admitted event on, its slot kept `at`; `Ok` means it is durably queued.
    pub async fn deliver(&self, event: IssueEvent, at: LedgerAt) -> Result<(), ApiError> {
        match self {
            Self::Kafka(kafka) => kafka.publish_new(event, at).await,
            Self::Stream(_) => Ok(()),
        }
    }

    /// Resolves a slot admission found pending for `user`: takes its delivery over if its
    /// owner's window is over. Only Kafka mode leaves slots pending; the stream mode queues
    /// in the admitting step itself.
    pub async fn resolve_pending<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        at: &LedgerAt,
        coupon: CouponId,
        user: UserId,
    ) -> Result<Pending, ApiError> {
        let Self::Kafka(kafka) = self else {
            // A Kafka-mode run's entry met by a Redis-queue-mode API: it stays for a
            // Kafka-mode API to settle.
            return Err(ApiError::Internal(
                "a Kafka-mode pending slot met a Redis-queue-mode API".into(),
            ));
        };
        match kafka.claim(con, at, coupon, user).await? {
            Claim::Claimed(entry) => kafka
                .republish(entry, at.clone())
                .await
                .map(|()| Pending::Delivered),
            Claim::Busy(_) => Ok(Pending::Busy),
            Claim::Absent => Ok(Pending::Absent),
        }
    }

    /// Longest a delivery started by any process can take to report (Kafka: the longest
    /// publish window any API recorded, this one's included; the stream mode has nothing in
    /// flight outside Redis).
    pub async fn in_flight_window(&self) -> Result<Duration, ApiError> {
        match self {
            Self::Kafka(kafka) => kafka.shared_publish_window().await,
            Self::Stream(_) => Ok(Duration::ZERO),
        }
    }

    /// Records this process's in-flight window where every rebuild reads it (at start).
    pub async fn record_in_flight_window(&self) -> Result<Duration, ApiError> {
        match self {
            Self::Kafka(kafka) => kafka.record_publish_window().await,
            Self::Stream(_) => Ok(Duration::ZERO),
        }
    }

    /// One pass over the slots nobody else will settle (Kafka: entries in doubt, or left by
    /// an API that died), through `con`; returns how many were delivered.
    pub async fn reconcile_once<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
    ) -> Result<usize, ApiError> {
        match self {
            Self::Kafka(kafka) => kafka::reconciler::reconcile_once(kafka, con).await,
            Self::Stream(_) => Ok(0),
        }
    }

    /// Starts the delivery's own upkeep (Kafka: the reconciler), until `stop` is cancelled.
    pub fn start_background(&self, stop: CancellationToken) -> Option<JoinHandle<()>> {
        match self {
            Self::Kafka(kafka) => Some(tokio::spawn(kafka::reconciler::run(
                (**kafka).clone(),
                stop,
            ))),
            Self::Stream(_) => None,
        }
    }

    /// At shutdown, once no request runs: waits up to `grace` for outstanding deliveries to
    /// be acknowledged, and settles them.
    pub async fn flush(&self, grace: Duration) -> Result<(), ApiError> {
        match self {
            Self::Kafka(kafka) => kafka.flush(grace).await,
            Self::Stream(_) => Ok(()),
        }
    }

    /// Lets deliveries started before Redis lost the state of `coupons` report and settle,
    /// so that none lands after a rebuild has looked (Kafka: one publish window, then a
    /// fence on each coupon's partition; the stream mode has none in flight). Returns the
    /// coupons whose deliveries are settled: only those may be rebuilt now.
    pub async fn let_in_flight_report(
        &self,
        coupons: &[CouponId],
    ) -> Result<Vec<CouponId>, ApiError> {
        match self {
            Self::Kafka(kafka) => kafka.let_publishes_report(coupons).await,
            Self::Stream(_) => Ok(coupons.to_vec()),
        }
    }

    /// Users admitted to `coupon` in the state at `at` whose events may not be in
    /// PostgreSQL yet. Read before PostgreSQL by a rebuild: an event leaves this set only
    /// once it is on its way there (see [`Delivery::await_persisted`]).
    pub async fn unsettled_users<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        at: &LedgerAt,
        coupon: CouponId,
    ) -> Result<Vec<i64>, ApiError> {
        match self {
            Self::Kafka(kafka) => kafka.unsettled_users(con, at, coupon).await,
            Self::Stream(stream) => stream.unsettled_users(con, at, coupon).await,
        }
    }

    /// Whether this mode keeps a bucketed coupon (`coupon_core::buckets`): Kafka mode does;
    /// the Redis queue mode's stream is one per coupon, appended by admission in the
    /// coupon's own slot, so buckets on different shards could not append to it.
    pub fn keeps_buckets(&self) -> bool {
        matches!(self, Self::Kafka(_))
    }

    /// Returns once every event that left the unsettled set before now is in PostgreSQL.
    /// Kafka: acknowledged events are in the log, so the workers must reach its end. The
    /// Redis stream: an entry is acknowledged (and only then trimmed) after its row
    /// committed, so there is nothing to wait for.
    pub async fn await_persisted(&self) -> Result<(), ApiError> {
        match self {
            Self::Kafka(kafka) => kafka.await_persisted().await,
            Self::Stream(_) => Ok(()),
        }
    }

    /// The workers' backlog; `coupons` are the active ones (the stream mode reads theirs).
    pub async fn backlog<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        coupons: &[CouponId],
    ) -> Result<Backlog, ApiError> {
        match self {
            Self::Kafka(kafka) => kafka.lag().await.map(Backlog::Partitions),
            Self::Stream(stream) => stream.backlog(con, coupons).await,
        }
    }

    /// The queue's own dependency by name and whether it answers, for readiness; the
    /// stream mode has none beside Redis.
    pub async fn check(&self) -> Option<(&'static str, Result<(), String>)> {
        match self {
            Self::Kafka(kafka) => Some(("kafka", kafka.check().await)),
            Self::Stream(_) => None,
        }
    }
}
