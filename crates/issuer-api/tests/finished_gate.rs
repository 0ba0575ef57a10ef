//! The finished gate (`issuing/finished_gate.rs`): once admission answered SOLD_OUT or ENDED
//! for a coupon, the API answers it from memory for ISSUER_FINISHED_GATE_MS, holders still
//! with their 409; stock that comes back to a sold-out coupon (a raise, a slot given back)
//! is held in Redis as long (`scripts/stock_hold.lua`), refused meanwhile without shutting
//! a gate, then sold. `coupon-core/tests/finished_gate_model.rs` checks the protocol.

// A panic is exactly the failure report wanted here.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use coupon_core::domain::{CouponId, QueueKind, UserId};
use coupon_core::redis::admission::AdmitReply;
use coupon_core::redis::ledger::{Ledger, PendingEntry};
use redis::AsyncCommands;
use serde_json::json;
use testkit::harness::{self, TestEnv};

const HOLD: Duration = Duration::from_millis(1_000);

async fn gated() -> TestEnv {
    TestEnv::start_with_args(
        QueueKind::Kafka,
        &harness::brokers(),
        1,
        &[&format!("--finished-gate-ms={}", HOLD.as_millis())],
    )
    .await
}

/// The API's count of answers the gate gave.
async fn gate_answers(env: &TestEnv) -> u64 {
    let (status, text) = env.get_url(&env.url("/metrics")).await;
    assert_eq!(status, 200);
    text.lines()
        .find_map(|line| line.strip_prefix("coupon_finished_gate_answers_total "))
        .unwrap()
        .parse()
        .unwrap()
}

/// Waits until no pending entry is left in `coupon`'s state: its holders are settled, and a
/// gate shut now tells them their 409 itself.
async fn entries_settled(env: &TestEnv, coupon: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !env.pending_entries(coupon).await.is_empty() {
        assert!(Instant::now() < deadline, "entries never settled");
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits out what is left of a hold that began at `from` (and a little more: Redis's clock
/// and this one's are read a few milliseconds apart).
async fn runs_out(from: Instant) {
    let end = from + HOLD + Duration::from_millis(50);
    actix_web::rt::time::sleep(end.saturating_duration_since(Instant::now())).await;
}

/// Sold out, the gate refuses newcomers and tells holders theirs without Redis. Another
/// API's raise is held in Redis for the gates' hold: refused there meanwhile (and no gate
/// shut on that), then sold.
#[actix_web::test]
async fn a_sold_out_coupon_is_answered_from_memory_and_a_raise_is_sold_after_the_hold() {
    let env = gated().await;
    let coupon = env.coupon_with_quantity(2).await;
    for user in [1, 2] {
        assert_eq!(env.issue(coupon, user).await.0, 201);
    }
    entries_settled(&env, coupon).await;
    let shut = Instant::now();
    assert_eq!(env.issue(coupon, 3).await.0, 410);
    let before = gate_answers(&env).await;
    let (status, body) = env.issue(coupon, 4).await;
    assert_eq!(
        (status, &body["result"]),
        (410, &json!("SOLD_OUT")),
        "{body}"
    );
    let (status, body) = env.issue(coupon, 1).await;
    assert_eq!(
        (status, &body["result"]),
        (409, &json!("ALREADY_ISSUED")),
        "{body}"
    );
    assert_eq!(
        gate_answers(&env).await,
        before + 2,
        "both answered from memory"
    );

    // Raised by another API a while after the gate shut, so that the gate runs out while
    // the raised unit is still held.
    actix_web::rt::time::sleep(HOLD / 4).await;
    let elsewhere = env.issuer(&env.redis_prefix).await;
    let raised_at = Instant::now();
    let raised = elsewhere
        .raise_quantity(CouponId::new(coupon).unwrap(), 3)
        .await
        .unwrap();
    // The hold began between the two.
    let raise_ended = Instant::now();
    assert!(
        matches!(raised, issuer_api::issuing::Raise::Landed(_)),
        "{raised:?}"
    );

    runs_out(shut).await;
    let (status, body) = env.issue(coupon, 4).await;
    assert!(
        raised_at.elapsed() < HOLD,
        "too slow to ask while the raise was held: {:?}",
        raised_at.elapsed()
    );
    assert_eq!(
        (status, &body["result"]),
        (410, &json!("SOLD_OUT")),
        "{body}"
    );
    assert_eq!(gate_answers(&env).await, before + 2, "asked Redis, held");

    runs_out(raise_ended).await;
    assert_eq!(
        env.issue(coupon, 4).await.0,
        201,
        "the held refusal shut no gate"
    );
    assert_eq!(env.rows_when_settled(coupon, 3).await, vec![1, 2, 4]);
    env.shutdown().await;
}

/// A slot given back (its publish never reached the log) to a sold-out coupon is held for
/// the gates' hold; one given back while stock is left is sold at once.
#[actix_web::test]
async fn a_slot_given_back_to_a_sold_out_coupon_is_held() {
    let env = gated().await;
    let ledger = Ledger::new(env.redis_prefix.clone()).with_reopen_hold(HOLD);
    let mut redis = env.redis().await;
    for (quantity, held) in [(1, true), (2, false)] {
        let coupon = env.coupon_with_quantity(quantity).await;
        let id = CouponId::new(coupon).unwrap();
        let scripts = env.scripts_for(coupon).await;
        let reply = scripts
            .admit(&mut redis, id, UserId::new(1).unwrap())
            .await
            .unwrap();
        let AdmitReply::Admitted(event) = reply else {
            panic!("not admitted: {reply:?}")
        };
        let released_at = Instant::now();
        let released = ledger
            .release(
                &mut redis,
                &ledger.of_coupon(id),
                &PendingEntry::admitted(event),
            )
            .await
            .unwrap();
        assert!(released);
        let sells_from: Option<i64> = redis
            .hget(&env.keys(coupon).meta, "sells_from")
            .await
            .unwrap();
        assert_eq!(
            sells_from.is_some(),
            held,
            "quantity {quantity}: {sells_from:?}"
        );
        if held {
            assert_eq!(env.issue(coupon, 2).await.0, 410);
            assert!(
                released_at.elapsed() < HOLD,
                "too slow: {:?}",
                released_at.elapsed()
            );
            runs_out(released_at).await;
        }
        assert_eq!(env.issue(coupon, 2).await.0, 201, "quantity {quantity}");
    }
    env.shutdown().await;
}

/// ENDED shuts the gate as SOLD_OUT does, and holders still get their 409.
#[actix_web::test]
async fn an_ended_coupon_is_answered_from_memory() {
    let env = gated().await;
    let ends = chrono::Utc::now() + chrono::Duration::milliseconds(1_500);
    let coupon = env
        .create_coupon(json!({ "name": "short", "totalQuantity": 5, "endsAt": ends }))
        .await;
    assert_eq!(env.issue(coupon, 1).await.0, 201);
    let left = (ends - chrono::Utc::now()).to_std().unwrap_or_default();
    actix_web::rt::time::sleep(left + Duration::from_millis(50)).await;
    let (status, body) = env.issue(coupon, 2).await;
    assert_eq!((status, &body["result"]), (403, &json!("ENDED")), "{body}");
    let before = gate_answers(&env).await;
    let (status, body) = env.issue(coupon, 3).await;
    assert_eq!((status, &body["result"]), (403, &json!("ENDED")), "{body}");
    assert_eq!(env.issue(coupon, 1).await.0, 409);
    assert_eq!(gate_answers(&env).await, before + 2);
    env.shutdown().await;
}

/// A rebuild may give back slots whose events never reached the log, so it reopens a coupon
/// no sooner than the longest hold after closing it, whatever its own setting: by then
/// every API's gate shut before has run out. In the Redis queue mode, which has no publish
/// window to wait out, nothing else makes it wait that long.
#[actix_web::test]
async fn a_rebuild_reopens_no_sooner_than_the_longest_hold() {
    let env = TestEnv::start_in(QueueKind::Redis, 0).await;
    let coupon = env.coupon_with_quantity(1).await;
    let rebuilder = env.issuer(&env.redis_prefix).await;
    let began = Instant::now();
    let rebuilt = rebuilder
        .rebuild(&[CouponId::new(coupon).unwrap()])
        .await
        .unwrap();
    assert_eq!(rebuilt.len(), 1, "{rebuilt:?}");
    assert!(
        began.elapsed() >= HOLD,
        "reopened {:?} after it began",
        began.elapsed()
    );
    assert_eq!(env.issue(coupon, 1).await.0, 201);
    env.shutdown().await;
}
