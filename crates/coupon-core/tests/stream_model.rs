//! An exhaustive check of the Redis queue mode's issue protocol: every interleaving of three
//! users' requests over a coupon of 2, the worker group's reads, persists, acknowledgements
//! and trims, one worker death (its entries claimed by another), one loss of the coupon's
//! admission state (meta and issued set; the stream kept) and the rebuild after it, with
//! every invariant checked in every reachable state.
//!
//! The steps are named after the real code: `admission.lua` (admit: the slot and the stream
//! entry in one step), the stream queue's XREADGROUP (read), the sink's guarded insert
//! (persist), XACK (acknowledge), `trim_stream.lua` (trim), XAUTOCLAIM (claim: an entry
//! deleted while pending is acknowledged with nothing to persist), and `issuing::rebuild`
//! (the unsettled set, then PostgreSQL).
//!
//! A loss of the whole Redis (the stream with it) is not modelled: in this mode it loses the
//! events not yet persisted, which the README's trade-off table states.

use testkit::explorer::{Protocol, finds, holds};

const USERS: u8 = 3;
const N: usize = USERS as usize;
const QUANTITY: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bug {
    None,
    /// The trim read its bounds in separate commands: XPENDING saw nothing
    /// pending, a read moved last-delivered, XTRIM removed what had just become pending.
    TrimInSteps,
    /// The rebuild read PostgreSQL before the stream.
    RowsBeforeStream,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum EntryState {
    Undelivered,
    /// In a live worker's batch.
    Delivered,
    /// Its row committed, not acknowledged yet.
    Persisted,
    /// Pending under a worker that died.
    Orphaned,
    /// Acknowledged: done with, there until trimmed.
    Acked,
}

/// A stream entry, or a pending-list id whose entry was trimmed away (`present: false`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Entry {
    id: u8,
    user: u8,
    state: EntryState,
    present: bool,
}

impl Entry {
    fn pending(&self) -> bool {
        matches!(
            self.state,
            EntryState::Delivered | EntryState::Persisted | EntryState::Orphaned
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Rebuild {
    Idle,
    /// The first of its two reads is done: the users it found.
    HalfRead([bool; N]),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Trim {
    Idle,
    /// `TrimInSteps` only: XPENDING said nothing is pending; the bound is read next.
    SawNothingPending,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    // Redis
    meta: bool,
    issued: [bool; N],
    stream: Vec<Entry>,
    next_id: u8,
    last_delivered: Option<u8>,
    // PostgreSQL
    rows: [bool; N],
    over_quantity: bool,
    // Users and processes
    requested: [bool; N],
    told_yes: [bool; N],
    worker_deaths_left: u8,
    losses_left: u8,
    rebuild: Rebuild,
    trim: Trim,
}

#[derive(Clone, Debug)]
enum Action {
    Admit(u8),
    Read,
    Persist(u8),
    Acknowledge(u8),
    Trim,
    TrimReadsBound,
    WorkerDies,
    Claim(u8),
    AdmissionStateLost,
    RebuildFirstRead,
    RebuildSecondRead,
}

struct Model {
    bug: Bug,
}

impl State {
    fn entry(&mut self, id: u8) -> &mut Entry {
        self.stream
            .iter_mut()
            .find(|e| e.id == id)
            .unwrap_or_else(|| unreachable!("no entry {id}"))
    }

    fn holders_on_stream(&self) -> [bool; N] {
        let mut users = [false; N];
        for entry in self.stream.iter().filter(|e| e.present) {
            users[entry.user as usize] = true;
        }
        users
    }

    /// XTRIM MINID: entries below `bound` go, pending or not; a pending one leaves its id
    /// behind in the pending list.
    fn trim_below(&mut self, bound: u8) {
        for entry in self.stream.iter_mut().filter(|e| e.id < bound) {
            entry.present = false;
        }
        self.stream.retain(|e| e.present || e.pending());
    }

    fn at_rest(&self) -> bool {
        self.meta
            && self.stream.iter().all(|e| e.state == EntryState::Acked)
            && self.rebuild == Rebuild::Idle
            && self.trim == Trim::Idle
    }
}

impl Protocol for Model {
    type State = State;
    type Action = Action;

    fn initial(&self) -> State {
        State {
            meta: true,
            issued: [false; N],
            stream: Vec::new(),
            next_id: 0,
            last_delivered: None,
            rows: [false; N],
            over_quantity: false,
            requested: [false; N],
            told_yes: [false; N],
            worker_deaths_left: 1,
            losses_left: 1,
            rebuild: Rebuild::Idle,
            trim: Trim::Idle,
        }
    }

    fn actions(&self, s: &State) -> Vec<Action> {
        let mut actions = Vec::new();
        for user in 0..USERS {
            if !s.requested[user as usize] {
                actions.push(Action::Admit(user));
            }
        }
        if s.stream.iter().any(|e| e.state == EntryState::Undelivered) {
            actions.push(Action::Read);
        }
        for entry in &s.stream {
            match entry.state {
                EntryState::Delivered => actions.push(Action::Persist(entry.id)),
                EntryState::Persisted => actions.push(Action::Acknowledge(entry.id)),
                EntryState::Orphaned => actions.push(Action::Claim(entry.id)),
                EntryState::Undelivered | EntryState::Acked => {}
            }
        }
        match (self.bug, s.trim) {
            (Bug::TrimInSteps, Trim::SawNothingPending) => actions.push(Action::TrimReadsBound),
            _ => actions.push(Action::Trim),
        }
        if s.worker_deaths_left > 0
            && s.stream
                .iter()
                .any(|e| matches!(e.state, EntryState::Delivered | EntryState::Persisted))
        {
            actions.push(Action::WorkerDies);
        }
        if s.losses_left > 0 && s.meta {
            actions.push(Action::AdmissionStateLost);
        }
        if !s.meta {
            actions.push(match s.rebuild {
                Rebuild::Idle => Action::RebuildFirstRead,
                Rebuild::HalfRead(_) => Action::RebuildSecondRead,
            });
        }
        actions
    }

    fn next(&self, last: &State, action: &Action) -> State {
        let mut s = last.clone();
        match *action {
            Action::Admit(user) => {
                let u = user as usize;
                s.requested[u] = true;
                // Without meta the answer is 503 (and a rebuild starts): nothing changes.
                let admitted = s.issued.iter().filter(|i| **i).count();
                if s.meta && !s.issued[u] && admitted < QUANTITY {
                    s.issued[u] = true;
                    s.stream.push(Entry {
                        id: s.next_id,
                        user,
                        state: EntryState::Undelivered,
                        present: true,
                    });
                    s.next_id += 1;
                    s.told_yes[u] = true;
                }
            }
            Action::Read => {
                // XREADGROUP ">": the oldest entry not yet delivered.
                if let Some(entry) = s
                    .stream
                    .iter_mut()
                    .find(|e| e.state == EntryState::Undelivered)
                {
                    entry.state = EntryState::Delivered;
                    s.last_delivered = Some(entry.id);
                }
            }
            Action::Persist(id) => {
                // The batch is in the worker's memory: a trimmed entry is still persisted.
                let user = s.entry(id).user as usize;
                if !s.rows[user] {
                    if s.rows.iter().filter(|r| **r).count() < QUANTITY {
                        s.rows[user] = true;
                    } else {
                        s.over_quantity = true;
                    }
                }
                s.entry(id).state = EntryState::Persisted;
            }
            Action::Acknowledge(id) => {
                // XACK: the pending id goes; an entry still in the stream stays until trimmed.
                s.entry(id).state = EntryState::Acked;
                s.stream.retain(|e| e.present || e.pending());
            }
            Action::Trim => {
                let oldest_pending = s.stream.iter().filter(|e| e.pending()).map(|e| e.id).min();
                match (self.bug, oldest_pending) {
                    (Bug::TrimInSteps, None) => s.trim = Trim::SawNothingPending,
                    (_, Some(bound)) => s.trim_below(bound),
                    (_, None) => {
                        if let Some(bound) = s.last_delivered {
                            s.trim_below(bound);
                        }
                    }
                }
            }
            Action::TrimReadsBound => {
                s.trim = Trim::Idle;
                if let Some(bound) = s.last_delivered {
                    s.trim_below(bound);
                }
            }
            Action::WorkerDies => {
                s.worker_deaths_left -= 1;
                for entry in s.stream.iter_mut() {
                    if matches!(entry.state, EntryState::Delivered | EntryState::Persisted) {
                        entry.state = EntryState::Orphaned;
                    }
                }
            }
            Action::Claim(id) => {
                // XAUTOCLAIM: an entry still there is delivered again; one deleted while
                // pending is reported as such, and acknowledged with nothing to persist.
                if s.entry(id).present {
                    s.entry(id).state = EntryState::Delivered;
                } else {
                    s.stream.retain(|e| e.id != id);
                }
            }
            Action::AdmissionStateLost => {
                s.losses_left -= 1;
                s.meta = false;
                s.issued = [false; N];
            }
            Action::RebuildFirstRead => {
                let first = if self.bug == Bug::RowsBeforeStream {
                    s.rows
                } else {
                    s.holders_on_stream()
                };
                s.rebuild = Rebuild::HalfRead(first);
            }
            Action::RebuildSecondRead => {
                let Rebuild::HalfRead(first) = s.rebuild else {
                    unreachable!("second read before the first")
                };
                let second = if self.bug == Bug::RowsBeforeStream {
                    s.holders_on_stream()
                } else {
                    s.rows
                };
                for user in 0..N {
                    s.issued[user] |= first[user] || second[user];
                }
                s.meta = true;
                s.rebuild = Rebuild::Idle;
            }
        }
        s.stream.sort_unstable();
        s
    }

    fn violation(&self, s: &State) -> Option<&'static str> {
        if s.issued.iter().filter(|i| **i).count() > QUANTITY || s.over_quantity {
            return Some("no oversell: more winners than the quantity");
        }
        if s.at_rest() && (0..N).any(|u| s.told_yes[u] && !s.rows[u]) {
            return Some("every yes a row: at rest, a user told SUCCESS has no row");
        }
        if s.at_rest() && s.issued != s.rows {
            return Some("no leaked stock: at rest, Redis's holders are not exactly the rows");
        }
        None
    }
}

#[test]
fn every_reachable_state_keeps_every_invariant() {
    // Not a vacuous pass: the space is the one described at the top.
    holds(&Model { bug: Bug::None }, "the stream model", 1_000);
}

#[test]
fn a_trim_in_separate_commands_is_found() {
    finds(
        &Model {
            bug: Bug::TrimInSteps,
        },
        "every yes a row",
    );
}

#[test]
fn a_rebuild_reading_postgresql_first_is_found() {
    finds(
        &Model {
            bug: Bug::RowsBeforeStream,
        },
        "no leaked stock",
    );
}
