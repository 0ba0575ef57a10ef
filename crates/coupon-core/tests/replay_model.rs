//! An exhaustive check of an operator's replay of a failed event (issuer-api's
//! `issuing/failed_events.rs`, `scripts/replay_slot.lua`).
//!
//! An OVER_QUANTITY event is a user Redis admitted beyond the quantity (a fault outside the
//! other models: Redis lost state without the epoch check catching it), refused by the
//! database's quantity guard. Honouring them takes a raise, and the raise gives Redis as
//! many units to sell as PostgreSQL. So the replay's row must stand on a slot in Redis:
//! where the user holds none (their slot was lost with the state, rebuilt from PostgreSQL's
//! rows), one is taken if one is free, else the replay is refused and its row not written.
//! The same holds for any event that may become a row: an OVER_QUANTITY event refused on
//! replay for another reason (a constraint) is REJECTED from then on, and a fresh-eyes
//! review found such an event replayed through the guarded insert alone, on no slot
//! (`RejectedWithoutSlot`).
//!
//! A rebuild closes the coupon's state (its lease), reads the rows, and loads the slots
//! from them. A first version took the slot and wrote the row as two steps checked by the
//! stamp; this model, given the rebuild's real order (it reads the rows before it records
//! its stamp), found a rebuild reading the rows between them, without the replay's row, and
//! loading a state without its slot. So the replay holds the coupon's row lock (FOR UPDATE)
//! from before its row until the row commits, and the rebuild reads the rows under a share
//! lock of the same row (`coupon_holders`): it reads either before the replay locks (and has
//! closed the state first, so the replay finds it closed and writes nothing) or after the
//! row committed.
//!
//! The replay's steps, in one transaction: lock (the failed event's row, then the coupon's,
//! in the order the workers' scheduled retry takes them, so neither waits on the other in a
//! cycle: one lock here, the order checked by `issuer-api/tests/failed_events.rs` against a
//! session holding the event), the row through the guarded insert (not visible before the commit; refused, the
//! replay ends there with nothing taken, answered with its reason), the slot (none free, or
//! the state closed: rolled back, the row with it), the commit. An earlier version took the
//! slot first and gave it back when the row was refused, which answered a REJECTED event
//! refused again "raise first" on a sold-out coupon, and needed a bucket's slot given back
//! flagged until a mover's reopen had cleared the other buckets' marks (a slot freed at
//! once can put a unit up for sale under them, set while it was held). Row first, a
//! refused row takes no slot, and nothing is ever given back. The API may die between the
//! slot and the commit: the row is rolled back and the slot stays, a unit unsold until a
//! rebuild (never one sold twice); a replay again finds it held and writes the row.
//!
//! Modelled: three users, a quantity of one in PostgreSQL and in Redis; admissions (a slot
//! taken, then the event delivered to the guarded insert, which locks the coupon's row too),
//! one admission beyond the quantity (the fault), a rebuild in its three steps (close,
//! read, load), a raise of one (PostgreSQL, then Redis), and a replay of each refused event
//! in its steps (lock, row, slot, commit; the API's death before the commit), which may be
//! tried again; one refusal of a replay's row for another reason (REJECTED).
//!
//! A bucketed coupon (issue 24) keeps a user's slot in their home bucket, with an
//! allocation of its own: there, the same three users are homed to two buckets (two to
//! bucket 0, one to bucket 1), the quantity is two (one unit each), a raise grows bucket 0,
//! a mover's supply moves a free unit from one open bucket to the other (its own protocol
//! is `bucket_model.rs`'s), and each bucket is rebuilt on its own, from the rows of its
//! users. The replay takes the slot in the user's home bucket, under that bucket's stamp,
//! read under the coupon's row lock; when the home has no free unit it is rolled back, and a
//! supply may bring one before it tries again. A bucket's stamp is recorded without the
//! coupon's row lock, but after its rebuild read the rows under the share lock, so it cannot
//! change between the replay's read and its slot unless the bucket was closed before the
//! slot (which then writes nothing): the model's `open` is that check. The model found a
//! replay that takes the slot in the coupon's own keys (bucket 0's), as a coupon of one
//! bucket's does (`OwnKeysOnly`). A bucket's sold-out mark answers SOLD_OUT without looking
//! at stock: the sold-out check marks every bucket once all are empty (one step here; its
//! two collects and generations are `bucket_model.rs`'s), and a raise or a bucket's rebuild
//! clears the marks.
//!
//! Invariants, in every state:
//! - every row's user holds a Redis slot in their home bucket once no rebuild of it is
//!   under way: no unit of the database's quantity is spent that no slot accounts for (or
//!   a user Redis admits on that unit, told 201, is refused);
//! - rows never exceed PostgreSQL's quantity;
//! - no bucket holds more slots than its allocation (beyond the one over-admission, the
//!   fault);
//! - no bucket is marked sold out while an open bucket has a unit for sale.

use testkit::explorer::{Protocol, finds, holds};

const USERS: usize = 3;
const BUCKETS: usize = 2;
/// Each user's home bucket, in the bucketed model.
const HOMES: [usize; USERS] = [0, 0, 1];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    None,
    /// The replay writes the row without taking a slot (the shell's `dlq replay`).
    NoSlot,
    /// The rebuild reads the rows without the share lock.
    ReadWithoutLock,
    /// The replay takes no lock across its steps.
    NoReplayLock,
    /// A bucketed coupon's replay takes the slot in the coupon's own keys (bucket 0's).
    OwnKeysOnly,
    /// An event REJECTED (its replay's row refused for another reason once) is replayed
    /// through the guarded insert alone, as only OVER_QUANTITY ones took a slot.
    RejectedWithoutSlot,
    /// A supply moves a unit out of a bucket with none free: the check that no bucket
    /// holds more than its allocation can fail.
    SupplyWithoutStock,
    /// A raise's landing grows the allocation without clearing the sold-out marks: the
    /// check that no bucket is marked while a unit is for sale can fail.
    RaiseKeepsMarks,
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
    /// Holds the failed event's and the coupon's row locks; writes the row next.
    Locked,
    /// The row written in the transaction (the guard let it), not yet visible; takes the
    /// slot next.
    Written,
    /// Took or found the slot; commits next.
    Slotted,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    quantity_db: u8,
    /// Each bucket's allocation in Redis (a coupon of one bucket has bucket 0 only).
    alloc: [u8; BUCKETS],
    raised: bool,
    /// Redis's issued sets: a user's slot is in their home bucket's.
    slots: [bool; USERS],
    /// A slot taken in bucket 0 for a user homed elsewhere (`Bug::OwnKeysOnly`).
    stray: [bool; USERS],
    /// Each bucket's sold-out mark.
    marked: [bool; BUCKETS],
    /// Whose replay's row has been refused for another reason (once in all): their event
    /// is REJECTED from then on.
    rejected: Option<usize>,
    rows: [bool; USERS],
    /// Admitted, the event on its way to the guarded insert.
    in_flight: [bool; USERS],
    /// Refused by the guard: an OVER_QUANTITY failed event.
    refused: [bool; USERS],
    replays: [Replay; USERS],
    over_admitted: bool,
    rebuild: [Rebuild; BUCKETS],
    rebuilt: [bool; BUCKETS],
}

impl State {
    fn written(&self) -> u8 {
        self.rows.iter().filter(|r| **r).count() as u8
    }

    /// The coupon's row is locked FOR UPDATE by a replay.
    fn locked(&self) -> bool {
        self.replays.iter().any(|r| *r != Replay::Idle)
    }
}

#[derive(Debug)]
enum Action {
    Admit(usize),
    /// Admitted beyond the quantity (the fault).
    OverAdmit(usize),
    Deliver(usize),
    RebuildClose(usize),
    RebuildRead(usize),
    RebuildLoad(usize),
    /// A mover's supply: a free unit from one bucket to the other.
    Supply(usize, usize),
    /// The sold-out check: every bucket marked.
    Mark,
    /// The replay's row refused for another reason than the quantity (REJECTED).
    ReplayRejected(usize),
    RaiseDatabase,
    RaiseRedis,
    ReplayLock(usize),
    ReplayRow(usize),
    ReplaySlot(usize),
    ReplayCommit(usize),
    /// The API dies before the commit: the transaction rolls back, a slot taken stays.
    ReplayDies(usize),
}

struct Model {
    bug: Bug,
    /// A bucketed coupon (else one of one bucket: every user's home is bucket 0).
    buckets: bool,
}

impl Model {
    fn home(&self, user: usize) -> usize {
        if self.buckets { HOMES[user] } else { 0 }
    }

    /// Where the replay takes `user`'s slot.
    fn replay_home(&self, user: usize) -> usize {
        if self.bug == Bug::OwnKeysOnly {
            0
        } else {
            self.home(user)
        }
    }

    fn buckets(&self) -> usize {
        if self.buckets { BUCKETS } else { 1 }
    }

    /// Slots taken in `bucket` (with the strays, in bucket 0).
    fn taken(&self, s: &State, bucket: usize) -> u8 {
        let homed = (0..USERS).filter(|u| s.slots[*u] && self.home(*u) == bucket);
        let stray = (0..USERS).filter(|u| bucket == 0 && s.stray[*u]);
        (homed.count() + stray.count()) as u8
    }

    fn open(&self, s: &State, bucket: usize) -> bool {
        s.rebuild[bucket] == Rebuild::Idle
    }
}

impl Protocol for Model {
    type State = State;
    type Action = Action;

    fn initial(&self) -> State {
        State {
            quantity_db: if self.buckets { 2 } else { 1 },
            alloc: if self.buckets { [1, 1] } else { [1, 0] },
            raised: false,
            slots: [false; USERS],
            stray: [false; USERS],
            marked: [false; BUCKETS],
            rejected: None,
            rows: [false; USERS],
            in_flight: [false; USERS],
            refused: [false; USERS],
            replays: [Replay::Idle; USERS],
            over_admitted: false,
            rebuild: [Rebuild::Idle; BUCKETS],
            rebuilt: [false; BUCKETS],
        }
    }

    fn actions(&self, s: &State) -> Vec<Action> {
        let mut actions = Vec::new();
        let lock_free = !s.locked() || self.bug == Bug::NoReplayLock;
        for user in 0..USERS {
            let home = self.home(user);
            if self.open(s, home) && !s.slots[user] && !s.rows[user] && !s.refused[user] {
                if self.taken(s, home) < s.alloc[home] {
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
                    Replay::Locked => {
                        actions.push(Action::ReplayRow(user));
                        if s.rejected.is_none() {
                            actions.push(Action::ReplayRejected(user));
                        }
                    }
                    Replay::Written => actions.push(Action::ReplaySlot(user)),
                    Replay::Slotted => {
                        actions.push(Action::ReplayCommit(user));
                        actions.push(Action::ReplayDies(user));
                    }
                }
            }
        }
        for bucket in 0..self.buckets() {
            let in_flight = (0..USERS).any(|u| s.in_flight[u] && self.home(u) == bucket);
            match s.rebuild[bucket] {
                Rebuild::Idle if !s.rebuilt[bucket] && !in_flight => {
                    actions.push(Action::RebuildClose(bucket))
                }
                // The share lock waits for a replay's (and a batch's) row lock.
                Rebuild::Closed
                    if !s.locked()
                        || matches!(self.bug, Bug::ReadWithoutLock | Bug::NoReplayLock) =>
                {
                    actions.push(Action::RebuildRead(bucket))
                }
                Rebuild::Read(_) => actions.push(Action::RebuildLoad(bucket)),
                _ => {}
            }
        }
        if self.buckets {
            for (from, to) in [(0, 1), (1, 0)] {
                let free = self.taken(s, from) < s.alloc[from]
                    || (self.bug == Bug::SupplyWithoutStock && s.alloc[from] > 0);
                if self.open(s, from) && self.open(s, to) && free {
                    actions.push(Action::Supply(from, to));
                }
            }
            let empty = (0..BUCKETS).all(|b| self.open(s, b) && self.taken(s, b) >= s.alloc[b]);
            if empty && s.marked.contains(&false) {
                actions.push(Action::Mark);
            }
        }
        let quantity_redis: u8 = s.alloc.iter().sum();
        if !s.raised {
            actions.push(Action::RaiseDatabase);
        } else if quantity_redis < s.quantity_db {
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
            Action::RebuildClose(bucket) => s.rebuild[bucket] = Rebuild::Closed,
            Action::RebuildRead(bucket) => s.rebuild[bucket] = Rebuild::Read(s.rows),
            Action::RebuildLoad(bucket) => {
                if let Rebuild::Read(rows) = s.rebuild[bucket] {
                    for (user, row) in rows.into_iter().enumerate() {
                        if self.home(user) == bucket {
                            s.slots[user] = row;
                        }
                    }
                    if bucket == 0 {
                        s.stray = [false; USERS];
                    }
                    // Every other bucket's mark cleared first, its own with the restore.
                    s.marked = [false; BUCKETS];
                }
                s.rebuild[bucket] = Rebuild::Idle;
                s.rebuilt[bucket] = true;
            }
            Action::Supply(from, to) => {
                s.alloc[from] -= 1;
                s.alloc[to] += 1;
            }
            Action::Mark => s.marked = [true; BUCKETS],
            Action::RaiseDatabase => {
                s.raised = true;
                s.quantity_db += 1;
            }
            Action::RaiseRedis => {
                // The raise's landing clears every mark before it grows a bucket.
                if self.bug != Bug::RaiseKeepsMarks {
                    s.marked = [false; BUCKETS];
                }
                s.alloc[0] += 1;
            }
            Action::ReplayLock(user) => s.replays[user] = Replay::Locked,
            // The guarded insert: the coupon's row is locked, so no other row commits
            // before this one does, and the guard's answer still holds at the commit.
            Action::ReplayRow(user) => {
                s.replays[user] = if s.written() < s.quantity_db {
                    Replay::Written
                } else {
                    // Refused (ABANDONED, with its reason): nothing taken, nothing to undo.
                    Replay::Idle
                };
            }
            Action::ReplayRejected(user) => {
                s.rejected = Some(user);
                s.replays[user] = Replay::Idle;
            }
            Action::ReplaySlot(user) => {
                let at = self.replay_home(user);
                let held = if at == self.home(user) {
                    s.slots[user]
                } else {
                    s.stray[user]
                };
                let no_slot = self.bug == Bug::NoSlot
                    || (self.bug == Bug::RejectedWithoutSlot && s.rejected == Some(user));
                s.replays[user] = if !self.open(&s, at) {
                    // Closed for its rebuild: rolled back, the row with it (503).
                    Replay::Idle
                } else if no_slot || held {
                    Replay::Slotted
                } else if self.taken(&s, at) < s.alloc[at] {
                    if at == self.home(user) {
                        s.slots[user] = true;
                    } else {
                        s.stray[user] = true;
                    }
                    Replay::Slotted
                } else {
                    // None free in the home: rolled back; a supply may bring a unit, then
                    // it tries again (409 once the coupon is sold out: raise first).
                    Replay::Idle
                };
            }
            Action::ReplayCommit(user) => {
                s.replays[user] = Replay::Idle;
                s.rows[user] = true;
                s.refused[user] = false;
            }
            Action::ReplayDies(user) => s.replays[user] = Replay::Idle,
        }
        s
    }

    fn violation(&self, s: &State) -> Option<&'static str> {
        if s.written() > s.quantity_db {
            return Some("rows never exceed PostgreSQL's quantity");
        }
        let holds_no_slot = |u: usize| s.rows[u] && !s.slots[u] && self.open(s, self.home(u));
        if (0..USERS).any(holds_no_slot) {
            return Some("every row's user holds a Redis slot");
        }
        let over = u8::from(s.over_admitted);
        for bucket in 0..self.buckets() {
            if self.open(s, bucket) && self.taken(s, bucket) > s.alloc[bucket] + over {
                return Some("no bucket holds more slots than its allocation");
            }
        }
        let for_sale =
            (0..self.buckets()).any(|b| self.open(s, b) && self.taken(s, b) < s.alloc[b]);
        if for_sale && s.marked.contains(&true) {
            return Some("no bucket is marked sold out while a unit is for sale");
        }
        None
    }
}

fn model(bug: Bug, buckets: bool) -> Model {
    Model { bug, buckets }
}

#[test]
fn every_reachable_state_keeps_every_invariant() {
    holds(
        &model(Bug::None, false),
        "the failed-event replay model",
        400,
    );
    holds(
        &model(Bug::None, true),
        "the failed-event replay model, two buckets",
        5_000,
    );
}

#[test]
fn a_replay_that_takes_no_slot_is_found() {
    for buckets in [false, true] {
        finds(
            &model(Bug::NoSlot, buckets),
            "every row's user holds a Redis slot",
        );
    }
}

#[test]
fn a_rebuild_reading_the_rows_without_the_share_lock_is_found() {
    for buckets in [false, true] {
        finds(
            &model(Bug::ReadWithoutLock, buckets),
            "every row's user holds a Redis slot",
        );
    }
}

#[test]
fn a_replay_without_the_lock_across_its_steps_is_found() {
    for buckets in [false, true] {
        finds(
            &model(Bug::NoReplayLock, buckets),
            "every row's user holds a Redis slot",
        );
    }
}

#[test]
fn a_rejected_event_replayed_without_a_slot_is_found() {
    for buckets in [false, true] {
        finds(
            &model(Bug::RejectedWithoutSlot, buckets),
            "every row's user holds a Redis slot",
        );
    }
}

#[test]
fn a_supply_moving_a_unit_none_free_is_found() {
    finds(
        &model(Bug::SupplyWithoutStock, true),
        "no bucket holds more slots than its allocation",
    );
}

#[test]
fn a_raise_landing_under_the_marks_is_found() {
    finds(
        &model(Bug::RaiseKeepsMarks, true),
        "marked sold out while a unit is for sale",
    );
}

#[test]
fn a_bucketed_replay_taking_the_slot_in_the_coupons_own_keys_is_found() {
    finds(
        &model(Bug::OwnKeysOnly, true),
        "every row's user holds a Redis slot",
    );
}
