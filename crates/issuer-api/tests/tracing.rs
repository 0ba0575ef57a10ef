//! One trace from the HTTP request to the worker's insert, in each queue mode.
//! The services run in this process with the spans exported to memory (the exporter a
//! deployment points at a collector is the same layer, `coupon_core::telemetry`), and the
//! context travels as it does between processes: a Kafka header, a stream field.

// Helpers outside `#[test]` functions panic too: in a harness that is the failure report.
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use coupon_core::domain::QueueKind;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::json;
use testkit::harness::TestEnv;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The process's one subscriber, exporting the services' spans to memory.
fn spans() -> &'static (SdkTracerProvider, InMemorySpanExporter) {
    static TRACING: OnceLock<(SdkTracerProvider, InMemorySpanExporter)> = OnceLock::new();
    TRACING.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        tracing_subscriber::registry()
            .with(coupon_core::telemetry::span_layer(&provider, "tests"))
            .init();
        coupon_core::trace_context::enable();
        (provider, exporter)
    })
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|span| span.name == name).collect()
}

/// Issues one coupon to one user and waits for the row, then finds the trace that holds
/// an insert and checks it holds the whole path; `hop` is the span the insert's parent is
/// (the publish in Kafka mode, the admission script in the Redis queue mode).
async fn one_trace_from_request_to_row(queue: QueueKind, hop: &str) {
    let (provider, exporter) = spans();
    let env = TestEnv::start_in(queue, 1).await;
    let coupon = env
        .create_coupon(json!({"name": "traced", "totalQuantity": 5}))
        .await;
    // Both tests share the exporter, and each database numbers its coupons from 1: the
    // user tells this test's spans from the other's.
    let user = (uuid::Uuid::new_v4().as_u128() % 1_000_000_000) as i64 + 1;
    assert_eq!(env.issue(coupon, user).await.0, 201);
    assert_eq!(env.rows_when_settled(coupon, 1).await, vec![user]);

    let deadline = Instant::now() + Duration::from_secs(10);
    let (spans, insert) = loop {
        provider.force_flush().unwrap();
        let spans = exporter.get_finished_spans().unwrap();
        let has = |span: &SpanData, key: &str, value: i64| {
            span.attributes
                .iter()
                .any(|kv| kv.key.as_str() == key && kv.value.as_str() == value.to_string())
        };
        let insert = spans.iter().find(|span| {
            span.name == "insert" && has(span, "coupon", coupon) && has(span, "user", user)
        });
        if let Some(insert) = insert.cloned() {
            break (spans, insert);
        }
        assert!(Instant::now() < deadline, "no insert span for user {user}");
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    };
    let trace = insert.span_context.trace_id();
    let in_trace: Vec<SpanData> = spans
        .into_iter()
        .filter(|span| span.span_context.trace_id() == trace)
        .collect();
    let names: Vec<&str> = in_trace.iter().map(|span| span.name.as_ref()).collect();
    for expected in ["request", "admission_script", hop, "insert"] {
        assert!(
            names.contains(&expected),
            "{expected} not in the trace: {names:?}"
        );
    }
    let [request] = named(&in_trace, "request")[..] else {
        panic!("one request per trace: {names:?}")
    };
    assert_eq!(
        request.parent_span_id,
        opentelemetry::trace::SpanId::INVALID,
        "the root"
    );
    let parent = in_trace
        .iter()
        .find(|span| span.span_context.span_id() == insert.parent_span_id)
        .unwrap_or_else(|| panic!("the insert's parent is not in the trace: {names:?}"));
    assert_eq!(parent.name, hop, "the insert continues from the {hop} span");
    assert!(
        insert.parent_span_is_remote,
        "it crossed the queue as a remote context"
    );
    env.shutdown().await;
}

#[actix_web::test]
async fn kafka_mode_one_trace_runs_from_the_request_through_the_header_to_the_row() {
    one_trace_from_request_to_row(QueueKind::Kafka, "publish").await;
}

#[actix_web::test]
async fn redis_queue_mode_one_trace_runs_from_the_request_through_the_stream_to_the_row() {
    one_trace_from_request_to_row(QueueKind::Redis, "admission_script").await;
}
