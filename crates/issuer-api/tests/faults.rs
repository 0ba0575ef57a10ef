//! Failure semantics on real infrastructure: publishes that fail for certain or in doubt,
//! a database outage under the worker, Redis losing a coupon's state, and the database's
//! own guard against oversell.

use std::time::Duration;

use chrono::Utc;
use coupon_core::domain::{CouponId, UserId};
use coupon_core::event::IssueEvent;
use serde_json::json;
use testkit::harness::{self, TestEnv};
use testkit::kafka_cluster::KafkaCluster;
use testkit::proxy::CuttableProxy;

#[actix_web::test]
async fn a_publish_that_never_left_gives_the_slot_back_at_once() {
    let broker = KafkaCluster::start(1).unwrap();
    let env = TestEnv::start_on(&broker.bootstrap(), 0).await;
    let coupon = env.coupon_with_quantity(1).await;
    assert_eq!(env.issue(coupon, 1).await.0, 201);
    let rival = env.coupon_with_quantity(1).await;

    // The broker is gone, and the producer knows it (its metadata request fails, so
    // readiness says so): nothing can leave the producer now.
    broker.kill(1).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while env.get("/readyz").await.0 != 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "readiness never noticed"
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    let started = std::time::Instant::now();
    harness::assert_unavailable(&env.issue(rival, 2).await);
    // PUBLISH_TIMEOUT_MS is 3 s; the margin is for this suite's parallel tests and brokers
    // sharing two cores. The issue's bar: fast and bounded, nothing like 30 s.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "503 came fast: {:?}",
        started.elapsed()
    );
    assert_eq!(
        env.redis_set_size(rival).await,
        0,
        "the slot went back to the stock"
    );
    assert!(env.pending_entries(rival).await.is_empty());
    let (_, view) = env.get(&format!("/api/v1/coupons/{rival}")).await;
    assert_eq!(view["remaining"], 1);
    env.shutdown().await;
}

#[actix_web::test]
async fn publishing_to_a_topic_that_does_not_exist_is_a_certain_failure() {
    use coupon_core::kafka::producer::Persistence;
    let broker = KafkaCluster::start(1).unwrap();
    let topic = format!("no-such-topic-{}", uuid::Uuid::new_v4());
    let args = coupon_core::config::KafkaArgs {
        kafka_brokers: broker.bootstrap(),
        issue_topic: topic.clone(),
        topic_partitions: 3,
        topic_replication: 1,
        topic_min_insync_replicas: 1,
        producer_linger_ms: 2,
        security: Default::default(),
    };
    let publisher = issuer_api::delivery::kafka::publisher::Publisher::new(
        &args,
        Duration::from_millis(2000),
        issuer_api::metrics::Metrics::default().publish_ack,
    )
    .unwrap();
    let event = IssueEvent::new(
        CouponId::new(1).unwrap(),
        UserId::new(1).unwrap(),
        Utc::now(),
    );

    let failure = publisher
        .publish(&event)
        .await
        .expect_err("no topic, no acknowledgement");

    assert_eq!(failure.persistence, Persistence::NotPersisted, "{failure}");
    assert_eq!(
        harness::partitions_on(&broker.bootstrap(), &topic),
        0,
        "naming it did not create it"
    );
}

#[actix_web::test]
async fn a_publish_in_doubt_holds_the_slot_and_the_retry_or_the_reconciler_settles_it() {
    let broker = KafkaCluster::start(1).unwrap();
    let env = TestEnv::start_on(&broker.bootstrap(), 1).await;
    let coupon = env.coupon_with_quantity(3).await;
    assert_eq!(env.issue(coupon, 1).await.0, 201);
    env.rows_when_settled(coupon, 1).await;
    let mut env = env;
    env.stop_workers().await;

    // A frozen broker takes the produce request and never answers it: the events left
    // the producer and may be in the log.
    broker.signal_all("STOP").unwrap();
    let (a, b) = futures_util::future::join(env.issue(coupon, 2), env.issue(coupon, 3)).await;
    assert_eq!((a.0, b.0), (503, 503), "{a:?} {b:?}");
    assert_eq!(env.pending_entries(coupon).await, vec![2, 3]);
    assert_eq!(
        env.redis_set_size(coupon).await,
        3,
        "in-doubt slots stay taken"
    );
    let (_, pending) = env.get(&format!("/api/v1/coupons/{coupon}/issues/2")).await;
    assert_eq!(pending["status"], "PENDING");
    assert_eq!(
        env.issue(coupon, 4).await.0,
        410,
        "held slots are not sold twice"
    );

    broker.signal_all("CONT").unwrap();
    // User 2 retries and is told the truth: the coupon is theirs, SUCCESS if the retry
    // publishes the event, ALREADY_ISSUED if the reconciler (every 500 ms here) got there
    // first. User 3 never comes back: the reconciler publishes theirs.
    let (status, body) = env.issue_retrying(coupon, 2).await;
    assert!(
        [(201, json!("SUCCESS")), (409, json!("ALREADY_ISSUED"))]
            .contains(&(status, body["result"].clone())),
        "{status} {body}"
    );
    env.start_worker(500).await;
    assert_eq!(env.rows_when_settled(coupon, 3).await, vec![1, 2, 3]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !env.pending_entries(coupon).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the reconciler settled nothing"
        );
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(env.issue(coupon, 3).await.0, 409);
    env.shutdown().await;
}

#[actix_web::test]
async fn the_worker_rides_out_a_postgresql_outage_without_skipping_or_duplicating() {
    let mut env = TestEnv::start(0).await;
    let proxy = CuttableProxy::start("127.0.0.1:5432").await.unwrap();
    let mut args = env.worker_args(10);
    args.retain(|arg| !arg.starts_with("--database-url="));
    args.push(format!(
        "--database-url={}",
        proxy.url_for(&env.database_url).unwrap()
    ));
    args.push("--retry-max-ms=500".into());
    env.start_worker_with(args).await;
    let coupon = env.coupon_with_quantity(100).await;
    for user in 1..=5 {
        assert_eq!(env.issue(coupon, user).await.0, 201);
    }
    env.rows_when_settled(coupon, 5).await;

    proxy.cut();
    for user in 6..=40 {
        assert_eq!(
            env.issue(coupon, user).await.0,
            201,
            "the API does not need the worker"
        );
    }
    actix_web::rt::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.rows(coupon).await.len(),
        5,
        "nothing can be written while PostgreSQL is away"
    );

    proxy.restore();
    assert_eq!(
        env.rows_when_settled(coupon, 40).await,
        (1..=40).collect::<Vec<_>>()
    );
    env.shutdown().await;
}

/// A batch that met a lock timeout (SQLSTATE 55P03, which diesel-async reports as `Unknown`)
/// met a busy database, not a bad event: it must come back to the worker to retry, never be
/// set aside as REJECTED, which would turn a 201's event into a final NOT_ISSUED and let a
/// rebuild sell its slot again. Forced: another session holds the rows' table locked, and
/// the inserting session waits at most 100 ms for it.
#[actix_web::test]
async fn a_batch_that_met_a_lock_timeout_is_retried_not_rejected() {
    use coupon_core::db::batch_insert::{SourcedIssue, persist_isolating};
    use diesel_async::RunQueryDsl;

    let env = TestEnv::start(0).await;
    let coupon = env.coupon_with_quantity(5).await;
    let mut holder = env.pg().await;
    for statement in ["BEGIN", "LOCK TABLE coupon_issues IN ACCESS EXCLUSIVE MODE"] {
        diesel::sql_query(statement)
            .execute(&mut holder)
            .await
            .unwrap();
    }
    let mut conn = env.pg().await;
    diesel::sql_query("SET lock_timeout = '100ms'")
        .execute(&mut conn)
        .await
        .unwrap();
    let event = IssueEvent::new(
        CouponId::new(coupon).unwrap(),
        UserId::new(1).unwrap(),
        Utc::now(),
    );
    let issue = SourcedIssue {
        event: event.clone(),
        source: "test:0:0".into(),
        trace: None,
    };

    let blocked = persist_isolating(&mut conn, std::slice::from_ref(&issue), Vec::new()).await;
    assert!(
        blocked.is_err(),
        "a lock timeout was taken as the event's fault: {blocked:?}"
    );
    assert!(
        harness::failed_events(&env).await.is_empty(),
        "the event was set aside"
    );

    diesel::sql_query("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
    let retried = persist_isolating(&mut conn, &[issue], Vec::new())
        .await
        .unwrap();
    assert_eq!(retried.inserted, 1);
    assert_eq!(env.rows(coupon).await, vec![1]);
    env.shutdown().await;
}

#[actix_web::test]
async fn postgresql_refuses_more_rows_than_the_quantity_and_keeps_the_surplus() {
    let env = TestEnv::start(1).await;
    let coupon = env.coupon_with_quantity(5).await;
    // Admissions Redis never made (as if it had lost its state and admitted again).
    for user in 1..=8 {
        let event = IssueEvent::new(
            CouponId::new(coupon).unwrap(),
            UserId::new(user).unwrap(),
            Utc::now(),
        );
        env.produce_raw(&env.topic, &event.key(), &event.encode())
            .await;
    }

    assert_eq!(
        env.rows_when_settled(coupon, 5).await,
        vec![1, 2, 3, 4, 5],
        "first come, first served"
    );
    let failed = harness::failed_events(&env).await;
    let surplus: Vec<i64> = failed
        .iter()
        .map(|(reason, payload)| {
            assert_eq!(reason, "OVER_QUANTITY");
            IssueEvent::decode(payload).unwrap().user_id.get()
        })
        .collect();
    assert_eq!(surplus, vec![6, 7, 8]);
    // /metrics answers from the operations view, refreshed every second: wait for the
    // refresh that follows the rows (bounded), rather than reading one that predates them.
    let line = "coupon_failed_events{reason=\"OVER_QUANTITY\",status=\"PENDING\"} 3\n";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (status, metrics) = env.get_text("/metrics").await;
        assert_eq!(status, 200);
        if metrics.contains(line) || std::time::Instant::now() > deadline {
            break metrics;
        }
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(metrics.contains(line), "counted in a metric:\n{metrics}");
    let (_, view) = env.get(&format!("/api/v1/coupons/{coupon}")).await;
    assert_eq!(view["persistedCount"], 5);
    env.shutdown().await;
}

#[actix_web::test]
async fn after_redis_loses_everything_the_rebuild_restores_every_holder() {
    let env = TestEnv::start(1).await;
    let coupon = env.coupon_with_quantity(10).await;
    for user in 1..=6 {
        assert_eq!(env.issue(coupon, user).await.0, 201);
    }

    env.flush_redis().await;
    // The operator's explicit rebuild, as `issuer-api rebuild-redis --coupon ID` runs it.
    let config = env.command(&["rebuild-redis", &format!("--coupon={coupon}")]);
    issuer_api::commands::rebuild_redis(&config, Some(CouponId::new(coupon).unwrap()), false)
        .await
        .unwrap();

    assert_eq!(
        env.redis_set_size(coupon).await,
        6,
        "every earlier winner is known again"
    );
    for user in 1..=6 {
        assert_eq!(env.issue(coupon, user).await.0, 409);
    }
    for user in 7..=10 {
        assert_eq!(env.issue(coupon, user).await.0, 201);
    }
    assert_eq!(env.issue(coupon, 11).await.0, 410);
    assert_eq!(
        env.rows_when_settled(coupon, 10).await,
        (1..=10).collect::<Vec<_>>()
    );
    env.shutdown().await;
}

#[actix_web::test]
async fn after_redis_loses_everything_requests_wait_for_the_lazy_rebuild() {
    let env = TestEnv::start(1).await;
    let coupon = env.coupon_with_quantity(4).await;
    for user in 1..=3 {
        assert_eq!(env.issue(coupon, user).await.0, 201);
    }
    env.flush_redis().await;

    assert_eq!(env.issue(coupon, 4).await.0, 503, "closed until rebuilt");
    assert_eq!(env.issue_retrying(coupon, 2).await.0, 409);
    assert_eq!(env.issue_retrying(coupon, 4).await.0, 201);
    assert_eq!(env.issue(coupon, 5).await.0, 410, "never oversold");
    assert_eq!(env.rows_when_settled(coupon, 4).await, vec![1, 2, 3, 4]);
    env.shutdown().await;
}

#[actix_web::test]
async fn a_slot_whose_api_died_before_publishing_is_published_by_another() {
    use coupon_core::redis::admission::AdmitReply;
    let env = TestEnv::start(1).await;
    let coupon = env.coupon_with_quantity(5).await;
    // Exactly what an API does before it publishes, and then it dies (nothing published).
    let scripts = env.scripts_for(coupon).await;
    let reply = scripts
        .admit(
            &mut env.redis().await,
            CouponId::new(coupon).unwrap(),
            UserId::new(7).unwrap(),
        )
        .await
        .unwrap();
    assert!(matches!(reply, AdmitReply::Admitted(_)), "{reply:?}");
    assert_eq!(env.pending_entries(coupon).await, vec![7]);

    // Within the first publish's window (3 s + 2 s here), the slot is that request's to
    // finish, and whether the coupon is the user's is not known yet.
    let (status, body) = env.issue(coupon, 7).await;
    assert_eq!(
        (status, &body["error"]),
        (503, &json!("UNAVAILABLE")),
        "{body}"
    );
    // After it, the reconciler publishes the event: the slot becomes a row, not a leak.
    assert_eq!(env.rows_when_settled(coupon, 1).await, vec![7]);
    assert!(env.pending_entries(coupon).await.is_empty());
    assert_eq!(env.issue(coupon, 7).await.0, 409);
    env.shutdown().await;
}

#[actix_web::test]
async fn poison_events_are_set_aside_retried_on_schedule_and_replayable() {
    use coupon_core::db::redrive::Redriven;
    use testkit::harness::{make_retries_due, wait_for_failed};
    let env = TestEnv::start(1).await;
    let coupon = env.coupon_with_quantity(5).await;
    let ghost = coupon + 1; // the next coupon id: no such coupon yet
    let orphan = IssueEvent::new(
        CouponId::new(ghost).unwrap(),
        UserId::new(9).unwrap(),
        Utc::now(),
    );
    env.produce_raw(&env.topic, &orphan.key(), &orphan.encode())
        .await;
    env.produce_raw(&env.topic, &coupon.to_string(), b"\x00garbage")
        .await;
    assert_eq!(env.issue(coupon, 1).await.0, 201);

    // The partition flows on past both; both are dead-lettered with their reason.
    assert_eq!(env.rows_when_settled(coupon, 1).await, vec![1]);
    let dead = harness::read_topic(&format!("{}.dlq", env.topic), 2).await;
    let mut reasons: Vec<&str> = dead.iter().map(|m| m.headers["reason"].as_str()).collect();
    reasons.sort_unstable();
    assert_eq!(reasons, vec!["COUPON_NOT_FOUND", "UNDECODABLE"]);
    let failed = wait_for_failed(&env, "both recorded", |rows| rows.len() == 2).await;
    for row in &failed {
        assert_eq!(
            (row.status.as_str(), row.attempts),
            ("PENDING", 0),
            "{row:?}"
        );
        assert!(
            (25..=30).contains(&row.due_in_seconds.unwrap()),
            "first retry after 30 s: {row:?}"
        );
    }
    let orphan_id = failed
        .iter()
        .find(|r| r.reason == "COUPON_NOT_FOUND")
        .unwrap()
        .id;
    let garbage_id = failed
        .iter()
        .find(|r| r.reason == "UNDECODABLE")
        .unwrap()
        .id;

    // Their time comes: both are retried and still fail; the next wait is a minute.
    make_retries_due(&env).await;
    let failed = wait_for_failed(&env, "first retry", |rows| {
        rows.iter().all(|r| r.attempts == 1)
    })
    .await;
    for row in &failed {
        assert_eq!(row.status, "RETRYING", "{row:?}");
        assert!(
            (55..=60).contains(&row.due_in_seconds.unwrap()),
            "second retry after 1 min: {row:?}"
        );
    }

    // The coupon now exists: an operator replays the orphan, and it becomes a row.
    assert_eq!(env.coupon_with_quantity(5).await, ghost);
    let mut conn = env.pg().await;
    let replayed = coupon_core::db::redrive::replay(&mut conn, orphan_id, "the test")
        .await
        .unwrap();
    assert_eq!(replayed, Some(Redriven::Recovered));
    assert_eq!(env.rows(ghost).await, vec![9]);

    // The garbage never decodes: after its third retry it is abandoned for a person.
    for attempts in 2..=3 {
        make_retries_due(&env).await;
        wait_for_failed(&env, "next retry", |rows| {
            rows.iter()
                .any(|r| r.id == garbage_id && r.attempts == attempts)
        })
        .await;
    }
    let failed = harness::failed_schedule(&env).await;
    let garbage = failed.iter().find(|r| r.id == garbage_id).unwrap();
    assert_eq!(
        (garbage.status.as_str(), garbage.due_in_seconds),
        ("ABANDONED", None)
    );
    assert_eq!(
        failed.iter().find(|r| r.id == orphan_id).unwrap().status,
        "RECOVERED"
    );
    let replayed = coupon_core::db::redrive::replay(&mut conn, garbage_id, "the test")
        .await
        .unwrap();
    assert!(
        matches!(replayed, Some(Redriven::Abandoned(_))),
        "{replayed:?}"
    );
    assert_eq!(
        coupon_core::db::redrive::replay(&mut conn, 999_999, "the test")
            .await
            .unwrap(),
        None
    );
    env.shutdown().await;
}

#[actix_web::test]
async fn a_broker_killed_and_restarted_loses_no_acknowledged_event() {
    let broker = std::sync::Arc::new(KafkaCluster::start(1).unwrap());
    let env = TestEnv::start_on(&broker.bootstrap(), 1).await;
    let coupon = env.coupon_with_quantity(1000).await;
    // Requests in flight while the broker dies.
    let load =
        futures_util::future::join_all((1..=1000).map(|user| env.issue_retrying(coupon, user)));
    let kill = async {
        actix_web::rt::time::sleep(Duration::from_millis(30)).await;
        broker.kill(1).unwrap();
        // The JVM takes seconds to start: off the runtime, so requests keep being answered.
        let broker = broker.clone();
        actix_web::rt::task::spawn_blocking(move || broker.restart(&[1]).unwrap())
            .await
            .unwrap();
    };
    let (answers, ()) = futures_util::future::join(load, kill).await;

    // After retrying, each user is told the truth: 201, or 409 when an earlier attempt's
    // publish holds the slot. Either way the coupon is theirs, so each must have its row.
    let refused: Vec<(i64, u16)> = (1..=1000)
        .zip(&answers)
        .filter(|(_, (status, _))| !matches!(status, 201 | 409))
        .map(|(user, (status, _))| (user, *status))
        .collect();
    assert!(
        refused.is_empty(),
        "answers other than 201/409: {refused:?}"
    );
    assert_eq!(
        env.rows_when_settled(coupon, 1000).await,
        (1..=1000).collect::<Vec<_>>()
    );
    env.shutdown().await;
}

/// A user Redis admitted but the database guard refused (OVER_QUANTITY, possible only if
/// Redis admitted beyond the quantity) is not "PENDING" forever: their status is final and
/// says why.
#[actix_web::test]
async fn a_winner_the_database_guard_refused_reads_a_final_status() {
    let env = TestEnv::start(1).await;
    let coupon = env.coupon_with_quantity(2).await;
    for user in 1..=2 {
        assert_eq!(env.issue(coupon, user).await.0, 201);
    }
    // User 3 admitted beyond the quantity (a Redis that lost state, say): in the set, and
    // their event on the topic.
    let issued = env.keys(coupon).issued;
    let _: () = redis::cmd("SADD")
        .arg(&issued)
        .arg(3)
        .query_async(&mut env.redis().await)
        .await
        .unwrap();
    let event = IssueEvent::new(
        CouponId::new(coupon).unwrap(),
        UserId::new(3).unwrap(),
        Utc::now(),
    );
    env.produce_raw(&env.topic, &event.key(), &event.encode())
        .await;
    harness::wait_for_failed(&env, "the surplus event is set aside", |rows| {
        !rows.is_empty()
    })
    .await;

    let (status, view) = env.get(&format!("/api/v1/coupons/{coupon}/issues/3")).await;
    assert_eq!(status, 200);
    assert_eq!(view["status"], "NOT_ISSUED", "{view}");
    assert_eq!(view["reason"], "OVER_QUANTITY", "{view}");
    let (_, holder) = env.get(&format!("/api/v1/coupons/{coupon}/issues/1")).await;
    assert_eq!(holder["status"], "ISSUED");
    env.shutdown().await;
}

/// `/readyz` and `/metrics` answer from a view refreshed in the background: with PostgreSQL
/// gone, the metrics are still served (the last count), and readiness names the dependency
/// that is down without showing its error.
#[actix_web::test]
async fn operations_endpoints_answer_from_their_own_view() {
    let env = TestEnv::start(0).await;
    let proxy = CuttableProxy::start("127.0.0.1:5432").await.unwrap();
    let database = format!(
        "--database-url={}",
        proxy.url_for(&env.database_url).unwrap()
    );
    let (api, _) = env.start_another_api(&[database]).await;
    assert_eq!(env.get_url(&format!("{api}/readyz")).await.0, 200);

    proxy.cut();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ready = loop {
        let (status, body) = env.get_url(&format!("{api}/readyz")).await;
        if status == 503 {
            break serde_json::from_str::<serde_json::Value>(&body).unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "still ready: {body}");
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        ready["checks"],
        json!({"redis": "ok", "postgresql": "unavailable", "kafka": "ok"}),
        "only which dependency is down, never its error text"
    );
    let (status, metrics) = env.get_url(&format!("{api}/metrics")).await;
    assert_eq!(status, 200, "{metrics}");
    assert!(metrics.contains("coupon_issue_answers_total"), "{metrics}");
    proxy.restore();
    env.shutdown().await;
}

/// A hand-over whose switchover never comes (no new primary within `--wait-secs`): its
/// coupons must not stay closed for the whole lease. They reopen where they are, under a new
/// stamp, with no rebuild, and the command fails.
#[actix_web::test]
async fn a_hand_over_without_a_new_primary_reopens_the_coupons_where_they_are() {
    let env = TestEnv::start(1).await;
    let coupon = env.coupon_with_quantity(3).await;
    assert_eq!(env.issue(coupon, 1).await.0, 201);
    let config = env.command(&["hand-over"]);
    let refused = issuer_api::commands::hand_over(
        &config,
        None,
        Duration::from_secs(1),
        Duration::from_secs(11),
    )
    .await
    .expect_err("no switchover happened");
    assert!(
        format!("{refused:#}").contains("no new primary"),
        "{refused:#}"
    );
    let (status, body) = env.issue(coupon, 2).await;
    assert_eq!(status, 201, "the coupon reopened at once: {body}");
    let (_, metrics) = env.get_text("/metrics").await;
    assert!(
        metrics.contains("coupon_rebuilds_total{outcome=\"started\"} 0"),
        "the API rebuilt the coupon:\n{metrics}"
    );
    assert_eq!(env.rows_when_settled(coupon, 2).await, vec![1, 2]);
    env.shutdown().await;
}
