//! A replicated Redis under Sentinel (`deploy/redis/sentinel.sh`: a primary, two replicas,
//! three Sentinels), the services following the primary through the Sentinels: kill -9 of
//! the primary under a sale loses no "yes", sells nothing twice, and answers 503 (never a
//! lie) while the Sentinels elect a new primary and the coupon is rebuilt on it; a primary
//! cut off from its peers, which the services still reach, is left for the new one.

// The harness below is test code too: a panic is exactly the failure report wanted.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use coupon_core::config::QueueKind;
use issuer_bench::sentinel_topology::SentinelTopology;
use support::TestEnv;

/// A topology of the test's own, and the services following its primary through the
/// Sentinels, with a replica confirming every answer.
struct Replicated {
    dir: std::path::PathBuf,
    topology: SentinelTopology,
    /// The primary at start.
    primary: u16,
    env: TestEnv,
}

impl Replicated {
    async fn start(queue: QueueKind) -> Self {
        let dir =
            std::env::temp_dir().join(format!("coupon-sentinel-{}", uuid::Uuid::new_v4().simple()));
        let topology = SentinelTopology::start(&dir).unwrap();
        topology.await_replicas().await.unwrap();
        let primary = topology.primary().await.unwrap();
        let args = [
            format!("--redis-url=redis://127.0.0.1:{primary}"),
            format!("--redis-sentinels={}", topology.sentinel_list()),
            "--redis-min-replicas=1".to_owned(),
            "--redis-replica-timeout-ms=300".to_owned(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env = TestEnv::start_with_args(queue, &support::brokers(), 1, &args).await;
        Self {
            dir,
            topology,
            primary,
            env,
        }
    }
}

async fn primary_killed_under_a_sale(queue: QueueKind) {
    let Replicated {
        dir,
        topology,
        primary,
        env,
    } = Replicated::start(queue).await;
    let coupon = env.coupon_with_quantity(10).await;
    for user in 1..=4 {
        // Before the fault a WAIT may still time out on a loaded machine (300 ms here): a
        // 503 is an honest "retry", and the answer that counts is the one after it.
        assert_eq!(env.issue_retrying(coupon, user).await.0, 201, "user {user}");
    }

    topology.kill(primary).unwrap();
    let killed = Instant::now();
    let mut first_yes_after = None;
    for user in 5..=10 {
        let (status, body) = env.issue_retrying(coupon, user).await;
        assert_eq!(status, 201, "user {user} after the failover: {body}");
        first_yes_after.get_or_insert_with(|| killed.elapsed());
    }
    for user in 11..=12 {
        let (status, body) = env.issue_retrying(coupon, user).await;
        assert_eq!(status, 410, "user {user}, sold out: {body}");
    }
    for user in 1..=10 {
        assert_eq!(env.issue_retrying(coupon, user).await.0, 409, "user {user}");
    }
    assert_eq!(
        env.rows_when_settled(coupon, 10).await,
        (1..=10).collect::<Vec<_>>()
    );
    assert!(
        support::failed_events(&env).await.is_empty(),
        "a winner's event was refused by the database guard"
    );
    eprintln!(
        "{queue}: first 201 {:.1} s after kill -9 of the primary",
        first_yes_after.unwrap().as_secs_f64()
    );
    env.shutdown().await;
    drop(topology);
    let _ = std::fs::remove_dir_all(dir);
}

/// How long the API may take to leave a primary that lost its replicas for the one the
/// Sentinels elected: its next refused write, a reconnect through the Sentinels, a rebuild.
const LEAVES_THE_OLD_PRIMARY: Duration = Duration::from_secs(20);

/// A split brain as Sentinel resolves it: the primary is cut off from its replicas and the
/// Sentinels, which elect another, while the API still reaches the old one. The old one
/// refuses writes (`min-replicas-to-write`, NOREPLICAS), so it tells nobody yes; the API
/// must not stay there until the partition heals, but ask the Sentinels again.
#[actix_web::test]
async fn a_primary_cut_off_from_its_peers_is_left_for_the_new_one() {
    let Replicated {
        dir,
        topology,
        primary,
        env,
    } = Replicated::start(QueueKind::Redis).await;
    let coupon = env.coupon_with_quantity(6).await;
    for user in 1..=2 {
        // Before the fault a WAIT may still time out on a loaded machine (300 ms here): a
        // 503 is an honest "retry", and the answer that counts is the one after it.
        assert_eq!(env.issue_retrying(coupon, user).await.0, 201, "user {user}");
    }

    topology.split(primary).unwrap();
    let new = topology.await_failover_from(primary).await.unwrap();
    let elected = Instant::now();
    let mut user = 3;
    while user <= 6 {
        let (status, body) = env.issue(coupon, user).await;
        match status {
            201 => user += 1,
            503 => {
                assert!(
                    elected.elapsed() < LEAVES_THE_OLD_PRIMARY,
                    "still 503 {:?} after {new} was elected: {body}",
                    elected.elapsed()
                );
                actix_web::rt::time::sleep(Duration::from_millis(200)).await;
            }
            _ => panic!("user {user}: {status} {body}"),
        }
    }
    eprintln!(
        "6 of 6 sold {:.1} s after the Sentinels elected {new}",
        elected.elapsed().as_secs_f64()
    );

    topology.heal(primary).unwrap();
    topology.await_replica(primary).await.unwrap();
    assert_eq!(env.issue_retrying(coupon, 7).await.0, 410);
    assert_eq!(
        env.rows_when_settled(coupon, 6).await,
        (1..=6).collect::<Vec<_>>()
    );
    assert!(support::failed_events(&env).await.is_empty());
    env.shutdown().await;
    drop(topology);
    let _ = std::fs::remove_dir_all(dir);
}

#[actix_web::test]
async fn a_primary_killed_under_sentinel_loses_no_yes_in_kafka_mode() {
    primary_killed_under_a_sale(QueueKind::Kafka).await;
}

#[actix_web::test]
async fn a_primary_killed_under_sentinel_loses_no_yes_in_the_redis_queue_mode() {
    primary_killed_under_a_sale(QueueKind::Redis).await;
}
