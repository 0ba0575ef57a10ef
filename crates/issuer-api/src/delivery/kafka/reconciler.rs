//! Settles pending slots nobody else will: in doubt after a publish that may have failed,
//! or left in flight (or claimed) by an API that died. Each is claimed through the ledger,
//! which judges ages on Redis's clock, then published again until the broker acknowledges
//! it. Every API replica runs one; a claim gives each entry to one of them at a time.
//! A coupon with nothing pending that can take no more slots leaves the registry, and so
//! these passes (`coupon_core::redis::registry`). A bucketed coupon's buckets are each
//! looked at; slots being given back there whose releaser died before putting them up for
//! sale are put up here (nobody waits on a coupon whose every bucket is marked sold out, so
//! no mover would), and it stays in the registry: an empty bucket is not a finished coupon.

use std::collections::BTreeMap;

use coupon_core::redis::ledger::{Claim, PendingState};
use futures_util::future::join_all;
use redis::aio::ConnectionLike;
use tokio_util::sync::CancellationToken;

use super::KafkaDelivery;
use crate::error::ApiError;
use crate::layouts::Layout;
use crate::metrics::StateLabels;

pub async fn run(delivery: KafkaDelivery, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delivery.reconcile_interval) => {}
        }
        let mut redis = delivery.redis.clone();
        // A pass waits on its dependencies (PostgreSQL's pool for a coupon's layout, say):
        // shutdown does not wait for it. A pass cut short leaves its claims to lapse, as
        // an API that died would, and its publishes under way run to their end.
        let pass = tokio::select! {
            () = shutdown.cancelled() => return,
            pass = reconcile_once(&delivery, &mut redis) => pass,
        };
        match pass {
            Ok(0) => {}
            Ok(settled) => tracing::info!(settled, "reconciler settled pending slots"),
            Err(err) => tracing::warn!(error = %err, "reconciler pass failed"),
        }
    }
}

/// Claims every pending entry whose owner's window is over (or that is in doubt) and
/// publishes each again at once; returns how many were acknowledged. Reads and claims go
/// through `con`. The pending gauges are set from what the pass read.
pub async fn reconcile_once<C: ConnectionLike + Send + Sync>(
    delivery: &KafkaDelivery,
    con: &mut C,
) -> Result<usize, ApiError> {
    let mut publishes = Vec::new();
    let (sec, micros): (i64, i64) = redis::cmd("TIME").query_async(con).await?;
    let now_ms = sec * 1000 + micros / 1000;
    let mut by_state: BTreeMap<&'static str, i64> = [
        PendingState::InFlight,
        PendingState::Doubt,
        PendingState::Claimed,
        PendingState::Releasing,
    ]
    .iter()
    .map(|state| (state.as_str(), 0))
    .collect();
    let mut oldest_ms: Option<i64> = None;
    let mut postgres_away = false;
    for registration in delivery.registry.members(con).await? {
        let coupon = registration.coupon;
        // A registered coupon PostgreSQL lacks was registered by a test or by hand: its own
        // keys are all there is.
        // Unknown only while PostgreSQL is away (a layout is read from it once): the rest
        // of the pass looks only at the coupons whose layout this process holds, rather
        // than wait out the pool's timeout for each of the others in turn.
        let known = if postgres_away {
            delivery.layouts.cached(coupon).map(Some)
        } else {
            match delivery.layouts.get(coupon).await {
                Ok(layout) => Some(layout),
                Err(err) => {
                    tracing::warn!(%coupon, error = %err, "reconciler: the coupon's layout is not known now");
                    postgres_away = matches!(
                        err,
                        ApiError::Unavailable {
                            what: "postgresql",
                            ..
                        }
                    );
                    None
                }
            }
        };
        let Some(layout) = known else { continue };
        let layout = layout.unwrap_or(Layout::Single);
        let mut releasing = false;
        let mut nothing_pending = true;
        for at in layout.ledgers(delivery.layouts.prefix(), coupon) {
            let pending = delivery.ledger.entries(con, &at, coupon).await?;
            for entry in &pending {
                *by_state.entry(entry.state.as_str()).or_default() += 1;
                let issued_ms = entry.event.issued_at.timestamp_millis();
                oldest_ms = Some(oldest_ms.map_or(issued_ms, |oldest| oldest.min(issued_ms)));
                releasing |= entry.state == PendingState::Releasing;
            }
            nothing_pending &= pending.is_empty();
            for entry in pending {
                let user = entry.event.user_id;
                if let Claim::Claimed(entry) = delivery.claim(con, &at, coupon, user).await? {
                    // Started now, not after the pass's other claims: a rebuild waits one
                    // publish window after Redis last knew an entry, and no longer.
                    let (delivery, at) = (delivery.clone(), at.clone());
                    publishes.push(tokio::spawn(async move {
                        delivery.republish(entry, at).await.inspect_err(
                            |err| tracing::debug!(%coupon, %user, error = %err, "still pending"),
                        )
                    }));
                }
            }
        }
        if releasing {
            // A bucket closed for its rebuild (or not verified under the stamps known here)
            // refuses the reopen until it is open again: the next pass tries again.
            match delivery.reopen_released(coupon).await {
                Ok(0) => {}
                Ok(reopened) => {
                    tracing::info!(%coupon, units = reopened, "slots left being given back put up for sale")
                }
                Err(err) => {
                    tracing::warn!(%coupon, error = %err, "reconciler: slots being given back not reopened now")
                }
            }
        }
        if nothing_pending && matches!(layout, Layout::Single) {
            delivery
                .registry
                .retire_if_finished(con, registration, "")
                .await?;
        }
    }
    let metrics = &delivery.metrics;
    metrics.pending.replace(
        by_state
            .into_iter()
            .map(|(state, count)| (StateLabels { state }, count)),
    );
    metrics
        .pending_oldest_age
        .set(oldest_ms.map_or(0.0, |oldest| (now_ms - oldest).max(0) as f64 / 1000.0));
    let outcomes = join_all(publishes).await;
    let acknowledged = outcomes
        .iter()
        .filter(|outcome| matches!(outcome, Ok(Ok(()))))
        .count();
    metrics.republished.inc_by(acknowledged as u64);
    Ok(acknowledged)
}
