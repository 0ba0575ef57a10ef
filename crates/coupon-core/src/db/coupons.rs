//! Queries on coupons and their issued rows, as the API needs them.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::buckets::BucketCount;
use crate::db::schema::{coupon_issues, coupons};
use crate::domain::{Coupon, CouponId, CouponSettings, UserId};
use crate::redis::epoch::Stamp;

#[derive(Queryable, Selectable)]
#[diesel(table_name = coupons, check_for_backend(diesel::pg::Pg))]
struct CouponRow {
    id: i64,
    name: String,
    total_quantity: i64,
    persisted_count: i64,
    starts_at: Option<DateTime<Utc>>,
    ends_at: Option<DateTime<Utc>>,
    buckets: i16,
    paused: bool,
    settings_version: i64,
}

impl TryFrom<CouponRow> for Coupon {
    type Error = Error;

    fn try_from(row: CouponRow) -> Result<Self, Error> {
        Ok(Coupon {
            id: CouponId::new(row.id).map_err(|e| Error::DeserializationError(Box::new(e)))?,
            name: row.name,
            total_quantity: row.total_quantity,
            persisted_count: row.persisted_count,
            starts_at: row.starts_at,
            ends_at: row.ends_at,
            buckets: BucketCount::new(row.buckets.into())
                .map_err(|e| Error::DeserializationError(Box::new(e)))?,
            settings: CouponSettings {
                paused: row.paused,
                version: row.settings_version,
            },
        })
    }
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = coupons)]
pub struct NewCoupon {
    pub name: String,
    pub total_quantity: i64,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    /// A [`BucketCount`], checked against the quantity (`BucketCount::for_quantity`).
    pub buckets: i16,
}

pub async fn insert_coupon(conn: &mut AsyncPgConnection, new: &NewCoupon) -> QueryResult<Coupon> {
    diesel::insert_into(coupons::table)
        .values(new)
        .returning(CouponRow::as_returning())
        .get_result(conn)
        .await?
        .try_into()
}

pub async fn find_coupon(
    conn: &mut AsyncPgConnection,
    id: CouponId,
) -> QueryResult<Option<Coupon>> {
    coupons::table
        .find(id.get())
        .select(CouponRow::as_select())
        .first(conn)
        .await
        .optional()?
        .map(Coupon::try_from)
        .transpose()
}

/// The coupons among `ids` that PostgreSQL knows, in id order.
pub async fn find_coupons(
    conn: &mut AsyncPgConnection,
    ids: &[CouponId],
) -> QueryResult<Vec<Coupon>> {
    let ids: Vec<i64> = ids.iter().map(|id| id.get()).collect();
    coupons::table
        .filter(coupons::id.eq_any(ids))
        .order(coupons::id)
        .select(CouponRow::as_select())
        .load(conn)
        .await?
        .into_iter()
        .map(Coupon::try_from)
        .collect()
}

/// The newest `limit` coupons, newest first (the console's list of sales).
pub async fn recent_coupons(conn: &mut AsyncPgConnection, limit: i64) -> QueryResult<Vec<Coupon>> {
    coupons::table
        .order(coupons::id.desc())
        .limit(limit)
        .select(CouponRow::as_select())
        .load(conn)
        .await?
        .into_iter()
        .map(Coupon::try_from)
        .collect()
}

/// When the user's row for this coupon was written by admission, if it is in PostgreSQL.
pub async fn find_issue(
    conn: &mut AsyncPgConnection,
    coupon: CouponId,
    user: UserId,
) -> QueryResult<Option<DateTime<Utc>>> {
    coupon_issues::table
        .find((coupon.get(), user.get()))
        .select(coupon_issues::issued_at)
        .first(conn)
        .await
        .optional()
}

/// Every coupon the user holds in PostgreSQL, oldest first.
pub async fn user_coupons(
    conn: &mut AsyncPgConnection,
    user: UserId,
) -> QueryResult<Vec<(i64, DateTime<Utc>)>> {
    coupon_issues::table
        .filter(coupon_issues::user_id.eq(user.get()))
        .select((coupon_issues::coupon_id, coupon_issues::issued_at))
        .order((
            coupon_issues::issued_at.asc(),
            coupon_issues::coupon_id.asc(),
        ))
        .load(conn)
        .await
}

/// Every user holding the coupon in PostgreSQL.
pub async fn coupon_holders(
    conn: &mut AsyncPgConnection,
    coupon: CouponId,
) -> QueryResult<Vec<i64>> {
    // Under a share lock of the coupon's row: an operator's replay holds it (FOR UPDATE)
    // from before its row and the slot it takes in Redis until the row commits, so a
    // rebuild reading the holders either reads before that (and had closed the state, so
    // the replay takes nothing) or reads the row (`coupon-core/tests/replay_model.rs`).
    conn.transaction(async |conn| {
        coupons::table
            .find(coupon.get())
            .select(coupons::id)
            .for_share()
            .first::<i64>(conn)
            .await
            .optional()?;
        coupon_issues::table
            .filter(coupon_issues::coupon_id.eq(coupon.get()))
            .select(coupon_issues::user_id)
            .load(conn)
            .await
    })
    .await
}

/// The coupon's stamp in force (None: never verified), its row locked until the caller's
/// transaction ends; None if there is no such coupon.
pub async fn lock_redis_stamp(
    conn: &mut AsyncPgConnection,
    coupon: CouponId,
) -> QueryResult<Option<Option<String>>> {
    coupons::table
        .find(coupon.get())
        .select(coupons::redis_stamp)
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// The stamp of the coupon's Redis state in force (`crate::redis::epoch::Stamp`): None if the
/// coupon is unknown or its state was never verified.
pub async fn redis_stamp(
    conn: &mut AsyncPgConnection,
    coupon: CouponId,
) -> QueryResult<Option<Stamp>> {
    let stamp: Option<Option<String>> = coupons::table
        .find(coupon.get())
        .select(coupons::redis_stamp)
        .first(conn)
        .await
        .optional()?;
    Ok(stamp.flatten().map(Stamp::new))
}

/// [`redis_stamp`] for many coupons in one query, in their order.
pub async fn redis_stamps(
    conn: &mut AsyncPgConnection,
    coupons: &[CouponId],
) -> QueryResult<Vec<Option<Stamp>>> {
    let ids: Vec<i64> = coupons.iter().map(|coupon| coupon.get()).collect();
    let found: std::collections::HashMap<i64, Option<String>> = coupons::table
        .filter(coupons::id.eq_any(&ids))
        .select((coupons::id, coupons::redis_stamp))
        .load::<(i64, Option<String>)>(conn)
        .await?
        .into_iter()
        .collect();
    Ok(ids
        .iter()
        .map(|id| found.get(id).cloned().flatten().map(Stamp::new))
        .collect())
}

/// Records `stamp` as the one in force: always after a rebuild (the newest verification,
/// which also moves the verification count every API watches), only where none is recorded
/// yet after a creation's first load (a rebuild that raced it is newer). Returns whether it
/// is the one in force now.
pub async fn record_redis_stamp(
    conn: &mut AsyncPgConnection,
    coupon: CouponId,
    stamp: &Stamp,
    verified: Verification,
) -> QueryResult<bool> {
    let target = coupons::table.filter(coupons::id.eq(coupon.get()));
    // A new stamp may name a state loaded from a read older than a change of the settings
    // that was recorded as landed (a meta lost between a rebuild's read and its load): the
    // landers land the settings again into it (`crate::db::settings`).
    let set = (
        coupons::redis_stamp.eq(stamp.as_str()),
        coupons::landed_settings.eq(0),
    );
    match verified {
        Verification::Rebuilt => {
            diesel::update(target).set(set).execute(conn).await?;
            count_verification(conn).await?;
            Ok(true)
        }
        Verification::Created => Ok(
            diesel::update(target.filter(coupons::redis_stamp.is_null()))
                .set(set)
                .execute(conn)
                .await?
                == 1,
        ),
    }
}

/// A hand-over's new stamp: recorded only if the stamp in force is still `verified`, the
/// one the hand-over closed the coupon under. Anything else means another verification
/// (a rebuild on a node without the hand-over's mark) came since, and carrying the closed
/// state over it would bring back what that one replaced. Returns whether it is recorded.
pub async fn hand_over_stamp(
    conn: &mut AsyncPgConnection,
    coupon: CouponId,
    verified: &Stamp,
    stamp: &Stamp,
) -> QueryResult<bool> {
    let replaced = diesel::update(
        coupons::table
            .filter(coupons::id.eq(coupon.get()))
            .filter(coupons::redis_stamp.eq(verified.as_str())),
    )
    // A change of the settings may have landed on the old node after the hand-over read its
    // state: the landers land them again into the new one (`crate::db::settings`).
    .set((
        coupons::redis_stamp.eq(stamp.as_str()),
        coupons::landed_settings.eq(0),
    ))
    .execute(conn)
    .await?;
    if replaced == 1 {
        count_verification(conn).await?;
    }
    Ok(replaced == 1)
}

/// Moves the verification count every API watches. After the stamp's commit, never inside
/// its transaction: a sequence moves for everyone at once, and a watcher that saw the count
/// move before the stamp committed could learn the old stamp again and keep it.
pub(crate) async fn count_verification(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    diesel::sql_query("SELECT nextval('redis_verifications')")
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    last_value: i64,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    is_called: bool,
}

/// How many rebuilds have recorded a stamp in force so far (`record_redis_stamp`).
pub async fn redis_verifications(conn: &mut AsyncPgConnection) -> QueryResult<i64> {
    let count: Count = diesel::sql_query("SELECT last_value, is_called FROM redis_verifications")
        .get_result(conn)
        .await?;
    Ok(if count.is_called { count.last_value } else { 0 })
}

/// How a stamp came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// The coupon's first load, when nothing could have been admitted yet.
    Created,
    /// A rebuild from PostgreSQL.
    Rebuilt,
}

/// The coupons that may still have work in Redis (admissions unsettled, or slots left):
/// every one whose rows are fewer than its quantity, oldest first. One whose every slot has
/// its row has nothing left anywhere.
pub async fn coupons_with_work(conn: &mut AsyncPgConnection) -> QueryResult<Vec<i64>> {
    coupons::table
        .filter(coupons::persisted_count.lt(coupons::total_quantity))
        .select(coupons::id)
        .order(coupons::id)
        .load(conn)
        .await
}

/// Every coupon id, oldest first.
pub async fn all_coupon_ids(conn: &mut AsyncPgConnection) -> QueryResult<Vec<i64>> {
    coupons::table
        .select(coupons::id)
        .order(coupons::id)
        .load(conn)
        .await
}
