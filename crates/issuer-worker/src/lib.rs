//! issuer-worker: a consumer-group member that turns issue events into PostgreSQL rows,
//! in batches, idempotently, acknowledging its queue (Kafka offsets or Redis Stream
//! entries) only after the rows.

pub mod config;
pub mod dead_letter;
pub mod dlq_commands;
mod kafka_queue;
pub mod metrics;
mod ops;
mod queue;
mod stream_queue;
pub mod stream_trim;
pub mod worker;
