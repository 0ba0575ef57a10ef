//! The mover: brings stock to a bucket whose requests wait, and decides when a bucketed
//! coupon is sold out (`crate::redis::buckets` has the steps, `tests/bucket_model.rs` the
//! protocol they follow).
//!
//! Invariants: no unit is lost or made by a move, whoever dies or stalls where (each step is
//! one script; the journal is fenced on the donor's stamp; a credit counts once; a settle
//! removes its own entry only); SOLD_OUT is marked only once two collects in a row saw every
//! bucket empty with nothing in flight and no raise landing, and only under the generation
//! they saw. A raised quantity lands in every bucket (`Mover::land`), whoever dies where:
//! PostgreSQL records it as not landed until it has, and a flag left up is landed by the
//! next mover that finds it.

use std::time::Duration;

use redis::RedisError;
use redis::aio::ConnectionLike;

use crate::buckets::{Bucket, BucketCount};
use crate::db::buckets::{Journalled, journal_transfer};
use crate::db::pool::{PgPool, PoolError};
use crate::db::raise::{Raised, raised, record_landed};
use crate::domain::{CouponId, UserId};
use crate::redis::buckets::{
    BucketState, BucketSteps, Outgoing, Recover, Seen, Step, Take, TransferId,
};
use crate::redis::epoch::Stamp;
use crate::redis::keys::CouponKeys;

/// How long a mover owns a transfer it took: far more than its three round trips and one
/// PostgreSQL write; once it runs out (the mover died or stalled), another mover takes the
/// transfer over and finishes it, so that a crash strands units for this long at most.
pub const MOVER_LEASE: Duration = Duration::from_secs(1);

/// One bucket as a mover addresses it.
#[derive(Debug, Clone)]
pub struct Place {
    pub bucket: Bucket,
    pub keys: CouponKeys,
    /// The stamp in force of its Redis state, as the caller knows it.
    pub stamp: Stamp,
}

impl Place {
    fn state(&self) -> BucketState<'_> {
        BucketState {
            keys: &self.keys,
            stamp: &self.stamp,
        }
    }
}

/// A bucketed coupon's buckets, in order.
#[derive(Debug, Clone)]
pub struct Places {
    pub coupon: CouponId,
    pub count: BucketCount,
    pub places: Vec<Place>,
}

impl Places {
    /// `user`'s home bucket, where their slot is decided.
    pub fn home(&self, user: UserId) -> &Place {
        &self.places[usize::from(self.count.home(user).index())]
    }
}

/// What a supply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Supply {
    /// This many units moved to the bucket (or a dead mover's transfer to it was finished).
    Moved(i64),
    /// Slots given back were put back for sale (this many), every mark cleared first.
    Reopened(i64),
    /// Every bucket is marked sold out: there is no stock anywhere, and none in flight.
    SoldOut,
    /// A raised quantity landed in every bucket (this many units added): a raise's flag was
    /// up, its raiser still at it or dead.
    Landed(i64),
    /// Nothing to move now: stock is left only where requests wait for it, or moving, or
    /// the buckets changed while they were read. Ask again shortly.
    NotNow,
}

#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] diesel::result::Error),
    #[error("PostgreSQL pool: {0}")]
    Pool(#[from] PoolError),
    /// A bucket's state is missing, or not verified under the stamp passed: learn the stamp
    /// in force or rebuild the bucket, as for an admission.
    #[error("bucket {0}'s state is not verified under the stamp passed")]
    Unverified(Bucket),
    /// The donor was rebuilt after the take: its stock counts no such take, so the transfer
    /// never happened (its entry was rebuilt away, or is another's).
    #[error("bucket {0} was rebuilt during a transfer out of it")]
    DonorRebuilt(Bucket),
    /// PostgreSQL's shares are not this layout's buckets (the coupon is gone, or its row
    /// disagrees with its buckets).
    #[error("coupon {0}'s buckets in PostgreSQL do not match its layout")]
    LayoutMismatch(CouponId),
}

fn done<T>(step: Step<T>, bucket: Bucket) -> Result<T, MoveError> {
    match step {
        Step::Done(value) => Ok(value),
        Step::NotLoaded | Step::Unverified => Err(MoveError::Unverified(bucket)),
    }
}

/// Moves stock between one coupon's buckets, as one owner of leases.
pub struct Mover<'a> {
    pub places: &'a Places,
    pub pool: &'a PgPool,
    /// Names this mover in the leases it takes.
    pub owner: &'a str,
}

impl Mover<'_> {
    /// Brings stock to `to`, whose requests wait: finishes a dead mover's transfer first,
    /// else takes from the bucket with the most stock to give (half of it, at least one
    /// unit, so that the buckets' own users keep some and a sale needs few moves); when no
    /// bucket has any to give, checks whether the coupon is sold out.
    pub async fn supply<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        to: Bucket,
    ) -> Result<Supply, MoveError> {
        let first = self.collect(con).await?;
        if let Some(reopened) = self.reopen(con, &first).await? {
            return Ok(reopened);
        }
        if first.iter().all(|seen| seen.marked) {
            return Ok(Supply::SoldOut);
        }
        for (place, seen) in self.places.places.iter().zip(&first) {
            if seen.in_flight
                && let Some(moved) = self.take_over(con, place).await?
            {
                return Ok(Supply::Moved(moved));
            }
        }
        let mut donors: Vec<(&Place, &Seen)> = self
            .places
            .places
            .iter()
            .zip(&first)
            .filter(|(place, seen)| place.bucket != to && seen.stock > 0 && !seen.in_flight)
            .collect();
        donors.sort_by_key(|(_, seen)| std::cmp::Reverse(seen.stock));
        for (donor, seen) in donors {
            let units = (seen.stock + 1) / 2;
            if let Some(moved) = self.transfer(con, donor, to, units).await? {
                return Ok(Supply::Moved(moved));
            }
        }
        if first.iter().any(|seen| seen.raising) {
            // No bucket is marked while a raise's flag is up: landed here, whoever raised
            // it, else a raiser that died after its flags would keep every request waiting.
            return self.land_from_database(con).await.map(Supply::Landed);
        }
        self.check_sold_out(con, first).await
    }

    /// Lands `raised` (PostgreSQL raised first): every bucket flagged, its mark cleared under
    /// a new generation, so that no check that collected before marks after and none marks
    /// while a unit is coming; then each bucket grown to its share; then the flags cleared
    /// and the raise recorded as landed. The units added. Safe to repeat, and beside another
    /// lander: a grow adds only what a bucket's share lacks, and a flag names the largest
    /// quantity landing, cleared only by a lander that grew every bucket to it.
    pub async fn land<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        raised: &Raised,
    ) -> Result<i64, MoveError> {
        if raised.shares.len() != self.places.places.len()
            || raised.landed_shares.len() != self.places.places.len()
        {
            return Err(MoveError::LayoutMismatch(self.places.coupon));
        }
        for place in &self.places.places {
            let step = BucketSteps::flag(con, &place.state(), raised.quantity).await?;
            done(step, place.bucket)?;
        }
        let mut grown = 0;
        let shares = raised.shares.iter().zip(&raised.landed_shares);
        for (place, (share, landed)) in self.places.places.iter().zip(shares) {
            grown += done(
                BucketSteps::grow(con, &place.state(), *share, *landed).await?,
                place.bucket,
            )?;
        }
        for place in &self.places.places {
            let step = BucketSteps::clear(con, &place.state(), raised.quantity).await?;
            done(step, place.bucket)?;
        }
        record_landed(
            &mut *self.pool.get().await?,
            self.places.coupon,
            raised.quantity,
        )
        .await?;
        tracing::info!(coupon = %self.places.coupon, quantity = raised.quantity, units = grown,
            "raised quantity landed in every bucket");
        Ok(grown)
    }

    /// Lands the quantity PostgreSQL has now (for a flag found up, or a raise whose raiser
    /// died before Redis held it).
    pub async fn land_from_database<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
    ) -> Result<i64, MoveError> {
        let raised = raised(&mut *self.pool.get().await?, self.places.coupon)
            .await?
            .ok_or(MoveError::LayoutMismatch(self.places.coupon))?;
        self.land(con, &raised).await
    }

    /// Reads every bucket once, in order.
    async fn collect<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
    ) -> Result<Vec<Seen>, MoveError> {
        let mut seen = Vec::with_capacity(self.places.places.len());
        for place in &self.places.places {
            seen.push(done(
                BucketSteps::collect(con, &place.state()).await?,
                place.bucket,
            )?);
        }
        Ok(seen)
    }

    /// The sold-out check: `first` is one collect, read after nothing moved; a second must
    /// read the same, every bucket empty with nothing in flight, for the marks to be set,
    /// each under the generation the collects saw.
    async fn check_sold_out<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        first: Vec<Seen>,
    ) -> Result<Supply, MoveError> {
        let empty = |seen: &[Seen]| {
            seen.iter()
                .all(|s| s.stock <= 0 && !s.in_flight && s.releasing == 0 && !s.raising)
        };
        if !empty(&first) {
            return Ok(Supply::NotNow);
        }
        let second = self.collect(con).await?;
        if second != first {
            return Ok(Supply::NotNow);
        }
        let mut marked: Vec<&Place> = Vec::new();
        for (place, seen) in self.places.places.iter().zip(&first) {
            let step = BucketSteps::mark(con, &place.state(), seen.generation).await?;
            if !done(step, place.bucket)? {
                // What the collects saw no longer holds here: the marks this check set go
                // too (under a new generation), or they would answer SOLD_OUT while this
                // bucket may hold stock.
                for place in marked {
                    done(
                        BucketSteps::unmark(con, &place.state()).await?,
                        place.bucket,
                    )?;
                }
                return Ok(Supply::NotNow);
            }
            marked.push(place);
        }
        Ok(Supply::SoldOut)
    }

    /// Puts the slots being given back up for sale again: every bucket's mark cleared
    /// first, under a new generation, so that no SOLD_OUT is answered once a unit is back
    /// (and no check that collected before can mark again), then each slot freed.
    /// None if no slot is being given back.
    async fn reopen<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        seen: &[Seen],
    ) -> Result<Option<Supply>, MoveError> {
        if seen.iter().all(|seen| seen.releasing == 0) {
            return Ok(None);
        }
        for place in &self.places.places {
            done(
                BucketSteps::unmark(con, &place.state()).await?,
                place.bucket,
            )?;
        }
        let mut restocked = 0;
        for (place, seen) in self.places.places.iter().zip(seen) {
            if seen.releasing > 0 {
                restocked += done(
                    BucketSteps::restock(con, &place.state()).await?,
                    place.bucket,
                )?;
            }
        }
        tracing::info!(coupon = %self.places.coupon, units = restocked,
            "slots given back put up for sale again");
        Ok(Some(Supply::Reopened(restocked)))
    }

    /// Puts the slots being given back up for sale again, if there are any: after a release
    /// (its releaser runs it at once) and from any process that finds them left (the
    /// releaser died), since nobody waits on a coupon whose every bucket is marked.
    pub async fn reopen_released<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
    ) -> Result<Option<i64>, MoveError> {
        let seen = self.collect(con).await?;
        Ok(match self.reopen(con, &seen).await? {
            Some(Supply::Reopened(units)) => Some(units),
            _ => None,
        })
    }

    /// Takes up to `units` out of `donor` for `to` and carries the transfer through; None
    /// if the donor had nothing to give or a transfer out of it in flight.
    async fn transfer<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        donor: &Place,
        to: Bucket,
        units: i64,
    ) -> Result<Option<i64>, MoveError> {
        let id = TransferId::new();
        let taken =
            BucketSteps::take(con, &donor.state(), id, to, units, self.owner, MOVER_LEASE).await?;
        match done(taken, donor.bucket)? {
            Take::Taken(units) => {
                let outgoing = Outgoing { id, to, units };
                self.carry(con, donor, outgoing).await.map(Some)
            }
            Take::InFlight | Take::NothingToGive => Ok(None),
        }
    }

    /// Takes over `donor`'s transfer if its lease has run out, and carries it through.
    async fn take_over<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        donor: &Place,
    ) -> Result<Option<i64>, MoveError> {
        let recovered = BucketSteps::recover(
            con,
            &donor.state(),
            self.owner,
            MOVER_LEASE,
            self.places.count,
        )
        .await?;
        match done(recovered, donor.bucket)? {
            Recover::TakenOver(outgoing) => {
                tracing::info!(coupon = %self.places.coupon, from = %donor.bucket,
                    to = %outgoing.to, units = outgoing.units,
                    "a transfer whose mover's lease ran out taken over");
                self.carry(con, donor, outgoing).await.map(Some)
            }
            Recover::Held | Recover::Nothing => Ok(None),
        }
    }

    /// The rest of a transfer taken (or taken over) from `donor`: journal, credit, settle.
    /// Each is safe to repeat, so a mover that takes this one over later does no harm.
    async fn carry<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        donor: &Place,
        outgoing: Outgoing,
    ) -> Result<i64, MoveError> {
        let journalled = Journalled {
            id: outgoing.id,
            from: donor.bucket,
            to: outgoing.to,
            units: outgoing.units,
        };
        let fenced = {
            let mut db = self.pool.get().await?;
            journal_transfer(&mut db, self.places.coupon, &journalled, &donor.stamp).await?
        };
        if !fenced {
            return Err(MoveError::DonorRebuilt(donor.bucket));
        }
        let recipient = &self.places.places[usize::from(outgoing.to.index())];
        let credited =
            BucketSteps::credit(con, &recipient.state(), outgoing.id, outgoing.units).await?;
        done(credited, recipient.bucket)?;
        let settled = BucketSteps::settle(con, &donor.state(), outgoing.id).await?;
        done(settled, donor.bucket)?;
        tracing::debug!(coupon = %self.places.coupon, from = %donor.bucket, to = %outgoing.to,
            units = outgoing.units, "stock moved");
        Ok(outgoing.units)
    }
}
