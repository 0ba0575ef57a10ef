//! Settling acknowledged events off the answer's path, many per Redis call.
//!
//! Once the broker has an event, its pending entry only has to go eventually: until it does,
//! a retry of that user waits for it (the entry is in flight), and if it never goes (this
//! process dies first) a reconciler publishes the event again after the publish window, a
//! duplicate the worker ignores. So the answer does not wait for the settle, and the
//! settles of many requests share one script run: every coupon's on a single Redis, each
//! coupon's (each bucket's) on a cluster, where a run cannot span slots.
//!
//! A round waits [`LINGER`] after its first acknowledgement before it settles, so that
//! more of them share each run: a run costs Redis a few microseconds of its own besides a
//! microsecond or so per entry, and a round that went at once found about one entry
//! (docs/performance.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coupon_core::event::IssueEvent;
use coupon_core::redis::connection::RedisConnection;
use coupon_core::redis::ledger::{Ledger, LedgerAt};
use futures_util::FutureExt;
use futures_util::future::join_all;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Most events settled per round; more wait for the next one.
const MAX_BATCH: usize = 1024;

/// How long a round gathers acknowledgements before it settles them. An entry lives this
/// much longer, which only a retry of its own user can see (it is told to wait for the
/// entry, as for any acknowledgement not yet settled); well below the publish window, so
/// no reconciler takes a settled event for a lost one.
const LINGER: Duration = Duration::from_millis(20);

#[derive(Clone)]
pub struct Settler {
    events: mpsc::UnboundedSender<(LedgerAt, IssueEvent)>,
    stop: CancellationToken,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Settler {
    /// Starts settling, until [`Settler::stop`].
    pub fn start(ledger: Ledger, redis: RedisConnection) -> Self {
        let (events, received) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(received, ledger, redis, stop.clone()));
        Self {
            events,
            stop,
            task: Arc::new(Mutex::new(Some(task))),
        }
    }

    /// Settles what was sent so far, then stops: what comes later stays pending.
    pub async fn stop(&self) {
        self.stop.cancel();
        let task = self
            .task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(task) = task
            && let Err(err) = task.await
        {
            tracing::error!(error = %err, "the settling task failed");
        }
    }

    /// The event is acknowledged: its entry, kept `at`, goes soon. Never waits.
    pub fn settle(&self, at: LedgerAt, event: IssueEvent) {
        if let Err(unsent) = self.events.send((at, event)) {
            // Only at shutdown: the entry stays, and is published once more later.
            let event = &(unsent.0).1;
            tracing::warn!(coupon = %event.coupon_id, user = %event.user_id,
                "acknowledged after settling stopped; the pending entry stays until claimed");
        }
    }
}

async fn run(
    mut received: mpsc::UnboundedReceiver<(LedgerAt, IssueEvent)>,
    ledger: Ledger,
    redis: RedisConnection,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let taken = tokio::select! {
            taken = received.recv_many(&mut batch, MAX_BATCH) => taken,
            () = stop.cancelled() => {
                // Nothing new gets in; what is queued is still settled, then 0 ends it.
                received.close();
                received.recv_many(&mut batch, MAX_BATCH).await
            }
        };
        if taken == 0 {
            return;
        }
        if !stop.is_cancelled() && batch.len() < MAX_BATCH {
            tokio::select! {
                () = tokio::time::sleep(LINGER) => {}
                () = stop.cancelled() => {}
            }
            // What came meanwhile, without waiting; once stopped the next round takes it.
            let room = MAX_BATCH - batch.len();
            received.recv_many(&mut batch, room).now_or_never();
        }
        let mut by_place: HashMap<&LedgerAt, Vec<&IssueEvent>> = HashMap::new();
        for (at, event) in &batch {
            by_place.entry(at).or_default().push(event);
        }
        let places: Vec<_> = by_place.into_iter().collect();
        // One script run for every coupon on a single Redis; on a cluster, one per coupon
        // (per bucket of a bucketed one), all sent at once over the multiplexed connection.
        let runs: Vec<&[(&LedgerAt, Vec<&IssueEvent>)]> = match redis.is_cluster() {
            true => places.chunks(1).collect(),
            false => vec![&places[..]],
        };
        let settles = runs.into_iter().map(|run| {
            let (ledger, mut redis) = (&ledger, redis.clone());
            async move {
                if let Err(err) = ledger.settle(&mut redis, run).await {
                    let entries: usize = run.iter().map(|(_, events)| events.len()).sum();
                    tracing::warn!(coupons = run.len(), entries, error = %err,
                        "acknowledged, but the pending entries stay until they are claimed");
                }
            }
        });
        join_all(settles).await;
        batch.clear();
    }
}
