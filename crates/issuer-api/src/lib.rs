//! issuer-api: answers "may this user have this coupon?" over HTTP, deciding in one
//! Redis script and publishing each SUCCESS to Kafka before answering it.

pub mod app;
pub mod auth_throttle;
pub mod client_address;
pub mod commands;
pub mod config;
pub mod console;
pub mod delivery;
pub mod error;
pub mod http;
pub mod identity;
pub mod issuing;
pub mod layouts;
pub mod metrics;
pub mod operations;
pub mod rate_limit;
pub mod replication;
pub mod slot_moves;
