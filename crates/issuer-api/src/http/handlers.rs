//! Request handlers: parse, call the domain, answer with the contract's shapes.

use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use coupon_core::db::settings::Change;
use coupon_core::domain::{Admission, Coupon, CouponId, UserId};
use serde_json::json;

use super::contract::{
    BucketStockView, CouponCreated, CouponView, CreateCouponRequest, EndMoved, EndRequest,
    FailedEventReplayed, FailedEventView, FailedEventsQuery, FailedEventsView, IssueAnswer,
    IssueRequest, IssueStatus, IssueStatusView, Object, PauseChanged, PauseRequest, QuantityRaised,
    RaiseQuantityRequest, UserCoupon, UserCouponsView, failed_event_id, path_id,
};
use super::state::AppState;
use crate::error::ApiError;
use crate::identity::Caller;
use crate::issuing::{CouponState, Holding, Raise, SettingsChange};

pub async fn create_coupon(
    caller: Caller,
    state: web::Data<AppState>,
    body: web::Json<Object<CreateCouponRequest>>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let new = body.into_inner().0.validate()?;
    let coupon = state.issuer.create_coupon(&new).await?;
    tracing::info!(coupon = %coupon.id, quantity = coupon.total_quantity, "coupon created");
    Ok(HttpResponse::Created().json(CouponCreated::from(coupon)))
}

/// 200 when admission sells the new quantity now, 202 when PostgreSQL holds it and Redis
/// will once the coupon's state is open (a bucket being rebuilt).
pub async fn raise_quantity(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<Object<RaiseQuantityRequest>>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let coupon: CouponId = path_id(&path)?;
    let quantity = body.into_inner().0.validate()?;
    let raise = state.issuer.raise_quantity(coupon, quantity).await?;
    let (mut answer, landed) = match raise {
        Raise::Landed(_) => (HttpResponse::Ok(), true),
        Raise::Landing(_) => (HttpResponse::Accepted(), false),
    };
    tracing::info!(%coupon, quantity, landed, by = ?caller.user, admin_token = caller.user.is_none(),
        "coupon quantity raised");
    Ok(answer.json(QuantityRaised {
        coupon_id: coupon,
        total_quantity: quantity,
        landed,
    }))
}

/// 200 when the setting is in force on every API, 202 when PostgreSQL holds it and Redis
/// will once the coupon's state is open.
pub async fn set_paused(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<Object<PauseRequest>>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let coupon: CouponId = path_id(&path)?;
    let paused = body.into_inner().0.paused;
    let change = state
        .issuer
        .change_settings(coupon, Change::Paused(paused))
        .await?;
    let (mut answer, landed, now) = settings_answer(change);
    tracing::info!(%coupon, paused, landed, version = now.settings.version, by = caller.who(),
        "coupon admission paused or resumed");
    Ok(answer.json(PauseChanged {
        coupon_id: coupon,
        paused: now.settings.paused,
        landed,
    }))
}

/// 200 when the new end is in force on every API, 202 when PostgreSQL holds it and Redis
/// will once the coupon's state is open. An end moved after it came reopens the sale once
/// the finished gates' hold has passed (`scripts/write_settings.lua`).
pub async fn move_end(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<Object<EndRequest>>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let coupon: CouponId = path_id(&path)?;
    let ends_at = body.into_inner().0.validate()?;
    let change = state
        .issuer
        .change_settings(coupon, Change::EndsAt(ends_at))
        .await?;
    let (mut answer, landed, now) = settings_answer(change);
    tracing::info!(%coupon, ?ends_at, landed, version = now.settings.version, by = caller.who(),
        "coupon end moved later");
    Ok(answer.json(EndMoved {
        coupon_id: coupon,
        ends_at: now.ends_at,
        landed,
    }))
}

/// A change of settings' status (200 landed, 202 landing), whether it landed, and the
/// coupon as it is now.
fn settings_answer(change: SettingsChange) -> (HttpResponseBuilder, bool, Coupon) {
    match change {
        SettingsChange::Landed(now) => (HttpResponse::Ok(), true, now),
        SettingsChange::Landing(now) => (HttpResponse::Accepted(), false, now),
    }
}

pub async fn issue_coupon(
    caller: Caller,
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<Object<IssueRequest>>,
) -> Result<HttpResponse, ApiError> {
    let coupon: CouponId = path_id(&path)?;
    let user = caller.user()?;
    let Object(request) = body.into_inner();
    if request.user_id.is_some_and(|named| named != user) {
        return Err(ApiError::Forbidden(
            "userId in the body is not the user the token names".into(),
        ));
    }
    let address = state.addresses.of(&req);
    // Counted in this instance's memory, shared with the other replicas in the background
    // (`rate_limit`); a finished coupon's answer from memory then asks Redis nothing at all.
    let answer = match state.limiter.check(user, address).await {
        Err(refused) => Err(refused),
        Ok(()) => match state.issuer.gated(coupon, user) {
            Some(gated) => {
                state.metrics.finished_gate_answers.inc();
                Ok(gated)
            }
            None => state.issuer.issue(coupon, user).await,
        },
    };
    state.metrics.record_answer(&answer);
    let result = answer?;
    let status = match result {
        Admission::Success => StatusCode::CREATED,
        Admission::AlreadyIssued => StatusCode::CONFLICT,
        Admission::SoldOut => StatusCode::GONE,
        Admission::NotStarted | Admission::Ended | Admission::Paused => StatusCode::FORBIDDEN,
    };
    Ok(HttpResponse::build(status).json(IssueAnswer {
        result,
        coupon_id: coupon,
        user_id: user,
    }))
}

pub async fn list_failed_events(
    caller: Caller,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let (filter, limit) = FailedEventsQuery::parse(req.query_string())?;
    let rows = state.issuer.failed_events(filter, limit).await?;
    Ok(HttpResponse::Ok().json(FailedEventsView {
        failed_events: rows.into_iter().map(FailedEventView::from).collect(),
    }))
}

pub async fn replay_failed_event(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let id = failed_event_id(&path)?;
    let by = caller.who();
    let replayed = FailedEventReplayed::new(id, state.issuer.replay_failed_event(id, &by).await?);
    tracing::info!(
        failed_event = id,
        status = replayed.status,
        by,
        "failed event replayed"
    );
    Ok(HttpResponse::Ok().json(replayed))
}

pub async fn discard_failed_event(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let id = failed_event_id(&path)?;
    let by = caller.who();
    let row = state.issuer.discard_failed_event(id, &by).await?;
    tracing::info!(failed_event = id, reason = %row.reason, by, "failed event discarded");
    Ok(HttpResponse::Ok().json(FailedEventView::from(row)))
}

pub async fn get_coupon(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id: CouponId = path_id(&path)?;
    let CouponState {
        coupon,
        admitted,
        buckets,
    } = state.issuer.coupon(id).await?;
    Ok(HttpResponse::Ok().json(CouponView {
        coupon_id: coupon.id,
        name: coupon.name,
        total_quantity: coupon.total_quantity,
        issued_count: admitted,
        remaining: (coupon.total_quantity - admitted).max(0),
        persisted_count: coupon.persisted_count,
        starts_at: coupon.starts_at,
        ends_at: coupon.ends_at,
        buckets: coupon.buckets,
        paused: coupon.settings.paused,
        bucket_stock: buckets.iter().map(BucketStockView::from).collect(),
    }))
}

pub async fn issue_status(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (coupon, user): (CouponId, UserId) = (path_id(&path.0)?, path_id(&path.1)?);
    caller.may_read(user)?;
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
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user: UserId = path_id(&path)?;
    caller.may_read(user)?;
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

/// Gauges set by the background tasks (`crate::operations`, the reconciler): no query per
/// scrape.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(coupon_core::metrics::CONTENT_TYPE)
        .body(state.metrics.render())
}

/// The contract as OpenAPI 3.1, kept beside the code (`openapi.json`) and checked against
/// the routes by `tests/openapi.rs`.
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

const OPENAPI: &str = include_str!("../../openapi.json");

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

pub async fn method_not_allowed(allow: Method) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed { allow })
}
