//! A coupon's quantity raised during its sale: PostgreSQL's side (`crate::buckets::mover`
//! lands it in a bucketed coupon's buckets, `crate::redis::admission` in a coupon's own
//! state; the protocol is `tests/bucket_model.rs`'s raise).
//!
//! Invariant: Redis never holds more than PostgreSQL's quantity, so the workers' quantity
//! guard never refuses what Redis admitted. PostgreSQL is raised first, the quantity and
//! every bucket's share in one transaction; Redis after. The raise stays recorded as not
//! landed (`landed_quantity` below `total_quantity`) until Redis holds it, so that a raiser
//! that dies in between leaves work any API's lander finds, not a raise Redis never sees.

use diesel::prelude::*;
use diesel::result::Error;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::buckets::BucketCount;
use crate::db::schema::{coupon_buckets, coupons};
use crate::domain::CouponId;

/// Why a raise is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaiseRefused {
    #[error("coupon {0} does not exist")]
    NotFound(i64),
    /// Lowering could take away units Redis has admitted and not yet persisted.
    #[error("the quantity can only be raised: it is {current} now")]
    Below { current: i64 },
}

/// A coupon's quantity as it stands after a raise (or a repeated one), and what Redis must
/// hold for it: each bucket's share, in order (none for a coupon of one bucket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raised {
    pub coupon: CouponId,
    pub quantity: i64,
    pub shares: Vec<i64>,
    /// Each bucket's share of the quantity last landed, as its creation split it: what a
    /// bucket loaded before Redis recorded shares holds. No raise has landed in such a
    /// bucket (a grow records its share), so the quantity last landed is the one it was
    /// created with, split as a creation splits it.
    pub landed_shares: Vec<i64>,
}

/// Raises `coupon`'s quantity to `quantity`, the new units split over its buckets as a
/// creation splits its stock. A quantity equal to the current one changes nothing and
/// answers as a raise would, so a raiser that failed before Redis held it can ask again.
pub async fn raise_quantity(
    conn: &mut AsyncPgConnection,
    coupon: CouponId,
    quantity: i64,
) -> QueryResult<Result<Raised, RaiseRefused>> {
    conn.transaction(async |conn| {
        let row: Option<(i64, Option<i64>, i16)> = coupons::table
            .find(coupon.get())
            .select((
                coupons::total_quantity,
                coupons::landed_quantity,
                coupons::buckets,
            ))
            .for_update()
            .first(conn)
            .await
            .optional()?;
        let Some((current, landed, buckets)) = row else {
            return Ok(Err(RaiseRefused::NotFound(coupon.get())));
        };
        if quantity < current {
            return Ok(Err(RaiseRefused::Below { current }));
        }
        let count = BucketCount::new(buckets.into())
            .map_err(|e| Error::DeserializationError(Box::new(e)))?;
        if quantity > current {
            diesel::update(coupons::table.find(coupon.get()))
                .set((
                    coupons::total_quantity.eq(quantity),
                    coupons::landed_quantity.eq(landed.unwrap_or(current)),
                ))
                .execute(conn)
                .await?;
            if count != BucketCount::ONE {
                for (bucket, more) in count.all().zip(count.shares(quantity - current)) {
                    diesel::update(
                        coupon_buckets::table.find((coupon.get(), bucket.index() as i16)),
                    )
                    .set(coupon_buckets::share.eq(coupon_buckets::share + more))
                    .execute(conn)
                    .await?;
                }
            }
        }
        Ok(Ok(Raised {
            coupon,
            quantity,
            shares: shares(conn, coupon, buckets).await?,
            landed_shares: landed_shares(count, landed.unwrap_or(current)),
        }))
    })
    .await
}

/// What Redis must hold for `coupon` now, as [`raise_quantity`] answers it; None if the
/// coupon does not exist.
pub async fn raised(conn: &mut AsyncPgConnection, coupon: CouponId) -> QueryResult<Option<Raised>> {
    let row: Option<(i64, Option<i64>, i16)> = coupons::table
        .find(coupon.get())
        .select((
            coupons::total_quantity,
            coupons::landed_quantity,
            coupons::buckets,
        ))
        .first(conn)
        .await
        .optional()?;
    let Some((quantity, landed, buckets)) = row else {
        return Ok(None);
    };
    let count =
        BucketCount::new(buckets.into()).map_err(|e| Error::DeserializationError(Box::new(e)))?;
    Ok(Some(Raised {
        coupon,
        quantity,
        shares: shares(conn, coupon, buckets).await?,
        landed_shares: landed_shares(count, landed.unwrap_or(quantity)),
    }))
}

/// `landed` split over `count` buckets as a creation splits it; none for one bucket.
fn landed_shares(count: BucketCount, landed: i64) -> Vec<i64> {
    if count == BucketCount::ONE {
        return Vec::new();
    }
    count.shares(landed)
}

/// Each bucket's share, in order; none for a coupon of one bucket (`buckets` 1).
async fn shares(
    conn: &mut AsyncPgConnection,
    coupon: CouponId,
    buckets: i16,
) -> QueryResult<Vec<i64>> {
    if buckets == 1 {
        return Ok(Vec::new());
    }
    coupon_buckets::table
        .filter(coupon_buckets::coupon_id.eq(coupon.get()))
        .order(coupon_buckets::bucket)
        .select(coupon_buckets::share)
        .load(conn)
        .await
}

/// The coupons with a raise Redis is not known to hold yet, oldest first.
pub async fn unlanded_raises(conn: &mut AsyncPgConnection) -> QueryResult<Vec<CouponId>> {
    let ids: Vec<i64> = coupons::table
        .filter(coupons::landed_quantity.lt(coupons::total_quantity.nullable()))
        .select(coupons::id)
        .order(coupons::id)
        .load(conn)
        .await?;
    ids.into_iter()
        .map(|id| CouponId::new(id).map_err(|e| Error::DeserializationError(Box::new(e))))
        .collect()
}

/// Records that Redis holds `quantity` for `coupon` (every bucket grown to its shares): a
/// later raise, or a lander that landed more, is not undone.
pub async fn record_landed(
    conn: &mut AsyncPgConnection,
    coupon: CouponId,
    quantity: i64,
) -> QueryResult<()> {
    diesel::update(
        coupons::table
            .find(coupon.get())
            .filter(coupons::landed_quantity.lt(quantity)),
    )
    .set(coupons::landed_quantity.eq(quantity))
    .execute(conn)
    .await?;
    Ok(())
}
