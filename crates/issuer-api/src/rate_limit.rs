//! Rate limits on the issue route, per user and per client address, in Redis so that every
//! API replica shares them: one script run (`scripts/rate_limit.lua`), one extra round trip
//! per request, before admission.
//!
//! The client address is `crate::client_address`'s; every request whose address cannot be
//! told counts as one client, `unknown`, so a header a proxy writes oddly cannot turn the
//! per-address limit off.

use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::Duration;

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

#[derive(Clone)]
pub struct RateLimiter {
    redis: RedisConnection,
    key_prefix: String,
    limits: Limits,
}

impl RateLimiter {
    pub fn new(redis: RedisConnection, key_prefix: String, limits: Limits) -> Self {
        Self {
            redis,
            key_prefix,
            limits,
        }
    }

    /// Counts this request; 429 with the wait if either limit is over.
    pub async fn check(&self, user: UserId, address: Option<IpAddr>) -> Result<(), ApiError> {
        let Limits {
            window,
            per_user,
            per_address,
        } = &self.limits;
        if *per_user == 0 && *per_address == 0 {
            return Ok(());
        }
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
