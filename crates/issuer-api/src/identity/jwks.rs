//! The issuer's public keys (a JSON Web Key Set), from a file or a URL, kept in memory.
//!
//! A token signed with a key we do not know yet (the issuer rotated) makes us read the set
//! again, at most once per [`MIN_REFRESH`], so a stranger sending made-up `kid`s cannot
//! make us hammer the issuer. The set is also read again when older than [`MAX_AGE`], so a
//! key the issuer withdrew stops working.
//!
//! A reading is counted from its start and runs on a task of its own, which every request
//! that needs it joins without holding a lock: one that hangs, or whose request goes away,
//! still spaces the next. A URL is https only and its redirects are not followed, so
//! nobody on the path, and no other server, can hand us keys.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
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

#[derive(Clone)]
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

/// A reading of the set: what it failed with, if it did. Shared by every request that
/// waits for it.
type Reading = Shared<BoxFuture<'static, Result<(), Arc<str>>>>;

pub struct KeySet {
    source: Source,
    keys: Arc<RwLock<Keys>>,
    /// When the last reading started, and that reading (under way or done). Never held
    /// across an await.
    last: Mutex<Option<(Instant, Reading)>>,
}

impl Source {
    /// A URL source: https only, verified against the system's trusted roots and, if given,
    /// the CA in `ca_file`.
    pub fn url(url: &str, ca_file: Option<&Path>) -> anyhow::Result<Self> {
        anyhow::ensure!(
            url.starts_with("https://"),
            "ISSUER_JWT_JWKS_URL must be an https URL: keys read over http can be replaced by \
             anyone on the path (a local file is ISSUER_JWT_JWKS_FILE)"
        );
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            // A certificate the store cannot parse is skipped, as every TLS client does.
            let _ = roots.add(cert);
        }
        if let Some(ca_file) = ca_file {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            let mut read = || -> anyhow::Result<usize> {
                let mut added = 0;
                for cert in CertificateDer::pem_file_iter(ca_file)? {
                    roots.add(cert?)?;
                    added += 1;
                }
                Ok(added)
            };
            let added =
                read().with_context(|| format!("ISSUER_JWT_JWKS_CA_FILE {}", ca_file.display()))?;
            anyhow::ensure!(
                added > 0,
                "ISSUER_JWT_JWKS_CA_FILE {} holds no certificate",
                ca_file.display()
            );
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
                    .disable_redirects()
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
            keys: Arc::new(RwLock::new(Keys {
                by_kid,
                read_at: Instant::now(),
            })),
            last: Mutex::new(None),
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

    /// Reads the set again unless a reading started less than [`MIN_REFRESH`] ago, in
    /// which case that one is joined (or its outcome taken); returns why the reading
    /// failed, if it did (the old keys stay in use meanwhile).
    async fn refresh(&self) -> Option<FetchError> {
        let reading = {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            match &*last {
                Some((started, reading)) if started.elapsed() < MIN_REFRESH => reading.clone(),
                _ => {
                    let reading = self.start_reading();
                    *last = Some((Instant::now(), reading.clone()));
                    reading
                }
            }
        };
        reading.await.err().map(|reason| FetchError::Url {
            url: self.source.describe(),
            reason: reason.to_string(),
        })
    }

    /// A reading on a task of its own: the request that started it may go away, and the
    /// others waiting for it still get its outcome.
    fn start_reading(&self) -> Reading {
        let (source, keys) = (self.source.clone(), self.keys.clone());
        // awc's futures are not Send: the task runs on this worker's thread.
        let task = actix_web::rt::spawn(async move {
            let read = source.read().await.and_then(|bytes| parse(&bytes));
            match read {
                Ok(by_kid) => {
                    tracing::info!(keys = by_kid.len(), "JWKS read again");
                    *keys.write().unwrap_or_else(|p| p.into_inner()) = Keys {
                        by_kid,
                        read_at: Instant::now(),
                    };
                    Ok(())
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the JWKS again; keeping the keys we have");
                    Err(Arc::from(err.to_string()))
                }
            }
        });
        async move {
            task.await
                .unwrap_or_else(|stopped| Err(Arc::from(format!("the reading stopped: {stopped}"))))
        }
        .boxed()
        .shared()
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
