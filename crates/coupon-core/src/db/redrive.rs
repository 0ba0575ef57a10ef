//! Retrying failed events: on their schedule, by any worker, or by an operator's replay.
//! Each one is RECOVERED once it becomes a row, or ABANDONED for a person.
//!
//! A retry runs the event through the same guarded batch insert as the live path, so it
//! can never oversell or duplicate.
//!
//! An OVER_QUANTITY event is not retried on schedule: it is abandoned for a person at its
//! first retry, never inserted. The quantity it was refused under grows by a raise, whose
//! new units are Redis's to sell: the row of an event no admission made (a forged one)
//! would spend one of them, and the user Redis then admits for it, told 201, would be
//! refused by the guard. Only a person knows whether an admission made the event. The
//! operator's replay inserts it: the admin route (and the console) writes the row and then
//! takes the user's slot in Redis in one transaction, holding the coupon's row until the row
//! commits ([`replay_within`], `coupon-core/tests/replay_model.rs`); the shell's `dlq
//! replay` takes none, and the
//! README's runbook then raises PostgreSQL's quantity alone, recorded as landed, so that
//! Redis sells nothing more.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::db::batch_insert::{FailureReason, SourcedIssue, is_transient, persist_batch};
use crate::db::failed_events::{FailedEventRow, RETRY_SCHEDULE, Status, locked};
use crate::db::schema::failed_events;
use crate::event::IssueEvent;

/// What one retry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redriven {
    /// The event is a row now (or was already).
    Recovered,
    /// Still not a row; it will be retried at this time.
    RetryAt(chrono::DateTime<Utc>),
    /// Still not a row, and no retry is left: a person must look.
    Abandoned(String),
}

/// Retries every failed event whose time has come, each in its own transaction, with
/// `SKIP LOCKED` so that several workers share the work without doing any twice.
/// Returns what happened to each.
pub async fn redrive_due(
    conn: &mut AsyncPgConnection,
    limit: i64,
) -> QueryResult<Vec<(i64, Redriven)>> {
    let mut done = Vec::new();
    for _ in 0..limit {
        let next = conn
            .transaction(async |conn| {
                let due: Option<FailedEventRow> = failed_events::table
                    .select(FailedEventRow::as_select())
                    .filter(
                        failed_events::status
                            .eq_any([Status::Pending.as_str(), Status::Retrying.as_str()]),
                    )
                    .filter(failed_events::next_retry_at.le(Utc::now()))
                    .order(failed_events::id)
                    .for_update()
                    .skip_locked()
                    .first(conn)
                    .await
                    .optional()?;
                match due {
                    Some(row) => Ok::<_, diesel::result::Error>(Some((
                        row.id,
                        redrive(conn, &row, None).await?,
                    ))),
                    None => Ok(None),
                }
            })
            .await?;
        match next {
            Some(result) => done.push(result),
            None => break,
        }
    }
    Ok(done)
}

/// An operator's replay of one failed event, whatever its schedule says (a discarded one
/// too), recording `by` (who); None if there is no such event. A replay that fails leaves
/// the event ABANDONED with the new reason.
pub async fn replay(
    conn: &mut AsyncPgConnection,
    id: i64,
    by: &str,
) -> QueryResult<Option<Redriven>> {
    conn.transaction(async |conn| replay_within(conn, id, by).await)
        .await
}

/// [`replay`], in the caller's transaction: the admin route's, which holds the failed
/// event's row and then the coupon's, and takes the user's Redis slot after this row is
/// written, before the commit.
pub async fn replay_within(
    conn: &mut AsyncPgConnection,
    id: i64,
    by: &str,
) -> QueryResult<Option<Redriven>> {
    match locked(conn, id).await? {
        // A row already, whoever recovered it: nothing to do, nothing to re-record.
        Some(row) if row.status == Status::Recovered.as_str() => Ok(Some(Redriven::Recovered)),
        Some(row) => Ok(Some(redrive(conn, &row, Some(by)).await?)),
        None => Ok(None),
    }
}

/// Retries `row`: on its schedule (`by` None), or replayed by an operator (`by` names them).
async fn redrive(
    conn: &mut AsyncPgConnection,
    row: &FailedEventRow,
    by: Option<&str>,
) -> QueryResult<Redriven> {
    let by_operator = by.is_some();
    // Neither inserted nor rescheduled on a scheduled retry (the module's doc says why).
    let over_quantity = row.reason == FailureReason::OverQuantity.as_str();
    // What the try met: the reason it failed for (when it is one of the insert's), and why.
    let failure: Option<(Option<FailureReason>, String)> = match IssueEvent::decode(&row.payload) {
        Err(err) => Some((None, err.to_string())),
        Ok(_) if over_quantity && !by_operator => Some((
            None,
            format!(
                "{}: not retried on schedule: replay it only if an admission made it, once \
                 PostgreSQL's quantity alone is raised (README, runbook)",
                row.reason
            ),
        )),
        Ok(event) => {
            let issue = SourcedIssue {
                event,
                source: row.source.clone(),
                trace: None,
            };
            // The failed event of this very source is already recorded: a repeat failure
            // inside is ignored by its unique source, and reported back here. An event
            // PostgreSQL refuses again is a failure of the event (its insert ran in a
            // savepoint, so this transaction goes on); a failing database is the caller's.
            match persist_batch(conn, &[issue], Vec::new()).await {
                Ok(outcome) => outcome.failed.as_slice().first().map(|f| {
                    (
                        Some(f.reason),
                        format!("{}: {}", f.reason.as_str(), f.detail),
                    )
                }),
                Err(err) if !is_transient(&err) => Some((
                    Some(FailureReason::Rejected),
                    format!("REJECTED: PostgreSQL refused the event: {err}"),
                )),
                Err(err) => return Err(err),
            }
        }
    };
    // The event's reason is its last failure's: one that now meets a full coupon is
    // OVER_QUANTITY, and is abandoned like one (never retried on schedule, and the API
    // refuses its replay), whatever it first failed for.
    let reason = match &failure {
        Some((Some(now), _)) => now.as_str(),
        _ => row.reason.as_str(),
    };
    let over_quantity = reason == FailureReason::OverQuantity.as_str();
    let failure = failure.map(|(_, why)| why);
    let attempts = row.attempts + 1;
    let now = Utc::now();
    let (status, next, result) = match failure {
        None => (Status::Recovered, None, Redriven::Recovered),
        Some(reason) => match RETRY_SCHEDULE.get(attempts as usize) {
            Some(wait) if !by_operator && !over_quantity => (
                Status::Retrying,
                Some(now + *wait),
                Redriven::RetryAt(now + *wait),
            ),
            _ => (Status::Abandoned, None, Redriven::Abandoned(reason)),
        },
    };
    // An abandoned event shows why its last try failed, which is what a person needs.
    let detail = match &result {
        Redriven::Abandoned(reason) => reason.clone(),
        _ => row.detail.clone(),
    };
    diesel::update(failed_events::table.find(row.id))
        .set((
            failed_events::status.eq(status.as_str()),
            failed_events::attempts.eq(attempts),
            failed_events::next_retry_at.eq(next),
            failed_events::detail.eq(detail),
            failed_events::reason.eq(reason),
            failed_events::updated_at.eq(now),
            failed_events::resolved_by.eq(by.or(row.resolved_by.as_deref())),
        ))
        .execute(conn)
        .await?;
    Ok(result)
}
