//! Settles pending slots nobody else will: in doubt after a publish that may have failed,
//! or left in flight (or claimed) by an API that died. Each is claimed through the ledger,
//! which judges ages on Redis's clock, then published again until the broker acknowledges
//! it. Every API replica runs one; a claim gives each entry to one of them at a time.
//! A coupon with nothing pending that can take no more slots leaves the registry, and so
//! these passes (`coupon_core::registry`).

use std::time::Duration;

use coupon_core::ledger::Claim;
use futures_util::future::join_all;
use redis::aio::ConnectionLike;
use tokio_util::sync::CancellationToken;

use super::KafkaDelivery;
use crate::error::ApiError;

pub async fn run(delivery: KafkaDelivery, interval: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let mut redis = delivery.redis.clone();
        match reconcile_once(&delivery, &mut redis).await {
            Ok(0) => {}
            Ok(settled) => tracing::info!(settled, "reconciler settled pending slots"),
            Err(err) => tracing::warn!(error = %err, "reconciler pass failed"),
        }
    }
}

/// Claims every pending entry whose owner's window is over (or that is in doubt) and
/// publishes each again at once; returns how many were acknowledged. Reads and claims go
/// through `con`.
pub async fn reconcile_once<C: ConnectionLike + Send + Sync>(
    delivery: &KafkaDelivery,
    con: &mut C,
) -> Result<usize, ApiError> {
    let mut publishes = Vec::new();
    for registration in delivery.registry.members(con).await? {
        let coupon = registration.coupon;
        let pending = delivery.ledger.entries(con, coupon).await?;
        if pending.is_empty() {
            delivery
                .registry
                .retire_if_finished(con, registration, "")
                .await?;
            continue;
        }
        for entry in pending {
            let user = entry.event.user_id;
            if let Claim::Claimed(entry) = delivery.claim(con, coupon, user).await? {
                // Started now, not after the pass's other claims: a rebuild waits one publish
                // window after Redis last knew an entry, and no longer (issue 10, finding 4).
                let delivery = delivery.clone();
                publishes.push(tokio::spawn(async move {
                    delivery.republish(entry).await.inspect_err(
                        |err| tracing::debug!(%coupon, %user, error = %err, "still pending"),
                    )
                }));
            }
        }
    }
    let outcomes = join_all(publishes).await;
    Ok(outcomes
        .iter()
        .filter(|outcome| matches!(outcome, Ok(Ok(()))))
        .count())
}
