//! What issuer-api and issuer-worker share: the domain, the event, Redis admission,
//! the database layer, Kafka settings, configuration and telemetry.

pub mod admission;
pub mod config;
pub mod db;
pub mod domain;
pub mod epoch;
pub mod event;
pub mod function_library;
#[cfg(feature = "test-support")]
pub mod intercept;
pub mod kafka;
pub mod ledger;
pub mod metrics;
pub mod producer;
pub mod redis_connection;
pub mod redis_keys;
pub mod registry;
pub mod shutdown;
pub mod startup;
pub mod telemetry;
pub mod trace_context;
