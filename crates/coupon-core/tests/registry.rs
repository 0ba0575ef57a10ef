//! Findings 3 and 5 of the protocol review. The registry is how the reconciler and the
//! stream workers find a coupon, and the meta is what opens admission: a coupon that admits
//! must be registered, whatever fails or runs in between, and a finished coupon must leave.
//! Failures and rebuilds are forced at the exact point, through connections that wrap the
//! real one.

// Helpers outside `#[test]` functions panic too: in a harness that is the failure report.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use coupon_core::domain::QueueKind;
use coupon_core::domain::{Coupon, CouponId};
use coupon_core::redis::admission::AdmissionScripts;
use coupon_core::redis::epoch::{Stamp, instance_epoch};
use coupon_core::redis::keys::CouponKeys;
use coupon_core::redis::registry::{Registration, Registry};
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, Cmd};
use testkit::intercept::{At, Intercepted, has_arg};
use testkit::redis_server::RedisServer;

use testkit::shared_redis::{self, prefix, redis};

fn coupon() -> Coupon {
    with_quantity(10)
}

fn with_quantity(total_quantity: i64) -> Coupon {
    shared_redis::coupon("registry test", total_quantity)
}

async fn registered(con: &mut MultiplexedConnection, prefix: &str, coupon: CouponId) -> bool {
    con.hexists(CouponKeys::active_registry(prefix), coupon.get())
        .await
        .unwrap()
}

/// Redis loses the coupon, and a rebuild restores it with a slot free again.
async fn lost_and_rebuilt_with_a_free_slot(
    mut con: MultiplexedConnection,
    scripts: AdmissionScripts,
    prefix: String,
) -> redis::RedisResult<()> {
    let keys = scripts.keys(CouponId::new(1).unwrap());
    let _: () = con.del(&[keys.meta, keys.issued]).await?;
    let _: () = con.del(CouponKeys::active_registry(&prefix)).await?;
    let epoch = instance_epoch(&mut con, "").await?;
    let lease = scripts
        .try_lease_rebuild(&mut con, CouponId::new(1).unwrap(), Duration::from_secs(30))
        .await?
        .expect("nobody else rebuilds this coupon");
    scripts
        .restore(
            &mut con,
            &with_quantity(2),
            &[5],
            &Stamp::fresh(&epoch),
            &lease,
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_coupon_is_never_open_for_admission_unregistered() {
    for queue in [QueueKind::Kafka, QueueKind::Redis] {
        let prefix = format!("test-{}:", uuid::Uuid::new_v4().simple());
        let scripts = AdmissionScripts::new(prefix.clone(), queue);
        let mut con = redis().await;
        let registry = CouponKeys::active_registry(&prefix);
        // The registration fails as a dropped connection would: it is never sent.
        let mut failing = Intercepted::new(
            con.clone(),
            At::Before,
            |cmd: &Cmd| has_arg(cmd, &registry),
            || async {
                Err(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "connection lost before the registration",
                )))
            },
        );
        let coupon = coupon();
        let loaded = scripts.load_meta(&mut failing, &coupon).await;
        let open: bool = con.exists(scripts.keys(coupon.id).meta).await.unwrap();
        let registered: bool = con.exists(&registry).await.unwrap();
        assert!(
            !open || registered,
            "{queue}: admission is open (meta written, load_meta said {loaded:?}) but the \
             coupon is not registered: no reconciler or stream worker will ever look at it"
        );
        assert!(
            loaded.is_err(),
            "{queue}: the failed registration is reported"
        );
    }
}

#[tokio::test]
async fn a_rebuild_between_the_finished_check_and_the_retire_keeps_the_coupon() {
    let prefix = prefix();
    let scripts = AdmissionScripts::new(prefix.clone(), QueueKind::Kafka);
    let registry = Registry::new(prefix.clone(), QueueKind::Kafka);
    let mut con = redis().await;
    // Sold out (1 of 1) with nothing pending: finished.
    let sold_out = with_quantity(1);
    scripts.load_meta(&mut con, &sold_out).await.unwrap();
    let _: () = con.sadd(scripts.keys(sold_out.id).issued, 5).await.unwrap();
    let registration: Registration = registry.members(&mut con).await.unwrap()[0].clone();
    assert!(
        registry
            .is_finished(&mut con, sold_out.id, "")
            .await
            .unwrap()
    );

    // Between the finished check (the first command) and the retire.
    let mut racing = Intercepted::new(
        con.clone(),
        At::After,
        |_: &Cmd| true,
        || lost_and_rebuilt_with_a_free_slot(con.clone(), scripts.clone(), prefix.clone()),
    );
    let retired = registry
        .retire_if_finished(&mut racing, registration, "")
        .await
        .unwrap();
    assert!(
        !retired && registered(&mut con, &prefix, sold_out.id).await,
        "the coupon was judged finished, then rebuilt with a free slot: it must stay registered"
    );
}

#[tokio::test]
async fn a_coupon_is_finished_only_when_nothing_can_change_any_more() {
    let prefix = prefix();
    let scripts = AdmissionScripts::new(prefix.clone(), QueueKind::Kafka);
    let registry = Registry::new(prefix.clone(), QueueKind::Kafka);
    let mut con = redis().await;
    let id = CouponId::new(1).unwrap();
    let keys = scripts.keys(id);
    let finished = |con: &mut MultiplexedConnection| {
        let (registry, mut con) = (registry.clone(), con.clone());
        async move { registry.is_finished(&mut con, id, "").await.unwrap() }
    };

    assert!(
        !finished(&mut con).await,
        "no meta: closed only until a rebuild"
    );
    scripts
        .load_meta(&mut con, &with_quantity(2))
        .await
        .unwrap();
    let _: () = con.sadd(&keys.issued, 5).await.unwrap();
    assert!(!finished(&mut con).await, "open, one slot left");
    let _: () = con.sadd(&keys.issued, 6).await.unwrap();
    let _: () = con.hset(&keys.pending, 6, "entry").await.unwrap();
    assert!(
        !finished(&mut con).await,
        "sold out, but a slot may still be given back"
    );
    let _: () = con.hdel(&keys.pending, 6).await.unwrap();
    assert!(finished(&mut con).await, "sold out and settled");

    let _: () = con.srem(&keys.issued, 6).await.unwrap();
    let past = chrono::Utc::now().timestamp_millis() - 1_000;
    let _: () = con.hset(&keys.meta, "ends_at", past).await.unwrap();
    assert!(finished(&mut con).await, "ended and settled");

    let _: () = con
        .hset(&keys.meta, "epoch", "another-instance")
        .await
        .unwrap();
    assert!(
        !finished(&mut con).await,
        "verified under another Redis instance: perhaps a rewound copy"
    );
}

#[tokio::test]
async fn a_stream_coupon_is_finished_once_the_group_acknowledged_everything() {
    const GROUP: &str = "workers";
    let prefix = prefix();
    let scripts = AdmissionScripts::new(prefix.clone(), QueueKind::Redis);
    let registry = Registry::new(prefix.clone(), QueueKind::Redis);
    let mut con = redis().await;
    let id = CouponId::new(1).unwrap();
    let user = coupon_core::domain::UserId::new(5).unwrap();
    scripts
        .load_meta(&mut con, &with_quantity(1))
        .await
        .unwrap();
    let stream = scripts.keys(id).stream;
    let finished = |con: &mut MultiplexedConnection| {
        let (registry, mut con) = (registry.clone(), con.clone());
        async move { registry.is_finished(&mut con, id, GROUP).await.unwrap() }
    };

    scripts.admit(&mut con, id, user).await.unwrap();
    assert!(
        !finished(&mut con).await,
        "sold out, the entry not read by any group"
    );
    let _: () = con.xgroup_create(&stream, GROUP, "0").await.unwrap();
    assert!(!finished(&mut con).await, "not yet delivered");
    let read: redis::streams::StreamReadReply = con
        .xread_options(
            &[&stream],
            &[">"],
            &redis::streams::StreamReadOptions::default().group(GROUP, "w"),
        )
        .await
        .unwrap();
    let entry = read.keys[0].ids[0].id.clone();
    assert!(!finished(&mut con).await, "delivered, not acknowledged");
    let _: () = con.xack(&stream, GROUP, &[entry]).await.unwrap();
    assert!(finished(&mut con).await, "acknowledged");
}

/// A registration's generation must never come again, even after a failover to a replica
/// that lacked the primary's last increments: a worker that read the old primary's last
/// generation and judged the coupon finished would otherwise retire the registration the
/// promoted replica gave the coupon again (a rebuild reopened it), and nobody would read
/// its events any more. The primary's last registration is made after the replica is cut
/// off (promoted, as a failover does).
#[tokio::test]
async fn a_generation_lost_in_a_failover_is_never_given_again() {
    let dir = std::env::temp_dir().join(format!("registry-{}", uuid::Uuid::new_v4().simple()));
    let primary = RedisServer::start(&dir.join("primary"), &[]).await.unwrap();
    let mut replica = RedisServer::replica_of(primary.port, &dir.join("replica"))
        .await
        .unwrap();
    let connect = |url: String| async move {
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    };
    let (mut old, mut new) = (connect(primary.url()).await, connect(replica.url()).await);
    let registry = Registry::new(prefix(), QueueKind::Redis);
    let coupon = CouponId::new(7).unwrap();
    registry.register(&mut old, coupon).await.unwrap();
    // Each WAIT shorter than the client's response timeout: a replica still in its first
    // sync (slow while the suite loads the machine) acknowledges only once it is done.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let acknowledged = loop {
        let acknowledged: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(200)
            .query_async(&mut old)
            .await
            .unwrap();
        if acknowledged == 1 || std::time::Instant::now() > deadline {
            break acknowledged;
        }
    };
    assert_eq!(acknowledged, 1, "the replica has the first registration");

    replica.promote().await.unwrap();
    let lost = registry.register(&mut old, coupon).await.unwrap();
    let again = registry.register(&mut new, coupon).await.unwrap();
    assert_ne!(
        lost.generation, again.generation,
        "a generation given twice"
    );
    assert!(!registry.retire(&mut new, lost).await.unwrap());
    let members = registry.members(&mut new).await.unwrap();
    assert_eq!(
        members,
        [again],
        "a stale retire removed the registration made again"
    );
    drop((primary, replica));
    let _ = std::fs::remove_dir_all(dir);
}

/// `registry_model.rs`'s trace, forced: a retirer reads the registration a raise just
/// made, finds the coupon still sold out, and retires it once the raise has landed. The
/// raise registers again after landing, so that retire finds another generation.
#[tokio::test]
async fn a_raise_between_the_finished_check_and_the_retire_keeps_the_coupon() {
    let prefix = prefix();
    let scripts = AdmissionScripts::new(prefix.clone(), QueueKind::Kafka);
    let registry = Registry::new(prefix.clone(), QueueKind::Kafka);
    let mut con = redis().await;
    // Sold out (1 of 1) with nothing pending: finished.
    let sold_out = with_quantity(1);
    scripts.load_meta(&mut con, &sold_out).await.unwrap();
    let _: () = con.sadd(scripts.keys(sold_out.id).issued, 5).await.unwrap();

    // Right before the raise's landing (its second command, after the registration), a
    // retirer reads the registration and judges the coupon finished.
    let judged = std::sync::Arc::new(std::sync::Mutex::new(None));
    let mut sent = 0;
    let mut raising = Intercepted::new(
        con.clone(),
        At::Before,
        move |_: &Cmd| {
            sent += 1;
            sent == 2
        },
        {
            let (mut con, registry, judged) = (con.clone(), registry.clone(), judged.clone());
            move || async move {
                let registration = registry.members(&mut con).await?.remove(0);
                let finished = registry
                    .is_finished(&mut con, registration.coupon, "")
                    .await?;
                *judged.lock().unwrap() = Some((registration, finished));
                Ok(())
            }
        },
    );
    assert!(
        scripts
            .raise_quantity(&mut raising, sold_out.id, 2)
            .await
            .unwrap()
    );
    let (registration, finished) = judged.lock().unwrap().take().expect("the hook ran");
    assert!(finished, "judged before the raise landed");
    registry.retire(&mut con, registration).await.unwrap();
    assert!(
        registered(&mut con, &prefix, sold_out.id).await,
        "the raised coupon admits again: it must stay registered"
    );
}
