//! A replicated Redis under Sentinel (`deploy/redis/sentinel.sh`: a primary, two replicas,
//! three Sentinels), the services following the primary through the Sentinels: kill -9 of
//! the primary under a sale loses no "yes", sells nothing twice, and answers 503 (never a
//! lie) while the Sentinels elect a new primary and the coupon is rebuilt on it; a primary
//! cut off from its peers, which the services still reach, is left for the new one; a
//! planned switchover (`issuer-api hand-over`) carries the coupons over with no rebuild.

// The harness below is test code too: a panic is exactly the failure report wanted.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use coupon_core::domain::QueueKind;
use testkit::harness::{self, TestEnv};
use testkit::sentinel_topology::SentinelTopology;

/// A topology of the test's own, and the services following its primary through the
/// Sentinels, every replica confirming every answer (as the API does under Sentinel).
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
            // No REDIS_MIN_REPLICAS: under Sentinel every replica it knows confirms.
            "--redis-replica-timeout-ms=300".to_owned(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env = TestEnv::start_with_args(queue, &harness::brokers(), 1, &args).await;
        Self {
            dir,
            topology,
            primary,
            env,
        }
    }
}

/// Shuts the services down, stops the topology and removes its folder.
async fn tear_down(env: TestEnv, topology: SentinelTopology, dir: std::path::PathBuf) {
    env.shutdown().await;
    drop(topology);
    let _ = std::fs::remove_dir_all(dir);
}

/// `user`, new to `coupon`, wins it. A WAIT may time out on a loaded machine (300 ms
/// here): a 503 is an honest "retry", and after one the admission may have stood, so the
/// retry's 409 is a yes too.
async fn wins(env: &TestEnv, coupon: i64, user: i64) {
    let (status, body) = env.issue_retrying(coupon, user).await;
    assert!(matches!(status, 201 | 409), "user {user}: {status} {body}");
}

/// A connection to the node on `port` itself, whatever its role.
async fn node(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Whether the node on `port` has `user` among `coupon`'s holders.
async fn holds(env: &TestEnv, port: u16, coupon: i64, user: i64) -> bool {
    redis::cmd("SISMEMBER")
        .arg(env.keys(coupon).issued)
        .arg(user)
        .query_async(&mut node(port).await)
        .await
        .unwrap()
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
        wins(&env, coupon, user).await;
    }

    topology.kill(primary).unwrap();
    let killed = Instant::now();
    // Every replica confirms a "yes": the new primary has one until the old comes back,
    // restarted as an orchestrator would, and the Sentinels make it a replica.
    topology.await_failover_from(primary).await.unwrap();
    topology.start_node(primary).unwrap();
    let mut first_yes_after = None;
    for user in 5..=10 {
        // A 409 after a 503 is a yes too: the admission stood, its confirmation timed out.
        let (status, body) = env.issue_retrying(coupon, user).await;
        assert!(
            matches!(status, 201 | 409),
            "user {user} after the failover: {status} {body}"
        );
        first_yes_after.get_or_insert_with(|| killed.elapsed());
    }
    for user in 11..=12 {
        let (status, body) = env.issue_retrying(coupon, user).await;
        assert_eq!(status, 410, "user {user}, sold out: {body}");
    }
    for user in 1..=10 {
        // A holder asking again is told it holds the coupon: 409, or 201 while its event
        // is still being delivered (the request republishes it).
        let (status, body) = env.issue_retrying(coupon, user).await;
        assert!(matches!(status, 201 | 409), "user {user}: {status} {body}");
    }
    assert_eq!(
        env.rows_when_settled(coupon, 10).await,
        (1..=10).collect::<Vec<_>>()
    );
    assert!(
        harness::failed_events(&env).await.is_empty(),
        "a winner's event was refused by the database guard"
    );
    eprintln!(
        "{queue}: first 201 {:.1} s after kill -9 of the primary",
        first_yes_after.unwrap().as_secs_f64()
    );
    tear_down(env, topology, dir).await;
}

/// How long the API may take to sell again once the partition healed: the Sentinels demote
/// the old primary (a full sync from the new one, which then has every replica again), the
/// API's next refused write sends it to the new one, a rebuild.
const LEAVES_THE_OLD_PRIMARY: Duration = Duration::from_secs(20);

/// A split brain as Sentinel resolves it: the primary is cut off from its replicas and the
/// Sentinels, which elect another, while the API still reaches the old one. The old one
/// refuses writes (`min-replicas-to-write`, NOREPLICAS), so it tells nobody yes; the new
/// one, with one replica of the two every "yes" waits for, confirms nothing either until
/// the old one rejoins as its replica. Nobody is told yes in between, and sales resume
/// once the partition heals.
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
        wins(&env, coupon, user).await;
    }

    topology.split(primary, None).unwrap();
    let new = topology.await_failover_from(primary).await.unwrap();
    let (status, body) = env.issue(coupon, 3).await;
    assert_eq!(
        status, 503,
        "user 3 while the old primary is cut off: {body}"
    );

    topology.heal(primary, None).unwrap();
    let healed = Instant::now();
    let mut user = 3;
    let mut unknown = false;
    while user <= 6 {
        let (status, body) = env.issue(coupon, user).await;
        match status {
            // A 409 after a 503 is a yes too: the admission stood, its confirmation timed
            // out.
            201 => (user, unknown) = (user + 1, false),
            409 if unknown => (user, unknown) = (user + 1, false),
            503 => {
                assert!(
                    healed.elapsed() < LEAVES_THE_OLD_PRIMARY,
                    "still 503 {:?} after the heal ({new} elected): {body}",
                    healed.elapsed()
                );
                unknown = true;
                actix_web::rt::time::sleep(Duration::from_millis(200)).await;
            }
            _ => panic!("user {user}: {status} {body}"),
        }
    }
    eprintln!(
        "6 of 6 sold {:.1} s after the heal ({new} elected)",
        healed.elapsed().as_secs_f64()
    );
    topology.await_replica_of(primary, new).await.unwrap();
    assert_eq!(env.issue_retrying(coupon, 7).await.0, 410);
    assert_eq!(
        env.rows_when_settled(coupon, 6).await,
        (1..=6).collect::<Vec<_>>()
    );
    assert!(harness::failed_events(&env).await.is_empty());
    tear_down(env, topology, dir).await;
}

/// A partition that leaves a replica on the old primary's side: the Sentinels promote the
/// other replica, while the old primary, which the API still reaches, keeps the replica
/// that goes on confirming its writes (WAIT) and satisfies `min-replicas-to-write`. What
/// only that replica confirmed after the cut is lost when the Sentinels repoint it to the
/// new primary. So a "yes" waits for every replica the Sentinels know: the admission the
/// old primary takes after the cut is answered 503, never 201.
#[actix_web::test]
async fn a_yes_only_the_replica_on_the_old_primarys_side_confirmed_is_never_given() {
    let Replicated {
        dir,
        topology,
        primary,
        mut env,
    } = Replicated::start(QueueKind::Redis).await;
    let coupon = env.coupon_with_quantity(4).await;
    let mut told_yes = Vec::new();
    for user in 1..=2 {
        wins(&env, coupon, user).await;
        told_yes.push(user);
    }

    // The workers lag: what the old primary's stream takes from now on stays there until
    // the partition is resolved (a worker that drained it first would save the yes).
    env.stop_workers().await;
    let kept = topology.replica_of(primary).unwrap();
    topology.split(primary, Some(kept)).unwrap();
    // The Sentinels take a second (down-after-milliseconds) to find the old primary gone,
    // and longer to elect another: the API is still on the old one, as this checks.
    let (during, body) = env.issue(coupon, 3).await;
    assert!(
        holds(&env, primary, coupon, 3).await,
        "user 3's admission did not reach the old primary: {during} {body}"
    );
    if during == 201 {
        told_yes.push(3);
    }

    let new = topology.await_failover_from(primary).await.unwrap();
    topology.heal(primary, Some(kept)).unwrap();
    topology.await_replica_of(primary, new).await.unwrap();
    topology.await_replicas().await.unwrap();
    env.start_worker(500).await;
    for user in 4..=6 {
        // New users: a 409 (after a 503) is a yes as much as a 201.
        if matches!(env.issue_retrying(coupon, user).await.0, 201 | 409) {
            told_yes.push(user);
        }
    }
    let rows = env.rows_when_settled(coupon, 4).await;
    for user in &told_yes {
        assert!(
            rows.contains(user),
            "user {user} was told 201 and has no row (user 3 answered {during} on the old \
             primary, {new} elected): rows {rows:?}"
        );
    }
    assert_eq!(during, 503, "user 3 on the cut-off primary: {body}");
    // And an API told to wait for more replicas than the Sentinels know refuses to start.
    let Err(refused) = env
        .build_another_api(&["--redis-min-replicas=3".to_owned()])
        .await
    else {
        panic!("an API waiting for 3 replicas of 2 started");
    };
    assert!(
        format!("{refused:#}").contains("no write could ever be confirmed"),
        "{refused:#}"
    );
    tear_down(env, topology, dir).await;
}

/// How long a worker gets to read an entry twice (read, and claimed back after
/// `--claim-idle-ms`), or to start persisting it.
const READS_IT_TWICE: Duration = Duration::from_secs(30);

/// The Redis queue mode's worker left with a primary cut off from the Sentinels and one
/// replica (its socket there never broke; here, a plain URL naming that node). The old
/// primary's stream has an entry the API answered 503 (only the replica on its side
/// confirmed it), which the promoted node never got. Once that replica is re-pointed to the
/// promoted node, that node takes writes, and its rebuild counts the slot free and sells it
/// again. A worker that took the entry before and persisted it after that rebuild (here its
/// insert waits on the coupon's row, which the test holds locked meanwhile) takes the slot
/// of a user told yes, whose event the database guard then refuses. So a worker persists an
/// entry only once every replica has it (a WAIT on the read's own socket), and the one left
/// behind takes nothing.
#[actix_web::test]
async fn a_worker_left_with_the_cut_off_primary_persists_nothing_the_new_one_lacks() {
    use diesel_async::RunQueryDsl;
    let Replicated {
        dir,
        topology,
        primary,
        mut env,
    } = Replicated::start(QueueKind::Redis).await;
    let coupon = env.coupon_with_quantity(2).await;
    wins(&env, coupon, 1).await;
    assert_eq!(env.rows_when_settled(coupon, 1).await, [1]);
    env.stop_workers().await;

    let kept = topology.replica_of(primary).unwrap();
    topology.split(primary, Some(kept)).unwrap();
    let (status, body) = env.issue(coupon, 2).await;
    assert_eq!(status, 503, "user 2 on the cut-off primary: {body}");
    assert!(holds(&env, primary, coupon, 2).await);

    // The worker left behind reads user 2's entry, and either starts persisting it (and
    // waits on the coupon's row) or, unconfirmed, leaves it pending until it claims it back.
    let mut holder = env.lock_coupon_row(coupon).await;
    let mut left_behind: Vec<String> = env
        .worker_args(500)
        .into_iter()
        .filter(|arg| !arg.starts_with("--redis-sentinel") && !arg.starts_with("--redis-url="))
        .collect();
    left_behind.extend([
        format!("--redis-url=redis://127.0.0.1:{primary}"),
        "--redis-min-replicas=2".to_owned(),
    ]);
    env.start_worker_with(left_behind).await;
    let stream = env.stream(coupon);
    let reading = Instant::now();
    loop {
        assert!(
            reading.elapsed() < READS_IT_TWICE,
            "the worker on {primary} neither persisted nor read user 2's entry again"
        );
        if env.waiting_for_a_lock().await > 0 {
            break;
        }
        let pending: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(&env.group)
            .arg("-")
            .arg("+")
            .arg(10)
            .query_async(&mut node(primary).await)
            .await
            .unwrap();
        if pending.ids.iter().any(|entry| entry.times_delivered >= 2) {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }

    // The kept replica is re-pointed to the new primary, which then takes writes: the API
    // rebuilds the coupon there, reading PostgreSQL's rows (without user 2: the worker's
    // insert waits) before its own write to the coupon's row waits too.
    let new = topology.await_failover_from(primary).await.unwrap();
    topology.heal(kept, None).unwrap();
    topology.await_replica_of(kept, new).await.unwrap();
    let worker_waiting = env.waiting_for_a_lock().await;
    let mut last = None;
    while env.waiting_for_a_lock().await == worker_waiting {
        assert!(
            last.as_ref().is_none_or(|(tries, _)| *tries < 100),
            "no rebuild on {new}: {last:?}"
        );
        let (status, body) = env.issue(coupon, 3).await;
        assert_eq!(status, 503, "user 3 on {new} before its rebuild: {body}");
        last = Some((last.map_or(1, |(tries, _)| tries + 1), body));
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    // The worker's insert goes first (it waited first), then the rebuild reopens the
    // coupon with the holders it read, and admits user 3 (503 still, the old primary being
    // a replica it waits for, but the admission stands).
    diesel::sql_query("COMMIT")
        .execute(&mut holder)
        .await
        .unwrap();
    let mut last = None;
    while !holds(&env, new, coupon, 3).await {
        assert!(
            last.as_ref().is_none_or(|(tries, _)| *tries < 100),
            "user 3 never admitted on {new}: {last:?}"
        );
        let (status, body) = env.issue(coupon, 3).await;
        assert!(
            matches!(status, 503 | 201),
            "user 3 on {new}: {status} {body}"
        );
        last = Some((last.map_or(1, |(tries, _)| tries + 1), body));
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
    env.stop_workers().await;

    topology.heal(primary, None).unwrap();
    topology.await_replica_of(primary, new).await.unwrap();
    topology.await_replicas().await.unwrap();
    env.start_worker(500).await;
    wins(&env, coupon, 3).await;
    let rows = env.rows_when_settled(coupon, 2).await;
    assert_eq!(
        rows,
        [1, 3],
        "user 3, told yes on {new}, must hold the second slot, not user 2 (told 503 on \
         {primary})"
    );
    tear_down(env, topology, dir).await;
}

/// How long the API may take to wait for a replica the Sentinels have just learnt of: it
/// counts them each second.
const COUNTS_THE_NEW_REPLICA: Duration = Duration::from_secs(10);

/// A replica added while the API runs could be promoted like the others, so the API waits
/// for it too once the Sentinels know it: frozen, it holds every "yes" back (503), and
/// thawed, sales go on.
#[actix_web::test]
async fn a_replica_added_while_the_api_runs_is_waited_for_too() {
    let Replicated {
        dir,
        mut topology,
        primary,
        env,
    } = Replicated::start(QueueKind::Redis).await;
    let coupon = env.coupon_with_quantity(100).await;
    wins(&env, coupon, 1).await;

    let added = topology.add_replica(primary).unwrap();
    topology.await_replicas().await.unwrap();
    topology.signal(added, "STOP").unwrap();
    let frozen = Instant::now();
    let mut user = 2;
    loop {
        let (status, body) = env.issue(coupon, user).await;
        match status {
            503 => break,
            201 => {
                assert!(
                    frozen.elapsed() < COUNTS_THE_NEW_REPLICA,
                    "still 201 {:?} after replica {added} was added and frozen: {body}",
                    frozen.elapsed()
                );
                user += 1;
            }
            _ => panic!("user {user}: {status} {body}"),
        }
    }
    eprintln!(
        "503 {:.1} s after the added replica froze",
        frozen.elapsed().as_secs_f64()
    );

    topology.signal(added, "CONT").unwrap();
    // The user told 503 holds a slot (the admission stood): 409 or, confirmed now, 201.
    wins(&env, coupon, user).await;
    wins(&env, coupon, user + 1).await;

    // Gone for good and forgotten (SENTINEL RESET): the API waits for it a while longer
    // (a Sentinel listing fewer may be one just restarted), then sells on the two left.
    topology.kill(added).unwrap();
    topology.reset().await.unwrap();
    let forgotten = Instant::now();
    let (status, body) = env.issue(coupon, user + 2).await;
    assert_eq!(status, 503, "right after the reset: {body}");
    wins(&env, coupon, user + 2).await;
    eprintln!(
        "sales went on {:.1} s after the reset",
        forgotten.elapsed().as_secs_f64()
    );
    let user = user + 1;
    let expected: Vec<i64> = (1..=user + 1).collect();
    assert_eq!(
        env.rows_when_settled(coupon, expected.len()).await,
        expected
    );
    tear_down(env, topology, dir).await;
}

#[actix_web::test]
async fn a_primary_killed_under_sentinel_loses_no_yes_in_kafka_mode() {
    primary_killed_under_a_sale(QueueKind::Kafka).await;
}

#[actix_web::test]
async fn a_primary_killed_under_sentinel_loses_no_yes_in_the_redis_queue_mode() {
    primary_killed_under_a_sale(QueueKind::Redis).await;
}

/// A planned switchover through `issuer-api hand-over`: the coupon is closed and marked on
/// the old primary, the Sentinels fail over, and it opens on the new primary as it was, with
/// no rebuild (in Kafka mode one costs a publish window and a fence). The sale goes on.
#[actix_web::test]
async fn a_hand_over_carries_the_coupon_to_the_new_primary_without_a_rebuild() {
    use coupon_core::domain::CouponId;
    use issuer_api::issuing::HandedOver;
    let Replicated {
        dir,
        topology,
        primary,
        env,
    } = Replicated::start(QueueKind::Kafka).await;
    let coupon = env.coupon_with_quantity(6).await;
    for user in 1..=3 {
        wins(&env, coupon, user).await;
    }
    let config = env.command(&["hand-over"]);
    let started = Instant::now();
    let outcomes = issuer_api::commands::hand_over(
        &config,
        None,
        Duration::from_secs(30),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert_eq!(
        outcomes,
        vec![(CouponId::new(coupon).unwrap(), HandedOver::Carried)]
    );
    assert_ne!(
        topology.primary().await.unwrap(),
        primary,
        "the Sentinels named a new primary"
    );
    let mut first_yes_after = None;
    for user in 4..=6 {
        wins(&env, coupon, user).await;
        first_yes_after.get_or_insert_with(|| started.elapsed());
    }
    assert_eq!(env.issue_retrying(coupon, 7).await.0, 410, "sold out");
    assert_eq!(
        env.rows_when_settled(coupon, 6).await,
        (1..=6).collect::<Vec<_>>()
    );
    assert!(
        harness::failed_events(&env).await.is_empty(),
        "a winner's event was refused by the database guard"
    );
    let (_, metrics) = env.get_text("/metrics").await;
    assert!(
        metrics.contains("coupon_rebuilds_total{outcome=\"started\"} 0"),
        "the API rebuilt the coupon:\n{metrics}"
    );
    eprintln!(
        "hand-over: {:.1} s from the close to the open, first 201 {:.1} s after the close",
        took.as_secs_f64(),
        first_yes_after.unwrap().as_secs_f64()
    );
    tear_down(env, topology, dir).await;
}
