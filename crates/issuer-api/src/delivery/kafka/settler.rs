//! Settling acknowledged events off the answer's path, many per Redis call.
//!
//! Once the broker has an event, its pending entry only has to go eventually: until it does,
//! a retry of that user waits for it (the entry is in flight), and if it never goes (this
//! process dies first) a reconciler publishes the event again after the publish window, a
//! duplicate the worker ignores. So the answer does not wait for the settle, and the
//! settles of many requests share one script run per coupon (per bucket).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use coupon_core::event::IssueEvent;
use coupon_core::redis::connection::RedisConnection;
use coupon_core::redis::ledger::{Ledger, LedgerAt};
use futures_util::future::join_all;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Most events settled per round; more wait for the next one.
const MAX_BATCH: usize = 1024;

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
        let mut by_place: HashMap<&LedgerAt, Vec<&IssueEvent>> = HashMap::new();
        for (at, event) in &batch {
            by_place.entry(at).or_default().push(event);
        }
        // One script run per coupon (per bucket of a bucketed one), all sent at once over
        // the multiplexed connection.
        let settles = by_place.iter().map(|(at, events)| {
            let (ledger, mut redis) = (&ledger, redis.clone());
            async move {
                if let Err(err) = ledger.settle(&mut redis, at, events).await {
                    tracing::warn!(pending = %at.keys().pending, events = events.len(), error = %err,
                        "acknowledged, but the pending entries stay until they are claimed");
                }
            }
        });
        join_all(settles).await;
        batch.clear();
    }
}
