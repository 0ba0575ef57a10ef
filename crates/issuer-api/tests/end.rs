//! Moving a sale's end later (`PUT /api/v1/coupons/{id}/end`): one more of the operator's
//! versioned settings (PostgreSQL first, then Redis's meta, as pausing is), which only ever
//! moves later. A sale that had ended reopens only after the finished gates' hold
//! (`scripts/write_settings.lua`'s `opens_from`), answering ENDED meanwhile without shutting
//! a gate, so that no API's gate tells a user admitted since ENDED
//! (`coupon-core/tests/finished_gate_model.rs`); and it is taken back into the registry the
//! reconciler and the stream workers read.

// A panic is exactly the failure report wanted here.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use coupon_core::buckets::BucketCount;
use coupon_core::db::settings::Change;
use coupon_core::domain::{CouponId, QueueKind, UserId};
use serde_json::{Value, json};
use testkit::harness::{self, TestEnv};

const HOLD: Duration = Duration::from_millis(1_000);

async fn move_end(env: &TestEnv, coupon: i64, ends_at: Value) -> (u16, Value) {
    env.put(
        &format!("/api/v1/coupons/{coupon}/end"),
        harness::ADMIN_TOKEN,
        &json!({ "endsAt": ends_at }),
    )
    .await
}

fn in_minutes(minutes: i64) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::minutes(minutes)
}

#[actix_web::test]
async fn an_end_moves_only_later_and_is_answered_as_documented() {
    let env = TestEnv::start(0).await;
    let ends = in_minutes(60);
    let coupon = env
        .create_coupon(json!({ "name": "ends", "totalQuantity": 5, "endsAt": ends }))
        .await;
    let path = format!("/api/v1/coupons/{coupon}/end");

    let user = harness::user_token(1);
    let (status, _) = env
        .put(&path, &user, &json!({ "endsAt": in_minutes(90) }))
        .await;
    assert_eq!(status, 403, "a user may not move the end");
    for bad in [
        json!({}),
        json!({ "endsAt": "tomorrow" }),
        json!({ "endsAt": 5 }),
        json!([in_minutes(90)]),
        json!({ "endsAt": "10000-01-01T00:00:00Z" }),
    ] {
        let (status, body) = env.put(&path, harness::ADMIN_TOKEN, &bad).await;
        assert_eq!(
            (status, &body["error"]),
            (400, &json!("INVALID_REQUEST")),
            "{bad}: {body}"
        );
    }
    assert_eq!(
        move_end(&env, 987_654_321, json!(in_minutes(90))).await.0,
        404
    );
    let (status, body) = move_end(&env, coupon, json!(in_minutes(30))).await;
    assert_eq!(
        (status, &body["error"]),
        (409, &json!("CONFLICT")),
        "earlier: {body}"
    );
    assert_eq!(
        move_end(&env, coupon, json!(ends)).await.0,
        200,
        "the same end: idempotent"
    );

    let later = in_minutes(120);
    let (status, body) = move_end(&env, coupon, json!(later)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["couponId"], &body["landed"]),
        (&json!(coupon), &json!(true))
    );
    let shown: DateTime<Utc> = serde_json::from_value(body["endsAt"].clone()).unwrap();
    assert_eq!(shown.timestamp_millis(), later.timestamp_millis());
    let (_, read) = env.get(&format!("/api/v1/coupons/{coupon}")).await;
    assert_eq!(read["endsAt"], body["endsAt"], "{read}");
    assert_eq!(env.issue(coupon, 1).await.0, 201);

    // No end at all; from there, nothing to move.
    let (status, body) = move_end(&env, coupon, Value::Null).await;
    assert_eq!((status, &body["endsAt"]), (200, &Value::Null), "{body}");
    let (status, body) = move_end(&env, coupon, json!(in_minutes(200))).await;
    assert_eq!(status, 409, "{body}");
    env.shutdown().await;
}

/// A bucketed coupon's end is in every bucket's meta: one that ended, moved later, reopens
/// in every bucket, at once (no finished gate shuts on a bucket's answers, so none is held).
#[actix_web::test]
async fn a_bucketed_sale_that_ended_reopens_in_every_bucket_when_moved_later() {
    let env = TestEnv::start(0).await;
    let count = BucketCount::new(2).unwrap();
    let homed = |bucket: u16, from: i64| {
        (from..)
            .find(|user| count.home(UserId::new(*user).unwrap()).index() == bucket)
            .unwrap()
    };
    let ends = Utc::now() + chrono::Duration::milliseconds(1_000);
    let coupon = env
        .create_coupon(json!({ "name": "b", "totalQuantity": 100, "buckets": 2, "endsAt": ends }))
        .await;
    let left = (ends - Utc::now()).to_std().unwrap_or_default();
    actix_web::rt::time::sleep(left + Duration::from_millis(50)).await;
    for bucket in 0..2 {
        let (status, body) = env.issue(coupon, homed(bucket, 1)).await;
        assert_eq!((status, &body["result"]), (403, &json!("ENDED")), "{body}");
    }

    let (status, body) = move_end(&env, coupon, json!(in_minutes(60))).await;
    assert_eq!((status, &body["landed"]), (200, &json!(true)), "{body}");
    for bucket in 0..2 {
        assert_eq!(
            env.issue(coupon, homed(bucket, 1)).await.0,
            201,
            "bucket {bucket}"
        );
    }
    env.shutdown().await;
}

/// Waits until the reconciler has retired `coupon` from the registry (ended, every slot
/// settled), or fails after 15 s.
async fn retired(env: &TestEnv, coupon: i64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while env.registered().await.contains(&coupon) {
        assert!(Instant::now() < deadline, "coupon {coupon} never retired");
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The gate's test's shape (`finished_gate.rs`): the API's gate shuts on ENDED; another API
/// moves the end later a while after, so that the gate runs out while the reopened sale is
/// still held. Asked then, Redis answers ENDED (held, shutting no gate); after the hold,
/// the user is admitted.
#[actix_web::test]
async fn an_ended_sale_moved_later_reopens_after_the_gates_hold_and_is_registered_again() {
    let env = TestEnv::start_with_args(
        QueueKind::Kafka,
        &harness::brokers(),
        1,
        &[&format!("--finished-gate-ms={}", HOLD.as_millis())],
    )
    .await;
    let ends = Utc::now() + chrono::Duration::milliseconds(1_500);
    let coupon = env
        .create_coupon(json!({ "name": "short", "totalQuantity": 5, "endsAt": ends }))
        .await;
    assert_eq!(env.issue(coupon, 1).await.0, 201);
    let left = (ends - Utc::now()).to_std().unwrap_or_default();
    actix_web::rt::time::sleep(left + Duration::from_millis(50)).await;
    retired(&env, coupon).await;

    let shut = Instant::now();
    let (status, body) = env.issue(coupon, 2).await;
    assert_eq!((status, &body["result"]), (403, &json!("ENDED")), "{body}");

    // A time already past is no extension.
    let elsewhere = env.issuer(&env.redis_prefix).await;
    let id = CouponId::new(coupon).unwrap();
    let past = Utc::now() - chrono::Duration::milliseconds(100);
    let refused = elsewhere
        .change_settings(id, Change::EndsAt(Some(past)))
        .await;
    assert!(refused.is_err(), "{refused:?}");

    actix_web::rt::time::sleep(HOLD / 4).await;
    let moved_at = Instant::now();
    let moved = elsewhere
        .change_settings(id, Change::EndsAt(Some(in_minutes(60))))
        .await
        .unwrap();
    let move_ended = Instant::now();
    assert!(
        matches!(moved, issuer_api::issuing::SettingsChange::Landed(_)),
        "{moved:?}"
    );
    assert!(
        env.registered().await.contains(&coupon),
        "taken back into the registry"
    );

    // This API's gate has run out; the sale is still held.
    let end = shut + HOLD + Duration::from_millis(50);
    actix_web::rt::time::sleep(end.saturating_duration_since(Instant::now())).await;
    let (status, body) = env.issue(coupon, 3).await;
    assert!(
        moved_at.elapsed() < HOLD,
        "too slow to ask while the sale was held: {:?}",
        moved_at.elapsed()
    );
    assert_eq!(
        (status, &body["result"]),
        (403, &json!("ENDED")),
        "held: {body}"
    );

    let end = move_ended + HOLD + Duration::from_millis(50);
    actix_web::rt::time::sleep(end.saturating_duration_since(Instant::now())).await;
    assert_eq!(
        env.issue(coupon, 3).await.0,
        201,
        "the held refusal shut no gate"
    );
    assert_eq!(env.issue(coupon, 2).await.0, 201);
    assert_eq!(env.rows_when_settled(coupon, 3).await, vec![1, 2, 3]);
    env.shutdown().await;
}
