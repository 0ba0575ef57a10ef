//! The W3C trace context as it travels with an issue event (a Kafka header, a stream
//! field), so one trace runs from the HTTP request to the worker's insert.
//!
//! Only while tracing exports somewhere (`crate::telemetry`): otherwise nothing is read,
//! written or carried, and an event costs what it did before.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header and stream field name, as the W3C spec names it.
pub const FIELD: &str = "traceparent";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns context propagation on: called once the span exporter is installed.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A `traceparent` value (`00-<trace id>-<span id>-<flags>`), checked on the way in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent(String);

impl TraceParent {
    /// The current span's context, when tracing is on and the span belongs to a trace the
    /// sampler kept: an event of a dropped trace carries nothing, so the worker builds no
    /// spans for it.
    pub fn current() -> Option<Self> {
        if !enabled() {
            return None;
        }
        let context = tracing::Span::current().context();
        if !context.span().span_context().is_sampled() {
            return None;
        }
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&context, &mut carrier);
        carrier.remove(FIELD).map(Self)
    }

    /// A value read from an event, if tracing is on and it is a valid context.
    pub fn parse(value: &str) -> Option<Self> {
        if !enabled() {
            return None;
        }
        let parent = Self(value.to_owned());
        parent
            .context()
            .span()
            .span_context()
            .is_valid()
            .then_some(parent)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn context(&self) -> opentelemetry::Context {
        let carrier = HashMap::from([(FIELD.to_owned(), self.0.clone())]);
        TraceContextPropagator::new().extract(&carrier)
    }

    /// Makes `span` a child of this context: the event's trace continues in it.
    pub fn adopt(&self, span: &tracing::Span) {
        let _ = span.set_parent(self.context());
    }
}
