//! `/metrics` in Prometheus' text format: what this process answered, and what the workers
//! set aside (OVER_QUANTITY above all: it means Redis admitted beyond the quantity).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use coupon_core::domain::Admission;

use crate::error::ApiError;

const RESULTS: [&str; 8] = [
    "SUCCESS",
    "ALREADY_ISSUED",
    "SOLD_OUT",
    "NOT_STARTED",
    "ENDED",
    "UNAVAILABLE",
    "RATE_LIMITED",
    "ERROR",
];

/// Issue answers counted by result, in this process since it started.
#[derive(Default)]
pub struct IssueCounters([AtomicU64; RESULTS.len()]);

impl IssueCounters {
    pub fn record(&self, answer: &Result<Admission, ApiError>) {
        let index = match answer {
            Ok(Admission::Success) => 0,
            Ok(Admission::AlreadyIssued) => 1,
            Ok(Admission::SoldOut) => 2,
            Ok(Admission::NotStarted) => 3,
            Ok(Admission::Ended) => 4,
            Err(ApiError::Unavailable { .. } | ApiError::Rebuilding(_)) => 5,
            Err(ApiError::RateLimited { .. }) => 6,
            Err(_) => 7,
        };
        self.0[index].fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition, with the failed events' (reason, status, count) appended.
    pub fn render(&self, failed: &[(String, String, i64)]) -> String {
        let mut out = String::from(
            "# HELP coupon_issue_answers_total Issue requests this process answered, by result.\n\
             # TYPE coupon_issue_answers_total counter\n",
        );
        for (result, count) in RESULTS.iter().zip(&self.0) {
            let count = count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "coupon_issue_answers_total{{result=\"{result}\"}} {count}"
            );
        }
        out.push_str(
            "# HELP coupon_failed_events Events the workers set aside, by reason and status.\n\
             # TYPE coupon_failed_events gauge\n",
        );
        for (reason, status, count) in failed {
            let _ = writeln!(
                out,
                "coupon_failed_events{{reason=\"{reason}\",status=\"{status}\"}} {count}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_by_result_and_failed_events_by_reason() {
        let counters = IssueCounters::default();
        counters.record(&Ok(Admission::Success));
        counters.record(&Ok(Admission::Success));
        counters.record(&Err(ApiError::Rebuilding(1)));
        let text = counters.render(&[("OVER_QUANTITY".into(), "PENDING".into(), 3)]);
        assert!(
            text.contains("coupon_issue_answers_total{result=\"SUCCESS\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("coupon_issue_answers_total{result=\"UNAVAILABLE\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("coupon_issue_answers_total{result=\"SOLD_OUT\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("coupon_failed_events{reason=\"OVER_QUANTITY\",status=\"PENDING\"} 3\n"),
            "{text}"
        );
    }
}
