//! A coupon's operator settings (paused or not, when the sale ends) changed during its
//! sale: PostgreSQL first, under a version every change moves, then Redis's meta, as
//! `coupon-core/tests/settings_model.rs` checks (the settings are one value to it).
//!
//! A change is recorded as landed only under the stamp in force when it committed: a new
//! stamp (a rebuild, a hand-over) may name a state loaded from an older read, and sets the
//! record back to 0 (`crate::db::coupons::record_redis_stamp`), so that the landers land
//! the settings into it again.

use chrono::{DateTime, Utc};
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
    #[error("coupon {0} is in buckets, whose settings cannot be changed yet")]
    Bucketed(i64),
    /// An end is only ever moved later (or removed): a sale cut short would take back
    /// what its users were told was open.
    #[error("the sale's end can only be moved later: it ends at {0}")]
    EndNotLater(String),
    #[error("the sale has no end: there is nothing to move later")]
    NoEnd,
    #[error("endsAt is in the past: the sale would never open again")]
    EndPassed,
}

/// What a change reads first: paused, the end, the buckets, the stamp in force.
type SettingsRow = (bool, Option<DateTime<Utc>>, i16, Option<String>);

/// One change an operator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Paused(bool),
    /// The sale's end moved later, or removed (None: no end).
    EndsAt(Option<DateTime<Utc>>),
}

/// Changes `coupon`'s settings: a new version if that changes anything (the same setting
/// again lands the last change, if it did not land).
pub async fn change_settings(
    conn: &mut AsyncPgConnection,
    coupon: CouponId,
    change: Change,
) -> QueryResult<Result<Changed, SettingsRefused>> {
    conn.transaction(async |conn| {
        let row: Option<SettingsRow> = coupons::table
            .find(coupon.get())
            .select((
                coupons::paused,
                coupons::ends_at,
                coupons::buckets,
                coupons::redis_stamp,
            ))
            .for_update()
            .first(conn)
            .await
            .optional()?;
        let Some((paused, ends_at, buckets, stamp)) = row else {
            return Ok(Err(SettingsRefused::NotFound(coupon.get())));
        };
        if buckets > 1 {
            return Ok(Err(SettingsRefused::Bucketed(coupon.get())));
        }
        let changes = match change {
            Change::Paused(now) => paused != now,
            Change::EndsAt(now) if now == ends_at => false,
            Change::EndsAt(now) => {
                if let (Some(was), Some(new)) = (ends_at, now)
                    && new <= was
                {
                    return Ok(Err(SettingsRefused::EndNotLater(was.to_rfc3339())));
                }
                if ends_at.is_none() {
                    return Ok(Err(SettingsRefused::NoEnd));
                }
                if now.is_some_and(|new| new <= Utc::now()) {
                    return Ok(Err(SettingsRefused::EndPassed));
                }
                true
            }
        };
        if changes {
            let version = coupons::settings_version.eq(coupons::settings_version + 1);
            let update = diesel::update(coupons::table.find(coupon.get()));
            match change {
                Change::Paused(now) => update.set((coupons::paused.eq(now), version)).execute(conn),
                Change::EndsAt(now) => update
                    .set((coupons::ends_at.eq(now), version))
                    .execute(conn),
            }
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
