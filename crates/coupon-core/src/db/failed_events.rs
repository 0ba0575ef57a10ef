//! Failed events as stored: their statuses, their retry schedule (the seed's 30 s, 1 min,
//! 2 min), and the reads of them. Retrying them is `crate::db::redrive`'s.

use chrono::{DateTime, TimeDelta, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::db::schema::failed_events;
use crate::domain::{CouponId, UserId};

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
    /// Set aside for good by an operator: never retried, and not replayed by `--all`.
    Discarded,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Self::Pending,
        Self::Retrying,
        Self::Recovered,
        Self::Abandoned,
        Self::Discarded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Retrying => "RETRYING",
            Self::Recovered => "RECOVERED",
            Self::Abandoned => "ABANDONED",
            Self::Discarded => "DISCARDED",
        }
    }

    /// The status a stored name stands for.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
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
    pub updated_at: DateTime<Utc>,
    /// Who resolved it by hand (a discard or a replay), if anyone did.
    pub resolved_by: Option<String>,
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
    filter: Filter,
    limit: i64,
) -> QueryResult<Vec<FailedEventRow>> {
    let mut query = failed_events::table
        .select(FailedEventRow::as_select())
        .order(failed_events::id.desc())
        .limit(limit)
        .into_boxed();
    if let Some(status) = filter.status {
        query = query.filter(failed_events::status.eq(status.as_str()));
    }
    if let Some(coupon) = filter.coupon {
        query = query.filter(failed_events::coupon_id.eq(coupon.get()));
    }
    query.load(conn).await
}

/// Which failed events a list takes: every one unless narrowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Filter {
    pub status: Option<Status>,
    pub coupon: Option<CouponId>,
}

/// Ids of every failed event neither recovered nor discarded, oldest first.
pub async fn unrecovered_ids(conn: &mut AsyncPgConnection) -> QueryResult<Vec<i64>> {
    failed_events::table
        .filter(
            failed_events::status.ne_all([Status::Recovered.as_str(), Status::Discarded.as_str()]),
        )
        .select(failed_events::id)
        .order(failed_events::id)
        .load(conn)
        .await
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

/// What an operator's discard did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discard {
    /// Set aside now, or already (boxed: a row is large beside the other answers).
    Discarded(Box<FailedEventRow>),
    /// The event is a row: there is nothing to set aside.
    Recovered,
    NotFound,
}

/// Sets a failed event aside for good, recording `by` (who): it is never retried again,
/// and a replay by `--all` passes it over. A discarded event can still be replayed by its
/// id, which is how a discard is undone.
pub async fn discard(conn: &mut AsyncPgConnection, id: i64, by: &str) -> QueryResult<Discard> {
    conn.transaction(async |conn| {
        let Some(row) = locked(conn, id).await? else {
            return Ok(Discard::NotFound);
        };
        match Status::parse(&row.status) {
            Some(Status::Recovered) => Ok(Discard::Recovered),
            Some(Status::Discarded) => Ok(Discard::Discarded(Box::new(row))),
            _ => diesel::update(failed_events::table.find(id))
                .set((
                    failed_events::status.eq(Status::Discarded.as_str()),
                    failed_events::next_retry_at.eq(None::<DateTime<Utc>>),
                    failed_events::resolved_by.eq(by),
                    failed_events::updated_at.eq(Utc::now()),
                ))
                .returning(FailedEventRow::as_returning())
                .get_result(conn)
                .await
                .map(|row| Discard::Discarded(Box::new(row))),
        }
    })
    .await
}

/// One failed event, if there is one by that id.
pub async fn find(conn: &mut AsyncPgConnection, id: i64) -> QueryResult<Option<FailedEventRow>> {
    failed_events::table
        .find(id)
        .select(FailedEventRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// One failed event, locked until the caller's transaction ends (an operator's action on it
/// waits for a worker's retry of it, and the other way round). Taken before the coupon's row
/// wherever both are: the workers' scheduled retry locks them in that order.
pub async fn locked(conn: &mut AsyncPgConnection, id: i64) -> QueryResult<Option<FailedEventRow>> {
    failed_events::table
        .find(id)
        .select(FailedEventRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}
