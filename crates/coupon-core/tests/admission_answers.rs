//! Admission's answers, at the script: every combination of the state admission reads gets
//! the answer of the first rule that applies, in the order `scripts/admission.lua` states:
//! a holder is told about its slot, then the windows, the stock, a pause, stock held. The
//! script asks whether the user holds a slot only where the answer depends on it (to save
//! a Redis call on every admission), so the order it asks in is not the order of the rules;
//! this test is what holds the two together, on a real Redis, in both queue modes.

// Helpers outside `#[test]` functions panic too: in a harness that is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use coupon_core::domain::{CouponId, QueueKind, UserId};
use coupon_core::event::IssueEvent;
use coupon_core::redis::admission::{AdmissionScripts, AdmitReply};
use coupon_core::redis::epoch::{Stamp, instance_epoch};
use coupon_core::redis::keys::CouponKeys;
use redis::streams::StreamRangeReply;
use redis::{AsyncCommands, FromRedisValue};

use testkit::shared_redis::{self, redis};

const USER: i64 = 7;
const OTHER: i64 = 8;
const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Holder {
    No,
    Settled,
    Pending,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Window {
    Absent,
    Past,
    Future,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Bucketed {
    No,
    Yes,
    SoldOutMarked,
}

#[derive(Debug, Clone, Copy)]
struct State {
    holder: Holder,
    starts: Window,
    ends: Window,
    end_moved_held: bool,
    stock_left: bool,
    bucketed: Bucketed,
    paused: bool,
    stock_held: bool,
}

/// The answer by the rules, in their order: the script's codes.
fn expected(state: State) -> i64 {
    match state.holder {
        Holder::Pending => return 6,
        Holder::Settled => return 2,
        Holder::No => {}
    }
    if state.starts == Window::Future {
        return 4;
    }
    if state.ends == Window::Past {
        return 5;
    }
    if state.end_moved_held {
        return 11;
    }
    if !state.stock_left {
        return match (state.bucketed, state.paused) {
            (Bucketed::No | Bucketed::SoldOutMarked, _) => 3,
            (Bucketed::Yes, true) => 10,
            (Bucketed::Yes, false) => 8,
        };
    }
    if state.paused {
        return 10;
    }
    if state.stock_held {
        return 9;
    }
    1
}

fn code(reply: &AdmitReply) -> i64 {
    use coupon_core::domain::Admission;
    match reply {
        AdmitReply::NotLoaded => 0,
        AdmitReply::Admitted(_) => 1,
        AdmitReply::Refused(Admission::AlreadyIssued) => 2,
        AdmitReply::Refused(Admission::SoldOut) => 3,
        AdmitReply::Refused(Admission::NotStarted) => 4,
        AdmitReply::Refused(Admission::Ended) => 5,
        AdmitReply::Pending => 6,
        AdmitReply::Unverified => 7,
        AdmitReply::Dry => 8,
        AdmitReply::Held(Admission::SoldOut) => 9,
        AdmitReply::Refused(Admission::Paused) => 10,
        AdmitReply::Held(Admission::Ended) => 11,
        other => panic!("an answer admission does not give: {other:?}"),
    }
}

fn every_state() -> Vec<State> {
    let mut all = Vec::new();
    for holder in [Holder::No, Holder::Settled, Holder::Pending] {
        for starts in [Window::Absent, Window::Past, Window::Future] {
            for ends in [Window::Absent, Window::Past, Window::Future] {
                for bucketed in [Bucketed::No, Bucketed::Yes, Bucketed::SoldOutMarked] {
                    for bits in 0..16u8 {
                        all.push(State {
                            holder,
                            starts,
                            ends,
                            bucketed,
                            end_moved_held: bits & 1 != 0,
                            stock_left: bits & 2 != 0,
                            paused: bits & 4 != 0,
                            stock_held: bits & 8 != 0,
                        });
                    }
                }
            }
        }
    }
    all
}

/// Writes `state` as coupon `coupon`'s keys, stamped with `stamp`.
async fn write(
    con: &mut redis::aio::MultiplexedConnection,
    keys: &CouponKeys,
    state: State,
    stamp: &Stamp,
) {
    let now = chrono::Utc::now().timestamp_millis();
    let at = |window: Window| match window {
        Window::Absent => None,
        Window::Past => Some(now - HOUR_MS),
        Window::Future => Some(now + HOUR_MS),
    };
    let mut members = vec![OTHER];
    if state.holder != Holder::No {
        members.push(USER);
    }
    let quantity = members.len() as i64 + if state.stock_left { 5 } else { 0 };
    let mut fields: Vec<(&str, String)> = vec![
        ("quantity", quantity.to_string()),
        ("epoch", stamp.as_str().to_owned()),
    ];
    let mut put = |field: &'static str, value: Option<String>| {
        if let Some(value) = value {
            fields.push((field, value));
        }
    };
    put("starts_at", at(state.starts).map(|t| t.to_string()));
    put("ends_at", at(state.ends).map(|t| t.to_string()));
    put(
        "opens_from",
        state.end_moved_held.then(|| (now + HOUR_MS).to_string()),
    );
    put(
        "buckets",
        (state.bucketed != Bucketed::No).then(|| "2".to_owned()),
    );
    put(
        "sold_out",
        (state.bucketed == Bucketed::SoldOutMarked).then(|| "1".to_owned()),
    );
    put("paused", state.paused.then(|| "1".to_owned()));
    put(
        "sells_from",
        state.stock_held.then(|| (now + HOUR_MS).to_string()),
    );
    let () = con.hset_multiple(&keys.meta, &fields).await.unwrap();
    let _: i64 = con.sadd(&keys.issued, &members).await.unwrap();
    if state.holder == Holder::Pending {
        let _: i64 = con
            .hset(&keys.pending, USER, format!("e {now} inflight {now} 0"))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn every_state_gets_the_answer_of_its_priority() {
    every_state_answers(QueueKind::Kafka).await;
}

/// The same in the Redis queue mode, where an admission appends its event to the coupon's
/// stream instead of writing a pending entry: the entry must decode to the event answered.
#[tokio::test]
async fn every_state_gets_the_answer_of_its_priority_in_the_redis_queue_mode() {
    every_state_answers(QueueKind::Redis).await;
}

async fn every_state_answers(queue: QueueKind) {
    let prefix = shared_redis::prefix();
    let scripts = AdmissionScripts::new(prefix.clone(), queue);
    let mut con = redis().await;
    let stamp = Stamp::fresh(&instance_epoch(&mut con, "").await.unwrap());
    let states = every_state();
    let mut wrong = Vec::new();
    for (n, state) in states.iter().copied().enumerate() {
        let coupon = CouponId::new(n as i64 + 1).unwrap();
        let keys = CouponKeys::new(&prefix, coupon);
        write(&mut con, &keys, state, &stamp).await;
        let issued_before: i64 = con.scard(&keys.issued).await.unwrap();

        let (reply, _) = scripts
            .admit_passing(
                &mut con,
                coupon,
                UserId::new(USER).unwrap(),
                Some(stamp.clone()),
            )
            .await
            .unwrap();

        let (got, want) = (code(&reply), expected(state));
        if got != want {
            wrong.push(format!("{state:?}: answered {got}, the rules say {want}"));
        }
        // What each answer leaves: a slot and its pending entry only for an admission, a
        // wait registered only for a dry bucket, nothing else written.
        let issued_after: i64 = con.scard(&keys.issued).await.unwrap();
        let pending: bool = con.hexists(&keys.pending, USER).await.unwrap();
        let waiting: bool = con.hexists(&keys.meta, "waiting_until").await.unwrap();
        let admitted = got == 1;
        assert_eq!(
            issued_after,
            issued_before + i64::from(admitted),
            "{state:?}"
        );
        let writes_entry = admitted && queue == QueueKind::Kafka;
        assert_eq!(
            pending,
            writes_entry || state.holder == Holder::Pending,
            "{state:?}"
        );
        assert_eq!(waiting, got == 8, "{state:?}");
        let stream: StreamRangeReply = con.xrange_all(&keys.stream).await.unwrap();
        match (&reply, queue) {
            (AdmitReply::Admitted(event), QueueKind::Redis) => {
                assert_eq!(stream.ids.len(), 1, "{state:?}");
                let fields: HashMap<String, String> = stream.ids[0]
                    .map
                    .iter()
                    .map(|(field, value)| {
                        (
                            field.clone(),
                            String::from_redis_value(value.clone()).unwrap(),
                        )
                    })
                    .collect();
                assert_eq!(
                    &IssueEvent::from_stream_fields(&fields).unwrap(),
                    event,
                    "{state:?}"
                );
            }
            _ => assert!(stream.ids.is_empty(), "{state:?}"),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} states answered against the rules:\n{}",
        wrong.len(),
        states.len(),
        wrong.join("\n")
    );
}
