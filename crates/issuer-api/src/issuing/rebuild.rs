//! Restoring coupons' Redis state from PostgreSQL after Redis lost it.
//!
//! Invariant: admission reopens only with every admitted user in the issued set. Who won is
//! PostgreSQL's holders plus the users whose events are not persisted yet (the delivery's
//! unsettled set). They are read in that order's reverse: first the unsettled set, then,
//! once everything that left it is persisted, PostgreSQL. Read the other way round, an event
//! could leave the unsettled set after PostgreSQL was read (a worker's batch committing, a
//! publish being acknowledged) and its user would be in neither.
//! The coupon is closed to admission from the moment its lease is taken: a user admitted
//! while a rebuild reads could be released after it, and written back with no event.
//! Only then is each meta written, stamped with the epoch of the Redis instance the rebuild
//! read (`coupon_core::redis::epoch`), which reopens admission. A state verified under another
//! instance (Redis restarted, perhaps from a file that lost its tail, or failed over) takes
//! the same path as a missing one.

use std::time::Duration;

use coupon_core::buckets::BucketCount;
use coupon_core::db::coupons::{
    Verification, coupon_holders, find_coupon, record_redis_stamp, redis_stamps,
};
use coupon_core::domain::{Coupon, CouponId};
use coupon_core::redis::admission::{LeaseTake, RebuildLease};
use coupon_core::redis::epoch::{Stamp, instance_epoch};
use coupon_core::redis::ledger::LedgerAt;
use futures_util::future::join_all;
use redis::aio::ConnectionLike;

use super::lazy_rebuilds::{GATHERING, Gathering};
use super::{Issuer, LONGEST_HOLD, STAMPS_SEEN_BY_ALL};
use crate::error::ApiError;
use crate::layouts::Layout;
use crate::metrics::OutcomeLabels;

/// A rebuild lease outlives the longest rebuild wait, so two never overlap; a crashed
/// rebuilder's lease runs out and the next request starts over.
pub(super) const REBUILD_LEASE_MARGIN: Duration = Duration::from_secs(30);
/// Most coupons one gathered rebuild takes on: past a few hundred, the reads and restores
/// after the wait for the workers approach the lease's margin.
const GATHERED_PER_REBUILD: usize = 64;
/// How long a failed rebuild keeps trying to end its lease, and its pause between tries.
const LEASE_END_PATIENCE: Duration = Duration::from_secs(15);
const LEASE_END_PAUSE: Duration = Duration::from_millis(200);

/// What an explicit rebuild did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rebuilt {
    /// Restored with this many holders.
    Restored { holders: usize },
    /// Another process is rebuilding this coupon right now.
    AlreadyRunning,
}

impl Issuer {
    /// Redis has no state for this coupon (Redis restarted empty, say), or a state verified
    /// under another instance: answer 404 at once if PostgreSQL does not know the coupon,
    /// else start rebuilding in the background and answer 503 until admission reopens.
    pub(super) async fn start_rebuild(&self, coupon: CouponId) -> ApiError {
        // Known to exist when it was asked for; the pool is scarce while many coupons wait.
        if self.lazy_rebuilds.asked(coupon) {
            return ApiError::Rebuilding(coupon.get());
        }
        let exists = async {
            let mut conn = self.pool.get().await?;
            Ok::<_, ApiError>(find_coupon(&mut conn, coupon).await?.is_some())
        };
        match exists.await {
            Ok(true) => {}
            Ok(false) => return ApiError::CouponNotFound(coupon.get()),
            Err(err) => return err,
        }
        if let Some(gathering) = self.lazy_rebuilds.ask(coupon) {
            let this = self.clone();
            tokio::spawn(async move { this.rebuild_gathered(gathering).await });
        }
        ApiError::Rebuilding(coupon.get())
    }

    /// Waits for other coupons to be asked for, then rebuilds them together
    /// (`lazy_rebuilds`), at most [`GATHERED_PER_REBUILD`] to a rebuild (its lease covers
    /// a bounded amount of work), the rebuilds at once. However this ends, the gathering's
    /// coupons may be asked for again after.
    async fn rebuild_gathered(&self, mut gathering: Gathering) {
        // Held to the end: dropped, it frees the coupons it took.
        tokio::time::sleep(GATHERING).await;
        let coupons = gathering.take();
        let rebuilds = coupons
            .chunks(GATHERED_PER_REBUILD)
            .map(|batch| async move { (batch, self.rebuild_leased(batch, true).await) });
        for (batch, rebuilt) in join_all(rebuilds).await {
            if let Err(err) = rebuilt {
                let cause = std::error::Error::source(&err).map(ToString::to_string);
                tracing::warn!(coupons = batch.len(), error = %err, cause,
                    "rebuilding some of the coupons' Redis state failed; they stay closed");
            }
        }
    }

    /// Restores coupons' Redis state, each under a lease so only one process rebuilds a
    /// coupon at a time, and each closed to admission for the whole rebuild (the lease
    /// closes it), open or not before. Many coupons share one wait.
    /// A bucketed coupon's buckets are each rebuilt (`super::buckets`).
    pub async fn rebuild(
        &self,
        coupons: &[CouponId],
    ) -> Result<Vec<(CouponId, Rebuilt)>, ApiError> {
        let (mut single, mut done) = (Vec::new(), Vec::new());
        for &coupon in coupons {
            match self.layouts.get(coupon).await? {
                Some(Layout::Buckets(places)) => {
                    done.push((coupon, self.rebuild_every_bucket(&places).await?));
                }
                Some(Layout::Single) | None => single.push(coupon),
            }
        }
        done.extend(self.rebuild_leased(&single, false).await?);
        Ok(done)
    }

    /// [`Issuer::rebuild`]; with `unless_verified`, the coupons whose state is verified
    /// under the stamp in force when their lease is asked for are left as they are, and
    /// out of the result. The
    /// requests that ask for a lazy rebuild found the coupon closed; it may have opened
    /// since (a hand-over carried it over, another process rebuilt it), and a rebuild would
    /// only close it again.
    async fn rebuild_leased(
        &self,
        coupons: &[CouponId],
        unless_verified: bool,
    ) -> Result<Vec<(CouponId, Rebuilt)>, ApiError> {
        let mut redis = self.redis.clone();
        let in_force = if unless_verified {
            redis_stamps(&mut *self.pool.get().await?, coupons).await?
        } else {
            vec![None; coupons.len()]
        };
        // The window, then the fences (each a publish, reported within one window too),
        // then the wait for the workers.
        let lease = 2 * self.delivery.in_flight_window().await?
            + self.rebuild_timeout
            + REBUILD_LEASE_MARGIN;
        let (mut leased, mut done) = (Vec::new(), Vec::new());
        for (&coupon, in_force) in coupons.iter().zip(&in_force) {
            match self
                .scripts
                .take_rebuild_lease(&mut redis, coupon, lease, in_force.as_ref())
                .await
            {
                Ok(LeaseTake::Taken(held)) => leased.push(held),
                Ok(LeaseTake::Held) => done.push((coupon, Rebuilt::AlreadyRunning)),
                Ok(LeaseTake::Verified) => {}
                // The leases taken so far are ended, or their coupons stay closed for the
                // whole lease.
                Err(err) => {
                    for held in &leased {
                        self.end_lease(&mut redis, held).await;
                    }
                    return Err(err.into());
                }
            }
        }
        if leased.is_empty() {
            return Ok(done);
        }
        let count = |outcome| {
            self.metrics()
                .rebuilds
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(leased.len() as u64)
        };
        count("started");
        let restored = self.restore(&mut redis, &leased).await;
        count(if restored.is_ok() {
            "finished"
        } else {
            "failed"
        });
        for held in &leased {
            self.end_lease(&mut redis, held).await;
        }
        done.extend(restored?);
        Ok(done)
    }

    /// Ends a lease, trying again for a while: a rebuild that failed because Redis refused
    /// writes (a new primary whose replicas have not joined yet answers NOREPLICAS) would
    /// otherwise leave its lease to expire, and the coupon closed, for the whole lease.
    pub(super) async fn end_lease<C: ConnectionLike + Send + Sync>(
        &self,
        redis: &mut C,
        held: &RebuildLease,
    ) {
        let deadline = tokio::time::Instant::now() + LEASE_END_PATIENCE;
        loop {
            match self.scripts.end_rebuild_lease(redis, held).await {
                Ok(()) => return,
                Err(err) if tokio::time::Instant::now() >= deadline => {
                    tracing::warn!(coupon = %held.coupon, error = %err,
                        "rebuild lease not released; it will expire");
                    return;
                }
                Err(_) => tokio::time::sleep(LEASE_END_PAUSE).await,
            }
        }
    }

    /// Finds every holder of the leased coupons, then writes them and the meta back.
    async fn restore<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        leased: &[RebuildLease],
    ) -> Result<Vec<(CouponId, Rebuilt)>, ApiError> {
        // The leases closed the coupons just before: a finished gate shut on one before
        // that, on any API, has run out once the longest hold has passed from here
        // (`finished_gate`).
        let gates_shut_before = tokio::time::Instant::now() + LONGEST_HOLD;
        // Everything read from here on is verified under the instance that holds each
        // coupon now (on a cluster, each coupon's own primary) only.
        let mut epochs = std::collections::HashMap::with_capacity(leased.len());
        for held in leased {
            let meta = self.scripts.keys(held.coupon).meta;
            epochs.insert(held.coupon, instance_epoch(con, &meta).await?);
        }
        let coupons: Vec<CouponId> = leased.iter().map(|held| held.coupon).collect();
        let found = self.holders(con, &coupons).await?;
        // The stamps in force from now on, for every API, this one's own or one started
        // later: recorded first, so that a failure after leaves a stamp no node has (closed,
        // rebuilt again), never a node open under a stamp PostgreSQL lacks. Then Redis opens
        // only once every API has forgotten the stamps it held: one wait for them all.
        let mut stamped = Vec::with_capacity(found.len());
        {
            let mut conn = self.pool.get().await?;
            for (record, holders) in found {
                let Some(epoch) = epochs.get(&record.id) else {
                    continue;
                };
                let stamp = Stamp::fresh(epoch);
                record_redis_stamp(&mut conn, record.id, &stamp, Verification::Rebuilt).await?;
                stamped.push((record, holders, stamp));
            }
        }
        // A rebuild may give back slots whose events never reached the log: it opens only
        // once no gate shut before can tell a user admitted on them SOLD_OUT.
        tokio::time::sleep_until(
            (tokio::time::Instant::now() + STAMPS_SEEN_BY_ALL).max(gates_shut_before),
        )
        .await;
        // Each coupon on its own: one that cannot be restored now (its fence refused, the
        // instance changed under it) stays closed, and the others open.
        let mut rebuilt = Vec::with_capacity(stamped.len());
        for (record, holders, stamp) in stamped {
            let Some(held) = leased.iter().find(|held| held.coupon == record.id) else {
                continue;
            };
            if !self
                .scripts
                .restore(con, &record, &holders, &stamp, held)
                .await?
            {
                continue;
            }
            tracing::info!(coupon = %record.id, holders = holders.len(), "rebuild: admission reopened");
            rebuilt.push((
                record.id,
                Rebuilt::Restored {
                    holders: holders.len(),
                },
            ));
        }
        match leased
            .iter()
            .find(|held| !rebuilt.iter().any(|(coupon, _)| *coupon == held.coupon))
        {
            Some(closed) => Err(ApiError::Rebuilding(closed.coupon.get())),
            None => Ok(rebuilt),
        }
    }

    /// Every admitted user of each coupon, with its record: the unsettled set first, then
    /// PostgreSQL once everything that left the set is persisted (see the module's doc).
    /// Only the coupons whose deliveries could be settled are found (`Delivery::
    /// let_in_flight_report`); the others are left out.
    pub async fn holders<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        coupons: &[CouponId],
    ) -> Result<Vec<(Coupon, Vec<i64>)>, ApiError> {
        let coupons = self.delivery.let_in_flight_report(coupons).await?;
        let mut unsettled = Vec::with_capacity(coupons.len());
        for &coupon in &coupons {
            let at = LedgerAt::Coupon(self.scripts.keys(coupon));
            unsettled.push(self.delivery.unsettled_users(con, &at, coupon).await?);
        }
        self.delivery.await_persisted().await?;
        let mut conn = self.pool.get().await?;
        let mut found = Vec::with_capacity(coupons.len());
        for (&coupon, unsettled) in coupons.iter().zip(unsettled) {
            let record = find_coupon(&mut conn, coupon)
                .await?
                .ok_or(ApiError::CouponNotFound(coupon.get()))?;
            // Its own keys are its bucket 0's, which holds one share: a bucketed coupon is
            // rebuilt bucket by bucket (`bucket_rebuild`), never here.
            if record.buckets != BucketCount::ONE {
                tracing::warn!(%coupon, "a bucketed coupon left out of a coupon's rebuild");
                continue;
            }
            let mut holders = coupon_holders(&mut conn, coupon).await?;
            holders.extend(unsettled);
            found.push((record, holders));
        }
        Ok(found)
    }
}
