//! The finished gate: once admission has answered SOLD_OUT or ENDED for a coupon, this
//! instance answers that coupon's requests from memory for a while (ISSUER_FINISHED_GATE_MS),
//! without Redis. Most of a flash sale's requests come after its stock is gone (4,500 of
//! 5,000 in the seed's experiment), and each cost a Redis round trip.
//!
//! What SOLD_OUT (or ENDED) then means: admission found no stock (or the window closed)
//! at most that long ago. Stock that comes back to a sold-out coupon (a slot given back, a
//! raised quantity) is held in Redis for as long before it is sold (`coupon-core`'s
//! `scripts/stock_hold.lua`), and a rebuild opens no sooner than that after it closed the
//! coupon (`rebuild`), so every gate shut before has run out by then; a refusal while stock
//! is held shuts no gate. So no gate tells a user admitted on returned stock SOLD_OUT
//! (`coupon-core/tests/finished_gate_model.rs`). Only a coupon of one bucket is gated: a
//! bucketed coupon's stock moves through the movers' steps, which hold none of it.
//!
//! Holders keep their true answer. The gate is shut only with a snapshot of the state's
//! holders read after the refusal (`scripts/holders.lua`, under the stamp in force): a user
//! holding a slot is answered ALREADY_ISSUED, as admission would; a user whose slot is still
//! pending (their event not acknowledged) is sent to admission, which knows whether they
//! keep it. A settled slot never goes away, and a user admitted after the snapshot was
//! admitted on stock that came back, after every gate shut before it had run out. Where no
//! snapshot can be read (the state is being verified again, or holds more than
//! [`MOST_HOLDERS`]), the gate stays open.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use coupon_core::domain::{Admission, CouponId, UserId};
use coupon_core::redis::admission::Holders;

/// The most holders a gate keeps for one coupon: their snapshot is read once per coupon and
/// gate time, and one of 100,000 users costs Redis about 10 ms (an SMEMBERS) and this
/// instance about 3 MiB. A larger coupon is answered by admission every time.
pub const MOST_HOLDERS: usize = 100_000;

/// The gates of every coupon this instance has seen finished.
pub struct FinishedGates {
    /// How long a gate answers once shut; zero turns the gates off.
    hold: Duration,
    shut: RwLock<HashMap<CouponId, Shut>>,
}

/// One coupon's gate, shut.
struct Shut {
    answer: Admission,
    until: Instant,
    /// Users with a settled slot: answered ALREADY_ISSUED.
    holders: HashSet<i64>,
    /// Users whose slot may still go: admission decides.
    pending: HashSet<i64>,
}

impl FinishedGates {
    pub fn new(hold: Duration) -> Self {
        Self {
            hold,
            shut: RwLock::default(),
        }
    }

    /// Whether refusals are kept at all.
    pub fn enabled(&self) -> bool {
        !self.hold.is_zero()
    }

    /// How long a gate answers once shut.
    pub fn hold(&self) -> Duration {
        self.hold
    }

    /// The answer the gate gives `user` for `coupon`, or None: ask admission.
    pub fn answer(&self, coupon: CouponId, user: UserId) -> Option<Admission> {
        let shut = self
            .shut
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let gate = shut.get(&coupon)?;
        let user = user.get();
        if Instant::now() >= gate.until || gate.pending.contains(&user) {
            return None;
        }
        Some(if gate.holders.contains(&user) {
            Admission::AlreadyIssued
        } else {
            gate.answer
        })
    }

    /// Shuts `coupon`'s gate on `answer` (SOLD_OUT or ENDED), which admission gave at
    /// `refused`, with `holders` read after it: it answers until `refused` plus the hold.
    pub fn shut(&self, coupon: CouponId, answer: Admission, refused: Instant, holders: Holders) {
        let pending: HashSet<i64> = holders.pending.into_iter().collect();
        let gate = Shut {
            answer,
            until: refused + self.hold,
            holders: holders
                .issued
                .into_iter()
                .filter(|user| !pending.contains(user))
                .collect(),
            pending,
        };
        let mut shut = self
            .shut
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        // Gates whose time ran out go here, not on the requests' path: a coupon's gate is
        // shut again only by one of its own refusals.
        shut.retain(|_, gate| gate.until > now);
        shut.insert(coupon, gate);
    }
}

#[cfg(test)]
// A panic is exactly the failure report wanted here.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn coupon() -> CouponId {
        CouponId::new(1).unwrap()
    }

    fn user(id: i64) -> UserId {
        UserId::new(id).unwrap()
    }

    fn shut_for(hold: Duration, refused: Instant) -> FinishedGates {
        let gates = FinishedGates::new(hold);
        let holders = Holders {
            issued: vec![1, 2],
            pending: vec![2],
        };
        gates.shut(coupon(), Admission::SoldOut, refused, holders);
        gates
    }

    #[test]
    fn a_shut_gate_tells_holders_their_slot_sends_pending_users_to_admission_and_refuses_the_rest()
    {
        let gates = shut_for(Duration::from_secs(60), Instant::now());
        assert_eq!(
            gates.answer(coupon(), user(1)),
            Some(Admission::AlreadyIssued)
        );
        assert_eq!(gates.answer(coupon(), user(2)), None);
        assert_eq!(gates.answer(coupon(), user(3)), Some(Admission::SoldOut));
        let other = CouponId::new(2).unwrap();
        assert_eq!(gates.answer(other, user(3)), None);
    }

    #[test]
    fn a_gate_answers_no_longer_than_its_hold_after_the_refusal() {
        let hold = Duration::from_millis(500);
        let gates = shut_for(hold, Instant::now() - hold);
        assert_eq!(gates.answer(coupon(), user(3)), None);
    }
}
