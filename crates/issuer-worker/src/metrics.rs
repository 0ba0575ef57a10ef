//! The worker's `/metrics`: what it persisted, how big and how slow its batches were, what
//! it set aside and how often it had to retry. How far the workers are behind is measured
//! from outside them, by the API (`coupon_queue_lag`, `coupon_stream_backlog_entries`): a
//! worker that is down cannot report its own lag.

use coupon_core::metrics::{GaugeSet, StateLabels, latency_buckets, render};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub batch_size: Histogram,
    pub batch_commit: Histogram,
    pub rows_inserted: Counter,
    pub duplicates: Counter,
    pub failed_events: Family<ReasonLabels, Counter>,
    pub retries: Family<OperationLabels, Counter>,
    pub pool_connections: GaugeSet<StateLabels>,
}

/// The operations the worker retries, by their label.
pub const PERSIST: &str = "persist_batch";
pub const DEAD_LETTER: &str = "publish_dead_letters";

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let batch_size =
            Histogram::new([1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0]);
        registry.register(
            "coupon_worker_batch_size",
            "Events per batch written to PostgreSQL",
            batch_size.clone(),
        );
        let batch_commit = Histogram::new(latency_buckets());
        registry.register_with_unit(
            "coupon_worker_batch_commit_duration",
            "Time to write one batch in one transaction, retries excluded",
            Unit::Seconds,
            batch_commit.clone(),
        );
        let rows_inserted = Counter::default();
        registry.register(
            "coupon_worker_rows_inserted",
            "Issue rows this worker inserted",
            rows_inserted.clone(),
        );
        let duplicates = Counter::default();
        registry.register(
            "coupon_worker_duplicates",
            "Events found already persisted (redeliveries, republished events)",
            duplicates.clone(),
        );
        let failed_events = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "coupon_worker_failed_events",
            "Events this worker set aside as failed events, by reason (the table's totals by \
             status are the API's coupon_failed_events)",
            failed_events.clone(),
        );
        let retries = Family::<OperationLabels, Counter>::default();
        // At 0 from the start, so the first retry shows in rate() and alerts.
        for operation in [PERSIST, DEAD_LETTER] {
            let _ = retries.get_or_create(&OperationLabels { operation });
        }
        registry.register(
            "coupon_worker_retries",
            "Retries of a batch step that failed (PostgreSQL or the broker away), by operation",
            retries.clone(),
        );
        let pool_connections = GaugeSet::register(
            &mut registry,
            "coupon_worker_db_pool_connections",
            "The worker's PostgreSQL pool connections by state (in_use, idle, max), after its \
             last batch",
        );
        Self {
            registry,
            batch_size,
            batch_commit,
            rows_inserted,
            duplicates,
            failed_events,
            retries,
            pool_connections,
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}
