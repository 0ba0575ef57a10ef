//! Issuing in a coupon created in buckets (`coupon_core::buckets`): the user's home bucket
//! decides, alone, so "one per user" stays one slot's question. A home bucket found empty
//! while the coupon is not marked sold out has stock moved to it by the request itself (the
//! mover), then decides again; and a bucket whose state was lost is rebuilt on its own.
//!
//! Invariants, beside `super`'s: SOLD_OUT is answered only by a bucket marked sold out,
//! which the mover marks only once every bucket was seen empty with nothing in flight; a
//! request whose home stays empty for [`SUPPLY_WAIT`] after it first found it so is
//! answered 503 (retry), never SOLD_OUT. A bucket's rebuild (`rebuild_bucket`) follows the model's order: lease (which
//! closes the bucket), holders (unsettled first, then PostgreSQL once persisted), the new
//! stamp recorded, the journal read after it, every other bucket's mark cleared, restore.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coupon_core::buckets::mover::{MoveError, Mover, Places, Supply};
use coupon_core::buckets::{Bucket, BucketCount};
use coupon_core::db::buckets::{BucketRow, coupon_buckets, journal, record_bucket_stamp};
use coupon_core::db::coupons::{Verification, coupon_holders, find_coupon};
use coupon_core::domain::{Admission, Coupon, CouponId, UserId};
use coupon_core::redis::admission::{AdmitReply, LeaseTake};
use coupon_core::redis::buckets::{BucketState, BucketSteps, RebuiltBucket, Step};
use coupon_core::redis::epoch::{Stamp, instance_epoch};
use coupon_core::redis::keys::CouponKeys;
use coupon_core::redis::ledger::LedgerAt;
use futures_util::future::join_all;
use redis::aio::ConnectionLike;
use tokio::time::Instant;

use super::rebuild::REBUILD_LEASE_MARGIN;
use super::{BUSY_FIRST_PAUSE, BUSY_WAIT, Issuer, Rebuilt, STAMPS_SEEN_BY_ALL};
use crate::delivery::Pending;
use crate::error::ApiError;
use crate::layouts::Layout;

/// How long a request whose home bucket is empty waits for stock moved to it: past it, 503.
pub const SUPPLY_WAIT: Duration = Duration::from_millis(500);

/// One coupon's supplies in this process, one at a time: when its last unit goes, every
/// request then in flight finds its home dry, and thousands of sold-out checks at once (each
/// reads every bucket twice) queue up behind each other on Redis past its timeout, where one
/// check marks the coupon for all of them. The others wait their turn and, if a supply ran
/// meanwhile for their home (or for all: the coupon marked, slots reopened), ask admission
/// again instead. A turn lasts one supply, bounded by the holder's own wait: a supply stuck
/// on PostgreSQL holds up the others no longer than that. Other processes' movers run beside
/// it, as the protocol allows any number.
#[derive(Default)]
pub struct SupplyGates(Mutex<HashMap<CouponId, Arc<SupplyGate>>>);

#[derive(Default)]
pub struct SupplyGate {
    turn: tokio::sync::Mutex<()>,
    /// Supplies run through this gate so far, by the home bucket they served.
    supplies: [AtomicU64; BucketCount::MAX as usize],
}

impl SupplyGate {
    fn supplied(&self, home: Bucket) -> u64 {
        self.supplies[usize::from(home.index())].load(Ordering::Acquire)
    }

    /// A supply for `home` ended so: one that marked the coupon, reopened slots or landed a
    /// raise served every home.
    fn record(&self, home: Bucket, outcome: &Result<Supply, MoveError>) {
        match outcome {
            Ok(Supply::SoldOut | Supply::Reopened(_) | Supply::Landed(_)) => {
                for served in &self.supplies {
                    served.fetch_add(1, Ordering::AcqRel);
                }
            }
            _ => {
                self.supplies[usize::from(home.index())].fetch_add(1, Ordering::AcqRel);
            }
        }
    }
}

impl SupplyGates {
    fn of(&self, coupon: CouponId) -> Arc<SupplyGate> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(coupon)
            .or_default()
            .clone()
    }
}

/// Whether a bucket's rebuild leaves alone a bucket verified under the stamp in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketRebuild {
    /// Asked for by a request that found the bucket closed: every request homed to a
    /// closed bucket asks, and one that comes after another process's rebuild reopened it
    /// would close it again.
    IfUnverified,
    /// The operator's `issuer-api rebuild-redis`: every bucket, as a coupon's own state is
    /// rebuilt whatever its stamp.
    Forced,
}

/// The buckets this process is rebuilding now: a request that finds one closed starts its
/// rebuild only if none runs here (another process's is refused by the lease).
#[derive(Default)]
pub struct BucketRebuilds(Mutex<HashSet<(CouponId, Bucket)>>);

impl BucketRebuilds {
    fn start(&self, coupon: CouponId, bucket: Bucket) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert((coupon, bucket))
    }

    fn end(&self, coupon: CouponId, bucket: Bucket) {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&(coupon, bucket));
    }
}

/// One bucket's stock as its collect read it, for the coupon's view and the gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketStock {
    pub bucket: Bucket,
    /// Slots taken in it.
    pub issued: i64,
    /// Units for sale in it now.
    pub stock: i64,
    /// Marked sold out (every bucket was seen empty with nothing in flight).
    pub sold_out: bool,
}

impl Issuer {
    /// Each bucket's stock as it stands; a bucket not verified under the stamp this
    /// process knows (closed for its rebuild, say) is left out.
    pub(super) async fn bucket_stock(&self, places: &Places) -> Result<Vec<BucketStock>, ApiError> {
        let mut redis = self.redis.clone();
        let mut read = Vec::with_capacity(places.places.len());
        for place in &places.places {
            let state = BucketState {
                keys: &place.keys,
                stamp: &place.stamp,
            };
            if let Step::Done(seen) = BucketSteps::collect(&mut redis, &state).await? {
                read.push(BucketStock {
                    bucket: place.bucket,
                    issued: seen.issued,
                    stock: seen.stock,
                    sold_out: seen.marked,
                });
            }
        }
        Ok(read)
    }

    /// Decides `user`'s request in their home bucket of the coupon laid out in `places`.
    pub(super) async fn issue_in_buckets(
        &self,
        mut places: Arc<Places>,
        user: UserId,
    ) -> Result<Admission, ApiError> {
        let coupon = places.coupon;
        let mut redis = self.redis.clone();
        // Each wait counts from the first answer that calls for it, not from the request's
        // start: under load an admission's answer alone may take longer than the wait, and
        // a request must still try (the sold-out check among it) at least once.
        let (mut busy_since, mut dry_since) = (None, None);
        let mut pause = BUSY_FIRST_PAUSE;
        // The stamps are learnt again from PostgreSQL at most once a request: another
        // process may have rebuilt a bucket since this one read them.
        let mut relearnt = false;
        loop {
            // Read again each time round: a forget (the verification count moved) must not
            // leave this request passing a stamp every other step here has dropped.
            if let Some(Layout::Buckets(known)) = self.layouts.get(coupon).await? {
                places = known;
            }
            let home = places.home(user).clone();
            let at = LedgerAt::Bucket(home.keys.clone());
            let (reply, _, written) = self
                .run_admission(
                    &mut redis,
                    &home.keys,
                    coupon,
                    user,
                    Some(home.stamp.clone()),
                )
                .await?;
            match reply {
                AdmitReply::Admitted(event) => {
                    self.replicated(written).await?;
                    self.delivery.deliver(event, at).await?;
                    return Ok(Admission::Success);
                }
                AdmitReply::Refused(
                    admission @ (Admission::AlreadyIssued | Admission::SoldOut),
                ) => {
                    self.replicated(written).await?;
                    return Ok(admission);
                }
                AdmitReply::Refused(admission) => return Ok(admission),
                // Nothing holds a bucket's stock (`scripts/stock_hold.lua`), nor its end (a
                // bucketed coupon's end moved later lands with no hold, since no gate shuts
                // on a bucket's answers: `settings.rs`); were either held, its answer would
                // be given until then.
                AdmitReply::Held(admission) => {
                    self.replicated(written).await?;
                    return Ok(admission);
                }
                AdmitReply::Pending => {
                    match self
                        .delivery
                        .resolve_pending(&mut redis, &at, coupon, user)
                        .await?
                    {
                        Pending::Delivered => return Ok(Admission::Success),
                        Pending::Busy
                            if busy_since.get_or_insert_with(Instant::now).elapsed()
                                < BUSY_WAIT =>
                        {
                            tokio::time::sleep(pause).await;
                            pause *= 2;
                        }
                        Pending::Busy => return Err(ApiError::PublishUnresolved),
                        Pending::Absent => {}
                    }
                }
                AdmitReply::Dry
                    if dry_since.get_or_insert_with(Instant::now).elapsed() >= SUPPLY_WAIT =>
                {
                    return Err(ApiError::unavailable(
                        "stock",
                        format!(
                            "no stock reached bucket {} within {SUPPLY_WAIT:?}",
                            home.bucket
                        ),
                    ));
                }
                AdmitReply::Dry => {
                    let gate = self.supply_gates.of(coupon);
                    let supplies_seen = gate.supplied(home.bucket);
                    let left = SUPPLY_WAIT
                        .saturating_sub(dry_since.map_or(Duration::ZERO, |since| since.elapsed()));
                    let deadline = Instant::now() + left;
                    let supplied = {
                        let Ok(_turn) = tokio::time::timeout_at(deadline, gate.turn.lock()).await
                        else {
                            continue;
                        };
                        // Another request's supply for this home ran while this one waited
                        // for its turn: admission may decide now (stock came, or the mark).
                        if gate.supplied(home.bucket) != supplies_seen {
                            continue;
                        }
                        // Cut short, it is a mover that died mid-way, which the next supply
                        // finishes (the transfer's lease runs out).
                        let Ok(supplied) = tokio::time::timeout_at(
                            deadline,
                            self.run_supply(&gate, &places, home.bucket),
                        )
                        .await
                        else {
                            continue;
                        };
                        supplied
                    };
                    match supplied {
                        // The home has stock now, or is marked: admission decides.
                        Ok(
                            Supply::Moved(_)
                            | Supply::Reopened(_)
                            | Supply::SoldOut
                            | Supply::Landed(_),
                        ) => {}
                        Ok(Supply::NotNow) => {
                            tokio::time::sleep(pause).await;
                            pause *= 2;
                        }
                        Err(MoveError::Unverified(bucket) | MoveError::DonorRebuilt(bucket)) => {
                            match self.relearn(coupon, &mut relearnt).await? {
                                Some(fresh) => places = fresh,
                                None => {
                                    self.start_bucket_rebuild(&places, bucket);
                                    tokio::time::sleep(pause).await;
                                    pause *= 2;
                                }
                            }
                        }
                        Err(err) => return Err(err.into()),
                    }
                }
                AdmitReply::NotLoaded | AdmitReply::Unverified => {
                    match self.relearn(coupon, &mut relearnt).await? {
                        Some(fresh) => places = fresh,
                        None => {
                            self.start_bucket_rebuild(&places, home.bucket);
                            return Err(ApiError::Rebuilding(coupon.get()));
                        }
                    }
                }
            }
        }
    }

    /// The coupon's buckets as PostgreSQL has them now, unless they were read already in
    /// this request.
    async fn relearn(
        &self,
        coupon: CouponId,
        relearnt: &mut bool,
    ) -> Result<Option<Arc<Places>>, ApiError> {
        if std::mem::replace(relearnt, true) {
            return Ok(None);
        }
        self.layouts.forget(coupon);
        match self.layouts.get(coupon).await? {
            Some(Layout::Buckets(places)) => Ok(Some(places)),
            _ => Err(ApiError::Internal(
                format!("coupon {coupon} lost its buckets").into(),
            )),
        }
    }

    /// Rebuilds `bucket` in the background unless this process is at it already.
    /// A mover's supply for `home`, in `gate`'s turn (the caller holds it), recorded there.
    async fn run_supply(
        &self,
        gate: &SupplyGate,
        places: &Places,
        home: Bucket,
    ) -> Result<Supply, MoveError> {
        let mover = Mover {
            places,
            pool: &self.pool,
            owner: self.layouts.owner(),
        };
        let supplied = mover.supply(&mut self.redis.clone(), home).await;
        gate.record(home, &supplied);
        if let Ok(Supply::Moved(units)) = supplied {
            self.metrics().bucket_moves.inc_by(units.unsigned_abs());
        }
        supplied
    }

    /// Brings stock to `home` for a replay whose user's home bucket has no free unit
    /// (`failed_events.rs`), in the coupon's supply turn: true once some may have come
    /// (moved, reopened, or a raise landed), so that the replay tries again; false when the
    /// coupon is sold out. No answer yet (a transfer into the home in flight, the sold-out
    /// check's two reads differing under traffic) is tried again until `deadline`, then
    /// 503; a bucket not verified has its rebuild started, and 503.
    pub(super) async fn supply_for_replay(
        &self,
        places: &Arc<Places>,
        home: Bucket,
        deadline: Instant,
    ) -> Result<bool, ApiError> {
        let gate = self.supply_gates.of(places.coupon);
        let mut pause = BUSY_FIRST_PAUSE;
        loop {
            let supplied = {
                let _turn = gate.turn.lock().await;
                self.run_supply(&gate, places, home).await
            };
            match supplied {
                Ok(Supply::Moved(_) | Supply::Reopened(_) | Supply::Landed(_)) => return Ok(true),
                Ok(Supply::SoldOut) => return Ok(false),
                Ok(Supply::NotNow) if Instant::now() < deadline => {
                    tokio::time::sleep_until(deadline.min(Instant::now() + pause)).await;
                    pause *= 2;
                }
                Ok(Supply::NotNow) => {
                    return Err(ApiError::unavailable(
                        "stock",
                        format!("no stock reached bucket {home} in time for a replay"),
                    ));
                }
                Err(MoveError::Unverified(bucket) | MoveError::DonorRebuilt(bucket)) => {
                    self.start_bucket_rebuild(places, bucket);
                    return Err(ApiError::Rebuilding(places.coupon.get()));
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    pub(super) fn start_bucket_rebuild(&self, places: &Arc<Places>, bucket: Bucket) {
        let coupon = places.coupon;
        if !self.bucket_rebuilds.start(coupon, bucket) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            match this
                .rebuild_bucket(coupon, bucket, BucketRebuild::IfUnverified)
                .await
            {
                Ok(Some(holders)) => tracing::info!(%coupon, %bucket, holders, "bucket rebuilt"),
                Ok(None) => {
                    tracing::info!(%coupon, %bucket, "bucket not rebuilt here: another process is at it, or it is verified")
                }
                Err(err) => tracing::warn!(%coupon, %bucket, error = %err, "bucket rebuild failed"),
            }
            this.bucket_rebuilds.end(coupon, bucket);
        });
    }

    /// Restores one bucket's Redis state from PostgreSQL's rows, the delivery's unsettled
    /// entries and the journal of transfers; how many holders it restored, None if another
    /// process holds its lease or (`BucketRebuild::IfUnverified`) the bucket is verified
    /// under the stamp in force. A rebuild that cannot finish now (the coupon's partition
    /// cannot commit, the lease was lost, the instance changed) is `ApiError::Rebuilding`:
    /// the bucket stays closed, and its next request starts over.
    pub async fn rebuild_bucket(
        &self,
        coupon: CouponId,
        bucket: Bucket,
        when: BucketRebuild,
    ) -> Result<Option<usize>, ApiError> {
        self.rebuild_bucket_on(&mut self.redis.clone(), coupon, bucket, when)
            .await
    }

    /// `rebuild_bucket` on the connection given (a test's, to run another actor at an exact
    /// step).
    pub async fn rebuild_bucket_on<C: ConnectionLike + Send + Sync>(
        &self,
        redis: &mut C,
        coupon: CouponId,
        bucket: Bucket,
        when: BucketRebuild,
    ) -> Result<Option<usize>, ApiError> {
        let (_, row) = self.bucket_row(coupon, bucket).await?;
        let keys = CouponKeys::of_bucket(self.layouts.prefix(), &row.tag);
        let lease = 2 * self.delivery.in_flight_window().await?
            + self.rebuild_timeout
            + REBUILD_LEASE_MARGIN;
        let unless_verified_under = match when {
            BucketRebuild::IfUnverified => row.stamp.as_ref(),
            BucketRebuild::Forced => None,
        };
        let held = match self
            .scripts
            .take_rebuild_lease_at(redis, &keys, coupon, lease, unless_verified_under)
            .await?
        {
            LeaseTake::Taken(held) => held,
            LeaseTake::Held | LeaseTake::Verified => return Ok(None),
        };
        let restored = async {
            // Read again under the lease: a lease is granted against the stamp read above,
            // and another process's rebuild may have verified the bucket since, and a raise
            // landed in it, so the share read above may be from before the raise (the
            // model's `Bug::RebuildReadsShareEarly`). A raise committed after this read
            // grows the bucket once the restore reopens it.
            let (record, row) = self.bucket_row(coupon, bucket).await?;
            let epoch = instance_epoch(redis, &keys.meta).await?;
            // The holders: the unsettled entries first, then the rows once everything that
            // left them is persisted (as a coupon's rebuild reads them, `super::rebuild`).
            if self
                .delivery
                .let_in_flight_report(&[coupon])
                .await?
                .is_empty()
            {
                return Err(ApiError::Rebuilding(coupon.get()));
            }
            let at = LedgerAt::Bucket(keys.clone());
            let unsettled = self.delivery.unsettled_users(redis, &at, coupon).await?;
            self.delivery.await_persisted().await?;
            let mut db = self.pool.get().await?;
            let logged: Vec<i64> = coupon_holders(&mut db, coupon)
                .await?
                .into_iter()
                .filter(|user| {
                    UserId::new(*user).is_ok_and(|user| record.buckets.home(user) == bucket)
                })
                .collect();
            // Recorded before the journal is read: a take under the old stamp is journalled
            // before this (and read below) or refused after it.
            let stamp = Stamp::fresh(&epoch);
            record_bucket_stamp(&mut db, coupon, bucket, &stamp, Verification::Rebuilt).await?;
            tokio::time::sleep(STAMPS_SEEN_BY_ALL).await;
            let journalled = journal(&mut db, &record).await?;
            let rebuilt = RebuiltBucket::from_journal(bucket, row.share, &journalled);
            // Every other bucket's mark first, this one still closed: it may give back a
            // unit whose admission the loss undid, and a marked bucket would answer
            // SOLD_OUT while that unit is for sale. A bucket not verified answers nothing.
            for other in coupon_buckets(&mut db, &record).await? {
                if other.bucket == bucket {
                    continue;
                }
                if let Some(stamp) = &other.stamp {
                    let keys = CouponKeys::of_bucket(self.layouts.prefix(), &other.tag);
                    BucketSteps::unmark(redis, &BucketState { keys: &keys, stamp }).await?;
                }
            }
            let restored = BucketSteps::restore(
                redis,
                &keys,
                &record,
                &rebuilt,
                (&logged, &unsettled),
                &stamp,
                &held,
            )
            .await?;
            if !restored {
                return Err(ApiError::Rebuilding(coupon.get()));
            }
            Ok::<_, ApiError>(Some(logged.len() + unsettled.len()))
        }
        .await;
        self.end_lease(redis, &held).await;
        self.layouts.forget(coupon);
        restored
    }

    /// The coupon's record and one bucket's row, as PostgreSQL has them now.
    async fn bucket_row(
        &self,
        coupon: CouponId,
        bucket: Bucket,
    ) -> Result<(Coupon, BucketRow), ApiError> {
        let mut db = self.pool.get().await?;
        let record = find_coupon(&mut db, coupon)
            .await?
            .ok_or(ApiError::CouponNotFound(coupon.get()))?;
        let row = coupon_buckets(&mut db, &record)
            .await?
            .into_iter()
            .nth(usize::from(bucket.index()))
            .ok_or_else(|| ApiError::Internal(format!("coupon {coupon} has no {bucket}").into()))?;
        Ok((record, row))
    }

    /// Rebuilds every bucket of a bucketed coupon (`issuer-api rebuild-redis`), at once.
    pub(super) async fn rebuild_every_bucket(&self, places: &Places) -> Result<Rebuilt, ApiError> {
        let rebuilds = places
            .count
            .all()
            .map(|bucket| self.rebuild_bucket(places.coupon, bucket, BucketRebuild::Forced));
        let mut holders = 0;
        for rebuilt in join_all(rebuilds).await {
            match rebuilt? {
                Some(restored) => holders += restored,
                None => return Ok(Rebuilt::AlreadyRunning),
            }
        }
        Ok(Rebuilt::Restored { holders })
    }
}
