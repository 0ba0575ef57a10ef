//! The publish window every rebuild honours: the longest any Kafka-mode API runs with,
//! kept in PostgreSQL (a rebuild runs because Redis lost its state, so not there).

use std::time::Duration;

use diesel::OptionalExtension;
use diesel::sql_types::BigInt;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

#[derive(diesel::QueryableByName)]
struct Row {
    #[diesel(sql_type = BigInt)]
    window_ms: i64,
}

fn millis(window: Duration) -> i64 {
    i64::try_from(window.as_millis()).unwrap_or(i64::MAX)
}

/// Records that a process publishes within `window` (at its start); returns the longest
/// recorded, which is what a rebuild must wait.
pub async fn record(
    conn: &mut AsyncPgConnection,
    window: Duration,
) -> diesel::QueryResult<Duration> {
    let row: Row = diesel::sql_query(
        "INSERT INTO publish_window (only_row, window_ms) VALUES (TRUE, $1) \
         ON CONFLICT (only_row) DO UPDATE \
         SET window_ms = GREATEST(publish_window.window_ms, EXCLUDED.window_ms), \
             updated_at = now() \
         RETURNING window_ms",
    )
    .bind::<BigInt, _>(millis(window).max(1))
    .get_result(conn)
    .await?;
    Ok(Duration::from_millis(row.window_ms.unsigned_abs()))
}

/// The longest window recorded, or `own` if longer: a read alone, for the rebuild's path,
/// which every request meets while a coupon is closed.
pub async fn longest(conn: &mut AsyncPgConnection, own: Duration) -> diesel::QueryResult<Duration> {
    let row: Option<Row> = diesel::sql_query("SELECT window_ms FROM publish_window")
        .get_result(conn)
        .await
        .optional()?;
    let recorded = row.map_or(Duration::ZERO, |row| {
        Duration::from_millis(row.window_ms.unsigned_abs())
    });
    Ok(recorded.max(own))
}
