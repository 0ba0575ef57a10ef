//! Which Redis state holds each coupon: its own keys, or, for a coupon created in buckets
//! (`coupon_core::buckets`), one bucket's per user. Every step that touches a coupon's slots
//! (admission, the ledger's steps, the reconciler, the reads) asks here first: a coupon in
//! buckets admitted in its own keys would decide "one per user" in the wrong bucket.
//!
//! Learnt from PostgreSQL once per coupon and process: a coupon's bucket count and tags never
//! change. A bucketed coupon's stamps are forgotten with the coupons' when the verification
//! count moves (a bucket's rebuild moves it), and read again at its next request.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use coupon_core::buckets::BucketCount;
use coupon_core::buckets::mover::{MoveError, Place, Places};
use coupon_core::buckets::open::open_buckets;
use coupon_core::db::buckets::{BucketRow, coupon_buckets, insert_bucketed_coupon};
use coupon_core::db::coupons::{NewCoupon, find_coupon};
use coupon_core::db::pool::PgPool;
use coupon_core::domain::{Coupon, CouponId, QueueKind};
use coupon_core::redis::buckets::slot_owners;
use coupon_core::redis::connection::RedisConnection;
use coupon_core::redis::epoch::Stamp;
use coupon_core::redis::keys::CouponKeys;
use coupon_core::redis::ledger::LedgerAt;
use coupon_core::redis::registry::Registry;

use crate::error::ApiError;

/// Where one coupon's state is kept.
#[derive(Debug, Clone)]
pub enum Layout {
    /// In its own keys, as every coupon of one bucket.
    Single,
    /// In buckets, each with the stamp in force this process knows.
    Buckets(Arc<Places>),
}

impl Layout {
    /// Every place `coupon`'s pending entries may be kept.
    pub fn ledgers(&self, prefix: &str, coupon: CouponId) -> Vec<LedgerAt> {
        match self {
            Self::Single => vec![LedgerAt::Coupon(CouponKeys::new(prefix, coupon))],
            Self::Buckets(places) => places
                .places
                .iter()
                .map(|place| LedgerAt::Bucket(place.keys.clone()))
                .collect(),
        }
    }
}

/// The layouts learnt, and how many times the bucketed ones were forgotten: stamps read
/// from PostgreSQL before a forget must not be kept after it (the one a rebuild replaced
/// would be passed to a node a failback made primary again, on its old state).
#[derive(Default)]
struct Known {
    layouts: HashMap<CouponId, Layout>,
    forgotten: u64,
}

pub struct Layouts {
    prefix: String,
    /// Where a bucketed coupon is registered before its buckets open, as a coupon is before
    /// its meta is loaded: a coupon that admits is always one the reconciler looks at.
    registry: Registry,
    pool: PgPool,
    redis: RedisConnection,
    known: RwLock<Known>,
    /// Names this process in the leases its movers take.
    owner: String,
}

impl Layouts {
    pub fn new(prefix: String, pool: PgPool, redis: RedisConnection, queue: QueueKind) -> Self {
        Self {
            registry: Registry::new(prefix.clone(), queue),
            prefix,
            pool,
            redis,
            known: RwLock::default(),
            owner: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// This process's name in the leases its movers take.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn redis(&self) -> &RedisConnection {
        &self.redis
    }

    /// The coupon's layout; None if PostgreSQL has no such coupon (not remembered: it may
    /// be created later).
    pub async fn get(&self, coupon: CouponId) -> Result<Option<Layout>, ApiError> {
        if let Some(layout) = self.cached(coupon) {
            return Ok(Some(layout));
        }
        let Some(record) = ({
            let mut db = self.pool.get().await?;
            find_coupon(&mut db, coupon).await?
        }) else {
            return Ok(None);
        };
        self.learn(&record).await.map(Some)
    }

    /// The coupon's layout if this process holds it, without asking PostgreSQL.
    pub fn cached(&self, coupon: CouponId) -> Option<Layout> {
        self.read().layouts.get(&coupon).cloned()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Known> {
        self.known
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Known> {
        self.known
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads `coupon`'s buckets (loading any that was never loaded: its creation could
    /// not reach Redis) and remembers its layout, unless the stamps were forgotten while
    /// they were read.
    async fn learn(&self, coupon: &Coupon) -> Result<Layout, ApiError> {
        if coupon.buckets == BucketCount::ONE {
            self.write().layouts.insert(coupon.id, Layout::Single);
            return Ok(Layout::Single);
        }
        let forgotten = self.read().forgotten;
        let mut db = self.pool.get().await?;
        let rows = coupon_buckets(&mut db, coupon).await?;
        let place = |row: &BucketRow, stamp: Stamp| Place {
            bucket: row.bucket,
            keys: CouponKeys::of_bucket(&self.prefix, &row.tag),
            stamp,
        };
        let stamped = rows
            .iter()
            .map(|row| row.stamp.clone().map(|stamp| place(row, stamp)))
            .collect::<Option<Vec<_>>>();
        let places = match stamped {
            Some(places) => Places {
                coupon: coupon.id,
                count: coupon.buckets,
                places,
            },
            None => {
                let mut redis = self.redis.clone();
                self.registry.register(&mut redis, coupon.id).await?;
                match open_buckets(&mut redis, &mut db, &self.prefix, coupon).await {
                    Ok(places) => places,
                    // A bucket loaded whose stamp PostgreSQL lacks (its creator died between
                    // the two, or lost PostgreSQL): known by no stamp, every step there is
                    // refused, and its first request has it rebuilt.
                    // Read again: the stamps this open (or a rebuild meanwhile) recorded count.
                    Err(MoveError::Unverified(_)) => Places {
                        coupon: coupon.id,
                        count: coupon.buckets,
                        places: coupon_buckets(&mut db, coupon)
                            .await?
                            .iter()
                            .map(|row| {
                                let stamp = row.stamp.clone().unwrap_or_else(Stamp::unknown);
                                place(row, stamp)
                            })
                            .collect(),
                    },
                    Err(err) => return Err(err.into()),
                }
            }
        };
        let layout = Layout::Buckets(Arc::new(places));
        let mut known = self.write();
        if known.forgotten == forgotten {
            known.layouts.insert(coupon.id, layout.clone());
        }
        Ok(layout)
    }

    /// Stores a new coupon with its buckets, their tags chosen from the cluster's slot map
    /// (on one node, any tags do), and loads them into Redis. The coupon exists once
    /// stored: a load that fails is done by the first request instead.
    pub async fn create_bucketed(&self, new: &NewCoupon) -> Result<Coupon, ApiError> {
        let mut redis = self.redis.clone();
        let owners = if redis.is_cluster() {
            Some(slot_owners(&mut redis).await?)
        } else {
            None
        };
        let coupon = {
            let mut db = self.pool.get().await?;
            insert_bucketed_coupon(&mut db, new, owners.as_ref()).await?
        };
        if let Err(err) = self.learn(&coupon).await {
            tracing::warn!(coupon = %coupon.id, error = %err, "could not load the buckets into Redis");
        }
        Ok(coupon)
    }

    /// Forgets one coupon's layout: its buckets' stamps are read again at its next request.
    pub fn forget(&self, coupon: CouponId) {
        self.write().layouts.remove(&coupon);
    }

    /// Forgets every bucketed coupon's stamps: the verification count moved.
    pub fn forget_stamps(&self) {
        let mut known = self.write();
        known
            .layouts
            .retain(|_, layout| matches!(layout, Layout::Single));
        known.forgotten += 1;
    }
}
