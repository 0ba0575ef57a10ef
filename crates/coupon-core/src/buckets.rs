//! A coupon's stock split into buckets (issue 24): how many, where each one's keys live, how
//! much each starts with, and which one is a user's home.
//!
//! Why buckets: one coupon's admission runs on one Redis core, since all its keys share a
//! hash tag. Split into K buckets, each with a hash tag of its own, a hot coupon's requests
//! spread over K shards of a Redis Cluster. A user's home bucket is a fixed hash of the user
//! id, so "one per user" is still decided in one place, by one script.
//!
//! Moving stock between the buckets, and the sold-out check, are `mover`'s; a new coupon's
//! buckets' first load is `open`'s.
//!
//! Everything else here is pure and decided once, at the coupon's creation, then kept in
//! PostgreSQL (`crate::db::buckets`): every process builds the same keys from it, and a
//! Redis loss cannot lose it. Bucket 0's tag is the coupon id, so that a coupon of one bucket
//! has exactly the keys it had before buckets existed.

pub mod mover;
pub mod open;

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::domain::{CouponId, UserId};

/// Redis Cluster's number of hash slots.
const SLOTS: u16 = 16_384;

/// Why a number of buckets is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidBuckets {
    #[error("buckets must be between 1 and {max}", max = BucketCount::MAX)]
    OutOfRange,
    /// Each bucket starts with at least one unit: an empty bucket only adds transfers.
    #[error("buckets must not exceed the quantity ({quantity})")]
    MoreThanQuantity { quantity: i64 },
}

/// How many buckets a coupon's stock is split into: 1 (one shard, as before buckets) to
/// [`BucketCount::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct BucketCount(u16);

impl BucketCount {
    /// A bucket per primary of a large cluster is already more than one coupon's sale
    /// needs; a sold-out check reads every bucket twice, so it costs K round trips.
    pub const MAX: u16 = 16;
    pub const ONE: BucketCount = BucketCount(1);

    pub fn new(count: i64) -> Result<Self, InvalidBuckets> {
        u16::try_from(count)
            .ok()
            .filter(|count| (1..=Self::MAX).contains(count))
            .map(Self)
            .ok_or(InvalidBuckets::OutOfRange)
    }

    /// The same, for a coupon of `quantity` units: every bucket starts with one at least.
    pub fn for_quantity(count: i64, quantity: i64) -> Result<Self, InvalidBuckets> {
        let count = Self::new(count)?;
        if i64::from(count.0) > quantity {
            return Err(InvalidBuckets::MoreThanQuantity { quantity });
        }
        Ok(count)
    }

    pub fn get(self) -> u16 {
        self.0
    }

    /// Every bucket of a coupon, in order.
    pub fn all(self) -> impl Iterator<Item = Bucket> {
        (0..self.0).map(Bucket)
    }

    /// A user's home bucket: where their one admission is decided. A fixed hash of the user
    /// id (SplitMix64's finaliser, so consecutive ids spread evenly), the same in every
    /// process and every version: changing it would move users away from their slots.
    pub fn home(self, user: UserId) -> Bucket {
        let mut x = user.get() as u64;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        Bucket((x % u64::from(self.0)) as u16)
    }

    /// Each bucket's share of `quantity` at creation: as even as can be, the first buckets
    /// taking the remainder's units.
    pub fn shares(self, quantity: i64) -> Vec<i64> {
        let count = i64::from(self.0);
        self.all()
            .map(|bucket| quantity / count + i64::from(i64::from(bucket.0) < quantity % count))
            .collect()
    }
}

impl<'de> Deserialize<'de> for BucketCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let count = i64::deserialize(d)
            .map_err(|_| serde::de::Error::custom(InvalidBuckets::OutOfRange))?;
        Self::new(count).map_err(serde::de::Error::custom)
    }
}

/// One bucket of a coupon, by its index (0 to K - 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Bucket(u16);

impl Bucket {
    pub const FIRST: Bucket = Bucket(0);

    /// Bucket `index` of a coupon of `count` buckets, if there is one.
    pub fn of(count: BucketCount, index: i64) -> Option<Self> {
        u16::try_from(index)
            .ok()
            .filter(|index| *index < count.0)
            .map(Self)
    }

    pub fn index(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Which primary serves each hash slot of a Redis Cluster, as `CLUSTER SLOTS` lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotOwners {
    /// Ranges of slots, both ends included, and the id of the primary serving them.
    ranges: Vec<(u16, u16, String)>,
}

impl SlotOwners {
    pub fn new(ranges: Vec<(u16, u16, String)>) -> Self {
        Self { ranges }
    }

    fn owner(&self, slot: u16) -> Option<&str> {
        self.ranges
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, owner)| owner.as_str())
    }

    fn primaries(&self) -> usize {
        let mut owners: Vec<&str> = self.ranges.iter().map(|(_, _, id)| id.as_str()).collect();
        owners.sort_unstable();
        owners.dedup();
        owners.len()
    }
}

/// The hash slot of a key whose hash tag is `tag` (CRC16/XMODEM modulo 16,384, Redis
/// Cluster's rule; the `crc16` crate is the one redis-rs routes with).
pub fn tag_slot(tag: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) % SLOTS
}

/// Chooses each bucket's hash tag: bucket 0's is the coupon id (a coupon of one bucket keeps
/// its keys); bucket b's is `<coupon id>.<n>`, n counting up from b until its slot is served
/// by a primary no earlier bucket is on (Redis's CRC16 puts three naive tags on one primary
/// more often than not). With more buckets than primaries, or on one node (`owners` None),
/// tags are `<coupon id>.<b>`, the buckets shared out as evenly as the primaries allow.
pub fn choose_tags(
    coupon: CouponId,
    count: BucketCount,
    owners: Option<&SlotOwners>,
) -> Vec<String> {
    let mut tags = vec![coupon.to_string()];
    let Some(owners) = owners.filter(|owners| owners.primaries() > 1) else {
        tags.extend((1..count.0).map(|b| format!("{coupon}.{b}")));
        return tags;
    };
    // How many buckets each primary carries so far.
    let mut used: HashMap<&str, usize> = HashMap::new();
    if let Some(owner) = owners.owner(tag_slot(&tags[0])) {
        used.insert(owner, 1);
    }
    for b in 1..count.0 {
        // The least a primary already carries: 0 while some primary has no bucket yet.
        let least = if used.len() < owners.primaries() {
            0
        } else {
            used.values().copied().min().unwrap_or(0)
        };
        // Some n within a few dozen lands on any primary of a sane cluster.
        let chosen = (u32::from(b)..u32::from(b) + 100_000)
            .map(|n| format!("{coupon}.{n}"))
            .filter(|tag| !tags.contains(tag))
            .find_map(|tag| {
                let owner = owners.owner(tag_slot(&tag))?;
                (used.get(owner).copied().unwrap_or(0) <= least).then_some((tag, owner))
            });
        match chosen {
            Some((tag, owner)) => {
                *used.entry(owner).or_default() += 1;
                tags.push(tag);
            }
            // The slot map is odd (slots unassigned): a tag no bucket has.
            None => tags.push(format!("{coupon}.x{b}")),
        }
    }
    tags
}

#[cfg(test)]
mod tests {
    use redis::cluster_routing::Slot;

    use super::*;

    fn coupon(id: i64) -> CouponId {
        CouponId::new(id).unwrap()
    }

    #[test]
    fn the_slot_is_redis_clusters() {
        for tag in ["42", "42.1", "7.12", "user:9"] {
            let key = format!("coupon:{{{tag}}}:meta");
            assert_eq!(Slot::new(tag_slot(tag)), Some(Slot::for_key(&key)), "{tag}");
        }
    }

    #[test]
    fn counts_outside_one_to_sixteen_or_past_the_quantity_are_refused() {
        assert_eq!(BucketCount::new(0), Err(InvalidBuckets::OutOfRange));
        assert_eq!(BucketCount::new(17), Err(InvalidBuckets::OutOfRange));
        assert_eq!(BucketCount::new(-1), Err(InvalidBuckets::OutOfRange));
        assert_eq!(
            BucketCount::for_quantity(3, 2),
            Err(InvalidBuckets::MoreThanQuantity { quantity: 2 })
        );
        assert_eq!(BucketCount::for_quantity(3, 3).map(BucketCount::get), Ok(3));
        assert!(serde_json::from_str::<BucketCount>("2.5").is_err());
        assert!(serde_json::from_str::<BucketCount>("\"2\"").is_err());
    }

    #[test]
    fn shares_add_up_and_differ_by_one_at_most() {
        let three = BucketCount::new(3).unwrap();
        assert_eq!(three.shares(500), vec![167, 167, 166]);
        assert_eq!(three.shares(3), vec![1, 1, 1]);
        assert_eq!(BucketCount::ONE.shares(500), vec![500]);
    }

    #[test]
    fn homes_are_fixed_and_spread_evenly() {
        let three = BucketCount::new(3).unwrap();
        let mut counts = [0; 3];
        for user in 1..=30_000 {
            counts[three.home(UserId::new(user).unwrap()).index() as usize] += 1;
        }
        assert!(
            counts.iter().all(|c| (9_500..10_500).contains(c)),
            "{counts:?}"
        );
        // Fixed: a change would move users away from the bucket holding their slot.
        assert_eq!(three.home(UserId::new(1).unwrap()).index(), 1);
        assert_eq!(
            BucketCount::ONE.home(UserId::new(12345).unwrap()),
            Bucket::FIRST
        );
    }

    #[test]
    fn one_bucket_keeps_the_coupons_own_tag() {
        assert_eq!(choose_tags(coupon(42), BucketCount::ONE, None), vec!["42"]);
        let three = BucketCount::new(3).unwrap();
        assert_eq!(
            choose_tags(coupon(42), three, None),
            vec!["42", "42.1", "42.2"]
        );
    }

    /// The local test cluster's layout: three primaries, the slots split evenly.
    fn three_primaries() -> SlotOwners {
        SlotOwners::new(vec![
            (0, 5460, "a".into()),
            (5461, 10922, "b".into()),
            (10923, 16383, "c".into()),
        ])
    }

    #[test]
    fn buckets_land_on_different_primaries_for_any_coupon() {
        let owners = three_primaries();
        let three = BucketCount::new(3).unwrap();
        for id in 1..=2_000 {
            let tags = choose_tags(coupon(id), three, Some(&owners));
            let mut on: Vec<&str> = tags
                .iter()
                .map(|tag| owners.owner(tag_slot(tag)).unwrap())
                .collect();
            on.sort_unstable();
            on.dedup();
            assert_eq!(on.len(), 3, "coupon {id}: {tags:?}");
            assert_eq!(tags[0], id.to_string());
        }
        // Six buckets on three primaries: two each.
        let six = BucketCount::new(6).unwrap();
        let tags = choose_tags(coupon(9), six, Some(&owners));
        let mut per: HashMap<&str, usize> = HashMap::new();
        for tag in &tags {
            *per.entry(owners.owner(tag_slot(tag)).unwrap()).or_default() += 1;
        }
        assert!(per.values().all(|n| *n == 2), "{per:?}");
    }
}
