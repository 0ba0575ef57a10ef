//! How the bench proves to issuer-api which user it is: a JWT signed with the development
//! HS256 secret (what `make run`, the demo and the chaos suite configure), or the header a
//! gateway would set (ISSUER_USER_AUTH=gateway-header), to measure what verifying costs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header, encode};
use serde::Serialize;

/// Long enough for the longest run; a development token is never shown to anyone.
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The `iss` and `aud` of every development token: what `make run`, the demo, the chaos
/// suite and the tests configure the API to require (ISSUER_JWT_ISSUER,
/// ISSUER_JWT_AUDIENCE), as a real login's tokens name the login and this API.
pub const DEV_ISSUER: &str = "coupon-issuance-dev";
pub const DEV_AUDIENCE: &str = "coupon-api";

#[derive(Clone)]
pub enum UserCredentials {
    Jwt(EncodingKey),
    /// The gateway's user header, and its secret header with the secret.
    GatewayHeader {
        user_header: String,
        secret_header: String,
        secret: String,
    },
}

#[derive(Serialize)]
struct Claims {
    sub: String,
    iss: &'static str,
    aud: &'static str,
    iat: u64,
    exp: u64,
}

impl UserCredentials {
    pub fn jwt(secret: &str) -> jsonwebtoken::errors::Result<Self> {
        EncodingKey::from_secret(secret.as_bytes()).map(Self::Jwt)
    }

    /// The headers (name, value) that say "I am `user`".
    pub fn headers_for(&self, user: i64) -> Vec<(&str, String)> {
        match self {
            Self::Jwt(key) => vec![("authorization", format!("Bearer {}", mint(key, user)))],
            Self::GatewayHeader {
                user_header,
                secret_header,
                secret,
            } => vec![
                (user_header, user.to_string()),
                (secret_header, secret.clone()),
            ],
        }
    }
}

/// An HS256 token for `user`, issued now and valid for an hour.
pub fn mint(key: &EncodingKey, user: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let claims = Claims {
        sub: user.to_string(),
        iss: DEV_ISSUER,
        aud: DEV_AUDIENCE,
        iat: now.as_secs(),
        exp: (now + TOKEN_LIFETIME).as_secs(),
    };
    // HS256 with a key already built cannot fail to sign; an empty token would be refused
    // by the API with 401, which the bench counts.
    encode(&Header::default(), &claims, key).unwrap_or_default()
}
