//! issuer-api's settings: every flag also reads an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::console::SecureCookie;
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use coupon_core::config::{
    DatabaseArgs, KafkaArgs, RedisArgs, ReplicaArgs, SHARED_SECRETS, parse_refusing_secrets,
};
use coupon_core::domain::QueueKind;
use coupon_core::telemetry::LogArgs;

#[derive(Parser, Clone)]
#[command(
    name = "issuer-api",
    version,
    about = "First-come-first-served coupon issuing API"
)]
pub struct Config {
    /// Address the HTTP server listens on.
    #[arg(long, env = "ISSUER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where /metrics, /healthz and /readyz are served: an address of their own (keep it
    /// inside the cluster), or `public` to serve them beside the API on ISSUER_LISTEN.
    #[arg(long, env = "ISSUER_OPS_LISTEN", default_value = "127.0.0.1:8081")]
    pub ops_listen: OpsListen,
    /// The operator console at /console on the operations listener: `on` (the default) or
    /// `off`. Never served on the public listener: with ISSUER_OPS_LISTEN=public it is off.
    #[arg(long, env = "ISSUER_CONSOLE", value_enum, default_value_t = Switch::On)]
    pub console: Switch,
    /// The console's session cookie: `auto` (the default) marks it Secure unless the console
    /// is reached over plain HTTP from a loopback address; `always` marks it Secure there too
    /// (a TLS proxy on the same host).
    #[arg(long, env = "ISSUER_CONSOLE_SECURE_COOKIE", value_enum, default_value_t = SecureCookie::Auto)]
    pub console_secure_cookie: SecureCookie,
    /// `allow` lets the development secrets the Makefile, the compose file and the README
    /// print, and an admin token under 32 bytes, through: for `make run`, the demo and the
    /// tests only. `refuse` (the default) stops the start on them.
    #[arg(long, env = "ISSUER_DEV_SECRETS", value_enum, default_value_t = DevSecrets::Refuse)]
    pub dev_secrets: DevSecrets,
    /// Bearer token of the admins (creating coupons, reading anyone's): this variable or
    /// ISSUER_ADMIN_TOKEN_FILE is required. Never logged, and refused on the command line.
    #[arg(long, env = "ISSUER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// A file holding the admin token (a mounted secret), instead of ISSUER_ADMIN_TOKEN.
    #[arg(long, env = "ISSUER_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// Where admitted events go: `kafka` (answer after the broker's acknowledgement) or
    /// `redis` (a stream per coupon, appended by the admission script; no broker needed).
    #[arg(long, env = "ISSUE_QUEUE", value_enum, default_value_t = QueueKind::Kafka)]
    pub queue: QueueKind,
    /// HTTP worker threads; 0 means one per CPU.
    #[arg(long, env = "ISSUER_HTTP_WORKERS", default_value_t = 0)]
    pub http_workers: usize,
    /// How long the broker may take to acknowledge an event before the request answers 503.
    #[arg(long, env = "PUBLISH_TIMEOUT_MS", default_value_t = 3000)]
    pub publish_timeout_ms: u64,
    /// How often in-doubt events nobody retried are published again (and how old they
    /// must be first, so a user's own retry goes first).
    #[arg(long, env = "RECONCILE_INTERVAL_MS", default_value_t = 5000)]
    pub reconcile_interval_ms: u64,
    /// The workers' consumer group: rebuilding a coupon's Redis state waits for it to
    /// reach the end of the topic.
    #[arg(long, env = "WORKER_GROUP_ID", default_value = "coupon-issue-worker")]
    pub worker_group_id: String,
    /// How long a rebuild waits for the workers before giving up (requests keep answering
    /// 503 and the next one tries again).
    #[arg(long, env = "REBUILD_TIMEOUT_MS", default_value_t = 30_000)]
    pub rebuild_timeout_ms: u64,
    /// Issue requests one user may send per rate window, across every API replica; 0 is no
    /// limit. The default lets a person retry freely and stops a script.
    #[arg(long, env = "ISSUER_RATE_PER_USER", default_value_t = 10)]
    pub rate_per_user: u32,
    /// Issue requests one client address may send per rate window; 0 (the default) is no
    /// limit. Behind a proxy every client has the proxy's address: set
    /// ISSUER_CLIENT_ADDRESS_HEADER before turning this on there.
    #[arg(long, env = "ISSUER_RATE_PER_ADDRESS", default_value_t = 0)]
    pub rate_per_address: u32,
    /// The rate limits' window.
    #[arg(long, env = "ISSUER_RATE_WINDOW_MS", default_value_t = 1000)]
    pub rate_window_ms: u64,
    /// How often each instance adds its rate-limit counts to the shared ones in Redis and
    /// learns the other replicas': a client spread over replicas can get, beyond its limit,
    /// what it sends each other replica in this long (never more than the limit on each).
    #[arg(long, env = "ISSUER_RATE_SYNC_MS", default_value_t = 20)]
    pub rate_sync_ms: u64,
    /// The header a trusted proxy in front writes the client's address to: the last entry,
    /// across every line of it, is used (`X-Forwarded-For`-style lists, `ip:port`, or
    /// RFC 7239 `Forwarded: for=`). Unset, the connection's peer address. Set it only
    /// behind such a proxy: anyone can send any header.
    #[arg(long, env = "ISSUER_CLIENT_ADDRESS_HEADER")]
    pub client_address_header: Option<String>,
    /// Failed authentications (401) one client address may make per
    /// ISSUER_AUTH_FAILURE_WINDOW_MS before its requests are answered 429 unread; counted in
    /// each instance's memory.
    #[arg(long, env = "ISSUER_AUTH_FAILURES_PER_ADDRESS", default_value_t = 10)]
    pub auth_failures_per_address: u32,
    /// The window failed authentications are counted in.
    #[arg(long, env = "ISSUER_AUTH_FAILURE_WINDOW_MS", default_value_t = 60_000)]
    pub auth_failure_window_ms: u64,
    /// How long a client has to send a request's head (line and headers) once it starts.
    #[arg(long, env = "ISSUER_HEAD_TIMEOUT_MS", default_value_t = 5_000)]
    pub head_timeout_ms: u64,
    /// How long a client has to send a request's body once its head is read; past it, 408
    /// and the connection is closed.
    #[arg(long, env = "ISSUER_BODY_TIMEOUT_MS", default_value_t = 5_000)]
    pub body_timeout_ms: u64,
    /// How long an idle kept-alive connection stays open.
    #[arg(long, env = "ISSUER_KEEP_ALIVE_MS", default_value_t = 5_000)]
    pub keep_alive_ms: u64,
    /// Most connections open at once, over every HTTP worker. A connection holding a
    /// half-sent request costs about 19 KiB (measured, docs/performance.md): the default's
    /// 150 MiB fits a pod of 256 MiB beside the process's own 26 MiB, and holds the
    /// 5,000 users of a flash sale's first second.
    #[arg(long, env = "ISSUER_MAX_CONNECTIONS", default_value_t = 8_000)]
    pub max_connections: usize,
    /// How long `GET /api/v1/coupons/{id}` (public sale information) is served from this
    /// instance's memory before PostgreSQL and Redis are asked again; 0 asks every time.
    #[arg(long, env = "ISSUER_COUPON_READ_CACHE_MS", default_value_t = 1_000)]
    pub coupon_read_cache_ms: u64,
    /// How long, after admission answered SOLD_OUT or ENDED for a coupon, this instance
    /// answers the same from memory without asking Redis (holders still get their 409):
    /// SOLD_OUT then means "no stock was left at most this long ago" (README). At most
    /// 1,000 (a rebuild reopens a coupon no sooner than that); 0 asks Redis every time.
    #[arg(long, env = "ISSUER_FINISHED_GATE_MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(0..=1_000))]
    pub finished_gate_ms: u64,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub replicas: ReplicaArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Where the operations routes are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpsListen {
    /// Beside the API, on its public listener (set explicitly).
    Public,
    At(SocketAddr),
}

impl std::str::FromStr for OpsListen {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "public" => Ok(Self::Public),
            address => address.parse().map(Self::At).map_err(|_| {
                format!("{address:?} is neither `public` nor an address such as 127.0.0.1:8081")
            }),
        }
    }
}

/// A feature turned on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// Whether the development secrets are let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DevSecrets {
    Refuse,
    Allow,
}

/// How the issue route and the user's read routes learn who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UserAuth {
    /// A bearer JWT, verified here.
    Jwt,
    /// A header set by a gateway in front that has authenticated the user, honoured only
    /// beside the gateway's secret header (ISSUER_GATEWAY_SECRET).
    GatewayHeader,
}

#[derive(Args, Clone)]
pub struct IdentityArgs {
    /// `jwt` verifies the caller's bearer token; `gateway-header` trusts ISSUER_USER_HEADER,
    /// which only a gateway that authenticates users (and strips it from clients) may set.
    #[arg(long, env = "ISSUER_USER_AUTH", value_enum, default_value_t = UserAuth::Jwt)]
    pub user_auth: UserAuth,
    /// The header naming the user, in gateway-header mode.
    #[arg(long, env = "ISSUER_USER_HEADER", default_value = "x-user-id")]
    pub user_header: String,
    /// In gateway-header mode, required: the secret (at least 32 bytes) the gateway sends in
    /// ISSUER_GATEWAY_SECRET_HEADER on every request it forwards, so that a client reaching
    /// the API directly cannot name a user. Never logged, and refused on the command line.
    #[arg(long, env = "ISSUER_GATEWAY_SECRET", hide_env_values = true)]
    pub gateway_secret: Option<String>,
    /// A file holding the gateway's secret, instead of ISSUER_GATEWAY_SECRET.
    #[arg(long, env = "ISSUER_GATEWAY_SECRET_FILE")]
    pub gateway_secret_file: Option<PathBuf>,
    /// The header carrying the gateway's secret.
    #[arg(
        long,
        env = "ISSUER_GATEWAY_SECRET_HEADER",
        default_value = "x-gateway-secret"
    )]
    pub gateway_secret_header: String,
    /// HS256 shared secret (at least 32 bytes). Never logged, and refused on the command line.
    #[arg(long, env = "ISSUER_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// A file holding the HS256 secret, instead of ISSUER_JWT_SECRET.
    #[arg(long, env = "ISSUER_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// A JWKS file with the issuer's public keys (RS256, ES256, EdDSA); read again on an
    /// unknown kid and every five minutes.
    #[arg(long, env = "ISSUER_JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<PathBuf>,
    /// The issuer's JWKS URL, instead of a file: https only, verified against the system's
    /// roots (and ISSUER_JWT_JWKS_CA_FILE's); redirects are not followed.
    #[arg(long, env = "ISSUER_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// A PEM file of a CA to trust for ISSUER_JWT_JWKS_URL beside the system's roots (an
    /// identity provider with a private CA).
    #[arg(long, env = "ISSUER_JWT_JWKS_CA_FILE", requires = "jwt_jwks_url")]
    pub jwt_jwks_ca_file: Option<PathBuf>,
    /// The `iss` every token must carry. Required, unless ISSUER_JWT_ANY_ISSUER waives it.
    #[arg(long, env = "ISSUER_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Accept tokens of any issuer (no ISSUER_JWT_ISSUER): only where this API's keys sign
    /// for nobody else.
    #[arg(long, env = "ISSUER_JWT_ANY_ISSUER")]
    pub jwt_any_issuer: bool,
    /// The `aud` every token must carry. Required, unless ISSUER_JWT_ANY_AUDIENCE waives
    /// it: without it, a token the identity provider issued to another application is
    /// accepted here.
    #[arg(long, env = "ISSUER_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Accept tokens for any audience (no ISSUER_JWT_AUDIENCE).
    #[arg(long, env = "ISSUER_JWT_ANY_AUDIENCE")]
    pub jwt_any_audience: bool,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds (at most 300).
    #[arg(long, env = "ISSUER_JWT_LEEWAY_SECS", default_value_t = 30)]
    pub jwt_leeway_secs: u64,
    /// The longest a token may live: `exp − iat`, or, without `iat`, what is left of it.
    #[arg(long, env = "ISSUER_JWT_MAX_LIFETIME_SECS", default_value_t = 86_400)]
    pub jwt_max_lifetime_secs: u64,
    /// How far ahead of our clock a token's `iat` may be (beyond the leeway, it is refused).
    #[arg(long, env = "ISSUER_JWT_MAX_FUTURE_IAT_SECS", default_value_t = 60)]
    pub jwt_max_future_iat_secs: u64,
    /// The claim holding the user id.
    #[arg(long, env = "ISSUER_JWT_USER_CLAIM", default_value = "sub")]
    pub jwt_user_claim: String,
    /// The claim holding the caller's roles (a string or an array of strings).
    #[arg(long, env = "ISSUER_JWT_ROLES_CLAIM", default_value = "roles")]
    pub jwt_roles_claim: String,
    /// The role that makes a token's bearer an admin.
    #[arg(long, env = "ISSUER_JWT_ADMIN_ROLE", default_value = "coupon-admin")]
    pub jwt_admin_role: String,
}

impl IdentityArgs {
    pub fn jwt_secret(&self) -> anyhow::Result<Option<String>> {
        secret(
            self.jwt_secret.as_deref(),
            self.jwt_secret_file.as_ref(),
            "ISSUER_JWT_SECRET",
        )
    }

    pub fn gateway_secret(&self) -> anyhow::Result<Option<String>> {
        secret(
            self.gateway_secret.as_deref(),
            self.gateway_secret_file.as_ref(),
            "ISSUER_GATEWAY_SECRET",
        )
    }

    /// Settings that would turn a check off without saying so, refused with the reason.
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.jwt_leeway_secs <= MAX_LEEWAY_SECS,
            "ISSUER_JWT_LEEWAY_SECS is {}: at most {MAX_LEEWAY_SECS} (a leeway is clock skew, \
             and a larger one keeps expired tokens alive)",
            self.jwt_leeway_secs
        );
        anyhow::ensure!(
            !self.jwt_admin_role.trim().is_empty(),
            "ISSUER_JWT_ADMIN_ROLE is empty: name the role that makes an admin"
        );
        anyhow::ensure!(
            (1..=MAX_TOKEN_LIFETIME_SECS).contains(&self.jwt_max_lifetime_secs),
            "ISSUER_JWT_MAX_LIFETIME_SECS is {}: it must be 1 to {MAX_TOKEN_LIFETIME_SECS} (a year)",
            self.jwt_max_lifetime_secs
        );
        anyhow::ensure!(
            self.jwt_max_future_iat_secs <= MAX_FUTURE_IAT_SECS,
            "ISSUER_JWT_MAX_FUTURE_IAT_SECS is {}: at most {MAX_FUTURE_IAT_SECS} (an hour)",
            self.jwt_max_future_iat_secs
        );
        Ok(())
    }
}

/// The longest any phase of a request (head, body, idle keep-alive) may be given.
const MAX_PHASE_MS: u64 = 60_000;
/// The longest token lifetime ISSUER_JWT_MAX_LIFETIME_SECS may allow.
const MAX_TOKEN_LIFETIME_SECS: u64 = 366 * 86_400;
/// How far ahead ISSUER_JWT_MAX_FUTURE_IAT_SECS may let `iat` be.
const MAX_FUTURE_IAT_SECS: u64 = 3_600;
/// The largest clock skew ISSUER_JWT_LEEWAY_SECS may allow.
const MAX_LEEWAY_SECS: u64 = 300;
/// The longest rate window: a counter's expiry is a millisecond count Redis must take.
const MAX_RATE_WINDOW_MS: u64 = 86_400_000;

/// The longest rate-limit sync interval: past a second, replicas would share little.
const MAX_RATE_SYNC_MS: u64 = 1_000;

/// The flags that carry secrets: another user of the machine reads a command line in `ps`.
/// The API's own, and the shared ones (`coupon_core::config::SHARED_SECRETS`).
const SECRET_FLAGS: [(&str, &str, &str); 4] = [
    (
        "admin_token",
        "ISSUER_ADMIN_TOKEN",
        " or ISSUER_ADMIN_TOKEN_FILE",
    ),
    (
        "jwt_secret",
        "ISSUER_JWT_SECRET",
        " or ISSUER_JWT_SECRET_FILE",
    ),
    (
        "gateway_secret",
        "ISSUER_GATEWAY_SECRET",
        " or ISSUER_GATEWAY_SECRET_FILE",
    ),
    (SHARED_SECRETS[0].0, SHARED_SECRETS[0].1, ""),
];

impl Config {
    /// The process's own settings, refusing a secret given on the command line.
    pub fn from_process() -> anyhow::Result<Self> {
        Self::from_args(std::env::args_os())
    }

    fn from_args(
        args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>,
    ) -> anyhow::Result<Self> {
        Ok(parse_refusing_secrets(args, &SECRET_FLAGS)?)
    }

    /// Settings that would turn a protection off without saying so, or fail every request,
    /// refused at start with the reason.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=MAX_RATE_WINDOW_MS).contains(&self.rate_window_ms),
            "ISSUER_RATE_WINDOW_MS is {}: it must be 1 to {MAX_RATE_WINDOW_MS} (a day); 0 \
             would turn the limits off, and a longer one fails every issue request (to turn a \
             limit off, set ISSUER_RATE_PER_USER or ISSUER_RATE_PER_ADDRESS to 0)",
            self.rate_window_ms
        );
        anyhow::ensure!(
            (1..=MAX_RATE_SYNC_MS).contains(&self.rate_sync_ms),
            "ISSUER_RATE_SYNC_MS is {}: it must be 1 to {MAX_RATE_SYNC_MS} (the longer, the \
             more a client spread over replicas gets past its limit)",
            self.rate_sync_ms
        );
        anyhow::ensure!(
            self.rate_window_ms >= 2 * self.rate_sync_ms,
            "ISSUER_RATE_WINDOW_MS ({}) must be at least twice ISSUER_RATE_SYNC_MS ({}): a \
             window that ends before its counts are shared is not shared at all",
            self.rate_window_ms,
            self.rate_sync_ms
        );
        anyhow::ensure!(
            self.auth_failures_per_address > 0,
            "ISSUER_AUTH_FAILURES_PER_ADDRESS must be above 0 (it is how many failures an \
             address may make before it is throttled)"
        );
        anyhow::ensure!(
            (1..=MAX_RATE_WINDOW_MS).contains(&self.auth_failure_window_ms),
            "ISSUER_AUTH_FAILURE_WINDOW_MS must be 1 to {MAX_RATE_WINDOW_MS}"
        );
        for (variable, ms) in [
            ("ISSUER_HEAD_TIMEOUT_MS", self.head_timeout_ms),
            ("ISSUER_BODY_TIMEOUT_MS", self.body_timeout_ms),
            ("ISSUER_KEEP_ALIVE_MS", self.keep_alive_ms),
        ] {
            anyhow::ensure!(
                (1..=MAX_PHASE_MS).contains(&ms),
                "{variable} is {ms}: it must be 1 to {MAX_PHASE_MS} (a minute)"
            );
        }
        anyhow::ensure!(
            self.max_connections > 0,
            "ISSUER_MAX_CONNECTIONS must be above 0"
        );
        self.identity.check()
    }

    pub fn admin_token(&self) -> anyhow::Result<String> {
        secret(
            self.admin_token.as_deref(),
            self.admin_token_file.as_ref(),
            "ISSUER_ADMIN_TOKEN",
        )?
        .context("set ISSUER_ADMIN_TOKEN or ISSUER_ADMIN_TOKEN_FILE")
    }
}

/// A secret from its variable or from a file named by `<variable>_FILE` (a mounted secret;
/// one trailing newline is not part of it), never both.
fn secret(
    value: Option<&str>,
    file: Option<&PathBuf>,
    variable: &str,
) -> anyhow::Result<Option<String>> {
    match (value, file) {
        (Some(_), Some(_)) => anyhow::bail!("set {variable} or {variable}_FILE, not both"),
        (Some(value), None) => Ok(Some(value.to_owned())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {variable}_FILE {}", path.display()))?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            let text = text.strip_suffix('\r').unwrap_or(text);
            Ok(Some(text.to_owned()))
        }
        (None, None) => Ok(None),
    }
}

#[derive(Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Serve the HTTP API (what runs without a command).
    Serve,
    /// Rebuild coupons' Redis state from PostgreSQL after Redis lost it: waits for the
    /// workers to persist everything already published, then restores quantity, window and
    /// every holder. Admission for a coupon stays closed (503) until its state is back.
    RebuildRedis {
        /// The coupon to rebuild.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        coupon: Option<coupon_core::domain::CouponId>,
        /// Every coupon PostgreSQL knows.
        #[arg(long)]
        all: bool,
    },
    /// A planned switchover of the Redis primary that keeps every coupon's state, with no
    /// rebuild: closes each coupon verified under the stamp in force and marks it, waits for
    /// the replicas, asks the Sentinels to fail over (behind a plain REDIS_URL: waits for
    /// the node behind it to change, while the operator fails the provider's primary over),
    /// then opens each coupon on the new primary where its mark arrived. The rest stay
    /// closed and are rebuilt by their next request. With no new primary in time, the
    /// coupons reopen where they are and the command fails. On a Redis Cluster it moves one
    /// coupon's slot (`--coupon`, `--to`): to a replica of its primary by a graceful
    /// `CLUSTER FAILOVER` (the whole shard's coupons carried), or to another primary by a
    /// slot migration (the coupons of that slot carried).
    HandOver {
        /// On a Redis Cluster: the coupon whose slot moves.
        #[arg(long, requires = "to")]
        coupon: Option<coupon_core::domain::CouponId>,
        /// On a Redis Cluster: where the coupon's slot goes (`host:port` of a node): a
        /// replica of the coupon's primary, promoted, or another primary, migrated to.
        #[arg(long, requires = "coupon")]
        to: Option<String>,
        /// How long to wait for the new primary once the coupons are closed.
        #[arg(long, env = "HAND_OVER_WAIT_SECS", default_value_t = 30)]
        wait_secs: u64,
        /// How long the coupons stay closed at most, however the command ends: past it,
        /// a coupon not opened is rebuilt by its next request. Above the wait.
        #[arg(long, env = "HAND_OVER_LEASE_SECS", default_value_t = 60)]
        lease_secs: u64,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Config::command().debug_assert();
    }

    #[test]
    fn the_finished_gate_is_never_held_longer_than_rebuilds_wait() {
        use clap::Parser;
        let most = crate::issuing::LONGEST_HOLD.as_millis();
        let parse = |ms: u128| {
            super::Config::try_parse_from(["issuer-api", &format!("--finished-gate-ms={ms}")])
        };
        assert!(parse(most).is_ok());
        assert!(parse(most + 1).is_err());
    }

    #[test]
    fn secrets_are_refused_on_the_command_line() {
        for flag in [
            "--admin-token=abc",
            "--jwt-secret=abc",
            "--kafka-sasl-password=abc",
        ] {
            let err = super::Config::from_args(["issuer-api", flag])
                .err()
                .unwrap_or_else(|| panic!("{flag} was taken"));
            assert!(
                err.to_string().contains("not taken on the command line"),
                "{err}"
            );
        }
        // The variable itself may be set where tests run (the Makefile sets one), so the
        // file reading is checked on its own.
        let file = std::env::temp_dir().join(format!("admin-token-{}", std::process::id()));
        std::fs::write(&file, "from-a-file\n").unwrap();
        let read = super::secret(None, Some(&file), "ISSUER_ADMIN_TOKEN").unwrap();
        assert_eq!(read.as_deref(), Some("from-a-file"));
        assert!(super::secret(Some("x"), Some(&file), "ISSUER_ADMIN_TOKEN").is_err());
        std::fs::remove_file(file).unwrap();
    }
}
