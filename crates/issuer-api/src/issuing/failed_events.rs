//! Failed events in an operator's hands, as admin routes: listed, replayed, discarded
//! (`issuer-worker dlq` does the first two on a shell). Each action records who took it.
//!
//! An OVER_QUANTITY event's row would spend a unit of the quantity (raised to honour it),
//! and the raise gives Redis as many units to sell: a row no slot accounts for makes a
//! user Redis admits on that unit, told 201, refused by the quantity guard. So a replay
//! takes the user's slot in Redis first, whatever the event's reason (an OVER_QUANTITY
//! event whose replay was refused for another reason is REJECTED since, its slot given
//! back: a fresh-eyes review found it written on no slot when replayed again); only an
//! event that is a row already, or can never be one (unreadable, its coupon gone), is
//! answered by the guarded insert alone. The slot is their admission's, if the state still
//! holds it, else a free one, else 409 (raise first); the row is written after it, holding
//! the coupon's row
//! in PostgreSQL from before the slot until the row commits: a rebuild reads the holders
//! under a share lock of it (`coupon-core/tests/replay_model.rs` found the rebuild reading
//! between the two otherwise). A slot taken for a row refused all the same is given back
//! before the commit.
//! No replica confirms the slot before the row: a failover that loses it is a state
//! verified under another instance, rebuilt from the rows, this one's among them.
//!
//! A bucketed coupon's slot is taken in the user's home bucket, under that bucket's stamp
//! read under the coupon's row lock (a bucket's rebuild reads the rows under the same share
//! lock). A home with no free unit has a mover's supply bring one from another bucket, as
//! a dry admission does, and the replay tries again (another request may take what came)
//! until [`REPLAY_SUPPLY_WAIT`]: 409 only once a supply found the coupon sold out (raise
//! first), 503 past the wait. A bucket's slot given back is flagged, as a release's is,
//! and a mover's reopen clears every sold-out mark before it frees it, on every path out
//! of the replay, its commit failed included (the reconciler's, should this API die
//! first). The model has two buckets, their marks and the reopen (`replay_model.rs`).

use coupon_core::buckets::Bucket;
use coupon_core::db::buckets::bucket_stamp;
use coupon_core::db::coupons::lock_redis_stamp;
use coupon_core::db::failed_events::{
    Discard, FailedEventRow, Filter, Status, discard, find, list,
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
    /// schedule or status, recorded as done `by`: onto its user's Redis slot, taken first,
    /// if it may become a row (the module's doc).
    pub async fn replay_failed_event(&self, id: i64, by: &str) -> Result<Redriven, ApiError> {
        let mut db = self.pool.get().await?;
        let row = find(&mut db, id)
            .await?
            .ok_or(ApiError::FailedEventNotFound(id))?;
        if row.status != Status::Recovered.as_str()
            && let Ok(event) = IssueEvent::decode(&row.payload)
            && let Some(layout) = self.layouts.get(event.coupon_id).await?
        {
            drop(db);
            return self.replay_onto_a_slot(id, event, layout, by).await;
        }
        // A row already, or never one: the guarded insert answers it as it is.
        replay(&mut db, id, by)
            .await?
            .ok_or(ApiError::FailedEventNotFound(id))
    }

    /// Replays event `id` onto its user's Redis slot, taken first (the module's doc).
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
        loop {
            let (replayed, flagged) = self.replay_onto_slot(id, &slot, by).await;
            // A bucket's slot flagged as given back is reopened whatever came of the
            // transaction: a commit that failed after the flag leaves it flagged too.
            if let (Some(places), true) = (&places, flagged) {
                self.reopen_given_back(places).await;
            }
            match replayed? {
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
                    if Instant::now() >= deadline {
                        return Err(ApiError::unavailable(
                            "stock",
                            format!(
                                "stock moved to bucket {bucket} was taken by others for \
                                 {REPLAY_SUPPLY_WAIT:?}: replay again"
                            ),
                        ));
                    }
                    if !self.supply_for_replay(places, bucket, deadline).await? {
                        return Err(sold_out());
                    }
                }
            }
        }
    }

    /// One try: the slot at `at` and the row, in one transaction holding the coupon's row;
    /// beside its outcome, whether a bucket's slot was flagged as given back (to reopen).
    async fn replay_onto_slot(
        &self,
        id: i64,
        at: &SlotAt,
        by: &str,
    ) -> (Result<Replayed, ApiError>, bool) {
        let mut flagged = false;
        let replayed = self.replay_in_transaction(id, at, by, &mut flagged).await;
        (replayed, flagged && at.bucket.is_some())
    }

    async fn replay_in_transaction(
        &self,
        id: i64,
        at: &SlotAt,
        by: &str,
        flagged: &mut bool,
    ) -> Result<Replayed, ApiError> {
        let (coupon, user) = (at.event.coupon_id, at.event.user_id);
        let mut redis = self.redis.clone();
        let mut db = self.pool.get().await?;
        // One transaction holds the coupon's row from the slot to the row's commit: a
        // rebuild reads the holders under a share lock of it, and a raise, a batch and a
        // second replay wait (`coupon-core/tests/replay_model.rs`).
        db.transaction(async |conn| {
            let own = lock_redis_stamp(conn, coupon)
                .await?
                .ok_or(ApiError::CouponNotFound(coupon.get()))?;
            let stamp = match at.bucket {
                None => own,
                Some(bucket) => bucket_stamp(conn, coupon, bucket)
                    .await?
                    .map(|stamp| stamp.as_str().to_owned()),
            };
            let took = match self
                .scripts
                .replay_slot(&mut redis, &at.keys, user, stamp.as_deref())
                .await?
            {
                ReplaySlot::Held => false,
                ReplaySlot::Taken => true,
                ReplaySlot::NotVerified => return Ok(Replayed::Closed),
                ReplaySlot::NoneFree => return Ok(Replayed::NoneFree),
                ReplaySlot::Pending => {
                    return Err(ApiError::Conflict(format!(
                        "user {user} has an admission of coupon {coupon} still being \
                         delivered: replay once it is settled (or given back)"
                    )));
                }
            };
            let replayed = replay_within(conn, id, by).await?;
            // A slot taken for a row that is not there is given back before the commit.
            // One that cannot be is kept: a unit unsold, never one sold twice.
            if took && !matches!(replayed, Some(Redriven::Recovered)) {
                // Flagged from the call on: one that timed out may have run.
                *flagged = true;
                if let Err(err) = self
                    .scripts
                    .give_back_replay_slot(&mut redis, &at.keys, &at.event, at.bucket.is_some())
                    .await
                {
                    tracing::warn!(failed_event = id, %coupon, %user, error = %err,
                        "a replay's slot not given back: the unit stays unsold");
                }
            }
            tracing::info!(failed_event = id, %coupon, %user, bucket = ?at.bucket, took,
                outcome = ?replayed, "failed event replayed onto a Redis slot");
            Ok(match replayed {
                Some(redriven) => Replayed::Done(redriven),
                None => Replayed::NotFound,
            })
        })
        .await
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
