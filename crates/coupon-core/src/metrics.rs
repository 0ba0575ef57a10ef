//! What both services' `/metrics` share: the exposition, the latency buckets, and gauges
//! whose label sets come and go (failed events by reason, coupons while active).
//!
//! prometheus-client (the Prometheus project's own Rust client) keeps the families, the
//! naming rules (`_total` for counters, the unit suffix) and the OpenMetrics encoding; it
//! has no global registry and no dependencies beyond a few small crates.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The exposition's content type: OpenMetrics text, which Prometheus asks for first.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets in seconds, 0.5 ms to about 4 s: an answer from Redis alone takes well
/// under a millisecond, one that waits for the broker a few, and a publish window is 3 s.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 14)
}

/// The registry as OpenMetrics text.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail; the encoder's error type is fmt::Error.
    if let Err(err) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::error!(error = %err, "metrics could not be encoded");
    }
    text
}

/// A `state` label: pool connections, pending entries.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

/// A PostgreSQL pool's connections by state: in use, idle, and the most it opens.
pub fn record_pool(gauges: &GaugeSet<StateLabels>, pool: &crate::db::pool::PgPool) {
    let status = pool.status();
    let idle = status.available as i64;
    gauges.replace([
        (StateLabels { state: "in_use" }, status.size as i64 - idle),
        (StateLabels { state: "idle" }, idle),
        (StateLabels { state: "max" }, status.max_size as i64),
    ]);
}

/// A gauge family replaced whole from each fresh reading: label sets the reading no longer
/// has are removed, so a coupon that left or a failed-event status that emptied does not
/// linger at its last value. Values change in place, so a scrape never sees the family
/// empty in the middle of a replacement.
pub struct GaugeSet<L: Clone + Eq + Hash + EncodeLabelSet + std::fmt::Debug + Send + Sync> {
    family: Family<L, Gauge>,
    present: Mutex<HashSet<L>>,
}

impl<L> GaugeSet<L>
where
    L: Clone + Eq + Hash + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    /// A new set, registered under `name`.
    pub fn register(registry: &mut Registry, name: &str, help: &str) -> Self {
        let family = Family::<L, Gauge>::default();
        registry.register(name, help, family.clone());
        Self {
            family,
            present: Mutex::new(HashSet::new()),
        }
    }

    pub fn replace(&self, reading: impl IntoIterator<Item = (L, i64)>) {
        let mut present = self.present.lock().unwrap_or_else(|e| e.into_inner());
        let mut now = HashSet::new();
        for (labels, value) in reading {
            self.family.get_or_create(&labels).set(value);
            now.insert(labels);
        }
        for gone in present.difference(&now) {
            self.family.remove(gone);
        }
        *present = now;
    }

    /// The last reading, as replaced: for the console, which shows what `/metrics` does.
    pub fn read(&self) -> Vec<(L, i64)> {
        let present = self.present.lock().unwrap_or_else(|e| e.into_inner());
        present
            .iter()
            .filter_map(|labels| Some((labels.clone(), self.family.get(labels)?.get())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Labels {
        reason: String,
    }

    #[test]
    fn a_replaced_gauge_set_keeps_only_the_last_reading() {
        let mut registry = Registry::default();
        let set = GaugeSet::<Labels>::register(&mut registry, "things", "Things.");
        let labels = |reason: &str| Labels {
            reason: reason.into(),
        };
        set.replace([(labels("a"), 1), (labels("b"), 2)]);
        set.replace([(labels("b"), 5)]);
        let text = render(&registry);
        assert!(text.contains("things{reason=\"b\"} 5\n"), "{text}");
        assert!(!text.contains("reason=\"a\""), "{text}");
        assert_eq!(set.read(), vec![(labels("b"), 5)], "read as rendered");
    }
}
