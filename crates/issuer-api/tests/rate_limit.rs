//! The rate limits (`issuer-api/src/rate_limit.rs`): counted in each instance's memory,
//! shared through Redis once per sync interval, with the overshoot the module states; and
//! the shared counters are not durable writes: a sync writes nothing to the append-only
//! file, so under `appendfsync always` it waits for no disk sync, and sends nothing to the
//! replicas. Checked on a primary and replica of the test's own, on the project's Redis
//! configuration.

// A panic is exactly the failure report wanted here.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use coupon_core::domain::{QueueKind, UserId};
use coupon_core::redis::connection::RedisConnection;
use issuer_api::error::ApiError;
use issuer_api::rate_limit::{Limits, RateLimiter};
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
        // A day: no window ends between the requests.
        "--rate-window-ms=86400000".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    harness::at_a_fresh_rate_window(86_400_000).await;
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
    let pattern = format!("{}rate:{{user:2}}:*", env.redis_prefix);
    let counter = synced_count(&mut on_primary, &pattern, 3).await;
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

/// The shared counter matching `pattern` once a sync has brought it to `count` (the API
/// syncs every 20 ms by default); its key.
async fn synced_count(
    redis: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
    count: i64,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys: Vec<String> = redis.keys(pattern).await.unwrap();
        if let [key] = &keys[..] {
            let counted: Option<i64> = redis.get(key).await.unwrap();
            if counted == Some(count) {
                return key.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{key} stays at {counted:?}, not {count}"
            );
        } else {
            assert!(Instant::now() < deadline, "counters {keys:?}");
        }
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A finished coupon's answers from memory (the finished gate) ask Redis nothing on their
/// way, yet are counted against the per-user limit like any other, and shared: the counter
/// reaches Redis by the next sync.
#[actix_web::test]
async fn answers_from_the_finished_gate_count_against_the_shared_limit() {
    let args = [
        "--rate-per-user=2",
        // A day: no window ends between the requests.
        "--rate-window-ms=86400000",
        "--finished-gate-ms=1000",
    ];
    harness::at_a_fresh_rate_window(86_400_000).await;
    let env = TestEnv::start_with_args(QueueKind::Kafka, &harness::brokers(), 0, &args).await;
    let coupon = env.coupon_with_quantity(1).await;
    assert_eq!(env.issue(coupon, 1).await.0, 201);
    let shut = Instant::now();
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
        shut.elapsed() < Duration::from_secs(1),
        "too slow to ask within the gate's hold: {:?}",
        shut.elapsed()
    );

    assert_eq!(answers, [410, 410, 429]);
    let mut redis = testkit::shared_redis::redis().await;
    synced_count(
        &mut redis,
        &format!("{}rate:{{user:3}}:*", env.redis_prefix),
        3,
    )
    .await;
    env.shutdown().await;
}

/// A limiter on the shared Redis under `prefix`, of 3 per user and `per_address` per
/// address per day, synced only by hand.
async fn limiter(prefix: &str, per_address: u32) -> RateLimiter {
    let url = std::env::var("REDIS_URL")
        .unwrap_or_else(|_| coupon_core::config::DEFAULT_REDIS_URL.into());
    limiter_on(
        &url,
        prefix,
        per_address,
        100_000,
        Duration::from_secs(3600),
    )
    .await
}

/// The same on Redis at `url`, counting at most `most_counted_here` clients in memory,
/// syncing every `sync` when run.
async fn limiter_on(
    url: &str,
    prefix: &str,
    per_address: u32,
    most_counted_here: usize,
    sync: Duration,
) -> RateLimiter {
    // A reply may be slow on a busy box: past the client's default 500 ms, a sync whose
    // script ran would be taken for failed and its counts sent twice. A Redis that is down
    // fails a sync after one reconnect, not the default six (seconds of backoff).
    let manager = redis::aio::ConnectionManager::new_with_config(
        redis::Client::open(url).unwrap(),
        redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(1),
    )
    .await
    .unwrap();
    RateLimiter::new(
        RedisConnection::Managed(manager),
        prefix.to_owned(),
        Limits {
            // A day: no window ends between the requests.
            window: Duration::from_secs(86_400),
            per_user: 3,
            per_address,
            sync,
            most_counted_here,
        },
    )
}

/// Two limiters on one Redis, as two replicas, synced by hand: the stated overshoot
/// exactly. One replica refuses past the limit on its own counts at once; another lets
/// the client through until its own sync tells it what the first counted, then refuses.
#[actix_web::test]
async fn replicas_share_each_limit_one_sync_late() {
    harness::at_a_fresh_rate_window(86_400_000).await;
    let prefix = testkit::shared_redis::prefix();
    let (a, b) = (limiter(&prefix, 0).await, limiter(&prefix, 0).await);
    let user = UserId::new(7).unwrap();
    let refused = |answer: Result<(), ApiError>| match answer {
        Err(ApiError::RateLimited { retry_after }) => {
            assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(86_400));
            true
        }
        Err(other) => panic!("{other:?}"),
        Ok(()) => false,
    };

    let mut on_a = Vec::new();
    for _ in 0..4 {
        on_a.push(refused(a.check(user, None).await));
    }
    assert_eq!(on_a, [false, false, false, true], "A's own counts, at once");
    // Nothing reached Redis yet: B has not heard of the user.
    assert!(
        !refused(b.check(user, None).await),
        "the overshoot: B's first"
    );
    assert_eq!(a.sync().await.unwrap(), 1, "A's one counter");
    assert!(!refused(b.check(user, None).await), "B has not synced yet");
    assert_eq!(b.sync().await.unwrap(), 1);
    // B now counts A's 4, its own 2, and this one.
    assert!(refused(b.check(user, None).await), "B after its sync");
    let mut redis = testkit::shared_redis::redis().await;
    let keys: Vec<String> = redis.keys(format!("{prefix}rate:*")).await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let shared: i64 = redis.get(&keys[0]).await.unwrap();
    assert_eq!(
        shared, 6,
        "every request synced counted once, refused ones too"
    );
    let ttl: i64 = redis.pttl(&keys[0]).await.unwrap();
    assert!(
        ttl > 86_400_000 && ttl <= 2 * 86_400_000,
        "a window after its window ends: {ttl} ms"
    );

    // A client address (of a limit of 2), shared the same way; a user under its limit is
    // refused for it.
    let (a, b) = (limiter(&prefix, 2).await, limiter(&prefix, 2).await);
    let address = Some("10.0.0.1".parse().unwrap());
    let others = [11, 12, 13].map(|id| UserId::new(id).unwrap());
    assert!(!refused(a.check(others[0], address).await));
    assert!(!refused(a.check(others[1], address).await));
    assert_eq!(
        a.sync().await.unwrap(),
        3,
        "two users' counters and the address's"
    );
    assert!(
        !refused(b.check(others[2], address).await),
        "B's first of it"
    );
    b.sync().await.unwrap();
    assert!(
        refused(b.check(others[2], address).await),
        "the address's fourth, though user 13's second"
    );
    assert_eq!(
        b.sync().await.unwrap(),
        2,
        "only what was counted since: user 13's and the address's"
    );
    assert_eq!(b.sync().await.unwrap(), 0, "nothing new, nothing sent");

    // An IPv6 client is its /64: a fresh address in it per request is the same client.
    let in_one_64 = ["2001:db8:0:1::1", "2001:db8:0:1::2", "2001:db8:0:1::ffff"];
    let mut answers = Vec::new();
    for (id, address) in (21..).zip(in_one_64) {
        let user = UserId::new(id).unwrap();
        answers.push(refused(a.check(user, Some(address.parse().unwrap())).await));
    }
    assert_eq!(answers, [false, false, true]);
    let another_64 = Some("2001:db8:0:2::1".parse().unwrap());
    assert!(!refused(
        a.check(UserId::new(24).unwrap(), another_64).await
    ));
}

/// A sync that fails keeps its counts and sends them with the next: none is lost to the
/// other replicas. The limiter's Redis is killed and started again (empty: the counters
/// are never written to its append-only file).
#[actix_web::test]
async fn a_failed_sync_sends_its_counts_with_the_next() {
    harness::at_a_fresh_rate_window(86_400_000).await;
    let mut redis = RedisServer::start(&data_dir("sync"), &[]).await.unwrap();
    let prefix = testkit::shared_redis::prefix();
    let limiter = limiter_on(&redis.url(), &prefix, 0, 100_000, Duration::from_secs(3600)).await;
    let user = UserId::new(7).unwrap();
    limiter.check(user, None).await.unwrap();
    limiter.check(user, None).await.unwrap();
    redis.kill();
    limiter.sync().await.unwrap_err();
    redis.restart().await.unwrap();
    // The connection finds the new process on its own, a try or two later.
    let deadline = Instant::now() + Duration::from_secs(10);
    let synced = loop {
        match limiter.sync().await {
            Ok(synced) => break synced,
            Err(err) => assert!(Instant::now() < deadline, "{err}"),
        }
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(synced, 1, "the user's counter, sent again");
    let mut on_redis = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = on_redis.keys(format!("{prefix}rate:*")).await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let shared: i64 = on_redis.get(&keys[0]).await.unwrap();
    assert_eq!(shared, 2, "both requests, once each");
}

/// Past the most clients an instance counts in memory, a new one is counted straight in
/// Redis on its request's way, and refused past its limit like any other: a flood of
/// clients gets nobody through uncounted.
#[actix_web::test]
async fn past_the_most_counted_here_a_client_is_counted_in_redis() {
    harness::at_a_fresh_rate_window(86_400_000).await;
    let prefix = testkit::shared_redis::prefix();
    let url = std::env::var("REDIS_URL")
        .unwrap_or_else(|_| coupon_core::config::DEFAULT_REDIS_URL.into());
    let limiter = limiter_on(&url, &prefix, 0, 2, Duration::from_secs(3600)).await;
    for id in [1, 2] {
        limiter.check(UserId::new(id).unwrap(), None).await.unwrap();
    }
    let third = UserId::new(3).unwrap();
    let mut refused = Vec::new();
    for _ in 0..4 {
        refused.push(matches!(
            limiter.check(third, None).await,
            Err(ApiError::RateLimited { .. })
        ));
    }
    assert_eq!(refused, [false, false, false, true]);
    let mut redis = testkit::shared_redis::redis().await;
    let keys: Vec<String> = redis
        .keys(format!("{prefix}rate:{{user:3}}:*"))
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let shared: i64 = redis.get(&keys[0]).await.unwrap();
    assert_eq!(shared, 4, "every request of the third, with no sync");
    assert_eq!(limiter.sync().await.unwrap(), 2, "the two counted here");
}

/// A log that a test reads back: what the limiter said, line by line.
#[derive(Clone, Default)]
struct Said(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Said {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Through a Redis outage the syncs fail 50 times a second: the log says so once, and
/// once more when they work again, while the metric counts every failure.
#[actix_web::test]
async fn an_outage_is_said_once_not_at_every_sync() {
    harness::at_a_fresh_rate_window(86_400_000).await;
    let said = Said::default();
    let writer = said.clone();
    let _logging = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish(),
    );
    let mut redis = RedisServer::start(&data_dir("outage"), &[]).await.unwrap();
    let prefix = testkit::shared_redis::prefix();
    let limiter = limiter_on(&redis.url(), &prefix, 0, 100_000, Duration::from_millis(20)).await;
    let metrics = std::sync::Arc::new(issuer_api::metrics::Metrics::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let user = UserId::new(7).unwrap();
    let drive = async {
        redis.kill();
        let deadline = Instant::now() + Duration::from_secs(30);
        // Counts to send, so that every sync tries.
        while metrics.rate_limit_sync_failures.get() < 5 {
            limiter.check(user, None).await.ok();
            assert!(Instant::now() < deadline, "the syncs never failed");
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
        redis.restart().await.unwrap();
        while metrics.rate_limit_syncs.get() < 1 {
            limiter.check(user, None).await.ok();
            assert!(Instant::now() < deadline, "the syncs never worked again");
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
    };
    tokio::join!(limiter.run(metrics.clone(), stop.clone()), drive);
    let log = String::from_utf8(said.0.lock().unwrap().clone()).unwrap();
    assert_eq!(
        log.matches("rate-limit counts not shared").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("rate-limit counts shared again").count(),
        1,
        "{log}"
    );
}
