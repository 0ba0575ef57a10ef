//! Settles in-doubt reservations that no retry settled: each is published again until
//! the broker acknowledges it. Every API replica runs one; two publishing the same event
//! is harmless, the worker's insert is idempotent.

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::issuing::Issuer;

pub async fn run(issuer: Issuer, interval: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        match reconcile_once(&issuer, interval).await {
            Ok(0) => {}
            Ok(settled) => tracing::info!(settled, "reconciler settled in-doubt reservations"),
            Err(err) => tracing::warn!(error = %err, "reconciler pass failed"),
        }
    }
}

/// Publishes again every in-doubt event at least `min_age` old (younger ones are left to
/// the user's own retry); returns how many were acknowledged.
pub async fn reconcile_once(issuer: &Issuer, min_age: Duration) -> Result<usize, ApiError> {
    let mut redis = issuer.redis.clone();
    let cutoff = Utc::now() - min_age;
    let mut settled = 0;
    for coupon in issuer.scripts.in_doubt_coupons(&mut redis).await? {
        for event in issuer.scripts.in_doubt_events(&mut redis, coupon).await? {
            if event.issued_at > cutoff {
                continue;
            }
            match issuer.republish(&event).await {
                Ok(()) => settled += 1,
                Err(err) => {
                    tracing::debug!(%coupon, user = %event.user_id, error = %err, "still in doubt");
                }
            }
        }
    }
    Ok(settled)
}
