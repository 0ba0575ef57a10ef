//! Admission in Redis: the Lua scripts and the few reads that sit beside them.
//!
//! Invariant: for every coupon, `|issued set| <= quantity`, and a user is in the set at
//! most once. The whole check-and-add runs as one script, so no interleaving of
//! requests, replicas or connections can break it (the seed lost this race without Lua).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::aio::ConnectionLike;
use redis::{AsyncCommands, Cmd, RedisError};
use uuid::Uuid;

use crate::buckets::BucketCount;
use crate::domain::QueueKind;
use crate::domain::{Admission, Coupon, CouponId, UserId};
use crate::event::{EVENT_VERSION, IssueEvent};
use crate::redis::epoch::Stamp;
use crate::redis::keys::CouponKeys;
use crate::redis::library::{self, Function};
use crate::redis::registry::Registry;
use crate::trace_context::TraceParent;

/// Users added per SADD when restoring a coupon's issued set, so one command never blocks
/// Redis for long.
const RESTORE_CHUNK: usize = 10_000;

/// What asking for a coupon's rebuild lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseTake {
    /// Taken, and the coupon closed.
    Taken(RebuildLease),
    /// Another process holds it.
    Held,
    /// The state is verified under the stamp in force the asker passed: nothing to rebuild.
    Verified,
}

/// A rebuild lease this process holds on one coupon (or one bucket of it): its token is
/// what proves ownership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildLease {
    pub coupon: CouponId,
    token: String,
    /// The state it closes, the coupon's own or one bucket's: its lease key and its meta.
    rebuilding: String,
    meta: String,
}

impl RebuildLease {
    /// The lease's token, as the lease key holds it while the lease is this one.
    pub fn token(&self) -> &str {
        &self.token
    }
}

/// Appends the meta's fields as `load_meta.lua` (and `bucket_restore.lua`) take them:
/// quantity, start, end.
pub(crate) fn meta_args<'a>(call: &'a mut Cmd, coupon: &Coupon, quantity: i64) -> &'a mut Cmd {
    let millis = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp_millis().to_string());
    call.arg(quantity)
        .arg(millis(coupon.starts_at).unwrap_or_default())
        .arg(millis(coupon.ends_at).unwrap_or_default())
}

/// Appends the operator's settings as `load_meta.lua` takes them (and `settings.lua` and
/// `bucket_restore.lua`): the version, then '1' if paused.
pub(crate) fn settings_args<'a>(call: &'a mut Cmd, coupon: &Coupon) -> &'a mut Cmd {
    call.arg(coupon.settings.version)
        .arg(if coupon.settings.paused { "1" } else { "" })
}

/// Writes a new coupon's meta (or one bucket's, with its allocation as the quantity and the
/// coupon's number of buckets) at `keys`, stamped as verified here, unless a meta is there
/// already; the stamp written, if any (`scripts/load_meta.lua`).
pub(crate) async fn load_fresh<C: ConnectionLike + Send + Sync>(
    con: &mut C,
    keys: &CouponKeys,
    coupon: &Coupon,
    bucket: Option<(i64, BucketCount)>,
) -> Result<Option<Stamp>, RedisError> {
    let mut call = library::call(Function::LoadMeta, &[&keys.meta]);
    let quantity = bucket.map_or(coupon.total_quantity, |(allocation, _)| allocation);
    meta_args(&mut call, coupon, quantity)
        .arg("fresh")
        .arg(Uuid::new_v4().simple().to_string())
        .arg("")
        .arg(bucket.map_or(String::new(), |(_, count)| count.get().to_string()));
    settings_args(&mut call, coupon);
    library::invoke(con, &call).await
}

/// What the admission script said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdmitReply {
    /// Redis holds no state for this coupon: rebuild it from PostgreSQL, then ask again.
    NotLoaded,
    /// A slot was taken for this user just now: in Kafka mode publish this event; in the
    /// Redis queue mode it is already on the coupon's stream.
    Admitted(IssueEvent),
    Refused(Admission),
    /// Kafka mode: the user holds a slot whose event is not acknowledged yet; the ledger
    /// (`crate::redis::ledger`) says who publishes it.
    Pending,
    /// The coupon's state carries another stamp than the one passed, or one made under
    /// another Redis instance (`crate::redis::epoch`): it may be a rewound copy. Learn the stamp
    /// in force, or rebuild the state, then ask again.
    Unverified,
    /// A bucketed coupon's home bucket has no stock and no sold-out mark
    /// (`crate::redis::buckets`): its wait is registered there; have stock moved to it, then
    /// ask again.
    Dry,
    /// SOLD_OUT while stock that came back is held (`scripts/stock_hold.lua`), or ENDED
    /// while an end moved later after it came is (`scripts/write_settings.lua`): answered
    /// so, but no finished gate is shut on it.
    Held(Admission),
}

/// What taking a slot for a replayed failed event's row found (`scripts/replay_slot.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplaySlot {
    /// The state is not loaded, or not verified under the stamp in force here: retry.
    NotVerified,
    /// The user holds one already: their admission's.
    Held,
    /// Taken now.
    Taken,
    /// None is free: the quantity must be raised first.
    NoneFree,
    /// The user's slot is pending: an admission of theirs is still being delivered.
    Pending,
}

/// Who holds a slot in a coupon's state (`scripts/holders.lua`), as user ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holders {
    /// Every user with a slot, the pending ones among them.
    pub issued: Vec<i64>,
    /// Those whose event the broker has not acknowledged yet: they may still lose it.
    pub pending: Vec<i64>,
}

/// Admission and the meta's load, run as functions of the library
/// (`crate::redis::library`), which loads itself where Redis lacks it.
#[derive(Clone)]
pub struct AdmissionScripts {
    key_prefix: String,
    queue: QueueKind,
    registry: Registry,
    /// The stamp in force of each coupon this process has met (`crate::redis::epoch::Stamp`), as
    /// it last wrote or learnt it: passed with every admission, learnt again from
    /// PostgreSQL when admission answers UNVERIFIED.
    stamps: Arc<RwLock<Stamps>>,
    /// How long a sold-out coupon's raised stock is held before it is sold
    /// (`scripts/stock_hold.lua`): the API's finished gates' hold.
    reopen_hold: Duration,
}

/// The stamps learnt, and how many times they were all forgotten: a stamp read from
/// PostgreSQL before a forget must not be kept after it.
#[derive(Default)]
struct Stamps {
    known: HashMap<CouponId, Stamp>,
    forgotten: u64,
}

impl AdmissionScripts {
    pub fn new(key_prefix: impl Into<String>, queue: QueueKind) -> Self {
        let key_prefix = key_prefix.into();
        Self {
            registry: Registry::new(key_prefix.clone(), queue),
            key_prefix,
            queue,
            stamps: Arc::default(),
            reopen_hold: Duration::ZERO,
        }
    }

    /// The same, holding a sold-out coupon's raised stock for `hold` before it is sold:
    /// every API's finished gate shut before has run out by then
    /// (`coupon-core/tests/finished_gate_model.rs`). Every process that raises must be
    /// given the same hold as the APIs' gates.
    pub fn with_reopen_hold(self, hold: Duration) -> Self {
        Self {
            reopen_hold: hold,
            ..self
        }
    }

    /// The stamp this process knows to be in force for `coupon`, if any.
    pub fn stamp(&self, coupon: CouponId) -> Option<Stamp> {
        self.stamps
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .known
            .get(&coupon)
            .cloned()
    }

    /// Learns the stamp in force for `coupon` (just written by this process).
    pub fn learn_stamp(&self, coupon: CouponId, stamp: Stamp) {
        self.stamps
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .known
            .insert(coupon, stamp);
    }

    /// How many times the stamps were forgotten so far: read it before reading a stamp from
    /// PostgreSQL, and pass it to [`AdmissionScripts::learn_stamp_read_at`].
    pub fn stamps_forgotten(&self) -> u64 {
        self.stamps
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .forgotten
    }

    /// Learns a stamp read from PostgreSQL when the stamps had been forgotten `forgotten`
    /// times, unless they were forgotten again since (the read may predate a rebuild).
    pub fn learn_stamp_read_at(&self, coupon: CouponId, stamp: Stamp, forgotten: u64) {
        let mut stamps = self
            .stamps
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if stamps.forgotten == forgotten {
            stamps.known.insert(coupon, stamp);
        }
    }

    /// The coupons that need work, registered as admission opens them.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn keys(&self, coupon: CouponId) -> CouponKeys {
        CouponKeys::new(&self.key_prefix, coupon)
    }

    pub async fn admit<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        coupon: CouponId,
        user: UserId,
    ) -> Result<AdmitReply, RedisError> {
        Ok(self.admit_stamped(con, coupon, user).await?.0)
    }

    /// [`AdmissionScripts::admit`], and the stamp it passed (what an UNVERIFIED answered).
    pub async fn admit_stamped<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        coupon: CouponId,
        user: UserId,
    ) -> Result<(AdmitReply, Option<Stamp>), RedisError> {
        self.admit_passing(con, coupon, user, self.stamp(coupon))
            .await
    }

    /// [`AdmissionScripts::admit_stamped`] passing `stamp` (one just read from PostgreSQL,
    /// whatever the cache holds by now).
    pub async fn admit_passing<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        coupon: CouponId,
        user: UserId,
        stamp: Option<Stamp>,
    ) -> Result<(AdmitReply, Option<Stamp>), RedisError> {
        let reply = self
            .admit_in(con, &self.keys(coupon), coupon, user, stamp.as_ref())
            .await?;
        Ok((reply, stamp))
    }

    /// Admission in the state at `keys`: a coupon's own, or the user's home bucket's of a
    /// bucketed coupon (`crate::redis::buckets`), passing that state's stamp in force.
    pub async fn admit_in<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        keys: &CouponKeys,
        coupon: CouponId,
        user: UserId,
        stamp: Option<&Stamp>,
    ) -> Result<AdmitReply, RedisError> {
        let event_id = Uuid::new_v4();
        let mut call = library::call(Function::Admit, &keys.state(self.queue));
        call.arg(user.get())
            .arg(event_id.to_string())
            .arg(coupon.get())
            .arg(stamp.map_or("", Stamp::as_str));
        if self.queue == QueueKind::Redis {
            let trace = TraceParent::current();
            call.arg(trace.as_ref().map_or("", TraceParent::as_str));
        }
        let (code, now_ms): (i64, i64) = library::invoke(con, &call).await?;
        let refused = |admission| Ok(AdmitReply::Refused(admission));
        match code {
            0 => Ok(AdmitReply::NotLoaded),
            1 => Ok(AdmitReply::Admitted(IssueEvent {
                v: EVENT_VERSION,
                event_id,
                coupon_id: coupon,
                user_id: user,
                // Redis's clock, read by the script whenever it admits.
                issued_at: DateTime::from_timestamp_millis(now_ms).unwrap_or_else(Utc::now),
            })),
            2 => refused(Admission::AlreadyIssued),
            3 => refused(Admission::SoldOut),
            4 => refused(Admission::NotStarted),
            5 => refused(Admission::Ended),
            6 => Ok(AdmitReply::Pending),
            7 => Ok(AdmitReply::Unverified),
            8 => Ok(AdmitReply::Dry),
            9 => Ok(AdmitReply::Held(Admission::SoldOut)),
            10 => refused(Admission::Paused),
            11 => Ok(AdmitReply::Held(Admission::Ended)),
            other => Err(RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "admission script returned an unknown code",
                other.to_string(),
            ))),
        }
    }

    /// Forgets `coupon`'s stamp (one this process wrote that turned out not to be in force).
    pub fn forget_stamp(&self, coupon: CouponId) {
        self.stamps
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .known
            .remove(&coupon);
    }

    /// Forgets every stamp learnt: another process replaced one since
    /// (`crate::db::coupons::redis_verifications` moved), and a node that took over and
    /// gave way again may still carry an old one this process would pass.
    pub fn forget_stamps(&self) {
        let mut stamps = self
            .stamps
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        stamps.known.clear();
        stamps.forgotten += 1;
    }

    /// Registers a newly created coupon, then caches quantity and window beside the issued
    /// set and stamps it as verified here (nothing can have been admitted yet), never
    /// overwriting a meta that is already there. In that order: the meta opens admission,
    /// so a coupon that admits is always one the reconciler and the stream workers look at
    /// (`crate::redis::registry`). Returns the stamp when this call wrote the meta; the caller
    /// records it in PostgreSQL as the one in force.
    pub async fn load_meta<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        coupon: &Coupon,
    ) -> Result<Option<Stamp>, RedisError> {
        self.registry.register(con, coupon.id).await?;
        let stamp = load_fresh(con, &self.keys(coupon.id), coupon, None).await?;
        if let Some(stamp) = &stamp {
            self.learn_stamp(coupon.id, stamp.clone());
        }
        Ok(stamp)
    }

    /// Lands a raised quantity (PostgreSQL raised first, `crate::db::raise`) in a coupon of
    /// one bucket: registered again first (a sold-out coupon may have been retired from the
    /// registry, and admission reopens with the raise), then its meta's quantity raised,
    /// then registered once more: a retirer may have read the first registration and
    /// judged the coupon finished before the raise landed, and its retire then finds
    /// another generation (`tests/registry_model.rs`). The caller records the raise as
    /// landed only after this returns. False if its state is not loaded: its rebuild reads
    /// the quantity from PostgreSQL, and the raise stays recorded as not landed until a
    /// later call finds the meta.
    pub async fn raise_quantity<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        coupon: CouponId,
        quantity: i64,
    ) -> Result<bool, RedisError> {
        self.registry.register(con, coupon).await?;
        let keys = self.keys(coupon);
        let mut call = library::call(Function::Raise, &[&keys.meta, &keys.issued]);
        call.arg(quantity).arg(self.reopen_hold.as_millis() as u64);
        let landed: i64 = library::invoke(con, &call).await?;
        if landed == 1 {
            self.registry.register(con, coupon).await?;
        }
        Ok(landed == 1)
    }

    /// Lands an operator's settings (PostgreSQL changed first, `crate::db::settings`) in the
    /// meta `at` (a coupon's own, or one of its buckets'), unless it holds a newer version:
    /// whether they are in force, in a meta open under `stamp` (the one in force when they
    /// were read), so that the change may be recorded as landed (`scripts/settings.lua`). An
    /// end moved later after it came holds the reopened sale for `hold`: the longest any
    /// API's finished gate may hold, since any API may land the change.
    pub async fn land_settings<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        at: &CouponKeys,
        coupon: &Coupon,
        stamp: Option<&Stamp>,
        hold: Duration,
    ) -> Result<bool, RedisError> {
        // Registered before and after landing, as a raise is: a coupon that had finished
        // (ended) and was retired may admit again once its end is moved later, and a retirer
        // that read the first registration before the landing is undone by the second
        // (`coupon-core/tests/registry_model.rs`).
        self.registry.register(con, coupon.id).await?;
        let mut call = library::call(Function::Settings, &[&at.meta]);
        let ends_at = coupon.ends_at.map(|t| t.timestamp_millis().to_string());
        settings_args(&mut call, coupon)
            .arg(ends_at.unwrap_or_default())
            .arg(hold.as_millis() as u64)
            .arg(stamp.map(Stamp::as_str).unwrap_or_default());
        let landed: i64 = library::invoke(con, &call).await?;
        if landed != 0 {
            self.registry.register(con, coupon.id).await?;
        }
        Ok(landed == 1)
    }

    /// Takes a slot for `user`, whose failed event an operator replays, in the state at
    /// `keys` (the coupon's own, or the user's home bucket's) verified here under `stamp`
    /// (PostgreSQL's in force), once its row is written in the caller's transaction, which
    /// holds the coupon's row until it commits (`scripts/replay_slot.lua`).
    pub async fn replay_slot<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        keys: &CouponKeys,
        user: UserId,
        stamp: Option<&str>,
    ) -> Result<ReplaySlot, RedisError> {
        let mut call = library::call(
            Function::ReplaySlot,
            &[&keys.meta, &keys.issued, &keys.pending],
        );
        call.arg(user.get()).arg(stamp.unwrap_or_default());
        let code: i64 = library::invoke(con, &call).await?;
        match code {
            0 => Ok(ReplaySlot::NotVerified),
            1 => Ok(ReplaySlot::Held),
            2 => Ok(ReplaySlot::Taken),
            3 => Ok(ReplaySlot::NoneFree),
            4 => Ok(ReplaySlot::Pending),
            other => Err(RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "replay_slot returned an unknown code",
                other.to_string(),
            ))),
        }
    }

    /// The users holding a slot in the coupon's state at `keys`, verified under `stamp`;
    /// None when it is not (a rewound copy may lack holders), or holds more than `most`.
    pub async fn holders_in<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        keys: &CouponKeys,
        stamp: &Stamp,
        most: usize,
    ) -> Result<Option<Holders>, RedisError> {
        let mut call = library::call(
            Function::Holders,
            &[&keys.meta, &keys.issued, &keys.pending],
        );
        call.arg(stamp.as_str()).arg(most);
        let read: Option<(Vec<i64>, Vec<i64>)> = library::invoke(con, &call).await?;
        Ok(read.map(|(issued, pending)| Holders { issued, pending }))
    }

    /// Restores a coupon's state after Redis lost it (or may have rewound it): adds the
    /// users PostgreSQL (and the caller) know to hold the coupon, then writes the meta with
    /// `stamp`, last, because a verified meta is what opens admission. Users already in the
    /// set stay; nothing is removed. False if the instance is no longer the one `stamp`
    /// names (Redis restarted or failed over during the rebuild), or `lease` is no longer
    /// held: then admission stays closed and the rebuild starts over. The caller has
    /// recorded the stamp in PostgreSQL as the one in force before (`Stamp::fresh`).
    pub async fn restore<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        coupon: &Coupon,
        holders: &[i64],
        stamp: &Stamp,
        lease: &RebuildLease,
    ) -> Result<bool, RedisError> {
        let keys = self.keys(coupon.id);
        for chunk in holders.chunks(RESTORE_CHUNK) {
            let _: i64 = con.sadd(&keys.issued, chunk).await?;
        }
        self.registry.register(con, coupon.id).await?;
        let mut call = library::call(Function::LoadMeta, &[&keys.meta, &keys.rebuilding]);
        meta_args(&mut call, coupon, coupon.total_quantity)
            .arg("verified")
            .arg(stamp.as_str())
            .arg(&lease.token)
            .arg("");
        settings_args(&mut call, coupon);
        let written: Option<Stamp> = library::invoke(con, &call).await?;
        let restored = written.as_ref() == Some(stamp);
        if restored {
            self.learn_stamp(coupon.id, stamp.clone());
        }
        Ok(restored)
    }

    /// Takes the coupon's rebuild lease and closes its admission in one step
    /// (`scripts/rebuild_lease.lua` says why both): only one process rebuilds a coupon at a
    /// time, and a crashed rebuilder's lease expires, leaving admission closed until the
    /// next rebuild reopens it. None if another process holds the lease.
    pub async fn try_lease_rebuild<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        coupon: CouponId,
        lease: Duration,
    ) -> Result<Option<RebuildLease>, RedisError> {
        Ok(
            match self.take_rebuild_lease(con, coupon, lease, None).await? {
                LeaseTake::Taken(held) => Some(held),
                LeaseTake::Held | LeaseTake::Verified => None,
            },
        )
    }

    /// As [`AdmissionScripts::try_lease_rebuild`], but takes nothing when the state is
    /// verified here under `unless_verified_under` (the stamp in force, as PostgreSQL gives
    /// it): a rebuild asked for while the coupon was closed is not run once it has opened.
    pub async fn take_rebuild_lease<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        coupon: CouponId,
        lease: Duration,
        unless_verified_under: Option<&Stamp>,
    ) -> Result<LeaseTake, RedisError> {
        self.take_rebuild_lease_at(
            con,
            &self.keys(coupon),
            coupon,
            lease,
            unless_verified_under,
        )
        .await
    }

    /// [`AdmissionScripts::take_rebuild_lease`] on the state at `keys`: a coupon's own, or
    /// one bucket's of a bucketed coupon (`crate::redis::buckets`).
    pub async fn take_rebuild_lease_at<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        keys: &CouponKeys,
        coupon: CouponId,
        lease: Duration,
        unless_verified_under: Option<&Stamp>,
    ) -> Result<LeaseTake, RedisError> {
        let token = Uuid::new_v4().to_string();
        let mut call = library::call(Function::RebuildLease, &[&keys.rebuilding, &keys.meta]);
        call.arg("take")
            .arg(&token)
            .arg(lease.as_millis() as u64)
            .arg(unless_verified_under.map_or("", Stamp::as_str));
        let taken: i64 = library::invoke(con, &call).await?;
        Ok(match taken {
            1 => LeaseTake::Taken(RebuildLease {
                coupon,
                token,
                rebuilding: keys.rebuilding.clone(),
                meta: keys.meta.clone(),
            }),
            2 => LeaseTake::Verified,
            _ => LeaseTake::Held,
        })
    }

    /// A hand-over's lease on `coupon`, not taken yet: its token exists before the close
    /// is sent, so that a close whose answer was lost can still be opened (or ended) by it.
    pub fn hand_over_lease(&self, coupon: CouponId) -> RebuildLease {
        let keys = self.keys(coupon);
        RebuildLease {
            coupon,
            token: Uuid::new_v4().to_string(),
            rebuilding: keys.rebuilding,
            meta: keys.meta,
        }
    }

    /// The hand-over's close (`scripts/hand_over.lua`): closes the coupon and takes `held`,
    /// only if its state is verified on this node under `in_force`. Returns the node's run
    /// id when closed; None if not verified, or another process holds the lease. The lease
    /// is then what opens the coupon again ([`AdmissionScripts::restore`] with no
    /// holders), on whichever node holds its token.
    pub async fn close_for_hand_over<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        held: &RebuildLease,
        in_force: &Stamp,
        lease: Duration,
    ) -> Result<Option<String>, RedisError> {
        let keys = self.keys(held.coupon);
        let mut call = library::call(Function::HandOver, &[&keys.rebuilding, &keys.meta]);
        call.arg(&held.token)
            .arg(lease.as_millis() as u64)
            .arg(in_force.as_str());
        library::invoke(con, &call).await
    }

    /// Ends a rebuild lease, if it is still this one (it may have run out and been taken).
    pub async fn end_rebuild_lease<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        lease: &RebuildLease,
    ) -> Result<(), RedisError> {
        let mut call = library::call(Function::RebuildLease, &[&lease.rebuilding, &lease.meta]);
        call.arg("end").arg(&lease.token);
        let _: i64 = library::invoke(con, &call).await?;
        Ok(())
    }

    pub async fn admitted_count<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        coupon: CouponId,
    ) -> Result<i64, RedisError> {
        self.admitted_count_at(con, &self.keys(coupon)).await
    }

    /// Slots taken in the state at `keys`: a coupon's own, or one bucket's.
    pub async fn admitted_count_at<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        keys: &CouponKeys,
    ) -> Result<i64, RedisError> {
        con.scard(&keys.issued).await
    }

    /// Whether `user` holds a slot in the state at `keys`.
    pub async fn is_admitted_at<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        keys: &CouponKeys,
        user: UserId,
    ) -> Result<bool, RedisError> {
        con.sismember(&keys.issued, user.get()).await
    }
}
