//! How both services reach PostgreSQL: plain, or over TLS with the server's certificate and
//! host name verified (rustls), for the pool and the migrations alike.
//!
//! TLS is on when the URL asks for it (`sslmode=require`, `verify-ca` or `verify-full`) or a
//! CA file or client certificate is given. The certificate is then always verified, against that CA or the
//! system's roots: `require` is not allowed to mean "encrypted but anyone's", which is how
//! libpq reads it. tokio-postgres knows only `disable`, `prefer` and `require`, so the
//! `verify-*` modes reach it as `require`, which with this verifying connector is what they
//! mean.

use std::path::Path;
use std::sync::Arc;

use diesel::ConnectionResult;
use diesel_async::AsyncPgConnection;

/// The files TLS to PostgreSQL may use; none set leaves the URL to decide.
#[derive(Debug, Default, Clone, Copy)]
pub struct PgTlsFiles<'a> {
    /// The CA of the server's certificate (unset: the system's roots).
    pub ca: Option<&'a Path>,
    /// A client certificate and its key, for servers that ask for one (`clientcert=`).
    pub client: Option<(&'a Path, &'a Path)>,
}

#[derive(Debug, thiserror::Error)]
pub enum PgTlsError {
    #[error("cannot read {path}: {error}")]
    CaFile {
        path: String,
        error: rustls::pki_types::pem::Error,
    },
    #[error("the client certificate or key does not fit: {0}")]
    ClientCertificate(rustls::Error),
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
    pub fn new(url: &str, files: PgTlsFiles<'_>) -> Result<Self, PgTlsError> {
        let mode = url
            .split_once('?')
            .into_iter()
            .flat_map(|(_, query)| query.split('&'))
            .find_map(|pair| pair.strip_prefix("sslmode="));
        let tls = files.ca.is_some()
            || files.client.is_some()
            || mode.is_some_and(|mode| TLS_MODES.contains(&mode));
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
            tls: Some(Arc::new(client_config(files)?)),
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

fn certificates(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, PgTlsError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(path)
        .and_then(|all| all.collect::<Result<Vec<_>, _>>())
        .map_err(|error| PgTlsError::CaFile {
            path: path.display().to_string(),
            error,
        })
}

fn client_config(files: PgTlsFiles<'_>) -> Result<rustls::ClientConfig, PgTlsError> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match files.ca {
        Some(path) => {
            let shown = path.display().to_string();
            let certificates = certificates(path)?;
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
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    match files.client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let key = PrivateKeyDer::from_pem_file(key).map_err(|error| PgTlsError::CaFile {
                path: key.display().to_string(),
                error,
            })?;
            builder
                .with_client_auth_cert(certificates(cert)?, key)
                .map_err(PgTlsError::ClientCertificate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_follows_the_url_and_verify_modes_reach_tokio_postgres_as_require() {
        let none = PgTlsFiles::default();
        let plain = PgTarget::new("postgres://u:p@db/x", none).unwrap();
        assert!(!plain.uses_tls());
        let prefer = PgTarget::new("postgres://u:p@db/x?sslmode=prefer", none).unwrap();
        assert!(
            !prefer.uses_tls(),
            "prefer stays as it was: plain unless asked"
        );
        for mode in TLS_MODES {
            let url = format!("postgres://u:p@db/x?sslmode={mode}&a=b");
            let target = PgTarget::new(&url, none).unwrap();
            assert!(target.uses_tls(), "{mode}");
            assert_eq!(target.url(), "postgres://u:p@db/x?sslmode=require&a=b");
        }
    }
}
