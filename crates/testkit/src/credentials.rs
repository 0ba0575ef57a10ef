//! How the bench proves to issuer-api which user it is: a JWT signed with the development
//! HS256 secret (what `make run`, the demo and the chaos suite configure), or the header a
//! gateway would set (ISSUER_USER_AUTH=gateway-header), to measure what verifying costs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header, encode};
use serde::Serialize;

/// Long enough for the longest run; a development token is never shown to anyone.
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

#[derive(Clone)]
pub enum UserCredentials {
    Jwt(EncodingKey),
    GatewayHeader(String),
}

#[derive(Serialize)]
struct Claims {
    sub: String,
    exp: u64,
}

impl UserCredentials {
    pub fn jwt(secret: &str) -> jsonwebtoken::errors::Result<Self> {
        EncodingKey::from_secret(secret.as_bytes()).map(Self::Jwt)
    }

    /// The header (name, value) that says "I am `user`".
    pub fn header_for(&self, user: i64) -> (&str, String) {
        match self {
            Self::Jwt(key) => ("authorization", format!("Bearer {}", mint(key, user))),
            Self::GatewayHeader(name) => (name, user.to_string()),
        }
    }
}

/// An HS256 token for `user`, valid for an hour.
pub fn mint(key: &EncodingKey, user: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let claims = Claims {
        sub: user.to_string(),
        exp: (now + TOKEN_LIFETIME).as_secs(),
    };
    // HS256 with a key already built cannot fail to sign; an empty token would be refused
    // by the API with 401, which the bench counts.
    encode(&Header::default(), &claims, key).unwrap_or_default()
}
