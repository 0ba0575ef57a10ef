//! An exhaustive check of the finished gate (issuer-api's `issuing/finished_gate.rs`) and the
//! hold on stock that comes back (`admission.lua`'s `sells_from`): two API instances, each
//! answering a finished coupon from memory for a hold of H ticks after admission refused
//! one of its requests, three users each sending up to two requests to either instance, a
//! coupon of one unit whose slots settle or are given back (a publish that never reached
//! the log), a raise, the loss of the coupon's Redis state and its rebuild (which gives
//! back every slot still pending, the worst case), and a clock.
//!
//! The gate is shut in two steps, as in the code: admission refuses (one round trip), then
//! the holders are read (another, under the refusal's stamp), with anything in between.
//! Stock that comes back to a sold-out coupon (a slot given back, a raise) is sold only H
//! after it came (`stock_hold.lua`): by then every gate shut before it has run out, and a
//! refusal while it is held shuts no gate. A rebuild opens at least H after its lease
//! closed the coupon, after the loss (`issuing/rebuild.rs`), with the same effect.
//!
//! Invariants, in every state:
//! - SOLD_OUT from the gate or from a hold: no stock was left at some moment within the
//!   last H ticks (what SOLD_OUT means with the gate on, README);
//! - SOLD_OUT never to a user who holds a slot (settled or pending) at that moment;
//! - ALREADY_ISSUED only to a holder.

use testkit::explorer::{Protocol, finds, holds};

const USERS: usize = 3;
const INSTANCES: usize = 2;
/// The gate's hold, in ticks.
const HOLD: u8 = 2;
const LAST_TICK: u8 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bug {
    None,
    /// The snapshot's pending users are kept as holders (told ALREADY_ISSUED, though their
    /// slot may still be given back).
    PendingAsHolders,
    /// The hold counts from the snapshot, not from the refusal.
    HoldFromSnapshot,
    /// The gate is shut for good.
    NoHold,
    /// Stock that comes back is sold at once: a user admitted on it by the other instance,
    /// asking this one again within its gate's hold, is told SOLD_OUT.
    SoldAtOnce,
    /// A refusal while stock is held shuts the gate, which then outlives the hold.
    HeldRefusalShuts,
    /// A rebuild opens as soon as it has read the holders.
    RebuildOpensAtOnce,
    /// Stock that comes back is held even when some was left: its refusals are false.
    HoldWhileSelling,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Slot {
    None,
    /// Admitted, its event not acknowledged yet.
    Pending,
    Settled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Gate {
    until: u8,
    holders: [bool; USERS],
    pending: [bool; USERS],
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    now: u8,
    quantity: u8,
    raised: bool,
    /// The tick from which stock that came back is sold.
    sells_from: u8,
    /// The tick the coupon's Redis state was lost at, until its rebuild.
    lost_at: Option<u8>,
    lost: bool,
    /// Each rebuild stamps the state anew.
    stamp: u8,
    slots: [Slot; USERS],
    requests_left: [u8; USERS],
    /// A request admission refused at this tick under this stamp, whose instance reads the
    /// holders next.
    refused: [Option<(usize, u8, u8)>; USERS],
    gates: [Option<Gate>; INSTANCES],
    /// The last tick at which no stock was left.
    last_empty: Option<u8>,
    broken: Option<&'static str>,
}

impl State {
    fn stock(&self) -> u8 {
        let taken = self
            .slots
            .iter()
            .filter(|slot| **slot != Slot::None)
            .count() as u8;
        self.quantity.saturating_sub(taken)
    }

    fn note_stock(&mut self) {
        if self.stock() == 0 {
            self.last_empty = Some(self.now);
        }
    }
}

#[derive(Debug)]
enum Action {
    Ask {
        user: usize,
        instance: usize,
    },
    /// The refused request's instance reads the holders and shuts its gate.
    ReadHolders(usize),
    Settle(usize),
    GiveBack(usize),
    /// A raise landed: Redis holds one more unit.
    Raise,
    /// The coupon's Redis state is lost (a restart without its file, say).
    Lose,
    /// Its rebuild: the slots whose events never reached the log are given back.
    Rebuild,
    Tick,
}

struct Model {
    bug: Bug,
}

impl Protocol for Model {
    type State = State;
    type Action = Action;

    fn initial(&self) -> State {
        State {
            now: 0,
            quantity: 1,
            raised: false,
            sells_from: 0,
            lost_at: None,
            lost: false,
            stamp: 0,
            slots: [Slot::None; USERS],
            requests_left: [2; USERS],
            refused: [None; USERS],
            gates: [None; INSTANCES],
            last_empty: None,
            broken: None,
        }
    }

    fn actions(&self, s: &State) -> Vec<Action> {
        let mut actions = Vec::new();
        for user in 0..USERS {
            if s.refused[user].is_some() {
                actions.push(Action::ReadHolders(user));
            } else if s.requests_left[user] > 0 {
                for instance in 0..INSTANCES {
                    actions.push(Action::Ask { user, instance });
                }
            }
            if s.slots[user] == Slot::Pending && s.lost_at.is_none() {
                actions.push(Action::Settle(user));
                actions.push(Action::GiveBack(user));
            }
        }
        match s.lost_at {
            None => {
                if !s.raised {
                    actions.push(Action::Raise);
                }
                if !s.lost {
                    actions.push(Action::Lose);
                }
            }
            Some(at) if s.now >= at + HOLD || self.bug == Bug::RebuildOpensAtOnce => {
                actions.push(Action::Rebuild)
            }
            Some(_) => {}
        }
        if s.now < LAST_TICK {
            actions.push(Action::Tick);
        }
        actions
    }

    fn next(&self, s: &State, action: &Action) -> State {
        let mut s = s.clone();
        match *action {
            Action::Ask { user, instance } => {
                s.requests_left[user] -= 1;
                let gate = s.gates[instance].filter(|gate| s.now < gate.until);
                match gate {
                    Some(gate) if !gate.pending[user] => {
                        if gate.holders[user] {
                            if s.slots[user] == Slot::None {
                                s.broken = Some("ALREADY_ISSUED only to a holder");
                            }
                        } else {
                            self.refuses(&mut s, user);
                        }
                    }
                    // Lost: admission finds no state, and the request waits for the rebuild.
                    _ if s.lost_at.is_some() => {}
                    _ => match s.slots[user] {
                        // A holder is told so; a pending one waits for its delivery.
                        Slot::Settled | Slot::Pending => {}
                        Slot::None if s.stock() == 0 => {
                            s.refused[user] = Some((instance, s.now, s.stamp))
                        }
                        Slot::None if s.now < s.sells_from => {
                            self.refuses(&mut s, user);
                            if self.bug == Bug::HeldRefusalShuts {
                                s.refused[user] = Some((instance, s.now, s.stamp));
                            }
                        }
                        Slot::None => s.slots[user] = Slot::Pending,
                    },
                }
            }
            Action::ReadHolders(user) => {
                let Some((instance, refused_at, stamp)) = s.refused[user].take() else {
                    return s;
                };
                // holders.lua reads only the state the refusal's stamp names.
                if s.lost_at.is_some() || stamp != s.stamp {
                    return s;
                }
                let until = match self.bug {
                    Bug::HoldFromSnapshot => s.now + HOLD,
                    Bug::NoHold => u8::MAX,
                    _ => refused_at + HOLD,
                };
                let pending = s.slots.map(|slot| slot == Slot::Pending);
                let holders = s.slots.map(|slot| match slot {
                    Slot::Settled => true,
                    Slot::Pending => self.bug == Bug::PendingAsHolders,
                    Slot::None => false,
                });
                let pending = if self.bug == Bug::PendingAsHolders {
                    [false; USERS]
                } else {
                    pending
                };
                s.gates[instance] = Some(Gate {
                    until,
                    holders,
                    pending,
                });
            }
            Action::Settle(user) => s.slots[user] = Slot::Settled,
            Action::GiveBack(user) => {
                self.hold(&mut s);
                s.slots[user] = Slot::None;
            }
            Action::Raise => {
                self.hold(&mut s);
                s.raised = true;
                s.quantity += 1;
            }
            Action::Lose => {
                s.lost = true;
                s.lost_at = Some(s.now);
            }
            Action::Rebuild => {
                s.lost_at = None;
                s.stamp += 1;
                for slot in &mut s.slots {
                    if *slot == Slot::Pending {
                        *slot = Slot::None;
                    }
                }
            }
            Action::Tick => s.now += 1,
        }
        s.note_stock();
        s
    }

    fn violation(&self, s: &State) -> Option<&'static str> {
        s.broken
    }
}

impl Model {
    /// Stock is about to come back: if none is left now (gates may be shut on that), what
    /// comes is sold only a hold from now.
    fn hold(&self, s: &mut State) {
        let sold_out = s.stock() == 0 || self.bug == Bug::HoldWhileSelling;
        if self.bug != Bug::SoldAtOnce && sold_out {
            s.sells_from = s.sells_from.max(s.now + HOLD);
        }
    }

    /// `user` is told SOLD_OUT: checked against what is true at that moment.
    fn refuses(&self, s: &mut State, user: usize) {
        if s.last_empty.is_none_or(|at| s.now - at > HOLD) {
            s.broken = Some("SOLD_OUT only when no stock was left within the hold");
        } else if s.slots[user] != Slot::None {
            s.broken = Some("SOLD_OUT never to a holder");
        }
    }
}

#[test]
fn every_reachable_state_keeps_every_invariant() {
    holds(&Model { bug: Bug::None }, "the finished gate model", 10_000);
}

#[test]
fn stock_sold_at_once_when_it_comes_back_is_found() {
    finds(
        &Model {
            bug: Bug::SoldAtOnce,
        },
        "SOLD_OUT never to a holder",
    );
}

#[test]
fn a_refusal_while_stock_is_held_shutting_the_gate_is_found() {
    finds(
        &Model {
            bug: Bug::HeldRefusalShuts,
        },
        "SOLD_OUT never to a holder",
    );
}

#[test]
fn a_rebuild_opening_at_once_is_found() {
    finds(
        &Model {
            bug: Bug::RebuildOpensAtOnce,
        },
        "SOLD_OUT never to a holder",
    );
}

#[test]
fn pending_users_kept_as_holders_are_found() {
    finds(
        &Model {
            bug: Bug::PendingAsHolders,
        },
        "ALREADY_ISSUED only to a holder",
    );
}

#[test]
fn a_hold_counted_from_the_snapshot_is_found() {
    finds(
        &Model {
            bug: Bug::HoldFromSnapshot,
        },
        "SOLD_OUT never to a holder",
    );
}

#[test]
fn a_gate_shut_for_good_is_found() {
    finds(&Model { bug: Bug::NoHold }, "SOLD_OUT never to a holder");
}

#[test]
fn stock_held_while_some_was_left_is_found() {
    finds(
        &Model {
            bug: Bug::HoldWhileSelling,
        },
        "no stock was left within the hold",
    );
}
