//! What runs before any handler on the public listener: failed authentication throttled
//! per client address (`crate::auth_throttle`), and a request's body read whole within the
//! body timeout. actix bounds reading a request's head and an idle connection itself
//! (`crate::app`), but not its body: a client could hold a connection, and its memory, for
//! ever by never finishing one.

use actix_web::HttpMessage;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::web::{self, BytesMut};
use futures_util::StreamExt;

use super::state::AppState;
use crate::error::ApiError;

/// Requests with bodies larger than this are refused with 413 before they are parsed.
pub const MAX_BODY_BYTES: usize = 4 * 1024;

/// Answers 429 at once to a request carrying credentials from an address that failed
/// authentication too often, before they are looked at; counts each 401 the address is
/// answered. A request with no credential (a public read) is not refused: it guesses
/// nothing, and the users behind a shared address (a carrier's NAT) keep reading.
pub async fn throttle_failed_authentication(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let address = state.addresses.of(req.request());
    let credentials = state
        .credential_headers
        .iter()
        .any(|header| req.headers().contains_key(header));
    if credentials && let Some(retry_after) = state.auth_throttle.refused(address) {
        let refused = ApiError::RateLimited { retry_after };
        return Ok(req.error_response(refused).map_into_right_body());
    }
    let response = next.call(req).await?;
    if response.status() == StatusCode::UNAUTHORIZED {
        state.auth_throttle.failed(address);
    }
    Ok(response.map_into_left_body())
}

/// Reads the whole body (at most [`MAX_BODY_BYTES`]) within the body timeout, then hands
/// it on; past the timeout, 408 and the connection closed.
pub async fn body_in_time(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let Some(timeout) = req
        .app_data::<web::Data<AppState>>()
        .map(|state| state.body_timeout)
    else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let mut payload = req.take_payload();
    let mut body = BytesMut::new();
    let read = async {
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|err| ApiError::InvalidRequest(err.to_string()))?;
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(ApiError::PayloadTooLarge {
                    limit: MAX_BODY_BYTES,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(())
    };
    let refused = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(())) => None,
        Ok(Err(refused)) => Some(refused),
        Err(_) => Some(ApiError::BodyTimeout),
    };
    if let Some(refused) = refused {
        return Ok(req.error_response(refused).map_into_right_body());
    }
    req.set_payload(Payload::from(body.freeze()));
    Ok(next.call(req).await?.map_into_left_body())
}
