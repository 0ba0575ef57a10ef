//! The model checker the protocol models share: a breadth-first search over every reachable
//! state, with a visited set and parent links for the counterexample trace.
//!
//! The `stateright` crate does the same and more, but it brings an HTTP server (its explorer
//! UI), a random-number stack and a concurrent map into the build for what is forty lines
//! here.

use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;

/// A protocol as the explorer sees it: states, the actions enabled in each, and the
/// invariants (the first one a state breaks).
pub trait Protocol {
    type State: Clone + Eq + Hash;
    type Action: Debug;

    fn initial(&self) -> Self::State;
    fn actions(&self, state: &Self::State) -> Vec<Self::Action>;
    fn next(&self, state: &Self::State, action: &Self::Action) -> Self::State;
    fn violation(&self, state: &Self::State) -> Option<&'static str>;
}

/// Past this many states a model has grown beyond what the suite should run.
const STATE_LIMIT: usize = 30_000_000;

/// Every reachable state, breadth first: how many there were, and the first violation
/// found with the actions that lead to it.
pub fn check<P: Protocol>(protocol: &P) -> (usize, Option<(&'static str, Vec<String>)>) {
    let initial = protocol.initial();
    let mut parents: Vec<Option<(usize, P::Action)>> = vec![None];
    let mut seen = HashMap::from([(initial.clone(), 0usize)]);
    let mut queue = VecDeque::from([(initial, 0usize)]);
    while let Some((state, index)) = queue.pop_front() {
        if let Some(broken) = protocol.violation(&state) {
            let mut trace = Vec::new();
            let mut at = index;
            while let Some((parent, action)) = &parents[at] {
                trace.push(format!("{action:?}"));
                at = *parent;
            }
            trace.reverse();
            return (parents.len(), Some((broken, trace)));
        }
        for action in protocol.actions(&state) {
            let next = protocol.next(&state, &action);
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

/// Checks a model with no bug: every reachable state must keep every invariant, and there
/// must be more than `at_least` of them (a pass over a space smaller than the one described
/// is vacuous). Prints the count, under `label`.
pub fn holds<P: Protocol>(protocol: &P, label: impl Debug, at_least: usize) {
    let (explored, violation) = check(protocol);
    assert!(violation.is_none(), "{label:?}: {violation:#?}");
    assert!(explored > at_least, "{label:?}: only {explored} states");
    eprintln!("{label:?}: {explored} states, every invariant held");
}

/// Checks a model with a bug put back: it must break an invariant, named by `expected`.
/// Prints the trace, which is the counterexample a reader follows.
pub fn finds<P: Protocol>(protocol: &P, expected: &str) {
    let (_, violation) = check(protocol);
    let (broken, trace) = violation.expect("the bug breaks an invariant");
    eprintln!("{broken}\n  {}", trace.join("\n  "));
    assert!(broken.contains(expected), "{broken}");
}
