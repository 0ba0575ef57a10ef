//! A coupon's quantity raised during its sale (`PUT /api/v1/coupons/{id}/quantity`), end to
//! end with the worker writing the rows: PostgreSQL first, then Redis, in every bucket, so
//! that users told SOLD_OUT before get in again and no more than the new quantity is ever
//! issued. The protocol is `coupon-core/tests/bucket_model.rs`'s raise; its bucket steps are
//! forced one by one in coupon-core's `tests/buckets.rs`.

// A panic is exactly the failure report wanted here.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use coupon_core::buckets::{Bucket, BucketCount};
use coupon_core::db::raise::raise_quantity;
use coupon_core::domain::{CouponId, QueueKind, UserId};
use coupon_core::event::IssueEvent;
use coupon_core::redis::buckets::{BucketState, BucketSteps, Step};
use coupon_core::redis::keys::CouponKeys;
use futures_util::future::join_all;
use issuer_api::issuing::{BucketRebuild, Raise};
use serde_json::{Value, json};
use testkit::harness::{self, RedisTopology, TestEnv};
use testkit::intercept::{At, Intercepted, has_arg};

testkit::on_both_topologies!(
    a_sold_out_coupon_raised_sells_the_new_units,
    a_bucketed_coupon_sold_out_everywhere_raised_admits_the_users_of_every_bucket,
    a_raise_during_the_rush_issues_exactly_the_new_quantity,
    a_raise_whose_api_died_midway_is_landed_by_the_lander,
    a_late_rebuild_keeps_a_raise_that_landed_after_it_read_its_bucket,
    a_raise_during_a_buckets_rebuild_lands_after_its_restore,
);

async fn raise(env: &TestEnv, coupon: i64, quantity: Value) -> (u16, Value) {
    env.put(
        &format!("/api/v1/coupons/{coupon}/quantity"),
        harness::ADMIN_TOKEN,
        &json!({ "totalQuantity": quantity }),
    )
    .await
}

/// The first `n` user ids, from `from` on, whose home among `count` buckets is `bucket`.
fn homed_to(count: BucketCount, bucket: u16, from: i64, n: usize) -> Vec<i64> {
    (from..)
        .filter(|user| count.home(UserId::new(*user).unwrap()).index() == bucket)
        .take(n)
        .collect()
}

/// Each bucket's stock in a coupon's read.
fn bucket_stock(view: &Value) -> Vec<&Value> {
    view["bucketStock"]
        .as_array()
        .unwrap()
        .iter()
        .map(|bucket| &bucket["stock"])
        .collect()
}

/// `n` users of each of `count`'s buckets, from user id `from` on, each admitted (201).
async fn admit_from_each_bucket(
    env: &TestEnv,
    coupon: i64,
    count: BucketCount,
    from: i64,
    n: usize,
) -> Vec<i64> {
    let mut admitted = Vec::new();
    for b in count.all() {
        for user in homed_to(count, b.index(), from, n) {
            assert_eq!(env.issue_retrying(coupon, user).await.0, 201, "user {user}");
            admitted.push(user);
        }
    }
    admitted
}

/// A coupon of one state, sold out: raised, it admits exactly the new units, and the
/// coupon's view and its rows show the new quantity.
async fn a_sold_out_coupon_raised_sells_the_new_units(redis: RedisTopology) {
    let env = TestEnv::start_under(QueueKind::Kafka, redis, 1).await;
    let coupon = env.coupon_with_quantity(3).await;
    for user in 1..=3 {
        assert_eq!(env.issue(coupon, user).await.0, 201);
    }
    assert_eq!(env.issue(coupon, 4).await.0, 410);

    assert_eq!(
        raise(&env, coupon, json!(5)).await,
        (
            200,
            json!({"couponId": coupon, "totalQuantity": 5, "landed": true})
        )
    );
    // The same quantity again changes nothing, and answers as the raise did.
    assert_eq!(raise(&env, coupon, json!(5)).await.0, 200);
    for user in 4..=5 {
        assert_eq!(env.issue(coupon, user).await.0, 201, "user {user}");
    }
    assert_eq!(env.issue(coupon, 6).await.0, 410);
    assert_eq!(env.rows_when_settled(coupon, 5).await, vec![1, 2, 3, 4, 5]);
    let (_, view) = env.get(&format!("/api/v1/coupons/{coupon}")).await;
    assert_eq!(
        (&view["totalQuantity"], &view["remaining"]),
        (&json!(5), &json!(0)),
        "{view}"
    );
    env.shutdown().await;
}

/// A coupon sold out and finished (every row written) leaves the hot loops (the registry
/// that the reconciler and, in the Redis queue mode, the stream workers read); raised, it
/// is taken back into them: the new winners' events are read and their rows written.
async fn a_finished_coupon_raised_is_taken_back_into_the_hot_loops(queue: QueueKind) {
    let env = TestEnv::start_under(queue, RedisTopology::Node, 1).await;
    let coupon = env.coupon_with_quantity(1).await;
    assert_eq!(env.issue(coupon, 1).await.0, 201);
    assert_eq!(env.rows_when_settled(coupon, 1).await, vec![1]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while env.registered().await.contains(&coupon) {
        assert!(
            Instant::now() < deadline,
            "the finished coupon was never retired"
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }

    assert_eq!(raise(&env, coupon, json!(3)).await.0, 200);
    assert!(env.registered().await.contains(&coupon));
    for user in 2..=3 {
        assert_eq!(env.issue(coupon, user).await.0, 201, "user {user}");
    }
    assert_eq!(env.issue(coupon, 4).await.0, 410);
    assert_eq!(env.rows_when_settled(coupon, 3).await, vec![1, 2, 3]);
    env.shutdown().await;
}

#[actix_web::test]
async fn a_finished_coupon_raised_is_taken_back_into_the_hot_loops_kafka() {
    a_finished_coupon_raised_is_taken_back_into_the_hot_loops(QueueKind::Kafka).await
}

#[actix_web::test]
async fn a_finished_coupon_raised_is_taken_back_into_the_hot_loops_redis_queue() {
    a_finished_coupon_raised_is_taken_back_into_the_hot_loops(QueueKind::Redis).await
}

/// Every bucket of a bucketed coupon sold out and marked so: raised, each bucket gets its
/// share of the new units, its mark is lifted, and a user of every home is admitted again
/// (directly or through a move), exactly up to the new quantity.
async fn a_bucketed_coupon_sold_out_everywhere_raised_admits_the_users_of_every_bucket(
    redis: RedisTopology,
) {
    let env = TestEnv::start_under(QueueKind::Kafka, redis, 1).await;
    let count = BucketCount::new(3).unwrap();
    let coupon = env
        .create_coupon(json!({ "name": "hot", "totalQuantity": 3, "buckets": 3 }))
        .await;
    let firsts: Vec<i64> = (0..3).map(|b| homed_to(count, b, 1, 1)[0]).collect();
    for &user in &firsts {
        assert_eq!(env.issue(coupon, user).await.0, 201, "user {user}");
    }
    // One refused user of each home: every bucket is marked sold out.
    let refused: Vec<i64> = (0..3).map(|b| homed_to(count, b, 1_000, 1)[0]).collect();
    for &user in &refused {
        assert_eq!(env.issue(coupon, user).await.0, 410, "user {user}");
    }

    assert_eq!(
        raise(&env, coupon, json!(9)).await,
        (
            200,
            json!({"couponId": coupon, "totalQuantity": 9, "landed": true})
        )
    );
    let (_, view) = env.get(&format!("/api/v1/coupons/{coupon}")).await;
    assert_eq!(
        bucket_stock(&view),
        vec![&json!(2); 3],
        "each bucket its share: {view}"
    );
    // Those refused get in, then more of bucket 0's users than its share: the rest moves.
    for &user in &refused {
        assert_eq!(env.issue(coupon, user).await.0, 201, "user {user}");
    }
    let more = homed_to(count, 0, 2_000, 4);
    for &user in &more[..3] {
        assert_eq!(env.issue(coupon, user).await.0, 201, "user {user}");
    }
    assert_eq!(env.issue(coupon, more[3]).await.0, 410);
    let mut winners: Vec<i64> = firsts
        .iter()
        .chain(&refused)
        .chain(&more[..3])
        .copied()
        .collect();
    winners.sort_unstable();
    assert_eq!(env.rows_when_settled(coupon, 9).await, winners);
    env.shutdown().await;
}

/// Users rush a bucketed coupon while an admin raises it: exactly the new quantity is
/// issued, every 201 has its row, and every other answer is SOLD_OUT.
async fn a_raise_during_the_rush_issues_exactly_the_new_quantity(redis: RedisTopology) {
    let env = TestEnv::start_under(QueueKind::Kafka, redis, 1).await;
    let coupon = env
        .create_coupon(json!({ "name": "hot", "totalQuantity": 30, "buckets": 3 }))
        .await;
    let users: Vec<i64> = (1..=90).collect();
    let (answers, raised) = {
        let env = &env;
        let issues = join_all(
            users
                .iter()
                .map(|&user| async move { (user, env.issue_retrying(coupon, user).await.0) }),
        );
        futures_util::join!(issues, raise(env, coupon, json!(50)))
    };
    assert_eq!(raised.0, 200, "{raised:?}");
    let mut by_status: BTreeMap<u16, Vec<i64>> = BTreeMap::new();
    for (user, status) in answers {
        by_status.entry(status).or_default().push(user);
    }
    // Users refused before the raise landed are not owed a unit: the rest of the 50 are
    // sold to those who ask after it.
    let mut winners = by_status.remove(&201).unwrap_or_default();
    assert!(winners.len() <= 50, "{by_status:?}");
    for user in 100.. {
        if winners.len() == 50 {
            break;
        }
        match env.issue_retrying(coupon, user).await.0 {
            201 => winners.push(user),
            status => panic!("user {user}: {status} with {} issued", winners.len()),
        }
    }
    assert_eq!(env.issue(coupon, 1_000).await.0, 410);
    assert!(
        by_status.keys().all(|status| *status == 410),
        "{by_status:?}"
    );
    winners.sort_unstable();
    assert_eq!(env.rows_when_settled(coupon, 50).await, winners);
    env.shutdown().await;
}

/// An API that died midway through a raise: PostgreSQL raised, and one bucket flagged but
/// not grown (no bucket can be marked sold out, and none has the new units). The landers
/// land it from PostgreSQL: every bucket grows to its share, and its users get in.
async fn a_raise_whose_api_died_midway_is_landed_by_the_lander(redis: RedisTopology) {
    let env = TestEnv::start_under(QueueKind::Kafka, redis, 1).await;
    let count = BucketCount::new(2).unwrap();
    let coupon = env
        .create_coupon(json!({ "name": "hot", "totalQuantity": 2, "buckets": 2 }))
        .await;
    let firsts: Vec<i64> = (0..2).map(|b| homed_to(count, b, 1, 1)[0]).collect();
    for &user in &firsts {
        assert_eq!(env.issue(coupon, user).await.0, 201, "user {user}");
    }

    let id = CouponId::new(coupon).unwrap();
    let raised = raise_quantity(&mut env.pg().await, id, 6)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(raised.shares, vec![3, 3]);
    let (keys, stamp): (CouponKeys, _) = env.bucket_state(coupon, 0).await;
    let flagged = BucketSteps::flag(
        &mut env.redis().await,
        &BucketState {
            keys: &keys,
            stamp: &stamp,
        },
        6,
    )
    .await
    .unwrap();
    assert!(matches!(flagged, Step::Done(true)), "{flagged:?}");

    // Landed within a few of the landers' rounds (one a second).
    let deadline = Instant::now() + Duration::from_secs(15);
    while coupon_core::db::raise::unlanded_raises(&mut env.pg().await)
        .await
        .unwrap()
        .contains(&id)
    {
        assert!(Instant::now() < deadline, "the raise was never landed");
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    let mut winners = firsts.clone();
    winners.extend(admit_from_each_bucket(&env, coupon, count, 1_000, 2).await);
    assert_eq!(env.issue(coupon, 5_000).await.0, 410);
    winners.sort_unstable();
    assert_eq!(env.rows_when_settled(coupon, 6).await, winners);
    env.shutdown().await;
}

/// A coupon of 2 units in 2 buckets whose bucket 0 is not verified (its stamp never
/// reached PostgreSQL), so that a rebuild of it is due: its id, and bucket 0.
async fn two_buckets_the_first_unverified(env: &TestEnv) -> (i64, CouponId, Bucket) {
    let coupon = env
        .create_coupon(json!({ "name": "hot", "totalQuantity": 2, "buckets": 2 }))
        .await;
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query(
            "UPDATE coupon_buckets SET redis_stamp = NULL WHERE coupon_id = $1 AND bucket = 0",
        )
        .bind::<diesel::sql_types::BigInt, _>(coupon),
        &mut env.pg().await,
    )
    .await
    .unwrap();
    let bucket = Bucket::of(BucketCount::new(2).unwrap(), 0).unwrap();
    (coupon, CouponId::new(coupon).unwrap(), bucket)
}

/// The model's `Bug::RebuildReadsShareEarly`, forced: a rebuild started by a request that
/// found bucket 0 unverified reads the bucket's row, and before it takes its lease another
/// rebuild verifies the bucket and a raise lands there. The late rebuild's lease is granted
/// (the stamp it read is no longer the bucket's), and its restore must write the share
/// PostgreSQL holds now, not the one it saw first: the raised units stay for sale.
async fn a_late_rebuild_keeps_a_raise_that_landed_after_it_read_its_bucket(redis: RedisTopology) {
    let env = TestEnv::start_under(QueueKind::Kafka, redis, 1).await;
    let (coupon, id, bucket) = two_buckets_the_first_unverified(&env).await;
    let count = BucketCount::new(2).unwrap();
    let issuer = env.issuer(&env.redis_prefix).await;
    let first = issuer.clone();
    let mut late = Intercepted::new(
        env.redis().await,
        At::Before,
        // The lease's take: the rebuild's first command, after its reads of PostgreSQL.
        |cmd: &redis::Cmd| has_arg(cmd, "take"),
        move || async move {
            let rebuilt = first
                .rebuild_bucket(id, bucket, BucketRebuild::IfUnverified)
                .await
                .unwrap();
            assert_eq!(rebuilt, Some(0), "the first rebuild did not run");
            let raised = first.raise_quantity(id, 6).await.unwrap();
            assert!(matches!(raised, Raise::Landed(_)), "{raised:?}");
            Ok(())
        },
    );

    let rebuilt = issuer
        .rebuild_bucket_on(&mut late, id, bucket, BucketRebuild::IfUnverified)
        .await;

    assert_eq!(rebuilt.unwrap(), Some(0), "the late rebuild did not run");
    // The API serving the reads keeps a coupon's read a second; it did not raise it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let view = loop {
        let (_, view) = env.get(&format!("/api/v1/coupons/{coupon}")).await;
        if view["totalQuantity"] == json!(6) {
            break view;
        }
        assert!(Instant::now() < deadline, "the raise is not shown: {view}");
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        bucket_stock(&view),
        vec![&json!(3); 2],
        "each bucket its raised share: {view}"
    );
    let mut winners = admit_from_each_bucket(&env, coupon, count, 1, 3).await;
    assert_eq!(env.issue(coupon, 5_000).await.0, 410);
    winners.sort_unstable();
    assert_eq!(env.rows_when_settled(coupon, 6).await, winners);
    env.shutdown().await;
}

/// A raise committed while a bucket's rebuild holds it closed, after the rebuild read the
/// bucket's share and right before its restore: the raise cannot grow the closed bucket
/// (it answers that it is landing), the restore writes the share from before it, and the
/// lander grows the bucket once the restore has reopened it.
async fn a_raise_during_a_buckets_rebuild_lands_after_its_restore(redis: RedisTopology) {
    let env = TestEnv::start_under(QueueKind::Kafka, redis, 1).await;
    let (coupon, id, bucket) = two_buckets_the_first_unverified(&env).await;
    let issuer = env.issuer(&env.redis_prefix).await;
    let raiser = issuer.clone();
    let mut rebuilding = Intercepted::new(
        env.redis().await,
        At::Before,
        |cmd: &redis::Cmd| {
            cmd.args_iter().any(
                |arg| matches!(arg, redis::Arg::Simple(name) if name.ends_with(b"_bucket_restore")),
            )
        },
        move || async move {
            let raised = raiser.raise_quantity(id, 6).await.unwrap();
            assert!(matches!(raised, Raise::Landing(_)), "{raised:?}");
            Ok(())
        },
    );

    let rebuilt = issuer
        .rebuild_bucket_on(&mut rebuilding, id, bucket, BucketRebuild::IfUnverified)
        .await;

    assert_eq!(rebuilt.unwrap(), Some(0), "the rebuild did not run");
    // The lander's rounds come once a second; the read is kept a second too.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, view) = env.get(&format!("/api/v1/coupons/{coupon}")).await;
        if bucket_stock(&view) == vec![&json!(3); 2] {
            break;
        }
        assert!(Instant::now() < deadline, "the raise never landed: {view}");
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    let count = BucketCount::new(2).unwrap();
    let mut winners = admit_from_each_bucket(&env, coupon, count, 1, 3).await;
    assert_eq!(env.issue(coupon, 5_000).await.0, 410);
    winners.sort_unstable();
    assert_eq!(env.rows_when_settled(coupon, 6).await, winners);
    env.shutdown().await;
}

/// An event the database guard set aside as OVER_QUANTITY for a user Redis never admitted
/// (a forged event, say) is not made a row by its scheduled retry after a raise: the row
/// would spend a unit of the new quantity that Redis still sells, and the user Redis then
/// admits for it, told 201, would be refused by the guard. It is abandoned for a person,
/// who replays it only if an admission made it (README, runbook).
#[actix_web::test]
async fn a_raise_does_not_make_room_for_an_over_quantity_event() {
    let env = TestEnv::start_in(QueueKind::Kafka, 1).await;
    let coupon = env.coupon_with_quantity(1).await;
    assert_eq!(env.issue(coupon, 1).await.0, 201);
    let forged = IssueEvent::new(
        CouponId::new(coupon).unwrap(),
        UserId::new(99).unwrap(),
        chrono::Utc::now(),
    );
    env.produce_raw(&env.topic, &forged.key(), &forged.encode())
        .await;
    let failed = harness::wait_for_failed(&env, "the forged event is set aside", |rows| {
        rows.iter().any(|row| row.reason == "OVER_QUANTITY")
    })
    .await;
    assert_eq!(raise(&env, coupon, json!(2)).await.0, 200);

    harness::make_retries_due(&env).await;
    let failed = harness::wait_for_failed(&env, "its scheduled retry", |rows| {
        rows.iter()
            .any(|row| row.id == failed[0].id && row.attempts == 1)
    })
    .await;

    assert_eq!(failed[0].status, "ABANDONED", "{failed:?}");
    assert_eq!(env.issue(coupon, 2).await.0, 201);
    assert_eq!(env.rows_when_settled(coupon, 2).await, vec![1, 2]);
    env.shutdown().await;
}

/// What a raise refuses, and how: nothing is changed by any of these.
#[actix_web::test]
async fn a_raise_refused_is_answered_with_the_reason() {
    let env = TestEnv::start_in(QueueKind::Kafka, 0).await;
    let coupon = env.coupon_with_quantity(10).await;
    let path = format!("/api/v1/coupons/{coupon}/quantity");

    let (status, body) = raise(&env, coupon, json!(9)).await;
    assert_eq!(
        (status, &body["error"]),
        (409, &json!("CONFLICT")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("it is 10 now"),
        "{body}"
    );
    for bad in [json!(0), json!(-1), json!("11"), json!(1.5), Value::Null] {
        let (status, body) = raise(&env, coupon, bad.clone()).await;
        assert_eq!(
            (status, &body["error"]),
            (400, &json!("INVALID_REQUEST")),
            "{bad}: {body}"
        );
    }
    let (status, body) = env.put(&path, harness::ADMIN_TOKEN, &json!([11])).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = raise(&env, 987_654_321, json!(11)).await;
    assert_eq!(
        (status, &body["error"]),
        (404, &json!("COUPON_NOT_FOUND")),
        "{body}"
    );
    let user = harness::user_token(1);
    let (status, body) = env.put(&path, &user, &json!({ "totalQuantity": 11 })).await;
    assert_eq!(
        (status, &body["error"]),
        (403, &json!("FORBIDDEN")),
        "{body}"
    );
    let (status, _) = env.put(&path, "", &json!({ "totalQuantity": 11 })).await;
    assert_eq!(status, 401);

    let (_, view) = env.get(&format!("/api/v1/coupons/{coupon}")).await;
    assert_eq!(view["totalQuantity"], json!(10), "{view}");
    env.shutdown().await;
}

/// The largest quantity is JSON's largest exact integer (2^53 - 1), which every step holds
/// exactly: a bucketed coupon raised to it sells, and a quantity past it, at creation or in
/// a raise, is refused with a 400 before PostgreSQL changes. The contract fuzz found a raise
/// to 2^63 - 2 answered 503: the buckets' grow took the difference as a Lua number, which
/// Redis printed in exponent form and refused as no integer, and the lander would have
/// retried it every second for ever.
#[actix_web::test]
async fn a_quantity_past_the_largest_exact_integer_is_refused() {
    const LARGEST: i64 = (1 << 53) - 1;
    let env = TestEnv::start_in(QueueKind::Kafka, 0).await;
    let coupon = env
        .create_coupon(json!({ "name": "huge", "totalQuantity": 9, "buckets": 3 }))
        .await;
    for past in [json!(LARGEST + 1), json!(i64::MAX - 1)] {
        let (status, body) = raise(&env, coupon, past.clone()).await;
        assert_eq!(
            (status, &body["error"]),
            (400, &json!("INVALID_REQUEST")),
            "{past}: {body}"
        );
        let (status, body) = env
            .post(
                "/api/v1/coupons",
                harness::ADMIN_TOKEN,
                &json!({ "name": "past", "totalQuantity": past, "buckets": 3 }),
            )
            .await;
        assert_eq!(status, 400, "{past}: {body}");
    }
    let (status, body) = raise(&env, coupon, json!(LARGEST)).await;
    assert_eq!((status, &body["landed"]), (200, &json!(true)), "{body}");
    for user in 1..=30 {
        assert_eq!(env.issue(coupon, user).await.0, 201, "user {user}");
    }
    let (_, view) = env.get(&format!("/api/v1/coupons/{coupon}")).await;
    assert_eq!(view["totalQuantity"], json!(LARGEST), "{view}");
    let created = env
        .create_coupon(json!({ "name": "largest", "totalQuantity": LARGEST, "buckets": 3 }))
        .await;
    assert_eq!(env.issue(created, 1).await.0, 201);
    env.shutdown().await;
}
