//! Request timing: every request of the public routes into
//! `coupon_http_request_duration_seconds`, in its span.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::web;
use tracing::Instrument;

use super::routes::RoutePattern;
use super::state::AppState;
use crate::metrics::HttpLabels;

/// Times every request of the public routes into `coupon_http_request_duration_seconds`,
/// labelled with the route's pattern (never the raw path, which would let clients mint
/// series) and the status sent, and runs it in its span.
pub async fn timed(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = std::time::Instant::now();
    // A client may send any method name: only the standard ones become label values.
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|state| state.metrics.clone());
    // The request's span (a trace's root when tracing is on; never built otherwise).
    let span = tracing::debug_span!("request", method, route = tracing::field::Empty);
    let response = next.call(req).instrument(span.clone()).await;
    // The pattern is known once routing ran, inside the call: its resource left it there.
    let (route, status) = match &response {
        Ok(response) => (
            response.request().app_data::<RoutePattern>().map(|p| p.0),
            response.status(),
        ),
        Err(err) => (None, err.as_response_error().status_code()),
    };
    let route = route.unwrap_or("unmatched");
    span.record("route", route);
    if let Some(metrics) = metrics {
        let labels = HttpLabels {
            route,
            method,
            status: status.as_u16(),
        };
        metrics.record_http(labels, started.elapsed().as_secs_f64());
    }
    response
}
