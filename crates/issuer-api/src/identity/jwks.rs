//! The issuer's public keys (a JSON Web Key Set), from a file or a URL, kept in memory.
//!
//! A token signed with a key we do not know yet (the issuer rotated) makes us read the set
//! again, at most once per [`MIN_REFRESH`], so a stranger sending made-up `kid`s cannot
//! make us hammer the issuer. The set is also read again when older than [`MAX_AGE`], so a
//! key the issuer withdrew stops working.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::Value;

/// The public-key algorithms a JWKS key may be for.
pub const ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
const MIN_REFRESH: Duration = Duration::from_secs(10);
const MAX_AGE: Duration = Duration::from_secs(300);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A key set is a few kilobytes; this bounds what a misconfigured URL can make us read.
const MAX_BYTES: usize = 1024 * 1024;

pub enum Source {
    File(PathBuf),
    Url {
        url: String,
        tls: Arc<rustls::ClientConfig>,
    },
}

/// Why no key could be had for a token.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The set could not be read, and the key is not among the keys we have.
    #[error(transparent)]
    Unavailable(FetchError),
    #[error("the token's key {0:?} is not one of the issuer's keys")]
    Unknown(String),
    /// The key is for another algorithm than the token names.
    #[error("the token's algorithm {0:?} is not accepted for its key")]
    Algorithm(Algorithm),
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot read {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot fetch {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("not a JSON Web Key Set: {0}")]
    Json(#[from] serde_json::Error),
}

struct Keys {
    by_kid: HashMap<String, (Algorithm, Arc<DecodingKey>)>,
    read_at: Instant,
}

pub struct KeySet {
    source: Source,
    keys: RwLock<Keys>,
    /// One reading at a time; the time of the last attempt and whether it failed.
    reading: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

impl Source {
    /// A URL source; https is verified against the system's trusted roots.
    pub fn url(url: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            url.starts_with("https://") || url.starts_with("http://"),
            "ISSUER_JWT_JWKS_URL must be an http(s) URL"
        );
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            // A certificate the store cannot parse is skipped, as every TLS client does.
            let _ = roots.add(cert);
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("TLS set-up")?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self::Url {
            url: url.to_owned(),
            tls: Arc::new(tls),
        })
    }

    async fn read(&self) -> Result<Vec<u8>, FetchError> {
        match self {
            // A few kilobytes, read rarely: not worth a thread hop.
            Self::File(path) => std::fs::read(path).map_err(|source| FetchError::File {
                path: path.display().to_string(),
                source,
            }),
            Self::Url { url, tls } => {
                let failed = |reason: String| FetchError::Url {
                    url: url.clone(),
                    reason,
                };
                let client = awc::Client::builder()
                    .connector(awc::Connector::new().rustls_0_23(tls.clone()))
                    .timeout(FETCH_TIMEOUT)
                    .finish();
                let mut response = client
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                if !response.status().is_success() {
                    return Err(failed(format!("answered {}", response.status())));
                }
                let body = response
                    .body()
                    .limit(MAX_BYTES)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                Ok(body.to_vec())
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Url { url, .. } => url.clone(),
        }
    }
}

impl KeySet {
    /// Reads the set once; a source that cannot be read stops the start.
    pub async fn load(source: Source) -> anyhow::Result<Self> {
        let by_kid = parse(&source.read().await?)
            .with_context(|| format!("the JWKS at {}", source.describe()))?;
        anyhow::ensure!(
            !by_kid.is_empty(),
            "the JWKS at {} has no usable RS256, ES256 or EdDSA key with a kid",
            source.describe()
        );
        tracing::info!(source = %source.describe(), keys = by_kid.len(), "JWKS loaded");
        Ok(Self {
            source,
            keys: RwLock::new(Keys {
                by_kid,
                read_at: Instant::now(),
            }),
            reading: tokio::sync::Mutex::new(None),
        })
    }

    /// The key `kid` names, if it is for `alg`: a key of another algorithm is refused, so
    /// no token picks how our key is used.
    pub async fn key(&self, kid: &str, alg: Algorithm) -> Result<Arc<DecodingKey>, KeyError> {
        if let Some((found, fresh)) = self.lookup(kid)
            && fresh
        {
            return matching(kid, found, alg);
        }
        let read_failed = self.refresh().await;
        match (self.lookup(kid), read_failed) {
            (Some((found, _)), _) => matching(kid, found, alg),
            (None, Some(err)) => Err(KeyError::Unavailable(err)),
            (None, None) => Err(KeyError::Unknown(kid.to_owned())),
        }
    }

    fn lookup(&self, kid: &str) -> Option<((Algorithm, Arc<DecodingKey>), bool)> {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let fresh = keys.read_at.elapsed() < MAX_AGE;
        keys.by_kid.get(kid).cloned().map(|key| (key, fresh))
    }

    /// Reads the set again unless another caller just did; returns why the last reading
    /// failed, if it did (the old keys stay in use meanwhile).
    async fn refresh(&self) -> Option<FetchError> {
        let mut last = self.reading.lock().await;
        if let Some((at, failed)) = *last
            && at.elapsed() < MIN_REFRESH
        {
            return failed.then(|| FetchError::Url {
                url: self.source.describe(),
                reason: "the last reading failed moments ago".into(),
            });
        }
        let result = self.source.read().await.and_then(|bytes| parse(&bytes));
        *last = Some((Instant::now(), result.is_err()));
        match result {
            Ok(by_kid) => {
                tracing::info!(keys = by_kid.len(), "JWKS read again");
                let mut keys = self
                    .keys
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                *keys = Keys {
                    by_kid,
                    read_at: Instant::now(),
                };
                None
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the JWKS again; keeping the keys we have");
                Some(err)
            }
        }
    }
}

fn matching(
    kid: &str,
    (key_alg, key): (Algorithm, Arc<DecodingKey>),
    alg: Algorithm,
) -> Result<Arc<DecodingKey>, KeyError> {
    if key_alg == alg {
        Ok(key)
    } else {
        tracing::debug!(kid, ?key_alg, token_alg = ?alg, "token names a key of another algorithm");
        Err(KeyError::Algorithm(alg))
    }
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<Value>,
}

/// The set's signing keys by kid. A key we cannot use (no kid, for encryption, symmetric,
/// an unsupported curve) is skipped with a warning rather than failing the whole set.
fn parse(bytes: &[u8]) -> Result<HashMap<String, (Algorithm, Arc<DecodingKey>)>, FetchError> {
    let raw: RawSet = serde_json::from_slice(bytes)?;
    let mut by_kid = HashMap::new();
    for value in raw.keys {
        let usable = serde_json::from_value::<Jwk>(value)
            .map_err(|e| e.to_string())
            .and_then(|jwk| usable(&jwk).map(|alg_key| (jwk.common.key_id, alg_key)));
        match usable {
            Ok((Some(kid), (alg, key))) => {
                by_kid.insert(kid, (alg, Arc::new(key)));
            }
            Ok((None, _)) => tracing::warn!("JWKS key without a kid skipped"),
            Err(reason) => tracing::warn!(%reason, "JWKS key skipped"),
        }
    }
    Ok(by_kid)
}

fn usable(jwk: &Jwk) -> Result<(Algorithm, DecodingKey), String> {
    if matches!(jwk.common.public_key_use, Some(ref used) if *used != PublicKeyUse::Signature) {
        return Err("not a signing key".into());
    }
    // The key's own algorithm if it states one, else the one its type implies.
    let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
        (Some(KeyAlgorithm::RS256), AlgorithmParameters::RSA(_))
        | (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
        (Some(KeyAlgorithm::ES256), AlgorithmParameters::EllipticCurve(ec))
        | (None, AlgorithmParameters::EllipticCurve(ec))
            if ec.curve == EllipticCurve::P256 =>
        {
            Algorithm::ES256
        }
        (Some(KeyAlgorithm::EdDSA), AlgorithmParameters::OctetKeyPair(okp))
        | (None, AlgorithmParameters::OctetKeyPair(okp))
            if okp.curve == EllipticCurve::Ed25519 =>
        {
            Algorithm::EdDSA
        }
        // Symmetric keys have no place in a published set: verifying with one would let
        // anyone who read the set sign tokens.
        (_, AlgorithmParameters::OctetKey(_)) => return Err("symmetric key".into()),
        (alg, _) => return Err(format!("unsupported key or algorithm {alg:?}")),
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    Ok((alg, key))
}
