//! An exhaustive check of an operator's replay of an OVER_QUANTITY event (issuer-api's
//! `issuing/failed_events.rs`, `scripts/replay_slot.lua`).
//!
//! An OVER_QUANTITY event is a user Redis admitted beyond the quantity (a fault outside the
//! other models: Redis lost state without the epoch check catching it), refused by the
//! database's quantity guard. Honouring them takes a raise, and the raise gives Redis as
//! many units to sell as PostgreSQL. So the replay must take a slot in Redis first: where
//! the user holds none (their slot was lost with the state, rebuilt from PostgreSQL's
//! rows), one is taken if one is free, else the replay is refused; only then is the row
//! written, and only if the coupon's state is still the one the slot is in: a rebuild
//! between the two (found by this model) loads the slots from the rows it reads, without
//! the replay's, so a row written after it would spend a unit no slot accounts for. The
//! row's transaction locks the coupon's row and checks its stamp; a rebuild records its
//! new stamp on that row before it reads the rows, so it either waits for the row (and
//! loads its slot) or the row is refused. A slot taken for a row the database still
//! refuses is given back: for want of quantity that cannot happen (the model shows a slot
//! taken in the same state always finds a unit), but the database may refuse a row for
//! other reasons (a constraint: REJECTED), which this model lacks.
//!
//! Modelled: three users, a quantity of one in PostgreSQL and in Redis; admissions (a slot
//! taken, then the event delivered to the guarded insert), one admission beyond the
//! quantity (the fault), the loss of Redis's state and its rebuild from the rows (when
//! nothing is in flight), a raise of one (PostgreSQL, then Redis: two steps), and the
//! replay of each refused event in its two steps (the slot, then the row), each of which
//! may be retried. The rebuild is one step here: the lock above orders it whole before or
//! after the row.
//!
//! Invariants, in every state:
//! - every row's user holds a Redis slot: no unit of the database's quantity is spent that
//!   no slot accounts for (or a user Redis admits on that unit, told 201, is refused);
//! - rows never exceed PostgreSQL's quantity.

use testkit::explorer::{Protocol, finds, holds};

const USERS: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    None,
    /// The replay writes the row without taking a slot (the shell's `dlq replay`).
    NoSlot,
    /// The row is written whatever state the slot was taken in.
    NoStampCheck,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    quantity_db: u8,
    quantity_redis: u8,
    raised: bool,
    /// Redis's issued set.
    slots: [bool; USERS],
    rows: [bool; USERS],
    /// Admitted, the event on its way to the guarded insert.
    in_flight: [bool; USERS],
    /// Refused by the guard: an OVER_QUANTITY failed event.
    refused: [bool; USERS],
    /// A replay took (or found) the user's slot, and writes the row next; whether it took
    /// it itself (and so gives it back if the row is refused).
    replaying: [Option<(bool, u8)>; USERS],
    /// Each rebuild stamps the state anew.
    stamp: u8,
    /// The user's slot is one a replay took.
    replay_slot: [bool; USERS],
    over_admitted: bool,
    rebuilt: bool,
}

impl State {
    fn taken(&self) -> u8 {
        self.slots.iter().filter(|s| **s).count() as u8
    }

    fn written(&self) -> u8 {
        self.rows.iter().filter(|r| **r).count() as u8
    }
}

#[derive(Debug)]
enum Action {
    Admit(usize),
    /// Admitted beyond the quantity (the fault).
    OverAdmit(usize),
    Deliver(usize),
    /// Redis's state lost and rebuilt from PostgreSQL's rows.
    Rebuild,
    RaiseDatabase,
    RaiseRedis,
    ReplaySlot(usize),
    ReplayRow(usize),
}

struct Model {
    bug: Bug,
}

impl Protocol for Model {
    type State = State;
    type Action = Action;

    fn initial(&self) -> State {
        State {
            quantity_db: 1,
            quantity_redis: 1,
            raised: false,
            slots: [false; USERS],
            rows: [false; USERS],
            in_flight: [false; USERS],
            refused: [false; USERS],
            replaying: [None; USERS],
            stamp: 0,
            replay_slot: [false; USERS],
            over_admitted: false,
            rebuilt: false,
        }
    }

    fn actions(&self, s: &State) -> Vec<Action> {
        let mut actions = Vec::new();
        for user in 0..USERS {
            if !s.slots[user] && !s.rows[user] && !s.refused[user] {
                if s.taken() < s.quantity_redis {
                    actions.push(Action::Admit(user));
                } else if !s.over_admitted {
                    actions.push(Action::OverAdmit(user));
                }
            }
            if s.in_flight[user] {
                actions.push(Action::Deliver(user));
            }
            if s.refused[user] {
                match s.replaying[user] {
                    None => actions.push(Action::ReplaySlot(user)),
                    Some(_) => actions.push(Action::ReplayRow(user)),
                }
            }
        }
        if !s.rebuilt && !s.in_flight.contains(&true) {
            actions.push(Action::Rebuild);
        }
        if !s.raised {
            actions.push(Action::RaiseDatabase);
        } else if s.quantity_redis < s.quantity_db {
            actions.push(Action::RaiseRedis);
        }
        actions
    }

    fn next(&self, s: &State, action: &Action) -> State {
        let mut s = s.clone();
        match *action {
            Action::Admit(user) | Action::OverAdmit(user) => {
                s.slots[user] = true;
                s.in_flight[user] = true;
                if matches!(action, Action::OverAdmit(_)) {
                    s.over_admitted = true;
                }
            }
            Action::Deliver(user) => {
                s.in_flight[user] = false;
                if s.written() < s.quantity_db {
                    s.rows[user] = true;
                } else {
                    s.refused[user] = true;
                }
            }
            Action::Rebuild => {
                s.rebuilt = true;
                s.stamp += 1;
                s.slots = s.rows;
                s.replay_slot = [false; USERS];
            }
            Action::RaiseDatabase => {
                s.raised = true;
                s.quantity_db += 1;
            }
            Action::RaiseRedis => s.quantity_redis += 1,
            Action::ReplaySlot(user) => {
                if self.bug == Bug::NoSlot || s.slots[user] {
                    s.replaying[user] = Some((false, s.stamp));
                } else if s.taken() < s.quantity_redis {
                    s.slots[user] = true;
                    s.replay_slot[user] = true;
                    s.replaying[user] = Some((true, s.stamp));
                }
                // Else refused (409): nothing changes, and the operator may try again.
            }
            Action::ReplayRow(user) => {
                let Some((took, stamp)) = s.replaying[user].take() else {
                    return s;
                };
                let same_state = stamp == s.stamp || self.bug == Bug::NoStampCheck;
                if !same_state {
                    // Refused (the operator replays again): the slot went with the state.
                } else if s.written() < s.quantity_db {
                    s.rows[user] = true;
                    s.refused[user] = false;
                    s.replay_slot[user] = false;
                } else if took {
                    s.slots[user] = false;
                    s.replay_slot[user] = false;
                }
            }
        }
        s
    }

    fn violation(&self, s: &State) -> Option<&'static str> {
        if s.written() > s.quantity_db {
            return Some("rows never exceed PostgreSQL's quantity");
        }
        if (0..USERS).any(|u| s.rows[u] && !s.slots[u]) {
            return Some("every row's user holds a Redis slot");
        }
        // A slot a replay took, kept though the row was refused and no replay uses it.
        if (0..USERS).any(|u| s.replay_slot[u] && s.replaying[u].is_none()) {
            return Some("no slot is held for a row the database refused");
        }
        None
    }
}

#[test]
fn every_reachable_state_keeps_every_invariant() {
    holds(
        &Model { bug: Bug::None },
        "the OVER_QUANTITY replay model",
        200,
    );
}

#[test]
fn a_replay_that_takes_no_slot_is_found() {
    finds(
        &Model { bug: Bug::NoSlot },
        "every row's user holds a Redis slot",
    );
}

#[test]
fn a_row_written_after_a_rebuild_since_the_slot_is_found() {
    finds(
        &Model {
            bug: Bug::NoStampCheck,
        },
        "every row's user holds a Redis slot",
    );
}
