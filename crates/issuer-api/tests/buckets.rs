//! A coupon created in buckets (`coupon_core::buckets`), served by the API end to end: on
//! one node and on the cluster, with the worker writing the rows. The protocol's steps are
//! forced one by one in coupon-core's `tests/buckets.rs`; here the API runs them.

// The harness below is test code too: a panic is exactly the failure report wanted.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use coupon_core::buckets::{Bucket, BucketCount};
use coupon_core::db::coupons::redis_verifications;
use coupon_core::domain::{CouponId, QueueKind, UserId};
use coupon_core::redis::admission::{AdmissionScripts, AdmitReply};
use coupon_core::redis::keys::CouponKeys;
use coupon_core::redis::ledger::{Ledger, LedgerAt, PendingEntry};
use diesel_async::RunQueryDsl;
use futures_util::future::join_all;
use issuer_api::issuing::{BucketRebuild, Rebuilt};
use serde_json::json;
use testkit::harness::{RedisTopology, TestEnv};

testkit::on_both_topologies!(
    users_all_homed_to_one_bucket_receive_every_unit_one_by_one,
    users_all_homed_to_one_bucket_at_once_receive_every_unit,
    a_bucket_whose_state_is_lost_is_rebuilt_alone,
    a_slot_in_doubt_in_a_bucket_is_published_by_the_reconciler,
    a_late_rebuild_leaves_a_bucket_verified_under_the_stamp_in_force,
    the_operators_rebuild_restores_every_bucket_verified_or_not,
    a_bucket_whose_first_load_was_not_recorded_is_rebuilt,
    a_bucketed_coupon_the_reconciler_cannot_finish_holds_up_no_other,
);

/// The first `n` user ids whose home, among `count` buckets, is `bucket`.
fn homed_to(count: BucketCount, bucket: u16, n: usize) -> Vec<i64> {
    (1..)
        .filter(|user| count.home(UserId::new(*user).unwrap()).index() == bucket)
        .take(n)
        .collect()
}

async fn bucketed_coupon(env: &TestEnv, quantity: i64, buckets: i64) -> i64 {
    env.create_coupon(json!({ "name": "hot", "totalQuantity": quantity, "buckets": buckets }))
        .await
}

/// Acceptance 2: everyone homes to bucket 0, which holds a third of the stock; all of it is
/// issued, each request answered in turn, and no SOLD_OUT comes before the last unit.
async fn users_all_homed_to_one_bucket_receive_every_unit_one_by_one(redis: RedisTopology) {
    let env = TestEnv::start_under(QueueKind::Kafka, redis, 1).await;
    let coupon = bucketed_coupon(&env, 30, 3).await;
    let users = homed_to(BucketCount::new(3).unwrap(), 0, 31);

    for &user in &users[..30] {
        let (status, body) = env.issue(coupon, user).await;
        assert_eq!(
            (status, body),
            (
                201,
                json!({"result": "SUCCESS", "couponId": coupon, "userId": user})
            )
        );
    }
    let (status, body) = env.issue(coupon, users[30]).await;
    assert_eq!(
        (status, body),
        (
            410,
            json!({"result": "SOLD_OUT", "couponId": coupon, "userId": users[30]})
        )
    );
    assert_eq!(
        env.rows_when_settled(coupon, 30).await,
        users[..30].to_vec()
    );
    let (_, view) = env.get(&format!("/api/v1/coupons/{coupon}")).await;
    assert_eq!(
        (&view["issuedCount"], &view["remaining"], &view["buckets"]),
        (&json!(30), &json!(0), &json!(3))
    );
    let stock = view["bucketStock"].as_array().unwrap();
    assert_eq!(stock.len(), 3, "{view}");
    for (b, bucket) in stock.iter().enumerate() {
        assert_eq!(
            (&bucket["bucket"], &bucket["stock"]),
            (&json!(b), &json!(0)),
            "{view}"
        );
        assert_eq!(bucket["soldOut"], json!(true), "{view}");
    }
    // The operations view's gauges, per bucket: all 30 slots in bucket 0, none left anywhere,
    // and the 20 units of buckets 1 and 2 moved to it.
    let issued = format!("coupon_bucket_issued{{coupon=\"{coupon}\",bucket=\"0\"}} 30");
    let stock = format!("coupon_bucket_stock{{coupon=\"{coupon}\",bucket=\"1\"}} 0");
    env.scrape_until(&env.url("/metrics"), &issued, |text| {
        text.contains(&issued)
            && text.contains(&stock)
            && text.contains("coupon_bucket_units_moved_total 20\n")
    })
    .await;
    env.shutdown().await;
}

/// The same, all at once: exactly the quantity is issued, to distinct users, every other
/// answer is SOLD_OUT, and none of those came while a request of the stock's was still
/// being decided (the 201s number the quantity, whatever order they came in).
async fn users_all_homed_to_one_bucket_at_once_receive_every_unit(redis: RedisTopology) {
    let env = TestEnv::start_under(QueueKind::Kafka, redis, 1).await;
    let coupon = bucketed_coupon(&env, 60, 3).await;
    let users = homed_to(BucketCount::new(3).unwrap(), 1, 90);

    let answers = {
        let env = &env;
        join_all(
            users
                .iter()
                .map(|&user| async move { (user, env.issue_retrying(coupon, user).await.0) }),
        )
        .await
    };
    let mut by_status: BTreeMap<u16, Vec<i64>> = BTreeMap::new();
    for (user, status) in answers {
        by_status.entry(status).or_default().push(user);
    }
    let winners = by_status.remove(&201).unwrap_or_default();
    assert_eq!(winners.len(), 60, "{by_status:?}");
    assert_eq!(
        by_status.keys().collect::<Vec<_>>(),
        vec![&410],
        "{by_status:?}"
    );
    let mut winners = winners;
    winners.sort_unstable();
    assert_eq!(env.rows_when_settled(coupon, 60).await, winners);
    env.shutdown().await;
}

/// One bucket's state lost (its keys deleted, as a shard that restarted empty leaves them):
/// only that bucket is rebuilt, from the rows and the journal; its users keep their slots,
/// and the coupon still issues exactly its quantity.
async fn a_bucket_whose_state_is_lost_is_rebuilt_alone(redis: RedisTopology) {
    let env = TestEnv::start_under(QueueKind::Kafka, redis, 1).await;
    let coupon = bucketed_coupon(&env, 12, 3).await;
    let count = BucketCount::new(3).unwrap();
    let first = homed_to(count, 2, 6);
    // Bucket 2 holds 4 units: the two beyond them are moved in from the others.
    for &user in &first {
        assert_eq!(env.issue(coupon, user).await.0, 201, "user {user}");
    }
    assert_eq!(env.rows_when_settled(coupon, 6).await, first);

    env.lose_bucket_state(coupon, 2).await;

    // The first request finds the bucket gone and starts its rebuild; the retries wait it out.
    let (status, body) = env.issue_retrying(coupon, first[0]).await;
    assert_eq!(
        (status, &body["result"]),
        (409, &json!("ALREADY_ISSUED")),
        "{body}"
    );
    let everyone = homed_to(count, 2, 40);
    let mut won = first.clone();
    for &user in &everyone[6..] {
        match env.issue_retrying(coupon, user).await.0 {
            201 => won.push(user),
            410 => {}
            other => panic!("user {user}: {other}"),
        }
    }
    won.sort_unstable();
    assert_eq!(won.len(), 12, "{won:?}");
    assert_eq!(env.rows_when_settled(coupon, 12).await, won);
    env.shutdown().await;
}

/// A slot admitted in a bucket whose first publish ended in doubt (its API died after
/// sending, say): the reconciler, which walks every bucket of every registered coupon,
/// publishes it again, and the row comes.
async fn a_slot_in_doubt_in_a_bucket_is_published_by_the_reconciler(redis: RedisTopology) {
    let env = TestEnv::start_under(QueueKind::Kafka, redis, 1).await;
    let coupon = bucketed_coupon(&env, 9, 3).await;
    let user = homed_to(BucketCount::new(3).unwrap(), 1, 1)[0];
    let (keys, stamp) = env.bucket_state(coupon, 1).await;
    let scripts = AdmissionScripts::new(env.redis_prefix.clone(), QueueKind::Kafka);
    let mut con = env.redis().await;
    let (id, user_id) = (CouponId::new(coupon).unwrap(), UserId::new(user).unwrap());
    let reply = scripts
        .admit_in(&mut con, &keys, id, user_id, Some(&stamp))
        .await
        .unwrap();
    let AdmitReply::Admitted(event) = reply else {
        panic!("not admitted: {reply:?}")
    };
    let at = LedgerAt::Bucket(keys);
    let entry = PendingEntry::admitted(event);
    let ledger = Ledger::new(env.redis_prefix.clone());
    assert!(ledger.mark_in_doubt(&mut con, &at, &entry).await.unwrap());

    assert_eq!(env.rows_when_settled(coupon, 1).await, vec![user]);
    env.shutdown().await;
}

/// A rebuild asked for by a request that found a bucket closed, run after another
/// process's rebuild reopened it (every request homed there asks while it is closed): it
/// finds the bucket verified under the stamp in force and leaves it open, as a coupon's
/// does. Taken blindly, its lease would close the bucket again for a whole rebuild, and
/// the next late one again.
async fn a_late_rebuild_leaves_a_bucket_verified_under_the_stamp_in_force(redis: RedisTopology) {
    let env = TestEnv::start_under(QueueKind::Kafka, redis, 1).await;
    let coupon = bucketed_coupon(&env, 9, 3).await;
    let issuer = env.issuer(&env.redis_prefix).await;
    let id = CouponId::new(coupon).unwrap();
    let bucket = Bucket::of(BucketCount::new(3).unwrap(), 1).unwrap();
    let before = redis_verifications(&mut env.pg().await).await.unwrap();

    let rebuilt = issuer
        .rebuild_bucket(id, bucket, BucketRebuild::IfUnverified)
        .await
        .unwrap();

    assert_eq!(rebuilt, None, "a verified bucket was rebuilt");
    let after = redis_verifications(&mut env.pg().await).await.unwrap();
    assert_eq!(after, before, "the verification count moved");
    env.shutdown().await;
}

/// The operator's `issuer-api rebuild-redis` on a bucketed coupon rebuilds every bucket,
/// verified or not, as it rebuilds a coupon's own state whatever its stamp (an operator who
/// suspects a state asks for it to be rebuilt), and says how many holders it restored:
/// "another process is rebuilding it" only when another process is.
async fn the_operators_rebuild_restores_every_bucket_verified_or_not(redis: RedisTopology) {
    let env = TestEnv::start_under(QueueKind::Kafka, redis, 1).await;
    let count = BucketCount::new(3).unwrap();
    let coupon = bucketed_coupon(&env, 6, 3).await;
    let holders: Vec<i64> = (0..3).map(|b| homed_to(count, b, 1)[0]).collect();
    for &user in &holders {
        assert_eq!(env.issue(coupon, user).await.0, 201, "user {user}");
    }
    let mut sorted = holders.clone();
    sorted.sort_unstable();
    assert_eq!(env.rows_when_settled(coupon, 3).await, sorted);
    let issuer = env.issuer(&env.redis_prefix).await;
    let id = CouponId::new(coupon).unwrap();
    let before = redis_verifications(&mut env.pg().await).await.unwrap();

    let rebuilt = issuer.rebuild(&[id]).await.unwrap();

    assert_eq!(rebuilt, vec![(id, Rebuilt::Restored { holders: 3 })]);
    let after = redis_verifications(&mut env.pg().await).await.unwrap();
    assert_eq!(after, before + 3, "one verification per bucket");
    for &user in &holders {
        let (status, _) = env.issue_retrying(coupon, user).await;
        assert_eq!(status, 409, "user {user} keeps the slot");
    }
    let mut won = sorted;
    for user in 1_000.. {
        match env.issue_retrying(coupon, user).await.0 {
            201 => won.push(user),
            410 => break,
            other => panic!("user {user}: {other}"),
        }
    }
    won.sort_unstable();
    assert_eq!(won.len(), 6, "{won:?}");
    assert_eq!(env.rows_when_settled(coupon, 6).await, won);
    env.shutdown().await;
}

/// A bucket whose first load reached Redis but whose stamp never reached PostgreSQL (the
/// creating API died in between, or PostgreSQL went away): the coupon is not stuck. A
/// request finds the bucket unverified, has it rebuilt, and is decided.
async fn a_bucket_whose_first_load_was_not_recorded_is_rebuilt(redis: RedisTopology) {
    let env = TestEnv::start_under(QueueKind::Kafka, redis, 1).await;
    let coupon = bucketed_coupon(&env, 9, 3).await;
    let mut db = env.pg().await;
    diesel::sql_query(
        "UPDATE coupon_buckets SET redis_stamp = NULL WHERE coupon_id = $1 AND bucket = 1",
    )
    .bind::<diesel::sql_types::BigInt, _>(coupon)
    .execute(&mut db)
    .await
    .unwrap();
    // An API that never met the coupon: it learns the buckets from PostgreSQL.
    let (other, _) = env.start_another_api(&[]).await;
    let user = homed_to(BucketCount::new(3).unwrap(), 1, 1)[0];

    let (status, body) = env.issue_retrying_at(&other, coupon, user).await;

    assert_eq!(status, 201, "{body}");
    assert_eq!(env.rows_when_settled(coupon, 1).await, vec![user]);
    env.shutdown().await;
}

/// The reconciler meets a bucketed coupon it cannot finish now (a slot being given back,
/// and another bucket's state gone, so no reopen can run): it goes on to the coupons after
/// it, and a slot in doubt there is published.
async fn a_bucketed_coupon_the_reconciler_cannot_finish_holds_up_no_other(redis: RedisTopology) {
    let env = TestEnv::start_under(QueueKind::Kafka, redis, 1).await;
    let bucketed = bucketed_coupon(&env, 4, 2).await;
    let (keys, stamp) = env.bucket_state(bucketed, 0).await;
    let scripts = AdmissionScripts::new(env.redis_prefix.clone(), QueueKind::Kafka);
    let ledger = Ledger::new(env.redis_prefix.clone());
    let mut con = env.redis().await;
    let giver = homed_to(BucketCount::new(2).unwrap(), 0, 1)[0];
    let reply = scripts
        .admit_in(
            &mut con,
            &keys,
            CouponId::new(bucketed).unwrap(),
            UserId::new(giver).unwrap(),
            Some(&stamp),
        )
        .await
        .unwrap();
    let AdmitReply::Admitted(event) = reply else {
        panic!("not admitted: {reply:?}")
    };
    let at = LedgerAt::Bucket(keys);
    assert!(
        ledger
            .release(&mut con, &at, &PendingEntry::admitted(event))
            .await
            .unwrap()
    );
    let other = bucket_keys(&env, bucketed, 1).await;
    let _: i64 = redis::cmd("DEL")
        .arg(&other.meta)
        .query_async(&mut con)
        .await
        .unwrap();
    // Registered after the bucketed one: the reconciler reaches it second.
    let single = env.coupon_with_quantity(5).await;
    let scripts = env.scripts_for(single).await;
    let reply = scripts
        .admit(
            &mut con,
            CouponId::new(single).unwrap(),
            UserId::new(7).unwrap(),
        )
        .await
        .unwrap();
    let AdmitReply::Admitted(event) = reply else {
        panic!("not admitted: {reply:?}")
    };
    let at = ledger.of_coupon(event.coupon_id);
    let entry = PendingEntry::admitted(event);
    assert!(ledger.mark_in_doubt(&mut con, &at, &entry).await.unwrap());

    assert_eq!(env.rows_when_settled(single, 1).await, vec![7]);
    env.shutdown().await;
}

async fn bucket_keys(env: &TestEnv, coupon: i64, bucket: u16) -> CouponKeys {
    env.bucket_state(coupon, bucket).await.0
}

/// Buckets are refused, with the reason, where they cannot be kept or make no sense.
#[actix_web::test]
async fn buckets_refused_are_answered_400_with_the_reason() {
    let env = TestEnv::start_in(QueueKind::Redis, 0).await;
    for (body, message) in [
        (
            json!({"name": "x", "totalQuantity": 5, "buckets": 3}),
            "buckets above 1 need the Kafka queue mode",
        ),
        (
            json!({"name": "x", "totalQuantity": 5, "buckets": 6}),
            "buckets must not exceed the quantity (5)",
        ),
        (
            json!({"name": "x", "totalQuantity": 5, "buckets": 0}),
            "buckets must be between 1 and 16",
        ),
    ] {
        let (status, answer) = env
            .post("/api/v1/coupons", testkit::harness::ADMIN_TOKEN, &body)
            .await;
        assert_eq!(status, 400, "{answer}");
        let said = answer["message"].as_str().unwrap();
        assert!(said.starts_with(message), "{said}");
    }
    env.shutdown().await;
}
