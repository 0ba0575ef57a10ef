//! Request handlers: parse, call the domain, answer with the contract's shapes.

use std::future::{Ready, ready};
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use coupon_core::domain::{Admission, CouponId, UserId};
use serde_json::json;
use subtle::{Choice, ConstantTimeEq};

use crate::contract::{
    CouponCreated, CouponView, CreateCouponRequest, IssueAnswer, IssueRequest, IssueStatus,
    IssueStatusView, Object, UserCoupon, UserCouponsView, path_id,
};
use crate::error::ApiError;
use crate::issuing::{Holding, Issuer};
use crate::metrics::IssueCounters;
use crate::operations::Operations;
use crate::rate_limit::RateLimiter;

pub struct AppState {
    pub issuer: Issuer,
    pub admin_token: String,
    pub counters: IssueCounters,
    pub operations: Arc<Operations>,
    pub limiter: RateLimiter,
}

/// Proof that the request carried the admin bearer token. As the first extractor of a
/// handler it is checked before the body is read, so a stranger learns nothing about
/// what a valid body would look like.
pub struct AdminAuth;

impl FromRequest for AdminAuth {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let expected = req
            .app_data::<web::Data<AppState>>()
            .map(|state| state.admin_token.as_bytes());
        let given = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::as_bytes);
        ready(match (expected, given) {
            (Some(expected), Some(given)) if same_token(expected, given) => Ok(AdminAuth),
            _ => Err(ApiError::Unauthorized),
        })
    }
}

/// Whether `given` is the admin token, in time that depends on neither the token's bytes nor
/// its length: `ct_eq` on slices answers at once when the lengths differ, which told a
/// stranger the token's length. Here the loop runs over the given bytes (the caller's own
/// length), and the length check is folded into the result. `expected` is never empty
/// (checked at start).
fn same_token(expected: &[u8], given: &[u8]) -> bool {
    let mut same = Choice::from(u8::from(expected.len() == given.len()));
    for (i, byte) in given.iter().enumerate() {
        same &= byte.ct_eq(&expected[i % expected.len()]);
    }
    bool::from(same) && !given.is_empty()
}

pub async fn create_coupon(
    _: AdminAuth,
    state: web::Data<AppState>,
    body: web::Json<Object<CreateCouponRequest>>,
) -> Result<HttpResponse, ApiError> {
    let new = body.into_inner().0.validate()?;
    let coupon = state.issuer.create_coupon(&new).await?;
    tracing::info!(coupon = %coupon.id, quantity = coupon.total_quantity, "coupon created");
    Ok(HttpResponse::Created().json(CouponCreated::from(coupon)))
}

pub async fn issue_coupon(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<Object<IssueRequest>>,
) -> Result<HttpResponse, ApiError> {
    let coupon: CouponId = path_id(&path)?;
    let Object(request) = body.into_inner();
    let user = request.user_id;
    let address = state.limiter.client_address(&req);
    let answer = match state.limiter.check(user, address).await {
        Ok(()) => state.issuer.issue(coupon, user).await,
        Err(refused) => Err(refused),
    };
    state.counters.record(&answer);
    let result = answer?;
    let status = match result {
        Admission::Success => StatusCode::CREATED,
        Admission::AlreadyIssued => StatusCode::CONFLICT,
        Admission::SoldOut => StatusCode::GONE,
        Admission::NotStarted | Admission::Ended => StatusCode::FORBIDDEN,
    };
    Ok(HttpResponse::build(status).json(IssueAnswer {
        result,
        coupon_id: coupon,
        user_id: user,
    }))
}

pub async fn get_coupon(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id: CouponId = path_id(&path)?;
    let (coupon, admitted) = state.issuer.coupon(id).await?;
    Ok(HttpResponse::Ok().json(CouponView {
        coupon_id: coupon.id,
        name: coupon.name,
        total_quantity: coupon.total_quantity,
        issued_count: admitted,
        remaining: (coupon.total_quantity - admitted).max(0),
        persisted_count: coupon.issued_count,
        starts_at: coupon.starts_at,
        ends_at: coupon.ends_at,
    }))
}

pub async fn issue_status(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (coupon, user): (CouponId, UserId) = (path_id(&path.0)?, path_id(&path.1)?);
    let (status, issued_at, reason) = match state.issuer.holding(coupon, user).await? {
        Holding::Persisted(at) => (IssueStatus::Issued, Some(at), None),
        Holding::Refused(reason) => (IssueStatus::NotIssued, None, Some(reason)),
        Holding::Admitted => (IssueStatus::Pending, None, None),
        Holding::None => (IssueStatus::None, None, None),
    };
    Ok(HttpResponse::Ok().json(IssueStatusView {
        coupon_id: coupon,
        user_id: user,
        status,
        issued_at,
        reason,
    }))
}

pub async fn list_user_coupons(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user: UserId = path_id(&path)?;
    let coupons = state
        .issuer
        .user_coupons(user)
        .await?
        .into_iter()
        .map(|(coupon_id, issued_at)| UserCoupon {
            coupon_id,
            issued_at,
        })
        .collect();
    Ok(HttpResponse::Ok().json(UserCouponsView {
        user_id: user,
        coupons,
    }))
}

/// Served from the operations view (`crate::operations`): no query per scrape.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let snapshot = state.operations.snapshot();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.counters.render(&snapshot.failed))
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Ready when every dependency answered at the last look (at most a second ago); each
/// check is listed as "ok" or "unavailable", so an operator sees which one is down, and
/// the log says why.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let snapshot = state.operations.snapshot();
    let ready = snapshot.ready();
    let body: serde_json::Map<_, _> = snapshot
        .checks
        .iter()
        .map(|(name, ok)| {
            let said = if *ok { "ok" } else { "unavailable" };
            ((*name).to_owned(), json!(said))
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(json!({ "ready": ready, "checks": body }))
}

pub async fn route_not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::RouteNotFound)
}

pub async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}

#[cfg(test)]
mod tests {
    use super::same_token;

    #[test]
    fn only_the_whole_token_is_the_token() {
        let token = b"s3cret-admin-token";
        assert!(same_token(token, token));
        assert!(!same_token(token, b"s3cret-admin-tokem"), "one byte off");
        assert!(!same_token(token, b"s3cret"), "a prefix");
        assert!(!same_token(token, b"s3cret-admin-token-and-more"), "longer");
        assert!(
            !same_token(token, b"s3cret-admin-tokens3cret-admin-token"),
            "repeated"
        );
        assert!(!same_token(token, b""), "empty");
    }
}
