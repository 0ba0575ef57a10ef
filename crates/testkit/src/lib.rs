//! What every crate's tests, and issuer-bench's chaos suite and benchmarks, share: nothing
//! here is shipped (`publish = false`).
//!
//! - Infrastructure, real and started through the same `deploy/` scripts as `make up`:
//!   a Redis node (`redis_server`), a replicated Redis under Sentinel
//!   (`sentinel_topology`), a Redis Cluster (`redis_cluster`), a Kafka cluster (`kafka_cluster`), child processes and free
//!   ports (`process`), a TCP proxy that can be cut (`proxy`).
//! - Redis's own accounting of a run, node by node (`redis_stats`).
//! - Identities: users' tokens (`credentials`) and a test CA (`tls`).
//! - Forced interleavings: a Redis connection that runs a hook at an exact command
//!   (`intercept`); the `make up` Redis with a key prefix of its own (`shared_redis`).
//! - The exhaustive model checker the protocol models in coupon-core's tests run on
//!   (`explorer`).
//! - A migrated database of a test's own (`database`).
//! - With the feature `services`: the API and the workers in-process on fresh databases,
//!   topics and prefixes (`harness`); a headless chromium driven over WebDriver (`browser`).

#[cfg(feature = "services")]
pub mod browser;
pub mod credentials;
pub mod database;
pub mod explorer;
#[cfg(feature = "services")]
pub mod harness;
pub mod intercept;
pub mod kafka_cluster;
pub mod process;
pub mod proxy;
pub mod redis_cluster;
pub mod redis_server;
pub mod redis_stats;
pub mod sentinel_topology;
pub mod shared_redis;
pub mod tls;
