//! A coupon's operator settings (paused or not, when the sale ends) changed during its
//! sale: PostgreSQL first, under a version every change moves, then Redis's meta, as
//! `coupon-core/tests/settings_model.rs` checks (the settings are one value to it).
//!
//! A change is recorded as landed only under the stamp in force when it committed: a new
//! stamp (a rebuild, a hand-over) may name a state loaded from an older read, and sets the
//! record back to 0 (`crate::db::coupons::record_redis_stamp`), so that the landers land
//! the settings into it again. A bucketed coupon's settings land in every bucket's meta,
//! each recorded under the bucket's own stamp (`coupon_buckets.landed_settings`, set back
//! to 0 by `crate::db::buckets::record_bucket_stamp`).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::buckets::{Bucket, BucketCount};
use crate::db::buckets::coupon_buckets;
use crate::db::coupons::find_coupon;
use crate::db::schema::{coupon_buckets, coupons};
use crate::domain::{Coupon, CouponId};
use crate::redis::epoch::Stamp;

/// The stamps in force when a change committed, under which it may be recorded as landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stamps {
    /// A coupon of one bucket: its own state's (none before its first load).
    Own(Option<Stamp>),
    /// A bucketed coupon: each bucket's, in order.
    Buckets(Vec<(Bucket, Option<Stamp>)>),
}

/// A change committed: the coupon as it is now, and the stamps in force when it committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub coupon: Coupon,
    pub stamps: Stamps,
}

/// Why a change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsRefused {
    #[error("coupon {0} does not exist")]
    NotFound(i64),
    /// An end is only ever moved later (or removed): a sale cut short would take back
    /// what its users were told was open.
    #[error("the sale's end can only be moved later: it ends at {0}")]
    EndNotLater(String),
    #[error("the sale has no end: there is nothing to move later")]
    NoEnd,
    #[error("endsAt is in the past: the sale would never open again")]
    EndPassed,
}

/// What a change reads first: paused, and the end.
type SettingsRow = (bool, Option<DateTime<Utc>>);

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
            .select((coupons::paused, coupons::ends_at))
            .for_update()
            .first(conn)
            .await
            .optional()?;
        let Some((paused, ends_at)) = row else {
            return Ok(Err(SettingsRefused::NotFound(coupon.get())));
        };
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
        // Read in the change's transaction: a stamp recorded after it is newer than the
        // change's read, and the change is not recorded under it (the landers land it).
        let stamps = stamps_in_force(conn, &now).await?;
        Ok(Ok(Changed {
            coupon: now,
            stamps,
        }))
    })
    .await
}

/// The stamps in force for `coupon`'s state: its own, or each bucket's.
async fn stamps_in_force(conn: &mut AsyncPgConnection, coupon: &Coupon) -> QueryResult<Stamps> {
    if coupon.buckets == BucketCount::ONE {
        let stamp: Option<String> = coupons::table
            .find(coupon.id.get())
            .select(coupons::redis_stamp)
            .first(conn)
            .await?;
        return Ok(Stamps::Own(stamp.map(Stamp::new)));
    }
    let rows = coupon_buckets(conn, coupon).await?;
    Ok(Stamps::Buckets(
        rows.into_iter()
            .map(|row| (row.bucket, row.stamp))
            .collect(),
    ))
}

/// Records that Redis holds `changed`'s settings, in the coupon's own meta or in each
/// bucket's, where the stamp in force is still the one read with the change (else a new state
/// may lack them: the landers land them there). Returns whether every one is recorded.
pub async fn record_settings_landed(
    conn: &mut AsyncPgConnection,
    changed: &Changed,
) -> QueryResult<bool> {
    let (coupon, version) = (changed.coupon.id.get(), changed.coupon.settings.version);
    let stamp = |stamp: &Option<Stamp>| stamp.as_ref().map(|stamp| stamp.as_str().to_owned());
    match &changed.stamps {
        Stamps::Own(own) => {
            let under_stamp = || {
                coupons::table
                    .filter(coupons::id.eq(coupon))
                    .filter(coupons::redis_stamp.is_not_distinct_from(stamp(own)))
            };
            let raised = diesel::update(under_stamp().filter(coupons::landed_settings.lt(version)))
                .set(coupons::landed_settings.eq(version))
                .execute(conn)
                .await?;
            // Else already recorded at this version or a later one, under the same stamp.
            let found = under_stamp().select(coupons::id).first::<i64>(conn).await;
            Ok(raised == 1 || found.optional()?.is_some())
        }
        Stamps::Buckets(buckets) => {
            let mut all = true;
            for (bucket, own) in buckets {
                let under_stamp = || {
                    coupon_buckets::table
                        .filter(coupon_buckets::coupon_id.eq(coupon))
                        .filter(coupon_buckets::bucket.eq(bucket.index() as i16))
                        .filter(coupon_buckets::redis_stamp.is_not_distinct_from(stamp(own)))
                };
                let raised = diesel::update(
                    under_stamp().filter(coupon_buckets::landed_settings.lt(version)),
                )
                .set(coupon_buckets::landed_settings.eq(version))
                .execute(conn)
                .await?;
                let found = under_stamp()
                    .select(coupon_buckets::coupon_id)
                    .first::<i64>(conn)
                    .await;
                all &= raised == 1 || found.optional()?.is_some();
            }
            Ok(all)
        }
    }
}

/// Every coupon whose settings are not known to be in Redis (in its own meta, or in one of
/// its buckets'), each with the stamps in force. A bucketed coupon's are found by a scan of
/// the buckets, a few rows per bucketed coupon, once a second.
pub async fn unlanded_settings(conn: &mut AsyncPgConnection) -> QueryResult<Vec<Changed>> {
    let mut ids: Vec<i64> = coupons::table
        .filter(coupons::landed_settings.lt(coupons::settings_version))
        .filter(coupons::buckets.eq(1))
        .select(coupons::id)
        .load(conn)
        .await?;
    ids.extend(
        coupon_buckets::table
            .inner_join(coupons::table)
            .filter(coupon_buckets::landed_settings.lt(coupons::settings_version))
            .select(coupon_buckets::coupon_id)
            .distinct()
            .load::<i64>(conn)
            .await?,
    );
    ids.sort_unstable();
    let mut changed = Vec::with_capacity(ids.len());
    for id in ids {
        let Ok(id) = CouponId::new(id) else { continue };
        if let Some(coupon) = find_coupon(conn, id).await? {
            let stamps = stamps_in_force(conn, &coupon).await?;
            changed.push(Changed { coupon, stamps });
        }
    }
    Ok(changed)
}
