//! The life of a failed event after it was set aside: retried on a schedule (the seed's
//! 30 s, 1 min, 2 min), then RECOVERED once it becomes a row, or ABANDONED for a person,
//! who can list and replay it.
//!
//! A retry runs the event through the same guarded batch insert as the live path, so it
//! can never oversell or duplicate.

use chrono::{DateTime, TimeDelta, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::db::batch_insert::{SourcedIssue, is_transient, persist_batch};
use crate::db::schema::failed_events;
use crate::domain::{CouponId, UserId};
use crate::event::IssueEvent;

/// Wait before each automatic retry; after the last one the event is ABANDONED.
pub const RETRY_SCHEDULE: [TimeDelta; 3] = [
    TimeDelta::seconds(30),
    TimeDelta::minutes(1),
    TimeDelta::minutes(2),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Status {
    Pending,
    Retrying,
    Recovered,
    Abandoned,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Retrying => "RETRYING",
            Self::Recovered => "RECOVERED",
            Self::Abandoned => "ABANDONED",
        }
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = failed_events, check_for_backend(diesel::pg::Pg))]
pub struct FailedEventRow {
    pub id: i64,
    pub reason: String,
    pub detail: String,
    pub source: String,
    pub coupon_id: Option<i64>,
    pub user_id: Option<i64>,
    pub payload: Vec<u8>,
    pub status: String,
    pub attempts: i32,
    pub next_retry_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// What one retry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redriven {
    /// The event is a row now (or was already).
    Recovered,
    /// Still not a row; it will be retried at this time.
    RetryAt(DateTime<Utc>),
    /// Still not a row, and no retry is left: a person must look.
    Abandoned(String),
}

/// Why the user's event for this coupon was set aside for good, if it was: a failed event
/// for them that never became a row. Undecodable events name no user, so this is the
/// database's refusal (OVER_QUANTITY, or a value it rejects).
pub async fn refusal(
    conn: &mut AsyncPgConnection,
    coupon: CouponId,
    user: UserId,
) -> QueryResult<Option<String>> {
    failed_events::table
        .filter(failed_events::coupon_id.eq(coupon.get()))
        .filter(failed_events::user_id.eq(user.get()))
        .filter(failed_events::status.ne(Status::Recovered.as_str()))
        .select(failed_events::reason)
        .order(failed_events::id)
        .first(conn)
        .await
        .optional()
}

/// When a newly failed event is first retried.
pub fn first_retry_at(now: DateTime<Utc>) -> DateTime<Utc> {
    now + RETRY_SCHEDULE[0]
}

/// Failed events, newest first, optionally of one status.
pub async fn list(
    conn: &mut AsyncPgConnection,
    status: Option<Status>,
    limit: i64,
) -> QueryResult<Vec<FailedEventRow>> {
    let mut query = failed_events::table
        .select(FailedEventRow::as_select())
        .order(failed_events::id.desc())
        .limit(limit)
        .into_boxed();
    if let Some(status) = status {
        query = query.filter(failed_events::status.eq(status.as_str()));
    }
    query.load(conn).await
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
                        redrive(conn, &row, false).await?,
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

/// An operator's replay of one failed event, whatever its schedule says; None if there
/// is no such event. A replay that fails leaves the event ABANDONED with the new reason.
pub async fn replay(conn: &mut AsyncPgConnection, id: i64) -> QueryResult<Option<Redriven>> {
    conn.transaction(async |conn| {
        let row: Option<FailedEventRow> = failed_events::table
            .find(id)
            .select(FailedEventRow::as_select())
            .for_update()
            .first(conn)
            .await
            .optional()?;
        match row {
            Some(row) => Ok(Some(redrive(conn, &row, true).await?)),
            None => Ok(None),
        }
    })
    .await
}

/// Ids of every failed event not yet recovered, oldest first.
pub async fn unrecovered_ids(conn: &mut AsyncPgConnection) -> QueryResult<Vec<i64>> {
    failed_events::table
        .filter(failed_events::status.ne(Status::Recovered.as_str()))
        .select(failed_events::id)
        .order(failed_events::id)
        .load(conn)
        .await
}

async fn redrive(
    conn: &mut AsyncPgConnection,
    row: &FailedEventRow,
    by_operator: bool,
) -> QueryResult<Redriven> {
    let failure = match IssueEvent::decode(&row.payload) {
        Err(err) => Some(err.to_string()),
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
                Ok(outcome) => outcome
                    .failed
                    .as_slice()
                    .first()
                    .map(|f| format!("{}: {}", f.reason.as_str(), f.detail)),
                Err(err) if !is_transient(&err) => {
                    Some(format!("REJECTED: PostgreSQL refused the event: {err}"))
                }
                Err(err) => return Err(err),
            }
        }
    };
    let attempts = row.attempts + 1;
    let now = Utc::now();
    let (status, next, result) = match failure {
        None => (Status::Recovered, None, Redriven::Recovered),
        Some(reason) => match RETRY_SCHEDULE.get(attempts as usize) {
            Some(wait) if !by_operator => (
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
            failed_events::updated_at.eq(now),
        ))
        .execute(conn)
        .await?;
    Ok(result)
}

/// How many failed events there are of each (reason, status).
pub async fn counts(conn: &mut AsyncPgConnection) -> QueryResult<Vec<(String, String, i64)>> {
    failed_events::table
        .group_by((failed_events::reason, failed_events::status))
        .select((
            failed_events::reason,
            failed_events::status,
            diesel::dsl::count_star(),
        ))
        .order((failed_events::reason, failed_events::status))
        .load(conn)
        .await
}
