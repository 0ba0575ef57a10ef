//! Settles pending slots nobody else will: in doubt after a publish that may have failed,
//! or left in flight by an API that died. Each is published again until the broker
//! acknowledges it. Every API replica runs one; two publishing the same event is harmless,
//! the worker's insert is idempotent.

use std::time::Duration;

use chrono::Utc;
use coupon_core::admission::PendingState;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::issuing::Issuer;

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

/// Publishes again every pending event that is in doubt, or in flight for longer than a
/// first publish can take; returns how many were acknowledged.
pub async fn reconcile_once(issuer: &Issuer) -> Result<usize, ApiError> {
    let mut redis = issuer.redis.clone();
    let abandoned_before = Utc::now() - issuer.publish_window;
    let mut settled = 0;
    for coupon in issuer.scripts.active_coupons(&mut redis).await? {
        let pending = issuer.scripts.pending(&mut redis, coupon).await?;
        if pending.is_empty() && !issuer.scripts.has_meta(&mut redis, coupon).await? {
            issuer.scripts.forget_coupon(&mut redis, coupon).await?;
            continue;
        }
        for (event, state) in pending {
            if state == PendingState::InFlight && event.issued_at > abandoned_before {
                continue; // its own request is still publishing it
            }
            match issuer.republish(&event).await {
                Ok(()) => settled += 1,
                Err(err) => {
                    tracing::debug!(%coupon, user = %event.user_id, error = %err, "still pending");
                }
            }
        }
    }
    Ok(settled)
}
