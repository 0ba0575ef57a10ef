//! Where admitted events go, one file per queue mode (as the worker's `IssueQueue`):
//! - `kafka`: the API publishes each event and answers once the broker acknowledged it. It
//!   owns the pending ledger, the reconciler, and the rebuild's wait for the workers.
//! - `stream`: the admission script appended the event to the coupon's stream in the same
//!   step as taking the slot; nothing is left to do but to tell a rebuild who is still on it.

pub mod kafka;
pub mod stream;

use coupon_core::domain::CouponId;
use coupon_core::event::IssueEvent;
use redis::aio::ConnectionLike;

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

#[derive(Clone)]
pub enum Delivery {
    Kafka(Box<KafkaDelivery>),
    Stream(StreamDelivery),
}

impl Delivery {
    pub fn kafka(&self) -> Option<&KafkaDelivery> {
        match self {
            Self::Kafka(kafka) => Some(kafka),
            Self::Stream(_) => None,
        }
    }

    /// Hands a newly admitted event on; `Ok` means it is durably queued.
    pub async fn deliver(&self, event: IssueEvent) -> Result<(), ApiError> {
        match self {
            Self::Kafka(kafka) => kafka.publish_new(event).await,
            Self::Stream(_) => Ok(()),
        }
    }

    /// Lets deliveries started before Redis lost its state report, so that none lands after
    /// a rebuild has looked (Kafka: one publish window; the stream mode has none in flight).
    pub async fn let_in_flight_report(&self) {
        if let Self::Kafka(kafka) = self {
            kafka.let_publishes_report().await;
        }
    }

    /// Users admitted to `coupon` whose events may not be in PostgreSQL yet. Read before
    /// PostgreSQL by a rebuild: an event leaves this set only once it is on its way there
    /// (see [`Delivery::await_persisted`]).
    pub async fn unsettled_users<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        coupon: CouponId,
    ) -> Result<Vec<i64>, ApiError> {
        match self {
            Self::Kafka(kafka) => kafka.unsettled_users(con, coupon).await,
            Self::Stream(stream) => stream.unsettled_users(con, coupon).await,
        }
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

    /// The broker's reachability, for readiness; the stream mode has no broker.
    pub async fn check(&self) -> Option<Result<(), String>> {
        match self {
            Self::Kafka(kafka) => Some(kafka.check().await),
            Self::Stream(_) => None,
        }
    }
}
