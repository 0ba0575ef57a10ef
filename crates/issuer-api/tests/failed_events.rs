//! Failed events in an operator's hands through the admin routes (`GET
//! /api/v1/failed-events`, `POST .../{id}/replay`, `POST .../{id}/discard`), on the real
//! PostgreSQL: each event is put in the exact state wanted by writing its row directly, as
//! the workers would have.

// A panic is exactly the failure report wanted here.
#![allow(clippy::unwrap_used)]

use coupon_core::buckets::BucketCount;
use coupon_core::db::failed_events::unrecovered_ids;
use coupon_core::db::schema::failed_events;
use coupon_core::domain::{CouponId, UserId};
use coupon_core::event::IssueEvent;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};
use testkit::harness::{self, TestEnv};

/// A failed event's row as a worker writes it; its id.
async fn failed(env: &TestEnv, reason: &str, status: &str, payload: Vec<u8>, user: i64) -> i64 {
    use diesel::ExpressionMethods;
    let source = format!("test:{}", uuid::Uuid::new_v4());
    diesel::insert_into(failed_events::table)
        .values((
            failed_events::reason.eq(reason),
            failed_events::detail.eq("set aside by the test"),
            failed_events::source.eq(source),
            failed_events::user_id.eq(user),
            failed_events::payload.eq(payload),
            failed_events::status.eq(status),
        ))
        .returning(failed_events::id)
        .get_result(&mut env.pg().await)
        .await
        .unwrap()
}

/// A coupon of `quantity` units whose first is user 1's, admitted and its row written.
async fn coupon_held_by_user_one(env: &TestEnv, quantity: i64) -> i64 {
    let coupon = env.coupon_with_quantity(quantity).await;
    assert_eq!(env.issue(coupon, 1).await.0, 201);
    assert_eq!(env.rows_when_settled(coupon, 1).await, vec![1]);
    coupon
}

fn event(coupon: i64, user: i64) -> Vec<u8> {
    IssueEvent::new(
        CouponId::new(coupon).unwrap(),
        UserId::new(user).unwrap(),
        chrono::Utc::now(),
    )
    .encode()
}

async fn get_as(env: &TestEnv, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = env.client.get(env.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let mut response = request.send().await.unwrap();
    let body = response.body().await.unwrap();
    (
        response.status().as_u16(),
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

async fn act(env: &TestEnv, id: impl std::fmt::Display, action: &str) -> (u16, Value) {
    env.post(
        &format!("/api/v1/failed-events/{id}/{action}"),
        harness::ADMIN_TOKEN,
        &json!({}),
    )
    .await
}

/// The listed event `id`, if the list holds it.
fn listed(list: &Value, id: i64) -> Option<Value> {
    list["failedEvents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["id"] == id)
        .cloned()
}

#[actix_web::test]
async fn failed_events_are_listed_replayed_and_discarded_by_admins_only() {
    let env = TestEnv::start(0).await;
    let coupon = env.coupon_with_quantity(10).await;
    let rejected = failed(&env, "REJECTED", "ABANDONED", event(coupon, 7), 7).await;
    let over = failed(&env, "OVER_QUANTITY", "ABANDONED", event(coupon, 8), 8).await;
    let undecodable = failed(&env, "UNDECODABLE", "PENDING", b"{not an event".to_vec(), 9).await;

    // Admins only.
    let path = "/api/v1/failed-events";
    assert_eq!(get_as(&env, path, None).await.0, 401);
    let user = harness::user_token(7);
    assert_eq!(get_as(&env, path, Some(&user)).await.0, 403);
    let (status, _) = env
        .post(&format!("{path}/{rejected}/discard"), &user, &json!({}))
        .await;
    assert_eq!(status, 403, "a user may not discard");

    // Listed, by status, with a bounded limit; a bad query is the client's mistake.
    let (status, abandoned) = env
        .get(&format!("{path}?status=ABANDONED&limit=1000"))
        .await;
    assert_eq!(status, 200, "{abandoned}");
    assert!(listed(&abandoned, rejected).is_some() && listed(&abandoned, over).is_some());
    assert!(listed(&abandoned, undecodable).is_none(), "{abandoned}");
    // Narrowed to one coupon's (the console's list of a sale's events).
    let other = env.coupon_with_quantity(10).await;
    let others = failed(&env, "REJECTED", "ABANDONED", event(other, 7), 7).await;
    {
        use diesel::{ExpressionMethods, QueryDsl};
        // The coupon the worker read from the event, as it records it.
        diesel::update(failed_events::table.find(others))
            .set(failed_events::coupon_id.eq(other))
            .execute(&mut env.pg().await)
            .await
            .unwrap();
    }
    let (status, one) = env.get(&format!("{path}?couponId={other}")).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["failedEvents"].as_array().unwrap().len(), 1, "{one}");
    assert!(listed(&one, others).is_some(), "{one}");
    for bad in [
        "?limit=0",
        "?limit=1001",
        "?status=LOST",
        "?limit=x",
        "?colour=red",
        "?couponId=0",
        "?couponId=x",
        // Empty is no coupon at all, not "every coupon" (the contract fuzzer's ST201).
        "?couponId=",
        "?status=",
        "?limit=",
    ] {
        let (status, body) = env.get(&format!("{path}{bad}")).await;
        assert_eq!(
            (status, &body["error"]),
            (400, &json!("INVALID_REQUEST")),
            "{bad}"
        );
    }

    // A replay makes the event a row, and records who did it.
    let (status, replayed) = act(&env, rejected, "replay").await;
    assert_eq!(
        (status, &replayed["status"]),
        (200, &json!("RECOVERED")),
        "{replayed}"
    );
    assert_eq!(env.rows(coupon).await, vec![7]);
    let (_, all) = env.get(&format!("{path}?limit=1000")).await;
    let row = listed(&all, rejected).unwrap();
    assert_eq!(row["status"], "RECOVERED");
    assert_eq!(row["resolvedBy"], "the admin token");

    // An OVER_QUANTITY event takes a slot in Redis first (one is free here), then its row.
    let (status, body) = act(&env, over, "replay").await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("RECOVERED")),
        "{body}"
    );
    assert_eq!(env.rows(coupon).await, vec![7, 8]);
    assert_eq!(env.redis_holders(coupon).await, vec![7, 8]);

    // A discard sets the event aside for good: `--all` passes it over.
    let (status, discarded) = act(&env, undecodable, "discard").await;
    assert_eq!(
        (status, &discarded["status"]),
        (200, &json!("DISCARDED")),
        "{discarded}"
    );
    assert_eq!(discarded["resolvedBy"], "the admin token");
    assert_eq!(discarded["nextRetryAt"], Value::Null);
    let left = unrecovered_ids(&mut env.pg().await).await.unwrap();
    assert!(
        !left.contains(&over) && !left.contains(&undecodable),
        "{left:?}"
    );
    // Again: answered as it is.
    assert_eq!(act(&env, undecodable, "discard").await.0, 200);

    // A recovered event is a row: nothing to discard.
    assert_eq!(act(&env, rejected, "discard").await.0, 409);
    // No such event; no such id.
    for action in ["replay", "discard"] {
        let (status, body) = act(&env, 987_654_321, action).await;
        assert_eq!(
            (status, &body["error"]),
            (404, &json!("FAILED_EVENT_NOT_FOUND"))
        );
        let (status, body) = act(&env, "abc", action).await;
        assert_eq!((status, &body["error"]), (400, &json!("INVALID_REQUEST")));
    }
    env.shutdown().await;
}

/// A failed event's reason is its last failure's: an event set aside as COUPON_NOT_FOUND
/// whose retry meets a full coupon is OVER_QUANTITY from then on, abandoned for a person
/// (never retried on schedule). Its replay meets the full coupon again, and takes no slot.
#[actix_web::test]
async fn a_retry_that_meets_a_full_coupon_makes_the_event_over_quantity() {
    use diesel::{ExpressionMethods, QueryDsl};
    let env = TestEnv::start(0).await;
    let coupon = env.coupon_with_quantity(1).await;
    // The coupon's one unit is a row already, on its slot.
    let taken = failed(&env, "REJECTED", "ABANDONED", event(coupon, 1), 1).await;
    assert_eq!(act(&env, taken, "replay").await.1["status"], "RECOVERED");
    let orphan = failed(&env, "COUPON_NOT_FOUND", "RETRYING", event(coupon, 2), 2).await;
    diesel::update(failed_events::table.find(orphan))
        .set(failed_events::next_retry_at.eq(chrono::Utc::now()))
        .execute(&mut env.pg().await)
        .await
        .unwrap();

    coupon_core::db::redrive::redrive_due(&mut env.pg().await, 10)
        .await
        .unwrap();
    let (_, all) = env.get("/api/v1/failed-events?limit=1000").await;
    let row = listed(&all, orphan).unwrap();
    assert_eq!(
        (&row["reason"], &row["status"]),
        (&json!("OVER_QUANTITY"), &json!("ABANDONED")),
        "{row}"
    );
    let (status, body) = act(&env, orphan, "replay").await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("ABANDONED")),
        "{body}"
    );
    assert_eq!(env.rows(coupon).await, vec![1]);
    assert_eq!(env.redis_holders(coupon).await, vec![1], "nothing taken");
    env.shutdown().await;
}

/// A replay of a RECOVERED event answers it as it is: it is a row, and whoever recovered
/// it stays recorded.
#[actix_web::test]
async fn a_replay_of_a_recovered_event_changes_nothing() {
    let env = TestEnv::start(0).await;
    let coupon = env.coupon_with_quantity(10).await;
    let id = failed(&env, "REJECTED", "ABANDONED", event(coupon, 1), 1).await;
    assert_eq!(act(&env, id, "replay").await.1["status"], "RECOVERED");
    let (_, before) = env.get("/api/v1/failed-events?limit=1000").await;
    let (status, again) = act(&env, id, "replay").await;
    assert_eq!((status, &again["status"]), (200, &json!("RECOVERED")));
    let (_, after) = env.get("/api/v1/failed-events?limit=1000").await;
    assert_eq!(
        listed(&before, id),
        listed(&after, id),
        "attempts, resolvedBy kept"
    );
    env.shutdown().await;
}

/// A user Redis admitted beyond the quantity (its state lost, the slot with it) and the
/// database's guard refused: the replay's row stands on a slot in Redis. The database full,
/// the guard refuses it again, with its reason, and nothing is taken. After a raise, the
/// slot is the raised unit's, and the row follows: a newcomer is told SOLD_OUT, not
/// admitted on a unit the row spent and then refused. A state closed for its rebuild, or
/// one with no unit free while PostgreSQL has room (its quantity raised alone), gets no
/// slot, and the row written before it is rolled back (`replay_model.rs`).
#[actix_web::test]
async fn an_over_quantity_event_is_replayed_onto_a_slot_taken_first() {
    use diesel::{ExpressionMethods, QueryDsl};
    let env = TestEnv::start(1).await;
    let coupon = coupon_held_by_user_one(&env, 1).await;
    let over = failed(&env, "OVER_QUANTITY", "ABANDONED", event(coupon, 2), 2).await;

    let (status, body) = act(&env, over, "replay").await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("ABANDONED")),
        "{body}"
    );
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("already holds its quantity")),
        "{body}"
    );
    assert_eq!(env.redis_holders(coupon).await, vec![1]);
    assert_eq!(env.rows(coupon).await, vec![1]);

    let (status, body) = env
        .put(
            &format!("/api/v1/coupons/{coupon}/quantity"),
            harness::ADMIN_TOKEN,
            &json!({ "totalQuantity": 2 }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Closed for its rebuild (as a lease closes it): the row passes the guard, no slot is
    // taken, the row is rolled back, and the rebuild it starts opens it for the next try.
    let _: () = redis::AsyncCommands::hset(
        &mut env.redis().await,
        &env.keys(coupon).meta,
        "epoch",
        "rebuilding",
    )
    .await
    .unwrap();
    let (status, body) = act(&env, over, "replay").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(env.rows(coupon).await, vec![1]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (status, body) = loop {
        let answer = act(&env, over, "replay").await;
        if answer.0 != 503 || std::time::Instant::now() > deadline {
            break answer;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("RECOVERED")),
        "rebuilt, and the raised unit free: {body}"
    );
    assert_eq!(env.redis_holders(coupon).await, vec![1, 2]);
    assert_eq!(env.rows(coupon).await, vec![1, 2]);
    let (status, body) = env.issue(coupon, 3).await;
    assert_eq!(
        (status, &body["result"]),
        (410, &json!("SOLD_OUT")),
        "{body}"
    );

    // PostgreSQL's quantity raised alone (by hand, or a raise whose Redis side has not
    // landed): the row passes the guard, finds no unit free in Redis, and is rolled back.
    let full = coupon_held_by_user_one(&env, 1).await;
    let beyond = failed(&env, "OVER_QUANTITY", "ABANDONED", event(full, 2), 2).await;
    diesel::update(coupon_core::db::schema::coupons::table.find(full))
        .set(coupon_core::db::schema::coupons::total_quantity.eq(2))
        .execute(&mut env.pg().await)
        .await
        .unwrap();
    let (status, body) = act(&env, beyond, "replay").await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|message| message.contains("raise the quantity first")),
        "{body}"
    );
    assert_eq!(env.rows(full).await, vec![1], "the row rolled back");
    assert_eq!(env.redis_holders(full).await, vec![1]);

    // A user whose own admission is still pending (its event not acknowledged, so its slot
    // may yet be given back) cannot carry the row: 409, nothing written.
    let other = env.coupon_with_quantity(5).await;
    let pending = failed(&env, "OVER_QUANTITY", "ABANDONED", event(other, 5), 5).await;
    let keys = env.keys(other);
    let mut redis = env.redis().await;
    let _: () = redis::AsyncCommands::sadd(&mut redis, &keys.issued, 5)
        .await
        .unwrap();
    let _: () = redis::AsyncCommands::hset(&mut redis, &keys.pending, 5, "in flight")
        .await
        .unwrap();
    let (status, body) = act(&env, pending, "replay").await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("still being delivered"),
        "{body}"
    );
    assert_eq!(env.rows(other).await, Vec::<i64>::new());
    env.shutdown().await;
}

/// A bucketed coupon's OVER_QUANTITY event: the slot is taken in the user's home bucket,
/// under its stamp. The database full: refused again. After a raise, which grows another bucket, a
/// supply moves the unit into the home, and the row follows; newcomers are told SOLD_OUT
/// in both buckets.
#[actix_web::test]
async fn a_bucketed_over_quantity_event_is_replayed_onto_a_slot_in_its_home_bucket() {
    let env = TestEnv::start(1).await;
    let count = BucketCount::new(2).unwrap();
    let homed = |bucket: u16, from: i64| {
        (from..)
            .find(|user| count.home(UserId::new(*user).unwrap()).index() == bucket)
            .unwrap()
    };
    let coupon = env
        .create_coupon(json!({ "name": "hot", "totalQuantity": 2, "buckets": 2 }))
        .await;
    let (first, second, over_user) = (homed(0, 1), homed(1, 1), homed(1, 100));
    // Bucket 1's one unit is the second user's; bucket 0's the first's.
    assert_eq!(env.issue(coupon, first).await.0, 201);
    assert_eq!(env.issue(coupon, second).await.0, 201);
    let mut rows = vec![first, second];
    rows.sort_unstable();
    assert_eq!(env.rows_when_settled(coupon, 2).await, rows);
    let over = failed(
        &env,
        "OVER_QUANTITY",
        "ABANDONED",
        event(coupon, over_user),
        over_user,
    )
    .await;

    // The database is full: refused again with the guard's reason, nothing taken.
    let (status, body) = act(&env, over, "replay").await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("ABANDONED")),
        "{body}"
    );
    assert_eq!(env.rows(coupon).await, rows);

    // The raise's unit goes to bucket 0 (shares of 3 over 2 buckets: 2 and 1).
    let (status, body) = env
        .put(
            &format!("/api/v1/coupons/{coupon}/quantity"),
            harness::ADMIN_TOKEN,
            &json!({ "totalQuantity": 3 }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = act(&env, over, "replay").await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("RECOVERED")),
        "{body}"
    );
    let home = env.bucket_state(coupon, 1).await.0;
    let mut holders: Vec<i64> =
        redis::AsyncCommands::smembers(&mut env.redis().await, &home.issued)
            .await
            .unwrap();
    holders.sort_unstable();
    assert_eq!(holders, vec![second.min(over_user), second.max(over_user)]);
    rows.push(over_user);
    rows.sort_unstable();
    assert_eq!(env.rows(coupon).await, rows);
    for bucket in 0..2 {
        let (status, body) = env.issue(coupon, homed(bucket, 1000)).await;
        assert_eq!(
            (status, &body["result"]),
            (410, &json!("SOLD_OUT")),
            "bucket {bucket}: {body}"
        );
    }
    env.shutdown().await;
}

/// A bucketed replay whose row the database refuses takes nothing in its home bucket: the
/// row comes first, and the slot only for a row written. Forced: Redis lost the first
/// user's slot in bucket 0 (the fault that makes OVER_QUANTITY events), so bucket 0 has a
/// unit free while the database is full.
#[actix_web::test]
async fn a_bucketed_replay_whose_row_is_refused_takes_nothing() {
    let env = TestEnv::start(1).await;
    let count = BucketCount::new(2).unwrap();
    let homed = |bucket: u16, from: i64| {
        (from..)
            .find(|user| count.home(UserId::new(*user).unwrap()).index() == bucket)
            .unwrap()
    };
    let coupon = env
        .create_coupon(json!({ "name": "hot", "totalQuantity": 2, "buckets": 2 }))
        .await;
    let (first, second, over_user) = (homed(0, 1), homed(1, 1), homed(0, 100));
    assert_eq!(env.issue(coupon, first).await.0, 201);
    assert_eq!(env.issue(coupon, second).await.0, 201);
    assert_eq!(env.rows_when_settled(coupon, 2).await.len(), 2);
    let zero = env.bucket_state(coupon, 0).await.0;
    let mut redis = env.redis().await;
    let _: i64 = redis::AsyncCommands::srem(&mut redis, &zero.issued, first)
        .await
        .unwrap();
    let over = failed(
        &env,
        "OVER_QUANTITY",
        "ABANDONED",
        event(coupon, over_user),
        over_user,
    )
    .await;

    let (status, body) = act(&env, over, "replay").await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("ABANDONED")),
        "{body}"
    );
    let held: Vec<i64> = redis::AsyncCommands::smembers(&mut redis, &zero.issued)
        .await
        .unwrap();
    let entry: Option<String> = redis::AsyncCommands::hget(&mut redis, &zero.pending, over_user)
        .await
        .unwrap();
    assert_eq!((held, entry), (vec![], None), "bucket 0 as it was");
    env.shutdown().await;
}

/// A REJECTED event the database refuses again for its own reason is answered with that
/// reason, whatever Redis has free: its row is tried before any slot. Taking the slot
/// first (before), a sold-out coupon answered 409 "raise the quantity first", and a raise
/// would have had its unit taken, given back and sold to someone else.
#[actix_web::test]
async fn a_rejected_event_refused_again_is_answered_with_its_reason_on_a_sold_out_coupon() {
    let env = TestEnv::start(1).await;
    let coupon = coupon_held_by_user_one(&env, 1).await;
    // Refused by name before the insert: a time before PostgreSQL's first.
    let ancient = chrono::NaiveDate::from_ymd_opt(-5000, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let payload = IssueEvent::new(
        CouponId::new(coupon).unwrap(),
        UserId::new(5).unwrap(),
        ancient,
    )
    .encode();
    let rejected = failed(&env, "REJECTED", "ABANDONED", payload, 5).await;

    let (status, body) = act(&env, rejected, "replay").await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("ABANDONED")),
        "{body}"
    );
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("earliest timestamp")),
        "{body}"
    );
    assert_eq!(env.rows(coupon).await, vec![1]);
    assert_eq!(env.redis_holders(coupon).await, vec![1]);
    env.shutdown().await;
}

/// The workers' scheduled retry locks a failed event, then its coupon's row; a replay takes
/// them in the same order. Forced: a session holds the event locked, as a retry does, while
/// the replay comes; once the replay waits, the session locks the coupon's row. With the
/// coupon's row locked first (before), each waited on the other and PostgreSQL aborted one
/// (deadlock detected): a replay answered 503 with its slot left taken, or the retry lost.
#[actix_web::test]
async fn a_replay_and_a_scheduled_retry_lock_in_one_order() {
    let env = TestEnv::start(0).await;
    let coupon = env.coupon_with_quantity(2).await;
    let id = failed(&env, "REJECTED", "RETRYING", event(coupon, 5), 5).await;
    let mut retry = env.pg().await;
    for statement in [
        "BEGIN".to_owned(),
        format!("SELECT id FROM failed_events WHERE id = {id} FOR UPDATE"),
    ] {
        diesel::sql_query(statement)
            .execute(&mut retry)
            .await
            .unwrap();
    }
    let retry_goes_on = async {
        let mut watch = env.pg().await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let waiting: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                "(SELECT count(*) FROM pg_stat_activity \
                  WHERE datname = current_database() AND wait_event_type = 'Lock')",
            ))
            .get_result(&mut watch)
            .await
            .unwrap();
            if waiting > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the replay never waited on the event"
            );
            actix_web::rt::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let locked = diesel::sql_query(format!(
            "SELECT id FROM coupons WHERE id = {coupon} FOR UPDATE"
        ))
        .execute(&mut retry)
        .await;
        diesel::sql_query("COMMIT")
            .execute(&mut retry)
            .await
            .unwrap();
        locked
    };
    let ((status, body), locked) =
        futures_util::future::join(act(&env, id, "replay"), retry_goes_on).await;

    assert!(locked.is_ok(), "the retry's lock of the coupon: {locked:?}");
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("RECOVERED")),
        "{body}"
    );
    assert_eq!(env.rows(coupon).await, vec![5]);
    assert_eq!(env.redis_holders(coupon).await, vec![5]);
    env.shutdown().await;
}

/// Any replay that may write a row writes it on its user's slot, whatever the event's
/// reason: a REJECTED one (an OVER_QUANTITY event whose replay was refused for another
/// reason becomes one) written on no slot would spend a unit Redis still sells, and the
/// user admitted on it would be told 201 and refused.
#[actix_web::test]
async fn a_rejected_event_is_replayed_onto_a_slot_too() {
    let env = TestEnv::start(1).await;
    let coupon = coupon_held_by_user_one(&env, 2).await;
    let rejected = failed(&env, "REJECTED", "ABANDONED", event(coupon, 5), 5).await;

    let (status, body) = act(&env, rejected, "replay").await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("RECOVERED")),
        "{body}"
    );
    assert_eq!(env.rows(coupon).await, vec![1, 5]);
    assert_eq!(
        env.redis_holders(coupon).await,
        vec![1, 5],
        "the row's unit has its slot"
    );
    let (status, body) = env.issue(coupon, 6).await;
    assert_eq!(
        (status, &body["result"]),
        (410, &json!("SOLD_OUT")),
        "{body}"
    );
    env.shutdown().await;
}
