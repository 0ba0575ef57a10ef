//! A new bucketed coupon's first load into Redis: each bucket's state written with its share
//! and stamped as verified there (nothing can have been admitted yet), and each stamp
//! recorded in PostgreSQL as the one in force, as a coupon's creation does for its own state.

use diesel_async::AsyncPgConnection;
use redis::aio::ConnectionLike;

use crate::buckets::mover::{MoveError, Place, Places};
use crate::db::buckets::{coupon_buckets, record_bucket_stamp};
use crate::db::coupons::Verification;
use crate::domain::Coupon;
use crate::redis::buckets::BucketSteps;
use crate::redis::keys::CouponKeys;

/// Loads every bucket of `coupon` under `prefix` and returns them as a mover addresses them.
/// A bucket whose state is there already (another process loaded it first) keeps it, and
/// is returned with the stamp PostgreSQL has in force, if any.
pub async fn open_buckets<C: ConnectionLike + Send + Sync>(
    con: &mut C,
    db: &mut AsyncPgConnection,
    prefix: &str,
    coupon: &Coupon,
) -> Result<Places, MoveError> {
    let mut places = Vec::new();
    for row in coupon_buckets(db, coupon).await? {
        let keys = CouponKeys::of_bucket(prefix, &row.tag);
        let loaded = BucketSteps::load(con, &keys, coupon, row.share, coupon.buckets).await?;
        let stamp = match loaded {
            // Not in force if a rebuild recorded one first: this load then wrote over a lost
            // state, and the bucket waits for its rebuild.
            Some(stamp) => {
                let recorded =
                    record_bucket_stamp(db, coupon.id, row.bucket, &stamp, Verification::Created)
                        .await?;
                if !recorded {
                    return Err(MoveError::Unverified(row.bucket));
                }
                stamp
            }
            None => row.stamp.ok_or(MoveError::Unverified(row.bucket))?,
        };
        places.push(Place {
            bucket: row.bucket,
            keys,
            stamp,
        });
    }
    Ok(Places {
        coupon: coupon.id,
        count: coupon.buckets,
        places,
    })
}
