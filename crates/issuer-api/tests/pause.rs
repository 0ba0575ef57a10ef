//! Pausing and resuming a coupon's admission (`PUT /api/v1/coupons/{id}/paused`): PostgreSQL
//! first, then Redis's meta, as `coupon-core/tests/settings_model.rs` checks. The model's
//! traces are forced here on the running API: a pause whose coupon Redis lost (202, then in
//! force after the rebuild), and a rebuild that loads the meta from a read older than a pause
//! recorded as landed (the new stamp sets the record back, and the landers land it again).
//! A bucketed coupon is paused in every bucket, and stays paused in one that Redis lost and
//! its rebuild restored.

// A panic is exactly the failure report wanted here.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use coupon_core::buckets::BucketCount;
use coupon_core::db::coupons::{Verification, find_coupon, record_redis_stamp};
use coupon_core::db::schema::bucket_transfers;
use coupon_core::domain::{CouponId, CouponSettings, UserId};
use coupon_core::redis::epoch::{Stamp, instance_epoch};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};
use testkit::harness::{self, TestEnv};

async fn pause(env: &TestEnv, coupon: i64, paused: bool) -> (u16, Value) {
    env.put(
        &format!("/api/v1/coupons/{coupon}/paused"),
        harness::ADMIN_TOKEN,
        &json!({ "paused": paused }),
    )
    .await
}

/// The first answer to new users (from `from` on) that is not `skip`, within 10 s.
async fn answer_to_new_users(env: &TestEnv, coupon: i64, from: i64, skip: u16) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for user in from.. {
        let answer = env.issue_retrying(coupon, user).await;
        if answer.0 != skip || Instant::now() > deadline {
            return answer;
        }
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
    unreachable!()
}

#[actix_web::test]
async fn a_paused_coupon_refuses_new_users_and_tells_holders_the_truth() {
    let env = TestEnv::start(0).await;
    let coupon = env.coupon_with_quantity(10).await;
    assert_eq!(env.issue(coupon, 1).await.0, 201);

    let user = harness::user_token(1);
    let path = format!("/api/v1/coupons/{coupon}/paused");
    let (status, _) = env.put(&path, &user, &json!({ "paused": true })).await;
    assert_eq!(status, 403, "a user may not pause");
    for bad in [json!({}), json!({ "paused": "yes" }), json!([true])] {
        let (status, _) = env.put(&path, harness::ADMIN_TOKEN, &bad).await;
        assert_eq!(status, 400, "{bad}");
    }
    assert_eq!(pause(&env, 987_654_321, true).await.0, 404);

    let (status, body) = pause(&env, coupon, true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({ "couponId": coupon, "paused": true, "landed": true })
    );
    let (status, body) = env.issue(coupon, 2).await;
    assert_eq!((status, &body["result"]), (403, &json!("PAUSED")), "{body}");
    let (status, body) = env.issue(coupon, 1).await;
    assert_eq!(
        (status, &body["result"]),
        (409, &json!("ALREADY_ISSUED")),
        "{body}"
    );
    assert_eq!(
        env.get(&format!("/api/v1/coupons/{coupon}")).await.1["paused"],
        true
    );
    // Again: idempotent.
    assert_eq!(pause(&env, coupon, true).await.0, 200);

    let (status, body) = pause(&env, coupon, false).await;
    assert_eq!((status, &body["paused"]), (200, &json!(false)), "{body}");
    assert_eq!(env.issue(coupon, 2).await.0, 201);
    env.shutdown().await;
}

#[actix_web::test]
async fn a_pause_of_a_coupon_redis_lost_lands_with_its_rebuild() {
    // A worker: the rebuild reads the holders from PostgreSQL once the log is persisted.
    let env = TestEnv::start(1).await;
    let coupon = env.coupon_with_quantity(1000).await;
    assert_eq!(env.issue(coupon, 1).await.0, 201);
    env.flush_redis().await;

    let (status, body) = pause(&env, coupon, true).await;
    assert_eq!((status, &body["landed"]), (202, &json!(false)), "{body}");
    // The next request rebuilds the coupon from PostgreSQL, paused.
    let (status, body) = env.issue_retrying(coupon, 2).await;
    assert_eq!((status, &body["result"]), (403, &json!("PAUSED")), "{body}");
    env.shutdown().await;
}

#[actix_web::test]
async fn a_rebuild_from_a_read_older_than_a_landed_pause_is_paused_again() {
    let env = TestEnv::start(0).await;
    let coupon = env.coupon_with_quantity(1000).await;
    let id = CouponId::new(coupon).unwrap();
    // A rebuild reads the coupon before the pause...
    let mut read = find_coupon(&mut env.pg().await, id).await.unwrap().unwrap();
    assert_eq!(pause(&env, coupon, true).await.0, 200);
    read.settings = CouponSettings::default();
    assert!(!read.settings.paused);

    // ...Redis loses the coupon's state, and the rebuild loads what it read, under a new
    // stamp (recorded in PostgreSQL first, as every rebuild does).
    env.flush_redis().await;
    let scripts = env.scripts_for(coupon).await;
    let mut redis = env.redis().await;
    let lease = scripts
        .try_lease_rebuild(&mut redis, id, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("nobody else rebuilds the coupon");
    let epoch = instance_epoch(&mut redis, &env.redis_prefix).await.unwrap();
    let stamp = Stamp::fresh(&epoch);
    record_redis_stamp(&mut env.pg().await, id, &stamp, Verification::Rebuilt)
        .await
        .unwrap();
    assert!(
        scripts
            .restore(&mut redis, &read, &[], &stamp, &lease)
            .await
            .unwrap()
    );

    // The landers land the pause again into the new state.
    let (status, body) = answer_to_new_users(&env, coupon, 100, 201).await;
    assert_eq!((status, &body["result"]), (403, &json!("PAUSED")), "{body}");
    env.shutdown().await;
}

/// The next user id from `from` on whose home, among `count` buckets, is `bucket`.
fn homed_to(count: BucketCount, bucket: u16, from: i64) -> i64 {
    (from..)
        .find(|user| count.home(UserId::new(*user).unwrap()).index() == bucket)
        .unwrap()
}

#[actix_web::test]
async fn a_bucketed_coupon_is_paused_in_every_bucket_and_in_one_restored() {
    // A worker: a bucket's rebuild reads the holders once the log is persisted.
    let env = TestEnv::start(1).await;
    let count = BucketCount::new(3).unwrap();
    let coupon = env
        .create_coupon(json!({ "name": "hot", "totalQuantity": 30, "buckets": 3 }))
        .await;
    for bucket in 0..3 {
        let user = homed_to(count, bucket, 1);
        assert_eq!(env.issue(coupon, user).await.0, 201, "bucket {bucket}");
    }

    let (status, body) = pause(&env, coupon, true).await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({ "couponId": coupon, "paused": true, "landed": true })
        )
    );
    for bucket in 0..3 {
        let user = homed_to(count, bucket, 1000);
        let (status, body) = env.issue(coupon, user).await;
        assert_eq!(
            (status, &body["result"]),
            (403, &json!("PAUSED")),
            "bucket {bucket}: {body}"
        );
    }

    // Redis loses bucket 2's state; the next request homed there has it restored, paused
    // (the restore writes the settings it read, as a coupon's load does).
    env.lose_bucket_state(coupon, 2).await;
    let user = homed_to(count, 2, 2000);
    let (status, body) = env.issue_retrying(coupon, user).await;
    assert_eq!((status, &body["result"]), (403, &json!("PAUSED")), "{body}");

    let (status, body) = pause(&env, coupon, false).await;
    assert_eq!((status, &body["landed"]), (200, &json!(true)), "{body}");
    for bucket in 0..3 {
        let user = homed_to(count, bucket, 3000);
        assert_eq!(env.issue(coupon, user).await.0, 201, "bucket {bucket}");
    }
    env.shutdown().await;
}

#[actix_web::test]
async fn a_paused_bucket_with_no_stock_moves_none_in() {
    let env = TestEnv::start(0).await;
    let count = BucketCount::new(2).unwrap();
    let coupon = env
        .create_coupon(json!({ "name": "hot", "totalQuantity": 2, "buckets": 2 }))
        .await;
    // Bucket 0's one unit taken: it is dry, and bucket 1 still has its unit.
    assert_eq!(env.issue(coupon, homed_to(count, 0, 1)).await.0, 201);
    assert_eq!(pause(&env, coupon, true).await.0, 200);

    let (status, body) = env.issue(coupon, homed_to(count, 0, 100)).await;
    assert_eq!((status, &body["result"]), (403, &json!("PAUSED")), "{body}");
    // Paused where it would admit once stock came: no transfer was made for it.
    let transfers: i64 = bucket_transfers::table
        .filter(bucket_transfers::coupon_id.eq(coupon))
        .count()
        .get_result(&mut env.pg().await)
        .await
        .unwrap();
    assert_eq!(transfers, 0);
    env.shutdown().await;
}

#[actix_web::test]
async fn a_bucket_redis_fails_on_stops_no_other_buckets_pause() {
    let env = TestEnv::start(0).await;
    let count = BucketCount::new(2).unwrap();
    let coupon = env
        .create_coupon(json!({ "name": "hot", "totalQuantity": 20, "buckets": 2 }))
        .await;
    // Bucket 0's meta turned into a string: every script on it fails (WRONGTYPE), as a
    // shard failing over fails its calls.
    let keys = env.bucket_state(coupon, 0).await.0;
    let _: () = redis::cmd("SET")
        .arg(&keys.meta)
        .arg("broken")
        .query_async(&mut env.redis().await)
        .await
        .unwrap();

    let (status, body) = pause(&env, coupon, true).await;
    assert_eq!((status, &body["landed"]), (202, &json!(false)), "{body}");
    // Bucket 1 took it all the same, at once.
    let (status, body) = env.issue(coupon, homed_to(count, 1, 1)).await;
    assert_eq!((status, &body["result"]), (403, &json!("PAUSED")), "{body}");
    env.shutdown().await;
}
