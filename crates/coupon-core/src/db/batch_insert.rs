//! The idempotent, quantity-guarded batch insert: where issue events become rows.
//!
//! Invariants kept here, in one transaction per batch:
//! - one row per (coupon, user): the primary key plus `ON CONFLICT DO NOTHING`, so a
//!   redelivered batch changes nothing;
//! - rows per coupon never exceed its quantity: the coupon row is locked and its
//!   `persisted_count` checked and advanced with the inserts. Surplus (possible only if Redis
//!   lost state) is kept as OVER_QUANTITY failed events, in event order, never dropped;
//! - every event that cannot become a row is recorded in `failed_events` with its reason;
//! - an event PostgreSQL refuses for good (a value out of its range, say) is found by
//!   persisting the batch's events one by one ([`persist_isolating`]) and set aside as
//!   REJECTED, so the events behind it are persisted; only a failing database, not a
//!   refused event, makes the caller retry the batch.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::failed_events::first_retry_at;
use crate::db::schema::{coupon_issues, coupons, failed_events};
use crate::event::IssueEvent;

/// PostgreSQL takes at most 65,535 bind parameters per statement; 4 per row.
const INSERT_CHUNK_ROWS: usize = 10_000;

/// Why an event did not become a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// Not a readable issue event.
    Undecodable,
    /// The event names a coupon PostgreSQL does not have.
    CouponNotFound,
    /// The coupon already holds its full quantity of rows.
    OverQuantity,
    /// PostgreSQL refused the event's values for good (the detail holds its error).
    Rejected,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Undecodable => "UNDECODABLE",
            Self::CouponNotFound => "COUPON_NOT_FOUND",
            Self::OverQuantity => "OVER_QUANTITY",
            Self::Rejected => "REJECTED",
        }
    }
}

/// An issue event with where it came from (`kafka:topic/partition/offset`, say), so a
/// failure can be traced and a redelivery recognised.
#[derive(Debug, Clone)]
pub struct SourcedIssue {
    pub event: IssueEvent,
    pub source: String,
    /// The admitting request's trace, when tracing is on.
    pub trace: Option<crate::trace_context::TraceParent>,
}

/// An event set aside, with everything an operator needs to re-drive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedEvent {
    pub reason: FailureReason,
    pub detail: String,
    pub source: String,
    pub coupon_id: Option<i64>,
    pub user_id: Option<i64>,
    pub payload: Vec<u8>,
}

impl FailedEvent {
    fn for_issue(issue: &SourcedIssue, reason: FailureReason, detail: String) -> Self {
        Self {
            reason,
            detail,
            source: issue.source.clone(),
            coupon_id: Some(issue.event.coupon_id.get()),
            user_id: Some(issue.event.user_id.get()),
            payload: issue.event.encode(),
        }
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Rows written by this batch.
    pub inserted: usize,
    /// Events whose row was already there (redelivery, or twice in one batch).
    pub duplicates: usize,
    /// Everything set aside, the caller's rejects included, in the order recorded.
    pub failed: Vec<FailedEvent>,
}

#[derive(Insertable)]
#[diesel(table_name = coupon_issues)]
struct NewIssueRow {
    coupon_id: i64,
    user_id: i64,
    event_id: Uuid,
    issued_at: DateTime<Utc>,
}

#[derive(Insertable)]
#[diesel(table_name = failed_events)]
struct NewFailedRow<'a> {
    reason: &'a str,
    detail: Cow<'a, str>,
    source: Cow<'a, str>,
    coupon_id: Option<i64>,
    user_id: Option<i64>,
    payload: &'a [u8],
    next_retry_at: DateTime<Utc>,
}

/// Persists one batch atomically: all its rows and failed events, or nothing.
pub async fn persist_batch(
    conn: &mut AsyncPgConnection,
    issues: &[SourcedIssue],
    rejects: Vec<FailedEvent>,
) -> QueryResult<BatchOutcome> {
    conn.transaction(async |conn| {
        let mut outcome = BatchOutcome {
            failed: rejects,
            ..BatchOutcome::default()
        };
        // Coupons in id order, so that two workers locking overlapping coupons (during a
        // rebalance) always lock in the same order and cannot deadlock.
        let mut by_coupon: BTreeMap<i64, Vec<&SourcedIssue>> = BTreeMap::new();
        for issue in issues {
            if before_postgres_time(issue.event.issued_at) {
                outcome.failed.push(FailedEvent::for_issue(
                    issue,
                    FailureReason::Rejected,
                    format!(
                        "issuedAt {} is before PostgreSQL's earliest timestamp (4714-11-24 BC)",
                        issue.event.issued_at
                    ),
                ));
                continue;
            }
            by_coupon
                .entry(issue.event.coupon_id.get())
                .or_default()
                .push(issue);
        }
        for (coupon_id, events) in by_coupon {
            persist_coupon(conn, coupon_id, &events, &mut outcome).await?;
        }
        record_failed(conn, &outcome.failed).await?;
        Ok(outcome)
    })
    .await
}

/// Whether the database (its connection, its transaction, its load), not the data, failed:
/// the same batch may succeed on a retry. Only a refusal of the values is final, and is
/// looked at event by event.
///
/// diesel-async reports every SQLSTATE it does not name as `Unknown`, without the code:
/// deadlock (40P01), lock timeout (55P03), statement timeout (57014), too many connections
/// (53300), administrator shutdown (57P01), cannot connect now (57P03), disk full (53100).
/// Each of those is the database's state, not the event's, and taking one as final would
/// set a 201's event aside as REJECTED (a NOT_ISSUED status, a slot a rebuild sells again).
/// So `Unknown` is retried. The data exceptions of class 22 come back as `Unknown` too, and
/// are kept from these inserts instead: every value is typed, a timestamp before
/// PostgreSQL's first is refused by name before the insert (`before_postgres_time`), and
/// text is stored without NUL (`storable_text`). Were one to come anyway, the batch is
/// retried with the worker's back-off and counted, never set aside silently.
pub fn is_transient(err: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind as Kind, Error};
    match err {
        // A constraint refused the values: final for the event that carries them.
        Error::DatabaseError(
            Kind::UniqueViolation
            | Kind::ForeignKeyViolation
            | Kind::NotNullViolation
            | Kind::CheckViolation
            | Kind::RestrictViolation
            | Kind::ExclusionViolation,
            _,
        ) => false,
        Error::DatabaseError(_, _)
        | Error::BrokenTransactionManager
        | Error::AlreadyInTransaction
        | Error::NotInTransaction => true,
        // Encoding, decoding or building the query failed here, in the client: no retry
        // changes that.
        _ => false,
    }
}

/// Persists the batch; if PostgreSQL refuses it for a reason that is not transient, persists
/// its events one by one instead, and sets aside as REJECTED each event refused alone while
/// the database still answers (checked by a trivial query right after). A transient error,
/// or a database that stops answering, is returned: the caller retries the whole batch,
/// which the idempotent insert makes safe.
pub async fn persist_isolating(
    conn: &mut AsyncPgConnection,
    issues: &[SourcedIssue],
    rejects: Vec<FailedEvent>,
) -> QueryResult<BatchOutcome> {
    let err = match persist_batch(conn, issues, rejects.clone()).await {
        Err(err) if !is_transient(&err) => err,
        done => return done,
    };
    tracing::warn!(error = %err, events = issues.len(), "batch refused; persisting its events one by one");
    let mut outcome = BatchOutcome {
        failed: rejects,
        ..BatchOutcome::default()
    };
    for issue in issues {
        match persist_batch(conn, std::slice::from_ref(issue), Vec::new()).await {
            Ok(one) => {
                outcome.inserted += one.inserted;
                outcome.duplicates += one.duplicates;
                outcome.failed.extend(one.failed);
            }
            Err(err) if !is_transient(&err) => {
                diesel::sql_query("SELECT 1").execute(conn).await?;
                outcome.failed.push(FailedEvent::for_issue(
                    issue,
                    FailureReason::Rejected,
                    format!("PostgreSQL refused the event: {err}"),
                ));
            }
            Err(err) => return Err(err),
        }
    }
    persist_batch(conn, &[], outcome.failed.clone()).await?;
    Ok(outcome)
}

async fn persist_coupon(
    conn: &mut AsyncPgConnection,
    coupon_id: i64,
    events: &[&SourcedIssue],
    outcome: &mut BatchOutcome,
) -> QueryResult<()> {
    let stock: Option<(i64, i64)> = coupons::table
        .find(coupon_id)
        .select((coupons::total_quantity, coupons::persisted_count))
        .for_update()
        .first(conn)
        .await
        .optional()?;
    let Some((quantity, issued)) = stock else {
        let detail = format!("coupon {coupon_id} does not exist");
        outcome.failed.extend(events.iter().map(|issue| {
            FailedEvent::for_issue(issue, FailureReason::CouponNotFound, detail.clone())
        }));
        return Ok(());
    };

    let users: Vec<i64> = events.iter().map(|e| e.event.user_id.get()).collect();
    let mut seen: HashSet<i64> = coupon_issues::table
        .filter(coupon_issues::coupon_id.eq(coupon_id))
        .filter(coupon_issues::user_id.eq_any(&users))
        .select(coupon_issues::user_id)
        .load(conn)
        .await?
        .into_iter()
        .collect();

    let mut room = usize::try_from(quantity - issued).unwrap_or(0);
    let mut rows = Vec::with_capacity(events.len().min(room));
    for issue in events {
        let event = &issue.event;
        if !seen.insert(event.user_id.get()) {
            outcome.duplicates += 1;
        } else if room == 0 {
            let detail = format!("coupon {coupon_id} already holds its quantity of {quantity}");
            outcome.failed.push(FailedEvent::for_issue(
                issue,
                FailureReason::OverQuantity,
                detail,
            ));
        } else {
            room -= 1;
            rows.push(NewIssueRow {
                coupon_id,
                user_id: event.user_id.get(),
                event_id: event.event_id,
                issued_at: event.issued_at,
            });
        }
    }

    let mut inserted = 0;
    for chunk in rows.chunks(INSERT_CHUNK_ROWS) {
        // The coupon row lock serialises writers of this coupon, so the pre-read above is
        // exact; the conflict clause is a second belt should that ever change.
        inserted += diesel::insert_into(coupon_issues::table)
            .values(chunk)
            .on_conflict_do_nothing()
            .execute(conn)
            .await?;
    }
    if inserted > 0 {
        diesel::update(coupons::table.find(coupon_id))
            .set(coupons::persisted_count.eq(coupons::persisted_count + inserted as i64))
            .execute(conn)
            .await?;
    }
    outcome.inserted += inserted;
    outcome.duplicates += rows.len() - inserted;
    Ok(())
}

/// PostgreSQL's `text` refuses NUL (22021, which diesel-async reports as `Unknown`, so it
/// would be retried for ever): a detail quoting an event's bytes has it replaced.
fn storable_text(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// PostgreSQL's earliest timestamp, 4714-11-24 BC (Julian day 0): an event dated before it
/// (chrono reaches further back) is refused by the server with a data exception, which
/// diesel-async cannot tell from a busy database. Refused here instead, by name.
fn before_postgres_time(at: DateTime<Utc>) -> bool {
    let earliest = chrono::NaiveDate::from_ymd_opt(-4713, 11, 24)
        .and_then(|day| day.and_hms_opt(0, 0, 0))
        .map(|at| at.and_utc());
    earliest.is_some_and(|earliest| at < earliest)
}

async fn record_failed(conn: &mut AsyncPgConnection, failed: &[FailedEvent]) -> QueryResult<()> {
    if failed.is_empty() {
        return Ok(());
    }
    let next_retry_at = first_retry_at(Utc::now());
    let rows: Vec<NewFailedRow<'_>> = failed
        .iter()
        .map(|f| NewFailedRow {
            reason: f.reason.as_str(),
            detail: storable_text(&f.detail),
            source: storable_text(&f.source),
            coupon_id: f.coupon_id,
            user_id: f.user_id,
            payload: &f.payload,
            next_retry_at,
        })
        .collect();
    for chunk in rows.chunks(INSERT_CHUNK_ROWS / 2) {
        diesel::insert_into(failed_events::table)
            .values(chunk)
            .on_conflict(failed_events::source)
            .do_nothing()
            .execute(conn)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgresql_time_starts_at_julian_day_zero() {
        let at = |millis| DateTime::from_timestamp_millis(millis).unwrap();
        // 4714-11-24 00:00:00 BC (proleptic Gregorian) is -210866803200 s.
        assert!(!before_postgres_time(at(-210_866_803_200_000)));
        assert!(before_postgres_time(at(-210_866_803_200_001)));
        assert!(!before_postgres_time(Utc::now()));
    }

    #[test]
    fn text_is_stored_without_nul() {
        assert_eq!(storable_text("plain"), Cow::Borrowed("plain"));
        assert_eq!(storable_text("a\0b"), "a\u{FFFD}b");
    }
}
