//! Failed events in an operator's hands, as admin routes: listed, replayed, discarded
//! (`issuer-worker dlq` does the first two on a shell). Each action records who took it.
//!
//! An OVER_QUANTITY event's row would spend a unit of the quantity (raised to honour it),
//! and the raise gives Redis as many units to sell: a row no slot accounts for makes a
//! user Redis admits on that unit, told 201, refused by the quantity guard. So a replay's
//! row stands on the user's slot in Redis, whatever the event's reason (an OVER_QUANTITY
//! event refused on replay for another reason is REJECTED since: a fresh-eyes review found
//! it written on no slot when replayed again); only an event that is a row already, or can
//! never be one (unreadable, its coupon gone), is answered by the guarded insert alone.
//!
//! One transaction, in the order `coupon-core/tests/replay_model.rs` checks: the failed
//! event's row and the coupon's row locked (in that order, the workers' scheduled retry's,
//! so that neither waits on the other in a cycle), the row written through the guarded
//! insert, then the slot (their admission's, if the state still holds it, else a free one),
//! then the commit. A row refused ends the replay there, answered with its reason, having
//! taken nothing; a slot none free or a state closed rolls the row back (409: raise first,
//! or 503 while the state is rebuilt). A rebuild reads the holders under a share lock of
//! the coupon's row, so it reads before the replay locks (having closed the state, where no
//! slot is taken) or after the row commits. No replica confirms the slot before the row: a
//! failover that loses it is a state verified under another instance, rebuilt from the
//! rows, this one's among them. An API that dies between the slot and the commit leaves a
//! slot without a row (a unit unsold, never one sold twice), which a replay again finds.
//!
//! A bucketed coupon's slot is taken in the user's home bucket, under that bucket's stamp
//! read under the coupon's row lock (a bucket's rebuild reads the rows under the same share
//! lock). A home with no free unit has a mover's supply bring one from another bucket, as
//! a dry admission does, and the replay tries again (another request may take what came):
//! 409 only once a supply found the coupon sold out (raise first), 503 when supplies kept
//! failing to hold a unit for [`REPLAY_SUPPLY_WAIT`].

use coupon_core::buckets::Bucket;
use coupon_core::db::buckets::bucket_stamp;
use coupon_core::db::coupons::lock_redis_stamp;
use coupon_core::db::failed_events::{
    Discard, FailedEventRow, Filter, Status, discard, find, list, locked,
};
use coupon_core::db::redrive::{Redriven, replay, replay_within};
use coupon_core::event::IssueEvent;
use coupon_core::redis::admission::ReplaySlot;
use coupon_core::redis::keys::CouponKeys;
use diesel_async::AsyncConnection;

use tokio::time::Instant;

use super::{Issuer, SUPPLY_WAIT};
use crate::error::ApiError;
use crate::layouts::Layout;

/// How long a bucketed replay keeps bringing stock to a home whose units other requests
/// take first, before 503: a few of an admission's waits, for an operator's one action
/// is worth more patience than one request of a rush.
const REPLAY_SUPPLY_WAIT: std::time::Duration = SUPPLY_WAIT.saturating_mul(4);

impl Issuer {
    /// Failed events, newest first, of one status or all.
    pub async fn failed_events(
        &self,
        filter: Filter,
        limit: i64,
    ) -> Result<Vec<FailedEventRow>, ApiError> {
        let mut db = self.pool.get().await?;
        Ok(list(&mut db, filter, limit).await?)
    }

    /// Replays failed event `id` through the workers' guarded insert, whatever its
    /// schedule or status, recorded as done `by`: onto its user's Redis slot if it may
    /// become a row (the module's doc).
    pub async fn replay_failed_event(&self, id: i64, by: &str) -> Result<Redriven, ApiError> {
        // Not held across the layout's read, which may take a connection of its own.
        let row = find(&mut *self.pool.get().await?, id)
            .await?
            .ok_or(ApiError::FailedEventNotFound(id))?;
        if row.status != Status::Recovered.as_str()
            && let Ok(event) = IssueEvent::decode(&row.payload)
            && let Some(layout) = self.layouts.get(event.coupon_id).await?
        {
            return self.replay_onto_a_slot(id, event, layout, by).await;
        }
        // A row already, or never one: the guarded insert answers it as it is.
        replay(&mut *self.pool.get().await?, id, by)
            .await?
            .ok_or(ApiError::FailedEventNotFound(id))
    }

    /// Replays event `id` onto its user's Redis slot (the module's doc).
    async fn replay_onto_a_slot(
        &self,
        id: i64,
        event: IssueEvent,
        layout: Layout,
        by: &str,
    ) -> Result<Redriven, ApiError> {
        let (coupon, user) = (event.coupon_id, event.user_id);
        let places = match layout {
            Layout::Single => None,
            Layout::Buckets(places) => Some(places),
        };
        let slot = match &places {
            None => SlotAt {
                keys: self.scripts.keys(coupon),
                bucket: None,
                event,
            },
            Some(places) => {
                let home = places.home(user);
                SlotAt {
                    keys: home.keys.clone(),
                    bucket: Some(home.bucket),
                    event,
                }
            }
        };
        let deadline = Instant::now() + REPLAY_SUPPLY_WAIT;
        let mut supplied = false;
        loop {
            match self.replay_in_transaction(id, &slot, by).await? {
                Replayed::Done(redriven) => return Ok(redriven),
                Replayed::NotFound => return Err(ApiError::FailedEventNotFound(id)),
                // Not open here (closed for its rebuild, not loaded, a copy not verified):
                // the rebuild this starts opens it; the operator replays again.
                Replayed::Closed => {
                    return Err(match (&places, slot.bucket) {
                        (Some(places), Some(bucket)) => {
                            self.start_bucket_rebuild(places, bucket);
                            ApiError::Rebuilding(coupon.get())
                        }
                        _ => self.start_rebuild(coupon).await,
                    });
                }
                Replayed::NoneFree => {
                    let sold_out = || {
                        ApiError::Conflict(format!(
                            "no unit of coupon {coupon} is free in Redis for user {user}: \
                             raise the quantity first, then replay"
                        ))
                    };
                    let (Some(places), Some(bucket)) = (&places, slot.bucket) else {
                        return Err(sold_out());
                    };
                    // Supplied at least once: units came and others took them first.
                    if supplied && Instant::now() >= deadline {
                        return Err(ApiError::unavailable(
                            "stock",
                            format!(
                                "stock moved to bucket {bucket} was taken by others for \
                                 {REPLAY_SUPPLY_WAIT:?}: replay again"
                            ),
                        ));
                    }
                    supplied = true;
                    if !self.supply_for_replay(places, bucket, deadline).await? {
                        return Err(sold_out());
                    }
                }
            }
        }
    }

    /// One try (the module's doc): committed when the row is written on a slot, or refused;
    /// rolled back, the row with it, when the slot cannot be had.
    async fn replay_in_transaction(
        &self,
        id: i64,
        at: &SlotAt,
        by: &str,
    ) -> Result<Replayed, ApiError> {
        let (coupon, user) = (at.event.coupon_id, at.event.user_id);
        let mut redis = self.redis.clone();
        let mut db = self.pool.get().await?;
        let tried = db
            .transaction(async |conn| {
                // Read again under its lock: a replay on the shell may have made it a row
                // since, without a slot, which this one must not take one for.
                match locked(conn, id).await? {
                    None => return Ok(Replayed::NotFound),
                    Some(row) if row.status == Status::Recovered.as_str() => {
                        return Ok(Replayed::Done(Redriven::Recovered));
                    }
                    Some(_) => {}
                }
                let own = lock_redis_stamp(conn, coupon)
                    .await?
                    .ok_or(ApiError::CouponNotFound(coupon.get()))?;
                let Some(replayed) = replay_within(conn, id, by).await? else {
                    return Ok(Replayed::NotFound);
                };
                // Refused again: answered with its reason, nothing taken.
                if !matches!(replayed, Redriven::Recovered) {
                    return Ok(Replayed::Done(replayed));
                }
                let stamp = match at.bucket {
                    None => own,
                    Some(bucket) => bucket_stamp(conn, coupon, bucket)
                        .await?
                        .map(|stamp| stamp.as_str().to_owned()),
                };
                let taken = self
                    .scripts
                    .replay_slot(&mut redis, &at.keys, user, stamp.as_deref())
                    .await?;
                tracing::info!(failed_event = id, %coupon, %user, bucket = ?at.bucket,
                    slot = ?taken, "failed event's row written; its Redis slot asked for");
                match taken {
                    ReplaySlot::Held | ReplaySlot::Taken => Ok(Replayed::Done(replayed)),
                    ReplaySlot::NotVerified => Err(RolledBack::Replayed(Replayed::Closed)),
                    ReplaySlot::NoneFree => Err(RolledBack::Replayed(Replayed::NoneFree)),
                    ReplaySlot::Pending => Err(ApiError::Conflict(format!(
                        "user {user} has an admission of coupon {coupon} still being \
                         delivered: replay once it is settled (or given back)"
                    ))
                    .into()),
                }
            })
            .await;
        match tried {
            Ok(replayed) | Err(RolledBack::Replayed(replayed)) => Ok(replayed),
            Err(RolledBack::Error(err)) => Err(err),
        }
    }

    /// Sets failed event `id` aside for good, recorded as done `by`; a RECOVERED one is a
    /// row, and is refused.
    pub async fn discard_failed_event(
        &self,
        id: i64,
        by: &str,
    ) -> Result<FailedEventRow, ApiError> {
        let mut db = self.pool.get().await?;
        match discard(&mut db, id, by).await? {
            Discard::Discarded(row) => Ok(*row),
            Discard::Recovered => Err(ApiError::Conflict(format!(
                "failed event {id} is RECOVERED: it is a row, and there is nothing to discard"
            ))),
            Discard::NotFound => Err(ApiError::FailedEventNotFound(id)),
        }
    }
}

/// Where a replay takes its event's user's slot: the coupon's own state, or the user's home
/// bucket.
struct SlotAt {
    keys: CouponKeys,
    bucket: Option<Bucket>,
    event: IssueEvent,
}

/// How one try of a replay ended.
enum Replayed {
    Done(Redriven),
    NotFound,
    /// The slot's state is not open under the stamp in force: nothing written.
    Closed,
    /// No unit free in the slot's state: nothing written.
    NoneFree,
}

/// Why a try's transaction rolled back: its row stands on no slot (an outcome), or an error.
enum RolledBack {
    Replayed(Replayed),
    Error(ApiError),
}

impl From<ApiError> for RolledBack {
    fn from(err: ApiError) -> Self {
        Self::Error(err)
    }
}

impl From<diesel::result::Error> for RolledBack {
    fn from(err: diesel::result::Error) -> Self {
        Self::Error(err.into())
    }
}

impl From<redis::RedisError> for RolledBack {
    fn from(err: redis::RedisError) -> Self {
        Self::Error(err.into())
    }
}
