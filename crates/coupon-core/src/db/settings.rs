//! A coupon's operator settings (paused or not) changed during its sale: PostgreSQL first,
//! under a version every change moves, then Redis's meta, as
//! `coupon-core/tests/settings_model.rs` checks.
//!
//! A change is recorded as landed only under the stamp in force when it committed: a new
//! stamp (a rebuild, a hand-over) may name a state loaded from an older read, and sets the
//! record back to 0 (`crate::db::coupons::record_redis_stamp`), so that the landers land
//! the settings into it again.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::db::coupons::find_coupon;
use crate::db::schema::coupons;
use crate::domain::{Coupon, CouponId};

/// A change committed: the coupon as it is now, and the stamp in force when it committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub coupon: Coupon,
    pub stamp: Option<String>,
}

/// Why a change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsRefused {
    #[error("coupon {0} does not exist")]
    NotFound(i64),
    #[error("coupon {0} is in buckets, which cannot be paused yet")]
    Bucketed(i64),
}

/// Pauses or resumes `coupon`: a new version if that changes anything (the same setting
/// again lands the last change, if it did not land).
pub async fn set_paused(
    conn: &mut AsyncPgConnection,
    coupon: CouponId,
    paused: bool,
) -> QueryResult<Result<Changed, SettingsRefused>> {
    conn.transaction(async |conn| {
        let row: Option<(bool, i16, Option<String>)> = coupons::table
            .find(coupon.get())
            .select((coupons::paused, coupons::buckets, coupons::redis_stamp))
            .for_update()
            .first(conn)
            .await
            .optional()?;
        let Some((was, buckets, stamp)) = row else {
            return Ok(Err(SettingsRefused::NotFound(coupon.get())));
        };
        if buckets > 1 {
            return Ok(Err(SettingsRefused::Bucketed(coupon.get())));
        }
        if was != paused {
            diesel::update(coupons::table.find(coupon.get()))
                .set((
                    coupons::paused.eq(paused),
                    coupons::settings_version.eq(coupons::settings_version + 1),
                ))
                .execute(conn)
                .await?;
        }
        let Some(now) = find_coupon(conn, coupon).await? else {
            return Ok(Err(SettingsRefused::NotFound(coupon.get())));
        };
        Ok(Ok(Changed { coupon: now, stamp }))
    })
    .await
}

/// Records that Redis holds `coupon`'s settings of `version`, if the stamp in force is
/// still `stamp` (else a new state may lack them: the landers land them there). Returns
/// whether it is recorded.
pub async fn record_settings_landed(
    conn: &mut AsyncPgConnection,
    coupon: CouponId,
    version: i64,
    stamp: Option<&str>,
) -> QueryResult<bool> {
    let under_stamp = || {
        coupons::table
            .filter(coupons::id.eq(coupon.get()))
            .filter(coupons::redis_stamp.is_not_distinct_from(stamp))
    };
    let raised = diesel::update(under_stamp().filter(coupons::landed_settings.lt(version)))
        .set(coupons::landed_settings.eq(version))
        .execute(conn)
        .await?;
    if raised == 1 {
        return Ok(true);
    }
    // Already recorded at this version or a later one, under the same stamp.
    under_stamp()
        .select(coupons::id)
        .first::<i64>(conn)
        .await
        .optional()
        .map(|found| found.is_some())
}

/// Every coupon whose settings are not known to be in Redis, each with the stamp in force.
pub async fn unlanded_settings(conn: &mut AsyncPgConnection) -> QueryResult<Vec<Changed>> {
    let ids: Vec<(i64, Option<String>)> = coupons::table
        .filter(coupons::landed_settings.lt(coupons::settings_version))
        .select((coupons::id, coupons::redis_stamp))
        .order(coupons::id)
        .load(conn)
        .await?;
    let mut changed = Vec::with_capacity(ids.len());
    for (id, stamp) in ids {
        let Ok(id) = CouponId::new(id) else { continue };
        if let Some(coupon) = find_coupon(conn, id).await? {
            changed.push(Changed { coupon, stamp });
        }
    }
    Ok(changed)
}
