//! Settles pending slots nobody else will: in doubt after a publish that may have failed,
//! or left in flight (or claimed) by an API that died. Each is claimed through the ledger,
//! which judges ages on Redis's clock, then published again until the broker acknowledges
//! it. Every API replica runs one; a claim gives each entry to one of them at a time.

use std::time::Duration;

use coupon_core::ledger::Claim;
use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::issuing::{Delivery, Issuer};

pub async fn run(issuer: Issuer, interval: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        match reconcile_once(&issuer).await {
            Ok(0) => {}
            Ok(settled) => tracing::info!(settled, "reconciler settled pending slots"),
            Err(err) => tracing::warn!(error = %err, "reconciler pass failed"),
        }
    }
}

/// Claims every pending entry whose owner's window is over (or that is in doubt) and
/// publishes them again, all at once; returns how many were acknowledged.
pub async fn reconcile_once(issuer: &Issuer) -> Result<usize, ApiError> {
    let Delivery::Kafka { ledger, .. } = &issuer.delivery else {
        return Ok(0);
    };
    let mut redis = issuer.redis.clone();
    let mut claimed = Vec::new();
    for coupon in issuer.scripts.active_coupons(&mut redis).await? {
        let pending = ledger.entries(&mut redis, coupon).await?;
        if pending.is_empty() && !issuer.scripts.has_meta(&mut redis, coupon).await? {
            issuer.scripts.forget_coupon(&mut redis, coupon).await?;
            continue;
        }
        for entry in pending {
            if let Claim::Claimed(entry) = issuer.claim(coupon, entry.event.user_id).await? {
                claimed.push(entry);
            }
        }
    }
    // Concurrently: one by one, each failure would hold the pass up for a publish timeout.
    let outcomes = join_all(claimed.into_iter().map(|entry| async move {
        let (coupon, user) = (entry.event.coupon_id, entry.event.user_id);
        issuer
            .republish(entry)
            .await
            .inspect_err(|err| tracing::debug!(%coupon, %user, error = %err, "still pending"))
    }))
    .await;
    Ok(outcomes.iter().filter(|outcome| outcome.is_ok()).count())
}
