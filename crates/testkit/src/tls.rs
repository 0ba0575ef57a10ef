//! A test certificate authority, made with openssl on the spot: a CA, a server certificate
//! it signed for 127.0.0.1 and localhost, a client certificate it signed for the
//! PostgreSQL user `PG_USER`, and another CA that signed nothing here (the "wrong CA" a
//! misconfigured client trusts).

// A panic here is exactly the failure report wanted; a CA is made on purpose, never by default.
#![allow(clippy::unwrap_used, clippy::new_without_default)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct TestCa {
    pub dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A key and a certificate `<name>.key`, `<name>.pem` for `subject`, signed by the CA with
/// these extensions.
fn issue(dir: &Path, name: &str, subject: &str, extensions: &str) {
    let (key, csr, pem, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&ext), extensions).unwrap();
    let request = ["req", "-newkey", "rsa:2048", "-nodes", "-subj", subject];
    openssl(
        dir,
        &[&request[..], &["-keyout", &key, "-out", &csr]].concat(),
    );
    let sign = [
        "x509",
        "-req",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
    ];
    let files = ["-days", "2", "-in", &csr, "-extfile", &ext, "-out", &pem];
    openssl(dir, &[&sign[..], &files[..]].concat());
}

impl TestCa {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("coupon-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        for ca in ["ca", "wrong-ca"] {
            let (key, pem) = (format!("{ca}.key"), format!("{ca}.pem"));
            let subject = format!("/CN=coupon-issuance test {ca}");
            let request = [
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ];
            let files = ["-keyout", &key, "-out", &pem, "-subj", &subject];
            openssl(&dir, &[&request[..], &files[..]].concat());
        }
        issue(
            &dir,
            "server",
            "/CN=localhost",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
        issue(
            &dir,
            "client",
            &format!("/CN={PG_USER}"),
            "extendedKeyUsage=clientAuth\n",
        );
        Self { dir }
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// A TLS server's configuration with the server certificate (for 127.0.0.1 and
    /// localhost), for a test's own HTTPS server.
    pub fn server_config(&self) -> rustls::ServerConfig {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(self.dir.join("server.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(self.dir.join("server.key")).unwrap();
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap()
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A PostgreSQL cluster of its own that takes TLS connections only (`hostssl`, SCRAM
/// passwords), with the test CA's server certificate; stopped and removed when dropped.
pub struct TlsPostgres {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
}

pub const PG_USER: &str = "coupon_tls";
pub const PG_PASSWORD: &str = "tls-test-password";

/// As the postgres user when we are root (initdb refuses root), else as ourselves.
fn as_postgres(program: &Path, args: &[&str]) {
    let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    let mut command = if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    };
    let output = command
        .args(args)
        .output()
        .expect("the PostgreSQL tools run");
    assert!(
        output.status.success(),
        "{program:?} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Whether the cluster asks clients for a certificate as well as the password.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ClientCertificate {
    NotAsked,
    Required,
}

impl TlsPostgres {
    pub fn start(ca: &TestCa, client: ClientCertificate) -> Self {
        let version = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server binaries (make up installs them)")
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .max_by_key(|v| v.parse::<u32>().unwrap_or(0))
            .unwrap();
        let bin = PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"));
        let dir = std::env::temp_dir().join(format!("coupon-tls-pg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["server.pem", "server.key", "ca.pem"] {
            std::fs::copy(ca.dir.join(file), dir.join(file)).unwrap();
        }
        std::fs::write(dir.join("password"), PG_PASSWORD).unwrap();
        let chown = |path: &Path| {
            let _ = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(path)
                .status();
        };
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        chown(&dir);
        let data = dir.join("data");
        as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                PG_USER,
                "--auth=scram-sha-256",
                &format!("--pwfile={}", dir.join("password").display()),
            ],
        );
        let port = crate::process::free_port().unwrap();
        let settings = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nssl_ca_file = '{}'\n",
            dir.display(),
            dir.join("server.pem").display(),
            dir.join("server.key").display(),
            dir.join("ca.pem").display()
        );
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(&settings);
        std::fs::write(&conf, text).unwrap();
        // With a client certificate asked for, its name must be the user's too.
        let rule = match client {
            ClientCertificate::NotAsked => "hostssl all all 127.0.0.1/32 scram-sha-256\n",
            ClientCertificate::Required => {
                "hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-full\n"
            }
        };
        std::fs::write(data.join("pg_hba.conf"), rule).unwrap();
        chown(&dir);
        as_postgres(
            &bin.join("pg_ctl"),
            &[
                "-D",
                &data.display().to_string(),
                "-l",
                &dir.join("log").display().to_string(),
                "-w",
                "start",
            ],
        );
        Self { dir, bin, port }
    }

    pub fn url(&self, password: &str) -> String {
        format!(
            "postgres://{PG_USER}:{password}@127.0.0.1:{}/postgres?sslmode=verify-full",
            self.port
        )
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout == b"0\n");
        let pg_ctl = self.bin.join("pg_ctl");
        let _ = if root.unwrap_or(false) {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&pg_ctl)
                .args(["-D", &data, "-m", "immediate", "stop"])
                .output()
        } else {
            Command::new(&pg_ctl)
                .args(["-D", &data, "-m", "immediate", "stop"])
                .output()
        };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
