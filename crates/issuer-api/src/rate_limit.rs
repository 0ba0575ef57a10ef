//! Rate limits on the issue route, per user and per client address, shared by every API
//! replica without a round trip of their own.
//!
//! A request is counted in this instance's memory and judged there, against the shared
//! count Redis last answered plus what this instance counted since
//! ([`RateLimiter::check`], which awaits nothing but in a flood, below). Every `sync`
//! interval ([`RateLimiter::run`]) the counts of the interval are added to Redis's counters
//! (`scripts/rate_limit.lua`: one script run for up to 500 counters on one node, one per
//! counter on a cluster, where each is on a slot of its own), which answers each counter's
//! shared total: the next requests here are judged against it. A flash sale's request then
//! costs no Redis call of the limit's own.
//!
//! The overshoot, stated: an instance learns what the others counted only by syncing a
//! counter it counted itself, and a total Redis answers holds another replica's counts only
//! up to that replica's last sync: so it judges a client it keeps hearing from on counts
//! at most two sync intervals (and a round trip) old, and older after a pause. Within a
//! window a client gets the limit, plus what it sends the other replicas in those two
//! intervals, and after each pause of its requests to one of them; never more than the
//! limit on each replica, which judges its own counts at once (R times the limit over R
//! replicas at the very worst). While Redis does not answer, each instance limits on its
//! own; a sync that fails sends its counts again with the next (so once more for each
//! failed try, if a try did reach Redis: that errs on the side of refusing).
//!
//! The sharing, a sync in its three steps (counts taken, script run, reply) with a failure
//! after either, is checked exhaustively in `coupon-core/tests/rate_limit_model.rs`.
//!
//! Windows are the wall clock's (`unix ms / window`), read at every request, so every
//! replica and Redis agree on which window a count belongs to without asking, as long as
//! their clocks differ by less than a window. A counter's key names its window and expires
//! a window after it ends, as the replica reckons it (a relative expiry: Redis's own clock
//! does not matter). A clock stepped back starts the window it names again: a window is
//! never held open by a clock that went back.
//!
//! A finished gate's answer (`crate::issuing`'s `finished_gate`) is counted the same way,
//! so a client hammering a sold-out coupon is limited across replicas too.
//!
//! The client address is `crate::client_address`'s, IPv6 by its /64; every request whose
//! address cannot be told counts as one client, `unknown`, so a header a proxy writes
//! oddly cannot turn the per-address limit off. Past `most_counted_here` counters (a user
//! and an address are one each) in one window, a flood of them, a new client is counted
//! straight in Redis, one round trip per request, never let through uncounted (and while
//! Redis does not answer, such a client is answered 503).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coupon_core::domain::UserId;
use coupon_core::redis::connection::RedisConnection;
use coupon_core::redis::keys::CouponKeys;
use redis::{RedisError, Script};
use tokio_util::sync::CancellationToken;

use crate::client_address::one_client;
use crate::error::ApiError;
use crate::metrics::Metrics;

static RATE_LIMIT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/rate_limit.lua")));

/// How many issue requests a user, and a client address, may send per window.
#[derive(Debug, Clone)]
pub struct Limits {
    pub window: Duration,
    /// 0 is no limit.
    pub per_user: u32,
    /// 0 is no limit.
    pub per_address: u32,
    /// How often this instance's counts are added to the shared ones, and it learns theirs.
    pub sync: Duration,
    /// Most clients counted in this instance's memory in one window (each a few dozen
    /// bytes); past it, a new one is counted straight in Redis.
    pub most_counted_here: usize,
}

impl Limits {
    /// These limits, unless both are off.
    fn on(&self) -> Option<&Self> {
        (self.per_user > 0 || self.per_address > 0).then_some(self)
    }

    /// At least a millisecond, as the configuration requires.
    fn window_ms(&self) -> u64 {
        (self.window.as_millis() as u64).max(1)
    }
}

#[derive(Clone)]
pub struct RateLimiter {
    redis: RedisConnection,
    key_prefix: String,
    limits: Limits,
    counts: Arc<Mutex<Counts>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// The longest the last sync at shutdown may take (it runs beside the delivery's flush; a
/// sync already running when the stop came finishes first, each of its calls bounded by the
/// connection's timeout).
const LAST_SYNC: Duration = Duration::from_secs(1);

/// Most clients an instance counts in its memory in one window, unless set otherwise: a
/// few MB.
pub const MOST_COUNTED_HERE: usize = 100_000;

/// Most counters one script run adds to: each is two commands, and a script holds Redis
/// for its whole run.
const MOST_PER_RUN: usize = 500;

/// The counts of the current window.
struct Counts {
    /// The window's number (unix ms / window).
    window: u64,
    tallies: HashMap<Counter, Tally>,
    /// The counters with counts not sent yet: what the next sync sends, found without a
    /// scan of every tally under the lock each request waits for.
    unsent: Vec<Counter>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Counter {
    User(UserId),
    Address(Option<IpAddr>),
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    /// Every replica's count as Redis last answered it, plus what this instance sent since.
    shared: u32,
    /// Counted here and not sent yet.
    unsent: u32,
}

impl Tally {
    fn count(&self) -> u32 {
        self.shared.saturating_add(self.unsent)
    }
}

/// One sync's counts: the window they belong to, and each counter's.
struct Batch {
    window: u64,
    counts: Vec<(Counter, u32)>,
}

/// Counts added to the shared counters: each counter's total, or None where its script run
/// failed (the first such failure in `failed`).
struct Added {
    totals: Vec<Option<u64>>,
    failed: Option<RedisError>,
}

impl RateLimiter {
    pub fn new(redis: RedisConnection, key_prefix: String, limits: Limits) -> Self {
        Self {
            redis,
            key_prefix,
            limits,
            counts: Arc::new(Mutex::new(Counts {
                window: 0,
                tallies: HashMap::new(),
                unsent: Vec::new(),
            })),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts this request (a refused one too, so that a client that keeps hammering stays
    /// refused); 429 with the wait until the window ends if either limit is over.
    pub async fn check(&self, user: UserId, address: Option<IpAddr>) -> Result<(), ApiError> {
        let Some(limits) = self.limits.on() else {
            return Ok(());
        };
        let window_ms = limits.window_ms();
        let now = now_ms();
        let window = now / window_ms;
        let mut past_most = Vec::new();
        let mut over = {
            let mut guard = self.counts();
            let counts = &mut *guard;
            // A new window forgets the last one's counts, every client's at once, and the
            // memory a flood took with them; so does a clock stepped back.
            if window != counts.window {
                counts.window = window;
                counts.tallies = HashMap::new();
                counts.unsent = Vec::new();
            }
            let mut over = false;
            for (counter, limit) in [
                (Counter::User(user), limits.per_user),
                (Counter::Address(one_client(address)), limits.per_address),
            ] {
                if limit == 0 {
                    continue;
                }
                if counts.tallies.len() >= limits.most_counted_here
                    && !counts.tallies.contains_key(&counter)
                {
                    past_most.push((counter, limit));
                    continue;
                }
                let tally = counts.tallies.entry(counter).or_default();
                if tally.unsent == 0 {
                    counts.unsent.push(counter);
                }
                tally.unsent = tally.unsent.saturating_add(1);
                over |= tally.count() > limit;
            }
            over
        };
        // Past the most counted here, and not refused already by the counts here.
        if !over && !past_most.is_empty() {
            let counted: Vec<(Counter, u32)> =
                past_most.iter().map(|(counter, _)| (*counter, 1)).collect();
            let added = self.add(window, &counted).await;
            if let Some(err) = added.failed {
                return Err(err.into());
            }
            over |= past_most
                .iter()
                .zip(added.totals)
                .any(|((_, limit), total)| total.is_some_and(|total| total > u64::from(*limit)));
        }
        if over {
            return Err(ApiError::RateLimited {
                retry_after: Duration::from_millis(((window + 1) * window_ms - now).max(1)),
            });
        }
        Ok(())
    }

    /// Syncs every `sync` interval until `stop`, then once more (for at most
    /// [`LAST_SYNC`]), so that a replica shutting down hands its last counts to the others.
    pub async fn run(&self, metrics: Arc<Metrics>, stop: CancellationToken) {
        if self.limits.on().is_none() {
            return;
        }
        let mut ticks = tokio::time::interval(self.limits.sync.max(Duration::from_millis(1)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            let stopping = tokio::select! {
                biased;
                () = stop.cancelled() => true,
                _ = ticks.tick() => false,
            };
            let synced = if stopping {
                match tokio::time::timeout(LAST_SYNC, self.sync()).await {
                    Ok(synced) => synced,
                    Err(_) => {
                        tracing::warn!(
                            "the last rate-limit counts not shared: Redis did not answer in time"
                        );
                        return;
                    }
                }
            } else {
                self.sync().await
            };
            // Said once when the syncs start failing and once when they work again: at 50
            // syncs a second, a line each would flood the log through a Redis outage (the
            // metric counts every one).
            match synced {
                Ok(synced) => {
                    if synced > 0 {
                        metrics.rate_limit_syncs.inc();
                    }
                    if std::mem::take(&mut failing) {
                        tracing::info!("rate-limit counts shared again");
                    }
                }
                Err(err) => {
                    metrics.rate_limit_sync_failures.inc();
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(error = %err, "rate-limit counts not shared; each replica limits on its own until Redis answers");
                    }
                }
            }
            if stopping {
                return;
            }
        }
    }

    /// Adds what this instance counted since the last sync to the shared counters, and
    /// takes their totals for the next requests' judging; the counters synced. A counter
    /// whose run failed is sent again with the next sync (once more for each failed try
    /// that did reach Redis: that errs on the side of refusing).
    pub async fn sync(&self) -> Result<usize, RedisError> {
        if self.limits.on().is_none() {
            return Ok(0);
        }
        let batch = self.take_unsent();
        if batch.counts.is_empty() {
            return Ok(0);
        }
        let added = self.add(batch.window, &batch.counts).await;
        {
            let mut guard = self.counts();
            let counts = &mut *guard;
            // A window that ended meanwhile took its counts with it.
            if counts.window == batch.window {
                for ((counter, sent), total) in batch.counts.iter().zip(&added.totals) {
                    let Some(tally) = counts.tallies.get_mut(counter) else {
                        continue;
                    };
                    match total {
                        Some(total) => {
                            tally.shared =
                                tally.shared.max(u32::try_from(*total).unwrap_or(u32::MAX));
                        }
                        None => {
                            tally.shared = tally.shared.saturating_sub(*sent);
                            if tally.unsent == 0 {
                                counts.unsent.push(*counter);
                            }
                            tally.unsent = tally.unsent.saturating_add(*sent);
                        }
                    }
                }
            }
        }
        match added.failed {
            Some(err) => Err(err),
            None => Ok(batch.counts.len()),
        }
    }

    /// The counts not sent yet, moved to the shared ones (they are, once sent).
    fn take_unsent(&self) -> Batch {
        let mut guard = self.counts();
        let counts = &mut *guard;
        let sent = counts
            .unsent
            .drain(..)
            .filter_map(|counter| {
                let tally = counts.tallies.get_mut(&counter)?;
                let unsent = std::mem::take(&mut tally.unsent);
                tally.shared = tally.shared.saturating_add(unsent);
                Some((counter, unsent))
            })
            .collect();
        Batch {
            window: counts.window,
            counts: sent,
        }
    }

    /// Adds `counts` to window `window`'s shared counters, every script run side by side; a
    /// run that fails leaves the others' totals.
    async fn add(&self, window: u64, counts: &[(Counter, u32)]) -> Added {
        let window_ms = self.limits.window_ms();
        // A window after the counter's window ends (a replica whose clock is behind still
        // finds its count there), from now: relative, so Redis's clock does not matter.
        let expire_in = ((window + 2) * window_ms).saturating_sub(now_ms()).max(1);
        let keys: Vec<String> = counts
            .iter()
            .map(|(counter, _)| self.key(*counter, window))
            .collect();
        // On a cluster each counter is on a slot of its own (its own hash tag: no shard sees
        // every request), and a script takes the keys of one slot.
        let per_run = if self.redis.is_cluster() {
            1
        } else {
            MOST_PER_RUN
        };
        let all: Vec<usize> = (0..keys.len()).collect();
        let runs: Vec<&[usize]> = all.chunks(per_run).collect();
        let answers = futures_util::future::join_all(runs.iter().map(|run| {
            let mut invocation = RATE_LIMIT.prepare_invoke();
            invocation.arg(expire_in);
            for &at in *run {
                invocation.key(&keys[at]).arg(counts[at].1);
            }
            let mut redis = self.redis.clone();
            async move { invocation.invoke_async::<Vec<u64>>(&mut redis).await }
        }))
        .await;
        let mut added = Added {
            totals: vec![None; counts.len()],
            failed: None,
        };
        for (run, answer) in runs.iter().zip(answers) {
            match answer {
                Ok(totals) => {
                    for (&at, total) in run.iter().zip(totals) {
                        added.totals[at] = Some(total);
                    }
                }
                Err(err) => {
                    added.failed.get_or_insert(err);
                }
            }
        }
        added
    }

    fn key(&self, counter: Counter, window: u64) -> String {
        let prefix = &self.key_prefix;
        match counter {
            Counter::User(user) => CouponKeys::rate_of_user(prefix, user, window),
            Counter::Address(address) => CouponKeys::rate_of_address(prefix, address, window),
        }
    }
}
