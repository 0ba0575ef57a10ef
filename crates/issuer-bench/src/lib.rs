//! issuer-bench: load scenarios and the chaos suite against real processes, plus the
//! pieces of fault injection the integration tests share.

pub mod ceiling;
pub mod chaos;
pub mod client;
pub mod connections;
pub mod credentials;
pub mod drain;
pub mod html;
pub mod kafka_cluster;
pub mod latency;
pub mod process;
pub mod progress;
pub mod proxy;
pub mod race;
pub mod redis_server;
pub mod report;
pub mod seed;
pub mod sentinel_topology;
pub mod sustained;
