//! issuer-bench: load scenarios and the chaos suite against real processes, plus the
//! pieces of fault injection the integration tests share.

pub mod bucket_spread;
pub mod ceiling;
pub mod chaos;
pub mod client;
pub mod connections;
pub mod drain;
pub mod html;
pub mod latency;
pub mod progress;
pub mod race;
pub mod report;
pub mod seed;
pub mod sustained;
