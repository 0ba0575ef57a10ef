//! An exhaustive check of the rate limit's sharing (issuer-api's `rate_limit.rs` and
//! `scripts/rate_limit.lua`): two API instances count one client's requests in memory and
//! judge each at once against the shared total Redis last answered plus what they counted
//! since; a sync takes the unsent counts (moved to the shared ones), adds them in Redis,
//! and takes the total Redis answers. A sync is three steps, as in the code: the counts
//! are taken, the script runs (or never reaches Redis), the reply comes back (or is lost);
//! any other step may run in between, and a failed sync gives its counts back to be sent
//! with the next.
//!
//! Coarser than the code, on purpose: one window (a window's end forgets its counts by
//! design, and a key names its window), and no client past the most counted in memory
//! (counted straight in Redis, one round trip, nothing shared to model).
//!
//! Invariants, in every state:
//! - never more than the limit let through by one instance (it judges its own counts at
//!   once);
//! - no count lost: Redis's total plus what every instance has not got into Redis yet is
//!   at least every request counted (a count may be sent twice, a reply lost, which errs on
//!   the side of refusing);
//! - an instance that has heard from Redis that the limit is reached lets nobody through.

use testkit::explorer::{Protocol, finds, holds};

const INSTANCES: usize = 2;
const LIMIT: u8 = 2;
/// Requests the client sends each instance.
const REQUESTS: u8 = 3;
/// Replies lost over a run (each adds its counts to Redis again, so the states grow with
/// them).
const REPLIES_LOST: u8 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bug {
    None,
    /// A failed sync forgets its counts (they were moved to the shared ones when taken).
    NoRestore,
    /// A sync's answer is not taken: an instance judges on its own counts alone.
    TotalsIgnored,
}

/// A sync between its steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Sync {
    Idle,
    /// Counts taken, the script not run yet.
    Taken(u8),
    /// The script ran: Redis added the counts and answered this total.
    Ran {
        sent: u8,
        total: u8,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Instance {
    shared: u8,
    unsent: u8,
    sync: Sync,
    requests_left: u8,
    let_through: u8,
    /// Redis answered a total at or past the limit.
    heard_full: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    redis: u8,
    counted: u8,
    replies_lost: u8,
    instances: [Instance; INSTANCES],
    broken: Option<&'static str>,
}

#[derive(Debug)]
enum Action {
    Request(usize),
    Take(usize),
    Run(usize),
    Answer(usize),
    /// The script never reached Redis, or its reply was lost.
    Fail(usize),
}

struct Model {
    bug: Bug,
}

impl Protocol for Model {
    type State = State;
    type Action = Action;

    fn initial(&self) -> State {
        let instance = Instance {
            shared: 0,
            unsent: 0,
            sync: Sync::Idle,
            requests_left: REQUESTS,
            let_through: 0,
            heard_full: false,
        };
        State {
            redis: 0,
            counted: 0,
            replies_lost: 0,
            instances: [instance.clone(), instance],
            broken: None,
        }
    }

    fn actions(&self, s: &State) -> Vec<Action> {
        let mut actions = Vec::new();
        for (at, instance) in s.instances.iter().enumerate() {
            if instance.requests_left > 0 {
                actions.push(Action::Request(at));
            }
            match instance.sync {
                Sync::Idle if instance.unsent > 0 => actions.push(Action::Take(at)),
                Sync::Idle => {}
                Sync::Taken(_) => {
                    actions.push(Action::Run(at));
                    actions.push(Action::Fail(at));
                }
                Sync::Ran { .. } => {
                    actions.push(Action::Answer(at));
                    if s.replies_lost < REPLIES_LOST {
                        actions.push(Action::Fail(at));
                    }
                }
            }
        }
        actions
    }

    fn next(&self, s: &State, action: &Action) -> State {
        let mut s = s.clone();
        match *action {
            Action::Request(at) => {
                let instance = &mut s.instances[at];
                instance.requests_left -= 1;
                // A refused request counts too.
                instance.unsent += 1;
                s.counted += 1;
                if instance.shared + instance.unsent <= LIMIT {
                    instance.let_through += 1;
                    if instance.heard_full {
                        s.broken.get_or_insert(
                            "an instance that heard the limit is reached lets nobody through",
                        );
                    }
                }
            }
            Action::Take(at) => {
                let instance = &mut s.instances[at];
                let sent = std::mem::take(&mut instance.unsent);
                instance.shared += sent;
                instance.sync = Sync::Taken(sent);
            }
            Action::Run(at) => {
                let Sync::Taken(sent) = s.instances[at].sync else {
                    unreachable!("a run follows a take")
                };
                s.redis += sent;
                s.instances[at].sync = Sync::Ran {
                    sent,
                    total: s.redis,
                };
            }
            Action::Answer(at) => {
                let instance = &mut s.instances[at];
                let Sync::Ran { total, .. } = instance.sync else {
                    unreachable!("an answer follows a run")
                };
                if self.bug != Bug::TotalsIgnored {
                    instance.shared = instance.shared.max(total);
                }
                instance.heard_full |= total >= LIMIT;
                instance.sync = Sync::Idle;
            }
            Action::Fail(at) => {
                let instance = &mut s.instances[at];
                let sent = match instance.sync {
                    Sync::Taken(sent) => sent,
                    Sync::Ran { sent, .. } => {
                        s.replies_lost += 1;
                        sent
                    }
                    Sync::Idle => unreachable!("only a sync under way fails"),
                };
                if self.bug != Bug::NoRestore {
                    instance.shared -= sent;
                    instance.unsent += sent;
                }
                instance.sync = Sync::Idle;
            }
        }
        s
    }

    fn violation(&self, s: &State) -> Option<&'static str> {
        if let Some(broken) = s.broken {
            return Some(broken);
        }
        if s.instances.iter().any(|i| i.let_through > LIMIT) {
            return Some("never more than the limit let through by one instance");
        }
        // Counts taken whose script has not run are not in Redis yet.
        let not_in_redis: u8 = s
            .instances
            .iter()
            .map(|i| {
                i.unsent
                    + match i.sync {
                        Sync::Taken(sent) => sent,
                        _ => 0,
                    }
            })
            .sum();
        if s.redis + not_in_redis < s.counted {
            return Some("no count lost");
        }
        None
    }
}

#[test]
fn every_reachable_state_keeps_every_invariant() {
    holds(&Model { bug: Bug::None }, "the rate limit model", 1_000);
}

#[test]
fn a_failed_sync_forgetting_its_counts_is_found() {
    finds(
        &Model {
            bug: Bug::NoRestore,
        },
        "no count lost",
    );
}

#[test]
fn an_answer_not_taken_is_found() {
    finds(
        &Model {
            bug: Bug::TotalsIgnored,
        },
        "heard the limit is reached",
    );
}
