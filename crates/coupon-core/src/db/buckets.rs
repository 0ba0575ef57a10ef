//! A bucketed coupon's layout and its journal of transfers (`crate::buckets`,
//! `crate::redis::buckets`): what PostgreSQL keeps so that every process builds the same
//! keys, each bucket's Redis state has a stamp in force, and a bucket's rebuild knows its
//! stock.

use diesel::prelude::*;
use diesel::result::Error;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::buckets::{Bucket, BucketCount, SlotOwners, choose_tags};
use crate::db::coupons::{NewCoupon, Verification, count_verification, insert_coupon};
use crate::db::schema::{bucket_transfers, coupon_buckets};
use crate::domain::{Coupon, CouponId};
use crate::redis::buckets::TransferId;
use crate::redis::epoch::Stamp;

/// One bucket of a coupon as PostgreSQL keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketRow {
    pub bucket: Bucket,
    /// The hash tag of its keys (`crate::redis::keys::CouponKeys::of_bucket`).
    pub tag: String,
    /// Its share of the quantity: its stock at creation, plus what raises added to it.
    pub share: i64,
    /// Its Redis state's stamp in force, if it was ever verified.
    pub stamp: Option<Stamp>,
}

/// A transfer as the journal holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Journalled {
    pub id: TransferId,
    pub from: Bucket,
    pub to: Bucket,
    pub units: i64,
}

fn corrupt(what: String) -> Error {
    Error::DeserializationError(what.into())
}

/// Stores a new coupon and, for more than one bucket, its buckets: each one's tag (chosen
/// from `owners`, the cluster's slot map, so the buckets land on different primaries) and its
/// share of the stock. One transaction: a coupon is never seen without its buckets.
pub async fn insert_bucketed_coupon(
    conn: &mut AsyncPgConnection,
    new: &NewCoupon,
    owners: Option<&SlotOwners>,
) -> QueryResult<Coupon> {
    conn.transaction(async |conn| {
        let coupon = insert_coupon(conn, new).await?;
        if coupon.buckets != BucketCount::ONE {
            let tags = choose_tags(coupon.id, coupon.buckets, owners);
            let shares = coupon.buckets.shares(coupon.total_quantity);
            let rows: Vec<_> = coupon
                .buckets
                .all()
                .zip(tags.iter().zip(&shares))
                .map(|(bucket, (tag, share))| {
                    (
                        coupon_buckets::coupon_id.eq(coupon.id.get()),
                        coupon_buckets::bucket.eq(bucket.index() as i16),
                        coupon_buckets::tag.eq(tag),
                        coupon_buckets::share.eq(share),
                    )
                })
                .collect();
            diesel::insert_into(coupon_buckets::table)
                .values(&rows)
                .execute(conn)
                .await?;
        }
        Ok(coupon)
    })
    .await
}

/// A coupon's buckets, in order (an error unless every one is stored); empty for a coupon
/// of one bucket.
pub async fn coupon_buckets(
    conn: &mut AsyncPgConnection,
    coupon: &Coupon,
) -> QueryResult<Vec<BucketRow>> {
    let rows: Vec<(i16, String, i64, Option<String>)> = coupon_buckets::table
        .filter(coupon_buckets::coupon_id.eq(coupon.id.get()))
        .select((
            coupon_buckets::bucket,
            coupon_buckets::tag,
            coupon_buckets::share,
            coupon_buckets::redis_stamp,
        ))
        .order(coupon_buckets::bucket)
        .load(conn)
        .await?;
    // Every bucket or none: a coupon is stored with its buckets in one transaction, and a
    // caller that walks fewer would take a change as landed everywhere, or a user's home
    // as missing.
    let count = usize::from(coupon.buckets.get());
    if coupon.buckets != BucketCount::ONE && rows.len() != count {
        return Err(corrupt(format!(
            "coupon {}: {} bucket rows for {count} buckets",
            coupon.id,
            rows.len()
        )));
    }
    rows.into_iter()
        .map(|(bucket, tag, share, stamp)| {
            Ok(BucketRow {
                bucket: Bucket::of(coupon.buckets, bucket.into())
                    .ok_or_else(|| corrupt(format!("coupon {}: bucket {bucket}", coupon.id)))?,
                tag,
                share,
                stamp: stamp.map(Stamp::new),
            })
        })
        .collect()
}

/// Records `stamp` as the one in force for a bucket's Redis state, as
/// `crate::db::coupons::record_redis_stamp` does for a coupon's: after a creation's first
/// load only where none is recorded yet. Returns whether it is the one in force now.
pub async fn record_bucket_stamp(
    conn: &mut AsyncPgConnection,
    coupon: CouponId,
    bucket: Bucket,
    stamp: &Stamp,
    verified: Verification,
) -> QueryResult<bool> {
    let target = coupon_buckets::table
        .filter(coupon_buckets::coupon_id.eq(coupon.get()))
        .filter(coupon_buckets::bucket.eq(bucket.index() as i16));
    // As a coupon's new stamp does: the state it names may be loaded from a read older
    // than a change of the settings recorded as landed, so the landers land it again
    // (`crate::db::settings`).
    let set = (
        coupon_buckets::redis_stamp.eq(stamp.as_str()),
        coupon_buckets::landed_settings.eq(0),
    );
    let updated = match verified {
        // A rebuild moves the count every API watches, as a coupon's does: an API that holds
        // the bucket's old stamp forgets it (a failback to the old node must not admit).
        Verification::Rebuilt => {
            let updated = diesel::update(target).set(set).execute(conn).await?;
            count_verification(conn).await?;
            updated
        }
        Verification::Created => {
            diesel::update(target.filter(coupon_buckets::redis_stamp.is_null()))
                .set(set)
                .execute(conn)
                .await?
        }
    };
    Ok(updated == 1)
}

/// The stamp in force of one bucket's Redis state, None if it was never verified (read
/// under the coupon's row lock by a replay: `issuer-api`'s `issuing/failed_events.rs`).
pub async fn bucket_stamp(
    conn: &mut AsyncPgConnection,
    coupon: CouponId,
    bucket: Bucket,
) -> QueryResult<Option<Stamp>> {
    let stamp: Option<String> = coupon_buckets::table
        .filter(coupon_buckets::coupon_id.eq(coupon.get()))
        .filter(coupon_buckets::bucket.eq(bucket.index() as i16))
        .select(coupon_buckets::redis_stamp)
        .first(conn)
        .await?;
    Ok(stamp.map(Stamp::new))
}

/// Journals a transfer, only while the donor's stamp in force is `donor_stamp`, the one its
/// take (or the take-over of its entry) ran under: a donor rebuilt since counts no such
/// take, and the transfer never happened. Journalling one already journalled (a mover that
/// took another's entry over) changes nothing. Returns whether the transfer is journalled and
/// the donor's stamp still the one given, so that the mover goes on to the credit.
pub async fn journal_transfer(
    conn: &mut AsyncPgConnection,
    coupon: CouponId,
    transfer: &Journalled,
    donor_stamp: &Stamp,
) -> QueryResult<bool> {
    // One statement: the stamp read and the row written in one snapshot, so no rebuild
    // of the donor can come between them.
    let journalled: Option<i32> = diesel::sql_query(
        "WITH donor AS (
             SELECT 1 FROM coupon_buckets
             WHERE coupon_id = $1 AND bucket = $3 AND redis_stamp = $6
             FOR SHARE
         ), written AS (
             INSERT INTO bucket_transfers (coupon_id, transfer_id, from_bucket, to_bucket, units)
             SELECT $1, $2, $3, $4, $5 FROM donor
             ON CONFLICT (coupon_id, transfer_id) DO NOTHING
         )
         SELECT 1 AS found FROM donor",
    )
    .bind::<diesel::sql_types::BigInt, _>(coupon.get())
    .bind::<diesel::sql_types::Uuid, _>(transfer.id.0)
    .bind::<diesel::sql_types::SmallInt, _>(transfer.from.index() as i16)
    .bind::<diesel::sql_types::SmallInt, _>(transfer.to.index() as i16)
    .bind::<diesel::sql_types::BigInt, _>(transfer.units)
    .bind::<diesel::sql_types::Text, _>(donor_stamp.as_str())
    .get_result::<Found>(conn)
    .await
    .optional()?
    .map(|found| found.found);
    Ok(journalled.is_some())
}

#[derive(QueryableByName)]
struct Found {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    found: i32,
}

/// Every transfer journalled for a coupon, in the order journalled.
pub async fn journal(
    conn: &mut AsyncPgConnection,
    coupon: &Coupon,
) -> QueryResult<Vec<Journalled>> {
    let rows: Vec<(uuid::Uuid, i16, i16, i64)> = bucket_transfers::table
        .filter(bucket_transfers::coupon_id.eq(coupon.id.get()))
        .select((
            bucket_transfers::transfer_id,
            bucket_transfers::from_bucket,
            bucket_transfers::to_bucket,
            bucket_transfers::units,
        ))
        .order(bucket_transfers::seq)
        .load(conn)
        .await?;
    let bucket = |index: i16| {
        Bucket::of(coupon.buckets, index.into())
            .ok_or_else(|| corrupt(format!("coupon {}: bucket {index}", coupon.id)))
    };
    rows.into_iter()
        .map(|(id, from, to, units)| {
            Ok(Journalled {
                id: TransferId(id),
                from: bucket(from)?,
                to: bucket(to)?,
                units,
            })
        })
        .collect()
}
