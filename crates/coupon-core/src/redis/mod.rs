//! Everything that speaks to Redis: the key layout (`keys`), the connection that follows
//! the primary (`connection`), the function library and scripts loaded in one place
//! (`library`, `scripts/`), and the protocols built on them: admission, the epoch stamp,
//! Kafka mode's write-ahead ledger, and the registry of coupons the workers serve.

pub mod admission;
pub mod connection;
pub mod epoch;
#[cfg(feature = "test-support")]
pub mod intercept;
pub mod keys;
pub mod ledger;
pub mod library;
pub mod registry;
