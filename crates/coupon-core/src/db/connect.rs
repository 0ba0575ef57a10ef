//! How both services reach PostgreSQL: plain, or over TLS with the server's certificate and
//! host name verified (rustls), for the pool and the migrations alike.
//!
//! TLS is on when the URL asks for it (`sslmode=require`, `verify-ca` or `verify-full`) or a
//! CA file is given. The certificate is then always verified, against that CA or the
//! system's roots: `require` is not allowed to mean "encrypted but anyone's", which is how
//! libpq reads it. tokio-postgres knows only `disable`, `prefer` and `require`, so the
//! `verify-*` modes reach it as `require`, which with this verifying connector is what they
//! mean.

use std::path::Path;
use std::sync::Arc;

use diesel::ConnectionResult;
use diesel_async::AsyncPgConnection;

#[derive(Debug, thiserror::Error)]
pub enum PgTlsError {
    #[error("cannot read DATABASE_CA_FILE {path}: {error}")]
    CaFile {
        path: String,
        error: rustls::pki_types::pem::Error,
    },
    #[error("DATABASE_CA_FILE {path} holds no certificate")]
    NoCertificate { path: String },
    #[error("DATABASE_CA_FILE {path}: {error}")]
    BadCertificate { path: String, error: rustls::Error },
}

/// Where PostgreSQL is, and how to talk to it.
#[derive(Clone)]
pub struct PgTarget {
    url: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

const TLS_MODES: [&str; 3] = ["require", "verify-ca", "verify-full"];

impl PgTarget {
    pub fn new(url: &str, ca_file: Option<&Path>) -> Result<Self, PgTlsError> {
        let mode = url
            .split_once('?')
            .into_iter()
            .flat_map(|(_, query)| query.split('&'))
            .find_map(|pair| pair.strip_prefix("sslmode="));
        let tls = ca_file.is_some() || mode.is_some_and(|mode| TLS_MODES.contains(&mode));
        if !tls {
            return Ok(Self {
                url: url.to_owned(),
                tls: None,
            });
        }
        let url = match mode {
            Some(mode) => url.replace(&format!("sslmode={mode}"), "sslmode=require"),
            None if url.contains('?') => format!("{url}&sslmode=require"),
            None => format!("{url}?sslmode=require"),
        };
        Ok(Self {
            url,
            tls: Some(Arc::new(client_config(ca_file)?)),
        })
    }

    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// One connection, as the pool and the migrations open them.
    pub async fn connect(&self) -> ConnectionResult<AsyncPgConnection> {
        let Some(tls) = &self.tls else {
            return <AsyncPgConnection as diesel_async::AsyncConnection>::establish(&self.url)
                .await;
        };
        let connector = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
        let (client, connection) = tokio_postgres::connect(&self.url, connector)
            .await
            .map_err(|e| diesel::ConnectionError::BadConnection(with_causes(&e)))?;
        AsyncPgConnection::try_from_client_and_connection(client, connection).await
    }
}

/// The error and every cause under it: tokio-postgres says "error performing TLS
/// handshake" and keeps why (an unknown issuer, a name mismatch) in its source.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text = format!("{text}: {inner_text}");
        }
        cause = inner.source();
    }
    text
}

fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, PgTlsError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let shown = path.display().to_string();
            let certificates = CertificateDer::pem_file_iter(path)
                .and_then(|all| all.collect::<Result<Vec<_>, _>>())
                .map_err(|error| PgTlsError::CaFile {
                    path: shown.clone(),
                    error,
                })?;
            if certificates.is_empty() {
                return Err(PgTlsError::NoCertificate { path: shown });
            }
            for certificate in certificates {
                roots
                    .add(certificate)
                    .map_err(|error| PgTlsError::BadCertificate {
                        path: shown.clone(),
                        error,
                    })?;
            }
        }
        None => {
            // Unreadable system certificates are skipped; the handshake says if none fit.
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_follows_the_url_and_verify_modes_reach_tokio_postgres_as_require() {
        let plain = PgTarget::new("postgres://u:p@db/x", None).unwrap();
        assert!(!plain.uses_tls());
        let prefer = PgTarget::new("postgres://u:p@db/x?sslmode=prefer", None).unwrap();
        assert!(
            !prefer.uses_tls(),
            "prefer stays as it was: plain unless asked"
        );
        for mode in TLS_MODES {
            let target =
                PgTarget::new(&format!("postgres://u:p@db/x?sslmode={mode}&a=b"), None).unwrap();
            assert!(target.uses_tls(), "{mode}");
            assert_eq!(target.url(), "postgres://u:p@db/x?sslmode=require&a=b");
        }
    }
}
