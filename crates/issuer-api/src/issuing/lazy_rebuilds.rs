//! The coupons requests found unverified, gathered into one rebuild.
//!
//! A failover or a lost Redis leaves every coupon unverified at once, and the first request
//! for each starts its rebuild. Rebuilt one by one, each waits its own in-flight window,
//! fences, waits for the workers and takes a PostgreSQL connection, and fifty of them at once
//! ran the pool dry and failed over and over (the chaos suite's 503s after each Redis fault).
//! Gathered for a moment, the coupons asked for meanwhile share one rebuild. A coupon whose
//! rebuild is under way here is not asked for again until it ends.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use coupon_core::domain::CouponId;

/// How long the first ask waits for others to join its rebuild.
pub const GATHERING: Duration = Duration::from_millis(50);

#[derive(Default)]
pub struct LazyRebuilds {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Asked for, waiting for the gathering under way to end.
    waiting: BTreeSet<CouponId>,
    /// In a rebuild started here and not ended yet.
    running: BTreeSet<CouponId>,
}

impl LazyRebuilds {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks for `coupon`'s rebuild. True when the caller is to start a gathering: wait
    /// [`GATHERING`], [`LazyRebuilds::take`] and rebuild what it returns. False when the
    /// coupon joins a gathering under way, or its rebuild is under way already.
    pub fn ask(&self, coupon: CouponId) -> bool {
        let mut state = self.state();
        if state.running.contains(&coupon) || !state.waiting.insert(coupon) {
            return false;
        }
        state.waiting.len() == 1
    }

    /// Ends the gathering: what was asked for is running from now on.
    pub fn take(&self) -> Vec<CouponId> {
        let mut state = self.state();
        let taken = std::mem::take(&mut state.waiting);
        state.running.extend(&taken);
        taken.into_iter().collect()
    }

    /// The rebuild of `coupons` ended, restored or not: they may be asked for again.
    pub fn ended(&self, coupons: &[CouponId]) {
        let mut state = self.state();
        for coupon in coupons {
            state.running.remove(coupon);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coupon(id: i64) -> CouponId {
        CouponId::new(id).expect("a valid id")
    }

    #[test]
    fn coupons_asked_for_while_one_gathers_share_its_rebuild() {
        let lazy = LazyRebuilds::default();
        assert!(lazy.ask(coupon(1)), "the first ask gathers");
        assert!(!lazy.ask(coupon(2)), "the second joins it");
        assert!(!lazy.ask(coupon(1)), "asked twice, counted once");
        assert_eq!(lazy.take(), vec![coupon(1), coupon(2)]);
    }

    #[test]
    fn a_coupon_being_rebuilt_is_not_asked_for_again_until_its_rebuild_ends() {
        let lazy = LazyRebuilds::default();
        assert!(lazy.ask(coupon(1)));
        assert_eq!(lazy.take(), vec![coupon(1)]);
        assert!(!lazy.ask(coupon(1)), "running: no second rebuild");
        assert!(lazy.ask(coupon(2)), "another coupon gathers anew");
        assert_eq!(lazy.take(), vec![coupon(2)]);
        lazy.ended(&[coupon(1)]);
        assert!(lazy.ask(coupon(1)), "ended (failed, say): asked for again");
        assert_eq!(lazy.take(), vec![coupon(1)]);
    }
}
