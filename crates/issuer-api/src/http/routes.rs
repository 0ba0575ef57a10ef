//! The routes, as tables: the public contract's and the operations'. The OpenAPI test
//! compares the document with these tables, so a route added here without its line in the
//! document fails there.

use actix_web::http::Method;
use actix_web::{FromRequest, Handler, Resource, Responder, web};

use super::handlers;

/// One route: a path served with one method.
pub struct Route {
    pub path: &'static str,
    pub method: Method,
    serve: fn(&'static str, Method) -> Resource,
}

/// The routes of the contract. The hot route first: actix tries resources in order, and
/// each dynamic one it passes costs a regex match (the largest user-space cost of a
/// sold-out request in a profile).
pub const PUBLIC: [Route; 12] = [
    Route {
        path: "/api/v1/coupons/{couponId}/issues",
        method: Method::POST,
        serve: |path, method| resource(path, method, handlers::issue_coupon),
    },
    Route {
        path: "/api/v1/coupons",
        method: Method::POST,
        serve: |path, method| resource(path, method, handlers::create_coupon),
    },
    Route {
        path: "/api/v1/coupons/{couponId}",
        method: Method::GET,
        serve: |path, method| resource(path, method, handlers::get_coupon),
    },
    Route {
        path: "/api/v1/coupons/{couponId}/quantity",
        method: Method::PUT,
        serve: |path, method| resource(path, method, handlers::raise_quantity),
    },
    Route {
        path: "/api/v1/coupons/{couponId}/paused",
        method: Method::PUT,
        serve: |path, method| resource(path, method, handlers::set_paused),
    },
    Route {
        path: "/api/v1/coupons/{couponId}/end",
        method: Method::PUT,
        serve: |path, method| resource(path, method, handlers::move_end),
    },
    Route {
        path: "/api/v1/coupons/{couponId}/issues/{userId}",
        method: Method::GET,
        serve: |path, method| resource(path, method, handlers::issue_status),
    },
    Route {
        path: "/api/v1/users/{userId}/coupons",
        method: Method::GET,
        serve: |path, method| resource(path, method, handlers::list_user_coupons),
    },
    Route {
        path: "/api/v1/failed-events",
        method: Method::GET,
        serve: |path, method| resource(path, method, handlers::list_failed_events),
    },
    Route {
        path: "/api/v1/failed-events/{failedEventId}/replay",
        method: Method::POST,
        serve: |path, method| resource(path, method, handlers::replay_failed_event),
    },
    Route {
        path: "/api/v1/failed-events/{failedEventId}/discard",
        method: Method::POST,
        serve: |path, method| resource(path, method, handlers::discard_failed_event),
    },
    Route {
        path: "/openapi.json",
        method: Method::GET,
        serve: |path, method| resource(path, method, handlers::openapi),
    },
];

/// The operations routes: beside the API, or on their own listener (ISSUER_OPS_LISTEN).
pub const OPERATIONS: [Route; 3] = [
    Route {
        path: "/metrics",
        method: Method::GET,
        serve: |path, method| resource(path, method, handlers::metrics),
    },
    Route {
        path: "/healthz",
        method: Method::GET,
        serve: |path, method| resource(path, method, handlers::healthz),
    },
    Route {
        path: "/readyz",
        method: Method::GET,
        serve: |path, method| resource(path, method, handlers::readyz),
    },
];

/// Registers the public routes; a known path with another method answers 405 in JSON.
pub fn public(cfg: &mut web::ServiceConfig) {
    register(cfg, &PUBLIC);
}

pub fn operations(cfg: &mut web::ServiceConfig) {
    register(cfg, &OPERATIONS);
}

fn register(cfg: &mut web::ServiceConfig, table: &[Route]) {
    for route in table {
        cfg.service((route.serve)(route.path, route.method.clone()));
    }
}

/// A route's pattern, kept with its resource for the request timing's label: read back from
/// the request it served, it costs no second match of the path against the routes
/// (`HttpRequest::match_pattern` matches every pattern again, a regex each).
#[derive(Debug, Clone, Copy)]
pub struct RoutePattern(pub &'static str);

/// A path served with one method; any other answers 405 with `Allow` naming it (RFC 9110).
fn resource<F, Args>(path: &'static str, method: Method, handler: F) -> Resource
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    let allow = method.clone();
    web::resource(path)
        .app_data(RoutePattern(path))
        .route(web::method(method).to(handler))
        .default_service(web::to(move || handlers::method_not_allowed(allow.clone())))
}
