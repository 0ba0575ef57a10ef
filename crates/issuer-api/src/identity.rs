//! Who is calling: the user a request acts for, and whether it may act as an admin.
//!
//! The user comes from a verified bearer token (`jwt`, the default) or from a header a
//! gateway in front sets after its own login (`gateway-header`). Admin is the admin token,
//! or a verified token carrying the admin role. Nothing a client writes in a body or a path
//! decides who it is.

pub mod jwks;
pub mod jwt;

use std::future::Future;
use std::pin::Pin;

use actix_web::http::header::{AUTHORIZATION, HeaderName};
use actix_web::{FromRequest, HttpRequest, web};
use anyhow::Context;
use coupon_core::domain::UserId;
use subtle::{Choice, ConstantTimeEq};

use crate::config::{IdentityArgs, UserAuth};
use crate::error::ApiError;
use jwt::Refusal;

pub struct Identity {
    admin_token: Vec<u8>,
    users: Users,
}

enum Users {
    Jwt(Box<jwt::Verifier>),
    GatewayHeader(HeaderName),
}

/// The verified caller of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The user the caller is, if it is one (the admin token is nobody's).
    pub user: Option<UserId>,
    pub admin: bool,
}

impl Identity {
    /// Reads the keys (a JWKS at start-up, so a wrong URL or file stops the start, not the
    /// first request) and says loudly what it trusts.
    pub async fn new(args: &IdentityArgs, admin_token: String) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !admin_token.is_empty(),
            "the admin token (ISSUER_ADMIN_TOKEN or ISSUER_ADMIN_TOKEN_FILE) must not be empty"
        );
        refuse_placeholder(&admin_token, "ISSUER_ADMIN_TOKEN")?;
        let users = match args.user_auth {
            UserAuth::Jwt => Users::Jwt(Box::new(jwt::Verifier::new(args).await?)),
            UserAuth::GatewayHeader => {
                let header =
                    HeaderName::try_from(args.user_header.as_str()).with_context(|| {
                        format!(
                            "ISSUER_USER_HEADER {:?} is not a header name",
                            args.user_header
                        )
                    })?;
                tracing::warn!(
                    header = %header,
                    "ISSUER_USER_AUTH=gateway-header: the user is whoever this header names. \
                     Only a gateway that authenticates users and strips the header from \
                     clients may stand in front of this API"
                );
                Users::GatewayHeader(header)
            }
        };
        Ok(Self {
            admin_token: admin_token.into_bytes(),
            users,
        })
    }

    pub async fn caller(&self, req: &HttpRequest) -> Result<Caller, ApiError> {
        let bearer = bearer(req)?;
        if let Some(token) = bearer
            && same_token(&self.admin_token, token.as_bytes())
        {
            return Ok(Caller {
                user: None,
                admin: true,
            });
        }
        match &self.users {
            Users::Jwt(verifier) => {
                let token = bearer.ok_or(ApiError::Unauthenticated(
                    "a bearer token is required".into(),
                ))?;
                let claims = verifier.verify(token).await?;
                Ok(Caller {
                    user: claims.user,
                    admin: claims.admin,
                })
            }
            Users::GatewayHeader(header) => {
                let value = req.headers().get(header).ok_or_else(|| {
                    ApiError::Unauthenticated(format!("the gateway sent no {header} header"))
                })?;
                let user = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.parse::<UserId>().ok())
                    .ok_or_else(|| {
                        ApiError::Unauthenticated(format!("the {header} header is not a user id"))
                    })?;
                Ok(Caller {
                    user: Some(user),
                    admin: false,
                })
            }
        }
    }
}

impl Caller {
    /// The user this request acts for.
    pub fn user(&self) -> Result<UserId, ApiError> {
        self.user.ok_or(ApiError::Forbidden(
            "this route acts for a user, and the token names none".into(),
        ))
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden("this route is for admins".into()))
        }
    }

    /// A user's own issues and coupons are theirs and the admins' to read.
    pub fn may_read(&self, user: UserId) -> Result<(), ApiError> {
        if self.admin || self.user == Some(user) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "a user's coupons are readable by that user or an admin".into(),
            ))
        }
    }
}

/// As the first extractor of a handler it is checked before the body is read, so a
/// stranger learns nothing about what a valid body would look like.
impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let identity = req
                .app_data::<web::Data<Identity>>()
                .ok_or_else(|| ApiError::Internal("no identity configured".into()))?;
            identity.caller(&req).await
        })
    }
}

/// The identity's refusals in the one status map's terms.
impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            // The keys could not be read: whether the token is good is unknown.
            Refusal::KeysUnavailable(err) => Self::unavailable("the token issuer's keys", err),
            other => Self::Unauthenticated(other.to_string()),
        }
    }
}

/// A secret still holding a manifest's placeholder (`CHANGE-ME`) would work as a real one,
/// and anyone who read the manifest would know it: refuse to start instead.
pub fn refuse_placeholder(secret: &str, variable: &str) -> anyhow::Result<()> {
    let lower = secret.to_ascii_lowercase();
    anyhow::ensure!(
        !(lower.contains("change-me") || lower.contains("changeme")),
        "{variable} still holds a placeholder (CHANGE-ME): set a secret of your own, e.g. \
         `openssl rand -hex 32`"
    );
    Ok(())
}

/// The bearer token, if the request has an Authorization header; any other scheme, or a
/// header that is not text, is refused rather than ignored.
fn bearer(req: &HttpRequest) -> Result<Option<&str>, ApiError> {
    let Some(value) = req.headers().get(AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::Unauthenticated("the Authorization header is not text".into()))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() => {
            Ok(Some(token.trim()))
        }
        _ => Err(ApiError::Unauthenticated(
            "the Authorization header must be `Bearer <token>`".into(),
        )),
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

#[cfg(test)]
mod tests {
    use super::{refuse_placeholder, same_token};

    #[test]
    fn a_placeholder_secret_is_refused_with_the_reason() {
        for placeholder in [
            "CHANGE-ME",
            "change-me-please",
            "ChangeMe123",
            "CHANGE-ME-TO-32-OR-MORE-RANDOM-BYTES",
        ] {
            let err = refuse_placeholder(placeholder, "ISSUER_ADMIN_TOKEN").unwrap_err();
            assert!(
                err.to_string().contains("placeholder"),
                "{placeholder}: {err}"
            );
        }
        assert!(refuse_placeholder("dev-admin-token", "ISSUER_ADMIN_TOKEN").is_ok());
    }

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
