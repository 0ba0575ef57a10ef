//! Verifying a bearer JWT: the signature, then `exp`, `nbf`, issuer and audience, then how
//! long it lives and when it was issued, then the user and role claims.
//!
//! Each algorithm has exactly one kind of key. HS256 is verified only with the shared
//! secret; RS256, ES256 and EdDSA only with a JWKS key whose own algorithm is the token's.
//! So a token that names HS256 is never checked against a public key (the algorithm
//! confusion attack), and `alg: none` names no algorithm at all.

use anyhow::Context;
use coupon_core::domain::UserId;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::{Map, Value};

use super::jwks::{self, KeyError, KeySet};
use crate::config::{DevSecrets, IdentityArgs};

/// What a verified token says about its bearer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    pub user: Option<UserId>,
    pub admin: bool,
    /// When the token expires (`exp`, Unix seconds): what it grants ends then.
    pub expires_at: Option<u64>,
}

/// Why a token was refused; each answers 401, but for `KeysUnavailable` (503: the keys
/// could not be read, so whether the token is good is unknown).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("the token is malformed or names an unsupported algorithm")]
    Malformed,
    #[error("the token's algorithm {0:?} is not accepted here")]
    Algorithm(Algorithm),
    #[error("the token names no key (kid)")]
    NoKeyId,
    #[error("the token's key {0:?} is not one of the issuer's keys")]
    UnknownKey(String),
    #[error("the token's signature is not valid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is from another issuer")]
    Issuer,
    #[error("the token is for another audience")]
    Audience,
    #[error("the token lives longer than this API accepts")]
    Lifetime,
    #[error("the token was issued in the future")]
    IssuedAhead,
    #[error("the token lacks the {0} claim")]
    MissingClaim(String),
    #[error("the token's {0} claim is not a user id")]
    User(String),
    #[error("the signing keys cannot be read")]
    KeysUnavailable(#[source] jwks::FetchError),
}

impl From<KeyError> for Refusal {
    fn from(err: KeyError) -> Self {
        match err {
            KeyError::Unavailable(err) => Self::KeysUnavailable(err),
            KeyError::Unknown(kid) => Self::UnknownKey(kid),
            KeyError::Algorithm(alg) => Self::Algorithm(alg),
        }
    }
}

pub struct Verifier {
    hmac: Option<DecodingKey>,
    keys: Option<KeySet>,
    /// One per accepted algorithm, each allowing that algorithm alone.
    validations: Vec<(Algorithm, Validation)>,
    user_claim: String,
    roles_claim: String,
    admin_role: String,
    /// The longest `exp − iat` taken (or, without `iat`, `exp − now`), in seconds.
    max_lifetime: u64,
    /// How far ahead of our clock `iat` may be, leeway included, in seconds.
    max_future_iat: u64,
}

/// The claim an issuer and audience come from, configured or waived, never left open by
/// omission.
fn required(
    value: Option<&str>,
    waived: bool,
    variable: &str,
    waiver: &str,
) -> anyhow::Result<Option<String>> {
    match (value.filter(|v| !v.trim().is_empty()), waived) {
        (Some(value), false) => Ok(Some(value.to_owned())),
        (None, true) => Ok(None),
        (Some(_), true) => anyhow::bail!("set {variable} or {waiver}, not both"),
        (None, false) => anyhow::bail!(
            "set {variable} to the value your identity provider's tokens carry, or waive the \
             check with {waiver}=true (tokens issued to other applications are then accepted)"
        ),
    }
}

impl Verifier {
    pub async fn new(args: &IdentityArgs, dev: DevSecrets) -> anyhow::Result<Self> {
        let issuer = required(
            args.jwt_issuer.as_deref(),
            args.jwt_any_issuer,
            "ISSUER_JWT_ISSUER",
            "ISSUER_JWT_ANY_ISSUER",
        )?;
        let audience = required(
            args.jwt_audience.as_deref(),
            args.jwt_any_audience,
            "ISSUER_JWT_AUDIENCE",
            "ISSUER_JWT_ANY_AUDIENCE",
        )?;
        let hmac = args
            .jwt_secret()?
            .map(|secret| {
                super::refuse_weak(&secret, "ISSUER_JWT_SECRET", dev)?;
                anyhow::ensure!(
                    secret.len() >= 32,
                    "the HS256 secret must be at least 32 bytes (RFC 7518 §3.2: as long as the hash)"
                );
                DecodingKey::from_secret(secret.as_bytes()).context("unusable HS256 secret")
            })
            .transpose()?;
        let keys = match (&args.jwt_jwks_file, &args.jwt_jwks_url) {
            (Some(_), Some(_)) => {
                anyhow::bail!("set ISSUER_JWT_JWKS_FILE or ISSUER_JWT_JWKS_URL, not both")
            }
            (Some(file), None) => Some(KeySet::load(jwks::Source::File(file.clone())).await?),
            (None, Some(url)) => {
                Some(KeySet::load(jwks::Source::url(url, args.jwt_jwks_ca_file.as_deref())?).await?)
            }
            (None, None) => None,
        };
        anyhow::ensure!(
            hmac.is_some() || keys.is_some(),
            "ISSUER_USER_AUTH=jwt needs keys: ISSUER_JWT_SECRET (or ISSUER_JWT_SECRET_FILE) for \
             HS256, or ISSUER_JWT_JWKS_FILE / ISSUER_JWT_JWKS_URL for RS256, ES256 and EdDSA"
        );
        let mut algorithms = Vec::new();
        if hmac.is_some() {
            algorithms.push(Algorithm::HS256);
        }
        if keys.is_some() {
            algorithms.extend(jwks::ALGORITHMS);
        }
        let validations = algorithms
            .into_iter()
            .map(|alg| {
                let validation = validation(
                    alg,
                    args.jwt_leeway_secs,
                    issuer.as_deref(),
                    audience.as_deref(),
                );
                (alg, validation)
            })
            .collect();
        tracing::info!(
            hs256 = hmac.is_some(),
            jwks = keys.is_some(),
            issuer = issuer.as_deref().unwrap_or("(any, waived)"),
            audience = audience.as_deref().unwrap_or("(any, waived)"),
            max_lifetime_secs = args.jwt_max_lifetime_secs,
            user_claim = %args.jwt_user_claim,
            "verifying users' bearer tokens"
        );
        Ok(Self {
            hmac,
            keys,
            validations,
            user_claim: args.jwt_user_claim.clone(),
            roles_claim: args.jwt_roles_claim.clone(),
            admin_role: args.jwt_admin_role.clone(),
            max_lifetime: args.jwt_max_lifetime_secs,
            max_future_iat: args.jwt_leeway_secs + args.jwt_max_future_iat_secs,
        })
    }

    pub async fn verify(&self, token: &str) -> Result<Claims, Refusal> {
        let header = decode_header(token).map_err(|_| Refusal::Malformed)?;
        let alg = header.alg;
        let validation = self
            .validations
            .iter()
            .find_map(|(accepted, validation)| (*accepted == alg).then_some(validation))
            .ok_or(Refusal::Algorithm(alg))?;
        let public;
        let key = if alg == Algorithm::HS256 {
            self.hmac.as_ref().ok_or(Refusal::Algorithm(alg))?
        } else {
            let keys = self.keys.as_ref().ok_or(Refusal::Algorithm(alg))?;
            let kid = header.kid.as_deref().ok_or(Refusal::NoKeyId)?;
            public = keys.key(kid, alg).await?;
            &*public
        };
        let claims = decode::<Map<String, Value>>(token, key, validation)
            .map_err(|err| match err.into_kind() {
                ErrorKind::InvalidSignature => Refusal::Signature,
                ErrorKind::ExpiredSignature => Refusal::Expired,
                ErrorKind::ImmatureSignature => Refusal::NotYetValid,
                ErrorKind::InvalidIssuer => Refusal::Issuer,
                ErrorKind::InvalidAudience => Refusal::Audience,
                ErrorKind::MissingRequiredClaim(claim) => Refusal::MissingClaim(claim),
                ErrorKind::InvalidAlgorithm => Refusal::Algorithm(alg),
                _ => Refusal::Malformed,
            })?
            .claims;
        self.timely(&claims)?;
        Ok(Claims {
            user: self.user(&claims)?,
            admin: self.admin(&claims),
            expires_at: claims
                .get("exp")
                .and_then(Value::as_f64)
                .map(|exp| exp as u64),
        })
    }

    /// A token issued ahead of our clock, or living longer than allowed, is refused: a
    /// leaked one would otherwise work for years. `exp` is known to be there and valid.
    fn timely(&self, claims: &Map<String, Value>) -> Result<(), Refusal> {
        let now = jsonwebtoken::get_current_timestamp();
        let seconds = |name: &str| claims.get(name).and_then(Value::as_f64);
        let exp = seconds("exp").ok_or(Refusal::Malformed)?;
        let lifetime = match seconds("iat") {
            Some(iat) if iat > now.saturating_add(self.max_future_iat) as f64 => {
                return Err(Refusal::IssuedAhead);
            }
            Some(iat) => exp - iat,
            None => exp - now as f64,
        };
        if lifetime > self.max_lifetime as f64 {
            return Err(Refusal::Lifetime);
        }
        Ok(())
    }

    /// The user claim, a string or a number; absent, the token names no user (an admin's
    /// may not).
    fn user(&self, claims: &Map<String, Value>) -> Result<Option<UserId>, Refusal> {
        let text = match claims.get(&self.user_claim) {
            None => return Ok(None),
            Some(Value::String(text)) => text.clone(),
            Some(Value::Number(number)) => number.to_string(),
            Some(_) => return Err(Refusal::User(self.user_claim.clone())),
        };
        text.parse()
            .map(Some)
            .map_err(|_| Refusal::User(self.user_claim.clone()))
    }

    /// Whether the roles claim (one string, or an array of strings) holds the admin role.
    fn admin(&self, claims: &Map<String, Value>) -> bool {
        match claims.get(&self.roles_claim) {
            Some(Value::String(role)) => *role == self.admin_role,
            Some(Value::Array(roles)) => roles
                .iter()
                .any(|role| role.as_str() == Some(self.admin_role.as_str())),
            _ => false,
        }
    }
}

/// Every token must expire; issuer and audience are required unless waived. `nbf` is
/// checked when present. The leeway absorbs clock skew between the issuer and us.
fn validation(
    alg: Algorithm,
    leeway: u64,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = leeway;
    validation.validate_nbf = true;
    let mut required = vec!["exp"];
    if let Some(issuer) = issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    match audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        // Waived (ISSUER_JWT_ANY_AUDIENCE): an `aud` claim is not ours to judge.
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}
