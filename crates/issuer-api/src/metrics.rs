//! The API's `/metrics`: what it answered and how fast, the Redis and broker steps of an
//! admission, the write-ahead ledger, rebuilds, the database pool, the failed events the
//! workers set aside, and stock per active coupon. Names follow Prometheus' conventions
//! (`coupon_` first, the unit, `_total` for counters); the README's "Operating" section
//! says what each means to an operator.
//!
//! Nothing here queries a dependency at scrape time: gauges are set by the background
//! tasks that already look (`crate::operations`, the reconciler).

use std::sync::atomic::AtomicU64;

use coupon_core::domain::Admission;
pub use coupon_core::metrics::StateLabels;
use coupon_core::metrics::{GaugeSet, latency_buckets, render};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::error::ApiError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route's pattern (`/api/v1/coupons/{couponId}/issues`), or `unmatched`: bounded.
    pub route: &'static str,
    /// A standard method's name, or `other`.
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailedLabels {
    pub reason: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DependencyLabels {
    pub dependency: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CouponLabels {
    pub coupon: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BucketLabels {
    pub coupon: String,
    pub bucket: String,
}

pub struct Metrics {
    registry: Registry,
    answers: Family<ResultLabels, Counter>,
    http: Family<HttpLabels, Histogram>,
    pub admission_script: Histogram,
    pub publish_ack: Histogram,
    pub republished: Counter,
    pub bucket_moves: Counter,
    pub finished_gate_answers: Counter,
    pub rate_limit_syncs: Counter,
    pub rate_limit_sync_failures: Counter,
    pub rebuilds: Family<OutcomeLabels, Counter>,
    pub pending: GaugeSet<StateLabels>,
    pub pending_oldest_age: Gauge<f64, AtomicU64>,
    pub publish_window: Gauge<f64, AtomicU64>,
    pub dependency_up: GaugeSet<DependencyLabels>,
    pub failed_events: GaugeSet<FailedLabels>,
    pub pool_connections: GaugeSet<StateLabels>,
    pub coupon_issued: GaugeSet<CouponLabels>,
    pub coupon_remaining: GaugeSet<CouponLabels>,
    pub coupon_persisted: GaugeSet<CouponLabels>,
    pub bucket_stock: GaugeSet<BucketLabels>,
    pub bucket_issued: GaugeSet<BucketLabels>,
    pub queue_lag: GaugeSet<PartitionLabels>,
    pub stream_unread: Gauge,
    pub stream_pending: Gauge,
}

fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let answers = Family::<ResultLabels, Counter>::default();
        // Every known label value from the start, at 0: a series that appears only with its
        // first increment hides that increment from rate() and from alerts.
        let results = Admission::ALL.map(Admission::label);
        for result in results.into_iter().chain(ApiError::CODES) {
            let _ = answers.get_or_create(&ResultLabels { result });
        }
        registry.register(
            "coupon_issue_answers",
            "Issue requests this process answered, by result",
            answers.clone(),
        );
        let http = Family::<HttpLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "coupon_http_request_duration",
            "Time from a request's arrival to its answer, by route, method and status",
            Unit::Seconds,
            http.clone(),
        );
        let admission_script = latency_histogram();
        registry.register_with_unit(
            "coupon_admission_script_duration",
            "Round trip of the admission script (Redis), per run",
            Unit::Seconds,
            admission_script.clone(),
        );
        let publish_ack = latency_histogram();
        registry.register_with_unit(
            "coupon_publish_ack_duration",
            "Time from handing an event to the producer to the broker's acknowledgement \
             (Kafka mode; failures included)",
            Unit::Seconds,
            publish_ack.clone(),
        );
        let republished = Counter::default();
        registry.register(
            "coupon_reconciler_republished",
            "Pending events the reconciler claimed and the broker then acknowledged",
            republished.clone(),
        );
        let bucket_moves = Counter::default();
        registry.register(
            "coupon_bucket_units_moved",
            "A coupon in buckets: units moved to a bucket whose users asked and found it dry",
            bucket_moves.clone(),
        );
        let finished_gate_answers = Counter::default();
        registry.register(
            "coupon_finished_gate_answers",
            "Issue requests for a finished coupon answered from memory, without Redis \
             (ISSUER_FINISHED_GATE_MS)",
            finished_gate_answers.clone(),
        );
        let rate_limit_syncs = Counter::default();
        registry.register(
            "coupon_rate_limit_syncs",
            "Syncs of this instance's rate-limit counts with the shared ones that sent some \
             (ISSUER_RATE_SYNC_MS)",
            rate_limit_syncs.clone(),
        );
        let rate_limit_sync_failures = Counter::default();
        registry.register(
            "coupon_rate_limit_sync_failures",
            "Syncs of the rate-limit counts Redis did not answer: meanwhile each instance \
             limits on its own counts",
            rate_limit_sync_failures.clone(),
        );
        let rebuilds = Family::<OutcomeLabels, Counter>::default();
        for outcome in ["started", "finished", "failed"] {
            let _ = rebuilds.get_or_create(&OutcomeLabels { outcome });
        }
        registry.register(
            "coupon_rebuilds",
            "Rebuilds of a coupon's Redis state from PostgreSQL, by outcome: started, \
             finished, failed",
            rebuilds.clone(),
        );
        let pending = GaugeSet::register(
            &mut registry,
            "coupon_pending_entries",
            "Write-ahead entries of admitted slots whose event the broker has not \
             acknowledged, by state (inflight, doubt, claimed), at the reconciler's last pass",
        );
        let pending_oldest_age = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "coupon_pending_oldest_age",
            "Age of the oldest write-ahead entry since its admission, on Redis's clock, at \
             the reconciler's last pass (0 when none)",
            Unit::Seconds,
            pending_oldest_age.clone(),
        );
        let publish_window = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "coupon_publish_window",
            "Kafka mode: how long a publish may take to report; a pending entry older than \
             this belongs to a publisher that died, and the reconciler takes it over",
            Unit::Seconds,
            publish_window.clone(),
        );
        let dependency_up = GaugeSet::register(
            &mut registry,
            "coupon_dependency_up",
            "1 if the dependency answered the last readiness check (once a second), else 0; \
             /readyz fails while any is 0",
        );
        let failed_events = GaugeSet::register(
            &mut registry,
            "coupon_failed_events",
            "Events the workers set aside, by reason and status (counted once a second)",
        );
        let pool_connections = GaugeSet::register(
            &mut registry,
            "coupon_db_pool_connections",
            "PostgreSQL pool connections by state: in_use, idle, max",
        );
        let coupon_issued = GaugeSet::register(
            &mut registry,
            "coupon_active_issued",
            "Slots taken in Redis, per active coupon (at most 50 coupons, see README)",
        );
        let coupon_remaining = GaugeSet::register(
            &mut registry,
            "coupon_active_remaining",
            "Quantity left to admit, per active coupon",
        );
        let coupon_persisted = GaugeSet::register(
            &mut registry,
            "coupon_active_persisted",
            "Rows in PostgreSQL, per active coupon",
        );
        let bucket_stock = GaugeSet::register(
            &mut registry,
            "coupon_bucket_stock",
            "A coupon in buckets: units for sale in each bucket now, per active coupon (stock \
             moves to a bucket whose users ask)",
        );
        let bucket_issued = GaugeSet::register(
            &mut registry,
            "coupon_bucket_issued",
            "A coupon in buckets: slots taken in each bucket, per active coupon",
        );
        let queue_lag = GaugeSet::register(
            &mut registry,
            "coupon_queue_lag",
            "Kafka mode: events on each partition of the issue topic that the workers' group \
             has not committed, read from the broker once a second",
        );
        let stream_unread = Gauge::default();
        registry.register(
            "coupon_stream_backlog_entries",
            "Redis queue mode: entries on the active coupons' streams the workers' group has \
             not read yet",
            stream_unread.clone(),
        );
        let stream_pending = Gauge::default();
        registry.register(
            "coupon_stream_pending_entries",
            "Redis queue mode: entries a worker read and has not acknowledged (its batch is \
             not committed yet, or it died holding them)",
            stream_pending.clone(),
        );
        Self {
            registry,
            answers,
            http,
            admission_script,
            publish_ack,
            republished,
            bucket_moves,
            finished_gate_answers,
            rate_limit_syncs,
            rate_limit_sync_failures,
            rebuilds,
            pending,
            pending_oldest_age,
            publish_window,
            dependency_up,
            failed_events,
            pool_connections,
            coupon_issued,
            coupon_remaining,
            coupon_persisted,
            bucket_stock,
            bucket_issued,
            queue_lag,
            stream_unread,
            stream_pending,
        }
    }
}

impl Metrics {
    pub fn record_answer(&self, answer: &Result<Admission, ApiError>) {
        // The same names the answer's body carries (`contract`, `error`).
        let result = match answer {
            Ok(admission) => admission.label(),
            Err(err) => err.code(),
        };
        self.answers.get_or_create(&ResultLabels { result }).inc();
    }

    /// How many answers of each kind this instance has given since it started: every
    /// admission result, then the refusals a client can act on (the console's chart).
    pub fn answer_counts(&self) -> Vec<(&'static str, u64)> {
        Admission::ALL
            .map(Admission::label)
            .into_iter()
            .chain(["RATE_LIMITED", "UNAVAILABLE"])
            .map(|result| {
                let count = self
                    .answers
                    .get(&ResultLabels { result })
                    .map_or(0, |counter| counter.get());
                (result, count)
            })
            .collect()
    }

    pub fn record_http(&self, labels: HttpLabels, seconds: f64) {
        self.http.get_or_create(&labels).observe(seconds);
    }

    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_counted_by_result_and_failed_events_by_reason() {
        let metrics = Metrics::default();
        metrics.record_answer(&Ok(Admission::Success));
        metrics.record_answer(&Ok(Admission::Success));
        metrics.record_answer(&Err(ApiError::Rebuilding(1)));
        metrics.record_answer(&Err(ApiError::PublishUnresolved));
        metrics.failed_events.replace([(
            FailedLabels {
                reason: "OVER_QUANTITY".into(),
                status: "PENDING".into(),
            },
            3,
        )]);
        let labels = HttpLabels {
            route: "/api/v1/coupons/{couponId}/issues",
            method: "POST",
            status: 201,
        };
        metrics.record_http(labels, 0.003);
        let counts = metrics.answer_counts();
        assert!(counts.contains(&("SUCCESS", 2)), "{counts:?}");
        assert!(counts.contains(&("UNAVAILABLE", 2)), "{counts:?}");
        assert!(counts.contains(&("SOLD_OUT", 0)), "{counts:?}");
        let text = metrics.render();
        for line in [
            "coupon_issue_answers_total{result=\"SUCCESS\"} 2\n",
            "coupon_issue_answers_total{result=\"UNAVAILABLE\"} 2\n",
            "coupon_failed_events{reason=\"OVER_QUANTITY\",status=\"PENDING\"} 3\n",
            "coupon_http_request_duration_seconds_bucket{le=\"0.004\",route=\"/api/v1/coupons/{couponId}/issues\",method=\"POST\",status=\"201\"} 1\n",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
    }
}
