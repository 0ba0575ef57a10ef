//! A bucketed coupon served while Redis answers late. A binary of its own: it pauses the
//! shared Redis node (`CLIENT PAUSE`), which would stall every other test running beside it.

// The harness below is test code too: a panic is exactly the failure report wanted.
#![allow(clippy::unwrap_used)]

use coupon_core::buckets::BucketCount;
use coupon_core::domain::{QueueKind, UserId};
use issuer_api::issuing::SUPPLY_WAIT;
use serde_json::json;
use testkit::harness::{RedisTopology, TestEnv};

/// The first `n` user ids whose home, among `count` buckets, is `bucket`.
fn homed_to(count: BucketCount, bucket: u16, n: usize) -> Vec<i64> {
    (1..)
        .filter(|user| count.home(UserId::new(*user).unwrap()).index() == bucket)
        .take(n)
        .collect()
}

/// The last unit gone, a request whose admission comes back late (Redis slow to answer,
/// as under a flash sale's load) and finds its home empty: it still runs the sold-out
/// check before it gives up, and is told SOLD_OUT. Once waited from the request's start,
/// the check's time was spent before the answer came, and every late request was told 503
/// after the stock was gone (the seed's experiment on the cluster: 1,345 of them).
#[actix_web::test]
async fn a_late_answer_from_an_empty_bucket_still_learns_it_is_sold_out() {
    let env = TestEnv::start_under(QueueKind::Kafka, RedisTopology::Node, 1).await;
    let coupon = env
        .create_coupon(json!({ "name": "hot", "totalQuantity": 2, "buckets": 2 }))
        .await;
    let count = BucketCount::new(2).unwrap();
    let users = homed_to(count, 0, 3);
    for &user in &users[..2] {
        assert_eq!(env.issue(coupon, user).await.0, 201, "user {user}");
    }
    // Every command waits out the pause: the next admission's answer comes past the wait.
    let mut con = env.redis().await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(SUPPLY_WAIT.as_millis() as u64 + 200)
        .query_async(&mut con)
        .await
        .unwrap();

    let (status, body) = env.issue(coupon, users[2]).await;

    assert_eq!(
        (status, &body["result"]),
        (410, &json!("SOLD_OUT")),
        "{body}"
    );
    env.shutdown().await;
}
