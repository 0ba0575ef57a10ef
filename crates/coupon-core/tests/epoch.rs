//! The epoch, at the scripts: a state verified under another Redis instance does
//! not admit, and a rebuild that read under an instance that is gone by the time it writes
//! does not reopen admission. Another instance is played by a meta stamped with another run
//! id, and a rebuild by a restore carrying one: a restart cannot be forced between two
//! commands of one connection, the stamp it would leave can.

// Helpers outside `#[test]` functions panic too: in a harness that is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use coupon_core::domain::QueueKind;
use coupon_core::domain::{Coupon, UserId};
use coupon_core::redis::admission::{AdmissionScripts, AdmitReply, LeaseTake, RebuildLease};
use coupon_core::redis::epoch::{Stamp, instance_epoch};
use redis::AsyncCommands;

use testkit::shared_redis::{self, redis};

fn coupon() -> Coupon {
    shared_redis::coupon("epoch test", 5)
}

fn scripts() -> AdmissionScripts {
    AdmissionScripts::new(shared_redis::prefix(), QueueKind::Kafka)
}

/// The coupon's first load, which must write its meta.
async fn load(
    scripts: &AdmissionScripts,
    con: &mut redis::aio::MultiplexedConnection,
    coupon: &Coupon,
) {
    let written = scripts.load_meta(con, coupon).await.unwrap();
    assert!(written.is_some(), "the meta was already there");
}

async fn lease(
    scripts: &AdmissionScripts,
    con: &mut redis::aio::MultiplexedConnection,
    coupon: &Coupon,
) -> RebuildLease {
    scripts
        .try_lease_rebuild(con, coupon.id, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("nobody else rebuilds this coupon")
}

/// A rebuild must run on a closed coupon: a user admitted while it reads could be released
/// after (their publish certainly failed) and written back with no event behind the slot.
/// Taking the lease closes admission in the same step.
#[tokio::test]
async fn taking_the_rebuild_lease_closes_admission_until_the_rebuild_reopens_it() {
    let (scripts, mut con, coupon) = (scripts(), redis().await, coupon());
    load(&scripts, &mut con, &coupon).await;
    let first = scripts
        .admit(&mut con, coupon.id, UserId::new(1).unwrap())
        .await
        .unwrap();
    assert!(matches!(first, AdmitReply::Admitted(_)), "{first:?}");

    let lease = lease(&scripts, &mut con, &coupon).await;
    let during = scripts
        .admit(&mut con, coupon.id, UserId::new(2).unwrap())
        .await
        .unwrap();
    assert_eq!(
        during,
        AdmitReply::Unverified,
        "admission open during a rebuild"
    );

    let epoch = instance_epoch(&mut con, "").await.unwrap();
    assert!(
        scripts
            .restore(&mut con, &coupon, &[1], &Stamp::fresh(&epoch), &lease)
            .await
            .unwrap()
    );
    let after = scripts
        .admit(&mut con, coupon.id, UserId::new(2).unwrap())
        .await
        .unwrap();
    assert!(matches!(after, AdmitReply::Admitted(_)), "{after:?}");
}

/// A rebuilder whose lease ran out while it worked (here: the lease's key expired, played
/// by deleting it) neither ends its successor's lease nor reopens admission with what it
/// read; the successor does both.
#[tokio::test]
async fn only_the_rebuild_lease_owner_ends_it_or_reopens_admission() {
    let (scripts, mut con, coupon) = (scripts(), redis().await, coupon());
    load(&scripts, &mut con, &coupon).await;
    let stale = lease(&scripts, &mut con, &coupon).await;
    let _: () = con.del(scripts.keys(coupon.id).rebuilding).await.unwrap();
    let current = lease(&scripts, &mut con, &coupon).await;

    scripts.end_rebuild_lease(&mut con, &stale).await.unwrap();
    assert!(
        scripts
            .try_lease_rebuild(&mut con, coupon.id, Duration::from_secs(30))
            .await
            .unwrap()
            .is_none(),
        "a former owner ended the current owner's lease"
    );
    let epoch = instance_epoch(&mut con, "").await.unwrap();
    assert!(
        !scripts
            .restore(&mut con, &coupon, &[3], &Stamp::fresh(&epoch), &stale)
            .await
            .unwrap(),
        "a former owner reopened admission"
    );
    let closed = scripts
        .admit(&mut con, coupon.id, UserId::new(4).unwrap())
        .await
        .unwrap();
    assert_eq!(closed, AdmitReply::Unverified);
    assert!(
        scripts
            .restore(&mut con, &coupon, &[3], &Stamp::fresh(&epoch), &current)
            .await
            .unwrap()
    );
    scripts.end_rebuild_lease(&mut con, &current).await.unwrap();
    assert!(
        scripts
            .try_lease_rebuild(&mut con, coupon.id, Duration::from_secs(30))
            .await
            .unwrap()
            .is_some(),
        "the owner's end released the lease"
    );
}

#[tokio::test]
async fn a_state_verified_under_another_instance_does_not_admit() {
    let (scripts, mut con, coupon) = (scripts(), redis().await, coupon());
    let user = UserId::new(7).unwrap();
    load(&scripts, &mut con, &coupon).await;
    let meta = scripts.keys(coupon.id).meta;
    let _: () = con
        .hset(&meta, "epoch", "a-previous-instance")
        .await
        .unwrap();

    let reply = scripts.admit(&mut con, coupon.id, user).await.unwrap();
    assert_eq!(reply, AdmitReply::Unverified);
    assert_eq!(
        scripts.admitted_count(&mut con, coupon.id).await.unwrap(),
        0
    );

    // Rebuilt under this instance, it admits again.
    let epoch = instance_epoch(&mut con, "").await.unwrap();
    let lease = lease(&scripts, &mut con, &coupon).await;
    assert!(
        scripts
            .restore(&mut con, &coupon, &[3], &Stamp::fresh(&epoch), &lease)
            .await
            .unwrap()
    );
    let reply = scripts.admit(&mut con, coupon.id, user).await.unwrap();
    assert!(matches!(reply, AdmitReply::Admitted(_)), "{reply:?}");
}

#[tokio::test]
async fn a_rebuild_that_read_under_a_gone_instance_does_not_reopen_admission() {
    let (scripts, mut con, coupon) = (scripts(), redis().await, coupon());
    let lease = lease(&scripts, &mut con, &coupon).await;
    let restored = scripts
        .restore(
            &mut con,
            &coupon,
            &[3],
            &Stamp::fresh("an-instance-gone-since"),
            &lease,
        )
        .await
        .unwrap();
    assert!(!restored, "the restore reports the instance changed");
    let reply = scripts
        .admit(&mut con, coupon.id, UserId::new(1).unwrap())
        .await
        .unwrap();
    assert!(
        matches!(reply, AdmitReply::NotLoaded | AdmitReply::Unverified),
        "admission stays closed until a rebuild under this instance: {reply:?}"
    );
}

#[tokio::test]
async fn an_instance_without_the_function_library_is_given_it() {
    let (scripts, mut con, coupon) = (scripts(), redis().await, coupon());
    // Every version of the library gone, as from a new or flushed Redis.
    coupon_core::redis::library::load(&mut con).await.unwrap();
    let libraries: Vec<HashMap<String, redis::Value>> = redis::cmd("FUNCTION")
        .arg("LIST")
        .arg("LIBRARYNAME")
        .arg("coupon_*")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(!libraries.is_empty());
    for library in libraries {
        let name: String = redis::from_redis_value_ref(&library["library_name"]).unwrap();
        // Another test may have loaded it again and this one deleted it meanwhile.
        let _: redis::RedisResult<()> = redis::cmd("FUNCTION")
            .arg("DELETE")
            .arg(&name)
            .query_async(&mut con)
            .await;
    }

    load(&scripts, &mut con, &coupon).await;
    let reply = scripts
        .admit(&mut con, coupon.id, UserId::new(9).unwrap())
        .await
        .unwrap();
    assert!(matches!(reply, AdmitReply::Admitted(_)), "{reply:?}");
}

/// A failback, at the scripts: a node that kept running while another took over
/// (the old primary a failback returns to) still has its run id and a meta stamped under
/// it. The stamp in force (PostgreSQL's, passed by the caller) names the later
/// verification, made elsewhere: this meta does not admit. A process that knows no stamp
/// yet (started after the fault) does not admit either; it learns the one in force first.
#[tokio::test]
async fn a_meta_stamped_by_an_older_verification_does_not_admit() {
    let prefix = shared_redis::prefix();
    let scripts = AdmissionScripts::new(prefix.clone(), QueueKind::Kafka);
    let (mut con, coupon) = (redis().await, coupon());
    let here = scripts.load_meta(&mut con, &coupon).await.unwrap().unwrap();
    let epoch = instance_epoch(&mut con, "").await.unwrap();
    assert!(here.as_str().starts_with(&format!("{epoch}/")), "{here}");

    let elsewhere = Stamp::new(format!("{epoch}/a-later-verification"));
    scripts.learn_stamp(coupon.id, elsewhere);
    let reply = scripts
        .admit(&mut con, coupon.id, UserId::new(1).unwrap())
        .await
        .unwrap();
    assert_eq!(
        reply,
        AdmitReply::Unverified,
        "admitted on an older verification"
    );

    let started_later = AdmissionScripts::new(prefix, QueueKind::Kafka);
    let reply = started_later
        .admit(&mut con, coupon.id, UserId::new(1).unwrap())
        .await
        .unwrap();
    assert_eq!(reply, AdmitReply::Unverified, "admitted knowing no stamp");

    scripts.learn_stamp(coupon.id, here);
    let reply = scripts
        .admit(&mut con, coupon.id, UserId::new(1).unwrap())
        .await
        .unwrap();
    assert!(matches!(reply, AdmitReply::Admitted(_)), "{reply:?}");
}

/// A lazy rebuild is asked for by a request that found the coupon closed; by the time its
/// lease is asked for, the coupon may have opened (a hand-over carried it over). Verified
/// under the stamp in force the asker passes, it takes no lease and stays open; under any
/// other (the stamp was replaced since), or with none (an operator's rebuild), it is
/// rebuilt.
#[tokio::test]
async fn a_rebuild_asked_for_while_closed_leaves_a_coupon_verified_since() {
    let (scripts, mut con, coupon) = (scripts(), redis().await, coupon());
    let _: () = con
        .del(&[
            scripts.keys(coupon.id).meta,
            scripts.keys(coupon.id).rebuilding,
        ])
        .await
        .unwrap();
    let verified = scripts
        .load_meta(&mut con, &coupon)
        .await
        .unwrap()
        .expect("the first load writes the meta");
    let lease = Duration::from_secs(30);
    assert_eq!(
        scripts
            .take_rebuild_lease(&mut con, coupon.id, lease, Some(&verified))
            .await
            .unwrap(),
        LeaseTake::Verified
    );
    let admitted = scripts
        .admit(&mut con, coupon.id, UserId::new(1).unwrap())
        .await
        .unwrap();
    assert!(
        matches!(admitted, AdmitReply::Admitted(_)),
        "the coupon stayed open: {admitted:?}"
    );
    let replaced = Stamp::fresh(&instance_epoch(&mut con, "").await.unwrap());
    assert!(
        matches!(
            scripts
                .take_rebuild_lease(&mut con, coupon.id, lease, Some(&replaced))
                .await
                .unwrap(),
            LeaseTake::Taken(_)
        ),
        "a stamp replaced since asks for a rebuild"
    );
}
