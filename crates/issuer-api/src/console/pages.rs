//! The console's pages and actions. A page needs a session (else the sign-in page); an
//! action needs a session and its CSRF token (else 403, and nothing done), then does what
//! the admin API's route does, leaves a notice and goes back to a page (POST, redirect,
//! GET: a reload never repeats an action).

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use askama::Template;
use chrono::{DateTime, NaiveDateTime, Utc};
use coupon_core::db::failed_events::{FailedEventRow, Filter, Status};
use coupon_core::db::settings::Change;
use coupon_core::domain::{Coupon, CouponId};
use serde::Deserialize;

use super::HTMX;
use super::session::{Notice, SIGN_IN_COOKIE, Session, Sessions, same_token};
use crate::error::ApiError;
use crate::http::contract::{
    CreateCouponRequest, EndRequest, FailedEventReplayed, failed_event_id, path_id,
    quantity_from_text,
};
use crate::http::state::AppState;
use crate::identity::Identity;
use crate::issuing::{CouponState, Raise, SettingsChange};
use crate::operations::history::Chart;

const SIGN_IN: &str = "/console/sign-in";
/// Sales listed, newest first.
const LISTED: i64 = 50;
/// Failed events listed.
const FAILED_LISTED: i64 = 500;

/// Why a page or action was not served.
#[derive(Debug)]
pub enum Refusal {
    /// A page asked for without a live session: the sign-in page. For a page's refresh
    /// (htmx's request), 401 and `HX-Redirect`, so the whole page goes there rather than
    /// the sign-in page into the refreshed part.
    SignIn {
        refresh: bool,
    },
    Status(StatusCode, String),
}

impl From<ApiError> for Refusal {
    fn from(err: ApiError) -> Self {
        let status = err.status_code();
        if status.is_server_error() {
            tracing::warn!(error = %err, "console: answering {status}");
        }
        Self::Status(status, err.to_string())
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SignIn { .. } => f.write_str("sign in first"),
            Self::Status(_, message) => f.write_str(message),
        }
    }
}

impl ResponseError for Refusal {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::SignIn { refresh: false } => StatusCode::SEE_OTHER,
            Self::SignIn { refresh: true } => StatusCode::UNAUTHORIZED,
            Self::Status(status, _) => *status,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::SignIn { refresh: false } => see_other(SIGN_IN),
            Self::SignIn { refresh: true } => HttpResponse::Unauthorized()
                .insert_header(("HX-Redirect", SIGN_IN))
                .finish(),
            Self::Status(status, message) => html(
                *status,
                ErrorPage {
                    status: *status,
                    message,
                }
                .render(),
            ),
        }
    }
}

type Page = Result<HttpResponse, Refusal>;

/// What the layout shows around every page.
struct Frame {
    who: String,
    csrf: String,
    notice: Option<Notice>,
    htmx: &'static str,
}

impl From<Session> for Frame {
    fn from(session: Session) -> Self {
        Self {
            who: session.who,
            csrf: session.csrf,
            notice: session.notice,
            htmx: HTMX,
        }
    }
}

#[derive(Template)]
#[template(path = "console/sign_in.html")]
struct SignInPage {
    csrf: String,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "console/error.html")]
struct ErrorPage<'a> {
    status: StatusCode,
    message: &'a str,
}

#[derive(Template)]
#[template(path = "console/sales.html")]
struct SalesPage {
    frame: Frame,
    listed: i64,
    sales: Vec<Sale>,
}

#[derive(Template)]
#[template(path = "console/sales_rows.html")]
struct SalesRows {
    sales: Vec<Sale>,
}

#[derive(Template)]
#[template(path = "console/new_sale.html")]
struct NewSalePage {
    frame: Frame,
    form: SaleForm,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "console/sale.html")]
struct SalePage {
    frame: Frame,
    live: Live,
}

#[derive(Template)]
#[template(path = "console/sale_live.html")]
struct SaleLive {
    live: Live,
}

#[derive(Template)]
#[template(path = "console/failed_events.html")]
struct FailedEventsPage {
    frame: Frame,
    statuses: Vec<(&'static str, bool)>,
    /// The coupon the list is narrowed to, if it is.
    coupon: Option<CouponId>,
    events: Vec<FailedEventRow>,
}

/// A sale as a row of the list and the head of its page.
struct Sale {
    id: CouponId,
    name: String,
    /// scheduled, open, sold-out, ended or paused (also its CSS class).
    state: &'static str,
    quantity: i64,
    /// Slots taken in Redis, where known.
    issued: String,
    rows: i64,
    remaining: i64,
    window: String,
}

impl Sale {
    fn new(coupon: &Coupon, issued: Option<i64>, now: DateTime<Utc>) -> Self {
        // A coupon no longer active has every slot a row or a failed event: its rows stand
        // in for what Redis counted.
        let taken = issued.unwrap_or(coupon.persisted_count);
        let state = if coupon.settings.paused {
            "paused"
        } else if coupon.starts_at.is_some_and(|at| now < at) {
            "scheduled"
        } else if coupon.ends_at.is_some_and(|at| now >= at) {
            "ended"
        } else if taken >= coupon.total_quantity {
            "sold-out"
        } else {
            "open"
        };
        let at = |t: Option<DateTime<Utc>>, none: &str| {
            t.map_or_else(
                || none.to_owned(),
                |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
            )
        };
        Self {
            id: coupon.id,
            name: coupon.name.clone(),
            state,
            quantity: coupon.total_quantity,
            issued: issued.map_or_else(|| "–".to_owned(), |n| n.to_string()),
            rows: coupon.persisted_count,
            remaining: (coupon.total_quantity - taken).max(0),
            window: format!(
                "{} to {}",
                at(coupon.starts_at, "created"),
                at(coupon.ends_at, "no end")
            ),
        }
    }
}

/// A sale's live part.
struct Live {
    sale: Sale,
    paused: bool,
    stock_charted: bool,
    charts: Vec<Chart>,
    last_second: Vec<(&'static str, u64)>,
    pipeline: Vec<(String, String)>,
}

/// The fields of the new-sale form, as typed (shown again with its error).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SaleForm {
    #[serde(default)]
    csrf: String,
    name: String,
    total_quantity: String,
    #[serde(default)]
    starts_at: String,
    #[serde(default)]
    ends_at: String,
    #[serde(default)]
    buckets: String,
}

#[derive(Debug, Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    csrf: String,
    token: String,
}

/// A form whose only field is its CSRF token (sign-out).
#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

#[derive(Debug, Deserialize)]
pub struct PausedForm {
    #[serde(default)]
    csrf: String,
    paused: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuantityForm {
    #[serde(default)]
    csrf: String,
    total_quantity: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    ends_at: String,
    /// The checkbox: present when ticked.
    #[serde(default)]
    no_end: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct FailedEventsQuery {
    status: Option<String>,
    coupon: Option<String>,
}

/// A failed event's action form: its CSRF token, and the coupon the list it came from was
/// narrowed to (where the operator goes back to).
#[derive(Debug, Deserialize)]
pub struct FailedEventForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    coupon: String,
}

impl FailedEventForm {
    /// The list to go back to: a coupon id, checked, or the whole list.
    fn back(&self) -> String {
        match path_id::<CouponId>(&self.coupon) {
            Ok(coupon) => format!("/console/failed-events?coupon={coupon}"),
            Err(_) => "/console/failed-events".to_owned(),
        }
    }
}

pub fn form_refused(err: actix_web::error::UrlencodedError, _: &HttpRequest) -> actix_web::Error {
    Refusal::Status(
        StatusCode::BAD_REQUEST,
        format!("the form is not valid: {err}"),
    )
    .into()
}

pub async fn not_found() -> Page {
    Err(Refusal::Status(
        StatusCode::NOT_FOUND,
        "no such page".to_owned(),
    ))
}

pub async fn home(req: HttpRequest, sessions: web::Data<Sessions>) -> Page {
    page(&sessions, &req)?;
    Ok(see_other("/console/sales"))
}

pub async fn sign_in_page(req: HttpRequest, sessions: web::Data<Sessions>) -> HttpResponse {
    sign_in_form(&req, &sessions, StatusCode::OK, None)
}

pub async fn sign_in(
    req: HttpRequest,
    state: web::Data<AppState>,
    sessions: web::Data<Sessions>,
    identity: web::Data<Identity>,
    form: web::Form<SignInForm>,
) -> Page {
    same_site(&req)?;
    let expected = req.cookie(SIGN_IN_COOKIE);
    if !expected.is_some_and(|cookie| same_token(cookie.value(), &form.csrf)) {
        return Err(forbidden("the sign-in form has expired: load it again"));
    }
    // The peer, not ISSUER_CLIENT_ADDRESS_HEADER: that header is the public listener's
    // proxy's, and nothing stands in front of this listener to set it, so anyone could.
    let address = req.peer_addr().map(|peer| peer.ip().to_canonical());
    if let Some(retry_after) = state.auth_throttle.refused(address) {
        let mut answer = sign_in_form(
            &req,
            &sessions,
            StatusCode::TOO_MANY_REQUESTS,
            Some(ApiError::RateLimited { retry_after }.to_string()),
        );
        answer.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_after.as_secs().max(1)),
        );
        return Ok(answer);
    }
    let caller = match identity.token(form.token.trim()).await {
        Ok(caller) => caller,
        Err(err @ ApiError::Unauthenticated(_)) => {
            state.auth_throttle.failed(address);
            tracing::info!(?address, "console sign-in refused");
            let message = err.to_string();
            return Ok(sign_in_form(
                &req,
                &sessions,
                StatusCode::UNAUTHORIZED,
                Some(message),
            ));
        }
        Err(err) => return Err(err.into()),
    };
    if let Err(err) = caller.require_admin() {
        tracing::info!(who = caller.who(), "console sign-in refused: not an admin");
        return Ok(sign_in_form(
            &req,
            &sessions,
            StatusCode::FORBIDDEN,
            Some(err.to_string()),
        ));
    }
    let who = caller.who();
    tracing::info!(who, "console: signed in");
    // A session this browser still had is over: one browser, one session.
    sessions.close(&req);
    let mut spent = sessions.sign_in_token(&req).1;
    spent.make_removal();
    let mut answer = see_other("/console/sales");
    answer
        .add_cookie(&sessions.open(&req, who, caller.expires_at))
        .and_then(|()| answer.add_cookie(&spent))
        .map_err(|err| Refusal::Status(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?;
    Ok(answer)
}

pub async fn sign_out(
    req: HttpRequest,
    sessions: web::Data<Sessions>,
    form: web::Form<CsrfForm>,
) -> Page {
    // Without a live session there is nothing to end, and nothing a forged form could do:
    // the stale cookie is cleared.
    if sessions.live(&req) {
        let session = action(&sessions, &req, &form.csrf)?;
        tracing::info!(who = session.who, "console: signed out");
    }
    let mut answer = see_other(SIGN_IN);
    answer
        .add_cookie(&sessions.close(&req))
        .map_err(|err| Refusal::Status(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?;
    Ok(answer)
}

pub async fn sales(
    req: HttpRequest,
    state: web::Data<AppState>,
    sessions: web::Data<Sessions>,
) -> Page {
    let frame = page(&sessions, &req)?.into();
    let sales = listed_sales(&state).await?;
    Ok(html(
        StatusCode::OK,
        SalesPage {
            frame,
            listed: LISTED,
            sales,
        }
        .render(),
    ))
}

/// The list's rows alone, for its refresh.
pub async fn sales_rows(
    req: HttpRequest,
    state: web::Data<AppState>,
    sessions: web::Data<Sessions>,
) -> Page {
    refresh(&sessions, &req)?;
    let sales = listed_sales(&state).await?;
    Ok(html(StatusCode::OK, SalesRows { sales }.render()))
}

/// The newest sales; what Redis counted for the active ones, from the last refresh.
async fn listed_sales(state: &AppState) -> Result<Vec<Sale>, Refusal> {
    let coupons = state.issuer.recent_coupons(LISTED).await?;
    let sampled = state.operations.history().latest();
    let now = Utc::now();
    Ok(coupons
        .iter()
        .map(|coupon| {
            let issued = sampled.get(&coupon.id).map(|(issued, _)| *issued);
            Sale::new(coupon, issued, now)
        })
        .collect())
}

pub async fn new_sale(req: HttpRequest, sessions: web::Data<Sessions>) -> Page {
    let frame = page(&sessions, &req)?.into();
    let form = SaleForm {
        buckets: "1".to_owned(),
        ..SaleForm::default()
    };
    Ok(html(
        StatusCode::OK,
        NewSalePage {
            frame,
            form,
            error: None,
        }
        .render(),
    ))
}

pub async fn create_sale(
    req: HttpRequest,
    state: web::Data<AppState>,
    sessions: web::Data<Sessions>,
    form: web::Form<SaleForm>,
) -> Page {
    let session = action(&sessions, &req, &form.csrf)?;
    let form = form.into_inner();
    let created = match sale_request(&form).and_then(CreateCouponRequest::validate) {
        Ok(new) => state.issuer.create_coupon(&new).await,
        Err(err) => Err(err),
    };
    match created {
        Ok(coupon) => {
            tracing::info!(coupon = %coupon.id, quantity = coupon.total_quantity, by = session.who,
                "console: coupon created");
            sessions.notify(&req, format!("Sale {} created.", coupon.id), false);
            Ok(see_other(&format!("/console/sales/{}", coupon.id)))
        }
        // The API's own message, on the form as typed.
        Err(err @ ApiError::InvalidRequest(_)) => Ok(html(
            StatusCode::BAD_REQUEST,
            NewSalePage {
                frame: session.into(),
                form,
                error: Some(err.to_string()),
            }
            .render(),
        )),
        Err(err) => Err(err.into()),
    }
}

/// The form's text as the API's request: an empty time or bucket count is left out.
/// A datetime-local field's time, read as UTC; None when empty.
fn form_time(raw: &str, field: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    // A datetime-local field sends seconds only when they are not zero.
    NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M"))
        .map(|t| Some(t.and_utc()))
        .map_err(|_| {
            ApiError::InvalidRequest(format!("{field} must be a time such as 2026-12-24T18:00"))
        })
}

fn sale_request(form: &SaleForm) -> Result<CreateCouponRequest, ApiError> {
    let buckets =
        match form.buckets.trim() {
            "" => None,
            raw => Some(raw.parse::<i64>().map_err(|_| {
                ApiError::InvalidRequest("buckets must be a whole number".to_owned())
            })?),
        };
    Ok(CreateCouponRequest {
        name: form.name.clone(),
        total_quantity: quantity_from_text(&form.total_quantity)?,
        starts_at: form_time(&form.starts_at, "startsAt")?,
        ends_at: form_time(&form.ends_at, "endsAt")?,
        buckets,
    })
}

pub async fn sale(
    req: HttpRequest,
    state: web::Data<AppState>,
    sessions: web::Data<Sessions>,
    path: web::Path<String>,
) -> Page {
    let frame = page(&sessions, &req)?.into();
    let live = live(&state, &path).await?;
    Ok(html(StatusCode::OK, SalePage { frame, live }.render()))
}

/// The sale's live part alone, for its refresh.
pub async fn sale_live(
    req: HttpRequest,
    state: web::Data<AppState>,
    sessions: web::Data<Sessions>,
    path: web::Path<String>,
) -> Page {
    refresh(&sessions, &req)?;
    let live = live(&state, &path).await?;
    Ok(html(StatusCode::OK, SaleLive { live }.render()))
}

/// The sale as read for its page (at most ISSUER_COUPON_READ_CACHE_MS old), its chart and
/// the pipeline's figures as the operations refresher last read them.
async fn live(state: &AppState, raw_id: &str) -> Result<Live, Refusal> {
    let id: CouponId = path_id(raw_id)?;
    let CouponState {
        coupon, admitted, ..
    } = state.issuer.coupon(id).await?;
    let history = state.operations.history();
    let stock = history.stock(id);
    let metrics = &state.metrics;
    let mut pending = metrics.pending.read();
    pending.sort_by_key(|(labels, _)| labels.state);
    let queue_lag: i64 = metrics.queue_lag.read().iter().map(|(_, lag)| lag).sum();
    let unresolved: i64 = metrics
        .failed_events
        .read()
        .iter()
        .filter(|(labels, _)| !matches!(labels.status.as_str(), "RECOVERED" | "DISCARDED"))
        .map(|(_, n)| n)
        .sum();
    let pipeline = [(
        "pending entries".to_owned(),
        pending.iter().map(|(_, n)| n).sum::<i64>().to_string(),
    )]
    .into_iter()
    .chain(
        pending
            .iter()
            .map(|(labels, n)| (format!("pending, {}", labels.state), n.to_string())),
    )
    .chain([
        (
            "oldest pending entry".to_owned(),
            format!("{:.1} s", metrics.pending_oldest_age.get()),
        ),
        ("queue lag (Kafka)".to_owned(), queue_lag.to_string()),
        (
            "stream entries unread".to_owned(),
            metrics.stream_unread.get().to_string(),
        ),
        (
            "failed events unresolved".to_owned(),
            unresolved.to_string(),
        ),
    ])
    .collect();
    Ok(Live {
        sale: Sale::new(&coupon, Some(admitted), Utc::now()),
        paused: coupon.settings.paused,
        stock_charted: stock.is_some(),
        charts: stock.into_iter().chain([history.answers()]).collect(),
        last_second: history.last_second(),
        pipeline,
    })
}

pub async fn set_paused(
    req: HttpRequest,
    state: web::Data<AppState>,
    sessions: web::Data<Sessions>,
    path: web::Path<String>,
    form: web::Form<PausedForm>,
) -> Page {
    let session = action(&sessions, &req, &form.csrf)?;
    let coupon: CouponId = path_id(&path)?;
    let paused = form.paused;
    let change = Change::Paused(paused);
    let done = state
        .issuer
        .change_settings(coupon, change)
        .await
        .map(|change| {
            let (landed, now) = match change {
                SettingsChange::Landed(now) => (true, now),
                SettingsChange::Landing(now) => (false, now),
            };
            tracing::info!(%coupon, paused, landed, version = now.settings.version,
            by = session.who, "console: coupon admission paused or resumed");
            let what = if paused { "paused" } else { "resumed" };
            let when = if landed {
                "in force on every API"
            } else {
                "in force within a second, once Redis holds the sale again"
            };
            format!("Admission {what}: {when}.")
        });
    back(&sessions, &req, &format!("/console/sales/{coupon}"), done)
}

pub async fn raise_quantity(
    req: HttpRequest,
    state: web::Data<AppState>,
    sessions: web::Data<Sessions>,
    path: web::Path<String>,
    form: web::Form<QuantityForm>,
) -> Page {
    let session = action(&sessions, &req, &form.csrf)?;
    let coupon: CouponId = path_id(&path)?;
    let done = match quantity_from_text(&form.total_quantity) {
        Ok(quantity) => state
            .issuer
            .raise_quantity(coupon, quantity)
            .await
            .map(|raise| {
                let landed = matches!(raise, Raise::Landed(_));
                tracing::info!(%coupon, quantity, landed, by = session.who,
                    "console: coupon quantity raised");
                let when = if landed {
                    "on sale now"
                } else {
                    "on sale once Redis holds the sale again"
                };
                format!("Quantity raised to {quantity}: {when}.")
            }),
        Err(err) => Err(err),
    };
    back(&sessions, &req, &format!("/console/sales/{coupon}"), done)
}

pub async fn move_end(
    req: HttpRequest,
    state: web::Data<AppState>,
    sessions: web::Data<Sessions>,
    path: web::Path<String>,
    form: web::Form<EndForm>,
) -> Page {
    let session = action(&sessions, &req, &form.csrf)?;
    let coupon: CouponId = path_id(&path)?;
    let ends_at = match form.no_end {
        Some(_) => Ok(None),
        None => form_time(&form.ends_at, "endsAt").and_then(|at| {
            let at = at.ok_or_else(|| {
                ApiError::InvalidRequest("give the new end, or tick \"No end at all\"".into())
            })?;
            // The API's own checks of the time (its years), as a JSON body's.
            EndRequest {
                ends_at: Some(Some(at)),
            }
            .validate()
        }),
    };
    let done = match ends_at {
        Ok(ends_at) => state
            .issuer
            .change_settings(coupon, Change::EndsAt(ends_at))
            .await
            .map(|change| {
                let landed = matches!(change, SettingsChange::Landed(_));
                tracing::info!(%coupon, ?ends_at, landed, by = session.who,
                    "console: coupon end moved later");
                let end = ends_at.map_or_else(|| "no end".to_owned(), |at| format!("{at}"));
                let when = if landed {
                    "in force on every API (a sale that had ended reopens after the gates' hold)"
                } else {
                    "in force within a second, once Redis holds the sale again"
                };
                format!("The end is now {end}: {when}.")
            }),
        Err(err) => Err(err),
    };
    back(&sessions, &req, &format!("/console/sales/{coupon}"), done)
}

pub async fn failed_events(
    req: HttpRequest,
    state: web::Data<AppState>,
    sessions: web::Data<Sessions>,
    query: web::Query<FailedEventsQuery>,
) -> Page {
    let frame = page(&sessions, &req)?.into();
    let status = match query.status.as_deref() {
        None | Some("") => None,
        Some(name) => Some(Status::parse(name).ok_or_else(|| {
            Refusal::Status(StatusCode::BAD_REQUEST, format!("{name:?} is no status"))
        })?),
    };
    let coupon = match query.coupon.as_deref() {
        None | Some("") => None,
        Some(raw) => Some(path_id::<CouponId>(raw)?),
    };
    let events = state
        .issuer
        .failed_events(Filter { status, coupon }, FAILED_LISTED)
        .await?;
    let statuses = Status::ALL
        .iter()
        .map(|s| (s.as_str(), Some(*s) == status))
        .collect();
    Ok(html(
        StatusCode::OK,
        FailedEventsPage {
            frame,
            statuses,
            coupon,
            events,
        }
        .render(),
    ))
}

pub async fn replay(
    req: HttpRequest,
    state: web::Data<AppState>,
    sessions: web::Data<Sessions>,
    path: web::Path<String>,
    form: web::Form<FailedEventForm>,
) -> Page {
    let session = action(&sessions, &req, &form.csrf)?;
    let id = failed_event_id(&path)?;
    let done = state
        .issuer
        .replay_failed_event(id, &session.who)
        .await
        .map(|replayed| {
            let replayed = FailedEventReplayed::new(id, replayed);
            tracing::info!(
                failed_event = id,
                status = replayed.status,
                by = session.who,
                "console: failed event replayed"
            );
            let detail = replayed
                .detail
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            format!("Failed event {id} replayed: {}{detail}.", replayed.status)
        });
    back(&sessions, &req, &form.back(), done)
}

pub async fn discard(
    req: HttpRequest,
    state: web::Data<AppState>,
    sessions: web::Data<Sessions>,
    path: web::Path<String>,
    form: web::Form<FailedEventForm>,
) -> Page {
    let session = action(&sessions, &req, &form.csrf)?;
    let id = failed_event_id(&path)?;
    let done = state
        .issuer
        .discard_failed_event(id, &session.who)
        .await
        .map(|row| {
            tracing::info!(failed_event = id, reason = %row.reason, by = session.who,
                "console: failed event discarded");
            format!("Failed event {id} discarded.")
        });
    back(&sessions, &req, &form.back(), done)
}

/// Back to `location` with what an action did; refused as the API would refuse it (a raise
/// below what is issued, a replay the database refuses), the reason is shown there instead,
/// where the operator can act on it. A dependency that failed is the error page's (503).
fn back(
    sessions: &Sessions,
    req: &HttpRequest,
    location: &str,
    done: Result<String, ApiError>,
) -> Page {
    match done {
        Ok(text) => sessions.notify(req, text, false),
        Err(err) if err.status_code().is_client_error() => {
            sessions.notify(req, err.to_string(), true)
        }
        Err(err) => return Err(err.into()),
    }
    Ok(see_other(location))
}

/// The session a page needs; without one, the sign-in page.
fn page(sessions: &Sessions, req: &HttpRequest) -> Result<Session, Refusal> {
    sessions
        .current(req)
        .ok_or(Refusal::SignIn { refresh: false })
}

/// A live part's refresh: it needs a live session, and leaves it as it is
/// ([`Sessions::live`]).
fn refresh(sessions: &Sessions, req: &HttpRequest) -> Result<(), Refusal> {
    if sessions.live(req) {
        Ok(())
    } else {
        Err(Refusal::SignIn { refresh: true })
    }
}

/// A form posted from another site is refused whatever it carries: browsers say where a
/// request comes from (`Sec-Fetch-Site`), beside the CSRF token and the cookie's SameSite.
/// `none` is the operator's own doing (a bookmark, the address bar).
fn same_site(req: &HttpRequest) -> Result<(), Refusal> {
    match req
        .headers()
        .get("sec-fetch-site")
        .map(HeaderValue::as_bytes)
    {
        None | Some(b"same-origin" | b"none") => Ok(()),
        Some(_) => Err(forbidden("a form posted from another site is refused")),
    }
}

/// The session an action needs, and its CSRF token sent back: without either, 403 and
/// nothing done (a redirect would drop what the form said).
fn action(sessions: &Sessions, req: &HttpRequest, csrf: &str) -> Result<Session, Refusal> {
    same_site(req)?;
    let session = sessions
        .current(req)
        .ok_or_else(|| forbidden("sign in first: this action needs a session"))?;
    if !same_token(&session.csrf, csrf) {
        tracing::warn!(
            who = session.who,
            path = req.path(),
            "console: CSRF token missing or wrong"
        );
        return Err(forbidden(
            "the form's CSRF token is missing or wrong: load the page again",
        ));
    }
    Ok(session)
}

fn forbidden(message: &str) -> Refusal {
    Refusal::Status(StatusCode::FORBIDDEN, message.to_owned())
}

fn sign_in_form(
    req: &HttpRequest,
    sessions: &Sessions,
    status: StatusCode,
    error: Option<String>,
) -> HttpResponse {
    let (csrf, cookie) = sessions.sign_in_token(req);
    let mut answer = html(status, SignInPage { csrf, error }.render());
    // A cookie that cannot be added leaves a form that is refused: the page says so then.
    if let Err(err) = answer.add_cookie(&cookie) {
        tracing::warn!(error = %err, "console: the sign-in cookie was not set");
    }
    answer
}

fn html(status: StatusCode, rendered: askama::Result<String>) -> HttpResponse {
    match rendered {
        Ok(body) => HttpResponse::build(status)
            .content_type("text/html; charset=utf-8")
            .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
            .body(body),
        Err(err) => {
            tracing::error!(error = %err, "console: a page did not render");
            HttpResponse::InternalServerError()
                .content_type("text/plain; charset=utf-8")
                .body("the page did not render")
        }
    }
}

fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .finish()
}
