//! The settle (`scripts/settle.lua`), at the script: acknowledged events' pending entries
//! go, many coupons and thousands of entries in one run, and an entry that is another
//! event's (a later admission of the same user after a release) stays.

// Helpers outside `#[test]` functions panic too: in a harness that is the failure report.
#![allow(clippy::unwrap_used)]

use chrono::Utc;
use coupon_core::domain::{CouponId, UserId};
use coupon_core::event::IssueEvent;
use coupon_core::redis::ledger::{Ledger, PendingEntry};
use redis::AsyncCommands;

use testkit::shared_redis::{self, redis};

/// `count` users of `coupon` admitted, each with its pending entry written.
async fn admitted(
    con: &mut redis::aio::MultiplexedConnection,
    ledger: &Ledger,
    coupon: i64,
    count: i64,
) -> Vec<IssueEvent> {
    let coupon = CouponId::new(coupon).unwrap();
    let pending = ledger.of_coupon(coupon).keys().pending.clone();
    let events: Vec<IssueEvent> = (1..=count)
        .map(|user| IssueEvent::new(coupon, UserId::new(user).unwrap(), Utc::now()))
        .collect();
    let entries: Vec<(i64, String)> = events
        .iter()
        .map(|event| {
            (
                event.user_id.get(),
                PendingEntry::admitted(event.clone()).encode(),
            )
        })
        .collect();
    let () = con.hset_multiple(&pending, &entries).await.unwrap();
    events
}

#[tokio::test]
async fn acknowledged_entries_go_and_another_events_entry_stays() {
    let ledger = Ledger::new(shared_redis::prefix());
    let mut con = redis().await;
    // Past the script's thousand pairs a call, on one coupon.
    let hot = admitted(&mut con, &ledger, 1, 2_500).await;
    let cold = admitted(&mut con, &ledger, 2, 3).await;
    let (hot_at, cold_at) = (
        ledger.of_coupon(CouponId::new(1).unwrap()),
        ledger.of_coupon(CouponId::new(2).unwrap()),
    );
    // Every tenth hot user was released and admitted again: their entry is a later event's,
    // and the acknowledgement settles the earlier one.
    let earlier: Vec<IssueEvent> = hot
        .iter()
        .map(|event| {
            if event.user_id.get() % 10 == 0 {
                IssueEvent::new(event.coupon_id, event.user_id, Utc::now())
            } else {
                event.clone()
            }
        })
        .collect();

    let settled = ledger
        .settle(
            &mut con,
            &[
                (&hot_at, earlier.iter().collect()),
                (&cold_at, cold.iter().take(2).collect()),
            ],
        )
        .await
        .unwrap();

    assert_eq!(settled, 2_250 + 2);
    let hot_left: Vec<(i64, String)> = con.hgetall(&hot_at.keys().pending).await.unwrap();
    let mut hot_users: Vec<i64> = hot_left.iter().map(|(user, _)| *user).collect();
    hot_users.sort_unstable();
    assert_eq!(hot_users, (1..=250).map(|n| n * 10).collect::<Vec<_>>());
    for (user, text) in &hot_left {
        let event = &hot[*user as usize - 1];
        assert_eq!(text, &PendingEntry::admitted(event.clone()).encode());
    }
    let cold_left: Vec<i64> = con.hkeys(&cold_at.keys().pending).await.unwrap();
    assert_eq!(cold_left, vec![3]);

    // Settling the same events again finds nothing left to settle.
    let again = ledger
        .settle(&mut con, &[(&hot_at, earlier.iter().collect())])
        .await
        .unwrap();
    assert_eq!(again, 0);
}
