//! The rate limit's counters (`issuer-api/src/scripts/rate_limit.lua`) are not durable
//! writes: a request that Redis only counts and refuses (a sold-out answer, a 429) writes
//! nothing to the append-only file, so under `appendfsync always` it waits for no disk
//! sync, and sends nothing to the replicas. Checked on a primary and replica of the test's
//! own, on the project's Redis configuration.

// A panic is exactly the failure report wanted here.
#![allow(clippy::unwrap_used)]

use coupon_core::domain::QueueKind;
use coupon_core::redis::keys::CouponKeys;
use redis::AsyncCommands;
use testkit::harness::{self, TestEnv};
use testkit::redis_server::RedisServer;

fn data_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "coupon-rate-limit-{name}-{}",
        uuid::Uuid::new_v4().simple()
    ))
}

/// Waits until the replica has everything the primary propagated so far.
async fn replicated(on_primary: &mut redis::aio::MultiplexedConnection) {
    let synced: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5_000)
        .query_async(on_primary)
        .await
        .unwrap();
    assert_eq!(synced, 1, "the replica never caught up");
}

#[actix_web::test]
async fn counted_and_refused_requests_write_nothing_durable() {
    let primary = RedisServer::start(&data_dir("primary"), &[]).await.unwrap();
    let replica = RedisServer::replica_of(primary.port, &data_dir("replica"))
        .await
        .unwrap();
    let args = [
        format!("--redis-url={}", primary.url()),
        "--rate-per-user=2".to_owned(),
        "--rate-window-ms=60000".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = TestEnv::start_with_args(QueueKind::Kafka, &harness::brokers(), 0, &args).await;
    let coupon = env.coupon_with_quantity(1).await;
    assert_eq!(env.issue(coupon, 1).await.0, 201);
    // Its replies may wait as long as the WAIT below: the client's default response
    // timeout is shorter than a replica's first sync can take, which failed this test now
    // and then ("timed out").
    let mut on_primary = redis::Client::open(primary.url())
        .unwrap()
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(std::time::Duration::from_secs(10))),
        )
        .await
        .unwrap();

    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(env.issue(coupon, 2).await.0);
    }

    assert_eq!(answers, [410, 410, 429]);
    let counter = CouponKeys::rate_of_user(&env.redis_prefix, 2);
    let counted: Option<i64> = on_primary.get(&counter).await.unwrap();
    assert_eq!(counted, Some(3), "the primary counts every request");
    // Looked for by name: the API's own background writes (a settle, say) go on beside.
    let aof = std::fs::read(primary.aof_tail().unwrap()).unwrap();
    assert!(
        !aof.windows(counter.len())
            .any(|at| at == counter.as_bytes()),
        "the counter was written to the append-only file"
    );
    replicated(&mut on_primary).await;
    let mut on_replica = redis::Client::open(replica.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let replicated: bool = on_replica.exists(&counter).await.unwrap();
    assert!(!replicated, "the counter was sent to the replica");
    env.shutdown().await;
}

/// A finished coupon's answers from memory (the finished gate) ask Redis nothing, their
/// count included: they are counted against the per-user limit in the instance's memory,
/// and past it answered 429 all the same.
#[actix_web::test]
async fn answers_from_the_finished_gate_are_limited_in_memory() {
    let args = [
        "--rate-per-user=2",
        // A day: no window ends between the requests.
        "--rate-window-ms=86400000",
        "--finished-gate-ms=1000",
    ];
    let env = TestEnv::start_with_args(QueueKind::Kafka, &harness::brokers(), 0, &args).await;
    let coupon = env.coupon_with_quantity(1).await;
    assert_eq!(env.issue(coupon, 1).await.0, 201);
    let shut = std::time::Instant::now();
    assert_eq!(
        env.issue(coupon, 2).await.0,
        410,
        "admission's, which shuts the gate"
    );

    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(env.issue(coupon, 3).await.0);
    }
    assert!(
        shut.elapsed() < std::time::Duration::from_secs(1),
        "too slow to ask within the gate's hold: {:?}",
        shut.elapsed()
    );

    assert_eq!(answers, [410, 410, 429]);
    let mut redis = testkit::shared_redis::redis().await;
    let counted: Option<i64> = redis
        .get(CouponKeys::rate_of_user(&env.redis_prefix, 3))
        .await
        .unwrap();
    assert_eq!(counted, None, "Redis counted a request it never saw");
    env.shutdown().await;
}
