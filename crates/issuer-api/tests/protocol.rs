//! The issue protocol's interleavings, each forced at its exact point by driving Redis and
//! the broker directly: what a user is told must stay true whoever runs in between.

mod support;

use std::time::{Duration, Instant};

use coupon_core::admission::{AdmissionScripts, AdmitReply};
use coupon_core::config::QueueKind;
use coupon_core::domain::{CouponId, UserId};
use coupon_core::ledger::{Ledger, PendingEntry};
use issuer_bench::kafka_cluster::KafkaCluster;
use support::TestEnv;

/// The test harness's publish window: `--publish-timeout-ms=3000` plus the API's 2 s margin
/// for the report's way back.
const PUBLISH_WINDOW: Duration = Duration::from_secs(5);

async fn wait_until_pending(env: &TestEnv, coupon: i64, user: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !env.pending_entries(coupon).await.contains(&user) {
        assert!(Instant::now() < deadline, "user {user} was never admitted");
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The reproduction from outside: user 7's first request is admitted while the broker is
/// gone; a second request arrives while the first publish is unresolved. Answering it 409
/// ("yours already") is a lie if the first publish then certainly fails and the slot is
/// given back: nobody can know yet, so the truthful answer is 503, retry. (Whether this
/// publish ends "not persisted" or "in doubt" is librdkafka's to say; the second answer
/// must be true in both cases.)
#[actix_web::test]
async fn a_second_request_while_the_first_publish_is_unresolved_is_told_to_retry() {
    let broker = KafkaCluster::start(1).unwrap();
    let env = TestEnv::start_on(&broker.bootstrap(), 0).await;
    let coupon = env.coupon_with_quantity(5).await;
    assert_eq!(env.issue(coupon, 1).await.0, 201, "the topic is up");
    // Nothing can leave the producer now: A's publish ends "certainly not persisted".
    broker.kill(1).unwrap();

    let first = env.issue(coupon, 7);
    let second = async {
        wait_until_pending(&env, coupon, 7).await;
        env.issue(coupon, 7).await
    };
    let ((a, _), (b, body)) = futures_util::future::join(first, second).await;

    assert_eq!(a, 503, "the first publish failed");
    assert_eq!(
        b, 503,
        "while the first publish was unresolved the second was told {b} {body}"
    );
    env.shutdown().await;
}

/// Finding 1: a republish (the reconciler's here; a retry's is the same) runs while the
/// first request's "certainly not persisted" report is still on its way. That stale
/// report must not free the slot: the republish may be acknowledged, and the slot sold
/// again would end as OVER_QUANTITY behind a 201.
#[actix_web::test]
async fn a_stale_release_cannot_free_a_slot_that_is_being_republished() {
    let broker = KafkaCluster::start(1).unwrap();
    let env = TestEnv::start_on(&broker.bootstrap(), 1).await;
    let coupon = env.coupon_with_quantity(1).await;
    let scripts = AdmissionScripts::new(env.redis_prefix.clone(), QueueKind::Kafka);
    let mut redis = env.redis().await;
    let (coupon_id, user) = (CouponId::new(coupon).unwrap(), UserId::new(1).unwrap());

    // The first request: admitted; its API will report "certainly not persisted" late.
    let reply = scripts.admit(&mut redis, coupon_id, user).await.unwrap();
    let AdmitReply::Admitted(event) = reply else {
        panic!("not admitted: {reply:?}")
    };
    // A frozen broker: the reconciler's republish will hang, in flight.
    broker.signal_all("STOP").unwrap();
    // Past the window the entry counts as abandoned, and the reconciler (every 500 ms here)
    // takes it up.
    let deadline = Instant::now() + PUBLISH_WINDOW + Duration::from_secs(3);
    while !env.pending_claimed(coupon, 1).await && Instant::now() < deadline {
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }

    // The first request's report arrives now.
    let ledger = Ledger::new(env.redis_prefix.clone());
    let released = ledger
        .release(&mut redis, &PendingEntry::admitted(event))
        .await
        .unwrap();
    assert!(!released, "the release found its entry unchanged");
    assert_eq!(
        env.redis_holders(coupon).await,
        vec![1],
        "a stale release freed a slot whose event is being republished"
    );

    broker.signal_all("CONT").unwrap();
    assert_eq!(env.rows_when_settled(coupon, 1).await, vec![1]);
    assert_eq!(
        env.issue(coupon, 2).await.0,
        410,
        "the slot is not sold twice"
    );
    env.shutdown().await;
}
