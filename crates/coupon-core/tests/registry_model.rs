//! An exhaustive check of the registry against a raise that reopens a finished coupon.
//!
//! The registry (`scripts/registry.lua`) lists the coupons whose state Redis holds, each
//! under a generation new at every registration. The hot loops (Kafka mode's reconciler,
//! the Redis queue mode's stream workers) work only on registered coupons, and retire one
//! that is finished (`scripts/finished.lua`: sold out or ended, nothing pending) in three
//! steps: read its generation, check it finished, and remove it only if the generation is
//! still the one read (`retire`). A coupon retired while it can still admit is never read
//! again: in the Redis queue mode its stream entries (each a user told 201) never become
//! rows, and in Kafka mode a slot taken by an API that died before publishing is never
//! published.
//!
//! A raise lands a larger quantity in a sold-out coupon's meta (`scripts/raise.lua`), which
//! makes it admit again. It registers the coupon first, so that a retirer's earlier read is
//! stale, and lands. But a retirer may read the new generation, find the coupon still
//! finished (the raise not landed yet), and retire it right after the landing: the
//! registration the raise made is the one removed. So the raise registers again after
//! landing, and records the raise as landed only then; a raiser that dies before that is
//! replaced by the lander, which does the whole raise again.
//!
//! Modelled: one coupon, sold out and settled, registered; a raiser (register, land,
//! register again, record), which may die once anywhere before its record and be taken
//! over from the start; an admission that sells the new unit (its pending entry, then its
//! settle); a retirer that runs its three steps, twice. Invariant: once the raise is
//! recorded and no retirer is between its steps, a coupon that can still admit, or has a
//! slot pending, is registered.

use testkit::explorer::{Protocol, finds, holds};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    None,
    /// The raise as it was: registered before landing only.
    RegisterBeforeOnly,
    /// A retire that removes whatever registration it finds, not only the one it judged.
    RetireAnyGeneration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Raiser {
    /// Not started, or taken over by the lander after a death.
    Start,
    Registered,
    Landed,
    RegisteredAgain,
    Recorded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Retirer {
    Idle,
    /// Read the coupon's generation (None: not registered, nothing to do).
    Read(u8),
    /// Judged finished under that generation.
    Judged(u8),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct State {
    /// The registration's generation, None when retired.
    registered: Option<u8>,
    next_generation: u8,
    quantity: u8,
    sold: u8,
    pending: u8,
    raiser: Raiser,
    died: bool,
    retirer: Retirer,
    passes: u8,
}

#[derive(Debug)]
enum Action {
    Raise,
    RaiserDies,
    Admit,
    Settle,
    RetirerReads,
    RetirerJudges,
    RetirerRetires,
}

const PASSES: u8 = 2;

struct Model {
    bug: Bug,
}

impl State {
    fn finished(&self) -> bool {
        self.sold >= self.quantity && self.pending == 0
    }

    fn register(&mut self) {
        self.registered = Some(self.next_generation);
        self.next_generation += 1;
    }
}

impl Protocol for Model {
    type State = State;
    type Action = Action;

    fn initial(&self) -> State {
        State {
            registered: Some(0),
            next_generation: 1,
            quantity: 1,
            sold: 1,
            pending: 0,
            raiser: Raiser::Start,
            died: false,
            retirer: Retirer::Idle,
            passes: 0,
        }
    }

    fn actions(&self, s: &State) -> Vec<Action> {
        let mut actions = Vec::new();
        if s.raiser != Raiser::Recorded {
            actions.push(Action::Raise);
            if !s.died && s.raiser != Raiser::Start {
                actions.push(Action::RaiserDies);
            }
        }
        if s.sold < s.quantity {
            actions.push(Action::Admit);
        }
        if s.pending > 0 {
            actions.push(Action::Settle);
        }
        match s.retirer {
            Retirer::Idle if s.passes < PASSES => actions.push(Action::RetirerReads),
            Retirer::Read(_) => actions.push(Action::RetirerJudges),
            Retirer::Judged(_) => actions.push(Action::RetirerRetires),
            Retirer::Idle => {}
        }
        actions
    }

    fn next(&self, s: &State, action: &Action) -> State {
        let mut s = s.clone();
        match action {
            Action::Raise => {
                s.raiser = match (s.raiser, self.bug) {
                    (Raiser::Start, _) => {
                        s.register();
                        Raiser::Registered
                    }
                    (Raiser::Registered, _) => {
                        // raise.lua: the quantity only grows.
                        s.quantity = 2;
                        Raiser::Landed
                    }
                    (Raiser::Landed, Bug::RegisterBeforeOnly) => Raiser::Recorded,
                    (Raiser::Landed, _) => {
                        s.register();
                        Raiser::RegisteredAgain
                    }
                    (Raiser::RegisteredAgain, _) => Raiser::Recorded,
                    (Raiser::Recorded, _) => unreachable!("a recorded raise has no step"),
                };
            }
            Action::RaiserDies => {
                // PostgreSQL still says not landed: the lander raises again from the start.
                s.died = true;
                s.raiser = Raiser::Start;
            }
            Action::Admit => {
                s.sold += 1;
                s.pending += 1;
            }
            Action::Settle => s.pending -= 1,
            Action::RetirerReads => {
                s.passes += 1;
                if let Some(generation) = s.registered {
                    s.retirer = Retirer::Read(generation);
                }
            }
            Action::RetirerJudges => {
                let Retirer::Read(generation) = s.retirer else {
                    unreachable!()
                };
                s.retirer = match s.finished() {
                    true => Retirer::Judged(generation),
                    false => Retirer::Idle,
                };
            }
            Action::RetirerRetires => {
                let Retirer::Judged(generation) = s.retirer else {
                    unreachable!()
                };
                if s.registered == Some(generation)
                    || (self.bug == Bug::RetireAnyGeneration && s.registered.is_some())
                {
                    s.registered = None;
                }
                s.retirer = Retirer::Idle;
            }
        }
        s
    }

    fn violation(&self, s: &State) -> Option<&'static str> {
        let at_rest = s.raiser == Raiser::Recorded && s.retirer == Retirer::Idle;
        if at_rest && !s.finished() && s.registered.is_none() {
            return Some("a coupon that can admit, or has a slot pending, is registered");
        }
        None
    }
}

#[test]
fn every_reachable_state_keeps_every_invariant() {
    holds(&Model { bug: Bug::None }, "raise and retire", 100);
}

#[test]
fn a_raise_registered_before_landing_only_is_found() {
    // The retirer reads the raise's registration, finds the coupon still sold out, and
    // retires it once the raise has landed.
    finds(
        &Model {
            bug: Bug::RegisterBeforeOnly,
        },
        "is registered",
    );
}

#[test]
fn a_retire_blind_to_the_generation_is_found() {
    // The retirer judges the coupon finished before the raise, and removes the
    // registration the raise made since.
    finds(
        &Model {
            bug: Bug::RetireAnyGeneration,
        },
        "is registered",
    );
}
