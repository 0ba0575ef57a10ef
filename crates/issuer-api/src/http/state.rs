//! What every handler shares, registered once as the app's data.

use std::sync::Arc;

use crate::issuing::Issuer;
use crate::metrics::Metrics;
use crate::operations::Operations;
use crate::rate_limit::RateLimiter;

pub struct AppState {
    pub issuer: Issuer,
    pub metrics: Arc<Metrics>,
    pub operations: Arc<Operations>,
    pub limiter: RateLimiter,
}
