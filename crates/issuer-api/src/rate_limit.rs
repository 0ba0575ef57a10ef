//! Rate limits on the issue route, per user and per client address, shared by every API
//! replica without a round trip of their own.
//!
//! A request is counted in this instance's memory and judged there, against the shared
//! count Redis last answered plus what this instance counted since
//! ([`RateLimiter::check`], no await). Every `sync` interval ([`RateLimiter::run`]) the
//! counts of the interval are added to Redis's counters in one script run per node
//! (`scripts/rate_limit.lua`), which answers each counter's shared total: the next
//! requests here are judged against it. A flash sale's request then costs no Redis call of
//! the limit's own; Redis sees one call per interval and node, not one per request.
//!
//! The overshoot, stated: an instance learns what the others counted one sync interval
//! (and a round trip) late, and only for a client it counted itself this window. So within
//! a window a client gets at most the limit, plus what it sends each other replica in the
//! interval after that replica first sees it; never more than the limit on each replica
//! (each judges its own counts at once). Redis down: each instance still limits on its own.
//!
//! Windows are the wall clock's (`unix ms / window`), so every replica and Redis agree on
//! which window a count belongs to without asking: a counter's key names its window, and
//! expires a window after it ends (room for the replicas' clocks to differ).
//!
//! A finished gate's answer (`crate::issuing`'s `finished_gate`) is counted the same way,
//! so a client hammering a sold-out coupon is limited across replicas too.
//!
//! The client address is `crate::client_address`'s; every request whose address cannot be
//! told counts as one client, `unknown`, so a header a proxy writes oddly cannot turn the
//! per-address limit off.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coupon_core::domain::UserId;
use coupon_core::redis::connection::RedisConnection;
use coupon_core::redis::keys::CouponKeys;
use redis::{RedisError, Script};
use tokio_util::sync::CancellationToken;

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

/// Most clients counted in this instance's memory in one window; past it, a client not
/// counted yet is let through uncounted (a flood of addresses costs memory up to here,
/// never more).
const MOST_COUNTED_HERE: usize = 100_000;

/// Most counters one script run adds to: each is two commands, and a script holds Redis
/// for its whole run.
const MOST_PER_RUN: usize = 500;

/// The counts of the current window.
struct Counts {
    /// The window's number (unix ms / window): it only moves forward, whatever the clock.
    window: u64,
    tallies: HashMap<Counter, Tally>,
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
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
    pub fn check(&self, user: UserId, address: Option<IpAddr>) -> Result<(), ApiError> {
        let Some(limits) = self.limits.on() else {
            return Ok(());
        };
        let window_ms = limits.window_ms();
        let now = now_ms();
        let mut counts = self.counts();
        // A new window forgets the last one's counts, every client's at once, and the
        // memory a flood took with them.
        if now / window_ms > counts.window {
            counts.window = now / window_ms;
            counts.tallies = HashMap::new();
        }
        let mut over = false;
        for (counter, limit) in [
            (Counter::User(user), limits.per_user),
            (Counter::Address(address), limits.per_address),
        ] {
            if limit == 0 {
                continue;
            }
            if counts.tallies.len() >= MOST_COUNTED_HERE && !counts.tallies.contains_key(&counter) {
                continue;
            }
            let tally = counts.tallies.entry(counter).or_default();
            tally.unsent = tally.unsent.saturating_add(1);
            over |= tally.count() > limit;
        }
        if over {
            // Until the window ends, and never longer than a window (a clock set back).
            let ends = (counts.window + 1) * window_ms;
            return Err(ApiError::RateLimited {
                retry_after: Duration::from_millis(ends.saturating_sub(now).clamp(1, window_ms)),
            });
        }
        Ok(())
    }

    /// Syncs every `sync` interval until `stop`, then once more, so that a replica shutting
    /// down hands its last counts to the others.
    pub async fn run(&self, metrics: Arc<Metrics>, stop: CancellationToken) {
        if self.limits.on().is_none() {
            return;
        }
        let mut ticks = tokio::time::interval(self.limits.sync);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = ticks.tick() => false,
                () = stop.cancelled() => true,
            };
            match self.sync().await {
                Ok(0) => {}
                Ok(_) => {
                    metrics.rate_limit_syncs.inc();
                }
                Err(err) => {
                    metrics.rate_limit_sync_failures.inc();
                    tracing::warn!(error = %err, "rate limit counts not shared this interval; each replica limits on its own until Redis answers");
                }
            }
            if stopping {
                return;
            }
        }
    }

    /// Adds what this instance counted since the last sync to the shared counters, and
    /// takes their totals for the next requests' judging; the counters synced.
    pub async fn sync(&self) -> Result<usize, RedisError> {
        let Some(limits) = self.limits.on() else {
            return Ok(0);
        };
        let batch = self.take_unsent();
        if batch.counts.is_empty() {
            return Ok(0);
        }
        let window_ms = limits.window_ms();
        // A window after the counter's window ends: a replica whose clock is behind still
        // finds its count there.
        let expire_at = (batch.window + 2) * window_ms;
        let keys: Vec<String> = batch
            .counts
            .iter()
            .map(|(counter, _)| self.key(*counter, batch.window))
            .collect();
        // One run per chunk on one node. On a cluster each counter is on a slot of its own
        // (its own hash tag: no shard sees every request), and a script takes the keys of
        // one slot: one run each, side by side.
        let per_run = if self.redis.is_cluster() {
            1
        } else {
            MOST_PER_RUN
        };
        let all: Vec<usize> = (0..keys.len()).collect();
        let runs: Vec<&[usize]> = all.chunks(per_run).collect();
        let totals = futures_util::future::try_join_all(runs.iter().map(|run| {
            let mut invocation = RATE_LIMIT.prepare_invoke();
            invocation.arg(expire_at);
            for &at in *run {
                invocation.key(&keys[at]).arg(batch.counts[at].1);
            }
            let mut redis = self.redis.clone();
            async move { invocation.invoke_async::<Vec<u64>>(&mut redis).await }
        }))
        .await?;
        let mut counts = self.counts();
        // A window that ended meanwhile took its counts with it.
        if counts.window == batch.window {
            for (run, totals) in runs.iter().zip(totals) {
                for (&at, total) in run.iter().zip(totals) {
                    let tally = counts.tallies.entry(batch.counts[at].0).or_default();
                    tally.shared = tally.shared.max(u32::try_from(total).unwrap_or(u32::MAX));
                }
            }
        }
        Ok(batch.counts.len())
    }

    /// The counts not sent yet, moved to the shared ones (they are, once sent: a sync that
    /// fails keeps them counted here, never forgets them).
    fn take_unsent(&self) -> Batch {
        let mut counts = self.counts();
        let window = counts.window;
        let counts = counts
            .tallies
            .iter_mut()
            .filter(|(_, tally)| tally.unsent > 0)
            .map(|(counter, tally)| {
                let unsent = std::mem::take(&mut tally.unsent);
                tally.shared = tally.shared.saturating_add(unsent);
                (*counter, unsent)
            })
            .collect();
        Batch { window, counts }
    }

    fn key(&self, counter: Counter, window: u64) -> String {
        let prefix = &self.key_prefix;
        match counter {
            Counter::User(user) => CouponKeys::rate_of_user(prefix, user, window),
            Counter::Address(address) => CouponKeys::rate_of_address(prefix, address, window),
        }
    }
}
