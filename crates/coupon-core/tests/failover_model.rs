//! An exhaustive check of admission on a replicated Redis that fails over, fails back and
//! splits: three nodes, a primary A and its replicas B and C. The partition cuts A off from
//! B, which is promoted, while C stays on A's side, replicating from A and confirming its
//! writes until Sentinel re-points it to B (a full sync that discards what only A had); A
//! itself rejoins as B's replica once the partition heals. Two APIs: the first reaches Redis
//! through an endpoint that a failover moves to B and a failback moves back to A (a managed
//! service's primary endpoint, or Sentinel); the second, in the split-brain runs, keeps its
//! connection to A throughout (A is cut off and never hears it was replaced). PostgreSQL
//! keeps the stamp in force; the queue is Kafka or the node's own stream. Every interleaving
//! of three users' requests (the first sends two) over a coupon of 1, with every invariant
//! checked in every reachable state.
//!
//! The steps are named after the real code: `admission.lua` (admit, comparing the meta's
//! stamp with the one passed; a holder still pending is resolved, not refused),
//! `replication.rs` (confirm: a WAIT on the write's own socket, after a fence write of its
//! own, so refusals are confirmed too), `issuing::admit_and_deliver` (confirm, then publish,
//! then answer), `KafkaDelivery::claim` (the reconciler's claim, confirmed before its
//! republish), `Issuer::stamp_in_force` (PostgreSQL's stamp learnt again on UNVERIFIED), and
//! the rebuild (atomic here, after its publish window and the workers: its round trips are
//! `protocol_model.rs`'s).
//!
//! The Redis queue mode's worker follows the first API's endpoint, or, in one run, stays
//! with A until A rejoins. It takes an entry into its batch only once a WAIT after the read,
//! on the read's socket, found every replica with it (`stream_queue::confirm`), and persists
//! it later: a failover, a rebuild or a rejoin can come in between. The take is one step
//! here, the read and the WAIT two round trips in the code: the WAIT confirms a write made
//! after the read (the fence), so what a later write adds is never in the batch.
//!
//! The hand-over (`issuer-api hand-over`, a planned switchover that keeps the state): on
//! the primary it reaches, it closes the coupon only if its state is verified under the
//! stamp in force, marking it with the hand-over's lease in the same step; after the
//! switchover, on the primary it reaches then, it records a new stamp in PostgreSQL and,
//! once every API has read the count, stamps the node and opens it, only if the mark is
//! there. The mark proves the node holds everything the old primary wrote before it: a
//! replica receives the primary's writes in order. The switchover may come at any moment
//! (a provider's failover the command does not wait for, a WAIT that fell short), and the
//! mark (a lease) may run out on the way.
//!
//! A Redis Cluster's shard (`replication/shards.rs`, `scripts/fence.lua`): the cluster
//! client picks and replaces its connections itself, so a confirmation cannot rest on the
//! admission's socket. It rests on the instance: a fence write on the coupon's primary, made
//! only if the admission's stamp names that instance in its present incarnation and is the
//! meta's stamp still, then a WAIT on the fence's connection. The shard's failover there is
//! followed, once the partition heals, by A's rejoin as B's replica (a full sync that
//! discards what only A had) and then a graceful failover back to A: the same process, its
//! run id unchanged, its data B's. The same failback follows a rejoin on one node's endpoint
//! (Sentinel's next failover), with or without replicas required. A node's epoch is its run
//! id and the replication id its library first saw since its last load, so a full sync
//! gives it a new incarnation (`scripts/epoch.lua`).
//!
//! A slot migration (`issuer-api hand-over --to` another primary): the coupon's keys are
//! copied to C, there another shard's primary, and deleted on the node that had them, at
//! any moment (`MIGRATE`; or by an operator's `redis-cli --cluster reshard`, with no
//! hand-over). C opens the coupon only through the hand-over's mark or a rebuild: a stamp
//! made elsewhere proves nothing, since a copy migrated from a node promoted before it
//! caught up carries the stamp in force too (`Bug::TrustMovedStamp`).
//!
//! Not modelled: publish failures and releases (`protocol_model.rs`), a node restarting
//! (its new run id is what `epoch.rs`'s tests force), a migration's copy and delete as two
//! steps (the coupon is closed in between), replicas joining or leaving (the
//! recount is `sentinel.rs`'s `a_replica_added_while_the_api_runs_is_waited_for_too`, and on
//! a cluster `cluster.rs`'s `a_shard_with_two_replicas_confirms_on_both`), a partial resync
//! (it keeps the node's data, and its incarnation with it), and the
//! registry's shard (`cluster.rs` and `registry.rs` force those).

use testkit::explorer::{Protocol, finds, holds};

const USERS: u8 = 3;
const N: usize = USERS as usize;
const QUANTITY: usize = 1;
const APIS: usize = 2;

/// A bug of the past, put back into the model to show that the check finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bug {
    None,
    /// The epoch was the node's run id alone: a node that kept running while another took
    /// over still matches its own old meta after a failback.
    RunIdOnly,
    /// 409 and 410 were answered from state only the primary had.
    UnconfirmedRefusal,
    /// Kafka mode published beside the WAIT, not after it: a cut-off primary's admission
    /// reached the log.
    PublishBesideWait,
    /// A WAIT counted on whatever connection the client had by then: after a reconnect (to
    /// another node), it "confirmed" a write it never carried.
    WaitOnAnySocket,
    /// REDIS_MIN_REPLICAS below the number of replicas (1 of 2): the replica left on the
    /// old primary's side of a partition confirmed what the promoted one never got.
    OneReplicaConfirms,
    /// No API watched the verification count, and a rebuild opened Redis at once: an API
    /// that met no request while another node took over kept the old node's stamp, and a
    /// failback admitted on it.
    NoWatch,
    /// The Redis queue mode's worker persisted what it read, confirmed or not: one left
    /// with a cut-off primary persisted what the promoted node, rebuilt, sold again.
    WorkerTakesUnconfirmed,
    /// The hand-over opened the new primary without finding its mark there: a node
    /// promoted before it had the old primary's last writes sells their slots again.
    CarryWithoutMark,
    /// The epoch was the run id alone, which a full sync keeps: A, failed over while B
    /// lagged, resynced from B and failed back to, still matched its old meta, copied back
    /// from B, and admitted on a state without what B never got; on a cluster its fence
    /// confirmed an admission the resync had discarded.
    EpochSurvivesResync,
    /// A migrated coupon opened on its new primary because its meta names the stamp in
    /// force, made on another node: a copy migrated from a primary promoted before it had
    /// the last admissions carries that stamp as well, and sells their slots again.
    TrustMovedStamp,
    /// The hand-over's migration deleted the source's keys after its copy without looking
    /// that the coupon was still closed by its mark there: a close whose answer was lost
    /// (the script never ran) left it open, and what it admitted between the copy and the
    /// delete was deleted with it.
    DeleteUnchecked,
}

/// Where the first API's endpoint goes after the failover, if anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failback {
    No,
    /// Back to A, never demoted (cut off all along).
    ToUndemoted,
    /// Back to A once it has rejoined as B's replica and caught up: a graceful failover
    /// (`CLUSTER FAILOVER`, or Sentinel's next one), A's process and run id unchanged.
    AfterResync,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Queue {
    Kafka,
    /// The Redis queue mode: the event is appended to the node's stream by the admission.
    Stream,
}

/// What a run explores.
#[derive(Clone, Copy, Debug)]
struct Setup {
    queue: Queue,
    /// REDIS_MIN_REPLICAS set to the number of replicas (2): every answer, and every
    /// publish, waits for all of them.
    confirm: bool,
    /// The second API stays connected to A after the failover.
    split_brain: bool,
    /// Whether, and how, the first API's endpoint moves back to A after the failover.
    failback: Failback,
    /// Confirmations rest on the instance (a Redis Cluster's fence), not on the socket.
    fence: bool,
    /// The Redis queue mode's worker stays with A, cut off, until A rejoins (its socket
    /// never broke); else it follows the first API's endpoint.
    worker_split: bool,
    /// An operator runs the hand-over once, through the first API's endpoint.
    hand_over: bool,
    /// The coupon's slot may be migrated once, at any moment, from the node the first
    /// API's endpoint leads to, to C: then not A's replica but another shard's primary
    /// (with no replica of its own here).
    migrate: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Node {
    A,
    B,
    C,
}

impl Node {
    const ALL: [Node; 3] = [Node::A, Node::B, Node::C];

    fn index(self) -> usize {
        self as usize
    }
}

/// A verification's stamp: the node it was made on and that node's incarnation (its
/// epoch: the run id, and the replication id its function library first saw since it was
/// last loaded, which a full sync does again), and a nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Stamp {
    node: Node,
    incarnation: u8,
    nonce: u8,
}

/// One Redis node's data: the coupon's issued set; Kafka mode's pending entries (admitted,
/// not yet published: the ledger); the Redis queue mode's stream entries not yet persisted;
/// the meta's stamp; the hand-over's mark (its lease, which also keeps rebuilds away).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Data {
    issued: [bool; N],
    pending: [bool; N],
    streamed: [bool; N],
    stamp: Option<Stamp>,
    marked: bool,
}

impl Data {
    /// A node without the coupon's keys.
    const EMPTY: Data = Data {
        issued: [false; N],
        pending: [false; N],
        streamed: [false; N],
        stamp: None,
        marked: false,
    };
}

/// How far the hand-over got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum HandOver {
    NotYet,
    /// The coupon closed and marked on the node the command reached.
    Closed,
    /// A new stamp recorded in PostgreSQL for `node`, which opens once every API has read
    /// the count, if the mark is there.
    Recorded {
        node: Node,
        stamp: Stamp,
    },
    Ended,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Answer {
    Success,
    AlreadyIssued,
    SoldOut,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Phase {
    Arrived,
    /// The script ran on `node` over the API's socket `socket`, under the stamp `stamp`,
    /// and decided; its confirmation comes next. `delivers`: a slot taken, or a pending one
    /// claimed (the answer is SUCCESS once delivered); else `refusal` is the answer.
    Decided {
        node: Node,
        socket: u8,
        stamp: Option<Stamp>,
        delivers: bool,
        refusal: Option<Answer>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Task {
    user: u8,
    api: u8,
    phase: Phase,
}

/// What one API process holds: where its connection leads, its socket's number (a new one
/// at every reconnect), and the stamp it knows to be in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Api {
    endpoint: Node,
    socket: u8,
    known: Option<Stamp>,
    /// The verification count it last read (`Issuer::watch_stamps`).
    seen: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    nodes: [Data; 3],
    /// Whom each node replicates from; None: a primary in its own eyes (A stays one after
    /// B's promotion, which it never hears of).
    follows: [Option<Node>; 3],
    /// Replication from A to B flows (C's, from A and then from B, always does).
    linked: bool,
    /// Each node's incarnation: one more at each full sync, which replaces its data and
    /// loads its function library again.
    incarnations: [u8; 3],
    apis: [Api; APIS],
    /// Where the Redis queue mode's worker reads, and the entries in its batch (taken,
    /// confirmed, not yet persisted).
    worker: Node,
    taken: [bool; N],
    /// The stamp in force (PostgreSQL), and how many rebuilds replaced one.
    in_force: Option<Stamp>,
    verifications: u8,
    /// A rebuild that recorded its stamp and waits for every API to have read the count
    /// before it opens the node (`STAMPS_SEEN_BY_ALL`).
    opening: Option<(Node, Stamp)>,
    hand_over: HandOver,
    next_nonce: u8,
    /// Kafka: users with an event in the log.
    logged: [bool; N],
    /// PostgreSQL: rows, and whether the guard refused one past the quantity.
    rows: [bool; N],
    over_quantity: bool,
    tasks: Vec<Task>,
    requests_left: [u8; N],
    /// Each user's last definitive answer (a lie is checked at rest against the rows).
    told: [Option<Answer>; N],
    failovers_left: u8,
    failbacks_left: u8,
    link_cuts_left: u8,
    migrations_left: u8,
    /// The hand-over's own migration: the copy made on C, not yet deleted on the source.
    copied_from: Option<Node>,
    /// What a WAIT waits for (REDIS_MIN_REPLICAS, every replica): 2, or 1 in a migration's
    /// runs, where A's shard is A and B (C is another shard's primary).
    replicas: usize,
}

#[derive(Clone, Debug)]
enum Action {
    Request(u8),
    Admit(usize),
    /// The WAIT succeeded (or none is required): delivered, then answered.
    Confirm(usize),
    /// The WAIT timed out: 503.
    ConfirmFails(usize),
    /// The reconciler of `api`: a pending entry past its window, claimed and republished.
    Reconcile {
        api: u8,
        user: u8,
    },
    Replicate {
        from: Node,
        to: Node,
    },
    CutLink,
    /// B is promoted; C is re-pointed to it; the first API's endpoint moves to it. A keeps
    /// running, cut off.
    FailOver,
    /// The partition heals: Sentinel makes A a replica of B (a full sync), and every API
    /// still on A finds it read-only and reconnects to B.
    Rejoin,
    /// The first API's endpoint moves back to A, which was never demoted.
    FailBack,
    /// A, B's replica and caught up, is promoted again (B and C follow it), and every
    /// endpoint moves to it.
    FailBackResynced,
    /// The Redis queue mode's worker reads an entry from its node and confirms it (every
    /// replica has it): into its batch.
    Take(u8),
    /// The worker's guarded insert: Kafka mode reads the log, the Redis queue mode its
    /// batch.
    Persist(u8),
    /// A rebuild through `api`, on the node its connection leads to: holders read, the new
    /// stamp recorded in PostgreSQL (the count moves), the node still closed.
    Rebuild(u8),
    /// The rebuild opens the node under its stamp.
    Open,
    /// `api`'s watcher reads the moved count and forgets its stamps.
    Refresh(u8),
    /// The hand-over closes and marks the coupon on the node the first API's endpoint
    /// leads to, its state verified under the stamp in force.
    HandOverClose,
    /// After the switchover (or none), the hand-over records a new stamp for the node the
    /// endpoint leads to now.
    HandOverRecord,
    /// Every API has read the count: the node is stamped and opened, if marked.
    HandOverOpen,
    /// The hand-over's lease runs out (on every node at once: its expiry is an absolute
    /// time, and the nodes share a clock).
    MarkExpires,
    /// The coupon's slot, keys and all, migrated to C (`MIGRATE`: the source's copy at
    /// one moment, then deleted there); every client follows the slot there.
    Migrate,
    /// The hand-over's close answered with an error although it never ran: the command
    /// carries the coupon on as closed.
    HandOverCloseLost,
    /// The hand-over's migration (`slot_moves.rs`), first step: the coupon's keys copied to
    /// C (`MIGRATE ... COPY`); clients still reach the source.
    MigrateCopy,
    /// Its second step, once the target's replicas have the copy: where the source still
    /// holds the coupon closed by the mark, its keys are deleted; elsewhere they are moved
    /// whole again (`MIGRATE ... REPLACE`, atomic). Clients follow the slot to C.
    MigrateDelete,
}

struct Model {
    bug: Bug,
    setup: Setup,
}

impl State {
    fn initial() -> State {
        let stamp = Stamp {
            node: Node::A,
            incarnation: 0,
            nonce: 0,
        };
        let data = Data {
            issued: [false; N],
            pending: [false; N],
            streamed: [false; N],
            stamp: Some(stamp),
            marked: false,
        };
        let api = Api {
            endpoint: Node::A,
            socket: 0,
            known: Some(stamp),
            seen: 0,
        };
        State {
            nodes: [data; 3],
            follows: [None, Some(Node::A), Some(Node::A)],
            linked: true,
            incarnations: [0; 3],
            apis: [api; APIS],
            worker: Node::A,
            taken: [false; N],
            in_force: Some(stamp),
            verifications: 0,
            opening: None,
            hand_over: HandOver::NotYet,
            next_nonce: 1,
            logged: [false; N],
            rows: [false; N],
            over_quantity: false,
            tasks: Vec::new(),
            // The first user asks twice (a retry after a 503, a double click).
            requests_left: [2, 1, 1],
            told: [None; N],
            failovers_left: 1,
            failbacks_left: 1,
            link_cuts_left: 1,
            migrations_left: 0,
            copied_from: None,
            replicas: 2,
        }
    }

    fn for_setup(setup: Setup) -> State {
        let initial = State::initial();
        if setup.migrate {
            // C is another shard's primary, holding none of the coupon's keys.
            let mut nodes = initial.nodes;
            nodes[Node::C.index()] = Data::EMPTY;
            return State {
                nodes,
                follows: [None, Some(Node::A), None],
                migrations_left: 1,
                replicas: 1,
                failbacks_left: u8::from(setup.failback != Failback::No),
                requests_left: if setup.hand_over { [1; N] } else { [2, 1, 1] },
                ..initial
            };
        }
        State {
            failbacks_left: u8::from(setup.failback != Failback::No),
            // The hand-over's runs ask once per user: its steps and the mark's expiry
            // multiply the states, and a retry adds nothing the close does not already
            // race.
            requests_left: if setup.hand_over { [1; N] } else { [2, 1, 1] },
            ..initial
        }
    }

    /// The node the workers read in the Redis queue mode.
    fn queue_node(&self) -> &Data {
        &self.nodes[self.worker.index()]
    }

    /// Users whose events are queued (on the worker's node, or in its batch) and not
    /// persisted yet.
    fn unpersisted(&self, queue: Queue) -> [bool; N] {
        std::array::from_fn(|user| {
            let queued = match queue {
                Queue::Kafka => self.logged[user],
                Queue::Stream => self.queue_node().streamed[user] || self.taken[user],
            };
            queued && !self.rows[user]
        })
    }

    fn at_rest(&self, queue: Queue) -> bool {
        self.tasks.is_empty()
            && self.requests_left.iter().all(|left| *left == 0)
            && !self.unpersisted(queue).contains(&true)
            && !self.queue_node().pending.contains(&true)
    }

    /// Replication from `from` to `to` flows.
    fn link_up(&self, from: Node, to: Node) -> bool {
        self.follows[to.index()] == Some(from) && ((from, to) != (Node::A, Node::B) || self.linked)
    }

    /// Enough replicas of `node` have everything `node` has: what a WAIT on it waits for
    /// (REDIS_MIN_REPLICAS: both, or with `Bug::OneReplicaConfirms` one).
    fn replicas_synced(&self, node: Node, bug: Bug) -> bool {
        let synced = Node::ALL
            .iter()
            .filter(|&&replica| {
                self.link_up(node, replica)
                    && self.nodes[replica.index()] == self.nodes[node.index()]
            })
            .count();
        synced
            >= if bug == Bug::OneReplicaConfirms {
                1
            } else {
                self.replicas
            }
    }

    /// Whether `stamp` was made on `node` as it is now (epoch.lua's `stamped_here`): with
    /// `Bug::EpochSurvivesResync`, on `node` in any incarnation.
    fn here(&self, stamp: Stamp, node: Node, bug: Bug) -> bool {
        stamp.node == node
            && (bug == Bug::EpochSurvivesResync
                || stamp.incarnation == self.incarnations[node.index()])
    }

    /// A full sync of `node` from `from`: its data replaced, its library loaded again.
    fn full_sync(&mut self, node: Node, from: Node) {
        self.nodes[node.index()] = self.nodes[from.index()];
        self.incarnations[node.index()] += 1;
    }

    /// Whether a WAIT now, on `api`'s socket, confirms what was written or read on its
    /// socket `socket`: the socket must be the same one, and a replica of the node it leads
    /// to must have everything that node has.
    fn confirms(&self, api: usize, socket: u8, bug: Bug) -> bool {
        let now = self.apis[api];
        (socket == now.socket || bug == Bug::WaitOnAnySocket)
            && self.replicas_synced(now.endpoint, bug)
    }

    /// Whether a fence and WAIT now, on the node `task`'s API reaches (a cluster client
    /// follows the coupon's slot there), confirm its decision: the fence is written only if
    /// the admission's stamp was made on that node as it is now and is its meta's stamp;
    /// then the node's replicas must have everything it has.
    fn fence_confirms(&self, task: &Task, bug: Bug) -> bool {
        let Phase::Decided {
            stamp: Some(stamp), ..
        } = task.phase
        else {
            return false;
        };
        let node = self.apis[task.api as usize].endpoint;
        self.here(stamp, node, bug)
            && self.nodes[node.index()].stamp == Some(stamp)
            && self.replicas_synced(node, bug)
    }

    /// The (primary, replica) pairs whose replication can make progress.
    fn lagging(&self) -> Vec<(Node, Node)> {
        Node::ALL
            .iter()
            .filter_map(|&replica| {
                let primary = self.follows[replica.index()]?;
                (self.link_up(primary, replica)
                    && self.nodes[replica.index()] != self.nodes[primary.index()])
                .then_some((primary, replica))
            })
            .collect()
    }

    /// The coupon's keys moved whole from `from` to C, and the clients after them.
    fn migrate(&mut self, from: Node) {
        self.nodes[Node::C.index()] = self.nodes[from.index()];
        self.nodes[from.index()] = Data::EMPTY;
        self.follow_slot(from);
    }

    /// Every client that reached the coupon on `from` reaches it on C (the slot's new node).
    fn follow_slot(&mut self, from: Node) {
        self.migrations_left = 0;
        for api in &mut self.apis {
            if api.endpoint == from {
                api.endpoint = Node::C;
                api.socket += 1;
            }
        }
        if self.worker == from {
            self.worker = Node::C;
        }
    }

    /// Kafka mode's publish, acknowledged: the event in the log, the entry settled.
    fn publish(&mut self, node: Node, user: usize) {
        self.logged[user] = true;
        self.nodes[node.index()].pending[user] = false;
    }
}

impl Model {
    fn confirm(&self) -> bool {
        self.setup.confirm
    }

    /// admission.lua on the node `api` reaches: the meta's stamp must be the one the API
    /// passes and made on this node (with `Bug::RunIdOnly`: made on this node, whatever the
    /// stamp in force).
    fn verified(&self, s: &State, api: usize) -> bool {
        let Api {
            endpoint, known, ..
        } = s.apis[api];
        let meta = s.nodes[endpoint.index()].stamp;
        let here = meta.is_some_and(|stamp| {
            s.here(stamp, endpoint, self.bug)
                || (self.bug == Bug::TrustMovedStamp && s.migrations_left == 0)
        });
        match self.bug {
            Bug::RunIdOnly => here,
            _ => here && meta == known,
        }
    }

    /// Both APIs of a run: the second follows the endpoint too unless the run splits it
    /// off with A.
    fn apis(&self) -> usize {
        APIS
    }

    fn watch(&self) -> bool {
        self.bug != Bug::NoWatch
    }
}

impl Protocol for Model {
    type State = State;
    type Action = Action;

    fn initial(&self) -> State {
        State::for_setup(self.setup)
    }

    fn actions(&self, s: &State) -> Vec<Action> {
        let mut actions = Vec::new();
        for user in 0..USERS {
            if s.requests_left[user as usize] > 0 {
                actions.push(Action::Request(user));
            }
            let u = user as usize;
            match self.setup.queue {
                Queue::Kafka if s.logged[u] && !s.rows[u] => actions.push(Action::Persist(user)),
                Queue::Stream if s.taken[u] => actions.push(Action::Persist(user)),
                Queue::Stream
                    if s.queue_node().streamed[u]
                        && !s.rows[u]
                        && (!self.confirm()
                            || self.bug == Bug::WorkerTakesUnconfirmed
                            || s.replicas_synced(s.worker, self.bug)) =>
                {
                    actions.push(Action::Take(user));
                }
                _ => {}
            }
        }
        for (i, task) in s.tasks.iter().enumerate() {
            match task.phase {
                Phase::Arrived => actions.push(Action::Admit(i)),
                Phase::Decided { socket, .. } => {
                    let confirmed = if self.setup.fence {
                        s.fence_confirms(task, self.bug)
                    } else {
                        s.confirms(task.api as usize, socket, self.bug)
                    };
                    if !self.confirm() || confirmed {
                        actions.push(Action::Confirm(i));
                    }
                    if self.confirm() {
                        actions.push(Action::ConfirmFails(i));
                    }
                }
            }
        }
        for api in 0..self.apis() {
            let Api {
                endpoint, socket, ..
            } = s.apis[api];
            // The reconciler: an entry left pending past its window (its request gave up)
            // is claimed and published, once the claim is confirmed where replicas are
            // required.
            let claimable = !self.confirm() || s.confirms(api, socket, self.bug);
            if self.setup.queue == Queue::Kafka && claimable && self.verified(s, api) {
                for user in 0..USERS {
                    let owned = s.tasks.iter().any(|t| t.user == user);
                    if s.nodes[endpoint.index()].pending[user as usize] && !owned {
                        actions.push(Action::Reconcile {
                            api: api as u8,
                            user,
                        });
                    }
                }
            }
            // A rebuild: the API learnt the stamp in force and it does not match. It waits
            // one publish window (every publish decided before has reported) and for the
            // workers to persist the queue.
            let in_flight = s
                .tasks
                .iter()
                .any(|t| matches!(t.phase, Phase::Decided { delivers: true, .. }));
            // Kafka mode waits for the workers to reach the log's end; the Redis queue mode
            // counts its own node's stream as holders and waits for nothing
            // (`delivery::stream`).
            let persisted = self.setup.queue == Queue::Stream
                || !s.unpersisted(self.setup.queue).contains(&true);
            // A lease held on the node (here, the hand-over's) keeps a rebuild away.
            if !self.verified(s, api)
                && s.in_force == s.apis[api].known
                && s.opening.is_none()
                && !s.nodes[s.apis[api].endpoint.index()].marked
                && !in_flight
                && persisted
            {
                actions.push(Action::Rebuild(api as u8));
            }
            if self.watch() && s.apis[api].seen != s.verifications {
                actions.push(Action::Refresh(api as u8));
            }
        }
        let all_seen = s.apis.iter().all(|api| api.seen == s.verifications);
        if s.opening.is_some() && (all_seen || !self.watch()) {
            actions.push(Action::Open);
        }
        if self.setup.hand_over {
            let node = s.apis[0].endpoint;
            let meta = s.nodes[node.index()].stamp;
            match s.hand_over {
                HandOver::NotYet
                    if meta == s.in_force
                        && meta.is_some_and(|stamp| s.here(stamp, node, self.bug)) =>
                {
                    actions.push(Action::HandOverClose);
                }
                HandOver::NotYet if self.setup.migrate => actions.push(Action::HandOverCloseLost),
                // The command's own migration records once it has moved the slot.
                HandOver::Closed if s.copied_from.is_none() => actions.push(Action::HandOverRecord),
                HandOver::Recorded { .. } if all_seen => actions.push(Action::HandOverOpen),
                _ => {}
            }
            if s.nodes.iter().any(|data| data.marked) {
                actions.push(Action::MarkExpires);
            }
        }
        for (from, to) in s.lagging() {
            actions.push(Action::Replicate { from, to });
        }
        if s.link_cuts_left > 0 && s.linked {
            actions.push(Action::CutLink);
        }
        // A migrated coupon's shard is C, which has no replica to fail over to here.
        if s.failovers_left > 0 && s.apis[0].endpoint != Node::C {
            actions.push(Action::FailOver);
        }
        if s.migrations_left > 0 && s.apis[0].endpoint != Node::C {
            actions.push(Action::Migrate);
            if s.hand_over == HandOver::Closed {
                match s.copied_from {
                    None => actions.push(Action::MigrateCopy),
                    Some(_) => actions.push(Action::MigrateDelete),
                }
            }
        }
        let undemoted = self.setup.failback == Failback::ToUndemoted;
        if undemoted && s.failbacks_left > 0 && s.failovers_left == 0 {
            actions.push(Action::FailBack);
        }
        // The heal, in the runs that do not move an endpoint back to A, undemoted, instead.
        let a_cut_off =
            s.follows[Node::A.index()].is_none() && s.follows[Node::B.index()].is_none();
        if !undemoted && s.failovers_left == 0 && a_cut_off {
            actions.push(Action::Rejoin);
        }
        let caught_up = s.follows[Node::A.index()] == Some(Node::B)
            && s.nodes[Node::A.index()] == s.nodes[Node::B.index()];
        if self.setup.failback == Failback::AfterResync && s.failbacks_left > 0 && caught_up {
            actions.push(Action::FailBackResynced);
        }
        actions
    }

    fn next(&self, last: &State, action: &Action) -> State {
        let mut s = last.clone();
        match *action {
            Action::Request(user) => {
                let left = &mut s.requests_left[user as usize];
                *left -= 1;
                // Requests alternate between the APIs (a retry lands on the other one).
                let api = (user + *left) % self.apis() as u8;
                s.tasks.push(Task {
                    user,
                    api,
                    phase: Phase::Arrived,
                });
            }
            Action::Admit(i) => {
                let Task { user, api, .. } = s.tasks[i];
                let (user, api) = (user as usize, api as usize);
                if !self.verified(&s, api) {
                    // UNVERIFIED: the API learns the stamp in force; 503 (a rebuild
                    // follows, or the retry admits).
                    s.apis[api].known = s.in_force;
                    s.tasks.remove(i);
                } else {
                    let Api {
                        endpoint: node,
                        socket,
                        known: stamp,
                        ..
                    } = s.apis[api];
                    let data = &mut s.nodes[node.index()];
                    // A holder whose event is still pending is never told 409: the request
                    // claims the entry and publishes it again (`Delivery::resolve_pending`),
                    // confirmed like an admission. In admission.lua's order: whether the user
                    // holds a slot, then only a holder's pending entry (an entry lives only
                    // beside its slot, an invariant below).
                    let (delivers, refusal) = if data.issued[user] {
                        if data.pending[user] {
                            (true, None)
                        } else {
                            (false, Some(Answer::AlreadyIssued))
                        }
                    } else if data.issued.iter().filter(|i| **i).count() >= QUANTITY {
                        (false, Some(Answer::SoldOut))
                    } else {
                        data.issued[user] = true;
                        match self.setup.queue {
                            Queue::Kafka => data.pending[user] = true,
                            Queue::Stream => data.streamed[user] = true,
                        }
                        (true, None)
                    };
                    if self.bug == Bug::UnconfirmedRefusal && refusal.is_some() {
                        s.told[user] = refusal;
                        s.tasks.remove(i);
                    } else {
                        let kafka = self.setup.queue == Queue::Kafka;
                        if self.bug == Bug::PublishBesideWait && delivers && kafka {
                            s.publish(node, user);
                        }
                        s.tasks[i].phase = Phase::Decided {
                            node,
                            socket,
                            stamp,
                            delivers,
                            refusal,
                        };
                    }
                }
            }
            Action::Confirm(i) => {
                let task = s.tasks.remove(i);
                let user = task.user as usize;
                if let Phase::Decided {
                    node,
                    delivers,
                    refusal,
                    ..
                } = task.phase
                {
                    if delivers {
                        if self.setup.queue == Queue::Kafka {
                            s.publish(node, user);
                        }
                        s.told[user] = Some(Answer::Success);
                    } else {
                        s.told[user] = refusal;
                    }
                }
            }
            Action::ConfirmFails(i) => {
                // 503: nothing told; a pending entry stays, for the reconciler.
                s.tasks.remove(i);
            }
            Action::Reconcile { api, user } => {
                let node = s.apis[api as usize].endpoint;
                s.publish(node, user as usize);
            }
            Action::Replicate { from, to } => {
                s.nodes[to.index()] = s.nodes[from.index()];
            }
            Action::CutLink => {
                s.link_cuts_left -= 1;
                s.linked = false;
            }
            Action::FailOver => {
                // B is promoted with what it has; C follows it (a full sync); A, cut off,
                // never hears of it.
                s.failovers_left -= 1;
                s.follows[Node::B.index()] = None;
                if !self.setup.migrate {
                    s.follows[Node::C.index()] = Some(Node::B);
                    s.full_sync(Node::C, Node::B);
                }
                s.linked = false;
                s.apis[0].endpoint = Node::B;
                s.apis[0].socket += 1;
                if !self.setup.worker_split {
                    s.worker = Node::B;
                }
                if !self.setup.split_brain {
                    s.apis[1].endpoint = Node::B;
                    s.apis[1].socket += 1;
                }
            }
            Action::Rejoin => {
                s.follows[Node::A.index()] = Some(Node::B);
                s.full_sync(Node::A, Node::B);
                for api in &mut s.apis {
                    if api.endpoint == Node::A {
                        api.endpoint = Node::B;
                        api.socket += 1;
                    }
                }
                // A worker that followed the coupon elsewhere (a migration) stays there.
                if s.worker == Node::A {
                    s.worker = Node::B;
                }
            }
            Action::FailBack => {
                s.failbacks_left -= 1;
                s.apis[0].endpoint = Node::A;
                s.apis[0].socket += 1;
                s.worker = Node::A;
                if !self.setup.split_brain {
                    s.apis[1].endpoint = Node::A;
                    s.apis[1].socket += 1;
                }
            }
            Action::FailBackResynced => {
                // The partition healed long since (A rejoined): every link flows.
                s.failbacks_left -= 1;
                s.linked = true;
                s.follows = [None, Some(Node::A), Some(Node::A)];
                for api in &mut s.apis {
                    api.endpoint = Node::A;
                    api.socket += 1;
                }
                s.worker = Node::A;
            }
            Action::Take(user) => s.taken[user as usize] = true,
            Action::Persist(user) => {
                let user = user as usize;
                s.taken[user] = false;
                if s.rows.iter().filter(|r| **r).count() < QUANTITY {
                    s.rows[user] = true;
                } else {
                    s.over_quantity = true;
                    // Set aside for good: never a row.
                    s.logged[user] = false;
                    let node = s.worker;
                    s.nodes[node.index()].streamed[user] = false;
                }
            }
            Action::Rebuild(api) => {
                // Holders: the unsettled set read first (pending entries, or the stream),
                // then PostgreSQL's rows; the new stamp recorded in PostgreSQL.
                let api = api as usize;
                let node = s.apis[api].endpoint;
                let stamp = Stamp {
                    node,
                    incarnation: s.incarnations[node.index()],
                    nonce: s.next_nonce,
                };
                s.next_nonce += 1;
                let rows = s.rows;
                let data = &mut s.nodes[node.index()];
                data.issued =
                    std::array::from_fn(|u| data.pending[u] || data.streamed[u] || rows[u]);
                // Closed (the lease marked it) until it opens.
                data.stamp = None;
                s.in_force = Some(stamp);
                s.verifications += 1;
                s.opening = Some((node, stamp));
                s.apis[api].known = Some(stamp);
                s.apis[api].seen = s.verifications;
            }
            Action::Open => {
                if let Some((node, stamp)) = s.opening.take() {
                    // The restore's meta write checks the epoch: a node that is no longer
                    // where the stamp was made (resynced meanwhile) stays closed.
                    if s.here(stamp, node, self.bug) {
                        s.nodes[node.index()].stamp = Some(stamp);
                    }
                }
            }
            Action::Refresh(api) => {
                let api = &mut s.apis[api as usize];
                api.known = None;
                api.seen = s.verifications;
            }
            Action::HandOverClose => {
                let data = &mut s.nodes[s.apis[0].endpoint.index()];
                data.stamp = None;
                data.marked = true;
                s.hand_over = HandOver::Closed;
            }
            Action::HandOverRecord => {
                let node = s.apis[0].endpoint;
                let stamp = Stamp {
                    node,
                    incarnation: s.incarnations[node.index()],
                    nonce: s.next_nonce,
                };
                s.next_nonce += 1;
                s.in_force = Some(stamp);
                s.verifications += 1;
                s.hand_over = HandOver::Recorded {
                    node: stamp.node,
                    stamp,
                };
            }
            Action::HandOverOpen => {
                if let HandOver::Recorded { node, stamp } = s.hand_over {
                    let data = &mut s.nodes[node.index()];
                    if data.marked || self.bug == Bug::CarryWithoutMark {
                        data.stamp = Some(stamp);
                        data.marked = false;
                    }
                }
                s.hand_over = HandOver::Ended;
            }
            Action::MarkExpires => {
                for data in &mut s.nodes {
                    data.marked = false;
                }
            }
            Action::Migrate => s.migrate(s.apis[0].endpoint),
            Action::HandOverCloseLost => s.hand_over = HandOver::Closed,
            Action::MigrateCopy => {
                let from = s.apis[0].endpoint;
                s.nodes[Node::C.index()] = s.nodes[from.index()];
                s.copied_from = Some(from);
            }
            Action::MigrateDelete => {
                if let Some(from) = s.copied_from.take() {
                    let data = s.nodes[from.index()];
                    let closed = data.marked && data.stamp.is_none();
                    if closed || self.bug == Bug::DeleteUnchecked {
                        s.nodes[from.index()] = Data::EMPTY;
                        s.follow_slot(from);
                    } else {
                        s.migrate(from);
                    }
                }
            }
        }
        s.tasks.sort();
        s
    }

    /// The promises: never more rows than the quantity; a SUCCESS and an ALREADY_ISSUED
    /// each stand for a row. (A SOLD_OUT promises nothing for later: stock comes back when
    /// a slot whose publish certainly failed is released, or here after a failback.)
    fn violation(&self, s: &State) -> Option<&'static str> {
        if s.over_quantity {
            return Some("no oversell: a winner's event ended OVER_QUANTITY");
        }
        // On every node, as a node's data is replaced or copied whole.
        if s.nodes
            .iter()
            .any(|data| (0..N).any(|user| data.pending[user] && !data.issued[user]))
        {
            return Some("a pending entry only beside its slot: an entry without a holder");
        }
        if s.at_rest(self.setup.queue) {
            for user in 0..N {
                match s.told[user] {
                    Some(Answer::Success) if !s.rows[user] => {
                        return Some("every yes a row: SUCCESS without a row");
                    }
                    Some(Answer::AlreadyIssued) if !s.rows[user] => {
                        return Some("errors tell the truth: ALREADY_ISSUED without a row");
                    }
                    _ => {}
                }
            }
        }
        None
    }
}

/// Kafka mode with replicas required, and a second API cut off with A.
const KAFKA_REPLICATED: Setup = Setup {
    queue: Queue::Kafka,
    confirm: true,
    split_brain: true,
    failback: Failback::ToUndemoted,
    worker_split: false,
    hand_over: false,
    fence: false,
    migrate: false,
};
/// Kafka mode on a plain endpoint without replicas required: the stamp and the rebuild
/// alone keep the promise (a split brain needs replicas required, which the README says).
const KAFKA_PLAIN: Setup = Setup {
    queue: Queue::Kafka,
    confirm: false,
    split_brain: false,
    failback: Failback::ToUndemoted,
    worker_split: false,
    hand_over: false,
    fence: false,
    migrate: false,
};
/// The Redis queue mode, where the stream is the queue: replicas required; the partition
/// heals, and A rejoins as B's replica.
const STREAM_REPLICATED: Setup = Setup {
    queue: Queue::Stream,
    confirm: true,
    split_brain: true,
    failback: Failback::No,
    worker_split: false,
    hand_over: false,
    fence: false,
    migrate: false,
};

/// The same, with the endpoint moved back to A, never demoted, instead. A's stream then
/// holds entries it took while cut off (never confirmed, never answered 201); the workers
/// leave them, since no replica confirms them.
const STREAM_FAILED_BACK: Setup = Setup {
    failback: Failback::ToUndemoted,
    ..STREAM_REPLICATED
};

/// The same as the first, with the worker cut off with A until the partition heals.
const STREAM_WORKER_LEFT_BEHIND: Setup = Setup {
    worker_split: true,
    ..STREAM_REPLICATED
};

/// The hand-over on a plain endpoint without replicas required: the failover may promote
/// B without the last admissions, and only the mark tells.
const KAFKA_PLAIN_HANDED_OVER: Setup = Setup {
    hand_over: true,
    failback: Failback::No,
    ..KAFKA_PLAIN
};

/// The hand-over where every replica confirms, in both queue modes.
const KAFKA_REPLICATED_HANDED_OVER: Setup = Setup {
    hand_over: true,
    failback: Failback::No,
    split_brain: false,
    ..KAFKA_REPLICATED
};
const STREAM_REPLICATED_HANDED_OVER: Setup = Setup {
    hand_over: true,
    split_brain: false,
    ..STREAM_REPLICATED
};

/// A Redis Cluster's shard in the Redis queue mode: confirmations by the fence, and the
/// failover followed by A's resync and a failback to it. Every API follows the slot (a
/// minority primary stops taking writes after `cluster-node-timeout`; the split brain
/// before that is the socket runs' `split_brain`, whose confirmations the fence's equal).
const STREAM_CLUSTER: Setup = Setup {
    fence: true,
    failback: Failback::AfterResync,
    split_brain: false,
    ..STREAM_REPLICATED
};

/// The same failover, resync and failback on one node's endpoint (Sentinel's next
/// failover), confirmations on the socket.
const STREAM_RESYNCED_FAILBACK: Setup = Setup {
    fence: false,
    split_brain: true,
    ..STREAM_CLUSTER
};

/// Kafka mode without replicas required (behind a plain URL or Sentinel, and on a cluster,
/// where Kafka mode confirms nothing): only the epoch tells A's resynced state from the
/// state A verified.
const KAFKA_PLAIN_RESYNCED_FAILBACK: Setup = Setup {
    failback: Failback::AfterResync,
    ..KAFKA_PLAIN
};

/// Kafka mode on a cluster (nothing confirmed) with the hand-over carrying a coupon through
/// a slot migration (`issuer-api hand-over --to` a primary): closed and marked on its shard,
/// its slot migrated to C, recorded and opened there if the mark came along. A failover
/// of A's shard may come before the migration, so the state migrated may be B's, rewound.
const KAFKA_CLUSTER_MIGRATED: Setup = Setup {
    fence: true,
    hand_over: true,
    migrate: true,
    failback: Failback::No,
    ..KAFKA_PLAIN
};

/// The same in the Redis queue mode, every replica confirming (A's one, B): the stream
/// entries move with the coupon, and the worker follows the slot.
const STREAM_CLUSTER_MIGRATED: Setup = Setup {
    queue: Queue::Stream,
    confirm: true,
    ..KAFKA_CLUSTER_MIGRATED
};

fn model(bug: Bug, setup: Setup) -> Model {
    Model { bug, setup }
}

#[test]
fn every_reachable_state_keeps_every_invariant() {
    for setup in [
        KAFKA_REPLICATED,
        KAFKA_PLAIN,
        STREAM_REPLICATED,
        STREAM_FAILED_BACK,
        STREAM_WORKER_LEFT_BEHIND,
        KAFKA_PLAIN_HANDED_OVER,
        KAFKA_REPLICATED_HANDED_OVER,
        STREAM_REPLICATED_HANDED_OVER,
        STREAM_CLUSTER,
        STREAM_RESYNCED_FAILBACK,
        KAFKA_PLAIN_RESYNCED_FAILBACK,
    ] {
        holds(&model(Bug::None, setup), setup, 1_000);
    }
}

#[test]
fn an_api_that_missed_the_takeover_is_found() {
    // It kept the old primary's stamp; the failback sends it there, which admits on it.
    finds(&model(Bug::NoWatch, KAFKA_PLAIN), "no oversell");
}

#[test]
fn a_failback_under_a_run_id_alone_is_found() {
    // The old primary, failed back to, admits on its old state.
    finds(&model(Bug::RunIdOnly, KAFKA_PLAIN), "no oversell");
}

#[test]
fn an_unconfirmed_refusal_is_found() {
    finds(
        &model(Bug::UnconfirmedRefusal, STREAM_REPLICATED),
        "errors tell the truth",
    );
}

#[test]
fn a_publish_beside_the_wait_is_found() {
    // The API cut off with A admits and publishes while B sells the same stock.
    finds(
        &model(Bug::PublishBesideWait, KAFKA_REPLICATED),
        "no oversell",
    );
}

#[test]
fn a_wait_on_another_socket_is_found() {
    finds(
        &model(Bug::WaitOnAnySocket, STREAM_REPLICATED),
        "every yes a row",
    );
}

#[test]
fn a_yes_one_replica_of_two_confirmed_is_found() {
    // C, on A's side of the partition, confirms A's admission; B is promoted without it,
    // and C's full sync from B discards it with the stream entry.
    finds(
        &model(Bug::OneReplicaConfirms, STREAM_REPLICATED),
        "every yes a row",
    );
}

#[test]
fn a_worker_persisting_unconfirmed_entries_is_found() {
    // A admits X after the cut (answered 503: C alone cannot confirm it); B is promoted
    // and rebuilt from its stream and PostgreSQL, without X; the worker still on A
    // persists X; B sells the stock again, and its winner is set aside.
    finds(
        &model(Bug::WorkerTakesUnconfirmed, STREAM_WORKER_LEFT_BEHIND),
        "no oversell",
    );
    // The endpoint moved back to A: the worker there persists what A took alone.
    finds(
        &model(Bug::WorkerTakesUnconfirmed, STREAM_FAILED_BACK),
        "no oversell",
    );
}

#[test]
fn a_hand_over_that_opens_an_unmarked_node_is_found() {
    // A admits and publishes user 0 (no replica confirms); the hand-over closes A; B is
    // promoted without either; opened without the mark, B sells the slot again.
    finds(
        &model(Bug::CarryWithoutMark, KAFKA_PLAIN_HANDED_OVER),
        "no oversell",
    );
}

#[test]
fn an_epoch_that_survives_a_resync_is_found() {
    // A admits and publishes user 0, which B lacks when promoted; A resyncs from B and is
    // failed back to; its old stamp, copied back from B, still matches its run id, and A
    // sells user 0's slot again.
    finds(
        &model(Bug::EpochSurvivesResync, KAFKA_PLAIN_RESYNCED_FAILBACK),
        "no oversell",
    );
    // On a cluster: A admits user 0 and has not answered; B is promoted without it; A
    // resyncs from B and is failed back to; the fence, matching A's run id, confirms what
    // A no longer has.
    finds(
        &model(Bug::EpochSurvivesResync, STREAM_CLUSTER),
        "every yes a row",
    );
}

#[test]
fn a_hand_over_through_a_slot_migration_keeps_every_invariant() {
    for setup in [KAFKA_CLUSTER_MIGRATED, STREAM_CLUSTER_MIGRATED] {
        holds(&model(Bug::None, setup), setup, 1_000);
    }
}

#[test]
fn a_migration_deleting_an_unclosed_coupon_is_found() {
    // The close's answer is lost and it never ran; the keys are copied to C; A admits and
    // confirms user 0 (201); the delete takes A's keys, stream entry and all; C, rebuilt
    // from PostgreSQL, never heard of user 0.
    finds(
        &model(Bug::DeleteUnchecked, STREAM_CLUSTER_MIGRATED),
        "every yes a row",
    );
}

#[test]
fn a_migrated_stamp_trusted_as_it_comes_is_found() {
    // A admits and publishes user 0; B is promoted without it; B's state, stamped by A,
    // is migrated to C, which admits on it as it is and sells user 0's slot again.
    finds(
        &model(Bug::TrustMovedStamp, KAFKA_CLUSTER_MIGRATED),
        "no oversell",
    );
}

#[test]
fn a_migration_opened_without_its_mark_is_found() {
    // The hand-over closes A; B is promoted without user 1's admission, and the stamp is
    // recorded for B; opened without the mark, B sells the slot again. A migrated copy
    // opens by the same check.
    finds(
        &model(Bug::CarryWithoutMark, KAFKA_CLUSTER_MIGRATED),
        "no oversell",
    );
}
