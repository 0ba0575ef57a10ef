//! Every failure a request can meet, and the one place that turns it into a status.
//!
//! Infrastructure errors answer 503 with `Retry-After` ("unknown, retry": the retry tells
//! the truth, see DESIGN invariant 5); bad input answers 4xx and changed nothing.
//! Internal details are logged, never sent.

use actix_web::error::{JsonPayloadError, ResponseError};
use actix_web::http::StatusCode;
use actix_web::http::header::{ALLOW, RETRY_AFTER, WWW_AUTHENTICATE};
use actix_web::{HttpResponse, HttpResponseBuilder};
use coupon_core::buckets::mover::MoveError;
use coupon_core::db::pool::PoolError;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    /// Who is calling is not known: no credentials, or credentials that do not verify.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known, and may not do this.
    #[error("{0}")]
    Forbidden(String),
    #[error("coupon {0} does not exist")]
    CouponNotFound(i64),
    #[error("failed event {0} does not exist")]
    FailedEventNotFound(i64),
    /// The request is well formed, and the coupon's state does not allow it (a retry gets
    /// the same answer).
    #[error("{0}")]
    Conflict(String),
    #[error("no such route")]
    RouteNotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed { allow: actix_web::http::Method },
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    /// The request's body did not arrive within the body timeout.
    #[error("the request's body did not arrive in time")]
    BodyTimeout,
    /// A dependency failed or timed out: the outcome is unknown, the client should retry.
    #[error("{what} is unavailable")]
    Unavailable {
        what: &'static str,
        #[source]
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The user's slot is held, and a publish of its event is under way elsewhere: whether
    /// the coupon is theirs is not known yet.
    #[error("an earlier request's publish for this user is still unresolved; retry shortly")]
    PublishUnresolved,
    /// This user or client address sent too many issue requests in the current window.
    #[error("too many requests; retry after {retry_after:?}")]
    RateLimited { retry_after: std::time::Duration },
    /// Redis lost this coupon's state; admission reopens once it is rebuilt.
    #[error("coupon {0} is being restored from PostgreSQL; retry shortly")]
    Rebuilding(i64),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
}

impl ApiError {
    pub fn unavailable(
        what: &'static str,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Unavailable {
            what,
            cause: cause.into(),
        }
    }

    /// Every code [`ApiError::code`] gives, so that counters can start each at zero.
    pub const CODES: [&'static str; 14] = [
        "INVALID_REQUEST",
        "UNAUTHORIZED",
        "FORBIDDEN",
        "COUPON_NOT_FOUND",
        "FAILED_EVENT_NOT_FOUND",
        "CONFLICT",
        "NOT_FOUND",
        "METHOD_NOT_ALLOWED",
        "PAYLOAD_TOO_LARGE",
        "UNSUPPORTED_MEDIA_TYPE",
        "REQUEST_TIMEOUT",
        "UNAVAILABLE",
        "RATE_LIMITED",
        "INTERNAL",
    ];

    /// The error's name in the answer's body, and its label in the answer counters.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "INVALID_REQUEST",
            Self::Unauthenticated(_) => "UNAUTHORIZED",
            Self::Forbidden(_) => "FORBIDDEN",
            Self::CouponNotFound(_) => "COUPON_NOT_FOUND",
            Self::FailedEventNotFound(_) => "FAILED_EVENT_NOT_FOUND",
            Self::Conflict(_) => "CONFLICT",
            Self::RouteNotFound => "NOT_FOUND",
            Self::MethodNotAllowed { .. } => "METHOD_NOT_ALLOWED",
            Self::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            Self::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            Self::BodyTimeout => "REQUEST_TIMEOUT",
            Self::Unavailable { .. } | Self::Rebuilding(_) | Self::PublishUnresolved => {
                "UNAVAILABLE"
            }
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::Internal(_) => "INTERNAL",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::CouponNotFound(_) | Self::FailedEventNotFound(_) | Self::RouteNotFound => {
                StatusCode::NOT_FOUND
            }
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Unavailable { .. } | Self::Rebuilding(_) | Self::PublishUnresolved => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponseBuilder::new(self.status_code());
        match self {
            Self::Unavailable { what, cause } => {
                tracing::warn!(dependency = what, error = %cause, "answering 503");
                response.insert_header((RETRY_AFTER, "1"));
            }
            Self::Rebuilding(_) | Self::PublishUnresolved => {
                response.insert_header((RETRY_AFTER, "1"));
            }
            Self::RateLimited { retry_after } => {
                // Whole seconds, rounded up: the window is over by then.
                let seconds = retry_after.as_millis().div_ceil(1000).max(1);
                response.insert_header((RETRY_AFTER, seconds.to_string()));
            }
            Self::Unauthenticated(_) => {
                response.insert_header((WWW_AUTHENTICATE, "Bearer"));
            }
            Self::MethodNotAllowed { allow } => {
                response.insert_header((ALLOW, allow.as_str()));
            }
            // The rest of the body may still be on its way: the connection cannot carry
            // another request after it.
            Self::BodyTimeout | Self::PayloadTooLarge { .. } => {
                response.force_close();
            }
            Self::Internal(cause) => tracing::error!(error = %cause, "answering 500"),
            _ => {}
        }
        response.json(ErrorBody {
            error: self.code(),
            message: self.to_string(),
        })
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(err: redis::RedisError) -> Self {
        Self::unavailable("redis", err)
    }
}

/// A move of stock between buckets that failed, or met a bucket not verified under the
/// stamp this process passed: the outcome is unknown, and a retry may succeed.
impl From<MoveError> for ApiError {
    fn from(err: MoveError) -> Self {
        match err {
            MoveError::Redis(err) => err.into(),
            MoveError::Postgres(err) => err.into(),
            MoveError::Pool(err) => err.into(),
            unverified @ (MoveError::Unverified(_) | MoveError::DonorRebuilt(_)) => {
                Self::unavailable("redis", unverified)
            }
            mismatch @ MoveError::LayoutMismatch(_) => Self::Internal(mismatch.into()),
        }
    }
}

impl From<PoolError> for ApiError {
    fn from(err: PoolError) -> Self {
        Self::unavailable("postgresql", err)
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(err: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match err {
            // A connection that broke mid-query or a conflict between transactions: the
            // database is fine in principle, retrying is the right move.
            Error::DatabaseError(
                DatabaseErrorKind::ClosedConnection
                | DatabaseErrorKind::SerializationFailure
                | DatabaseErrorKind::Unknown,
                _,
            )
            | Error::BrokenTransactionManager => Self::unavailable("postgresql", err),
            // The table's own rules refused the values: no retry can change that. Requests
            // are validated against the same rules first, so this is the last line.
            // (SQLSTATE class 22, data exceptions, would belong here too, but diesel-async
            // 0.9 reports them as `Unknown` without the code, indistinguishable from a
            // retryable too_many_connections; validation keeps them from being reached, and
            // `fuzz/fuzz_targets/request_parsing.rs` checks that it does.)
            Error::DatabaseError(
                DatabaseErrorKind::CheckViolation | DatabaseErrorKind::NotNullViolation,
                info,
            ) => Self::InvalidRequest(format!(
                "the database refused the values ({})",
                info.constraint_name().unwrap_or("a constraint")
            )),
            other => Self::Internal(other.into()),
        }
    }
}

impl From<JsonPayloadError> for ApiError {
    fn from(err: JsonPayloadError) -> Self {
        match err {
            JsonPayloadError::OverflowKnownLength { limit, .. }
            | JsonPayloadError::Overflow { limit } => Self::PayloadTooLarge { limit },
            JsonPayloadError::ContentType => Self::UnsupportedMediaType,
            JsonPayloadError::Deserialize(e) => {
                Self::InvalidRequest(format!("invalid JSON body: {e}"))
            }
            other => Self::InvalidRequest(format!("unreadable body: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use actix_web::ResponseError;
    use diesel::result::{DatabaseErrorKind, Error};

    use super::ApiError;

    fn status(kind: DatabaseErrorKind) -> u16 {
        let info = Box::new(String::from("new row violates check constraint"));
        ApiError::from(Error::DatabaseError(kind, info))
            .status_code()
            .as_u16()
    }

    /// The database refusing values for good is the client's to fix (400), not "retry"
    /// (503) and not our fault (500); a broken connection or a conflict is worth a retry.
    #[test]
    fn database_errors_answer_by_whether_a_retry_can_help() {
        assert_eq!(status(DatabaseErrorKind::CheckViolation), 400);
        assert_eq!(status(DatabaseErrorKind::NotNullViolation), 400);
        assert_eq!(status(DatabaseErrorKind::ClosedConnection), 503);
        assert_eq!(status(DatabaseErrorKind::SerializationFailure), 503);
    }

    /// The counters start every code at zero from `ApiError::CODES`: a code the status map
    /// gives that the list lacks would appear only with its first increment.
    #[test]
    fn every_code_is_listed() {
        let errors = [
            ApiError::InvalidRequest(String::new()),
            ApiError::Unauthenticated(String::new()),
            ApiError::Forbidden(String::new()),
            ApiError::CouponNotFound(1),
            ApiError::RouteNotFound,
            ApiError::MethodNotAllowed {
                allow: actix_web::http::Method::GET,
            },
            ApiError::PayloadTooLarge { limit: 1 },
            ApiError::UnsupportedMediaType,
            ApiError::BodyTimeout,
            ApiError::unavailable("redis", "down"),
            ApiError::PublishUnresolved,
            ApiError::RateLimited {
                retry_after: std::time::Duration::from_secs(1),
            },
            ApiError::Rebuilding(1),
            ApiError::Internal("bug".into()),
        ];
        for err in errors {
            assert!(ApiError::CODES.contains(&err.code()), "{}", err.code());
        }
    }
}
