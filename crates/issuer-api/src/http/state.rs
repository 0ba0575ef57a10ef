//! What every handler shares, registered once as the app's data.

use std::sync::Arc;
use std::time::Duration;

use crate::auth_throttle::AuthThrottle;
use crate::client_address::ClientAddresses;
use crate::issuing::Issuer;
use crate::metrics::Metrics;
use crate::operations::Operations;
use crate::rate_limit::RateLimiter;

pub struct AppState {
    /// Shared with every request's task (`Issuer::issue`).
    pub issuer: Arc<Issuer>,
    pub metrics: Arc<Metrics>,
    pub operations: Arc<Operations>,
    pub limiter: RateLimiter,
    pub addresses: ClientAddresses,
    pub auth_throttle: AuthThrottle,
    /// The headers that carry a credential (`Authorization`, the gateway's secret): only a
    /// request with one is refused by the throttle.
    pub credential_headers: Vec<actix_web::http::header::HeaderName>,
    /// How long a client has to send a request's body (`crate::http::guards`).
    pub body_timeout: Duration,
}
