//! Rate limits on the issue route, per user and per client address, in Redis so that every
//! API replica shares them: one script run (`scripts/rate_limit.lua`), one extra round trip
//! per request, before admission.
//!
//! A request a finished gate answers from memory (`crate::issuing`'s `finished_gate`) asks
//! Redis nothing, and its limit is counted in this instance's memory instead
//! ([`RateLimiter::check_here`]): a round trip to count a request that costs no other one
//! would halve a sold-out sale's rate. The limits then hold per instance for such answers:
//! a client spread over R replicas gets at most R times each limit of them per window,
//! beside the limit of the requests Redis counts.
//!
//! The client address is `crate::client_address`'s; every request whose address cannot be
//! told counts as one client, `unknown`, so a header a proxy writes oddly cannot turn the
//! per-address limit off.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use coupon_core::domain::UserId;
use coupon_core::redis::connection::RedisConnection;
use coupon_core::redis::keys::CouponKeys;
use redis::Script;

use crate::error::ApiError;

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
}

impl Limits {
    /// These limits, unless both are off.
    fn on(&self) -> Option<&Self> {
        (self.per_user > 0 || self.per_address > 0).then_some(self)
    }
}

#[derive(Clone)]
pub struct RateLimiter {
    redis: RedisConnection,
    key_prefix: String,
    limits: Limits,
    here: Arc<Mutex<CountedHere>>,
}

/// Most clients counted in this instance's memory in one window; past it, a client not
/// counted yet is let through uncounted (a flood of addresses costs memory up to here,
/// never more; what it is let through costs no Redis).
const MOST_COUNTED_HERE: usize = 100_000;

/// The requests counted in this instance's memory, in the current window.
struct CountedHere {
    /// Windows (of `Limits::window`) are counted from here, on the monotonic clock.
    since: Instant,
    /// The current window's number: it only moves forward.
    window: u64,
    counts: HashMap<Counter, u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Counter {
    User(UserId),
    Address(Option<IpAddr>),
}

impl RateLimiter {
    pub fn new(redis: RedisConnection, key_prefix: String, limits: Limits) -> Self {
        Self {
            redis,
            key_prefix,
            limits,
            here: Arc::new(Mutex::new(CountedHere {
                since: Instant::now(),
                window: 0,
                counts: HashMap::new(),
            })),
        }
    }

    /// Counts a request answered without Redis in this instance's memory; 429 with the
    /// wait if either limit is over here.
    pub fn check_here(&self, user: UserId, address: Option<IpAddr>) -> Result<(), ApiError> {
        let Some(limits) = self.limits.on() else {
            return Ok(());
        };
        // At least a millisecond, as the configuration requires.
        let window_ms = (limits.window.as_millis() as u64).max(1);
        let mut here = self
            .here
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now_ms = here.since.elapsed().as_millis() as u64;
        let current = now_ms / window_ms;
        // A new window forgets the last one's counts, every client's at once, and the
        // memory a flood took with them.
        if current > here.window {
            here.window = current;
            here.counts = HashMap::new();
        }
        let mut over = false;
        for (counter, limit) in [
            (Counter::User(user), limits.per_user),
            (Counter::Address(address), limits.per_address),
        ] {
            if limit == 0 {
                continue;
            }
            if here.counts.len() >= MOST_COUNTED_HERE && !here.counts.contains_key(&counter) {
                continue;
            }
            let count = here.counts.entry(counter).or_default();
            *count = count.saturating_add(1);
            over |= *count > limit;
        }
        if over {
            return Err(ApiError::RateLimited {
                retry_after: Duration::from_millis((here.window + 1) * window_ms - now_ms),
            });
        }
        Ok(())
    }

    /// Counts this request; 429 with the wait if either limit is over.
    pub async fn check(&self, user: UserId, address: Option<IpAddr>) -> Result<(), ApiError> {
        let Some(Limits {
            window,
            per_user,
            per_address,
        }) = self.limits.on()
        else {
            return Ok(());
        };
        let prefix = &self.key_prefix;
        let counters: Vec<(String, u32)> = [
            (CouponKeys::rate_of_user(prefix, user), *per_user),
            (CouponKeys::rate_of_address(prefix, address), *per_address),
        ]
        .into_iter()
        .filter(|(_, limit)| *limit > 0)
        .collect();
        // One script run for both counters on one node. On a cluster each counter is on a
        // slot of its own (no shard sees every request), and one script cannot take keys
        // of two slots: one run each, side by side.
        let runs: Vec<&[(String, u32)]> = if self.redis.is_cluster() {
            counters.chunks(1).collect()
        } else {
            vec![&counters[..]]
        };
        let waits = futures_util::future::try_join_all(runs.into_iter().map(|run| {
            let mut invocation = RATE_LIMIT.prepare_invoke();
            invocation.arg(window.as_millis() as u64);
            for (key, limit) in run {
                invocation.key(key).arg(limit);
            }
            let mut redis = self.redis.clone();
            async move { invocation.invoke_async::<u64>(&mut redis).await }
        }))
        .await?;
        let wait_ms = waits.into_iter().max().unwrap_or(0);
        match wait_ms {
            0 => Ok(()),
            ms => Err(ApiError::RateLimited {
                retry_after: Duration::from_millis(ms),
            }),
        }
    }
}
