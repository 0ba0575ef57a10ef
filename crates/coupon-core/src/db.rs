//! PostgreSQL: schema, pool, migrations and the queries both services run.

pub mod batch_insert;
pub mod buckets;
pub mod connect;
pub mod coupons;
pub mod failed_events;
pub mod migrate;
pub mod pool;
pub mod publish_window;
pub mod raise;
pub mod redrive;
pub mod schema;
pub mod settings;
