//! The Redis Streams queue: one stream per coupon (written by the admission script), read
//! by a consumer group with blocking XREADGROUP, acknowledged with XACK after PostgreSQL
//! committed.
//!
//! Invariants kept here:
//! - An entry leaves the group's pending list only by XACK after its row (or failed event)
//!   is committed. A worker that dies holding entries leaves them pending; once idle for
//!   `claim_idle`, a live worker takes them over with XAUTOCLAIM.
//! - Only acknowledged entries are trimmed: everything before the oldest pending entry (or,
//!   with none pending, before the last delivered one), so memory stays bounded while no
//!   unpersisted event is ever dropped.
//! - Streams are found through the registry of coupons that need work, never by scanning
//!   keys; a newly registered coupon wakes a blocked reader through the registry stream. A
//!   coupon whose admission is over and whose entries are all acknowledged leaves the
//!   registry (`coupon_core::redis::registry`), and so every worker's reads.
//! - Where replicas must confirm writes (REDIS_MIN_REPLICAS, or Sentinel), an entry is
//!   persisted only once they have it (`confirm`): a worker left with a replaced primary
//!   persists nothing the promoted one lacks.
//! - A consumer is removed from the group only when it holds nothing: this worker at
//!   shutdown, and others once silent for `claim_idle` with nothing left to claim, so the
//!   names of past workers do not pile up.

mod confirm;
mod maintenance;
mod streams;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use coupon_core::config::RedisArgs;
use coupon_core::db::batch_insert::{FailedEvent, FailureReason, SourcedIssue};
use coupon_core::domain::CouponId;
use coupon_core::domain::QueueKind;
use coupon_core::event::IssueEvent;
use coupon_core::redis::connect::RedisSetupError;
use coupon_core::redis::connection::RedisConnection;
use coupon_core::redis::keys::CouponKeys;
use coupon_core::redis::registry::{Registration, Registry};
use coupon_core::redis::replicas::Required;
use coupon_core::trace_context::{self, TraceParent};

use redis::streams::{StreamId, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, FromRedisValue, RedisError};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::queue::{Batch, Consumed, IssueQueue, QueueError};
use confirm::{Confirmation, Read};

/// Longest one read blocks on the server: also how soon a reader notices shutdown, and a
/// coupon registered while another worker was woken instead.
const READ_BLOCK: Duration = Duration::from_secs(1);
/// How often entries left by dead consumers are claimed and acknowledged ones trimmed.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);
const ERROR_PAUSE: Duration = Duration::from_millis(200);
/// On a cluster, the pause after a round of reads that found nothing (`read_each`): the
/// longest a first entry after a quiet spell waits, against one read per coupon per round.
const IDLE_POLL: Duration = Duration::from_millis(20);
/// On a cluster, how long a coupon whose last read its shard did not confirm (its replica
/// down, say) is left out of the reads, and how long its next read's WAIT may take (doubled
/// at each such read in a row, up to REDIS_REPLICA_TIMEOUT_MS, so that a replica slow but
/// there confirms again). Every read of one node shares one connection, and a WAIT holds
/// it: at the full timeout each, the WAITs of a shard that cannot confirm queue up behind
/// each other past the command timeout, and each round of reads waits for its slowest.
const UNCONFIRMED_RETRY: Duration = Duration::from_secs(1);
const UNCONFIRMED_PROBE: Duration = Duration::from_millis(50);

/// Entry ids to XACK, per stream.
pub type EntryIds = BTreeMap<String, Vec<String>>;

pub struct StreamQueue {
    connections: std::sync::RwLock<Connections>,
    /// What the connections are made from, to make them again ([`StreamQueue::read_failed`]).
    redis: RedisArgs,
    key_prefix: String,
    registry: Registry,
    registry_stream: String,
    group: String,
    consumer: String,
    claim_idle: Duration,
    forget_consumer: redis::Script,
    /// Set where replicas must confirm an entry before it is persisted.
    confirmation: Option<Confirmation>,
    state: Mutex<State>,
}

struct Connections {
    /// Blocking reads only: a blocked command would hold up every other caller of a
    /// multiplexed connection.
    reader: RedisConnection,
    commands: RedisConnection,
}

/// Rounds of reads in a row that timed out before a cluster's connections are made again.
/// The cluster chaos run twice met both of a worker's cluster connections answering every
/// command with a timeout, for minutes after a failover, while the nodes saw them idle and
/// the APIs' connections (and a new one) worked: the cluster client had stopped sending.
/// The cause inside the client is not found yet; new connections end it.
const TIMEOUTS_BEFORE_RECONNECT: u32 = 3;

struct State {
    /// Streams whose consumer group is known to exist.
    ready: BTreeSet<String>,
    /// What the next read covers (the registry stream, then each registered coupon's), and
    /// when to read the registry again: a coupon's registration wakes the reader and forces
    /// it, else once per block interval.
    streams: Vec<String>,
    registrations: Vec<Registration>,
    refresh_streams_at: Instant,
    next_maintenance: Instant,
    /// On a cluster, coupons whose last read was not confirmed: when to read them again
    /// ([`UNCONFIRMED_RETRY`]), and how many such reads in a row.
    unconfirmed: HashMap<CouponId, (Instant, u32)>,
    /// Rounds of reads in a row that timed out.
    timeouts: u32,
}

impl StreamQueue {
    /// `required`: the replicas that must have an entry before it is persisted, if any.
    pub async fn connect(
        config: &Config,
        required: Option<Required>,
    ) -> Result<Self, RedisSetupError> {
        let prefix = &config.redis.redis_key_prefix;
        let queue = Self {
            connections: std::sync::RwLock::new(Connections::open(&config.redis).await?),
            redis: config.redis.clone(),
            key_prefix: prefix.clone(),
            registry: Registry::new(prefix.clone(), QueueKind::Redis),
            registry_stream: CouponKeys::registry_stream(prefix),
            group: config.group_id.clone(),
            consumer: config
                .instance_id
                .clone()
                .unwrap_or_else(|| format!("worker-{}", uuid::Uuid::new_v4().simple())),
            claim_idle: Duration::from_millis(config.claim_idle_ms),
            forget_consumer: redis::Script::new(include_str!("../scripts/forget_consumer.lua")),
            confirmation: required.map(|required| Confirmation {
                required,
                timeout: config.replicas.timeout(),
            }),
            state: Mutex::new(State {
                ready: BTreeSet::new(),
                streams: Vec::new(),
                registrations: Vec::new(),
                refresh_streams_at: Instant::now(),
                next_maintenance: Instant::now(),
                unconfirmed: HashMap::new(),
                timeouts: 0,
            }),
        };
        tracing::info!(consumer = %queue.consumer, group = %queue.group, "reading the coupon streams");
        Ok(queue)
    }

    /// Sends `read` on `connection`, confirmed by the replicas where they must confirm:
    /// with a fence write on `coupon`'s shard on a cluster (the read must be of that coupon's
    /// stream), else on the one node's fence. On a cluster, a coupon whose last read was not
    /// confirmed waits [`UNCONFIRMED_PROBE`] at most for its replicas.
    async fn read<T: FromRedisValue>(
        &self,
        connection: &RedisConnection,
        read: redis::Cmd,
        coupon: Option<CouponId>,
    ) -> Result<Read<T>, RedisError> {
        let mut connection = connection.clone();
        let Some(confirmation) = &self.confirmation else {
            return Ok(Read::Confirmed(read.query_async(&mut connection).await?));
        };
        let (fence, wait) = match coupon {
            Some(coupon) if connection.is_cluster() => {
                let shortfalls = self.state().unconfirmed.get(&coupon).map(|(_, n)| *n);
                let wait = shortfalls.map_or(confirmation.timeout, |n| {
                    UNCONFIRMED_PROBE
                        .saturating_mul(2u32.saturating_pow(n.saturating_sub(1)))
                        .min(confirmation.timeout)
                });
                (CouponKeys::new(&self.key_prefix, coupon).fence, wait)
            }
            _ => (
                CouponKeys::replication_fence(&self.key_prefix),
                confirmation.timeout,
            ),
        };
        let read = confirmation.read(&mut connection, read, &fence, wait).await;
        // Only a WAIT that fell short sits the coupon out: an error (NOGROUP after a
        // failover, say) must reach the reads, which mend it (`read_failed`). Sat out by
        // each failing claim instead, the coupon was never read again, nor its group made
        // again: the cluster test of a replica promoted without the last admissions, in
        // the Redis queue mode, ended with no row at all in 2 runs of 4.
        if let Some(coupon) = coupon.filter(|_| connection.is_cluster()) {
            let mut state = self.state();
            match &read {
                Ok(Read::Confirmed(_)) => {
                    state.unconfirmed.remove(&coupon);
                }
                Ok(Read::Unconfirmed { .. }) => {
                    let retry = Instant::now() + UNCONFIRMED_RETRY;
                    let entry = state.unconfirmed.entry(coupon).or_insert((retry, 0));
                    *entry = (retry, entry.1 + 1);
                }
                Err(_) => {}
            }
        }
        read
    }

    /// Whether `coupon`'s stream sits this round out: its last read was not confirmed, and
    /// [`UNCONFIRMED_RETRY`] has not passed since.
    fn sits_out(&self, coupon: CouponId) -> bool {
        self.state()
            .unconfirmed
            .get(&coupon)
            .is_some_and(|(retry, _)| Instant::now() < *retry)
    }

    /// On a Redis Cluster: one XREADGROUP cannot span slots, and each coupon's stream is on
    /// its coupon's. So each stream is read on its own, all at once and without blocking
    /// (a blocked read would hold the shared connection to its node, or need a connection
    /// per coupon), each confirmed on its coupon's shard (`confirm`); when none had
    /// anything, the reader pauses [`IDLE_POLL`] (at most `block`) before the next round.
    /// What the replicas did not confirm stays pending, to be claimed and confirmed again.
    /// A failed read is the round's error, once what the others read is taken.
    async fn read_each(
        &self,
        streams: &[String],
        count: usize,
        block: Duration,
        batch: &mut Batch<EntryIds>,
    ) -> Result<(), RedisError> {
        let options = StreamReadOptions::default()
            .group(&self.group, &self.consumer)
            .count(count);
        let coupons: HashMap<String, CouponId> = self
            .state()
            .registrations
            .iter()
            .map(|r| (CouponKeys::new(&self.key_prefix, r.coupon).stream, r.coupon))
            .collect();
        // A retired coupon is read no more: what it sat out for goes with it.
        self.state()
            .unconfirmed
            .retain(|coupon, _| coupons.values().any(|c| c == coupon));
        let reads = streams
            .iter()
            .filter(|stream| !coupons.get(*stream).is_some_and(|c| self.sits_out(*c)))
            .map(|stream| {
                let read = redis::Cmd::xread_options(&[stream], &[">"], &options);
                let coupon = coupons.get(stream).copied();
                async move {
                    match coupon {
                        Some(coupon) => {
                            self.read::<Option<StreamReadReply>>(&self.reader(), read, Some(coupon))
                                .await
                        }
                        // The registry stream only wakes readers: nothing in it is persisted,
                        // and no coupon's fence is on its slot.
                        None => Ok(Read::Confirmed(read.query_async(&mut self.reader()).await?)),
                    }
                }
            });
        let mut found = false;
        let mut failed = None;
        // Every read's outcome is used: a stream whose shard fails does not discard what the
        // others read (it would sit in this consumer's pending list until claimed).
        for read in futures_util::future::join_all(reads).await {
            let (reply, confirmed) = match read {
                Ok(Read::Confirmed(reply)) => (reply, true),
                Ok(Read::Unconfirmed { reply, .. }) => (reply, false),
                Err(err) => {
                    failed.get_or_insert(err);
                    continue;
                }
            };
            if let Some(reply) = reply.filter(|reply| reply.keys.iter().any(|k| !k.ids.is_empty()))
            {
                found = true;
                self.take(reply, confirmed, batch).await;
            }
        }
        if let Some(err) = failed {
            return Err(err);
        }
        self.state().timeouts = 0;
        if !found {
            sleep(IDLE_POLL.min(block)).await;
        }
        Ok(())
    }

    /// The connection for reads (blocking ones on one node).
    fn reader(&self) -> RedisConnection {
        self.connections().reader.clone()
    }

    /// The connection for every other command.
    fn commands(&self) -> RedisConnection {
        self.connections().commands.clone()
    }

    fn connections(&self) -> std::sync::RwLockReadGuard<'_, Connections> {
        // Written only by a swap of whole values: a poisoned lock still holds valid ones.
        self.connections.read().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Only this worker's one task touches it; a poisoned lock still holds valid data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the entries of `reply` into the batch, if the replicas `confirmed` them; the
    /// registry stream's only wake the reader and are acknowledged at once.
    async fn take(&self, reply: StreamReadReply, confirmed: bool, batch: &mut Batch<EntryIds>) {
        for key in reply.keys {
            if key.key == self.registry_stream {
                self.refresh_streams();
                let ids: Vec<&str> = key.ids.iter().map(|e| e.id.as_str()).collect();
                let acked: Result<i64, RedisError> =
                    self.commands().xack(&key.key, &self.group, &ids).await;
                if let Err(err) = acked {
                    tracing::debug!(error = %err, "registry wake-up not acknowledged; harmless");
                }
                continue;
            }
            if !confirmed {
                tracing::warn!(
                    stream = %key.key, entries = key.ids.len(),
                    "entries read but not confirmed by the replicas: left pending, to be claimed again"
                );
                continue;
            }
            for entry in &key.ids {
                take_entry(batch, &key.key, entry);
            }
        }
    }
}

impl StreamQueue {
    /// After a read that failed: a Redis that lost the groups (restarted empty) has them
    /// created again; then a pause.
    async fn read_failed(&self, err: &RedisError) {
        if answered(err, "NOGROUP") {
            self.state().ready.clear();
            self.refresh_streams();
        }
        tracing::warn!(error = %err, "reading the coupon streams failed");
        let timeouts = {
            let mut state = self.state();
            state.timeouts = if err.is_timeout() {
                state.timeouts + 1
            } else {
                0
            };
            state.timeouts
        };
        if timeouts >= TIMEOUTS_BEFORE_RECONNECT && self.reader().is_cluster() {
            match Connections::open(&self.redis).await {
                Ok(fresh) => {
                    *self.connections.write().unwrap_or_else(|e| e.into_inner()) = fresh;
                    self.state().timeouts = 0;
                    tracing::warn!(
                        timeouts,
                        "the cluster connections timed out on every read: made again"
                    );
                }
                Err(err) => tracing::warn!(error = %err, "cannot connect to the cluster again"),
            }
        }
        sleep(ERROR_PAUSE).await;
    }
}

impl Connections {
    async fn open(redis: &RedisArgs) -> Result<Self, RedisSetupError> {
        Ok(Self {
            reader: redis.connect_blocking(READ_BLOCK).await?,
            commands: redis.connect().await?,
        })
    }
}

/// Adds one entry to the batch, and its id to what the batch will acknowledge.
fn take_entry(batch: &mut Batch<EntryIds>, stream: &str, entry: &StreamId) {
    batch.push(read(stream, entry));
    batch
        .receipt
        .entry(stream.to_owned())
        .or_default()
        .push(entry.id.clone());
}

/// Decodes one entry; anything that is not a v1 event is set aside with its fields.
fn read(stream: &str, entry: &StreamId) -> Consumed {
    let source = format!("redis:{stream}/{}", entry.id);
    let fields: HashMap<String, String> = entry
        .map
        .keys()
        .filter_map(|field| entry.get::<String>(field).map(|v| (field.clone(), v)))
        .collect();
    match IssueEvent::from_stream_fields(&fields) {
        Ok(event) => Consumed::Issue(SourcedIssue {
            event,
            source,
            trace: fields
                .get(trace_context::FIELD)
                .and_then(|value| TraceParent::parse(value)),
        }),
        Err(err) => Consumed::Undecodable(FailedEvent {
            reason: FailureReason::Undecodable,
            detail: err.to_string(),
            source,
            coupon_id: fields
                .get("couponId")
                .and_then(|v| v.parse::<CouponId>().ok())
                .map(CouponId::get),
            user_id: None,
            payload: serde_json::to_vec(&fields).unwrap_or_default(),
        }),
    }
}

impl IssueQueue for StreamQueue {
    type Receipt = EntryIds;

    async fn collect(
        &self,
        size: usize,
        linger: Duration,
        shutdown: &CancellationToken,
    ) -> Batch<EntryIds> {
        let mut batch = Batch::default();
        let mut deadline = None;
        while batch.len < size && !shutdown.is_cancelled() {
            // Between reads, so that claims and trims go on while the streams are quiet.
            self.maintain(&mut batch, size).await;
            if batch.len > 0 {
                deadline.get_or_insert_with(|| Instant::now() + linger);
            }
            let block = match deadline {
                None => READ_BLOCK,
                Some(at) if at > Instant::now() => (at - Instant::now()).min(READ_BLOCK),
                Some(_) => break,
            };
            let streams = match self.streams().await {
                Ok(streams) => streams,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot list the coupon streams");
                    sleep(ERROR_PAUSE).await;
                    continue;
                }
            };
            if self.reader().is_cluster() {
                if let Err(err) = self
                    .read_each(&streams, size - batch.len, block, &mut batch)
                    .await
                {
                    self.read_failed(&err).await;
                }
                if batch.len > 0 {
                    deadline.get_or_insert_with(|| Instant::now() + linger);
                }
                continue;
            }
            let read: Result<Read<Option<StreamReadReply>>, RedisError> = {
                let ids = vec![">"; streams.len()];
                let options = StreamReadOptions::default()
                    .group(&self.group, &self.consumer)
                    .count(size - batch.len)
                    .block(block.as_millis().max(1) as usize);
                self.read(
                    &self.reader(),
                    redis::Cmd::xread_options(&streams, &ids, &options),
                    None,
                )
                .await
            };
            match read {
                Ok(Read::Confirmed(Some(reply))) => self.take(reply, true, &mut batch).await,
                Ok(Read::Unconfirmed {
                    reply: Some(reply),
                    confirmed,
                    required,
                }) => {
                    tracing::debug!(confirmed, required, "a read the replicas did not confirm");
                    self.take(reply, false, &mut batch).await;
                    sleep(ERROR_PAUSE).await;
                }
                Ok(Read::Confirmed(None) | Read::Unconfirmed { reply: None, .. }) => {}
                Err(err) => self.read_failed(&err).await,
            }
            if batch.len > 0 {
                deadline.get_or_insert_with(|| Instant::now() + linger);
            }
        }
        batch
    }

    /// `failed_events` (written by the sink) is where poison entries are kept in this mode.
    async fn dead_letter(&self, _: &[FailedEvent]) -> Result<(), QueueError> {
        Ok(())
    }

    async fn acknowledge(&self, receipt: &EntryIds, _last: bool) -> Result<(), QueueError> {
        let mut pipe = redis::pipe();
        for (stream, ids) in receipt {
            pipe.xack(stream, &self.group, ids).ignore();
        }
        let () = pipe.query_async(&mut self.commands()).await?;
        Ok(())
    }

    /// Entries in hand stay pending under this consumer meanwhile; should the wait outlast
    /// `claim_idle`, another worker claims and persists them too, which the sink absorbs.
    async fn wait_between_retries(&self, delay: Duration) {
        sleep(delay).await;
    }

    fn retries_over(&self) {}

    /// Nothing to hand over: everything persisted was acknowledged, and what was not is
    /// claimed by the others once idle. This consumer leaves the groups where it holds
    /// nothing (elsewhere its name stays, with the entries, for a claim).
    async fn leave(&self) -> Result<(), QueueError> {
        let streams: Vec<String> = self.state().ready.iter().cloned().collect();
        for stream in streams {
            self.forget(&stream, &self.consumer, Duration::ZERO).await?;
        }
        Ok(())
    }
}

/// Whether Redis answered `code` (NOGROUP, say) to a command, alone or in a pipeline:
/// redis-rs reports a pipeline's server errors together, with no code of their own.
fn answered(err: &RedisError, code: &str) -> bool {
    err.code() == Some(code)
        || err
            .clone()
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(_, error)| error.code() == code))
}
