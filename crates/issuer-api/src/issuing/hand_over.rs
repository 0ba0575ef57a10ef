//! A planned switchover of the Redis primary that carries every coupon's state over as it
//! is (`issuer-api hand-over`, run by `crate::commands`): no rebuild, so no publish window,
//! no fence and no wait for the workers, only a few seconds closed.
//!
//! Invariant: a coupon opens on a node under a new stamp only if that node holds every
//! write the old primary made to it before it closed. Before the switchover, each coupon
//! whose state is verified under the stamp in force is closed and marked with this
//! hand-over's lease in one script (`scripts/hand_over.lua`). A replica receives its
//! primary's writes in order, so a node holding the mark holds everything before it. After
//! the switchover, on the node that is primary then, each closed coupon gets a new stamp,
//! recorded in PostgreSQL first (the count every API watches moves); once every API has
//! forgotten the old stamps, the node is stamped and opened, only where the mark is found
//! (`load_meta.lua`'s 'verified' checks the lease's token). Elsewhere (a node promoted
//! before it had the mark, a lease that ran out) the coupon stays closed, and its next
//! request rebuilds it as after any failover.
//!
//! What a closed coupon's deliveries still write after the mark (an event settled,
//! released, or taken over for a republish) may be missing on the new node: each is a write
//! a restart could lose too, and it ends the same way, with the event resolved again. Admissions, the writes the promises
//! rest on, cannot come after the mark: it closes admission.

use std::collections::BTreeSet;
use std::time::Duration;

use coupon_core::db::coupons::{find_coupon, hand_over_stamp, redis_stamps};
use coupon_core::domain::{Coupon, CouponId};
use coupon_core::redis::admission::RebuildLease;
use coupon_core::redis::connection::RedisConnection;
use coupon_core::redis::epoch::{Stamp, instance_epoch};
use redis::RedisError;
use tokio::time::Instant;

use super::{Issuer, LONGEST_HOLD, STAMPS_SEEN_BY_ALL};
use crate::error::ApiError;

/// Pause between two tries of a write the new primary refused (`NOREPLICAS` until its
/// replicas have joined it).
const REFUSED_PAUSE: Duration = Duration::from_millis(200);

/// What the hand-over did with one coupon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandedOver {
    /// Opened on the new primary with its state as it was.
    Carried,
    /// Closed, and not opened: the new primary lacks the mark, the lease ran out, another
    /// verification replaced the one it closed under, or the node refused writes until the
    /// lease's end. Its lease is ended where it can be, and its next request rebuilds it.
    LeftToRebuild,
    /// Not closed: its state was not verified under the stamp in force (not loaded, or
    /// already closed for a rebuild). Its next request rebuilds it or learns the stamp,
    /// as before.
    NotVerified,
}

/// The coupons a hand-over closed, each with the stamp it was verified under, and the run
/// ids of the nodes the closes ran on (one, unless the primary moved during the closes).
pub struct Closed {
    pub coupons: Vec<(RebuildLease, Stamp)>,
    pub on: BTreeSet<String>,
}

impl Issuer {
    /// Closes and marks every coupon whose state is verified under the stamp in force on
    /// the node this process reaches. Returns what it closed, and the coupons it left as
    /// they were.
    pub async fn hand_over_close(
        &self,
        coupons: &[CouponId],
        lease: Duration,
    ) -> Result<(Closed, Vec<CouponId>), ApiError> {
        let mut redis = self.redis.clone();
        // The node before the closes counts as old even if no close answers: the new
        // primary must be another. Under Sentinel one node holds every key, and on a
        // cluster the coupons a hand-over closes are on one node (`crate::slot_moves`):
        // the first coupon's key names it.
        let named_by = coupons
            .first()
            .map(|coupon| self.scripts.keys(*coupon).meta)
            .unwrap_or_default();
        let before = instance_epoch(&mut redis, &named_by).await?;
        let in_force = redis_stamps(&mut *self.pool.get().await?, coupons).await?;
        let mut closed = Closed {
            coupons: Vec::new(),
            on: BTreeSet::from([before]),
        };
        let mut left = Vec::new();
        for (&coupon, stamp) in coupons.iter().zip(in_force) {
            let Some(stamp) = stamp else {
                left.push(coupon);
                continue;
            };
            let held = self.scripts.hand_over_lease(coupon);
            match self
                .scripts
                .close_for_hand_over(&mut redis, &held, &stamp, lease)
                .await
            {
                Ok(Some(epoch)) => {
                    closed.on.insert(epoch);
                    closed.coupons.push((held, stamp));
                }
                Ok(None) => left.push(coupon),
                // The close may have run with its answer lost: kept with the closed ones,
                // it is opened, or its lease ended, by its token like them.
                Err(err) => {
                    tracing::warn!(%coupon, error = %err, "hand-over: close unknown; opened with the rest");
                    closed.coupons.push((held, stamp));
                }
            }
        }
        Ok((closed, left))
    }

    /// Whether every replica connected to the node this process reaches has everything it
    /// wrote (its closes), asked again until `patience` has passed, each WAIT bounded by
    /// `each` (REDIS_REPLICA_TIMEOUT_MS, below the commands' own timeout): the switchover
    /// should not start before (the node it promotes would lack the marks), though the
    /// mark, not this count, is what opens a coupon. Returns the acknowledgements and the
    /// replicas connected.
    pub async fn hand_over_replicas(
        &self,
        each: Duration,
        patience: Duration,
    ) -> Result<(i64, i64), ApiError> {
        let mut redis = self.redis.clone();
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut redis)
            .await?;
        let connected = info
            .lines()
            .find_map(|line| line.strip_prefix("connected_slaves:"))
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or(0);
        let deadline = Instant::now() + patience;
        loop {
            let acknowledged: i64 = redis::cmd("WAIT")
                .arg(connected)
                .arg(each.as_millis() as u64)
                .query_async(&mut redis)
                .await?;
            if acknowledged >= connected || Instant::now() >= deadline {
                return Ok((acknowledged, connected));
            }
        }
    }

    /// On `primary`, the node that is primary now: records a new stamp for each closed
    /// coupon (only where the one it closed under is still in force), waits for every API
    /// to forget the old ones, then opens each coupon whose mark is there, trying again
    /// until `deadline` while the node refuses writes. Every lease is ended, and a coupon
    /// that meets an error is left to its rebuild: the others go on.
    pub async fn hand_over_open(
        &self,
        primary: &mut RedisConnection,
        closed: &[(RebuildLease, Stamp)],
        deadline: Instant,
    ) -> Vec<(CouponId, HandedOver)> {
        let mut outcomes = Vec::with_capacity(closed.len());
        let stamped = self.record_hand_over(primary, closed).await;
        if stamped.iter().any(|(_, stamp)| stamp.is_ok()) {
            // Closed before this, a coupon may hold stock the old node gave back after
            // its mark (a release, a raise), which no hold covers here: opened once every
            // API's finished gate shut before the close has run out (`finished_gate`).
            tokio::time::sleep(STAMPS_SEEN_BY_ALL.max(LONGEST_HOLD)).await;
        }
        for (held, stamp) in stamped {
            let outcome = match stamp {
                Ok(Some((record, stamp))) => {
                    match self
                        .open_carried(primary, &record, &stamp, held, deadline)
                        .await
                    {
                        Ok(true) => {
                            tracing::info!(coupon = %held.coupon, "hand-over: admission reopened as it was");
                            HandedOver::Carried
                        }
                        Ok(false) => HandedOver::LeftToRebuild,
                        Err(err) => {
                            tracing::warn!(coupon = %held.coupon, error = %err, "hand-over: cannot open; left to its rebuild");
                            HandedOver::LeftToRebuild
                        }
                    }
                }
                Ok(None) => HandedOver::LeftToRebuild,
                Err(err) => {
                    tracing::warn!(coupon = %held.coupon, error = %err, "hand-over: no new stamp; left to its rebuild");
                    HandedOver::LeftToRebuild
                }
            };
            // Carried or not, the lease goes: a coupon left closed is rebuilt by its next
            // request at once, not after the lease.
            self.end_lease(primary, held).await;
            outcomes.push((held.coupon, outcome));
        }
        outcomes
    }

    /// Records a new stamp for each closed coupon whose stamp in force is still the one it
    /// closed under, made under the epoch of the node that holds the coupon now (on a
    /// cluster each coupon's own): Some((record, stamp)) where recorded, None where another
    /// verification came since.
    async fn record_hand_over<'a>(
        &self,
        primary: &mut RedisConnection,
        closed: &'a [(RebuildLease, Stamp)],
    ) -> Vec<(&'a RebuildLease, RecordedStamp)> {
        let mut conn = match self.pool.get().await {
            Ok(conn) => conn,
            Err(err) => {
                tracing::warn!(error = %err, "hand-over: PostgreSQL unavailable; every coupon left to its rebuild");
                let reason = err.to_string();
                return closed
                    .iter()
                    .map(|(held, _)| {
                        (
                            held,
                            Err(ApiError::unavailable("PostgreSQL", reason.clone())),
                        )
                    })
                    .collect();
            }
        };
        let mut recorded = Vec::with_capacity(closed.len());
        for (held, verified) in closed {
            let one = async {
                let meta = self.scripts.keys(held.coupon).meta;
                let stamp = Stamp::fresh(&instance_epoch(primary, &meta).await?);
                let record = find_coupon(&mut conn, held.coupon)
                    .await?
                    .ok_or(ApiError::CouponNotFound(held.coupon.get()))?;
                let replaced = hand_over_stamp(&mut conn, held.coupon, verified, &stamp).await?;
                Ok::<_, ApiError>(replaced.then_some((record, stamp)))
            };
            recorded.push((held, one.await));
        }
        recorded
    }

    /// Opens one carried coupon under its recorded stamp, where its mark is, trying again
    /// while the node refuses writes for want of replicas, until `deadline`.
    async fn open_carried(
        &self,
        primary: &mut RedisConnection,
        record: &Coupon,
        stamp: &Stamp,
        held: &RebuildLease,
        deadline: Instant,
    ) -> Result<bool, RedisError> {
        loop {
            match self
                .scripts
                .restore(primary, record, &[], stamp, held)
                .await
            {
                Err(err) if refused_for_now(&err) && Instant::now() < deadline => {
                    tokio::time::sleep(REFUSED_PAUSE).await;
                }
                opened => return opened,
            }
        }
    }
}

/// What recording one coupon's new stamp came to.
type RecordedStamp = Result<Option<(Coupon, Stamp)>, ApiError>;

/// A new primary answers `NOREPLICAS` to writes (`min-replicas-to-write`) until a replica
/// has joined it, a second or two after the switchover.
fn refused_for_now(err: &RedisError) -> bool {
    err.code() == Some("NOREPLICAS")
}
