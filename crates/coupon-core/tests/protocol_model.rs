//! An exhaustive check of the Kafka-mode issue protocol: every interleaving of three users'
//! requests (the first user sends two, the others one each), two API processes with their
//! reconcilers, the broker, the worker, over a coupon of 2, with every invariant checked in
//! every reachable state. Three runs: one API crash and one Redis loss; one worker death
//! between a persist and its offset commit; one rebuild started on a coupon that is open and
//! selling (`issuer-api rebuild-redis`), see `Faults`.
//!
//! The steps are named after the real code: `admission.lua` (admit), `ledger.lua` (claim,
//! release, doubt, settle), `KafkaDelivery::publish_new` and `KafkaDelivery::republish`
//! (publish and its three outcomes; an API crash before or after the send), the reconciler,
//! the worker's guarded batch insert and offset commit, broker redelivery, and the rebuild
//! (`issuing/rebuild.rs`) in its real round trips: the lease (`rebuild_lease.lua`, which
//! closes admission), the publish window's wait and the fence, the read of the pending
//! entries, the wait for the workers and the read of PostgreSQL, the restore.
//! The Redis queue mode's protocol has its own model (`stream_model.rs`).

use testkit::explorer::{Protocol, finds, holds};

const USERS: u8 = 3;
const QUANTITY: usize = 2;
const APIS: u8 = 2;
/// Claims (republishes) of one entry that the model explores. The real protocol claims
/// until an acknowledgement; one covers "a republish races the owner's report", and the
/// two reconcilers plus the user's retry still race each other for it. (Two claims took the
/// space past 10 million states: too long for `make test` on two cores.)
const MAX_CLAIMS: u8 = 1;
/// Requests each user sends: the first user's two may overlap (a double click, a retry).
const REQUESTS: [u8; USERS as usize] = [2, 1, 1];

/// A bug of the past, put back into the model to show that the check finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bug {
    None,
    /// A retry or reconciler republished an entry without taking it from its owner, so the
    /// owner's late "certainly not persisted" release still matched.
    UnownedRepublish,
    /// A request for a user whose first publish was unresolved answered ALREADY_ISSUED.
    AlreadyIssuedWhileUnresolved,
    /// The reconciler claimed a pass's entries first and published them after, so a
    /// publish could start after a rebuild's publish-window wait was over.
    LateReconcilerPublish,
    /// The worker committed an event's offset before its row was persisted.
    CommitBeforePersist,
    /// A rebuild ran with admission open: its lease did not close the coupon, so a user released after the rebuild read the
    /// pending entries was written back with no event.
    RebuildWhileOpen,
    /// A rebuild read the log's end right after the publish window, with no fence: a send
    /// reported "possibly persisted" can still be committed after that (a follower in the
    /// in-sync set holds the high watermark back for as long as it stays there).
    RebuildWithoutFence,
    /// A release gave the slot back and left its pending entry: admission, which asks about
    /// an entry only for a holder, would take the slot anew and write over it.
    ReleaseKeepsEntry,
}

/// Where a rebuild is, between its round trips.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Rebuilding {
    /// The lease is taken; the publish window runs.
    Leased,
    /// The window is over; the pending entries are read next.
    Waited,
    /// The users with pending entries, as read; the workers are waited for next.
    ReadPending([bool; N]),
    /// Every holder found (pending, then PostgreSQL's rows): written back next.
    Found([bool; N]),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum EntryState {
    InFlight,
    Doubt,
    Claimed,
}

/// A pending entry: the real one compares its whole text, event id, state, since and
/// attempt; `version` stands for since and attempt. `stale` is "its window has passed",
/// which the text does not show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Entry {
    event: u8,
    state: EntryState,
    version: u8,
    stale: bool,
}

impl Entry {
    fn same_text(&self, other: &Entry) -> bool {
        (self.event, self.state, self.version) == (other.event, other.state, other.version)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Answer {
    Success,
    AlreadyIssued,
    SoldOut,
    Unavailable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Owner {
    Request,
    Reconciler,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Phase {
    /// Sent to an API, not yet admitted.
    Arrived,
    /// A reconciler claimed `expected` and has not started its publish (only with
    /// `Bug::LateReconcilerPublish`: the real reconciler starts it with the claim).
    ClaimedUnsent { expected: Entry },
    /// The admission script said PENDING; the claim comes next.
    Claiming,
    /// Publishing `expected.event`; the entry it owns is `expected`. `first`: the
    /// admitting request's own publish (`publish_new`), else a republish.
    Publishing {
        expected: Entry,
        owner: Owner,
        first: bool,
    },
}

/// A request in progress (or a reconciler's republish: `user` is whose entry it is).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Task {
    user: u8,
    api: u8,
    phase: Phase,
}

const N: usize = USERS as usize;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    // Redis
    meta: bool,
    issued: [bool; N],
    pending: [Option<Entry>; N],
    // Kafka: which users have an event in the log (for good), the (event, user) pairs the
    // worker has not persisted yet, and what may still land (sent, unanswered). The worker
    // may take the unpersisted events in any order: a superset of the log's one order,
    // which keeps the space small and loses no behaviour.
    logged: [bool; N],
    unpersisted: Vec<(u8, u8)>,
    limbo: Vec<(u8, u8)>,
    /// Persisted by the worker, offsets not committed yet: redelivered if it dies.
    uncommitted: Vec<(u8, u8)>,
    worker_crashes_left: u8,
    // PostgreSQL
    rows: [bool; N],
    over_quantity: Vec<u8>,
    // Processes and users
    tasks: Vec<Task>,
    api_alive: [bool; APIS as usize],
    crashes_left: u8,
    redis_losses_left: u8,
    /// Rebuilds an operator may still start on an open coupon.
    open_rebuilds_left: u8,
    rebuild: Option<Rebuilding>,
    requests_left: [u8; N],
    /// The first untrue answer given, if any. Answers are checked when they are given (the
    /// log they are checked against only grows), so the state need not keep them.
    lie: Option<&'static str>,
    /// Event ids are per user: only one user's events are ever compared.
    next_event: [u8; N],
}

#[derive(Clone, Debug)]
enum Action {
    Request { user: u8, api: u8 },
    Admit(usize),
    Claim(usize),
    ReconcilerClaim { api: u8, user: u8 },
    Ack(usize),
    NotPersisted(usize),
    PossiblyPersisted(usize),
    WindowPasses(u8),
    LateAppend(usize),
    LateDrop(usize),
    StartPublish(usize),
    Persist(usize),
    CommitOffsets,
    WorkerCrash,
    CommitThenCrash(usize),
    ApiCrash(u8),
    RedisLoss,
    RebuildLease,
    RebuildWaited,
    RebuildReadPending,
    RebuildReadRows,
    RebuildRestore,
}

/// Which faults a run explores, once each. All three together pass 20 million states,
/// more than the suite can afford on two cores; the worker's death touches only the worker's
/// persist and commit, so it is explored in a run of its own.
#[derive(Clone, Copy, Debug)]
struct Faults {
    api_crash: bool,
    redis_loss: bool,
    worker_death: bool,
    open_rebuild: bool,
}

/// An API crash and a Redis loss, and the worker persisting and committing as one step.
const API_AND_REDIS: Faults = Faults {
    api_crash: true,
    redis_loss: true,
    worker_death: false,
    open_rebuild: false,
};
/// The worker dying between a persist and its offset commit.
const WORKER_DEATH: Faults = Faults {
    api_crash: false,
    redis_loss: false,
    worker_death: true,
    open_rebuild: false,
};
/// An operator's rebuild of a coupon that is open and selling, at any moment.
const OPEN_REBUILD: Faults = Faults {
    api_crash: false,
    redis_loss: false,
    worker_death: false,
    open_rebuild: true,
};

struct Model {
    bug: Bug,
    faults: Faults,
}

impl State {
    fn initial(faults: Faults) -> Self {
        State {
            meta: true,
            issued: [false; N],
            pending: [None; N],
            logged: [false; N],
            unpersisted: Vec::new(),
            limbo: Vec::new(),
            uncommitted: Vec::new(),
            worker_crashes_left: u8::from(faults.worker_death),
            rows: [false; N],
            over_quantity: Vec::new(),
            tasks: Vec::new(),
            api_alive: [true; APIS as usize],
            crashes_left: u8::from(faults.api_crash),
            redis_losses_left: u8::from(faults.redis_loss),
            open_rebuilds_left: u8::from(faults.open_rebuild),
            rebuild: None,
            requests_left: REQUESTS,
            lie: None,
            next_event: [0; N],
        }
    }

    /// Nothing in flight, nothing pending, the worker caught up, Redis whole.
    fn at_rest(&self) -> bool {
        self.meta
            && self.rebuild.is_none()
            && self.tasks.is_empty()
            && self.limbo.is_empty()
            && self.unpersisted.is_empty()
            && self.uncommitted.is_empty()
            && self.pending.iter().all(Option::is_none)
    }

    fn admitted(&self) -> usize {
        self.issued.iter().filter(|i| **i).count()
    }

    fn in_log(&self, user: u8) -> bool {
        self.logged[user as usize]
    }

    fn publishing(&self, task: usize) -> (u8, Entry, Owner, bool) {
        match self.tasks[task] {
            Task {
                user,
                phase:
                    Phase::Publishing {
                        expected,
                        owner,
                        first,
                    },
                ..
            } => (user, expected, owner, first),
            other => unreachable!("not publishing: {other:?}"),
        }
    }

    fn finish(&mut self, task: usize, answer: Option<Answer>) {
        let task = self.tasks.remove(task);
        let logged = self.in_log(task.user);
        let lie = match answer {
            Some(Answer::Success) if !logged => {
                Some("no lost success: SUCCESS without the event in the log")
            }
            Some(Answer::AlreadyIssued) if !logged => {
                Some("errors tell the truth: ALREADY_ISSUED before the event is in the log")
            }
            _ => None,
        };
        self.lie = self.lie.or(lie);
    }

    /// An event lands in the log. A second copy of one event (a republish) is delivered
    /// again; the worker's insert ignores it like any duplicate.
    fn append(&mut self, event: u8, user: u8) {
        self.logged[user as usize] = true;
        if !self.unpersisted.contains(&(event, user)) {
            self.unpersisted.push((event, user));
            self.unpersisted.sort_unstable();
        }
    }

    /// ledger.lua settle: the entry goes if it is still this event's.
    fn settle(&mut self, user: u8, event: u8) {
        if self.pending[user as usize].is_some_and(|e| e.event == event) {
            self.pending[user as usize] = None;
        }
    }

    /// ledger.lua claim.
    fn claim(&mut self, user: u8, bug: Bug) -> Option<Entry> {
        let entry = self.pending[user as usize]?;
        if entry.state != EntryState::Doubt && !entry.stale || entry.version >= 2 * MAX_CLAIMS {
            return None;
        }
        if bug == Bug::UnownedRepublish {
            return Some(entry);
        }
        let claimed = Entry {
            state: EntryState::Claimed,
            version: entry.version + 1,
            stale: false,
            ..entry
        };
        self.pending[user as usize] = Some(claimed);
        Some(claimed)
    }

    /// ledger.lua doubt: only the entry's owner hands it back.
    fn doubt(&mut self, user: u8, expected: &Entry) {
        if let Some(entry) = self.pending[user as usize]
            && entry.same_text(expected)
        {
            self.pending[user as usize] = Some(Entry {
                state: EntryState::Doubt,
                version: entry.version + 1,
                stale: false,
                ..entry
            });
        }
    }
}

impl Protocol for Model {
    type State = State;
    type Action = Action;

    fn initial(&self) -> State {
        State::initial(self.faults)
    }

    fn actions(&self, s: &State) -> Vec<Action> {
        let mut actions = Vec::new();
        for user in 0..USERS {
            // A user's requests alternate between the two APIs (a retry through the load
            // balancer lands on the other one), which keeps the space to what matters.
            let left = s.requests_left[user as usize];
            if left > 0 {
                let api = (user + left) % APIS;
                if s.api_alive[api as usize] {
                    actions.push(Action::Request { user, api });
                }
            }
            if s.pending[user as usize].is_some_and(|e| e.state != EntryState::Doubt && !e.stale) {
                actions.push(Action::WindowPasses(user));
            }
            // Each API's reconciler republishes one entry at a time here (the real one
            // republishes a pass's entries concurrently; two reconcilers and the users'
            // retries already race each other).
            for api in 0..APIS {
                let busy = s.tasks.iter().any(|t| {
                    t.api == api
                        && matches!(
                            t.phase,
                            Phase::Publishing {
                                owner: Owner::Reconciler,
                                ..
                            } | Phase::ClaimedUnsent { .. }
                        )
                });
                if s.api_alive[api as usize] && s.pending[user as usize].is_some() && !busy {
                    actions.push(Action::ReconcilerClaim { api, user });
                }
            }
        }
        for (i, task) in s.tasks.iter().enumerate() {
            match task.phase {
                Phase::Arrived => actions.push(Action::Admit(i)),
                Phase::ClaimedUnsent { .. } => actions.push(Action::StartPublish(i)),
                Phase::Claiming => actions.push(Action::Claim(i)),
                Phase::Publishing { .. } => {
                    actions.push(Action::Ack(i));
                    actions.push(Action::NotPersisted(i));
                    actions.push(Action::PossiblyPersisted(i));
                }
            }
        }
        for i in 0..s.limbo.len() {
            actions.push(Action::LateAppend(i));
            actions.push(Action::LateDrop(i));
        }
        // The worker: persist (the guarded batch insert), then commit the offsets; dying in
        // between, the broker redelivers what was persisted and not committed.
        for i in 0..s.unpersisted.len() {
            actions.push(Action::Persist(i));
            if self.bug == Bug::CommitBeforePersist && s.worker_crashes_left > 0 {
                actions.push(Action::CommitThenCrash(i));
            }
        }
        if !s.uncommitted.is_empty() {
            actions.push(Action::CommitOffsets);
            if s.worker_crashes_left > 0 {
                actions.push(Action::WorkerCrash);
            }
        }
        if s.crashes_left > 0 {
            for api in 0..APIS {
                if s.api_alive[api as usize] {
                    actions.push(Action::ApiCrash(api));
                }
            }
        }
        if s.redis_losses_left > 0 && s.meta {
            actions.push(Action::RedisLoss);
        }
        // The rebuild, round trip by round trip. Its lease is taken after a loss (the lazy
        // rebuild of the first request) or, on an open coupon, by an operator.
        match s.rebuild {
            None if !s.meta || s.open_rebuilds_left > 0 => actions.push(Action::RebuildLease),
            None => {}
            // It waits out the publish window: every publish started before the lease has
            // reported by then. A claimed publish not started yet is not covered by the
            // window: that is why the reconciler starts it with the claim. Then a fence on
            // the coupon's partition (`coupon_core::event::Fence`), acknowledged only once
            // every send before it is committed: what a publish reported "possibly
            // persisted" has landed or never will, so the limbo is empty when the rebuild
            // reads the log's end. (A fence not acknowledged fails the rebuild: the next
            // request leases it anew, which the model need not repeat.) The limbo is what
            // the leader appended; a send still travelling to it past the window is
            // assumed away, as the window itself assumes (README, "What is not true").
            Some(Rebuilding::Leased)
                if (s.limbo.is_empty() || self.bug == Bug::RebuildWithoutFence)
                    && !s
                        .tasks
                        .iter()
                        .any(|t| matches!(t.phase, Phase::Publishing { .. })) =>
            {
                actions.push(Action::RebuildWaited)
            }
            Some(Rebuilding::Leased) => {}
            Some(Rebuilding::Waited) => actions.push(Action::RebuildReadPending),
            // Then for the workers to reach the end of the log (committed offsets).
            Some(Rebuilding::ReadPending(_))
                if s.unpersisted.is_empty() && s.uncommitted.is_empty() =>
            {
                actions.push(Action::RebuildReadRows)
            }
            Some(Rebuilding::ReadPending(_)) => {}
            Some(Rebuilding::Found(_)) => actions.push(Action::RebuildRestore),
        }
        actions
    }

    fn next(&self, last: &State, action: &Action) -> State {
        let mut s = last.clone();
        match *action {
            Action::Request { user, api } => {
                s.requests_left[user as usize] -= 1;
                s.tasks.push(Task {
                    user,
                    api,
                    phase: Phase::Arrived,
                });
            }
            Action::Admit(i) => {
                // In admission.lua's order: the refusal the state gives first, then whether
                // the user holds a slot (SISMEMBER for a refusal, the SADD's answer for an
                // admission), and a holder's pending entry only then. That a pending entry
                // exists only beside its slot is an invariant below: the script never asks
                // a non-holder about one.
                let task = s.tasks[i];
                let user = task.user as usize;
                if !s.meta {
                    s.finish(i, Some(Answer::Unavailable));
                } else if s.issued[user] {
                    match s.pending[user] {
                        Some(entry) => {
                            let unresolved = entry.state != EntryState::Doubt && !entry.stale;
                            if self.bug == Bug::AlreadyIssuedWhileUnresolved && unresolved {
                                s.finish(i, Some(Answer::AlreadyIssued));
                            } else {
                                s.tasks[i].phase = Phase::Claiming;
                            }
                        }
                        None => s.finish(i, Some(Answer::AlreadyIssued)),
                    }
                } else if s.admitted() >= QUANTITY {
                    s.finish(i, Some(Answer::SoldOut));
                } else {
                    let entry = Entry {
                        event: s.next_event[user],
                        state: EntryState::InFlight,
                        version: 0,
                        stale: false,
                    };
                    s.next_event[user] += 1;
                    s.issued[user] = true;
                    s.pending[user] = Some(entry);
                    s.tasks[i].phase = Phase::Publishing {
                        expected: entry,
                        owner: Owner::Request,
                        first: true,
                    };
                }
            }
            Action::Claim(i) => {
                let user = s.tasks[i].user;
                if s.pending[user as usize].is_none() {
                    // Settled or released since admission: ask admission again.
                    s.tasks[i].phase = Phase::Arrived;
                } else {
                    match s.claim(user, self.bug) {
                        Some(expected) => {
                            s.tasks[i].phase = Phase::Publishing {
                                expected,
                                owner: Owner::Request,
                                first: false,
                            };
                        }
                        // Busy past the short wait: unknown, retry.
                        None => s.finish(i, Some(Answer::Unavailable)),
                    }
                }
            }
            Action::ReconcilerClaim { api, user } => {
                if let Some(expected) = s.claim(user, self.bug) {
                    let phase = if self.bug == Bug::LateReconcilerPublish {
                        Phase::ClaimedUnsent { expected }
                    } else {
                        Phase::Publishing {
                            expected,
                            owner: Owner::Reconciler,
                            first: false,
                        }
                    };
                    s.tasks.push(Task { user, api, phase });
                }
            }
            Action::StartPublish(i) => {
                if let Phase::ClaimedUnsent { expected } = s.tasks[i].phase {
                    s.tasks[i].phase = Phase::Publishing {
                        expected,
                        owner: Owner::Reconciler,
                        first: false,
                    };
                }
            }
            Action::Ack(i) => {
                let (user, expected, owner, _) = s.publishing(i);
                s.append(expected.event, user);
                s.settle(user, expected.event);
                s.finish(i, (owner == Owner::Request).then_some(Answer::Success));
            }
            Action::NotPersisted(i) => {
                let (user, expected, owner, first) = s.publishing(i);
                if first {
                    // publish_new: release, only the entry it owns.
                    if s.pending[user as usize].is_some_and(|e| e.same_text(&expected)) {
                        if self.bug != Bug::ReleaseKeepsEntry {
                            s.pending[user as usize] = None;
                        }
                        s.issued[user as usize] = false;
                    }
                } else {
                    // republish: an earlier attempt may have reached the log.
                    s.doubt(user, &expected);
                }
                s.finish(i, (owner == Owner::Request).then_some(Answer::Unavailable));
            }
            Action::PossiblyPersisted(i) => {
                let (user, expected, owner, _) = s.publishing(i);
                // What was sent lands later, or never (LateAppend, LateDrop). One such event
                // at a time is explored; a second one's fate is decided at its report.
                if s.limbo.is_empty() {
                    s.limbo.push((expected.event, user));
                }
                s.doubt(user, &expected);
                s.finish(i, (owner == Owner::Request).then_some(Answer::Unavailable));
            }
            Action::WindowPasses(user) => {
                if let Some(entry) = s.pending[user as usize].as_mut() {
                    entry.stale = true;
                }
            }
            Action::LateAppend(i) => {
                let (event, user) = s.limbo.remove(i);
                s.append(event, user);
            }
            Action::LateDrop(i) => {
                s.limbo.remove(i);
            }
            Action::Persist(i) => {
                // The worker's guarded insert: one row per user, never past the quantity.
                let (event, user) = s.unpersisted.remove(i);
                if !s.rows[user as usize] {
                    if s.rows.iter().filter(|r| **r).count() < QUANTITY {
                        s.rows[user as usize] = true;
                    } else {
                        s.over_quantity.push(user);
                    }
                }
                // Once the worker can no longer die, its commit cannot be lost: persist and
                // commit are one step (fewer states, no behaviour lost).
                if s.worker_crashes_left > 0 && !s.uncommitted.contains(&(event, user)) {
                    s.uncommitted.push((event, user));
                    s.uncommitted.sort_unstable();
                }
            }
            Action::CommitOffsets => s.uncommitted.clear(),
            Action::WorkerCrash => {
                s.worker_crashes_left -= 1;
                for event in std::mem::take(&mut s.uncommitted) {
                    if !s.unpersisted.contains(&event) {
                        s.unpersisted.push(event);
                    }
                }
                s.unpersisted.sort_unstable();
            }
            Action::CommitThenCrash(i) => {
                // The offset is past the event, and the row never came: nothing redelivers it.
                s.worker_crashes_left -= 1;
                s.unpersisted.remove(i);
            }
            Action::ApiCrash(api) => {
                s.crashes_left -= 1;
                s.api_alive[api as usize] = false;
                // What it was sending may still land.
                for task in s.tasks.iter().filter(|t| t.api == api) {
                    if let Phase::Publishing { expected, .. } = task.phase
                        && s.limbo.is_empty()
                    {
                        s.limbo.push((expected.event, task.user));
                    }
                }
                s.tasks.retain(|t| t.api != api);
            }
            Action::RedisLoss => {
                s.redis_losses_left -= 1;
                s.meta = false;
                s.issued = [false; N];
                s.pending = [None; N];
                // A rebuild under way finds the instance changed at its restore, and ends
                // without reopening admission; the next request leases anew.
                s.rebuild = None;
            }
            Action::RebuildLease => {
                if s.meta {
                    s.open_rebuilds_left -= 1;
                    // rebuild_lease.lua closes admission with the lease.
                    s.meta = self.bug == Bug::RebuildWhileOpen;
                }
                s.rebuild = Some(Rebuilding::Leased);
            }
            Action::RebuildWaited => s.rebuild = Some(Rebuilding::Waited),
            Action::RebuildReadPending => {
                let pending = s.pending.map(|entry| entry.is_some());
                s.rebuild = Some(Rebuilding::ReadPending(pending));
            }
            Action::RebuildReadRows => {
                if let Some(Rebuilding::ReadPending(pending)) = s.rebuild {
                    let found = std::array::from_fn(|user| pending[user] || s.rows[user]);
                    s.rebuild = Some(Rebuilding::Found(found));
                }
            }
            Action::RebuildRestore => {
                // SADD every holder found (nobody is removed), then the meta, which opens
                // admission.
                if let Some(Rebuilding::Found(found)) = s.rebuild {
                    for (issued, found) in s.issued.iter_mut().zip(found) {
                        *issued |= found;
                    }
                }
                s.meta = true;
                s.rebuild = None;
            }
        }
        s.tasks.sort();
        s.limbo.sort();
        s
    }

    /// The invariants of DESIGN.md as they apply here; the first one broken, if any.
    fn violation(&self, s: &State) -> Option<&'static str> {
        if s.admitted() > QUANTITY || !s.over_quantity.is_empty() {
            return Some("no oversell: a winner's event ended OVER_QUANTITY");
        }
        if let Some(lie) = s.lie {
            return Some(lie);
        }
        if (0..N).any(|user| s.pending[user].is_some() && !s.issued[user]) {
            return Some("a pending entry only beside its slot: an entry without a holder");
        }
        if s.at_rest() && s.issued != s.rows {
            return Some(
                "every yes a row, no leaked stock: at rest, Redis's holders are not exactly the rows",
            );
        }
        None
    }
}

fn model(bug: Bug, faults: Faults) -> Model {
    Model { bug, faults }
}

#[test]
fn every_reachable_state_keeps_every_invariant() {
    for faults in [API_AND_REDIS, WORKER_DEATH, OPEN_REBUILD] {
        // Not a vacuous pass: the space is the one described at the top.
        holds(&model(Bug::None, faults), faults, 100_000);
    }
}

#[test]
fn an_unowned_republish_is_found() {
    // The slot is given back while its event lands: a row without a holder, and the slot
    // sold again (an oversell) a few steps later.
    finds(
        &model(Bug::UnownedRepublish, API_AND_REDIS),
        "no leaked stock",
    );
}

#[test]
fn already_issued_while_unresolved_is_found() {
    finds(
        &model(Bug::AlreadyIssuedWhileUnresolved, API_AND_REDIS),
        "errors tell the truth",
    );
}

#[test]
fn a_reconciler_publish_started_after_its_claim_is_found() {
    // The publish lands after the rebuild read PostgreSQL: its row has no holder in Redis.
    finds(
        &model(Bug::LateReconcilerPublish, API_AND_REDIS),
        "every yes a row",
    );
}

#[test]
fn an_offset_committed_before_its_row_is_found() {
    finds(
        &model(Bug::CommitBeforePersist, WORKER_DEATH),
        "every yes a row",
    );
}

#[test]
fn a_rebuild_with_admission_open_is_found() {
    // A user admitted after the rebuild's window, read among the pending entries, then
    // released (their publish certainly failed), is written back: a holder with no event.
    finds(
        &model(Bug::RebuildWhileOpen, OPEN_REBUILD),
        "every yes a row",
    );
}

#[test]
fn a_rebuild_without_a_fence_is_found() {
    // A send reported "possibly persisted" whose entry died with Redis is committed after
    // the rebuild read the log: its user holds a row Redis does not know of, a slot Redis
    // would sell again.
    finds(
        &model(Bug::RebuildWithoutFence, API_AND_REDIS),
        "Redis's holders are not exactly the rows",
    );
}

#[test]
fn a_release_that_keeps_its_entry_is_found() {
    finds(
        &model(Bug::ReleaseKeepsEntry, API_AND_REDIS),
        "a pending entry only beside its slot",
    );
}
