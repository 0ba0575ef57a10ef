//! Who is calling: the user a request acts for, and whether it may act as an admin.
//!
//! The user comes from a verified bearer token (`jwt`, the default) or from a header a
//! gateway in front sets after its own login (`gateway-header`), honoured only beside the
//! gateway's secret: anyone can send a header, and a client that reaches the API directly
//! must not name a user. Admin is the admin token, or a verified token carrying the admin
//! role. Nothing a client writes in a body or a path decides who it is, and a credential
//! sent twice (two `Authorization` headers, two user headers) is refused rather than one
//! of them picked.

pub mod jwks;
pub mod jwt;

use std::future::Future;
use std::pin::Pin;

use actix_web::http::header::{AUTHORIZATION, HeaderName};
use actix_web::{FromRequest, HttpRequest, web};
use anyhow::Context;
use coupon_core::domain::UserId;
use subtle::{Choice, ConstantTimeEq};

use crate::config::{DevSecrets, IdentityArgs, UserAuth};
use crate::error::ApiError;
use jwt::Refusal;

pub struct Identity {
    admin_token: Vec<u8>,
    users: Users,
}

enum Users {
    Jwt(Box<jwt::Verifier>),
    GatewayHeader(Gateway),
}

/// What proves a request came through the gateway, and where it names the user.
struct Gateway {
    user_header: HeaderName,
    secret_header: HeaderName,
    secret: Vec<u8>,
}

/// The secrets this repository prints (the Makefile, the compose file, the README, the
/// contract fuzz, the test suites): anyone who read them could sign tokens or act as an
/// admin, so they are refused unless ISSUER_DEV_SECRETS=allow.
const DEVELOPMENT_SECRETS: [&str; 8] = [
    "dev-admin-token",
    "dev-only-hs256-secret-never-use-in-production",
    "fuzz-admin-token",
    "fuzz-only-hs256-secret-of-32-bytes-or-more",
    "test-admin-token",
    "test-only-hs256-secret-of-at-least-32-bytes",
    "chaos-admin-token",
    "chaos-only-hs256-secret-of-32-bytes-or-more",
];
/// The shortest admin token or gateway secret taken (as long as an HS256 key must be).
pub const MIN_SECRET_BYTES: usize = 32;

/// The verified caller of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The user the caller is, if it is one (the admin token is nobody's).
    pub user: Option<UserId>,
    pub admin: bool,
    /// When its credential expires (a JWT's `exp`, Unix seconds); the admin token's never.
    pub expires_at: Option<u64>,
}

impl Identity {
    /// Reads the keys (a JWKS at start-up, so a wrong URL or file stops the start, not the
    /// first request) and says loudly what it trusts.
    pub async fn new(
        args: &IdentityArgs,
        admin_token: String,
        dev: DevSecrets,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !admin_token.is_empty(),
            "the admin token (ISSUER_ADMIN_TOKEN or ISSUER_ADMIN_TOKEN_FILE) must not be empty"
        );
        refuse_weak(&admin_token, "ISSUER_ADMIN_TOKEN", dev)?;
        let users = match args.user_auth {
            UserAuth::Jwt => Users::Jwt(Box::new(jwt::Verifier::new(args, dev).await?)),
            UserAuth::GatewayHeader => Users::GatewayHeader(Gateway::new(args, dev)?),
        };
        Ok(Self {
            admin_token: admin_token.into_bytes(),
            users,
        })
    }

    /// The headers a credential comes in: `Authorization`, and in gateway-header mode the
    /// gateway's secret (what the failed-authentication throttle refuses).
    pub fn credential_headers(&self) -> Vec<HeaderName> {
        match &self.users {
            Users::Jwt(_) => vec![AUTHORIZATION],
            Users::GatewayHeader(gateway) => vec![AUTHORIZATION, gateway.secret_header.clone()],
        }
    }

    pub async fn caller(&self, req: &HttpRequest) -> Result<Caller, ApiError> {
        let bearer = bearer(req)?;
        match (&self.users, bearer) {
            (Users::GatewayHeader(gateway), bearer)
                if !bearer.is_some_and(|token| self.is_admin_token(token)) =>
            {
                Ok(Caller {
                    user: Some(gateway.user(req)?),
                    admin: false,
                    expires_at: None,
                })
            }
            (_, Some(token)) => self.token(token).await,
            (_, None) => Err(ApiError::Unauthenticated(
                "a bearer token is required".into(),
            )),
        }
    }

    /// Who a token (the admin token, or in JWT mode a user's token) names: the console's
    /// sign-in, which takes a token typed into a form rather than a header.
    pub async fn token(&self, token: &str) -> Result<Caller, ApiError> {
        if self.is_admin_token(token) {
            return Ok(Caller {
                user: None,
                admin: true,
                expires_at: None,
            });
        }
        match &self.users {
            Users::Jwt(verifier) => {
                let claims = verifier.verify(token).await?;
                Ok(Caller {
                    user: claims.user,
                    admin: claims.admin,
                    expires_at: claims.expires_at,
                })
            }
            Users::GatewayHeader(_) => Err(ApiError::Unauthenticated(
                "this is not the admin token (with gateway-header users, only the admin \
                 token is a credential of this API's own)"
                    .into(),
            )),
        }
    }

    fn is_admin_token(&self, token: &str) -> bool {
        same_token(&self.admin_token, token.as_bytes())
    }
}

impl Gateway {
    fn new(args: &IdentityArgs, dev: DevSecrets) -> anyhow::Result<Self> {
        let name = |value: &str, variable: &str| {
            HeaderName::try_from(value)
                .with_context(|| format!("{variable} {value:?} is not a header name"))
        };
        let secret = args.gateway_secret()?.context(
            "ISSUER_USER_AUTH=gateway-header needs ISSUER_GATEWAY_SECRET (or \
             ISSUER_GATEWAY_SECRET_FILE): the secret the gateway sends on every request it \
             forwards, without which any client reaching this API could name any user",
        )?;
        refuse_weak(&secret, "ISSUER_GATEWAY_SECRET", dev)?;
        let gateway = Self {
            user_header: name(&args.user_header, "ISSUER_USER_HEADER")?,
            secret_header: name(&args.gateway_secret_header, "ISSUER_GATEWAY_SECRET_HEADER")?,
            secret: secret.into_bytes(),
        };
        tracing::info!(
            user_header = %gateway.user_header,
            secret_header = %gateway.secret_header,
            "ISSUER_USER_AUTH=gateway-header: the user is the one the gateway names, on \
             requests carrying the gateway's secret"
        );
        Ok(gateway)
    }

    /// The user the gateway names, on a request that proves it came through the gateway.
    fn user(&self, req: &HttpRequest) -> Result<UserId, ApiError> {
        let secret = only_one(req, &self.secret_header)?.ok_or_else(|| {
            ApiError::Unauthenticated("the request did not come through the gateway".into())
        })?;
        if !same_token(&self.secret, secret.as_bytes()) {
            return Err(ApiError::Unauthenticated(
                "the request did not come through the gateway".into(),
            ));
        }
        let header = &self.user_header;
        only_one(req, header)?
            .ok_or_else(|| {
                ApiError::Unauthenticated(format!("the gateway sent no {header} header"))
            })?
            .to_str()
            .ok()
            .and_then(|v| v.parse::<UserId>().ok())
            .ok_or_else(|| {
                ApiError::Unauthenticated(format!("the {header} header is not a user id"))
            })
    }
}

/// The one value of `header`, if any; a header sent twice is refused, since which of the
/// two a sender meant (a client's, or the proxy's appended after it) cannot be told.
fn only_one<'r>(
    req: &'r HttpRequest,
    header: &HeaderName,
) -> Result<Option<&'r actix_web::http::header::HeaderValue>, ApiError> {
    let mut values = req.headers().get_all(header);
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::Unauthenticated(format!(
            "the {header} header is sent more than once"
        )));
    }
    Ok(first)
}

impl Caller {
    /// The user this request acts for.
    pub fn user(&self) -> Result<UserId, ApiError> {
        self.user.ok_or(ApiError::Forbidden(
            "this route acts for a user, and the token names none".into(),
        ))
    }

    /// Who the caller is, for the record of an admin's action.
    pub fn who(&self) -> String {
        match self.user {
            Some(user) => format!("user {user}"),
            None => "the admin token".to_owned(),
        }
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

/// Refuses a secret anyone could know: a manifest's placeholder (`CHANGE-ME`) always, and
/// unless development secrets are allowed, one this repository prints or one shorter than
/// [`MIN_SECRET_BYTES`]. Allowing them is never implied (not even by a loopback listener).
pub(crate) fn refuse_weak(secret: &str, variable: &str, dev: DevSecrets) -> anyhow::Result<()> {
    let lower = secret.to_ascii_lowercase();
    anyhow::ensure!(
        !(lower.contains("change-me") || lower.contains("changeme")),
        "{variable} still holds a placeholder (CHANGE-ME): set a secret of your own, e.g. \
         `openssl rand -hex 32`"
    );
    if dev == DevSecrets::Allow {
        return Ok(());
    }
    anyhow::ensure!(
        !DEVELOPMENT_SECRETS.contains(&secret),
        "{variable} is a development secret this project prints: set one of your own, e.g. \
         `openssl rand -hex 32` (ISSUER_DEV_SECRETS=allow lets it through, for development only)"
    );
    anyhow::ensure!(
        secret.len() >= MIN_SECRET_BYTES,
        "{variable} is {} bytes: at least {MIN_SECRET_BYTES} are needed, e.g. `openssl rand -hex \
         32` (ISSUER_DEV_SECRETS=allow lets a short one through, for development only)",
        secret.len()
    );
    Ok(())
}

/// The bearer token, if the request has an Authorization header; any other scheme, a
/// header that is not text, or two headers, are refused rather than ignored.
fn bearer(req: &HttpRequest) -> Result<Option<&str>, ApiError> {
    let Some(value) = only_one(req, &AUTHORIZATION)? else {
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
    use super::{DevSecrets, refuse_weak, same_token};

    #[test]
    fn a_placeholder_secret_is_refused_with_the_reason() {
        for placeholder in [
            "CHANGE-ME",
            "change-me-please",
            "ChangeMe123",
            "CHANGE-ME-TO-32-OR-MORE-RANDOM-BYTES",
        ] {
            for dev in [DevSecrets::Refuse, DevSecrets::Allow] {
                let err = refuse_weak(placeholder, "ISSUER_ADMIN_TOKEN", dev).unwrap_err();
                assert!(
                    err.to_string().contains("placeholder"),
                    "{placeholder}: {err}"
                );
            }
        }
        assert!(refuse_weak("dev-admin-token", "ISSUER_ADMIN_TOKEN", DevSecrets::Allow).is_ok());
        let strong = "b".repeat(super::MIN_SECRET_BYTES);
        assert!(refuse_weak(&strong, "ISSUER_ADMIN_TOKEN", DevSecrets::Refuse).is_ok());
        assert!(refuse_weak(&strong[1..], "ISSUER_ADMIN_TOKEN", DevSecrets::Refuse).is_err());
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
