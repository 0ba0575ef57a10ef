//! What `/readyz` and `/metrics` report about the dependencies, kept fresh by one background
//! task. Neither endpoint queries a dependency per call, so a load balancer or a scraper
//! polling them cannot load the database. And neither shows raw error text: an answer says
//! which dependency is unavailable, and the details go to the log.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::issuing::Issuer;

/// How often the dependencies are checked and the failed events counted.
const REFRESH: Duration = Duration::from_secs(1);
/// A view older than this (the refresher stuck) is reported as not ready.
const STALE_AFTER: Duration = Duration::from_secs(5);

/// The last look at the dependencies.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Each dependency, and whether it answered.
    pub checks: Vec<(&'static str, bool)>,
    /// Failed events by (reason, status): what the last successful count found.
    pub failed: Vec<(String, String, i64)>,
    taken: Instant,
}

impl Snapshot {
    pub fn ready(&self) -> bool {
        self.taken.elapsed() < STALE_AFTER && self.checks.iter().all(|(_, ok)| *ok)
    }
}

pub struct Operations {
    snapshot: RwLock<Snapshot>,
}

impl Operations {
    /// Takes the first look before anything is served.
    pub async fn start(issuer: &Issuer) -> Self {
        let operations = Self {
            snapshot: RwLock::new(Snapshot {
                checks: Vec::new(),
                failed: Vec::new(),
                taken: Instant::now(),
            }),
        };
        operations.refresh(issuer).await;
        operations
    }

    pub fn snapshot(&self) -> Snapshot {
        // A poisoned lock still holds a whole snapshot: it is only ever replaced.
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn refresh(&self, issuer: &Issuer) {
        let (checks, failed) = tokio::join!(issuer.readiness(), issuer.failed_event_counts());
        let checks = checks
            .into_iter()
            .map(|(name, result)| {
                if let Err(err) = &result {
                    tracing::warn!(dependency = name, error = %err, "not ready");
                }
                (name, result.is_ok())
            })
            .collect();
        let mut snapshot = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
        snapshot.checks = checks;
        snapshot.taken = Instant::now();
        match failed {
            Ok(failed) => snapshot.failed = failed,
            Err(err) => {
                tracing::warn!(error = %err, "failed events not counted; the last count stands")
            }
        }
    }

    /// Refreshes the view every second until `shutdown`.
    pub async fn run(&self, issuer: Issuer, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(REFRESH) => {}
            }
            self.refresh(&issuer).await;
        }
    }
}
