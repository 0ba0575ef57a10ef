//! The issue pipeline end to end on real Redis, PostgreSQL and a Kafka-API broker:
//! HTTP → Lua admission → queue (Kafka, or Redis Streams for the tests run in both modes)
//! → worker → PostgreSQL.

// Test bodies shared by both queue modes are plain functions (see `in_both_modes!`): a
// panic in them is exactly the failure report wanted.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::Utc;
use coupon_core::domain::QueueKind;
use coupon_core::domain::{CouponId, UserId};
use coupon_core::event::IssueEvent;
use coupon_core::redis::keys::CouponKeys;
use futures_util::future::join_all;
use serde_json::{Value, json};
use testkit::harness::{self, RedisTopology, TestEnv};

/// Fires one request per user, all at once; returns user ids grouped by status.
async fn issue_all(
    env: &TestEnv,
    coupon: i64,
    users: impl Iterator<Item = i64>,
) -> BTreeMap<u16, Vec<i64>> {
    let answers =
        join_all(users.map(|user| async move { (user, env.issue(coupon, user).await) })).await;
    let mut by_status: BTreeMap<u16, Vec<i64>> = BTreeMap::new();
    for (user, (status, body)) in answers {
        if status == 201 {
            assert_eq!(
                body,
                json!({"result": "SUCCESS", "couponId": coupon, "userId": user})
            );
        }
        by_status.entry(status).or_default().push(user);
    }
    for users in by_status.values_mut() {
        users.sort_unstable();
    }
    by_status
}

fn count(by_status: &BTreeMap<u16, Vec<i64>>, status: u16) -> usize {
    by_status.get(&status).map_or(0, Vec::len)
}

/// The same test once per queue and Redis topology, as `<test>::kafka` and `<test>::redis`
/// on `make up`'s node, and `<test>::kafka_on_cluster` and `<test>::redis_on_cluster` on the
/// suite's Redis Cluster: the queue and the topology are the only things that change, so the
/// acceptance tests are shared.
macro_rules! in_both_modes {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            use super::{QueueKind, RedisTopology};

            #[actix_web::test]
            async fn kafka() {
                super::$test(QueueKind::Kafka, RedisTopology::Node).await
            }

            #[actix_web::test]
            async fn redis() {
                super::$test(QueueKind::Redis, RedisTopology::Node).await
            }

            #[actix_web::test]
            async fn kafka_on_cluster() {
                super::$test(QueueKind::Kafka, RedisTopology::Cluster).await
            }

            #[actix_web::test]
            async fn redis_on_cluster() {
                super::$test(QueueKind::Redis, RedisTopology::Cluster).await
            }
        }
    )*};
}

in_both_modes!(
    five_thousand_users_at_once_on_five_hundred_coupons,
    one_user_twenty_times_at_once_gets_one_coupon,
    quantity_one_has_exactly_one_winner,
    outside_its_window_a_coupon_answers_403_and_changes_nothing,
    redelivered_events_do_not_duplicate_rows,
    a_coupon_missing_from_redis_is_rebuilt_from_postgresql,
    a_finished_coupon_leaves_the_hot_loops,
    an_event_postgresql_refuses_for_good_is_set_aside_and_the_queue_flows_on,
);

async fn five_thousand_users_at_once_on_five_hundred_coupons(
    queue: QueueKind,
    redis: RedisTopology,
) {
    let env = TestEnv::start_under(queue, redis, 1).await;
    let coupon = env.coupon_with_quantity(500).await;

    let answers = issue_all(&env, coupon, 1..=5000).await;

    assert_eq!(count(&answers, 201), 500, "{:?}", answers.keys());
    assert_eq!(count(&answers, 410), 4500);
    assert_eq!(answers.len(), 2, "no other answer: {:?}", answers.keys());
    let rows = env.rows_when_settled(coupon, 500).await;
    assert_eq!(rows, answers[&201], "PostgreSQL holds exactly the winners");
    assert_eq!(env.redis_set_size(coupon).await, 500);
    let (_, view) = env.get(&format!("/api/v1/coupons/{coupon}")).await;
    assert_eq!(view["issuedCount"], 500);
    assert_eq!(view["persistedCount"], 500);
    assert_eq!(view["remaining"], 0);
    env.shutdown().await;
}

async fn one_user_twenty_times_at_once_gets_one_coupon(queue: QueueKind, redis: RedisTopology) {
    let env = TestEnv::start_under(queue, redis, 1).await;
    let coupon = env.coupon_with_quantity(10).await;

    let answers = join_all((0..20).map(|_| env.issue(coupon, 42))).await;
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();

    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        19,
        "{statuses:?}"
    );
    let conflict = answers.iter().find(|(s, _)| *s == 409).unwrap();
    assert_eq!(
        conflict.1,
        json!({"result": "ALREADY_ISSUED", "couponId": coupon, "userId": 42})
    );
    assert_eq!(env.rows_when_settled(coupon, 1).await, vec![42]);
    env.shutdown().await;
}

async fn quantity_one_has_exactly_one_winner(queue: QueueKind, redis: RedisTopology) {
    let env = TestEnv::start_under(queue, redis, 1).await;
    let coupon = env.coupon_with_quantity(1).await;

    let answers = issue_all(&env, coupon, 1..=1000).await;

    assert_eq!(count(&answers, 201), 1);
    assert_eq!(count(&answers, 410), 999);
    assert_eq!(env.rows_when_settled(coupon, 1).await, answers[&201]);
    let (_, sold_out) = env.issue(coupon, 5000).await;
    assert_eq!(
        sold_out,
        json!({"result": "SOLD_OUT", "couponId": coupon, "userId": 5000})
    );
    env.shutdown().await;
}

async fn outside_its_window_a_coupon_answers_403_and_changes_nothing(
    queue: QueueKind,
    redis: RedisTopology,
) {
    let env = TestEnv::start_under(queue, redis, 1).await;
    let hour = chrono::Duration::hours(1);
    let future = env
        .create_coupon(json!({"name": "later", "totalQuantity": 5, "startsAt": Utc::now() + hour}))
        .await;
    // A coupon cannot be created already over (400); this one ends a moment after it is.
    let ends = Utc::now() + chrono::Duration::milliseconds(1500);
    let past = env
        .create_coupon(json!({"name": "over", "totalQuantity": 5,
            "startsAt": Utc::now() - hour, "endsAt": ends}))
        .await;
    while Utc::now() <= ends {
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }

    let (status, body) = env.issue(future, 1).await;
    assert_eq!((status, &body["result"]), (403, &json!("NOT_STARTED")));
    let (status, body) = env.issue(past, 1).await;
    assert_eq!((status, &body["result"]), (403, &json!("ENDED")));

    assert_eq!(env.redis_set_size(future).await, 0);
    assert_eq!(env.redis_set_size(past).await, 0);
    actix_web::rt::time::sleep(Duration::from_secs(1)).await;
    assert!(env.rows(future).await.is_empty());
    assert!(env.rows(past).await.is_empty());
    env.shutdown().await;
}

async fn redelivered_events_do_not_duplicate_rows(queue: QueueKind, redis: RedisTopology) {
    let env = TestEnv::start_under(queue, redis, 1).await;
    let coupon = env.coupon_with_quantity(100).await;
    let answers = issue_all(&env, coupon, 1..=50).await;
    assert_eq!(count(&answers, 201), 50);
    assert_eq!(env.rows_when_settled(coupon, 50).await.len(), 50);

    // The same (coupon, user) decisions again, as a producer retry or a replay would send
    // them, with a marker event behind them so we know the worker has read past them.
    for user in 1..=50 {
        let event = IssueEvent::new(
            CouponId::new(coupon).unwrap(),
            UserId::new(user).unwrap(),
            Utc::now(),
        );
        env.redeliver(&event).await;
    }
    let marker = IssueEvent::new(
        CouponId::new(coupon).unwrap(),
        UserId::new(999).unwrap(),
        Utc::now(),
    );
    env.redeliver(&marker).await;

    let rows = env.rows_when_settled(coupon, 51).await;
    assert_eq!(rows, (1..=50).chain([999]).collect::<Vec<_>>());
    let (_, view) = env.get(&format!("/api/v1/coupons/{coupon}")).await;
    assert_eq!(
        view["persistedCount"], 51,
        "the database's count follows its rows"
    );
    env.shutdown().await;
}

#[actix_web::test]
async fn two_workers_on_three_partitions_persist_every_event_once() {
    let env = TestEnv::start(2).await;
    let coupons = [
        env.coupon_with_quantity(200).await,
        env.coupon_with_quantity(200).await,
        env.coupon_with_quantity(200).await,
        env.coupon_with_quantity(200).await,
    ];
    let mut winners = BTreeMap::new();
    for coupon in coupons {
        let answers = issue_all(&env, coupon, 1..=150).await;
        assert_eq!(count(&answers, 201), 150);
        winners.insert(coupon, answers[&201].clone());
    }
    for (coupon, users) in winners {
        assert_eq!(env.rows_when_settled(coupon, users.len()).await, users);
    }
    // Both topics were created by the services, with the configured partition count.
    assert_eq!(harness::partitions(&env.topic), 3);
    assert_eq!(harness::partitions(&format!("{}.dlq", env.topic)), 3);
    env.shutdown().await;
}

#[actix_web::test]
async fn a_malformed_event_goes_to_the_dead_letter_topic_and_the_partition_flows_on() {
    let env = TestEnv::start(1).await;
    let coupon = env.coupon_with_quantity(10).await;
    // Same key as the coupon's events, so the poison sits in front of them on one partition.
    env.produce_raw(&env.topic, &coupon.to_string(), b"{not an event")
        .await;
    let answers = issue_all(&env, coupon, 1..=5).await;
    assert_eq!(count(&answers, 201), 5);

    assert_eq!(env.rows_when_settled(coupon, 5).await, vec![1, 2, 3, 4, 5]);
    let dead = harness::read_topic(&format!("{}.dlq", env.topic), 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, b"{not an event");
    assert_eq!(
        dead[0].headers.get("reason").map(String::as_str),
        Some("UNDECODABLE")
    );
    assert!(dead[0].headers["source"].starts_with(&format!("kafka:{}/", env.topic)));
    let failed = harness::failed_events(&env).await;
    assert_eq!(
        failed,
        vec![("UNDECODABLE".to_owned(), b"{not an event".to_vec())]
    );
    env.shutdown().await;
}

#[actix_web::test]
async fn read_endpoints_report_issued_pending_and_none() {
    let env = TestEnv::start(1).await;
    let coupon = env.coupon_with_quantity(3).await;
    let other = env.coupon_with_quantity(3).await;
    assert_eq!(env.issue(coupon, 7).await.0, 201);
    assert_eq!(env.issue(other, 7).await.0, 201);
    env.rows_when_settled(coupon, 1).await;
    env.rows_when_settled(other, 1).await;

    let (status, issued) = env.get(&format!("/api/v1/coupons/{coupon}/issues/7")).await;
    assert_eq!(status, 200);
    assert_eq!(issued["status"], "ISSUED");
    assert!(issued["issuedAt"].is_string());
    let (_, none) = env.get(&format!("/api/v1/coupons/{coupon}/issues/8")).await;
    assert_eq!(
        none,
        json!({"couponId": coupon, "userId": 8, "status": "NONE"})
    );

    // Admitted in Redis but not yet in PostgreSQL: what a user sees while the worker is behind.
    let mut env = env;
    env.stop_workers().await;
    assert_eq!(env.issue(coupon, 9).await.0, 201);
    let (_, pending) = env.get(&format!("/api/v1/coupons/{coupon}/issues/9")).await;
    assert_eq!(pending["status"], "PENDING");
    let (_, view) = env.get(&format!("/api/v1/coupons/{coupon}")).await;
    assert_eq!(
        (
            view["issuedCount"].clone(),
            view["persistedCount"].clone(),
            view["remaining"].clone()
        ),
        (json!(2), json!(1), json!(1))
    );

    let (status, mine) = env.get("/api/v1/users/7/coupons").await;
    assert_eq!(status, 200);
    let held: BTreeSet<i64> = mine["coupons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["couponId"].as_i64().unwrap())
        .collect();
    assert_eq!(held, BTreeSet::from([coupon, other]));
    env.shutdown().await;
}

#[actix_web::test]
async fn health_and_readiness() {
    let env = TestEnv::start(0).await;
    assert_eq!(env.get("/healthz").await, (200, json!({"status": "ok"})));
    let (status, ready) = env.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(
        ready["checks"],
        json!({"redis": "ok", "postgresql": "ok", "kafka": "ok"})
    );
    env.shutdown().await;
}

/// One issue request at `base` (another API's, say), from `address` when given (in the
/// header a trusted proxy would set): status, Retry-After, body.
async fn issue_at(
    env: &TestEnv,
    base: &str,
    coupon: i64,
    user: i64,
    address: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut request = env
        .client
        .post(format!("{base}/api/v1/coupons/{coupon}/issues"))
        .bearer_auth(harness::user_token(user));
    if let Some(address) = address {
        request = request.insert_header(("x-client-ip", address));
    }
    let mut response = request.send_json(&json!({ "userId": user })).await.unwrap();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = response.json().await.unwrap_or(Value::Null);
    (response.status().as_u16(), retry_after, body)
}

/// Waits until `user`'s shared rate counter (window `window_ms`) is `count` in Redis.
async fn synced_user_count(env: &TestEnv, user: i64, count: i64, window_ms: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut redis = env.redis().await;
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        // This window's, or the last one's if it ended since the requests.
        let mut counted = 0;
        for window in [now / window_ms, now / window_ms - 1] {
            let key = CouponKeys::rate_of_user(&env.redis_prefix, user, window);
            let here: Option<i64> = redis::AsyncCommands::get(&mut redis, key).await.unwrap();
            counted = counted.max(here.unwrap_or(0));
        }
        if counted == count {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "user {user}'s shared count stays {counted}, not {count}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Per user and per client address, shared by every API replica: over the limit the answer
/// is 429 with Retry-After, and nothing is admitted. On a cluster the two counters of one
/// request are on two slots.
mod rate_limits_answer_429_with_retry_after_across_replicas {
    use super::RedisTopology;

    #[actix_web::test]
    async fn on_a_node() {
        super::rate_limits_answer_429_with_retry_after_across_replicas(RedisTopology::Node).await
    }

    #[actix_web::test]
    async fn on_a_cluster() {
        super::rate_limits_answer_429_with_retry_after_across_replicas(RedisTopology::Cluster).await
    }
}

async fn rate_limits_answer_429_with_retry_after_across_replicas(redis: RedisTopology) {
    let topology = redis.args(QueueKind::Kafka);
    // A day, begun at least two minutes ago: no window ends between the requests.
    harness::at_a_fresh_rate_window(86_400_000).await;
    let limits: Vec<&str> = ["--rate-per-user=3", "--rate-window-ms=86400000"]
        .into_iter()
        .chain(topology.iter().map(String::as_str))
        .collect();
    let env = TestEnv::start_with_args(QueueKind::Kafka, &harness::brokers(), 0, &limits).await;
    let coupon = env.coupon_with_quantity(100).await;
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(env.issue(coupon, 1).await.0);
    }
    assert_eq!(answers, [201, 409, 409]);
    let (status, retry_after, body) = issue_at(&env, &env.base, coupon, 1, None).await;
    assert_eq!(
        (status, &body["error"]),
        (429, &json!("RATE_LIMITED")),
        "{body}"
    );
    let seconds: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=86_400).contains(&seconds), "Retry-After {seconds}");

    // Each replica judges its own counts at once and learns the others' one sync late
    // (`rate_limit`'s stated overshoot): once this one's four are in Redis, another lets
    // user 1 through until its own sync has told it, then refuses.
    let (other, other_ops) = env.start_another_api(&[]).await;
    synced_user_count(&env, 1, 4, 86_400_000).await;
    assert_eq!(
        issue_at(&env, &other, coupon, 1, None).await.0,
        409,
        "the overshoot: the other replica had not heard of user 1"
    );
    let metrics = format!("{}/metrics", other_ops.as_deref().unwrap_or(&other));
    env.scrape_until(&metrics, "the other replica's first sync", |text| {
        text.contains("coupon_rate_limit_syncs_total 1\n")
    })
    .await;
    assert_eq!(
        issue_at(&env, &other, coupon, 1, None).await.0,
        429,
        "shared by every replica"
    );
    assert_eq!(issue_at(&env, &other, coupon, 2, None).await.0, 201);

    let per_address = [
        "--rate-per-user=0".to_owned(),
        "--rate-per-address=2".to_owned(),
        "--client-address-header=x-client-ip".to_owned(),
    ];
    let (by_address, _) = env.start_another_api(&per_address).await;
    for user in [10, 11] {
        assert_eq!(
            issue_at(&env, &by_address, coupon, user, Some("10.0.0.1"))
                .await
                .0,
            201
        );
    }
    assert_eq!(
        issue_at(&env, &by_address, coupon, 12, Some("10.0.0.1"))
            .await
            .0,
        429
    );
    assert_eq!(
        issue_at(&env, &by_address, coupon, 13, Some("10.0.0.2"))
            .await
            .0,
        201
    );
    // Both limits at once: each counts, and either refuses.
    let both = [
        "--rate-per-user=1".to_owned(),
        "--rate-per-address=3".to_owned(),
        "--client-address-header=x-client-ip".to_owned(),
    ];
    let (by_both, _) = env.start_another_api(&both).await;
    assert_eq!(
        issue_at(&env, &by_both, coupon, 20, Some("10.0.0.9"))
            .await
            .0,
        201
    );
    assert_eq!(
        issue_at(&env, &by_both, coupon, 20, Some("10.0.0.9"))
            .await
            .0,
        429,
        "the user's limit"
    );
    assert_eq!(
        issue_at(&env, &by_both, coupon, 21, Some("10.0.0.9"))
            .await
            .0,
        201,
        "the address's third, the user's first"
    );
    assert_eq!(
        issue_at(&env, &by_both, coupon, 22, Some("10.0.0.9"))
            .await
            .0,
        429,
        "the address's limit: the fourth request from 10.0.0.9, the user's first"
    );
    assert_eq!(
        env.redis_set_size(coupon).await,
        7,
        "users 1, 2, 10, 11, 13, 20 and 21: nobody refused was admitted"
    );
    env.shutdown().await;
}

/// ISSUER_OPS_LISTEN moves /metrics, /healthz and /readyz off the public listener.
#[actix_web::test]
async fn operations_routes_can_move_to_their_own_listener() {
    let env = TestEnv::start(0).await;
    let ops_listen = format!("--ops-listen=127.0.0.1:{}", harness::free_port());
    let (api, ops) = env.start_another_api(&[ops_listen]).await;
    let ops = ops.expect("an operations listener");
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(
            env.get_url(&format!("{api}{path}")).await.0,
            404,
            "{path} public"
        );
        assert_eq!(
            env.get_url(&format!("{ops}{path}")).await.0,
            200,
            "{path} on ops"
        );
    }
    assert_eq!(env.get_url(&format!("{ops}/api/v1/coupons/1")).await.0, 404);
    env.shutdown().await;
}

/// One request the contract refuses, and how.
struct BadRequest {
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: String,
    token: Option<String>,
    status: u16,
    error: &'static str,
}

impl BadRequest {
    fn post(path: &str, body: &str, status: u16, error: &'static str) -> Self {
        Self {
            method: "POST",
            path: path.to_owned(),
            content_type: Some("application/json"),
            body: body.to_owned(),
            token: None,
            status,
            error,
        }
    }

    fn get(path: &str, status: u16, error: &'static str) -> Self {
        Self {
            method: "GET",
            content_type: None,
            ..Self::post(path, "", status, error)
        }
    }

    fn admin(self, token: &str) -> Self {
        Self {
            token: Some(token.to_owned()),
            ..self
        }
    }

    /// As user 1, with a valid token.
    fn user(self) -> Self {
        Self {
            token: Some(harness::user_token(1)),
            ..self
        }
    }

    fn content_type(self, content_type: Option<&'static str>) -> Self {
        Self {
            content_type,
            ..self
        }
    }
}

#[actix_web::test]
async fn every_bad_request_gets_its_4xx_and_changes_nothing() {
    let env = TestEnv::start(0).await;
    let coupon = env.coupon_with_quantity(5).await;
    let issues = format!("/api/v1/coupons/{coupon}/issues");
    let create = "/api/v1/coupons";
    let token = harness::ADMIN_TOKEN;
    let huge = format!(r#"{{"userId":1,"pad":"{}"}}"#, "x".repeat(5000));
    let valid_coupon = r#"{"name":"x","totalQuantity":5}"#;

    let mut cases = vec![
        BadRequest::post(create, valid_coupon, 401, "UNAUTHORIZED"),
        BadRequest::post(create, valid_coupon, 401, "UNAUTHORIZED").admin("wrong"),
        BadRequest::post(create, r#"{"name":"x","totalQuantity":0}"#, 400, "INVALID_REQUEST").admin(token),
        BadRequest::post(create, r#"{"name":"","totalQuantity":5}"#, 400, "INVALID_REQUEST").admin(token),
        BadRequest::post(create, r#"{"name":"x","totalQuantity":"5"}"#, 400, "INVALID_REQUEST").admin(token),
        BadRequest::post(
            create,
            r#"{"name":"x","totalQuantity":5,"startsAt":"2030-01-02T00:00:00Z","endsAt":"2030-01-01T00:00:00Z"}"#,
            400,
            "INVALID_REQUEST",
        )
        .admin(token),
        BadRequest::post(create, "{", 400, "INVALID_REQUEST").admin(token),
        // Found by review: each reached PostgreSQL and answered 503, or created a
        // coupon that can never issue.
        BadRequest::post(create, r#"{"name":"a\u0000b","totalQuantity":5}"#, 400, "INVALID_REQUEST").admin(token),
        BadRequest::post(
            create,
            r#"{"name":"x","totalQuantity":5,"startsAt":"-0044-03-15T00:00:00Z"}"#,
            400,
            "INVALID_REQUEST",
        )
        .admin(token),
        BadRequest::post(
            create,
            r#"{"name":"x","totalQuantity":5,"endsAt":"2001-01-01T00:00:00Z"}"#,
            400,
            "INVALID_REQUEST",
        )
        .admin(token),
        BadRequest::post(create, r#"["x",5,null,null]"#, 400, "INVALID_REQUEST").admin(token),
        BadRequest::post(create, valid_coupon, 415, "UNSUPPORTED_MEDIA_TYPE")
            .admin(token)
            .content_type(Some("text/plain")),
    ];
    for body in [
        "{",
        // An array is not an object, even one with the fields in order.
        "[1]",
        r#"{"userId":"7"}"#,
        r#"{"userId":0}"#,
        r#"{"userId":-1}"#,
        r#"{"userId":1.5}"#,
        r#"{"userId":9223372036854775808}"#,
    ] {
        cases.push(BadRequest::post(&issues, body, 400, "INVALID_REQUEST").user());
    }
    for coupon_path in ["abc", "0", "-5", "99999999999999999999"] {
        let path = format!("/api/v1/coupons/{coupon_path}/issues");
        cases.push(BadRequest::post(&path, r#"{"userId":1}"#, 400, "INVALID_REQUEST").user());
    }
    cases.extend([
        BadRequest::post(&issues, &huge, 413, "PAYLOAD_TOO_LARGE").user(),
        BadRequest::post(&issues, r#"{"userId":1}"#, 415, "UNSUPPORTED_MEDIA_TYPE")
            .user()
            .content_type(Some("text/plain")),
        BadRequest::post(&issues, r#"{"userId":1}"#, 415, "UNSUPPORTED_MEDIA_TYPE")
            .user()
            .content_type(None),
        BadRequest::post(
            "/api/v1/coupons/987654321/issues",
            r#"{"userId":1}"#,
            404,
            "COUPON_NOT_FOUND",
        )
        .user(),
        BadRequest::get("/api/v1/coupons/987654321", 404, "COUPON_NOT_FOUND"),
        BadRequest::get("/api/v1/coupons/x1", 400, "INVALID_REQUEST"),
        BadRequest::get(
            "/api/v1/coupons/987654321/issues/1",
            404,
            "COUPON_NOT_FOUND",
        )
        .admin(token),
        BadRequest::get(&format!("{issues}/0"), 400, "INVALID_REQUEST").admin(token),
        BadRequest::get("/api/v1/users/-1/coupons", 400, "INVALID_REQUEST").admin(token),
        BadRequest::get("/api/v1/nothing-here", 404, "NOT_FOUND"),
        BadRequest {
            method: "DELETE",
            ..BadRequest::get(
                &format!("/api/v1/coupons/{coupon}"),
                405,
                "METHOD_NOT_ALLOWED",
            )
        },
    ]);

    for case in cases {
        let mut request = env
            .client
            .request(case.method.parse().unwrap(), env.url(&case.path));
        if let Some(content_type) = case.content_type {
            request = request.insert_header(("content-type", content_type));
        }
        if let Some(token) = &case.token {
            request = request.bearer_auth(token);
        }
        let mut response = request.send_body(case.body.clone()).await.unwrap();
        let answer: Value =
            serde_json::from_slice(&response.body().await.unwrap()).unwrap_or(Value::Null);
        let what = format!(
            "{} {} {:?} {:.80}: {answer}",
            case.method, case.path, case.content_type, case.body
        );
        assert_eq!(response.status().as_u16(), case.status, "{what}");
        assert_eq!(answer["error"], case.error, "{what}");
        assert!(
            answer["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }

    // Nothing was created anywhere: one coupon row, and Redis holds only its meta (and the
    // reconciler's list of loaded coupons).
    let (_, view) = env.get(&format!("/api/v1/coupons/{coupon}")).await;
    assert_eq!(view["issuedCount"], 0);
    let coupons: i64 = {
        use diesel::QueryDsl;
        use diesel_async::RunQueryDsl;
        coupon_core::db::schema::coupons::table
            .count()
            .get_result(&mut env.pg().await)
            .await
            .unwrap()
    };
    assert_eq!(coupons, 1);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", env.redis_prefix))
        .query_async(&mut env.redis().await)
        .await
        .unwrap();
    let mut keys = keys;
    // The registry's check mark may or may not be there yet: its watch runs beside.
    let checked = CouponKeys::registry_checked(&env.redis_prefix);
    keys.retain(|key| *key != checked);
    keys.sort();
    assert_eq!(
        keys,
        vec![
            env.keys(coupon).meta,
            CouponKeys::registry_generation(&env.redis_prefix),
            CouponKeys::active_registry(&env.redis_prefix),
        ],
        "the meta, and the registry of coupons that need work"
    );
    env.shutdown().await;
}

async fn a_coupon_missing_from_redis_is_rebuilt_from_postgresql(
    queue: QueueKind,
    redis: RedisTopology,
) {
    let env = TestEnv::start_under(queue, redis, 1).await;
    let coupon = env.coupon_with_quantity(2).await;
    assert_eq!(env.issue(coupon, 1).await.0, 201);
    env.rows_when_settled(coupon, 1).await;
    // Redis lost the coupon's meta (not its issued set): admission closes until rebuilt.
    let meta = env.keys(coupon).meta;
    let _: () = redis::cmd("DEL")
        .arg(&meta)
        .query_async(&mut env.redis().await)
        .await
        .unwrap();

    harness::assert_unavailable(&env.issue(coupon, 2).await);
    assert_eq!(
        env.issue_retrying(coupon, 1).await.0,
        409,
        "the holder is still known"
    );
    assert_eq!(env.issue_retrying(coupon, 2).await.0, 201);
    assert_eq!(
        env.issue(coupon, 3).await.0,
        410,
        "the quantity came back with the meta"
    );
    assert_eq!(env.rows_when_settled(coupon, 2).await, vec![1, 2]);
    env.shutdown().await;
}

/// The registry that the reconciler (Kafka mode) and the stream workers loop over
/// must not grow with every coupon ever sold. A coupon sold out with every event persisted
/// leaves it; one still selling stays; the finished one still answers its requests.
async fn a_finished_coupon_leaves_the_hot_loops(queue: QueueKind, redis: RedisTopology) {
    let env = TestEnv::start_under(queue, redis, 1).await;
    let sold_out = env.coupon_with_quantity(1).await;
    let selling = env.coupon_with_quantity(5).await;
    assert_eq!(env.issue(sold_out, 1).await.0, 201);
    assert_eq!(env.issue(selling, 1).await.0, 201);
    assert_eq!(env.rows_when_settled(sold_out, 1).await, vec![1]);

    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while env.registered().await.contains(&sold_out) {
        assert!(
            std::time::Instant::now() < deadline,
            "a sold-out, persisted coupon is still in the registry"
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(env.registered().await.contains(&selling));
    assert_eq!(env.issue(sold_out, 2).await.0, 410);
    assert_eq!(env.issue(sold_out, 1).await.0, 409);
    assert_eq!(env.issue(selling, 2).await.0, 201);
    assert_eq!(env.rows_when_settled(selling, 2).await, vec![1, 2]);
    env.shutdown().await;
}

/// An event that decodes but PostgreSQL refuses for good (its `issuedAt` is before 4713 BC,
/// outside PostgreSQL's timestamps) must not hold up the events behind it: it is set aside
/// with its reason, and they are persisted.
async fn an_event_postgresql_refuses_for_good_is_set_aside_and_the_queue_flows_on(
    queue: QueueKind,
    redis: RedisTopology,
) {
    let env = TestEnv::start_under(queue, redis, 1).await;
    let coupon = env.coupon_with_quantity(5).await;
    let ancient = chrono::DateTime::from_timestamp_millis(-300_000_000_000_000).unwrap();
    let event = IssueEvent::new(
        CouponId::new(coupon).unwrap(),
        UserId::new(1).unwrap(),
        ancient,
    );
    match queue {
        QueueKind::Kafka => {
            env.produce_raw(&env.topic, &event.key(), &event.encode())
                .await
        }
        QueueKind::Redis => {
            let fields: Vec<(&str, String)> = event.stream_fields().into_iter().collect();
            env.append_raw(coupon, &fields).await
        }
    }
    for user in [2, 3] {
        assert_eq!(env.issue(coupon, user).await.0, 201);
    }

    assert_eq!(env.rows_when_settled(coupon, 2).await, vec![2, 3]);
    let failed = harness::wait_for_failed(&env, "the refused event is set aside", |rows| {
        !rows.is_empty()
    })
    .await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].reason, "REJECTED");
    env.shutdown().await;
}
