//! An exhaustive check of an operator's replay of an OVER_QUANTITY event (issuer-api's
//! `issuing/failed_events.rs`, `scripts/replay_slot.lua`).
//!
//! An OVER_QUANTITY event is a user Redis admitted beyond the quantity (a fault outside the
//! other models: Redis lost state without the epoch check catching it), refused by the
//! database's quantity guard. Honouring them takes a raise, and the raise gives Redis as
//! many units to sell as PostgreSQL. So the replay must take a slot in Redis first: where
//! the user holds none (their slot was lost with the state, rebuilt from PostgreSQL's
//! rows), one is taken if one is free, else the replay is refused; only then is the row
//! written.
//!
//! A rebuild closes the coupon's state (its lease), reads the rows, and loads the slots
//! from them. A first version took the slot and wrote the row as two steps checked by the
//! stamp; this model, given the rebuild's real order (it reads the rows before it records
//! its stamp), found a rebuild reading the rows between them, without the replay's row, and
//! loading a state without its slot. So the replay now holds the coupon's row lock (FOR
//! UPDATE) from before the slot until the row commits, and the rebuild reads the rows under
//! a share lock of the same row (`coupon_holders`): it reads either before the replay locks
//! (and has closed the state first, so the replay finds it closed and writes nothing) or
//! after the row committed. A slot taken for a row the database refuses is given back
//! before the commit.
//!
//! Modelled: three users, a quantity of one in PostgreSQL and in Redis; admissions (a slot
//! taken, then the event delivered to the guarded insert, which locks the coupon's row too),
//! one admission beyond the quantity (the fault), a rebuild in its three steps (close,
//! read, load), a raise of one (PostgreSQL, then Redis), and a replay of each refused event
//! in its steps (lock, slot, row and commit), which may be tried again.
//!
//! Invariants, in every state:
//! - every row's user holds a Redis slot once no rebuild is under way: no unit of the
//!   database's quantity is spent that no slot accounts for (or a user Redis admits on
//!   that unit, told 201, is refused);
//! - rows never exceed PostgreSQL's quantity.
//!
//! A slot taken for a row refused for want of quantity cannot happen here (a slot taken in
//! the state in force always finds a unit); the give-back is for the database's other
//! refusals (a constraint: REJECTED), which this model lacks.

use testkit::explorer::{Protocol, finds, holds};

const USERS: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    None,
    /// The replay writes the row without taking a slot (the shell's `dlq replay`).
    NoSlot,
    /// The rebuild reads the rows without the share lock.
    ReadWithoutLock,
    /// The replay takes no lock across its steps.
    NoReplayLock,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Rebuild {
    Idle,
    /// The state is closed (the lease); the rows are read next.
    Closed,
    /// The rows as read, loaded next.
    Read([bool; USERS]),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Replay {
    Idle,
    /// Holds the coupon's row lock; takes the slot next.
    Locked,
    /// Took (true) or found (false) the slot; writes the row and commits next.
    Slotted(bool),
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
    replays: [Replay; USERS],
    over_admitted: bool,
    rebuild: Rebuild,
    rebuilt: bool,
}

impl State {
    fn taken(&self) -> u8 {
        self.slots.iter().filter(|s| **s).count() as u8
    }

    fn written(&self) -> u8 {
        self.rows.iter().filter(|r| **r).count() as u8
    }

    /// The coupon's row is locked FOR UPDATE by a replay.
    fn locked(&self) -> bool {
        self.replays.iter().any(|r| *r != Replay::Idle)
    }

    fn open(&self) -> bool {
        self.rebuild == Rebuild::Idle
    }
}

#[derive(Debug)]
enum Action {
    Admit(usize),
    /// Admitted beyond the quantity (the fault).
    OverAdmit(usize),
    Deliver(usize),
    RebuildClose,
    RebuildRead,
    RebuildLoad,
    RaiseDatabase,
    RaiseRedis,
    ReplayLock(usize),
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
            replays: [Replay::Idle; USERS],
            over_admitted: false,
            rebuild: Rebuild::Idle,
            rebuilt: false,
        }
    }

    fn actions(&self, s: &State) -> Vec<Action> {
        let mut actions = Vec::new();
        let lock_free = !s.locked() || self.bug == Bug::NoReplayLock;
        for user in 0..USERS {
            if s.open() && !s.slots[user] && !s.rows[user] && !s.refused[user] {
                if s.taken() < s.quantity_redis {
                    actions.push(Action::Admit(user));
                } else if !s.over_admitted {
                    actions.push(Action::OverAdmit(user));
                }
            }
            // The worker's batch locks the coupon's row too.
            if s.in_flight[user] && lock_free {
                actions.push(Action::Deliver(user));
            }
            if s.refused[user] {
                match s.replays[user] {
                    Replay::Idle if lock_free => actions.push(Action::ReplayLock(user)),
                    Replay::Idle => {}
                    Replay::Locked => actions.push(Action::ReplaySlot(user)),
                    Replay::Slotted(_) => actions.push(Action::ReplayRow(user)),
                }
            }
        }
        match s.rebuild {
            Rebuild::Idle if !s.rebuilt && !s.in_flight.contains(&true) => {
                actions.push(Action::RebuildClose)
            }
            // The share lock waits for a replay's (and a batch's) row lock.
            Rebuild::Closed
                if !s.locked() || matches!(self.bug, Bug::ReadWithoutLock | Bug::NoReplayLock) =>
            {
                actions.push(Action::RebuildRead)
            }
            Rebuild::Read(_) => actions.push(Action::RebuildLoad),
            _ => {}
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
            Action::RebuildClose => s.rebuild = Rebuild::Closed,
            Action::RebuildRead => s.rebuild = Rebuild::Read(s.rows),
            Action::RebuildLoad => {
                if let Rebuild::Read(rows) = s.rebuild {
                    s.slots = rows;
                }
                s.rebuild = Rebuild::Idle;
                s.rebuilt = true;
            }
            Action::RaiseDatabase => {
                s.raised = true;
                s.quantity_db += 1;
            }
            Action::RaiseRedis => s.quantity_redis += 1,
            Action::ReplayLock(user) => s.replays[user] = Replay::Locked,
            Action::ReplaySlot(user) => {
                s.replays[user] = if !s.open() {
                    // Closed for its rebuild: nothing is taken, nothing written (503).
                    Replay::Idle
                } else if self.bug == Bug::NoSlot || s.slots[user] {
                    Replay::Slotted(false)
                } else if s.taken() < s.quantity_redis {
                    s.slots[user] = true;
                    Replay::Slotted(true)
                } else {
                    // None free (409): the operator raises first.
                    Replay::Idle
                };
            }
            Action::ReplayRow(user) => {
                let took = s.replays[user] == Replay::Slotted(true);
                s.replays[user] = Replay::Idle;
                if s.written() < s.quantity_db {
                    s.rows[user] = true;
                    s.refused[user] = false;
                } else if took {
                    // Given back before the commit.
                    s.slots[user] = false;
                }
            }
        }
        s
    }

    fn violation(&self, s: &State) -> Option<&'static str> {
        if s.written() > s.quantity_db {
            return Some("rows never exceed PostgreSQL's quantity");
        }
        if s.open() && (0..USERS).any(|u| s.rows[u] && !s.slots[u]) {
            return Some("every row's user holds a Redis slot");
        }
        None
    }
}

#[test]
fn every_reachable_state_keeps_every_invariant() {
    holds(
        &Model { bug: Bug::None },
        "the OVER_QUANTITY replay model",
        400,
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
fn a_rebuild_reading_the_rows_without_the_share_lock_is_found() {
    finds(
        &Model {
            bug: Bug::ReadWithoutLock,
        },
        "every row's user holds a Redis slot",
    );
}

#[test]
fn a_replay_without_the_lock_across_its_steps_is_found() {
    finds(
        &Model {
            bug: Bug::NoReplayLock,
        },
        "every row's user holds a Redis slot",
    );
}
