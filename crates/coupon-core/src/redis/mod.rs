//! Everything that speaks to Redis: the key layout (`keys`), the connection that follows
//! the primary (`connection`) and how the settings build it (`connect`), the function
//! library and scripts loaded in one place (`library`, `scripts/`), and the protocols built
//! on them: admission, the epoch stamp, Kafka mode's write-ahead ledger, the registry of
//! coupons the workers serve, a bucketed coupon's transfers and sold-out check (`buckets`),
//! and the replicas a write must reach before it counts.

pub mod admission;
pub mod buckets;
pub mod connect;
pub mod connection;
pub mod epoch;
pub mod keys;
pub mod ledger;
pub mod library;
pub mod registry;
pub mod replicas;
