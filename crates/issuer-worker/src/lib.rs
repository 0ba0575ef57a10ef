//! issuer-worker: a consumer-group member that turns issue events into PostgreSQL rows,
//! in batches, idempotently, committing offsets only after the rows.

pub mod config;
pub mod consumer;
pub mod dead_letter;
pub mod dlq_commands;
pub mod worker;
