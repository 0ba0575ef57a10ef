//! Both services' `/metrics`, scraped during a small run on the real Redis,
//! PostgreSQL and Apache Kafka, each metric present and moving as its name says: the
//! workers' backlog rises while none runs and falls to 0 once one does, the stock gauges
//! follow admissions and rows, and a poison event raises the failed-event counts.

// Helpers outside `#[test]` functions panic too: in a harness that is the failure report.
#![allow(clippy::unwrap_used)]

use coupon_core::domain::QueueKind;
use serde_json::json;
use testkit::harness::TestEnv;

/// The value of one series (`name{labels}` exactly as exposed), if present.
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok())?
        })
}

/// The sum over every series of the family `name` (any labels).
fn family_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[actix_web::test]
async fn kafka_mode_metrics_move_as_their_names_say() {
    let mut env = TestEnv::start(0).await;
    let api = env.url("/metrics");
    let coupon = env
        .create_coupon(json!({"name": "metrics", "totalQuantity": 10}))
        .await;
    for user in 1..=6 {
        assert_eq!(env.issue(coupon, user).await.0, 201);
    }
    // Settled first (the settler gathers acknowledgements for a moment): a retry of a user
    // whose entry is still pending is asked about once more, which the counts below would
    // see.
    let settled_by = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !env.pending_entries(coupon).await.is_empty() {
        assert!(std::time::Instant::now() < settled_by, "never settled");
        actix_web::rt::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(env.issue(coupon, 1).await.0, 409);

    // No worker runs: the six events wait on the topic, and the API sees it.
    let text = env
        .scrape_until(&api, "a lag of 6", |text| {
            family_sum(text, "coupon_queue_lag") == 6.0
        })
        .await;
    let coupon_series = |name: &str| format!("{name}{{coupon=\"{coupon}\"}}");
    for (name, expected) in [
        ("coupon_issue_answers_total{result=\"SUCCESS\"}".to_owned(), 6.0),
        ("coupon_issue_answers_total{result=\"ALREADY_ISSUED\"}".to_owned(), 1.0),
        ("coupon_issue_answers_total{result=\"SOLD_OUT\"}".to_owned(), 0.0),
        ("coupon_admission_script_duration_seconds_count".to_owned(), 7.0),
        ("coupon_publish_ack_duration_seconds_count".to_owned(), 6.0),
        (
            "coupon_http_request_duration_seconds_count{route=\"/api/v1/coupons/{couponId}/issues\",method=\"POST\",status=\"201\"}".to_owned(),
            6.0,
        ),
        (
            "coupon_http_request_duration_seconds_count{route=\"/api/v1/coupons\",method=\"POST\",status=\"201\"}".to_owned(),
            1.0,
        ),
        (coupon_series("coupon_active_issued"), 6.0),
        (coupon_series("coupon_active_remaining"), 4.0),
        (coupon_series("coupon_active_persisted"), 0.0),
        ("coupon_rebuilds_total{outcome=\"started\"}".to_owned(), 0.0),
        ("coupon_reconciler_republished_total".to_owned(), 0.0),
    ] {
        assert_eq!(series(&text, &name), Some(expected), "{name} in:\n{text}");
    }
    for present in [
        "coupon_db_pool_connections{state=\"max\"}",
        "coupon_pending_entries{state=\"inflight\"}",
        "coupon_pending_oldest_age_seconds",
    ] {
        assert!(series(&text, present).is_some(), "{present} in:\n{text}");
    }

    // A worker comes: the lag falls to 0 and the rows show, on both sides.
    let worker = env.start_worker_serving_metrics().await + "/metrics";
    env.scrape_until(&api, "the lag back to 0 and 6 rows", |text| {
        family_sum(text, "coupon_queue_lag") == 0.0
            && series(text, &coupon_series("coupon_active_persisted")) == Some(6.0)
    })
    .await;
    let text = env
        .scrape_until(&worker, "6 rows inserted", |text| {
            series(text, "coupon_worker_rows_inserted_total") == Some(6.0)
        })
        .await;
    assert!(
        series(&text, "coupon_worker_batch_size_count").unwrap() >= 1.0,
        "{text}"
    );
    assert_eq!(
        series(&text, "coupon_worker_db_pool_connections{state=\"max\"}"),
        Some(2.0),
        "the harness's --database-pool-size=2: {text}"
    );
    assert!(
        series(&text, "coupon_worker_batch_commit_duration_seconds_count").unwrap() >= 1.0,
        "{text}"
    );
    assert_eq!(
        series(
            &text,
            "coupon_worker_retries_total{operation=\"persist_batch\"}"
        ),
        Some(0.0),
        "{text}"
    );

    // A poison message: the worker counts it by reason, the API's table count follows.
    env.produce_raw(&env.topic, &coupon.to_string(), b"not an event")
        .await;
    env.scrape_until(&worker, "one undecodable event", |text| {
        series(
            text,
            "coupon_worker_failed_events_total{reason=\"UNDECODABLE\"}",
        ) == Some(1.0)
    })
    .await;
    env.scrape_until(&api, "the failed event in the table's count", |text| {
        family_sum(text, "coupon_failed_events") == 1.0
            && text.contains("coupon_failed_events{reason=\"UNDECODABLE\"")
    })
    .await;
    env.shutdown().await;
}

#[actix_web::test]
async fn redis_queue_mode_backlog_rises_without_workers_and_drains_with_one() {
    let mut env = TestEnv::start_in(QueueKind::Redis, 0).await;
    let api = env.url("/metrics");
    let coupon = env
        .create_coupon(json!({"name": "metrics", "totalQuantity": 10}))
        .await;
    for user in 1..=4 {
        assert_eq!(env.issue(coupon, user).await.0, 201);
    }
    env.scrape_until(&api, "4 unread entries", |text| {
        series(text, "coupon_stream_backlog_entries") == Some(4.0)
    })
    .await;
    env.start_worker(100).await;
    env.scrape_until(&api, "nothing unread or pending", |text| {
        series(text, "coupon_stream_backlog_entries") == Some(0.0)
            && series(text, "coupon_stream_pending_entries") == Some(0.0)
            && series(
                text,
                &format!("coupon_active_persisted{{coupon=\"{coupon}\"}}"),
            ) == Some(4.0)
    })
    .await;
    env.shutdown().await;
}
