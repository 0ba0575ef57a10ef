//! Failed events in an operator's hands, as admin routes: listed, replayed, discarded
//! (`issuer-worker dlq` does the first two on a shell). Each action records who took it.
//!
//! An OVER_QUANTITY event is not replayed here: its row would spend a unit of a raised
//! quantity that no Redis slot accounts for, and the user Redis admits for that unit, told
//! 201, would then be refused by the quantity guard. Its replay must take a slot in Redis
//! first, which is not built yet; the README's runbook gives the shell's way meanwhile.

use coupon_core::db::batch_insert::FailureReason;
use coupon_core::db::failed_events::{Discard, FailedEventRow, Filter, discard, find, list};
use coupon_core::db::redrive::{Redriven, replay};

use super::Issuer;
use crate::error::ApiError;

impl Issuer {
    /// Failed events, newest first, of one status or all.
    pub async fn failed_events(
        &self,
        filter: Filter,
        limit: i64,
    ) -> Result<Vec<FailedEventRow>, ApiError> {
        let mut db = self.pool.get().await?;
        Ok(list(&mut db, filter, limit).await?)
    }

    /// Replays failed event `id` through the workers' guarded insert, whatever its
    /// schedule or status, recorded as done `by`.
    pub async fn replay_failed_event(&self, id: i64, by: &str) -> Result<Redriven, ApiError> {
        let mut db = self.pool.get().await?;
        let row = find(&mut db, id)
            .await?
            .ok_or(ApiError::FailedEventNotFound(id))?;
        if row.reason == FailureReason::OverQuantity.as_str() {
            return Err(ApiError::Conflict(format!(
                "failed event {id} is OVER_QUANTITY: its replay must first take a slot in \
                 Redis, which this route does not do; see the README's runbook"
            )));
        }
        replay(&mut db, id, by)
            .await?
            .ok_or(ApiError::FailedEventNotFound(id))
    }

    /// Sets failed event `id` aside for good, recorded as done `by`; a RECOVERED one is a
    /// row, and is refused.
    pub async fn discard_failed_event(
        &self,
        id: i64,
        by: &str,
    ) -> Result<FailedEventRow, ApiError> {
        let mut db = self.pool.get().await?;
        match discard(&mut db, id, by).await? {
            Discard::Discarded(row) => Ok(*row),
            Discard::Recovered => Err(ApiError::Conflict(format!(
                "failed event {id} is RECOVERED: it is a row, and there is nothing to discard"
            ))),
            Discard::NotFound => Err(ApiError::FailedEventNotFound(id)),
        }
    }
}
