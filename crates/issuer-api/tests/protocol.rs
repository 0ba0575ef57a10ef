//! The issue protocol's interleavings, each forced at its exact point by driving Redis and
//! the broker directly: what a user is told must stay true whoever runs in between.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;
use coupon_core::domain::QueueKind;
use coupon_core::domain::{CouponId, UserId};
use coupon_core::redis::admission::{AdmissionScripts, AdmitReply};
use coupon_core::redis::ledger::{Ledger, PendingEntry};
use redis::AsyncCommands;
use testkit::harness::{self, TestEnv};
use testkit::intercept::{At, Intercepted, has_arg};
use testkit::kafka_cluster::KafkaCluster;
use tokio_util::sync::CancellationToken;

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

/// A stale release: a republish (the reconciler's here; a retry's is the same) runs while the
/// first request's "certainly not persisted" report is still on its way. That stale
/// report must not free the slot: the republish may be acknowledged, and the slot sold
/// again would end as OVER_QUANTITY behind a 201.
#[actix_web::test]
async fn a_stale_release_cannot_free_a_slot_that_is_being_republished() {
    let broker = KafkaCluster::start(1).unwrap();
    let env = TestEnv::start_on(&broker.bootstrap(), 1).await;
    let coupon = env.coupon_with_quantity(1).await;
    let scripts = env.scripts_for(coupon).await;
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
        .release(
            &mut redis,
            &ledger.of_coupon(event.coupon_id),
            &PendingEntry::admitted(event.clone()),
        )
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

/// A rebuild racing a batch, Redis queue mode: a batch in a worker's hands commits, is acknowledged and
/// trimmed while a rebuild runs. Forced right before the rebuild's first stream read: a real
/// worker persists both entries and trims the stream (which keeps only the last delivered
/// entry). Had PostgreSQL been read before that, user 1 would be in neither place.
#[actix_web::test]
async fn a_batch_committing_during_a_rebuild_keeps_its_users() {
    let env = TestEnv::start_in(QueueKind::Redis, 0).await;
    let coupon = env.coupon_with_quantity(5).await;
    for user in [1, 2] {
        assert_eq!(env.issue(coupon, user).await.0, 201);
    }
    let issuer = env.issuer(&env.redis_prefix).await;
    let stream = env.stream(coupon);
    let worker_args = env.worker_args(500);
    let trimmed_stream = stream.clone();
    let worker_persists_and_trims = move || async move {
        let config = issuer_worker::config::Config::try_parse_from(worker_args).unwrap();
        let worker = issuer_worker::worker::Worker::build(config).await.unwrap();
        let stop = CancellationToken::new();
        let running = actix_web::rt::spawn(worker.run(stop.clone()));
        let mut redis = harness::redis_client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        // Entries are trimmed only once acknowledged, and acknowledged once committed.
        while redis.xlen::<_, usize>(&trimmed_stream).await.unwrap() > 1 {
            assert!(
                Instant::now() < deadline,
                "the worker never trimmed the stream"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        running.await.unwrap().unwrap();
        Ok(())
    };
    let mut redis = Intercepted::new(
        env.redis().await,
        At::Before,
        |cmd: &redis::Cmd| has_arg(cmd, "XRANGE"),
        worker_persists_and_trims,
    );

    let found = issuer
        .holders(&mut redis, &[CouponId::new(coupon).unwrap()])
        .await
        .unwrap();
    let mut holders = found[0].1.clone();
    holders.sort_unstable();
    holders.dedup();
    assert_eq!(holders, vec![1, 2], "a winner is missing from the rebuild");
    assert_eq!(env.rows(coupon).await, vec![1, 2]);
    env.shutdown().await;
}

/// A rebuild racing a reconciler, Kafka mode: a rebuild waits one publish window after Redis lost the ledger,
/// then takes the log's end. That covers a reconciler's republish only if it starts as soon
/// as its entry is claimed, not after the pass's other claims. Forced at the pass's second
/// claim: by then the first claimed entry's event must be on its way to the broker.
#[actix_web::test]
async fn a_reconciler_publishes_each_entry_as_soon_as_it_claims_it() {
    let env = TestEnv::start(0).await;
    let coupon = env.coupon_with_quantity(5).await;
    // Keys of its own: the API's reconciler does not look here.
    let prefix = format!("{}own:", env.redis_prefix);
    let issuer = env.issuer(&prefix).await;
    let delivery = issuer.delivery().clone();
    let scripts = AdmissionScripts::new(prefix.clone(), QueueKind::Kafka);
    let ledger = Ledger::new(prefix.clone());
    let mut redis = env.redis().await;
    let coupon_id = CouponId::new(coupon).unwrap();
    let record = issuer.coupon(coupon_id).await.unwrap().coupon;
    scripts.load_meta(&mut redis, &record).await.unwrap();
    // Two slots whose first publish ended in doubt: both claimable at once.
    for user in [1, 2] {
        let reply = scripts
            .admit(&mut redis, coupon_id, UserId::new(user).unwrap())
            .await
            .unwrap();
        let AdmitReply::Admitted(event) = reply else {
            panic!("not admitted: {reply:?}")
        };
        let entry = PendingEntry::admitted(event);
        assert!(
            ledger
                .mark_in_doubt(&mut redis, &ledger.of_coupon(coupon_id), &entry)
                .await
                .unwrap()
        );
    }

    let claims = std::sync::atomic::AtomicUsize::new(0);
    let topic = env.topic.clone();
    let first_on_its_way = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = first_on_its_way.clone();
    let mut con = Intercepted::new(
        env.redis().await,
        At::Before,
        move |cmd: &redis::Cmd| has_arg(cmd, "claim") && claims.fetch_add(1, Ordering::SeqCst) == 1,
        move || async move {
            // Bounded: the event is on the topic within milliseconds if its publish started.
            let on_topic =
                tokio::time::timeout(Duration::from_secs(10), harness::read_topic(&topic, 1))
                    .await
                    .is_ok_and(|messages| !messages.is_empty());
            seen.store(on_topic, Ordering::SeqCst);
            Ok(())
        },
    );
    let settled = delivery.reconcile_once(&mut con).await.unwrap();

    assert!(
        first_on_its_way.load(Ordering::SeqCst),
        "the first claimed entry was not published before the pass's next claim"
    );
    assert_eq!(settled, 2);
    // Settled by the settler, which gathers acknowledgements for a moment first.
    let settled_by = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = ledger
            .entries(&mut redis, &ledger.of_coupon(coupon_id), coupon_id)
            .await
            .unwrap();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < settled_by,
            "still pending: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    env.shutdown().await;
}

/// Per-process publish windows: a rebuild waits one publish window for the publishes started before
/// Redis lost its state. A process with a shorter PUBLISH_TIMEOUT_MS than the APIs'
/// (`rebuild-redis` run with default settings) must still wait theirs: the window comes
/// from one shared place, where every API records its own.
#[actix_web::test]
async fn a_rebuild_honours_the_longest_publish_window_any_api_runs_with() {
    let env = TestEnv::start(0).await;
    let slow = ["--publish-timeout-ms=20000".to_owned()];
    let (_other, _) = env.start_another_api(&slow).await;
    let issuer = env.issuer(&format!("{}own:", env.redis_prefix)).await;

    let window = issuer.delivery().in_flight_window().await.unwrap();
    assert!(
        window >= Duration::from_millis(20_000),
        "a rebuild here would wait {window:?}, less than another API's publishes may take"
    );
    env.shutdown().await;
}
