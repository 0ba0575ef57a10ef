//! The reads the HTTP contract makes beside issuing: a coupon, a user's standing with it,
//! a user's coupons.
//!
//! A coupon's read is public sale information anyone may ask for, as often as they like:
//! each instance answers it from memory for a short while (ISSUER_COUPON_READ_CACHE_MS),
//! so a flood of reads costs PostgreSQL and Redis one read per coupon and while, not one
//! per request (`CouponReads`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use coupon_core::db::coupons::{find_coupon, find_issue, recent_coupons, user_coupons};
use coupon_core::db::failed_events;
use coupon_core::domain::{Coupon, CouponId, UserId};

use super::Issuer;
use super::buckets::BucketStock;
use crate::error::ApiError;
use crate::layouts::Layout;

/// Where a user stands with a coupon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holding {
    /// The row is in PostgreSQL.
    Persisted(DateTime<Utc>),
    /// Admitted, but the database set the event aside for good, for this reason (the
    /// quantity guard's OVER_QUANTITY, say): no row will come without an operator.
    Refused(String),
    /// Admitted; the row is on its way.
    Admitted,
    None,
}

/// Most coupons whose reads are kept; past it, ids that do not exist are forgotten first
/// (reads of made-up ids cost memory up to here, never more).
const CACHED_COUPONS_MAX: usize = 10_000;
/// A read kept past its time is still answered while one request reads it again, for up to
/// this many times the time: long enough for a read, short enough that a refresher that
/// died is replaced.
const STALE_WHILE_READING: u32 = 3;

/// One coupon's read, or None (it does not exist).
type CouponRead = Option<CouponState>;

/// A coupon as PostgreSQL holds it, and how many slots admission has taken; for a coupon
/// in buckets, each bucket's stock too.
#[derive(Debug, Clone)]
pub struct CouponState {
    pub coupon: Coupon,
    pub admitted: i64,
    pub buckets: Vec<BucketStock>,
}

struct Kept {
    at: Instant,
    read: CouponRead,
    /// Since when a request is reading it again: the others answer this one meanwhile,
    /// until that reading is [`STALE_WHILE_READING`] times the keeping time old.
    reading: Option<Instant>,
}

/// What the memory holds for a coupon, for one request.
enum Lookup {
    /// Kept and fresh, or being read again by another request: answer it.
    Answer(CouponRead),
    /// Read it (this request was chosen to, or nothing usable is kept), then keep it.
    Read,
}

/// Coupon reads kept for `ttl`. When one goes stale, one request reads it again while the
/// others keep answering the stale one, so a flood costs one read per coupon and `ttl`
/// (not one per request waiting at the moment it expires).
#[derive(Default)]
pub struct CouponReads {
    ttl: Duration,
    kept: Mutex<HashMap<CouponId, Kept>>,
}

impl CouponReads {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            kept: Mutex::default(),
        }
    }

    fn lookup(&self, id: CouponId) -> Lookup {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let Some(held) = kept.get_mut(&id) else {
            return Lookup::Read;
        };
        let reading_for_a_while = held
            .reading
            .is_some_and(|since| since.elapsed() < self.ttl * STALE_WHILE_READING);
        if held.at.elapsed() < self.ttl || reading_for_a_while {
            return Lookup::Answer(held.read.clone());
        }
        // The first to find it stale, or the one after a reading that never came back.
        held.reading = Some(Instant::now());
        Lookup::Read
    }

    /// Drops a kept read: the coupon changed (its quantity was raised).
    pub fn forget(&self, id: CouponId) {
        self.kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    fn keep(&self, id: CouponId, read: &Result<CouponRead, ApiError>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(read) = read else {
            // Another request tries next.
            if let Some(held) = kept.get_mut(&id) {
                held.reading = None;
            }
            return;
        };
        if kept.len() >= CACHED_COUPONS_MAX {
            // Made-up ids first (a flood of them must not push out a coupon on sale), then
            // what is stale, then everything.
            kept.retain(|_, held| held.read.is_some());
            if kept.len() >= CACHED_COUPONS_MAX {
                kept.retain(|_, held| held.at.elapsed() < self.ttl);
            }
            if kept.len() >= CACHED_COUPONS_MAX {
                kept.clear();
            }
        }
        let read = read.clone();
        kept.insert(
            id,
            Kept {
                at: Instant::now(),
                read,
                reading: None,
            },
        );
    }
}

impl Issuer {
    /// The coupon as PostgreSQL holds it, and how many slots admission has taken, as read
    /// at most ISSUER_COUPON_READ_CACHE_MS ago (a few times that while it is read again).
    pub async fn coupon(&self, id: CouponId) -> Result<CouponState, ApiError> {
        let read = match self.coupon_reads.lookup(id) {
            Lookup::Answer(read) => read,
            Lookup::Read => {
                let read = self.read_coupon(id).await;
                self.coupon_reads.keep(id, &read);
                read?
            }
        };
        read.ok_or(ApiError::CouponNotFound(id.get()))
    }

    async fn read_coupon(&self, id: CouponId) -> Result<CouponRead, ApiError> {
        let Some(coupon) = ({
            let mut conn = self.pool.get().await?;
            find_coupon(&mut conn, id).await?
        }) else {
            return Ok(None);
        };
        let mut redis = self.redis.clone();
        let (admitted, buckets) = match self.layouts.get(id).await? {
            Some(Layout::Buckets(places)) => {
                let mut admitted = 0;
                for place in &places.places {
                    admitted += self
                        .scripts
                        .admitted_count_at(&mut redis, &place.keys)
                        .await?;
                }
                (admitted, self.bucket_stock(&places).await?)
            }
            Some(Layout::Single) | None => (
                self.scripts.admitted_count(&mut redis, id).await?,
                Vec::new(),
            ),
        };
        Ok(Some(CouponState {
            coupon,
            admitted,
            buckets,
        }))
    }

    /// The newest `limit` coupons as PostgreSQL holds them, newest first (the console's
    /// list of sales).
    pub async fn recent_coupons(&self, limit: i64) -> Result<Vec<Coupon>, ApiError> {
        let mut conn = self.pool.get().await?;
        Ok(recent_coupons(&mut conn, limit).await?)
    }

    pub async fn holding(&self, coupon: CouponId, user: UserId) -> Result<Holding, ApiError> {
        let (issued_at, refusal) = {
            let mut conn = self.pool.get().await?;
            if find_coupon(&mut conn, coupon).await?.is_none() {
                return Err(ApiError::CouponNotFound(coupon.get()));
            }
            match find_issue(&mut conn, coupon, user).await? {
                Some(at) => (Some(at), None),
                None => (None, failed_events::refusal(&mut conn, coupon, user).await?),
            }
        };
        Ok(match (issued_at, refusal) {
            (Some(at), _) => Holding::Persisted(at),
            (None, Some(reason)) => Holding::Refused(reason),
            (None, None) if self.is_admitted(coupon, user).await? => Holding::Admitted,
            (None, None) => Holding::None,
        })
    }

    /// Whether `user` holds a slot of `coupon` in Redis: in its own state, or in the
    /// user's home bucket.
    async fn is_admitted(&self, coupon: CouponId, user: UserId) -> Result<bool, ApiError> {
        let keys = match self.layouts.get(coupon).await? {
            Some(Layout::Buckets(places)) => places.home(user).keys.clone(),
            Some(Layout::Single) | None => self.scripts.keys(coupon),
        };
        Ok(self
            .scripts
            .is_admitted_at(&mut self.redis.clone(), &keys, user)
            .await?)
    }

    /// The user's coupons with their rows' times.
    pub async fn user_coupons(&self, user: UserId) -> Result<Vec<(i64, DateTime<Utc>)>, ApiError> {
        let mut conn = self.pool.get().await?;
        Ok(user_coupons(&mut conn, user).await?)
    }
}
