//! Failed authentication, throttled per client address: past a few failures in a window,
//! the address's requests are answered 429 before any credential is looked at, so an
//! admin token or a gateway secret cannot be guessed online.
//!
//! In each instance's memory, not Redis: a key every failed request touches would be
//! a hot key an attacker writes to at will, and a shared counter would let one attacker
//! lock every admin out everywhere. Only failures count, and only the address that failed
//! is throttled. IPv6 addresses count by their /64, which one client usually holds whole.
//!
//! Hand-written rather than `governor`'s keyed limiter: that one spends a unit on every
//! check, and here the check (before authenticating) must not spend, only a failure does.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::client_address::one_client;

/// Most addresses tracked at once; past it the expired ones are forgotten first, then all
/// (a flood of addresses costs memory up to here, never more).
const MAX_TRACKED: usize = 100_000;

pub struct AuthThrottle {
    limit: u32,
    window: Duration,
    strikes: Mutex<HashMap<Option<IpAddr>, Strikes>>,
}

#[derive(Debug, Clone, Copy)]
struct Strikes {
    since: Instant,
    failures: u32,
}

impl AuthThrottle {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            strikes: Mutex::default(),
        }
    }

    /// How long `address` must wait, if it has failed too often in this window.
    pub fn refused(&self, address: Option<IpAddr>) -> Option<Duration> {
        let strikes = self.strikes.lock().unwrap_or_else(|p| p.into_inner());
        let held = strikes.get(&one_client(address))?;
        let left = self.window.checked_sub(held.since.elapsed())?;
        (held.failures >= self.limit).then_some(left)
    }

    /// Counts a failed authentication from `address`.
    pub fn failed(&self, address: Option<IpAddr>) {
        let mut strikes = self.strikes.lock().unwrap_or_else(|p| p.into_inner());
        if strikes.len() >= MAX_TRACKED {
            strikes.retain(|_, held| held.since.elapsed() < self.window);
            if strikes.len() >= MAX_TRACKED {
                tracing::warn!(
                    tracked = strikes.len(),
                    "too many addresses failing authentication; their counts start over"
                );
                strikes.clear();
            }
        }
        let now = Instant::now();
        let held = strikes.entry(one_client(address)).or_insert(Strikes {
            since: now,
            failures: 0,
        });
        if held.since.elapsed() >= self.window {
            *held = Strikes {
                since: now,
                failures: 0,
            };
        }
        held.failures += 1;
        if held.failures == self.limit {
            // Once per address and window; the token itself is never logged.
            tracing::warn!(
                address = ?address,
                failures = held.failures,
                window_ms = self.window.as_millis() as u64,
                "failed authentications from this address: throttled until the window ends"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_past_the_limit_throttle_and_only_their_address() {
        let throttle = AuthThrottle::new(3, Duration::from_secs(60));
        let (attacker, other) = (
            Some("10.0.0.66".parse().unwrap()),
            Some("10.0.0.1".parse().unwrap()),
        );
        for _ in 0..2 {
            throttle.failed(attacker);
            assert_eq!(throttle.refused(attacker), None);
        }
        throttle.failed(attacker);
        assert!(throttle.refused(attacker).is_some());
        assert_eq!(throttle.refused(other), None);
        assert_eq!(throttle.refused(None), None);
    }

    #[test]
    fn one_ipv6_client_is_its_slash_64() {
        let throttle = AuthThrottle::new(2, Duration::from_secs(60));
        throttle.failed(Some("2001:db8:0:1::1".parse().unwrap()));
        throttle.failed(Some("2001:db8:0:1::2".parse().unwrap()));
        assert!(
            throttle
                .refused(Some("2001:db8:0:1::ffff".parse().unwrap()))
                .is_some()
        );
        assert_eq!(
            throttle.refused(Some("2001:db8:0:2::1".parse().unwrap())),
            None
        );
    }

    #[test]
    fn ipv4_clients_written_as_ipv6_are_each_themselves() {
        let throttle = AuthThrottle::new(1, Duration::from_secs(60));
        throttle.failed(Some("::ffff:10.0.0.66".parse().unwrap()));
        assert!(
            throttle
                .refused(Some("10.0.0.66".parse().unwrap()))
                .is_some()
        );
        assert_eq!(
            throttle.refused(Some("::ffff:10.0.0.1".parse().unwrap())),
            None
        );
    }

    #[test]
    fn the_window_ends_the_throttle() {
        let throttle = AuthThrottle::new(1, Duration::from_millis(1));
        throttle.failed(None);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(throttle.refused(None), None);
    }
}
