//! Failover on a three-broker Apache Kafka cluster (topic replicated 3 times, 2 in sync to
//! acknowledge), under load: what users were told must stay true while brokers die.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use issuer_bench::kafka_cluster::KafkaCluster;
use support::TestEnv;

/// Generous against the measured figure (see the note printed by the test): the brokers'
/// 6 s session timeout, the producer's metadata refresh, and a loaded 2-core machine.
const RESUME_BOUND: Duration = Duration::from_secs(30);

struct Answer {
    user: i64,
    sent: Instant,
    answered: Instant,
    status: u16,
}

/// `clients` concurrent loops until `until`, each request a new user: phase `phase` numbers
/// its users apart from every other phase's.
async fn load(env: &TestEnv, coupon: i64, phase: i64, clients: i64, until: Instant) -> Vec<Answer> {
    let loops = futures_util::future::join_all((0..clients).map(|client| async move {
        let mut answers = Vec::new();
        let mut user = phase * 100_000_000 + client * 1_000_000;
        while Instant::now() < until {
            user += 1;
            let sent = Instant::now();
            let (status, _) = env.issue(coupon, user).await;
            answers.push(Answer {
                user,
                sent,
                answered: Instant::now(),
                status,
            });
        }
        answers
    }))
    .await;
    loops.into_iter().flatten().collect()
}

/// Waits until nothing is pending in Redis and PostgreSQL's rows are exactly Redis's
/// holders; returns the rows. A 201 whose event was lost would leave a holder without a
/// row; a slot given back although its event reached the log, a row without a holder.
async fn settled_rows(env: &TestEnv, coupon: i64) -> Vec<i64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pending = env.pending_entries(coupon).await;
        let holders = env.redis_holders(coupon).await;
        let rows = env.rows(coupon).await;
        if pending.is_empty() && rows == holders {
            return rows;
        }
        let without_row: Vec<_> = holders
            .iter()
            .filter(|u| rows.binary_search(u).is_err())
            .collect();
        let without_holder: Vec<_> = rows
            .iter()
            .filter(|u| holders.binary_search(u).is_err())
            .collect();
        assert!(
            Instant::now() < deadline,
            "not settled: pending {pending:?}, holders without a row {without_row:?}, \
             rows without a holder {without_holder:?}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(250)).await;
    }
}

fn assert_every_success_is_a_row(answers: &[Answer], rows: &[i64]) {
    let lost: Vec<i64> = answers
        .iter()
        .filter(|a| a.status == 201 && rows.binary_search(&a.user).is_err())
        .map(|a| a.user)
        .collect();
    assert!(lost.is_empty(), "201 without a row: {lost:?}");
    let unexpected: Vec<(i64, u16)> = answers
        .iter()
        .filter(|a| !matches!(a.status, 201 | 503))
        .map(|a| (a.user, a.status))
        .collect();
    assert!(
        unexpected.is_empty(),
        "answers other than 201/503: {unexpected:?}"
    );
}

#[actix_web::test]
async fn the_partition_leader_killed_under_load_loses_no_acknowledged_event() {
    let cluster = Arc::new(KafkaCluster::start(3).unwrap());
    let env = TestEnv::start_replicated(&cluster.bootstrap(), 1).await;
    let coupon = env.coupon_with_quantity(1_000_000).await;
    assert_eq!(env.issue(coupon, 1).await.0, 201, "the topic is up");
    let leader = cluster.leader(&env.topic, 0).unwrap();

    let started = Instant::now();
    let killed_at = started + Duration::from_secs(3);
    let kill = {
        let cluster = cluster.clone();
        async move {
            actix_web::rt::time::sleep_until(killed_at.into()).await;
            cluster.kill(leader).unwrap();
        }
    };
    let (answers, ()) = futures_util::future::join(
        load(&env, coupon, 1, 16, started + Duration::from_secs(20)),
        kill,
    )
    .await;

    let before = answers
        .iter()
        .filter(|a| a.status == 201 && a.answered < killed_at)
        .count();
    let resumed = answers
        .iter()
        .filter(|a| a.status == 201 && a.sent > killed_at)
        .map(|a| a.answered - killed_at)
        .min()
        .expect("201s resumed after the leader died");
    let unavailable = answers.iter().filter(|a| a.status == 503).count();
    eprintln!(
        "leader {leader} killed: {before} x 201 before; the first 201 sent after the kill was \
         answered {resumed:?} after it; {unavailable} x 503 in between; {} answers in all",
        answers.len()
    );
    assert!(before > 0, "load ran before the kill");
    assert!(
        resumed < RESUME_BOUND,
        "201s resumed {resumed:?} after the kill"
    );
    assert_ne!(
        cluster.leader(&env.topic, 0).unwrap(),
        leader,
        "leadership moved"
    );

    let rows = settled_rows(&env, coupon).await;
    assert_every_success_is_a_row(&answers, &rows);
    env.shutdown().await;
}

#[actix_web::test]
async fn two_of_three_brokers_down_answers_503_and_never_201_then_every_success_is_a_row() {
    let cluster = Arc::new(KafkaCluster::start(3).unwrap());
    let env = TestEnv::start_replicated(&cluster.bootstrap(), 1).await;
    let coupon = env.coupon_with_quantity(1_000_000).await;
    let before = load(&env, coupon, 1, 4, Instant::now() + Duration::from_secs(2)).await;
    assert!(before.iter().any(|a| a.status == 201), "the topic is up");

    // The leader and one follower: the survivor alone can acknowledge nothing.
    let leader = cluster.leader(&env.topic, 0).unwrap();
    let victims = [leader, leader % 3 + 1];
    for node in victims {
        cluster.kill(node).unwrap();
    }
    let during = load(&env, coupon, 2, 16, Instant::now() + Duration::from_secs(8)).await;
    let successes: Vec<i64> = during
        .iter()
        .filter(|a| a.status != 503)
        .map(|a| a.user)
        .collect();
    assert!(!during.is_empty());
    assert!(
        successes.is_empty(),
        "with two of three brokers down, only 503: {successes:?}"
    );

    // The cluster comes back; the in-doubt admissions are republished by the reconciler.
    let restart = cluster.clone();
    actix_web::rt::task::spawn_blocking(move || restart.restart(&victims).unwrap())
        .await
        .unwrap();
    let back = Instant::now();
    let mut after = Vec::new();
    for phase in 3.. {
        after.extend(
            load(
                &env,
                coupon,
                phase,
                4,
                Instant::now() + Duration::from_secs(1),
            )
            .await,
        );
        if after.iter().any(|a| a.status == 201) {
            break;
        }
        assert!(
            back.elapsed() < RESUME_BOUND,
            "sales resumed after the restart"
        );
    }
    eprintln!(
        "two brokers restarted: the first 201 came {:?} after both were back",
        back.elapsed()
    );
    let rows = settled_rows(&env, coupon).await;
    let answers: Vec<Answer> = before.into_iter().chain(during).chain(after).collect();
    assert_every_success_is_a_row(&answers, &rows);
    env.shutdown().await;
}
