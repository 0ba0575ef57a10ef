//! An exhaustive check of the Kafka-mode issue protocol: every interleaving of three users'
//! requests (the first user sends two, the others one each), two API processes with their
//! reconcilers, the broker, the worker, one API crash and one Redis loss, over a coupon of 2,
//! with every invariant checked in every reachable state.
//!
//! The steps are named after the real code: `admission.lua` (admit), `ledger.lua` (claim,
//! release, doubt, settle), `Issuer::publish_new` and `Issuer::republish` (publish and its
//! three outcomes), the reconciler, the worker's guarded batch insert, `rebuild`.
//!
//! The explorer is a plain breadth-first search with a visited set and parent links for the
//! counterexample trace. The `stateright` crate does the same and more, but it brings an
//! HTTP server (its explorer UI), a random-number stack and a concurrent map into the build
//! for what is forty lines here.

use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;

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
    /// owner's late "certainly not persisted" release still matched (finding 1).
    UnownedRepublish,
    /// A request for a user whose first publish was unresolved answered ALREADY_ISSUED.
    AlreadyIssuedWhileUnresolved,
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
    // PostgreSQL
    rows: [bool; N],
    over_quantity: Vec<u8>,
    // Processes and users
    tasks: Vec<Task>,
    api_alive: [bool; APIS as usize],
    crashes_left: u8,
    redis_losses_left: u8,
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
    Persist(usize),
    ApiCrash(u8),
    RedisLoss,
    Rebuild,
}

struct Model {
    bug: Bug,
}

impl State {
    fn initial() -> Self {
        State {
            meta: true,
            issued: [false; N],
            pending: [None; N],
            logged: [false; N],
            unpersisted: Vec::new(),
            limbo: Vec::new(),
            rows: [false; N],
            over_quantity: Vec::new(),
            tasks: Vec::new(),
            api_alive: [true; APIS as usize],
            crashes_left: 1,
            redis_losses_left: 1,
            requests_left: REQUESTS,
            lie: None,
            next_event: [0; N],
        }
    }

    /// Nothing in flight, nothing pending, the worker caught up, Redis whole.
    fn at_rest(&self) -> bool {
        self.meta
            && self.tasks.is_empty()
            && self.limbo.is_empty()
            && self.unpersisted.is_empty()
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

impl Model {
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
                            }
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
        for i in 0..s.unpersisted.len() {
            actions.push(Action::Persist(i));
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
        // The rebuild waits out the publish window (every publish admitted before the loss
        // has reported, and what it sent has landed or not) and for the workers to reach the
        // end of the log.
        if !s.meta
            && s.limbo.is_empty()
            && s.unpersisted.is_empty()
            && !s
                .tasks
                .iter()
                .any(|t| matches!(t.phase, Phase::Publishing { .. }))
        {
            actions.push(Action::Rebuild);
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
                let task = s.tasks[i];
                let user = task.user as usize;
                if !s.meta {
                    s.finish(i, Some(Answer::Unavailable));
                } else if let Some(entry) = s.pending[user] {
                    let unresolved = entry.state != EntryState::Doubt && !entry.stale;
                    if self.bug == Bug::AlreadyIssuedWhileUnresolved && unresolved {
                        s.finish(i, Some(Answer::AlreadyIssued));
                    } else {
                        s.tasks[i].phase = Phase::Claiming;
                    }
                } else if s.issued[user] {
                    s.finish(i, Some(Answer::AlreadyIssued));
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
                    s.tasks.push(Task {
                        user,
                        api,
                        phase: Phase::Publishing {
                            expected,
                            owner: Owner::Reconciler,
                            first: false,
                        },
                    });
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
                        s.pending[user as usize] = None;
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
                let (_, user) = s.unpersisted.remove(i);
                if !s.rows[user as usize] {
                    if s.rows.iter().filter(|r| **r).count() < QUANTITY {
                        s.rows[user as usize] = true;
                    } else {
                        s.over_quantity.push(user);
                    }
                }
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
            }
            Action::Rebuild => {
                s.issued = s.rows;
                s.meta = true;
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
        if s.at_rest() && s.issued != s.rows {
            return Some("no leaked stock: at rest, Redis's holders are not exactly the rows");
        }
        None
    }
}

/// Past this many states the model has grown beyond what the suite should run.
const STATE_LIMIT: usize = 30_000_000;

/// Breadth-first over every reachable state; the number explored and the first violation
/// with its trace.
fn check(model: &Model) -> (usize, Option<(&'static str, Vec<String>)>) {
    let mut parents: Vec<Option<(usize, Action)>> = vec![None];
    let mut seen = HashMap::from([(State::initial(), 0usize)]);
    let mut queue = VecDeque::from([(State::initial(), 0usize)]);
    while let Some((state, index)) = queue.pop_front() {
        let actions = model.actions(&state);
        if let Some(broken) = model.violation(&state) {
            let mut trace = Vec::new();
            let mut at = index;
            while let Some((parent, action)) = &parents[at] {
                trace.push(format!("{action:?}"));
                at = *parent;
            }
            trace.reverse();
            return (parents.len(), Some((broken, trace)));
        }
        for action in actions {
            let next = model.next(&state, &action);
            if !seen.contains_key(&next) {
                let id = parents.len();
                assert!(id < STATE_LIMIT, "more than {STATE_LIMIT} states");
                seen.insert(next.clone(), id);
                queue.push_back((next, id));
                parents.push(Some((index, action)));
            }
        }
    }
    (parents.len(), None)
}

#[test]
fn every_reachable_state_keeps_every_invariant() {
    let (explored, violation) = check(&Model { bug: Bug::None });
    assert!(violation.is_none(), "{violation:#?}");
    // Not a vacuous pass: the space is the one described at the top.
    assert!(explored > 100_000, "only {explored} states");
    eprintln!("{explored} states, every invariant held");
}

#[test]
fn an_unowned_republish_is_found() {
    let (_, violation) = check(&Model {
        bug: Bug::UnownedRepublish,
    });
    let (broken, trace) = violation.expect("the bug breaks an invariant");
    eprintln!("{broken}\n  {}", trace.join("\n  "));
    // The slot is given back while its event lands: a row without a holder, and the slot
    // sold again (an oversell) a few steps later.
    assert!(broken.starts_with("no leaked stock"), "{broken}");
}

#[test]
fn already_issued_while_unresolved_is_found() {
    let (_, violation) = check(&Model {
        bug: Bug::AlreadyIssuedWhileUnresolved,
    });
    let (broken, trace) = violation.expect("the bug breaks an invariant");
    eprintln!("{broken}\n  {}", trace.join("\n  "));
    assert!(broken.starts_with("errors tell the truth"), "{broken}");
}
