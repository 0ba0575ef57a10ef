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
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use coupon_core::domain::{Admission, CouponId, UserId};
use coupon_core::redis::admission::Holders;

/// The most holders a gate keeps for one coupon: one request at a time reads them, once
/// per coupon and gate time, and 100,000 users cost Redis about 10 ms (an SMEMBERS) and this
/// instance about 3 MiB. A larger coupon is answered by admission every time.
pub const MOST_HOLDERS: usize = 100_000;

/// The longest hold a gate may have (ISSUER_FINISHED_GATE_MS's bound). A rebuild and a
/// hand-over reopen a coupon no sooner than this after they closed it, whatever this
/// process's own setting: they are rare, and the APIs' gates may be set longer than theirs.
pub const LONGEST_HOLD: Duration = Duration::from_millis(1_000);

/// The gates of every coupon this instance has seen finished.
pub struct FinishedGates {
    /// How long a gate answers once shut; zero turns the gates off.
    hold: Duration,
    gates: RwLock<Gates>,
    /// The coupons whose holders a request is reading now, to shut their gate.
    reading: Mutex<HashSet<CouponId>>,
}

#[derive(Default)]
struct Gates {
    shut: HashMap<CouponId, Shut>,
    /// Moved by every [`FinishedGates::open_all`]: a gate whose refusal came before it is
    /// not shut.
    generation: u64,
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

/// A request's turn to read a coupon's holders and shut its gate; the next request may
/// take it once this one is dropped.
pub struct ShutTurn<'a> {
    gates: &'a FinishedGates,
    coupon: CouponId,
}

impl Drop for ShutTurn<'_> {
    fn drop(&mut self) {
        self.gates
            .reading
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.coupon);
    }
}

impl FinishedGates {
    pub fn new(hold: Duration) -> Self {
        Self {
            hold,
            gates: RwLock::default(),
            reading: Mutex::default(),
        }
    }

    /// Whether refusals are kept at all.
    pub fn enabled(&self) -> bool {
        !self.hold.is_zero()
    }

    /// The answer the gate gives `user` for `coupon`, or None: ask admission.
    pub fn answer(&self, coupon: CouponId, user: UserId) -> Option<Admission> {
        let gates = self
            .gates
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let gate = gates.shut.get(&coupon)?;
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

    /// What to pass to [`FinishedGates::shut`] for a refusal about to be asked for.
    pub fn generation(&self) -> u64 {
        self.gates
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .generation
    }

    /// The turn to read `coupon`'s holders, unless the gates are off, another request has
    /// it, or the coupon's gate is shut and answering already.
    pub fn turn(&self, coupon: CouponId) -> Option<ShutTurn<'_>> {
        if !self.enabled() {
            return None;
        }
        let now = Instant::now();
        let gates = self
            .gates
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if gates.shut.get(&coupon).is_some_and(|gate| now < gate.until) {
            return None;
        }
        drop(gates);
        let taken = self
            .reading
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(coupon);
        // Made only when taken: a turn dropped gives the coupon back.
        taken.then(|| ShutTurn {
            gates: self,
            coupon,
        })
    }

    /// Shuts `turn`'s coupon's gate on `answer` (SOLD_OUT or ENDED), which admission gave
    /// to a request sent at `asked` when the gates' generation was `generation`, with
    /// `holders` read after it: it answers until `asked` plus the hold. Not if the gates
    /// were opened since.
    pub fn shut(
        &self,
        turn: ShutTurn<'_>,
        answer: Admission,
        asked: Instant,
        generation: u64,
        holders: Holders,
    ) {
        let pending: HashSet<i64> = holders.pending.into_iter().collect();
        let gate = Shut {
            answer,
            until: asked + self.hold,
            holders: holders
                .issued
                .into_iter()
                .filter(|user| !pending.contains(user))
                .collect(),
            pending,
        };
        let mut gates = self
            .gates
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if gates.generation != generation {
            return;
        }
        let now = Instant::now();
        // Gates whose time ran out go here, not on the requests' path.
        gates.shut.retain(|_, gate| gate.until > now);
        gates.shut.insert(turn.coupon, gate);
    }

    /// Opens every gate, and keeps shut none whose refusal came before: the stamps in
    /// force changed (a rebuild elsewhere), and a refusal read on a replaced state may
    /// have been a stale node's.
    pub fn open_all(&self) {
        let mut gates = self
            .gates
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        gates.shut.clear();
        gates.generation += 1;
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

    fn holders() -> Holders {
        Holders {
            issued: vec![1, 2],
            pending: vec![2],
        }
    }

    fn shut_for(hold: Duration, asked: Instant) -> FinishedGates {
        let gates = FinishedGates::new(hold);
        let generation = gates.generation();
        let turn = gates.turn(coupon()).unwrap();
        gates.shut(turn, Admission::SoldOut, asked, generation, holders());
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
    fn a_gate_answers_no_longer_than_its_hold_after_the_request() {
        let hold = Duration::from_millis(500);
        let gates = shut_for(hold, Instant::now() - hold);
        assert_eq!(gates.answer(coupon(), user(3)), None);
    }

    #[test]
    fn one_request_at_a_time_reads_a_coupons_holders_and_none_while_its_gate_answers() {
        let gates = FinishedGates::new(Duration::from_secs(60));
        let turn = gates.turn(coupon()).unwrap();
        assert!(gates.turn(coupon()).is_none());
        drop(turn);
        let turn = gates.turn(coupon()).unwrap();
        gates.shut(turn, Admission::SoldOut, Instant::now(), 0, holders());
        assert!(gates.turn(coupon()).is_none());
        assert!(FinishedGates::new(Duration::ZERO).turn(coupon()).is_none());
    }

    #[test]
    fn opening_every_gate_also_refuses_a_shut_whose_refusal_came_before() {
        let gates = shut_for(Duration::from_secs(60), Instant::now());
        let generation = gates.generation();
        let turn = gates.turn(CouponId::new(2).unwrap()).unwrap();
        gates.open_all();
        assert_eq!(gates.answer(coupon(), user(3)), None);
        gates.shut(
            turn,
            Admission::SoldOut,
            Instant::now(),
            generation,
            holders(),
        );
        assert_eq!(gates.answer(CouponId::new(2).unwrap(), user(3)), None);
    }
}
