//! A bucketed coupon in Redis (`crate::buckets`): each bucket's state, the steps that move
//! stock between buckets, and the sold-out check, each step one script on one bucket's shard
//! (`scripts/bucket.lua`). The protocol is `coupon-core/tests/bucket_model.rs`'s:
//!
//! 1. [`BucketSteps::take`] on the donor: units out of its stock into its outgoing entry,
//!    naming the transfer, the recipient and the mover's lease (Redis's clock).
//! 2. The transfer journalled in PostgreSQL, only while the donor's stamp in force is the one
//!    the take ran under (`crate::db::buckets::journal_transfer`): a take lost in a failover
//!    and not journalled before the donor's rebuild never happened.
//! 3. [`BucketSteps::credit`] on the recipient, once per transfer id (safe to repeat).
//! 4. [`BucketSteps::settle`] on the donor, only if the entry is still this transfer's.
//!
//! A mover that dies or stalls leaves its entry; once the lease has run out another takes it
//! over ([`BucketSteps::recover`]) and goes on from step 2, which is safe to repeat. SOLD_OUT
//! is answered from a mark only, set on every bucket ([`BucketSteps::mark`]) once two
//! collects in a row ([`BucketSteps::collect`]) read the same every bucket, with no stock and
//! no transfer in flight anywhere: between them there was a moment when the buckets held
//! exactly that.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{AsyncCommands, FromRedisValue, RedisError, Value};
use uuid::Uuid;

use crate::buckets::Bucket;
use crate::buckets::{BucketCount, SlotOwners};
use crate::db::buckets::Journalled;
use crate::domain::Coupon;
use crate::redis::admission::{RebuildLease, load_fresh, meta_args, settings_args};
use crate::redis::epoch::Stamp;
use crate::redis::keys::CouponKeys;
use crate::redis::library::{self, Function};

/// How long a request's wait on an empty home bucket stays registered there (the admission
/// script's DRY answer writes it; `scripts/admission.lua`): the bucket gives no stock away
/// meanwhile. A waiting request asks again well within it.
pub const WAIT_REGISTERED: Duration = Duration::from_millis(100);

/// A credit renews its recipient's wait registration only if it ran out within this long (a
/// move's longest, its mover's lease): a wait older than that has no request behind it.
const RENEWAL_WINDOW: Duration = Duration::from_secs(1);

/// One transfer of stock between two buckets of a coupon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransferId(pub Uuid);

impl TransferId {
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }
}

impl Default for TransferId {
    fn default() -> Self {
        Self::new()
    }
}

/// A transfer out of a bucket, as its outgoing entry holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outgoing {
    pub id: TransferId,
    pub to: Bucket,
    pub units: i64,
}

/// Which primary serves each slot, as the cluster answers `CLUSTER SLOTS` (routed to any
/// node): `[first, last, [host, port, id, ...], replicas...]` per range. For choosing a new
/// bucketed coupon's tags (`crate::buckets::choose_tags`).
pub async fn slot_owners<C: ConnectionLike + Send + Sync>(
    con: &mut C,
) -> Result<SlotOwners, RedisError> {
    let ranges: Vec<Value> = redis::cmd("CLUSTER").arg("SLOTS").query_async(con).await?;
    let mut owners = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(range) = range else {
            return Err(unexpected("CLUSTER SLOTS", format!("{range:?}")));
        };
        let first: u16 = field(&range, 0, "CLUSTER SLOTS")?;
        let last: u16 = field(&range, 1, "CLUSTER SLOTS")?;
        let primary: Vec<Value> = field(&range, 2, "CLUSTER SLOTS")?;
        let id: String = field(&primary, 2, "CLUSTER SLOTS")?;
        owners.push((first, last, id));
    }
    Ok(SlotOwners::new(owners))
}

/// Users added per SADD when restoring a bucket's issued set, so one command never blocks
/// Redis for long.
const RESTORE_CHUNK: usize = 10_000;

/// How long a rebuild's staged holders outlive a rebuilder that died before its restore:
/// longer than any rebuild lease.
const STAGED_TTL: Duration = Duration::from_secs(3_600);

/// What a bucket's rebuild writes besides its holders, from the journal of transfers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuiltBucket {
    /// Its share, as PostgreSQL has it.
    pub share: i64,
    /// Its share, plus what was journalled to it, minus what was journalled from it.
    pub allocation: i64,
    /// The transfers journalled to it: credited, whether or not its lost state had them.
    pub credited: Vec<TransferId>,
    /// The last transfer journalled from it, its entry again: a mover takes it over and
    /// makes sure of its credit (safe to repeat).
    pub outgoing: Option<Outgoing>,
}

impl RebuiltBucket {
    /// Reads `journal` (oldest first) for `bucket`, whose share is `share`.
    pub fn from_journal(bucket: Bucket, share: i64, journal: &[Journalled]) -> Self {
        let mut rebuilt = Self {
            share,
            allocation: share,
            credited: Vec::new(),
            outgoing: None,
        };
        for transfer in journal {
            if transfer.to == bucket {
                rebuilt.allocation += transfer.units;
                rebuilt.credited.push(transfer.id);
            } else if transfer.from == bucket {
                rebuilt.allocation -= transfer.units;
                rebuilt.outgoing = Some(Outgoing {
                    id: transfer.id,
                    to: transfer.to,
                    units: transfer.units,
                });
            }
        }
        rebuilt
    }
}

/// One bucket of a coupon as the scripts address it: its keys and its stamp in force.
#[derive(Debug, Clone)]
pub struct BucketState<'a> {
    pub keys: &'a CouponKeys,
    pub stamp: &'a Stamp,
}

/// What a step found, whatever the step: the bucket's state is not loaded, or not verified
/// under the stamp passed (as for admission: learn the stamp in force, or rebuild), or the
/// step's own answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<T> {
    Done(T),
    NotLoaded,
    Unverified,
}

impl<T> Step<T> {
    /// The step's own answer read by `read`; the other two passed on as they are.
    fn read<U>(self, read: impl FnOnce(T) -> Result<U, RedisError>) -> Result<Step<U>, RedisError> {
        Ok(match self {
            Step::Done(value) => Step::Done(read(value)?),
            Step::NotLoaded => Step::NotLoaded,
            Step::Unverified => Step::Unverified,
        })
    }
}

/// What a take did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// This many units left the donor's stock, into its outgoing entry.
    Taken(i64),
    /// A transfer out of the donor is in flight already (one at a time).
    InFlight,
    /// The donor has no stock, or requests wait there for what it has.
    NothingToGive,
}

/// What a recover found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recover {
    /// The entry's lease had run out: it is the caller's now, to go on from the journal.
    TakenOver(Outgoing),
    /// Its mover's lease still runs.
    Held,
    /// No transfer out of the bucket.
    Nothing,
}

/// What a collect read of one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Seen {
    pub stock: i64,
    pub in_flight: bool,
    /// Moved by every step but an admission, which moves `issued`.
    pub version: i64,
    pub issued: i64,
    /// Moved by every clearing of the sold-out mark.
    pub generation: i64,
    pub marked: bool,
    /// Slots being given back: holders still, and units for sale again once restocked.
    pub releasing: i64,
    /// A raise of the quantity is landing: no bucket is marked until it has.
    pub raising: bool,
}

/// The steps of `scripts/bucket.lua`, named as the script names them (one codec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepName {
    Take,
    Recover,
    Credit,
    Settle,
    Collect,
    Mark,
    Unmark,
    Restock,
    Flag,
    Grow,
    Clear,
}

impl StepName {
    fn as_str(self) -> &'static str {
        match self {
            StepName::Take => "take",
            StepName::Recover => "recover",
            StepName::Credit => "credit",
            StepName::Settle => "settle",
            StepName::Collect => "collect",
            StepName::Mark => "mark",
            StepName::Unmark => "unmark",
            StepName::Restock => "restock",
            StepName::Flag => "flag",
            StepName::Grow => "grow",
            StepName::Clear => "clear",
        }
    }
}

fn unexpected(what: &'static str, detail: String) -> RedisError {
    RedisError::from((redis::ErrorKind::UnexpectedReturnType, what, detail))
}

/// Runs one step on `state`, with the step's own arguments, and reads its reply: the code
/// first, then what the step returns.
async fn run<C: ConnectionLike + Send + Sync>(
    con: &mut C,
    state: &BucketState<'_>,
    name: StepName,
    args: &[String],
) -> Result<Step<Vec<Value>>, RedisError> {
    let mut call = library::call(Function::Bucket, &state.keys.bucket_steps());
    call.arg(name.as_str()).arg(state.stamp.as_str()).arg(args);
    let reply: Vec<Value> = library::invoke(con, &call).await?;
    Ok(match field::<i64>(&reply, 0, name.as_str())? {
        0 => Step::NotLoaded,
        7 => Step::Unverified,
        _ => Step::Done(reply),
    })
}

/// A reply's `at`th field as `T` (for a step, 0 is its code); `what` names the reply.
fn field<T: FromRedisValue>(
    reply: &[Value],
    at: usize,
    what: &'static str,
) -> Result<T, RedisError> {
    let value = reply
        .get(at)
        .cloned()
        .ok_or_else(|| unexpected("reply too short", format!("{what}: {reply:?}")))?;
    T::from_redis_value(value)
        .map_err(|e| unexpected("reply not understood", format!("{what}: {e}")))
}

/// The steps on a bucketed coupon's buckets.
#[derive(Debug, Clone, Copy, Default)]
pub struct BucketSteps;

impl BucketSteps {
    /// Writes a bucket's first state, with `allocation` units, stamped as verified here
    /// (nothing can have been admitted yet), unless a state is there already; the stamp
    /// written, if any, which the caller records in PostgreSQL as the one in force.
    pub async fn load<C: ConnectionLike + Send + Sync>(
        con: &mut C,
        keys: &CouponKeys,
        coupon: &Coupon,
        allocation: i64,
        count: BucketCount,
    ) -> Result<Option<Stamp>, RedisError> {
        load_fresh(con, keys, coupon, Some((allocation, count))).await
    }

    /// Takes up to `units` out of the donor's stock for `to`, under `owner`'s lease.
    pub async fn take<C: ConnectionLike + Send + Sync>(
        con: &mut C,
        donor: &BucketState<'_>,
        transfer: TransferId,
        to: Bucket,
        units: i64,
        owner: &str,
        lease: Duration,
    ) -> Result<Step<Take>, RedisError> {
        let args = [
            transfer.0.to_string(),
            to.index().to_string(),
            units.to_string(),
            owner.to_owned(),
            lease.as_millis().to_string(),
        ];
        let step = run(con, donor, StepName::Take, &args).await?;
        step.read(|reply| match field::<i64>(&reply, 0, "take")? {
            1 => Ok(Take::Taken(field(&reply, 1, "take")?)),
            9 => Ok(Take::InFlight),
            10 => Ok(Take::NothingToGive),
            other => Err(unexpected("take", other.to_string())),
        })
    }

    /// Takes over the donor's outgoing entry once its lease has run out.
    pub async fn recover<C: ConnectionLike + Send + Sync>(
        con: &mut C,
        donor: &BucketState<'_>,
        owner: &str,
        lease: Duration,
        count: BucketCount,
    ) -> Result<Step<Recover>, RedisError> {
        let args = [owner.to_owned(), lease.as_millis().to_string()];
        let step = run(con, donor, StepName::Recover, &args).await?;
        step.read(|reply| match field::<i64>(&reply, 0, "recover")? {
            1 => {
                let id: String = field(&reply, 1, "recover")?;
                let id = Uuid::parse_str(&id)
                    .map_err(|e| unexpected("recover: transfer id", e.to_string()))?;
                let to: i64 = field(&reply, 2, "recover")?;
                let to = Bucket::of(count, to)
                    .ok_or_else(|| unexpected("recover: bucket", to.to_string()))?;
                Ok(Recover::TakenOver(Outgoing {
                    id: TransferId(id),
                    to,
                    units: field(&reply, 3, "recover")?,
                }))
            }
            9 => Ok(Recover::Held),
            11 => Ok(Recover::Nothing),
            other => Err(unexpected("recover", other.to_string())),
        })
    }

    /// Credits `units` of `transfer` to the recipient, once: true if this call added them.
    pub async fn credit<C: ConnectionLike + Send + Sync>(
        con: &mut C,
        recipient: &BucketState<'_>,
        transfer: TransferId,
        units: i64,
    ) -> Result<Step<bool>, RedisError> {
        let args = [
            transfer.0.to_string(),
            units.to_string(),
            WAIT_REGISTERED.as_millis().to_string(),
            RENEWAL_WINDOW.as_millis().to_string(),
        ];
        Self::yes_or_no(
            run(con, recipient, StepName::Credit, &args).await?,
            "credit",
        )
    }

    /// Removes the donor's outgoing entry if it is still `transfer`'s: true if removed.
    pub async fn settle<C: ConnectionLike + Send + Sync>(
        con: &mut C,
        donor: &BucketState<'_>,
        transfer: TransferId,
    ) -> Result<Step<bool>, RedisError> {
        let args = [transfer.0.to_string()];
        Self::yes_or_no(run(con, donor, StepName::Settle, &args).await?, "settle")
    }

    /// Reads a bucket for the sold-out check.
    pub async fn collect<C: ConnectionLike + Send + Sync>(
        con: &mut C,
        bucket: &BucketState<'_>,
    ) -> Result<Step<Seen>, RedisError> {
        let step = run(con, bucket, StepName::Collect, &[]).await?;
        step.read(|reply| {
            let at = |i| field::<i64>(&reply, i, "collect");
            Ok(Seen {
                stock: at(1)?,
                in_flight: at(2)? == 1,
                version: at(3)?,
                issued: at(4)?,
                generation: at(5)?,
                marked: at(6)? == 1,
                releasing: at(7)?,
                raising: at(8)? == 1,
            })
        })
    }

    /// Marks the bucket sold out, only under `generation` (the one the check's collect
    /// saw): true if marked.
    pub async fn mark<C: ConnectionLike + Send + Sync>(
        con: &mut C,
        bucket: &BucketState<'_>,
        generation: i64,
    ) -> Result<Step<bool>, RedisError> {
        let args = [generation.to_string()];
        Self::yes_or_no(run(con, bucket, StepName::Mark, &args).await?, "mark")
    }

    /// Clears the bucket's sold-out mark under a new generation (another bucket's rebuild
    /// may have put a unit back for sale).
    pub async fn unmark<C: ConnectionLike + Send + Sync>(
        con: &mut C,
        bucket: &BucketState<'_>,
    ) -> Result<Step<bool>, RedisError> {
        Self::yes_or_no(run(con, bucket, StepName::Unmark, &[]).await?, "unmark")
    }

    /// Frees the bucket's slots being given back, their units back into stock; run only
    /// once every bucket's mark is cleared. Returns how many.
    pub async fn restock<C: ConnectionLike + Send + Sync>(
        con: &mut C,
        bucket: &BucketState<'_>,
    ) -> Result<Step<i64>, RedisError> {
        let step = run(con, bucket, StepName::Restock, &[]).await?;
        step.read(|reply| field(&reply, 1, "restock"))
    }

    /// Flags the bucket while a raise to `quantity` lands: its mark goes under a new
    /// generation, and no bucket is marked until the flag is cleared.
    pub async fn flag<C: ConnectionLike + Send + Sync>(
        con: &mut C,
        bucket: &BucketState<'_>,
        quantity: i64,
    ) -> Result<Step<bool>, RedisError> {
        let args = [quantity.to_string()];
        Self::yes_or_no(run(con, bucket, StepName::Flag, &args).await?, "flag")
    }

    /// Grows the bucket's allocation to `share`, its share in PostgreSQL now: the units
    /// added (none if it holds that share already). `landed` is what its allocation holds
    /// if it records no share (`Raised::landed_shares`).
    pub async fn grow<C: ConnectionLike + Send + Sync>(
        con: &mut C,
        bucket: &BucketState<'_>,
        share: i64,
        landed: i64,
    ) -> Result<Step<i64>, RedisError> {
        let args = [share.to_string(), landed.to_string()];
        let step = run(con, bucket, StepName::Grow, &args).await?;
        step.read(|reply| field(&reply, 1, "grow"))
    }

    /// Clears the bucket's flag once every bucket has grown to `quantity`'s shares; false if
    /// it names a larger quantity, still landing.
    pub async fn clear<C: ConnectionLike + Send + Sync>(
        con: &mut C,
        bucket: &BucketState<'_>,
        quantity: i64,
    ) -> Result<Step<bool>, RedisError> {
        let args = [quantity.to_string()];
        Self::yes_or_no(run(con, bucket, StepName::Clear, &args).await?, "clear")
    }

    /// Restores a bucket its node lost or rewound, closed by `lease`: its issued set becomes
    /// exactly `logged` (PostgreSQL's users whose home it is) and `unsettled` (those whose
    /// pending entries were read before PostgreSQL), then its state is written as `rebuilt` says and stamped with `stamp`,
    /// which reopens it. The caller clears every other bucket's mark first (the model's
    /// `Bug::RebuildKeepsMarks`: the rebuild may give back a unit whose admission the
    /// failover lost, and the other buckets would answer SOLD_OUT while it is for sale).
    /// False, with nothing written and the meta left closed, if the instance is no longer
    /// the one `stamp` names or the lease was lost.
    pub async fn restore<C: ConnectionLike + Send + Sync>(
        con: &mut C,
        keys: &CouponKeys,
        coupon: &Coupon,
        rebuilt: &RebuiltBucket,
        (logged, unsettled): (&[i64], &[i64]),
        stamp: &Stamp,
        lease: &RebuildLease,
    ) -> Result<bool, RedisError> {
        // Staged under the lease's own keys, and moved over the issued set by the script
        // only if the lease is still this one: a rebuilder that stalled past its lease
        // writes nothing its successor wrote. Kept apart, since a slot being given back is
        // freed only if the log lacks its user.
        let staged_logged = keys.staged_holders(lease.token(), "logged");
        let staged_unsettled = keys.staged_holders(lease.token(), "unsettled");
        for (staged, holders) in [(&staged_logged, logged), (&staged_unsettled, unsettled)] {
            let _: i64 = con.del(staged).await?;
            for chunk in holders.chunks(RESTORE_CHUNK) {
                let _: i64 = con.sadd(staged, chunk).await?;
                // Gone on their own if this rebuilder dies before its restore.
                let _: bool = con.pexpire(staged, STAGED_TTL.as_millis() as i64).await?;
            }
        }
        let mut call = library::call(
            Function::BucketRestore,
            &[
                &keys.meta,
                &keys.issued,
                &keys.outgoing,
                &keys.credited,
                &keys.rebuilding,
                &keys.releasing,
                &staged_logged,
                &keys.pending,
                &staged_unsettled,
            ],
        );
        meta_args(&mut call, coupon, rebuilt.allocation)
            .arg(stamp.as_str())
            .arg(lease.token())
            .arg(coupon.buckets.get());
        match &rebuilt.outgoing {
            Some(out) => call
                .arg(out.id.0.to_string())
                .arg(out.to.index())
                .arg(out.units),
            None => call.arg("").arg("").arg(""),
        };
        call.arg(rebuilt.share);
        settings_args(&mut call, coupon);
        for id in &rebuilt.credited {
            call.arg(id.0.to_string());
        }
        let restored: i64 = library::invoke(con, &call).await?;
        Ok(restored == 1)
    }

    /// Code 1 is yes, 2 no.
    fn yes_or_no(step: Step<Vec<Value>>, what: &'static str) -> Result<Step<bool>, RedisError> {
        step.read(|reply| match field::<i64>(&reply, 0, what)? {
            1 => Ok(true),
            2 => Ok(false),
            other => Err(unexpected(what, other.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admission_script_registers_a_wait_for_as_long_as_the_code_says() {
        let script = include_str!("scripts/admission.lua");
        let registered = format!("clock() + {}", WAIT_REGISTERED.as_millis());
        assert!(script.contains(&registered), "{registered}");
    }
}
