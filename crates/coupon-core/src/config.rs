//! Command-line and environment settings shared by both services: the values and their
//! defaults only. What is built from them lives beside what it builds: the Redis connection
//! in `crate::redis::connect`, the replicas to wait for in `crate::redis::replicas`, the
//! PostgreSQL pool in `crate::db::pool`. So nothing here depends on a client.
//!
//! Defaults match what `make up` starts on this machine. URLs may carry passwords, so
//! their values are hidden from `--help` and these types are never logged whole.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// Where `make up` runs each service: the default of every setting and harness that names
/// one.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_KAFKA_BROKERS: &str = "127.0.0.1:9092";
pub const DEFAULT_DATABASE_URL: &str = "postgres://coupon:coupon@127.0.0.1:5432/coupon_issuance";

#[derive(Args, Clone)]
pub struct RedisArgs {
    /// Redis server URL: `redis://` or `rediss://` (TLS), with an ACL user and password as
    /// `rediss://user:password@host:port`. Never logged.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = DEFAULT_REDIS_URL,
        hide_env_values = true
    )]
    pub redis_url: String,
    /// Prepended to every key, so environments can share one Redis. Empty by default.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "")]
    pub redis_key_prefix: String,
    /// How long one Redis command may take before the request answers 503.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 1000)]
    pub redis_timeout_ms: u64,
    /// PEM file of the CA that signed the server's certificate, for `rediss://` (unset: the
    /// system's roots).
    #[arg(long, env = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// PEM client certificate for `rediss://` servers that ask for one (with
    /// REDIS_CLIENT_KEY_FILE).
    #[arg(
        long,
        env = "REDIS_CLIENT_CERT_FILE",
        requires = "redis_client_key_file"
    )]
    pub redis_client_cert_file: Option<PathBuf>,
    /// PEM private key of REDIS_CLIENT_CERT_FILE.
    #[arg(
        long,
        env = "REDIS_CLIENT_KEY_FILE",
        requires = "redis_client_cert_file"
    )]
    pub redis_client_key_file: Option<PathBuf>,
    /// Sentinels to ask where the primary is (`host:port,host:port,...`). Unset: REDIS_URL
    /// is the node (or a managed service's primary endpoint). Set: REDIS_URL gives only the
    /// credentials and database for the nodes the Sentinels name, and every new connection
    /// follows the primary they name then.
    #[arg(long, env = "REDIS_SENTINELS", value_delimiter = ',')]
    pub redis_sentinels: Vec<String>,
    /// The master's name the Sentinels monitor.
    #[arg(long, env = "REDIS_SENTINEL_MASTER", default_value = "coupon")]
    pub redis_sentinel_master: String,
    /// Seed nodes of a Redis Cluster (`host:port,host:port,...`): the client learns the
    /// rest, and each coupon's commands go to the primary of its slot. Unset: no cluster.
    /// Set: REDIS_URL gives only the scheme (`rediss://` for TLS), the ACL user, password
    /// and TLS files for every node.
    #[arg(
        long,
        env = "REDIS_CLUSTER_NODES",
        value_delimiter = ',',
        conflicts_with = "redis_sentinels"
    )]
    pub redis_cluster_nodes: Vec<String>,
}

/// Which Redis replicas must have a write before it counts (`crate::redis::replicas`).
/// Both services take the same values.
#[derive(Args, Clone)]
pub struct ReplicaArgs {
    /// Redis replicas that must confirm a write (WAIT) before it counts: an admission
    /// before it is answered SUCCESS (fewer in time: 503; the admission stands, a retry
    /// learns the outcome), and in the Redis queue mode a stream entry before a worker
    /// persists it (fewer: it waits, and is read again). 0: the primary's word is enough.
    /// Under Sentinel every replica the Sentinels know confirms, and on a Redis Cluster every
    /// replica of the shard that has the most, counted each second; this is then a floor,
    /// and above the replicas known a service refuses to start.
    #[arg(long, env = "REDIS_MIN_REPLICAS", default_value_t = 0)]
    pub redis_min_replicas: u32,
    /// How long the replicas get to confirm; above 0 (WAIT's 0 waits for ever) and below
    /// REDIS_TIMEOUT_MS, which bounds every Redis command.
    #[arg(long, env = "REDIS_REPLICA_TIMEOUT_MS", default_value_t = 500)]
    pub redis_replica_timeout_ms: u64,
}

impl ReplicaArgs {
    /// Longest one confirmation (WAIT) may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.redis_replica_timeout_ms)
    }
}

#[derive(Args, Clone)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated.
    #[arg(long, env = "KAFKA_BROKERS", default_value = DEFAULT_KAFKA_BROKERS)]
    pub kafka_brokers: String,
    /// Topic the issue events go to; its dead-letter topic is `<topic>.dlq`.
    #[arg(long, env = "ISSUE_TOPIC", default_value = "coupon-issue")]
    pub issue_topic: String,
    /// Partitions for the topics when this process has to create them.
    #[arg(long, env = "ISSUE_TOPIC_PARTITIONS", default_value_t = 3)]
    pub topic_partitions: i32,
    /// Replication factor for the topics when this process has to create them.
    #[arg(long, env = "ISSUE_TOPIC_REPLICATION", default_value_t = 1)]
    pub topic_replication: i32,
    /// `min.insync.replicas` for the topics when this process has to create them: with
    /// `acks=all`, an event is acknowledged only once this many replicas have it. Set it
    /// below the replication factor (2 of 3) so one broker may fail without stopping sales;
    /// at 1 an acknowledged event may live on one disk only.
    #[arg(long, env = "ISSUE_TOPIC_MIN_INSYNC_REPLICAS", default_value_t = 1)]
    pub topic_min_insync_replicas: i32,
    /// How long the producer waits to batch concurrent events into one produce request:
    /// longer means fewer, larger requests (less CPU per event) and more latency per answer.
    #[arg(long, env = "KAFKA_LINGER_MS", default_value_t = 2)]
    pub producer_linger_ms: u64,
    #[command(flatten)]
    pub security: KafkaSecurity,
}

/// How the services authenticate to the brokers and encrypt the way there. Managed Kafka
/// (MSK, Confluent Cloud, Aiven) takes SASL_SSL, usually with SCRAM; a private CA goes in
/// KAFKA_CA_FILE.
#[derive(Args, Clone, Default)]
pub struct KafkaSecurity {
    #[arg(long, env = "KAFKA_SECURITY_PROTOCOL", value_enum, default_value_t = SecurityProtocol::Plaintext)]
    pub kafka_security_protocol: SecurityProtocol,
    /// PEM file of the CA that signed the brokers' certificates (unset: the system's roots).
    #[arg(long, env = "KAFKA_CA_FILE")]
    pub kafka_ca_file: Option<PathBuf>,
    /// PEM client certificate, for brokers that authenticate clients by certificate (with
    /// KAFKA_CLIENT_KEY_FILE).
    #[arg(
        long,
        env = "KAFKA_CLIENT_CERT_FILE",
        requires = "kafka_client_key_file"
    )]
    pub kafka_client_cert_file: Option<PathBuf>,
    /// PEM private key of KAFKA_CLIENT_CERT_FILE.
    #[arg(
        long,
        env = "KAFKA_CLIENT_KEY_FILE",
        requires = "kafka_client_cert_file"
    )]
    pub kafka_client_key_file: Option<PathBuf>,
    #[arg(long, env = "KAFKA_SASL_MECHANISM", value_enum, default_value_t = SaslMechanism::ScramSha512)]
    pub kafka_sasl_mechanism: SaslMechanism,
    /// The SASL user (SASL_SSL and SASL_PLAINTEXT).
    #[arg(long, env = "KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,
    /// The SASL user's password: from the environment only, never logged.
    #[arg(long, env = "KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub kafka_sasl_password: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SecurityProtocol {
    #[default]
    #[value(name = "PLAINTEXT", alias = "plaintext")]
    Plaintext,
    #[value(name = "SSL", alias = "ssl")]
    Ssl,
    /// SASL without TLS: the password crosses the network in the clear with PLAIN.
    #[value(name = "SASL_PLAINTEXT", alias = "sasl_plaintext")]
    SaslPlaintext,
    #[value(name = "SASL_SSL", alias = "sasl_ssl")]
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "PLAINTEXT",
            Self::Ssl => "SSL",
            Self::SaslPlaintext => "SASL_PLAINTEXT",
            Self::SaslSsl => "SASL_SSL",
        }
    }

    fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SaslMechanism {
    #[value(name = "PLAIN", alias = "plain")]
    Plain,
    #[value(name = "SCRAM-SHA-256", alias = "scram-sha-256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-512", alias = "scram-sha-512")]
    #[default]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// Secrets both services take, by clap id and variable: never from the command line, where
/// any user of the machine can read them (`ps`, `/proc`).
pub const SHARED_SECRETS: [(&str, &str); 1] = [("kafka_sasl_password", "KAFKA_SASL_PASSWORD")];

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error(
        "secrets are not taken on the command line, where any user of the machine can read \
         them: set {0} in the environment{1}"
    )]
    SecretOnCommandLine(&'static str, &'static str),
    #[error(transparent)]
    Clap(#[from] clap::Error),
}

/// A service's settings from `args`, refusing any of `secrets` (clap id, variable, and a
/// hint such as " or ISSUER_ADMIN_TOKEN_FILE") given as a flag. Usage errors and `--help`
/// end the process as clap does.
pub fn parse_refusing_secrets<C: clap::Parser>(
    args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>,
    secrets: &[(&'static str, &'static str, &'static str)],
) -> Result<C, ParseError> {
    let matches = C::command()
        .try_get_matches_from(args)
        .unwrap_or_else(|e| e.exit());
    for &(id, variable, hint) in secrets {
        if matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine) {
            return Err(ParseError::SecretOnCommandLine(variable, hint));
        }
    }
    Ok(C::from_arg_matches(&matches)?)
}

/// Kafka security settings that cannot work together.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSecurityError {
    #[error("KAFKA_SECURITY_PROTOCOL={0} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")]
    MissingCredentials(&'static str),
    #[error(
        "KAFKA_CA_FILE and KAFKA_CLIENT_CERT_FILE need KAFKA_SECURITY_PROTOCOL=ssl or sasl_ssl"
    )]
    TlsFilesWithoutTls,
    #[error(
        "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD need KAFKA_SECURITY_PROTOCOL=sasl_ssl or sasl_plaintext"
    )]
    CredentialsWithoutSasl,
}

impl KafkaSecurity {
    /// Refuses combinations that would fail later and less clearly (a CA file on a
    /// plaintext connection would be ignored, silently). Checked at start-up.
    pub fn check(&self) -> Result<(), KafkaSecurityError> {
        let protocol = self.kafka_security_protocol;
        let files = self.kafka_ca_file.is_some() || self.kafka_client_cert_file.is_some();
        if files && !protocol.tls() {
            return Err(KafkaSecurityError::TlsFilesWithoutTls);
        }
        let credentials = self.kafka_sasl_username.is_some() || self.kafka_sasl_password.is_some();
        let complete = self.kafka_sasl_username.is_some() && self.kafka_sasl_password.is_some();
        match (protocol.sasl(), credentials) {
            (true, _) if !complete => {
                Err(KafkaSecurityError::MissingCredentials(protocol.as_str()))
            }
            (false, true) => Err(KafkaSecurityError::CredentialsWithoutSasl),
            _ => Ok(()),
        }
    }

    /// The librdkafka settings for what is set.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let protocol = self.kafka_security_protocol;
        let mut settings = vec![("security.protocol", protocol.as_str().to_owned())];
        let path = |p: &PathBuf| p.display().to_string();
        if let Some(ca) = &self.kafka_ca_file {
            settings.push(("ssl.ca.location", path(ca)));
        }
        if let (Some(cert), Some(key)) = (&self.kafka_client_cert_file, &self.kafka_client_key_file)
        {
            settings.push(("ssl.certificate.location", path(cert)));
            settings.push(("ssl.key.location", path(key)));
        }
        if let (true, Some(user), Some(password)) = (
            protocol.sasl(),
            &self.kafka_sasl_username,
            &self.kafka_sasl_password,
        ) {
            settings.push((
                "sasl.mechanisms",
                self.kafka_sasl_mechanism.as_str().to_owned(),
            ));
            settings.push(("sasl.username", user.clone()));
            settings.push(("sasl.password", password.clone()));
        }
        settings
    }
}

impl KafkaArgs {
    pub fn dlq_topic(&self) -> String {
        format!("{}.dlq", self.issue_topic)
    }
}

#[derive(Args, Clone)]
pub struct DatabaseArgs {
    /// PostgreSQL URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL,
        hide_env_values = true
    )]
    pub database_url: String,
    /// Most connections this process opens.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 8)]
    pub database_pool_size: usize,
    /// PEM file of the CA that signed PostgreSQL's certificate. Setting it turns TLS on, as
    /// `sslmode=require` (or `verify-full`) in DATABASE_URL does; the certificate and host
    /// name are then always verified, against this CA or the system's roots.
    #[arg(long, env = "DATABASE_CA_FILE")]
    pub database_ca_file: Option<PathBuf>,
    /// PEM client certificate, for a server that asks for one (`clientcert=verify-full` in
    /// pg_hba.conf, Cloud SQL); with DATABASE_CLIENT_KEY_FILE. Turns TLS on.
    #[arg(
        long,
        env = "DATABASE_CLIENT_CERT_FILE",
        requires = "database_client_key_file"
    )]
    pub database_client_cert_file: Option<PathBuf>,
    /// PEM private key of DATABASE_CLIENT_CERT_FILE.
    #[arg(
        long,
        env = "DATABASE_CLIENT_KEY_FILE",
        requires = "database_client_cert_file"
    )]
    pub database_client_key_file: Option<PathBuf>,
}
