//! A bucketed coupon's steps at the scripts, on the real Redis: each interleaving the model
//! (`bucket_model.rs`) names is put in place by calling the steps in that order, as the
//! movers would, one of them stalled; a lease runs out on Redis's own clock.

// Helpers outside `#[test]` functions panic too: in a harness that is the failure report.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::future::join_all;

use coupon_core::buckets::mover::{MOVER_LEASE, MoveError, Mover, Places, Supply};
use coupon_core::buckets::open::open_buckets;
use coupon_core::buckets::{Bucket, BucketCount};
use coupon_core::db::buckets::{
    Journalled, coupon_buckets, insert_bucketed_coupon, journal, journal_transfer,
    record_bucket_stamp,
};
use coupon_core::db::connect::PgTarget;
use coupon_core::db::coupons::{NewCoupon, Verification};
use coupon_core::db::pool::{PgPool, build_pool};
use coupon_core::domain::{Admission, Coupon, QueueKind, UserId};
use coupon_core::redis::admission::{AdmissionScripts, AdmitReply, LeaseTake, RebuildLease};
use coupon_core::redis::buckets::{
    BucketState, BucketSteps, RebuiltBucket, Recover, Seen, Step, Take, TransferId,
};
use coupon_core::redis::epoch::{Stamp, instance_epoch};
use coupon_core::redis::keys::CouponKeys;
use coupon_core::redis::ledger::{Ledger, LedgerAt, PendingEntry};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use testkit::shared_redis::{self, redis};

const LEASE: Duration = Duration::from_secs(30);
const SHORT_LEASE: Duration = Duration::from_millis(1);

/// A coupon of `shares.len()` buckets loaded in Redis, each with its share.
struct Sale {
    coupon: Coupon,
    count: BucketCount,
    keys: Vec<CouponKeys>,
    stamps: Vec<Stamp>,
    scripts: AdmissionScripts,
    con: MultiplexedConnection,
}

impl Sale {
    async fn new(shares: &[i64]) -> Self {
        let prefix = shared_redis::prefix();
        let count = BucketCount::new(shares.len() as i64).unwrap();
        let coupon = Coupon {
            buckets: count,
            settings: Default::default(),
            ..shared_redis::coupon("buckets", shares.iter().sum())
        };
        let mut con = redis().await;
        let mut keys = Vec::new();
        let mut stamps = Vec::new();
        for (b, share) in shares.iter().enumerate() {
            let bucket_keys = CouponKeys::of_bucket(&prefix, &format!("1.{b}"));
            let stamp = BucketSteps::load(&mut con, &bucket_keys, &coupon, *share, count)
                .await
                .unwrap()
                .expect("a new bucket's state is written");
            keys.push(bucket_keys);
            stamps.push(stamp);
        }
        Self {
            coupon,
            count,
            keys,
            stamps,
            scripts: AdmissionScripts::new(prefix, QueueKind::Kafka),
            con,
        }
    }

    fn bucket(&self, b: u16) -> BucketState<'_> {
        BucketState {
            keys: &self.keys[b as usize],
            stamp: &self.stamps[b as usize],
        }
    }

    fn index(&self, b: u16) -> Bucket {
        Bucket::of(self.count, b.into()).unwrap()
    }

    /// The `n`th user (from 0) whose home is bucket `b`.
    fn user_of(&self, b: u16, n: usize) -> UserId {
        (1..)
            .map(|id| UserId::new(id).unwrap())
            .filter(|user| self.count.home(*user).index() == b)
            .nth(n)
            .unwrap()
    }

    async fn admit(&mut self, user: UserId) -> AdmitReply {
        let b = self.count.home(user).index() as usize;
        let mut con = self.con.clone();
        self.scripts
            .admit_in(
                &mut con,
                &self.keys[b],
                self.coupon.id,
                user,
                Some(&self.stamps[b]),
            )
            .await
            .unwrap()
    }

    async fn take(
        &self,
        from: u16,
        to: u16,
        units: i64,
        owner: &str,
        lease: Duration,
    ) -> (TransferId, Take) {
        let id = TransferId::new();
        let taken = BucketSteps::take(
            &mut self.con.clone(),
            &self.bucket(from),
            id,
            self.index(to),
            units,
            owner,
            lease,
        )
        .await
        .unwrap();
        (id, done(taken))
    }

    /// `user`'s pending entry in their home bucket.
    async fn pending_entry(&self, user: UserId) -> PendingEntry {
        let keys = &self.keys[self.count.home(user).index() as usize];
        let text: String = redis::cmd("HGET")
            .arg(&keys.pending)
            .arg(user.get())
            .query_async(&mut self.con.clone())
            .await
            .unwrap();
        PendingEntry::decode(self.coupon.id, user, &text).unwrap()
    }

    /// Gives `user`'s slot back, as a publish that certainly failed does.
    async fn give_back(&self, user: UserId) {
        let keys = &self.keys[self.count.home(user).index() as usize];
        let entry = self.pending_entry(user).await;
        let ledger = Ledger::new(String::new());
        let mut con = self.con.clone();
        let released = ledger
            .release(&mut con, &LedgerAt::Bucket(keys.clone()), &entry)
            .await;
        assert!(released.unwrap(), "the entry changed");
    }

    async fn recover(&self, from: u16, owner: &str) -> Step<Recover> {
        let mut con = self.con.clone();
        BucketSteps::recover(&mut con, &self.bucket(from), owner, LEASE, self.count)
            .await
            .unwrap()
    }

    async fn credit(&self, to: u16, id: TransferId, units: i64) -> bool {
        done(
            BucketSteps::credit(&mut self.con.clone(), &self.bucket(to), id, units)
                .await
                .unwrap(),
        )
    }

    async fn settle(&self, from: u16, id: TransferId) -> bool {
        done(
            BucketSteps::settle(&mut self.con.clone(), &self.bucket(from), id)
                .await
                .unwrap(),
        )
    }

    async fn seen(&self, b: u16) -> Seen {
        done(
            BucketSteps::collect(&mut self.con.clone(), &self.bucket(b))
                .await
                .unwrap(),
        )
    }

    async fn stock(&self, b: u16) -> i64 {
        self.seen(b).await.stock
    }

    /// The share bucket `b`'s meta records, if any.
    async fn share(&self, b: u16) -> Option<i64> {
        let mut con = self.con.clone();
        con.hget(&self.keys[b as usize].meta, "share")
            .await
            .unwrap()
    }

    /// Bucket `b`'s meta as a version that did not record shares leaves it.
    async fn forget_share(&self, b: u16) {
        let mut con = self.con.clone();
        let _: i64 = con
            .hdel(&self.keys[b as usize].meta, "share")
            .await
            .unwrap();
    }
}

fn done<T: std::fmt::Debug>(step: Step<T>) -> T {
    match step {
        Step::Done(value) => value,
        other => panic!("the step was refused: {other:?}"),
    }
}

#[tokio::test]
async fn a_coupon_of_one_bucket_still_answers_sold_out_itself() {
    let (scripts, mut con) = (
        AdmissionScripts::new(shared_redis::prefix(), QueueKind::Kafka),
        redis().await,
    );
    let coupon = shared_redis::coupon("one bucket", 1);
    scripts.load_meta(&mut con, &coupon).await.unwrap();
    let first = scripts.admit(&mut con, coupon.id, UserId::new(1).unwrap());
    assert!(matches!(first.await.unwrap(), AdmitReply::Admitted(_)));
    let second = scripts.admit(&mut con, coupon.id, UserId::new(2).unwrap());
    assert_eq!(
        second.await.unwrap(),
        AdmitReply::Refused(Admission::SoldOut)
    );
}

/// An empty home bucket with stock elsewhere is not SOLD_OUT: the request is told DRY, its
/// wait registered, and once stock is moved to it, it is admitted.
#[tokio::test]
async fn an_empty_home_bucket_waits_for_stock_moved_to_it() {
    let mut sale = Sale::new(&[1, 1]).await;
    let (first, second) = (sale.user_of(0, 0), sale.user_of(0, 1));
    assert!(matches!(sale.admit(first).await, AdmitReply::Admitted(_)));
    assert_eq!(sale.admit(second).await, AdmitReply::Dry);

    let (id, taken) = sale.take(1, 0, 5, "mover", LEASE).await;
    assert_eq!(taken, Take::Taken(1), "at most what the donor has");
    assert_eq!(sale.stock(1).await, 0);
    assert!(sale.credit(0, id, 1).await);
    assert!(sale.settle(1, id).await);
    assert!(matches!(sale.admit(second).await, AdmitReply::Admitted(_)));
    // Held, its event not acknowledged yet (Kafka mode's write-ahead entry).
    assert_eq!(sale.admit(second).await, AdmitReply::Pending);
}

/// A bucket where requests wait gives none of what it gets: else two buckets with users
/// waiting pass units back and forth (the livelock the model found).
#[tokio::test]
async fn a_bucket_with_waiting_requests_gives_nothing() {
    let mut sale = Sale::new(&[1, 1]).await;
    let (first, waiting) = (sale.user_of(0, 0), sale.user_of(0, 1));
    sale.admit(first).await;
    assert_eq!(sale.admit(waiting).await, AdmitReply::Dry);
    let (id, _) = sale.take(1, 0, 1, "mover", LEASE).await;
    sale.credit(0, id, 1).await;
    sale.settle(1, id).await;
    assert_eq!(sale.stock(0).await, 1);
    assert_eq!(
        sale.take(0, 1, 1, "other", LEASE).await.1,
        Take::NothingToGive
    );
}

/// One transfer out of a bucket at a time: its entry is what a mover taking over finds.
#[tokio::test]
async fn a_second_take_waits_for_the_first_to_settle() {
    let sale = Sale::new(&[1, 4]).await;
    let (id, taken) = sale.take(1, 0, 1, "mover", LEASE).await;
    assert_eq!(taken, Take::Taken(1));
    assert_eq!(sale.take(1, 0, 1, "other", LEASE).await.1, Take::InFlight);
    sale.credit(0, id, 1).await;
    sale.settle(1, id).await;
    assert_eq!(sale.take(1, 0, 2, "other", LEASE).await.1, Take::Taken(2));
}

/// A mover stalls after its credit; its lease runs out; another takes its entry over and
/// credits again: the second credit adds nothing (the model's `Bug::CreditTwice`).
#[tokio::test]
async fn a_credit_repeated_by_a_mover_that_took_over_adds_nothing() {
    let sale = Sale::new(&[0, 2]).await;
    let (id, _) = sale.take(1, 0, 2, "stalled", SHORT_LEASE).await;
    assert!(sale.credit(0, id, 2).await);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let recovered = sale.recover(1, "next").await;
    let Recover::TakenOver(entry) = done(recovered) else {
        panic!("the entry's lease ran out, yet it was not taken over");
    };
    assert_eq!((entry.id, entry.to, entry.units), (id, sale.index(0), 2));
    assert!(
        !sale.credit(0, entry.id, entry.units).await,
        "credited twice"
    );
    assert_eq!(sale.stock(0).await, 2);
    assert!(sale.settle(1, entry.id).await);
}

/// An entry whose lease still runs is its mover's.
#[tokio::test]
async fn an_entry_is_not_taken_over_while_its_lease_runs() {
    let sale = Sale::new(&[0, 2]).await;
    sale.take(1, 0, 1, "mover", LEASE).await;
    let recovered = sale.recover(1, "other").await;
    assert_eq!(done(recovered), Recover::Held);
}

/// A stalled mover's late settle must not remove a later transfer's entry before its credit
/// (the model's `Bug::SettleAnyEntry`): the unit would be lost.
#[tokio::test]
async fn a_late_settle_leaves_a_later_transfers_entry() {
    let sale = Sale::new(&[0, 2]).await;
    let (first, _) = sale.take(1, 0, 1, "stalled", SHORT_LEASE).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let recovered = sale.recover(1, "next").await;
    assert!(matches!(done(recovered), Recover::TakenOver(_)));
    sale.credit(0, first, 1).await;
    assert!(sale.settle(1, first).await);
    let (second, taken) = sale.take(1, 0, 1, "next", LEASE).await;
    assert_eq!(taken, Take::Taken(1));
    assert!(
        !sale.settle(1, first).await,
        "the late settle removed the next entry"
    );
    let collected = BucketSteps::collect(&mut sale.con.clone(), &sale.bucket(1))
        .await
        .unwrap();
    assert!(done(collected).in_flight);
    sale.credit(0, second, 1).await;
    assert!(sale.settle(1, second).await);
}

/// Only a mark answers SOLD_OUT, and a mark is set only under the generation the check
/// collected.
#[tokio::test]
async fn a_marked_bucket_answers_sold_out_and_a_stale_generation_marks_nothing() {
    let mut sale = Sale::new(&[1, 1]).await;
    for b in 0..2 {
        let user = sale.user_of(b, 0);
        assert!(matches!(sale.admit(user).await, AdmitReply::Admitted(_)));
    }
    let late = sale.user_of(0, 1);
    assert_eq!(sale.admit(late).await, AdmitReply::Dry);
    let seen = done(
        BucketSteps::collect(&mut sale.con.clone(), &sale.bucket(0))
            .await
            .unwrap(),
    );
    let mut con = sale.con.clone();
    // Bucket 1 has no stock left either, but a mark on a bucket with stock is refused
    // whatever the generation (a defence against a slot freed outside the protocol).
    let credited = BucketSteps::credit(&mut con, &sale.bucket(1), TransferId::new(), 1).await;
    assert!(done(credited.unwrap()));
    let with_stock = sale.seen(1).await;
    let refused = BucketSteps::mark(&mut con, &sale.bucket(1), with_stock.generation).await;
    assert!(!done(refused.unwrap()), "a bucket with stock was marked");
    let stale = BucketSteps::mark(&mut con, &sale.bucket(0), seen.generation + 1).await;
    assert!(!done(stale.unwrap()));
    assert_eq!(sale.admit(late).await, AdmitReply::Dry);
    let marked = BucketSteps::mark(&mut con, &sale.bucket(0), seen.generation).await;
    assert!(done(marked.unwrap()));
    assert_eq!(
        sale.admit(late).await,
        AdmitReply::Refused(Admission::SoldOut)
    );
}

/// A raise's steps on one bucket: the flag lifts the mark under a new generation and keeps
/// the bucket from being marked; a grow adds the share's difference once, however often it
/// is repeated; a clear for a smaller quantity than the flag names leaves it up.
#[tokio::test]
async fn a_raise_flags_grows_once_and_clears_only_for_its_largest_quantity() {
    let mut sale = Sale::new(&[1, 1]).await;
    let first = sale.user_of(0, 0);
    assert!(matches!(sale.admit(first).await, AdmitReply::Admitted(_)));
    let late = sale.user_of(0, 1);
    let mut con = sale.con.clone();
    let before = sale.seen(0).await;
    assert!(done(
        BucketSteps::mark(&mut con, &sale.bucket(0), before.generation)
            .await
            .unwrap()
    ));
    assert_eq!(
        sale.admit(late).await,
        AdmitReply::Refused(Admission::SoldOut)
    );

    assert!(done(
        BucketSteps::flag(&mut con, &sale.bucket(0), 6)
            .await
            .unwrap()
    ));
    // A smaller raise landing beside it does not lower the flag.
    assert!(done(
        BucketSteps::flag(&mut con, &sale.bucket(0), 4)
            .await
            .unwrap()
    ));
    let flagged = sale.seen(0).await;
    assert!(flagged.raising && !flagged.marked, "{flagged:?}");
    assert!(flagged.generation > before.generation, "{flagged:?}");
    // Not grown yet: no stock, but no SOLD_OUT either, and no mark while the flag is up.
    assert_eq!(sale.admit(late).await, AdmitReply::Dry);
    let refused = BucketSteps::mark(&mut con, &sale.bucket(0), flagged.generation).await;
    assert!(!done(refused.unwrap()), "a flagged bucket was marked");

    for added in [2, 0] {
        let grown = BucketSteps::grow(&mut con, &sale.bucket(0), 3, 1).await;
        assert_eq!(done(grown.unwrap()), added);
    }
    assert_eq!(sale.stock(0).await, 2);
    let cleared = BucketSteps::clear(&mut con, &sale.bucket(0), 4).await;
    assert!(!done(cleared.unwrap()), "cleared for a smaller raise");
    assert!(sale.seen(0).await.raising);
    let cleared = BucketSteps::clear(&mut con, &sale.bucket(0), 6).await;
    assert!(done(cleared.unwrap()));
    assert!(!sale.seen(0).await.raising);
    assert!(matches!(sale.admit(late).await, AdmitReply::Admitted(_)));
}

/// A bucket loaded by a version that did not record its share in Redis (an upgrade in
/// place): a grow takes its allocation to hold the share of the quantity last landed, adds
/// the difference once, and records the share, so that the next grow counts from it. A
/// grow that adds nothing records it too: once the raise lands, the quantity last landed
/// is no longer the one the bucket was created with, and a later grow must not guess.
#[tokio::test]
async fn a_bucket_that_records_no_share_grows_from_its_landed_share() {
    let mut sale = Sale::new(&[2, 1]).await;
    let mut con = sale.con.clone();
    sale.forget_share(0).await;

    for added in [3, 0] {
        let grown = BucketSteps::grow(&mut con, &sale.bucket(0), 5, 2).await;
        assert_eq!(done(grown.unwrap()), added);
    }
    assert_eq!(sale.stock(0).await, 5);
    assert_eq!(sale.share(0).await, Some(5));
    let user = sale.user_of(0, 0);
    assert!(matches!(sale.admit(user).await, AdmitReply::Admitted(_)));

    sale.forget_share(1).await;
    let grown = BucketSteps::grow(&mut con, &sale.bucket(1), 1, 1).await;
    assert_eq!(done(grown.unwrap()), 0);
    assert_eq!(
        sale.share(1).await,
        Some(1),
        "a grow of nothing left the share unrecorded"
    );
}

/// A collect's version (with the issued count) moves with every step, so two equal
/// collects saw a bucket nothing happened to in between.
#[tokio::test]
async fn every_step_moves_what_a_collect_reads() {
    let mut sale = Sale::new(&[2, 2]).await;
    let mut last = sale.seen(1).await;
    assert_eq!(sale.seen(1).await, last, "a collect moves nothing");
    let (id, _) = sale.take(1, 0, 1, "mover", LEASE).await;
    let now = sale.seen(1).await;
    assert_ne!(now, last, "take");
    last = now;
    sale.settle(1, id).await;
    let now = sale.seen(1).await;
    assert_ne!(now, last, "settle");
    last = now;
    let user = sale.user_of(1, 0);
    sale.admit(user).await;
    let now = sale.seen(1).await;
    assert_ne!(now, last, "admission");
    last = now;
    sale.credit(1, TransferId::new(), 1).await;
    assert_ne!(sale.seen(1).await, last, "credit");
}

/// Every step passes the bucket's stamp in force: a state stamped otherwise (a failover's
/// rewound copy) refuses it, as admission does.
#[tokio::test]
async fn a_step_under_another_stamp_is_refused() {
    let sale = Sale::new(&[1, 1]).await;
    let stale = Stamp::new("someone-else/0");
    let state = BucketState {
        keys: &sale.keys[1],
        stamp: &stale,
    };
    let mut con = sale.con.clone();
    let taken = BucketSteps::take(
        &mut con,
        &state,
        TransferId::new(),
        sale.index(0),
        1,
        "m",
        LEASE,
    );
    assert_eq!(taken.await.unwrap(), Step::Unverified);
    assert_eq!(sale.stock(1).await, 1);
}

/// The journal takes a transfer only while the donor's stamp in force is the one its take
/// ran under (the model's `Bug::JournalUnfenced`): a donor rebuilt since gave its units back.
#[tokio::test]
async fn the_journal_refuses_a_take_under_a_replaced_stamp() {
    let mut db = testkit::database::scratch_database().await;
    let new = NewCoupon {
        name: "journal".into(),
        total_quantity: 5,
        starts_at: None,
        ends_at: None,
        buckets: 2,
    };
    let coupon = insert_bucketed_coupon(&mut db, &new, None).await.unwrap();
    let rows = coupon_buckets(&mut db, &coupon).await.unwrap();
    let tags: Vec<_> = rows.iter().map(|row| row.tag.clone()).collect();
    let shares: Vec<_> = rows.iter().map(|row| row.share).collect();
    assert_eq!(tags, [coupon.id.to_string(), format!("{}.1", coupon.id)]);
    assert_eq!(shares, [3, 2]);

    let (from, to) = (Bucket::of(coupon.buckets, 1).unwrap(), Bucket::FIRST);
    let taken_under = Stamp::new("epoch-a/1");
    assert!(
        record_bucket_stamp(
            &mut db,
            coupon.id,
            from,
            &taken_under,
            Verification::Created
        )
        .await
        .unwrap()
    );
    let transfer = |units| Journalled {
        id: TransferId::new(),
        from,
        to,
        units,
    };
    let first = transfer(1);
    assert!(
        journal_transfer(&mut db, coupon.id, &first, &taken_under)
            .await
            .unwrap()
    );
    assert!(
        journal_transfer(&mut db, coupon.id, &first, &taken_under)
            .await
            .unwrap(),
        "again: no change"
    );

    let rebuilt = Stamp::new("epoch-b/2");
    record_bucket_stamp(&mut db, coupon.id, from, &rebuilt, Verification::Rebuilt)
        .await
        .unwrap();
    let lost = transfer(2);
    assert!(
        !journal_transfer(&mut db, coupon.id, &lost, &taken_under)
            .await
            .unwrap()
    );
    assert_eq!(journal(&mut db, &coupon).await.unwrap(), vec![first]);
}

/// A bucketed coupon created as the API creates one (PostgreSQL first, then each bucket's
/// state in Redis with its stamp recorded), and a mover on it.
struct Stocked {
    sale: Sale,
    places: Places,
    pool: PgPool,
}

impl Stocked {
    async fn new(quantity: i64, buckets: i64) -> Self {
        let url = testkit::database::scratch_database_url().await;
        let pool = build_pool(&PgTarget::new(&url, Default::default()).unwrap(), 4).unwrap();
        let mut db = pool.get().await.unwrap();
        let new = NewCoupon {
            name: "moved".into(),
            total_quantity: quantity,
            starts_at: None,
            ends_at: None,
            buckets: buckets as i16,
        };
        let coupon = insert_bucketed_coupon(&mut db, &new, None).await.unwrap();
        let prefix = shared_redis::prefix();
        let mut con = redis().await;
        let places = open_buckets(&mut con, &mut db, &prefix, &coupon)
            .await
            .unwrap();
        drop(db);
        let sale = Sale {
            coupon: coupon.clone(),
            count: coupon.buckets,
            keys: places
                .places
                .iter()
                .map(|place| place.keys.clone())
                .collect(),
            stamps: places
                .places
                .iter()
                .map(|place| place.stamp.clone())
                .collect(),
            scripts: AdmissionScripts::new(prefix, QueueKind::Kafka),
            con,
        };
        Self { sale, places, pool }
    }

    async fn supply(&self, to: u16) -> Result<Supply, MoveError> {
        let mover = Mover {
            places: &self.places,
            pool: &self.pool,
            owner: "test-mover",
        };
        mover
            .supply(&mut self.sale.con.clone(), self.sale.index(to))
            .await
    }

    async fn reopen_released(&self) -> Option<i64> {
        let mover = Mover {
            places: &self.places,
            pool: &self.pool,
            owner: "test-mover",
        };
        mover
            .reopen_released(&mut self.sale.con.clone())
            .await
            .unwrap()
    }

    /// A request as the API decides it: admitted, or SOLD_OUT, moving stock while its home
    /// bucket is dry (bounded: a test that loops is a failure).
    async fn decide(&mut self, user: UserId) -> AdmitReply {
        let home = self.sale.count.home(user).index();
        for _ in 0..100 {
            match self.sale.admit(user).await {
                AdmitReply::Dry => {
                    self.supply(home).await.unwrap();
                }
                other => return other,
            }
        }
        panic!("user {user} never decided");
    }
}

/// Acceptance 2 at the protocol's level: every user homes to one bucket, two thirds of the
/// stock starts elsewhere, and nobody asks twice. Every unit is issued, nobody is told
/// SOLD_OUT before the last one is gone, and everybody after is.
#[tokio::test]
async fn users_all_homed_to_one_bucket_receive_all_the_stock() {
    let mut stocked = Stocked::new(30, 3).await;
    let users: Vec<UserId> = (0..40).map(|n| stocked.sale.user_of(0, n)).collect();
    let mut admitted = 0;
    for user in users {
        match stocked.decide(user).await {
            AdmitReply::Admitted(_) => {
                admitted += 1;
            }
            AdmitReply::Refused(Admission::SoldOut) => {
                assert_eq!(admitted, 30, "SOLD_OUT with {admitted} of 30 issued");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(admitted, 30);
    for b in 0..3 {
        assert_eq!(stocked.sale.stock(b).await, 0, "bucket {b}");
    }
    let journalled = journal(&mut stocked.pool.get().await.unwrap(), &stocked.sale.coupon).await;
    let moved: i64 = journalled.unwrap().iter().map(|t| t.units).sum();
    assert_eq!(moved, 20, "the two other buckets' shares, moved");
}

/// A mover that dies after its take leaves its units in the donor's entry; once its lease
/// has run out, the next supply finishes that transfer (the model's `Bug::NoRecovery`
/// leaves them there for ever, and the requests waiting).
#[tokio::test]
async fn a_dead_movers_transfer_is_finished_by_the_next_supply() {
    let stocked = Stocked::new(4, 2).await;
    let (_, taken) = stocked.sale.take(1, 0, 2, "died", SHORT_LEASE).await;
    assert_eq!(taken, Take::Taken(2));
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(stocked.supply(0).await.unwrap(), Supply::Moved(2));
    assert_eq!(stocked.sale.stock(0).await, 4);
    assert!(!stocked.sale.seen(1).await.in_flight);
}

/// While a live mover's transfer is in flight, the coupon is not sold out, whatever the
/// stock reads: a check blind to it (the model's `Bug::IgnoreInFlight`) would mark it.
#[tokio::test]
async fn a_transfer_in_flight_keeps_the_coupon_from_being_marked() {
    let mut stocked = Stocked::new(2, 2).await;
    let user = stocked.sale.user_of(1, 0);
    assert!(matches!(
        stocked.sale.admit(user).await,
        AdmitReply::Admitted(_)
    ));
    stocked.sale.take(0, 1, 1, "mover", MOVER_LEASE).await;
    assert_eq!(stocked.supply(1).await.unwrap(), Supply::NotNow);
    let late = stocked.sale.user_of(1, 1);
    assert_eq!(stocked.sale.admit(late).await, AdmitReply::Dry);
}

/// A transfer whose donor was rebuilt after the take is not carried on: the rebuild gave
/// the donor its units back.
#[tokio::test]
async fn a_transfer_out_of_a_rebuilt_donor_is_given_up() {
    let stocked = Stocked::new(4, 2).await;
    let donor = stocked.sale.index(1);
    let rebuilt = Stamp::new("rebuilt-elsewhere/1");
    record_bucket_stamp(
        &mut stocked.pool.get().await.unwrap(),
        stocked.sale.coupon.id,
        donor,
        &rebuilt,
        Verification::Rebuilt,
    )
    .await
    .unwrap();
    let refused = stocked.supply(0).await;
    assert!(
        matches!(refused, Err(MoveError::DonorRebuilt(b)) if b == donor),
        "{refused:?}"
    );
    assert_eq!(stocked.sale.stock(0).await, 2, "nothing credited");
}

/// A bucket's node fails over to a copy that lacks an admission and a transfer out of it (and
/// holds a user the log does not): the rebuild writes back exactly the log's holders, the
/// stock the journal gives, and the transfer's entry, which the next mover finishes without
/// crediting it twice; the other bucket's mark is cleared under a new generation.
#[tokio::test]
async fn a_bucket_rebuilt_from_the_log_and_the_journal_holds_exactly_its_units() {
    let mut stocked = Stocked::new(4, 2).await;
    let (logged, unlogged) = (stocked.sale.user_of(1, 0), stocked.sale.user_of(1, 1));
    assert!(matches!(
        stocked.sale.admit(logged).await,
        AdmitReply::Admitted(_)
    ));
    assert_eq!(stocked.supply(0).await.unwrap(), Supply::Moved(1));
    let seen = stocked.sale.seen(0).await;
    let mut con = stocked.sale.con.clone();
    // A mark on bucket 0, written as it stands rather than by the step (which refuses a
    // bucket with stock): what matters is that the rebuild of bucket 1 clears it.
    let _: () = redis::cmd("HSET")
        .arg(&stocked.sale.keys[0].meta)
        .arg("sold_out")
        .arg(1)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(stocked.sale.seen(0).await.marked);

    // The copy the failover promotes: bucket 1 as created, under another instance, with a
    // user whose admission never reached the log.
    let keys = stocked.sale.keys[1].clone();
    let _: () = redis::cmd("DEL")
        .arg(&keys.meta)
        .arg(&keys.issued)
        .arg(&keys.outgoing)
        .arg(&keys.credited)
        .arg(&keys.pending)
        .query_async(&mut con)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&keys.meta)
        .arg(
            &[
                "quantity",
                "2",
                "buckets",
                "2",
                "epoch",
                "another-instance/1",
            ][..],
        )
        .query_async(&mut con)
        .await
        .unwrap();
    let _: () = redis::cmd("SADD")
        .arg(&keys.issued)
        .arg(unlogged.get())
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(stocked.sale.admit(logged).await, AdmitReply::Unverified);

    // The rebuild, as the API runs it (`rebuild`): lease (closing the bucket), stamp
    // recorded, journal read after it (a later journal write is fenced off), the other
    // buckets' marks cleared, state restored.
    assert!(rebuild(&mut stocked, 1, (&[logged.get()], &[]), LEASE).await);
    let rebuilt_seen = stocked.sale.seen(1).await;
    assert_eq!((rebuilt_seen.stock, rebuilt_seen.issued), (0, 1));
    assert!(
        rebuilt_seen.in_flight,
        "the journalled transfer's entry is back"
    );
    assert_eq!(
        stocked.sale.admit(logged).await,
        AdmitReply::Refused(Admission::AlreadyIssued)
    );
    let after = stocked.sale.seen(0).await;
    assert!(!after.marked && after.generation > seen.generation);
    assert_eq!(stocked.supply(0).await.unwrap(), Supply::Moved(1));
    assert_eq!(stocked.sale.stock(0).await, 3, "the transfer credited once");
    assert!(!stocked.sale.seen(1).await.in_flight);
    // The user the log never had is not a holder: their unit is for sale.
    assert_eq!(stocked.sale.admit(unlogged).await, AdmitReply::Dry);
}

/// A slot given back after every bucket was marked: until its unit is back for sale,
/// SOLD_OUT stays true (the user is told to retry); the reopen clears every mark before it
/// frees the slot (the model's `Bug::ReleaseIntoStock` frees it at once, with the marks
/// still answering SOLD_OUT).
#[tokio::test]
async fn a_slot_given_back_is_for_sale_again_only_once_every_mark_is_cleared() {
    let mut stocked = Stocked::new(2, 2).await;
    let (given_back, other) = (stocked.sale.user_of(0, 0), stocked.sale.user_of(1, 0));
    let (late, late_elsewhere) = (stocked.sale.user_of(0, 1), stocked.sale.user_of(1, 1));
    for user in [given_back, other] {
        assert!(matches!(
            stocked.decide(user).await,
            AdmitReply::Admitted(_)
        ));
    }
    assert_eq!(
        stocked.decide(late).await,
        AdmitReply::Refused(Admission::SoldOut)
    );

    stocked.sale.give_back(given_back).await;
    // Still a slot, published by nobody: the user is told to retry.
    assert_eq!(stocked.sale.admit(given_back).await, AdmitReply::Pending);
    // Not back for sale yet, so SOLD_OUT is still true.
    assert_eq!(
        stocked.sale.admit(late_elsewhere).await,
        AdmitReply::Refused(Admission::SoldOut)
    );

    assert_eq!(stocked.reopen_released().await, Some(1));
    for b in 0..2 {
        assert!(
            !stocked.sale.seen(b).await.marked,
            "bucket {b} still marked"
        );
    }
    assert_eq!(stocked.sale.admit(late_elsewhere).await, AdmitReply::Dry);
    assert!(matches!(
        stocked.decide(late).await,
        AdmitReply::Admitted(_)
    ));
    assert_eq!(stocked.reopen_released().await, None);
}

/// On the suite's cluster (three primaries), a coupon of three buckets has one bucket on each
/// primary, whatever its id: CRC16 puts three naive tags on one primary more often than not.
#[tokio::test]
async fn three_buckets_land_on_three_primaries_of_the_cluster() {
    let nodes = testkit::redis_cluster::shared_nodes();
    let seeds: Vec<String> = nodes
        .split(',')
        .map(|node| format!("redis://{node}"))
        .collect();
    let client = redis::cluster::ClusterClient::new(seeds).unwrap();
    let mut con = client.get_async_connection().await.unwrap();
    let owners = coupon_core::redis::buckets::slot_owners(&mut con)
        .await
        .unwrap();
    let three = BucketCount::new(3).unwrap();
    let mut naive_shared = 0;
    for id in 1..=200 {
        let coupon = coupon_core::domain::CouponId::new(id).unwrap();
        let mut primaries = Vec::new();
        for tag in coupon_core::buckets::choose_tags(coupon, three, Some(&owners)) {
            let key = CouponKeys::of_bucket("", &tag).meta;
            // The cluster's own hashing, not ours.
            let slot: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(&key)
                .query_async(&mut con)
                .await
                .unwrap();
            primaries.push(primary_serving(&mut con, slot).await);
        }
        primaries.sort();
        primaries.dedup();
        assert_eq!(primaries.len(), 3, "coupon {id}");
        let naive = [format!("{id}"), format!("{id}.1"), format!("{id}.2")];
        let mut on = Vec::new();
        for tag in naive {
            let slot = coupon_core::buckets::tag_slot(&tag);
            on.push(primary_serving(&mut con, slot).await);
        }
        on.sort();
        on.dedup();
        naive_shared += usize::from(on.len() < 3);
    }
    // The point of choosing: naive tags would have shared a primary for most coupons.
    assert!(
        naive_shared > 100,
        "naive tags shared a primary for {naive_shared} of 200"
    );
}

/// The id of the primary serving `slot`, as the cluster's own `CLUSTER NODES` says (another
/// listing than the `CLUSTER SLOTS` the choice read).
async fn primary_serving(con: &mut redis::cluster_async::ClusterConnection, slot: u16) -> String {
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(con)
        .await
        .unwrap();
    nodes
        .lines()
        .find(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(2).is_some_and(|flags| flags.contains("master"))
                && fields.iter().skip(8).any(|range| {
                    let (first, last) = range.split_once('-').unwrap_or((range, range));
                    match (first.parse::<u16>(), last.parse::<u16>()) {
                        (Ok(first), Ok(last)) => (first..=last).contains(&slot),
                        _ => false,
                    }
                })
        })
        .and_then(|line| line.split_whitespace().next())
        .unwrap()
        .to_owned()
}

/// The log's holders of a bucket, and those whose events are unsettled.
type Holders<'a> = (&'a [i64], &'a [i64]);

/// Rebuilds bucket `b` of `stocked` with `holders`, as the API runs it (the rebuild lease
/// held for `lease`); whether it restored.
async fn rebuild(stocked: &mut Stocked, b: u16, holders: Holders<'_>, lease: Duration) -> bool {
    let lease = take_lease(stocked, b, lease).await;
    restore_under(stocked, b, holders, &lease).await
}

/// Bucket `b`'s rebuild lease, which closes it.
async fn take_lease(stocked: &Stocked, b: u16, lease: Duration) -> RebuildLease {
    let keys = &stocked.sale.keys[b as usize];
    let mut con = stocked.sale.con.clone();
    let coupon = stocked.sale.coupon.id;
    let scripts = &stocked.sale.scripts;
    match scripts
        .take_rebuild_lease_at(&mut con, keys, coupon, lease, None)
        .await
        .unwrap()
    {
        LeaseTake::Taken(lease) => lease,
        other => panic!("{other:?}"),
    }
}

async fn restore_under(
    stocked: &mut Stocked,
    b: u16,
    holders: Holders<'_>,
    lease: &RebuildLease,
) -> bool {
    let keys = stocked.sale.keys[b as usize].clone();
    let mut con = stocked.sale.con.clone();
    let stamp = Stamp::fresh(&instance_epoch(&mut con, &keys.meta).await.unwrap());
    let bucket = stocked.sale.index(b);
    let mut db = stocked.pool.get().await.unwrap();
    record_bucket_stamp(
        &mut db,
        stocked.sale.coupon.id,
        bucket,
        &stamp,
        Verification::Rebuilt,
    )
    .await
    .unwrap();
    let journalled = journal(&mut db, &stocked.sale.coupon).await.unwrap();
    let share = coupon_buckets(&mut db, &stocked.sale.coupon).await.unwrap()[b as usize].share;
    let rebuilt = RebuiltBucket::from_journal(bucket, share, &journalled);
    // The other buckets' marks first, the rebuilt bucket still closed: it may give back a
    // unit whose admission the failover lost.
    for other in (0..stocked.sale.count.get()).filter(|other| *other != b) {
        let cleared = BucketSteps::unmark(&mut con, &stocked.sale.bucket(other)).await;
        assert!(done(cleared.unwrap()));
    }
    let restored = BucketSteps::restore(
        &mut con,
        &keys,
        &stocked.sale.coupon,
        &rebuilt,
        holders,
        &stamp,
        lease,
    )
    .await
    .unwrap();
    if restored {
        stocked.sale.stamps[b as usize] = stamp.clone();
        stocked.places.places[b as usize].stamp = stamp;
    }
    restored
}

/// A rebuild that reads every pending user as a holder (as a coupon's rebuild reads its
/// unsettled set) meets a slot being given back: the restore drops it and its entry, so its
/// unit is for sale again and the user may ask again; an entry the release left flagged would
/// otherwise answer "retry" for ever, its unit stranded.
#[tokio::test]
async fn a_rebuild_drops_a_slot_being_given_back_with_its_entry() {
    let mut stocked = Stocked::new(4, 2).await;
    let (given_back, kept) = (stocked.sale.user_of(0, 0), stocked.sale.user_of(0, 1));
    for user in [given_back, kept] {
        assert!(matches!(
            stocked.sale.admit(user).await,
            AdmitReply::Admitted(_)
        ));
    }
    stocked.sale.give_back(given_back).await;

    let holders = [given_back.get(), kept.get()];
    assert!(rebuild(&mut stocked, 0, (&[], &holders), LEASE).await);
    let seen = stocked.sale.seen(0).await;
    assert_eq!((seen.stock, seen.issued, seen.releasing), (1, 1, 0));
    assert_eq!(
        stocked.sale.admit(kept).await,
        AdmitReply::Pending,
        "kept, still unsettled"
    );
    assert!(matches!(
        stocked.sale.admit(given_back).await,
        AdmitReply::Admitted(_)
    ));
}

/// A rebuilder that stalled past its lease, while another rebuilt the bucket and reopened it,
/// writes nothing when it comes back: the holders its successor wrote stay.
#[tokio::test]
async fn a_rebuilder_whose_lease_ran_out_erases_nothing() {
    let mut stocked = Stocked::new(4, 2).await;
    let holder = stocked.sale.user_of(0, 0);
    let stalled = take_lease(&stocked, 0, SHORT_LEASE).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(rebuild(&mut stocked, 0, (&[holder.get()], &[]), LEASE).await);
    assert!(!restore_under(&mut stocked, 0, (&[], &[]), &stalled).await);
    let seen = stocked.sale.seen(0).await;
    assert_eq!(seen.issued, 1, "the successor's holder was erased");
}

/// The same, with requests at once: many movers race over the same donors (one transfer out
/// of a bucket at a time, the others told so), and every unit is still issued exactly once:
/// 60 admitted, the 30 others told SOLD_OUT, nothing left in any bucket or in flight.
#[tokio::test]
async fn users_homed_to_one_bucket_at_once_receive_all_the_stock() {
    let stocked = Stocked::new(60, 3).await;
    let users: Vec<UserId> = (0..90).map(|n| stocked.sale.user_of(0, n)).collect();
    let stocked = std::sync::Arc::new(tokio::sync::Mutex::new(stocked));
    let sold_out = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let admitted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let requests = users.into_iter().map(|user| {
        let (stocked, sold_out, admitted) = (stocked.clone(), sold_out.clone(), admitted.clone());
        tokio::spawn(async move {
            // Each request on its own connection and mover, as on its own API.
            let (sale, places, pool) = {
                let stocked = stocked.lock().await;
                let sale = stocked.sale.con.clone();
                (sale, stocked.places.clone(), stocked.pool.clone())
            };
            let keys = places.places[0].keys.clone();
            let stamp = places.places[0].stamp.clone();
            let scripts = AdmissionScripts::new(String::new(), QueueKind::Kafka);
            let mut con = sale;
            let owner = format!("mover-{user}");
            for _ in 0..2_000 {
                let reply = scripts
                    .admit_in(&mut con, &keys, places.coupon, user, Some(&stamp))
                    .await
                    .unwrap();
                match reply {
                    AdmitReply::Admitted(_) => {
                        admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return;
                    }
                    AdmitReply::Refused(Admission::SoldOut) => {
                        sold_out.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return;
                    }
                    AdmitReply::Dry => {
                        let mover = Mover {
                            places: &places,
                            pool: &pool,
                            owner: &owner,
                        };
                        let _ = mover.supply(&mut con, Bucket::FIRST).await.unwrap();
                        tokio::task::yield_now().await;
                    }
                    other => panic!("{other:?}"),
                }
            }
            panic!("user {user} never decided");
        })
    });
    for request in join_all(requests).await {
        request.unwrap();
    }
    assert_eq!(admitted.load(std::sync::atomic::Ordering::SeqCst), 60);
    assert_eq!(sold_out.load(std::sync::atomic::Ordering::SeqCst), 30);
    let stocked = stocked.lock().await;
    for b in 0..3 {
        assert_eq!(stocked.sale.stock(b).await, 0, "bucket {b}");
        assert!(!stocked.sale.seen(b).await.in_flight, "bucket {b}");
    }
}

/// A bucket's rebuild moves the verification count every API watches, as a coupon's does,
/// so that an API holding the bucket's old stamp forgets it.
#[tokio::test]
async fn a_bucket_rebuilt_moves_the_verification_count() {
    let mut stocked = Stocked::new(4, 2).await;
    let count = |stocked: &Stocked| {
        let pool = stocked.pool.clone();
        async move {
            coupon_core::db::coupons::redis_verifications(&mut pool.get().await.unwrap())
                .await
                .unwrap()
        }
    };
    let before = count(&stocked).await;
    assert!(rebuild(&mut stocked, 1, (&[], &[]), LEASE).await);
    assert!(count(&stocked).await > before);
}

/// A rewound copy can hold an old admission's slot flagged as being given back while the
/// user's later admission is in PostgreSQL: the rebuild drops the flag and its entry, but
/// keeps the slot, or the unit would be sold again to someone else.
#[tokio::test]
async fn a_rebuild_keeps_a_logged_users_slot_whatever_flag_the_copy_has() {
    let mut stocked = Stocked::new(4, 2).await;
    let user = stocked.sale.user_of(0, 0);
    assert!(matches!(
        stocked.sale.admit(user).await,
        AdmitReply::Admitted(_)
    ));
    stocked.sale.give_back(user).await;
    assert!(rebuild(&mut stocked, 0, (&[user.get()], &[]), LEASE).await);
    let seen = stocked.sale.seen(0).await;
    assert_eq!((seen.issued, seen.releasing, seen.stock), (1, 0, 1));
    assert_eq!(
        stocked.sale.admit(user).await,
        AdmitReply::Refused(Admission::AlreadyIssued)
    );
}

/// A mover that dies between its credit and its settle leaves an entry whose units are
/// already with the recipient: the next supply takes it over, journals it again (already
/// there), credits nothing more, and settles it.
#[tokio::test]
async fn a_mover_dead_after_its_credit_is_finished_without_a_second_credit() {
    let stocked = Stocked::new(4, 2).await;
    let (id, taken) = stocked.sale.take(1, 0, 2, "died", SHORT_LEASE).await;
    assert_eq!(taken, Take::Taken(2));
    let journalled = Journalled {
        id,
        from: stocked.sale.index(1),
        to: stocked.sale.index(0),
        units: 2,
    };
    let mut db = stocked.pool.get().await.unwrap();
    let donor_stamp = &stocked.places.places[1].stamp;
    let fenced = journal_transfer(&mut db, stocked.sale.coupon.id, &journalled, donor_stamp);
    assert!(fenced.await.unwrap());
    drop(db);
    assert!(stocked.sale.credit(0, id, 2).await);
    tokio::time::sleep(Duration::from_millis(5)).await;

    assert_eq!(stocked.supply(0).await.unwrap(), Supply::Moved(2));
    assert_eq!(stocked.sale.stock(0).await, 4, "credited twice");
    assert!(!stocked.sale.seen(1).await.in_flight);
}
