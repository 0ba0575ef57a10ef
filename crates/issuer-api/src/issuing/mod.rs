//! Issuing one coupon to one user: admit in Redis, hand the event to its delivery, answer.
//! Beside it: the reads the HTTP contract makes (`reads`), what the operations view probes
//! (`probes`), and restoring Redis from PostgreSQL (`rebuild`), for the coupons requests
//! found unverified gathered into one rebuild (`lazy_rebuilds`), and the planned switchover
//! that carries the state over instead (`hand_over`); keeping the registry of coupons with
//! work complete (`registry_check`).
//!
//! Invariants: a SUCCESS answer is given only once the event is durably queued (see
//! `crate::delivery`). A user is told "yours" only when it is known: while someone else's
//! delivery of their event is unresolved, the answer is 503, retry.

mod buckets;
mod failed_events;
mod finished_gate;
mod hand_over;
mod lazy_rebuilds;
mod probes;
mod raise;
mod reads;
mod rebuild;
mod registry_check;
mod settings;

use std::sync::Arc;
use std::time::{Duration, Instant};

use coupon_core::db::coupons::{
    NewCoupon, Verification, insert_coupon, record_redis_stamp, redis_stamp, redis_verifications,
};
use coupon_core::db::pool::PgPool;
use coupon_core::domain::{Admission, Coupon, CouponId, UserId};
use coupon_core::redis::admission::{AdmissionScripts, AdmitReply};
use coupon_core::redis::connection::RedisConnection;
use coupon_core::redis::epoch::Stamp;
use coupon_core::redis::keys::CouponKeys;
use coupon_core::redis::ledger::LedgerAt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::delivery::{Delivery, Pending};
use crate::error::ApiError;
use crate::layouts::{Layout, Layouts};
use crate::metrics::Metrics;
use crate::replication::{Confirmation, Written};
use buckets::{BucketRebuilds, SupplyGates};
pub(crate) use finished_gate::LONGEST_HOLD;
use finished_gate::{FinishedGates, MOST_HOLDERS, ShutTurn};
use lazy_rebuilds::LazyRebuilds;

pub use buckets::{BucketRebuild, BucketStock, SUPPLY_WAIT};
pub use hand_over::{Closed, HandedOver};
pub use probes::Stock;
pub use raise::Raise;
use reads::CouponReads;
pub use reads::{CouponState, Holding};
pub use rebuild::Rebuilt;
pub use settings::SettingsChange;

/// How often each API reads the verification count (`Issuer::watch_stamps`), and how long a
/// rebuild waits after moving it before it opens Redis: by then every live API has read it
/// at least once.
const STAMP_REFRESH: Duration = Duration::from_millis(100);
pub(crate) const STAMPS_SEEN_BY_ALL: Duration = Duration::from_millis(300);

/// How long a request for a user whose event another request is delivering waits for that
/// outcome before answering 503, and its first pause between looks (doubled each time, so a
/// broker outage's retries cost a handful of looks each, not a hundred).
const BUSY_WAIT: Duration = Duration::from_millis(500);
const BUSY_FIRST_PAUSE: Duration = Duration::from_millis(5);

#[derive(Clone)]
pub struct Issuer {
    redis: RedisConnection,
    scripts: AdmissionScripts,
    pool: PgPool,
    delivery: Delivery,
    rebuild_timeout: Duration,
    /// Confirms each admission on the replicas first, when REDIS_MIN_REPLICAS is set.
    replication: Option<Confirmation>,
    metrics: Arc<Metrics>,
    /// The coupons requests found unverified, gathered into one rebuild.
    lazy_rebuilds: Arc<LazyRebuilds>,
    /// Coupon reads kept a short while (`reads`); none kept unless set.
    coupon_reads: Arc<CouponReads>,
    /// Which state holds each coupon: its own keys or its buckets'.
    layouts: Arc<Layouts>,
    /// The buckets this process is rebuilding (`buckets`).
    bucket_rebuilds: Arc<BucketRebuilds>,
    /// Each bucketed coupon's supplies, one at a time in this process (`buckets`).
    supply_gates: Arc<SupplyGates>,
    /// Finished coupons' refusals answered from memory (`finished_gate`); none unless set.
    finished_gates: Arc<FinishedGates>,
}

impl Issuer {
    /// Reaches Redis and PostgreSQL through `layouts`' connections: the same stores every
    /// coupon's layout is read from.
    pub fn new(
        scripts: AdmissionScripts,
        delivery: Delivery,
        rebuild_timeout: Duration,
        replication: Option<Confirmation>,
        metrics: Arc<Metrics>,
        layouts: Arc<Layouts>,
    ) -> Self {
        Self {
            redis: layouts.redis().clone(),
            scripts,
            pool: layouts.pool().clone(),
            delivery,
            rebuild_timeout,
            replication,
            metrics,
            lazy_rebuilds: Arc::default(),
            coupon_reads: Arc::default(),
            layouts,
            bucket_rebuilds: Arc::default(),
            supply_gates: Arc::default(),
            finished_gates: Arc::new(FinishedGates::new(Duration::ZERO)),
        }
    }

    /// The same, answering coupon reads from memory for `ttl` (0: never).
    pub fn with_coupon_reads_kept(self, ttl: Duration) -> Self {
        Self {
            coupon_reads: Arc::new(CouponReads::new(ttl)),
            ..self
        }
    }

    /// The same, answering a finished coupon's requests from memory for `hold` after
    /// admission refused one (0: never).
    pub fn with_finished_gates(self, hold: Duration) -> Self {
        Self {
            finished_gates: Arc::new(FinishedGates::new(hold)),
            ..self
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// The answer this instance's finished gate gives `user` for `coupon` from memory
    /// (`finished_gate`), if it is shut; else None, and [`Issuer::issue`] decides.
    pub fn gated(&self, coupon: CouponId, user: UserId) -> Option<Admission> {
        self.finished_gates.answer(coupon, user)
    }

    /// Runs the whole decision on its own task: if the client goes away mid-request, the
    /// admission and its publish (or release) still finish, so no slot is left taken
    /// without an event behind it. The task shares the issuer: a clone of it copies its key
    /// prefixes, allocations every request would pay for.
    pub async fn issue(
        self: &Arc<Self>,
        coupon: CouponId,
        user: UserId,
    ) -> Result<Admission, ApiError> {
        let this = Arc::clone(self);
        // The task carries the request's span: its admission and publish are in its trace.
        let work = async move { this.admit_and_deliver(coupon, user).await };
        tokio::spawn(work.instrument(tracing::Span::current()))
            .await
            .map_err(|e| ApiError::Internal(e.into()))?
    }

    async fn admit_and_deliver(
        &self,
        coupon: CouponId,
        user: UserId,
    ) -> Result<Admission, ApiError> {
        match self.layouts.get(coupon).await? {
            None => Err(ApiError::CouponNotFound(coupon.get())),
            Some(Layout::Single) => self.issue_in_coupon(coupon, user).await,
            // Buckets 1 and up would append to streams no worker reads: a deployment that
            // switched queue modes under a bucketed coupon, which no retry mends.
            Some(Layout::Buckets(_)) if !self.delivery.keeps_buckets() => Err(ApiError::Internal(
                format!("coupon {coupon} is in buckets, which the Redis queue mode cannot serve")
                    .into(),
            )),
            Some(Layout::Buckets(places)) => self.issue_in_buckets(places, user).await,
        }
    }

    /// Shuts `coupon`'s finished gate, with `turn`, on `answer`, which admission gave,
    /// under `stamp`, to a request sent at `asked` when the gates' generation was
    /// `generation`, with a snapshot of its holders read now; unless the state is no longer
    /// the one `stamp` names, or it holds too many to keep (the gate then stays open). A
    /// bucketed coupon's gate stays open: stock comes back to its buckets through the
    /// movers' steps, which hold none of it (`scripts/stock_hold.lua`).
    async fn shut_gate(
        &self,
        turn: ShutTurn<'_>,
        coupon: CouponId,
        answer: Admission,
        (asked, generation): (Instant, u64),
        stamp: Option<&Stamp>,
    ) {
        let Some(stamp) = stamp else {
            return;
        };
        let keys = self.scripts.keys(coupon);
        match self
            .scripts
            .holders_in(&mut self.redis.clone(), &keys, stamp, MOST_HOLDERS)
            .await
        {
            Ok(Some(holders)) => self
                .finished_gates
                .shut(turn, answer, asked, generation, holders),
            Ok(None) => {}
            Err(err) => {
                tracing::debug!(%coupon, error = %err, "finished gate left open: no holders read")
            }
        }
    }

    /// Decides in the coupon's own state (a coupon of one bucket).
    async fn issue_in_coupon(&self, coupon: CouponId, user: UserId) -> Result<Admission, ApiError> {
        // Built once a request: the admission reads the keys where the ledger keeps them.
        let at = LedgerAt::Coupon(self.scripts.keys(coupon));
        let keys = at.keys();
        let mut redis = self.redis.clone();
        let waiting_since = tokio::time::Instant::now();
        let mut pause = BUSY_FIRST_PAUSE;
        // The stamp in force is learnt from PostgreSQL at most once a request, and the retry
        // passes what was read (a forget may have emptied the cache meanwhile).
        let mut learnt = None;
        // Read before any stamp is: a gate is not shut on a refusal under a stamp read
        // before the gates were last opened (`finished_gate`).
        let generation = self.finished_gates.generation();
        loop {
            let started = std::time::Instant::now();
            let pass = learnt.clone().unwrap_or_else(|| self.scripts.stamp(coupon));
            let admitted = self
                .run_admission(&mut redis, keys, coupon, user, pass)
                .instrument(tracing::debug_span!("admission_script", %coupon, %user))
                .await;
            self.metrics
                .admission_script
                .observe(started.elapsed().as_secs_f64());
            let (reply, sent, written_on) = admitted?;
            match reply {
                // This process may not know the stamp in force yet, or another one rebuilt
                // the coupon since: PostgreSQL says which it is. Only when PostgreSQL's is
                // the one just passed (the state is rewound, or was never verified) is a
                // rebuild due; compared with the cache instead, a request racing a rebuild
                // that just finished here would start another.
                AdmitReply::Unverified if learnt.is_none() => {
                    match self.stamp_in_force(coupon, sent.as_ref()).await? {
                        Some(in_force) => {
                            learnt = Some(Some(in_force));
                            continue;
                        }
                        None => return Err(self.start_rebuild(coupon).await),
                    }
                }
                AdmitReply::NotLoaded | AdmitReply::Unverified => {
                    return Err(self.start_rebuild(coupon).await);
                }
                // These rest on slots taken earlier, by this user or others: such a refusal
                // is as durable as those writes, or it may be a lie after a failover.
                AdmitReply::Refused(
                    admission @ (Admission::AlreadyIssued | Admission::SoldOut),
                ) => {
                    self.replicated(written_on).await?;
                    if admission == Admission::SoldOut
                        && let Some(turn) = self.finished_gates.turn(coupon)
                    {
                        self.shut_gate(
                            turn,
                            coupon,
                            admission,
                            (started, generation),
                            sent.as_ref(),
                        )
                        .await;
                    }
                    return Ok(admission);
                }
                // Stock that came back is held: sold out until then, but no gate is shut
                // on it, or the gate would outlive the hold (`finished_gate`). An end moved
                // later after it came is held the same way, and as ENDED rests on the
                // clock alone, waits for no replica.
                AdmitReply::Held(Admission::SoldOut) => {
                    self.replicated(written_on).await?;
                    return Ok(Admission::SoldOut);
                }
                AdmitReply::Held(admission) => return Ok(admission),
                // A gate shut on it tells its holders 409 from memory: as for SOLD_OUT, only
                // once the slots it rests on are on the replicas. The answer itself rests on
                // the clock, and waits for no replica unless a gate is to be shut.
                AdmitReply::Refused(Admission::Ended) => {
                    if let Some(turn) = self.finished_gates.turn(coupon)
                        && self.replicated(written_on).await.is_ok()
                    {
                        self.shut_gate(
                            turn,
                            coupon,
                            Admission::Ended,
                            (started, generation),
                            sent.as_ref(),
                        )
                        .await;
                    }
                    return Ok(Admission::Ended);
                }
                AdmitReply::Refused(admission) => return Ok(admission),
                AdmitReply::Admitted(event) => {
                    // The slot on the replicas a failover could promote first, then the
                    // event queued: a primary cut off from its replicas (a split brain)
                    // queues nothing a promoted replica does not know of.
                    self.replicated(written_on).await?;
                    self.delivery.deliver(event, at).await?;
                    return Ok(Admission::Success);
                }
                AdmitReply::Pending => {}
                // Only a bucketed coupon's home bucket answers so, and this path admits in a
                // coupon's own state, whose meta has no buckets field.
                AdmitReply::Dry => {
                    return Err(ApiError::Internal(
                        anyhow::anyhow!("coupon {coupon}'s state answered as a bucket's").into(),
                    ));
                }
            }
            match self
                .delivery
                .resolve_pending(&mut redis, &at, coupon, user)
                .await?
            {
                Pending::Delivered => return Ok(Admission::Success),
                // Another request is delivering this user's event. Its outcome usually comes
                // within milliseconds (a double click): wait for it, then ask admission
                // again, which then knows the truth. Past the wait, nobody knows yet, and
                // saying "yours" (409) could be a lie.
                Pending::Busy if waiting_since.elapsed() < BUSY_WAIT => {
                    let left = BUSY_WAIT.saturating_sub(waiting_since.elapsed());
                    tokio::time::sleep(pause.min(left)).await;
                    pause *= 2;
                }
                Pending::Busy => return Err(ApiError::PublishUnresolved),
                // Delivered or given back between the two steps: admission knows now.
                Pending::Absent => {}
            }
        }
    }

    /// Runs the admission script in the state at `keys` (the coupon's own, or the user's
    /// home bucket's); returns its reply, the stamp it passed, and, when replicas must
    /// confirm, where it was written: on one node, the number of the replication socket it
    /// ran on (a WAIT counts only on the socket that carried the write); on a cluster, the
    /// state and the stamp, which names the instance (`crate::replication`).
    async fn run_admission(
        &self,
        redis: &mut RedisConnection,
        keys: &CouponKeys,
        coupon: CouponId,
        user: UserId,
        pass: Option<Stamp>,
    ) -> Result<(AdmitReply, Option<Stamp>, Option<Written>), ApiError> {
        let replication = match &self.replication {
            Some(Confirmation::Socket(replication)) => replication,
            Some(Confirmation::Shards(_)) | None => {
                let reply = self
                    .scripts
                    .admit_in(redis, keys, coupon, user, pass.as_ref())
                    .await?;
                let written = self.replication.as_ref().map(|_| Written::Shard {
                    keys: Box::new(keys.clone()),
                    stamp: pass.clone(),
                });
                return Ok((reply, pass, written));
            }
        };
        let mut bound = replication.connection().await?;
        match self
            .scripts
            .admit_in(&mut bound.connection, keys, coupon, user, pass.as_ref())
            .await
        {
            Ok(reply) => Ok((reply, pass, Some(Written::Socket(bound.generation)))),
            Err(err) => {
                replication.failed(bound.generation, &err);
                Err(err.into())
            }
        }
    }

    /// What the admission wrote or read (`written`) is on the configured number of
    /// replicas.
    async fn replicated(&self, written: Option<Written>) -> Result<(), ApiError> {
        match (&self.replication, written) {
            (Some(replication), Some(written)) => replication.confirm(written).await,
            _ => Ok(()),
        }
    }

    /// Stores a new coupon, then pre-warms Redis so the sale's first request does not pay
    /// for the load. If Redis is down now, the first request loads it lazily instead: the
    /// coupon exists either way.
    pub async fn create_coupon(&self, new: &NewCoupon) -> Result<Coupon, ApiError> {
        if new.buckets != 1 {
            if !self.delivery.keeps_buckets() {
                return Err(ApiError::InvalidRequest(
                    "buckets above 1 need the Kafka queue mode (ISSUE_QUEUE=kafka): the Redis \
                     queue mode keeps one stream per coupon"
                        .into(),
                ));
            }
            return self.layouts.create_bucketed(new).await;
        }
        let coupon = {
            let mut conn = self.pool.get().await?;
            insert_coupon(&mut conn, new).await?
        };
        match self
            .scripts
            .load_meta(&mut self.redis.clone(), &coupon)
            .await
        {
            Ok(Some(stamp)) => {
                let mut conn = self.pool.get().await?;
                // A rebuild elsewhere recorded one first: this one is not in force.
                if !record_redis_stamp(&mut conn, coupon.id, &stamp, Verification::Created).await? {
                    self.scripts.forget_stamp(coupon.id);
                }
            }
            // Loaded by another process meanwhile: it records its stamp.
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(coupon = %coupon.id, error = %err, "could not pre-warm Redis")
            }
        }
        Ok(coupon)
    }

    /// Learns the coupon's stamp in force from PostgreSQL; returns it if it differs from
    /// `sent`, the one an admission passed and was refused (admission is worth asking again
    /// with it), None if PostgreSQL has the same or none (only a rebuild helps).
    async fn stamp_in_force(
        &self,
        coupon: CouponId,
        sent: Option<&Stamp>,
    ) -> Result<Option<Stamp>, ApiError> {
        let forgotten = self.scripts.stamps_forgotten();
        let in_force = {
            let mut conn = self.pool.get().await?;
            redis_stamp(&mut conn, coupon).await?
        };
        match in_force {
            Some(stamp) if Some(&stamp) != sent => {
                self.scripts
                    .learn_stamp_read_at(coupon, stamp.clone(), forgotten);
                Ok(Some(stamp))
            }
            _ => Ok(None),
        }
    }

    /// Until `stop`: watches how many rebuilds have replaced a stamp in force, and forgets
    /// every stamp this process holds when the count moves. An API that met no request for
    /// a coupon while another node took over (and was rebuilt) would otherwise still pass
    /// the old node's stamp, and a failback to that node would admit on its old state. A
    /// rebuild opens Redis only [`STAMPS_SEEN_BY_ALL`] after moving the count, so every
    /// API has forgotten by then.
    pub async fn watch_stamps(&self, stop: CancellationToken) {
        let mut seen = None;
        loop {
            let count = async {
                let mut conn = self.pool.get().await?;
                Ok::<_, ApiError>(redis_verifications(&mut conn).await?)
            };
            match count.await {
                Ok(count) => {
                    if seen.is_some_and(|seen| seen != count) {
                        tracing::info!(
                            count,
                            "a rebuild replaced a stamp in force; stamps forgotten"
                        );
                        self.scripts.forget_stamps();
                        self.layouts.forget_stamps();
                        self.finished_gates.open_all();
                    }
                    seen = Some(count);
                }
                // Unknown: forget, so that the next admissions learn from PostgreSQL (and
                // answer 503 while it is away).
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the verification count; stamps forgotten");
                    self.scripts.forget_stamps();
                    self.layouts.forget_stamps();
                    self.finished_gates.open_all();
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(STAMP_REFRESH) => {}
            }
        }
    }
}
