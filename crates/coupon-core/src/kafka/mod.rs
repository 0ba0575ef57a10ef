//! Kafka, shared by the API and the worker: every client's settings (`settings`), the
//! topics made sure of at start-up (`topics`), the consumer group's offsets a rebuild waits
//! on (`offsets`), and the producer (`producer`).
//!
//! Nothing here is specific to one broker: it speaks the Kafka API through librdkafka.

pub mod offsets;
pub mod producer;
pub mod settings;
pub mod topics;
