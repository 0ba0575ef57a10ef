//! The coupons requests found unverified, gathered into one rebuild.
//!
//! A failover or a lost Redis leaves every coupon unverified at once, and the first request
//! for each starts its rebuild. Rebuilt one by one, each waits its own in-flight window,
//! fences, waits for the workers and takes a PostgreSQL connection, and fifty of them at once
//! ran the pool dry and failed over and over (the chaos suite's 503s after each Redis fault).
//! Gathered for a moment, the coupons asked for meanwhile share one rebuild. A coupon whose
//! rebuild is under way here is not asked for again until it ends.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
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

    /// Asks for `coupon`'s rebuild. A [`Gathering`] when the caller is to start one: wait
    /// [`GATHERING`], take what was asked for and rebuild it. None when the coupon joins a
    /// gathering under way, or its rebuild is under way already.
    pub fn ask(self: &Arc<Self>, coupon: CouponId) -> Option<Gathering> {
        let mut state = self.state();
        if state.running.contains(&coupon) || !state.waiting.insert(coupon) {
            return None;
        }
        (state.waiting.len() == 1).then(|| Gathering {
            lazy: self.clone(),
            taken: None,
        })
    }

    /// Whether `coupon`'s rebuild is asked for or under way here.
    pub fn asked(&self, coupon: CouponId) -> bool {
        let state = self.state();
        state.waiting.contains(&coupon) || state.running.contains(&coupon)
    }
}

/// One gathering, from the first ask to the end of its rebuild. However it ends (its task
/// cancelled at shutdown, say), its coupons may be asked for again.
pub struct Gathering {
    lazy: Arc<LazyRebuilds>,
    taken: Option<Vec<CouponId>>,
}

impl Gathering {
    /// Ends the gathering: what was asked for is running from now on.
    pub fn take(&mut self) -> Vec<CouponId> {
        let mut state = self.lazy.state();
        let taken: Vec<CouponId> = std::mem::take(&mut state.waiting).into_iter().collect();
        state.running.extend(&taken);
        self.taken = Some(taken.clone());
        taken
    }
}

impl Drop for Gathering {
    fn drop(&mut self) {
        let taken = match self.taken.take() {
            Some(taken) => taken,
            None => self.take(),
        };
        let mut state = self.lazy.state();
        for coupon in &taken {
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
        let lazy = Arc::new(LazyRebuilds::default());
        let mut gathering = lazy.ask(coupon(1)).expect("the first ask gathers");
        assert!(lazy.ask(coupon(2)).is_none(), "the second joins it");
        assert!(lazy.ask(coupon(1)).is_none(), "asked twice, counted once");
        assert_eq!(gathering.take(), vec![coupon(1), coupon(2)]);
    }

    #[test]
    fn a_coupon_being_rebuilt_is_not_asked_for_again_until_its_rebuild_ends() {
        let lazy = Arc::new(LazyRebuilds::default());
        let mut first = lazy.ask(coupon(1)).expect("gathers");
        assert_eq!(first.take(), vec![coupon(1)]);
        assert!(lazy.ask(coupon(1)).is_none(), "running: no second rebuild");
        assert!(lazy.asked(coupon(1)));
        let mut second = lazy.ask(coupon(2)).expect("another coupon gathers anew");
        assert_eq!(second.take(), vec![coupon(2)]);
        drop(first);
        assert!(!lazy.asked(coupon(1)), "ended (failed, say): free again");
        assert!(lazy.ask(coupon(1)).is_some(), "asked for again");
    }

    #[test]
    fn a_gathering_dropped_before_it_took_frees_what_was_asked_for() {
        let lazy = Arc::new(LazyRebuilds::default());
        let gathering = lazy.ask(coupon(1)).expect("gathers");
        assert!(lazy.ask(coupon(2)).is_none());
        drop(gathering);
        assert!(!lazy.asked(coupon(1)) && !lazy.asked(coupon(2)));
        assert!(lazy.ask(coupon(2)).is_some(), "a new gathering starts");
    }
}
