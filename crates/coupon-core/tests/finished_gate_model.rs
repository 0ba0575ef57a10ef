//! An exhaustive check of the finished gate (issuer-api's `issuing/finished_gate.rs`) and the
//! hold on stock that comes back (`admission.lua`'s `sells_from`): two API instances, each
//! answering a finished coupon from memory for a hold of H ticks after admission refused
//! one of its requests, three users each sending up to two requests to either instance, a
//! coupon of one unit whose slots settle or are given back (a publish that never reached
//! the log), a raise, the sale's end at any tick and an operator's extension of it, the
//! loss of the coupon's Redis state and its rebuild (which gives back every slot still
//! pending, the worst case), and a clock.
//!
//! The gate is shut in two steps, as in the code: admission refuses (one round trip), then
//! the holders are read (another, under the refusal's stamp), with anything in between.
//! Stock that comes back to a sold-out coupon (a slot given back, a raise) is sold only H
//! after it came (`stock_hold.lua`): by then every gate shut before it has run out, and a
//! refusal while it is held shuts no gate. A rebuild opens at least H after its lease
//! closed the coupon, after the loss (`issuing/rebuild.rs`), with the same effect. The
//! same for ENDED: a sale that had ended and is extended opens only H after the extension
//! (`opens_from`, `settings.lua`), answering ENDED meanwhile without shutting a gate.
//!
//! Invariants, in every state:
//! - SOLD_OUT from the gate or from a hold: no stock was left at some moment within the
//!   last H ticks (what SOLD_OUT means with the gate on, README); ENDED likewise: the sale
//!   was over at some moment within the last H ticks;
//! - SOLD_OUT or ENDED never to a user who holds a slot (settled or pending) at that moment;
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
    /// An extended end opens at once: a user admitted on one instance, asking the other
    /// again within its ENDED gate's hold, is told ENDED.
    ExtendedAtOnce,
    /// A refusal while an extended end is held shuts the gate, which outlives the hold.
    HeldEndShuts,
    /// An end moved later before it came is held all the same: its refusals are false.
    HoldBeforeTheEnd,
}

/// What a gate answers, as the admission's refusal that shut it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Finished {
    SoldOut,
    Ended,
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
    answer: Finished,
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
    /// The tick the sale ended at (admission answers ENDED from then on), if it has.
    ends_at: Option<u8>,
    /// An operator extended the end (once).
    extended: bool,
    /// The tick from which an extended end admits again.
    opens_from: u8,
    /// The tick the coupon's Redis state was lost at, until its rebuild.
    lost_at: Option<u8>,
    lost: bool,
    /// Each rebuild stamps the state anew.
    stamp: u8,
    slots: [Slot; USERS],
    requests_left: [u8; USERS],
    /// A request admission refused at this tick under this stamp, whose instance reads the
    /// holders next.
    refused: [Option<(usize, u8, u8, Finished)>; USERS],
    gates: [Option<Gate>; INSTANCES],
    /// The last tick at which no stock was left.
    last_empty: Option<u8>,
    /// The last tick at which the sale was over.
    last_ended: Option<u8>,
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

    fn ended(&self) -> bool {
        self.ends_at.is_some_and(|at| self.now >= at)
    }

    fn note_stock(&mut self) {
        if self.stock() == 0 {
            self.last_empty = Some(self.now);
        }
        if self.ended() {
            self.last_ended = Some(self.now);
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
    /// The sale's end is set to come `after` ticks from now (0: now).
    End {
        after: u8,
    },
    /// An extension landed: the sale has no end any more.
    Extend,
    /// The coupon's Redis state is lost (a restart without its file, say).
    Lose,
    /// Its rebuild: the slots whose events never reached the log are given back.
    Rebuild,
    Tick,
}

/// What comes and goes besides the users' requests: checked apart, as together they are
/// more states than the suite should run (over 30 million).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    /// Stock that comes back: slots given back, a raise, the state's loss and rebuild.
    Stock,
    /// The sale's end and its extension.
    End,
}

struct Model {
    bug: Bug,
    scope: Scope,
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
            ends_at: None,
            extended: false,
            opens_from: 0,
            lost_at: None,
            lost: false,
            stamp: 0,
            slots: [Slot::None; USERS],
            requests_left: [2; USERS],
            refused: [None; USERS],
            gates: [None; INSTANCES],
            last_empty: None,
            last_ended: None,
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
                // Stock that comes back is the other scope's: the end's hold is the same
                // whatever the stock does.
                if self.scope == Scope::Stock {
                    actions.push(Action::GiveBack(user));
                }
            }
        }
        match s.lost_at {
            None if self.scope == Scope::End => {
                if s.ends_at.is_none() && !s.extended {
                    actions.push(Action::End { after: 0 });
                    actions.push(Action::End { after: 1 });
                }
                if s.ends_at.is_some() {
                    actions.push(Action::Extend);
                }
            }
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
                            self.refuses(&mut s, user, gate.answer);
                        }
                    }
                    // Lost: admission finds no state, and the request waits for the rebuild.
                    _ if s.lost_at.is_some() => {}
                    // admission.lua's order: the holders, the end (and its hold), the stock.
                    _ => match s.slots[user] {
                        // A holder is told so; a pending one waits for its delivery.
                        Slot::Settled | Slot::Pending => {}
                        Slot::None if s.ended() => {
                            s.refused[user] = Some((instance, s.now, s.stamp, Finished::Ended))
                        }
                        Slot::None if s.now < s.opens_from => {
                            self.refuses(&mut s, user, Finished::Ended);
                            if self.bug == Bug::HeldEndShuts {
                                s.refused[user] = Some((instance, s.now, s.stamp, Finished::Ended));
                            }
                        }
                        Slot::None if s.stock() == 0 => {
                            s.refused[user] = Some((instance, s.now, s.stamp, Finished::SoldOut))
                        }
                        Slot::None if s.now < s.sells_from => {
                            self.refuses(&mut s, user, Finished::SoldOut);
                            if self.bug == Bug::HeldRefusalShuts {
                                s.refused[user] =
                                    Some((instance, s.now, s.stamp, Finished::SoldOut));
                            }
                        }
                        Slot::None => s.slots[user] = Slot::Pending,
                    },
                }
            }
            Action::ReadHolders(user) => {
                let Some((instance, refused_at, stamp, answer)) = s.refused[user].take() else {
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
                    answer,
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
            Action::End { after } => s.ends_at = Some(s.now + after),
            Action::Extend => {
                // settings.lua: an end extended after it came opens a hold from now.
                if (s.ended() || self.bug == Bug::HoldBeforeTheEnd)
                    && self.bug != Bug::ExtendedAtOnce
                {
                    s.opens_from = s.opens_from.max(s.now + HOLD);
                }
                s.ends_at = None;
                s.extended = true;
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

    /// `user` is told SOLD_OUT or ENDED: checked against what is true at that moment.
    fn refuses(&self, s: &mut State, user: usize, answer: Finished) {
        let (last, when) = match answer {
            Finished::SoldOut => (
                s.last_empty,
                "SOLD_OUT only when no stock was left within the hold",
            ),
            Finished::Ended => (
                s.last_ended,
                "ENDED only when the sale was over within the hold",
            ),
        };
        if last.is_none_or(|at| s.now - at > HOLD) {
            s.broken = Some(when);
        } else if s.slots[user] != Slot::None {
            s.broken = Some(match answer {
                Finished::SoldOut => "SOLD_OUT never to a holder",
                Finished::Ended => "ENDED never to a holder",
            });
        }
    }
}

#[test]
fn every_reachable_state_keeps_every_invariant_as_stock_comes_back() {
    let model = Model {
        bug: Bug::None,
        scope: Scope::Stock,
    };
    holds(&model, "the finished gate model, stock coming back", 10_000);
}

#[test]
fn every_reachable_state_keeps_every_invariant_as_the_end_comes_and_is_extended() {
    let model = Model {
        bug: Bug::None,
        scope: Scope::End,
    };
    holds(&model, "the finished gate model, the end extended", 10_000);
}

#[test]
fn stock_sold_at_once_when_it_comes_back_is_found() {
    finds(
        &Model {
            bug: Bug::SoldAtOnce,
            scope: Scope::Stock,
        },
        "SOLD_OUT never to a holder",
    );
}

#[test]
fn a_refusal_while_stock_is_held_shutting_the_gate_is_found() {
    finds(
        &Model {
            bug: Bug::HeldRefusalShuts,
            scope: Scope::Stock,
        },
        "SOLD_OUT never to a holder",
    );
}

#[test]
fn a_rebuild_opening_at_once_is_found() {
    finds(
        &Model {
            bug: Bug::RebuildOpensAtOnce,
            scope: Scope::Stock,
        },
        "SOLD_OUT never to a holder",
    );
}

#[test]
fn pending_users_kept_as_holders_are_found() {
    finds(
        &Model {
            bug: Bug::PendingAsHolders,
            scope: Scope::Stock,
        },
        "ALREADY_ISSUED only to a holder",
    );
}

#[test]
fn a_hold_counted_from_the_snapshot_is_found() {
    finds(
        &Model {
            bug: Bug::HoldFromSnapshot,
            scope: Scope::Stock,
        },
        "SOLD_OUT never to a holder",
    );
}

#[test]
fn a_gate_shut_for_good_is_found() {
    finds(
        &Model {
            bug: Bug::NoHold,
            scope: Scope::Stock,
        },
        "SOLD_OUT never to a holder",
    );
}

#[test]
fn stock_held_while_some_was_left_is_found() {
    finds(
        &Model {
            bug: Bug::HoldWhileSelling,
            scope: Scope::Stock,
        },
        "no stock was left within the hold",
    );
}

#[test]
fn an_extended_end_opening_at_once_is_found() {
    finds(
        &Model {
            bug: Bug::ExtendedAtOnce,
            scope: Scope::End,
        },
        "ENDED never to a holder",
    );
}

#[test]
fn a_refusal_while_an_extended_end_is_held_shutting_the_gate_is_found() {
    finds(
        &Model {
            bug: Bug::HeldEndShuts,
            scope: Scope::End,
        },
        "ENDED never to a holder",
    );
}

#[test]
fn an_end_moved_before_it_came_held_all_the_same_is_found() {
    finds(
        &Model {
            bug: Bug::HoldBeforeTheEnd,
            scope: Scope::End,
        },
        "ENDED only when the sale was over within the hold",
    );
}
