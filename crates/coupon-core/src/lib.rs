//! What issuer-api and issuer-worker share: the domain, the event, Redis admission,
//! the database layer, Kafka settings, configuration and telemetry.

pub mod buckets;
pub mod config;
pub mod db;
pub mod domain;
pub mod event;
pub mod kafka;
pub mod metrics;
pub mod redis;
pub mod shutdown;
pub mod startup;
pub mod telemetry;
pub mod trace_context;
