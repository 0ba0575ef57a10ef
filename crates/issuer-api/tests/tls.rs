//! The services reach their dependencies over TLS, with credentials, on real
//! servers started here with a CA made here (`testkit::tls`). A wrong CA and wrong
//! credentials stop start-up at once, with the reason and without the secret.

// Helpers outside `#[test]` functions panic too: in a harness that is the failure report.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use coupon_core::domain::QueueKind;
use serde_json::json;
use testkit::harness::{self, TestEnv};
use testkit::tls::{ClientCertificate, TestCa};

const PASSWORD: &str = "s3cret-acl-password";

/// A Redis that speaks TLS only, with the default user off and one ACL user.
struct TlsRedis {
    child: Child,
    port: u16,
}

impl TlsRedis {
    fn start(ca: &TestCa, client: ClientCertificate) -> Self {
        let ask = match client {
            ClientCertificate::NotAsked => "no",
            ClientCertificate::Required => "yes",
        };
        let port = testkit::process::free_port().unwrap();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--tls-port", &port.to_string()])
            .args(["--tls-cert-file", &ca.path("server.pem")])
            .args(["--tls-key-file", &ca.path("server.key")])
            .args(["--tls-ca-cert-file", &ca.path("ca.pem")])
            .args(["--tls-auth-clients", ask])
            .args(["--user", "default", "off"])
            .args([
                "--user",
                "coupon",
                "on",
                &format!(">{PASSWORD}"),
                "~*",
                "&*",
                "+@all",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the TLS Redis did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }

    fn url(&self, password: &str) -> String {
        format!("rediss://coupon:{password}@127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds one more API with `overrides`, expecting start-up to fail within `patience`;
/// its error text.
async fn refused_within(env: &TestEnv, overrides: &[String], patience: Duration) -> String {
    let started = Instant::now();
    let Err(err) = env.build_another_api(overrides).await else {
        panic!("started with {overrides:?}")
    };
    assert!(
        started.elapsed() < patience,
        "a clear error at start-up, not a hang: {:?}",
        started.elapsed()
    );
    format!("{err:#}")
}

/// Redis and PostgreSQL refuse at the first connection.
async fn refused(env: &TestEnv, overrides: &[String]) -> String {
    refused_within(env, overrides, Duration::from_secs(5)).await
}

#[actix_web::test]
async fn both_services_use_redis_over_tls_and_refuse_a_wrong_ca_or_password() {
    let ca = TestCa::new();
    let redis = TlsRedis::start(&ca, ClientCertificate::NotAsked);
    let ca_file = format!("--redis-ca-file={}", ca.path("ca.pem"));
    let url = format!("--redis-url={}", redis.url(PASSWORD));
    let mut env = TestEnv::start_with_args(
        QueueKind::Redis,
        &harness::brokers(),
        0,
        &[url.as_str(), ca_file.as_str()],
    )
    .await;
    let mut worker = env.worker_args(100);
    worker.push(ca_file.clone());
    env.start_worker_with(worker).await;

    // The whole path over TLS: admission in the TLS Redis, the stream read by the worker
    // over TLS, rows in PostgreSQL.
    let coupon = env
        .create_coupon(json!({"name": "over TLS", "totalQuantity": 5}))
        .await;
    for user in 1..=3 {
        assert_eq!(env.issue(coupon, user).await.0, 201);
    }
    assert_eq!(env.rows_when_settled(coupon, 3).await, vec![1, 2, 3]);

    let wrong_ca = format!("--redis-ca-file={}", ca.path("wrong-ca.pem"));
    let text = refused(&env, std::slice::from_ref(&wrong_ca)).await;
    assert!(
        text.contains("cannot connect to Redis") && text.contains("certificate"),
        "says the certificate is not trusted: {text}"
    );
    let text = refused(
        &env,
        &[format!("--redis-url={}", redis.url("not-the-password"))],
    )
    .await;
    assert!(
        text.contains("cannot connect to Redis") && text.contains("authentication failed"),
        "says the credentials are wrong: {text}"
    );
    assert!(
        !text.contains("not-the-password"),
        "never the secret: {text}"
    );
    let text = refused(&env, &["--redis-url=redis://127.0.0.1:6379".to_owned()]).await;
    assert!(
        text.contains("rediss://"),
        "CA file without TLS is refused: {text}"
    );

    // The worker refuses the wrong CA the same way.
    let mut args = env.worker_args(100);
    args.push(wrong_ca);
    let config = issuer_worker::config::Config::try_parse_from(args).unwrap();
    let Err(err) = issuer_worker::worker::Worker::build(config).await else {
        panic!("the worker started with the wrong CA")
    };
    assert!(format!("{err:#}").contains("certificate"), "{err:#}");
    env.shutdown().await;
}

/// Rows of `coupon` in the TLS PostgreSQL, read over TLS.
async fn tls_rows(url: &str, ca: &TestCa, coupon: i64) -> i64 {
    use diesel_async::RunQueryDsl;
    let ca_file = ca.path("ca.pem");
    let files = coupon_core::db::connect::PgTlsFiles {
        ca: Some(std::path::Path::new(&ca_file)),
        client: None,
    };
    let target = coupon_core::db::connect::PgTarget::new(url, files).unwrap();
    let mut conn = target.connect().await.unwrap();
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query(format!(
        "SELECT count(*) AS n FROM coupon_issues WHERE coupon_id = {coupon}"
    ))
    .get_result::<Count>(&mut conn)
    .await
    .unwrap()
    .n
}

#[actix_web::test]
async fn both_services_use_postgresql_over_tls_and_refuse_a_wrong_ca_or_password() {
    let ca = TestCa::new();
    let postgres = testkit::tls::TlsPostgres::start(&ca, ClientCertificate::NotAsked);
    let url = postgres.url(testkit::tls::PG_PASSWORD);
    let tls = [
        format!("--database-url={url}"),
        format!("--database-ca-file={}", ca.path("ca.pem")),
    ];
    let mut env = TestEnv::start(0).await;

    // An API and a worker on the TLS PostgreSQL (the first migrates it, over TLS), on the
    // environment's Redis and topic.
    let (api, _) = env.start_another_api(&tls).await;
    let mut worker: Vec<String> = env
        .worker_args(100)
        .into_iter()
        .filter(|arg| !arg.starts_with("--database-url="))
        .collect();
    worker.extend(tls.iter().cloned());
    env.start_worker_with(worker.clone()).await;
    let mut created = env
        .client
        .post(format!("{api}/api/v1/coupons"))
        .bearer_auth(harness::ADMIN_TOKEN)
        .send_json(&json!({"name": "TLS database", "totalQuantity": 5}))
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let coupon = created.json::<serde_json::Value>().await.unwrap()["couponId"]
        .as_i64()
        .unwrap();
    for user in 1..=2 {
        let answer = env
            .client
            .post(format!("{api}/api/v1/coupons/{coupon}/issues"))
            .bearer_auth(harness::user_token(user))
            .send_json(&json!({}))
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 201);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while tls_rows(&url, &ca, coupon).await < 2 {
        assert!(
            Instant::now() < deadline,
            "the rows never reached the TLS database"
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }

    let text = refused(
        &env,
        &[
            tls[0].clone(),
            format!("--database-ca-file={}", ca.path("wrong-ca.pem")),
        ],
    )
    .await;
    assert!(
        text.contains("certificate"),
        "says the certificate is not trusted: {text}"
    );
    let text = refused(
        &env,
        &[
            format!("--database-url={}", postgres.url("not-the-password")),
            tls[1].clone(),
        ],
    )
    .await;
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(
        !text.contains("not-the-password"),
        "never the secret: {text}"
    );

    // The worker refuses the wrong CA the same way.
    let args: Vec<String> = worker
        .into_iter()
        .filter(|arg| !arg.starts_with("--database-ca-file="))
        .chain([format!("--database-ca-file={}", ca.path("wrong-ca.pem"))])
        .collect();
    let config = issuer_worker::config::Config::try_parse_from(args).unwrap();
    let Err(err) = issuer_worker::worker::Worker::build(config).await else {
        panic!("the worker started with the wrong CA")
    };
    assert!(format!("{err:#}").contains("certificate"), "{err:#}");
    env.shutdown().await;
}

const SCRAM_USER: &str = "coupon";
const SCRAM_PASSWORD: &str = "kafka-scram-password";

#[actix_web::test]
async fn both_services_use_kafka_over_ssl_and_sasl_ssl_with_scram() {
    let ca = TestCa::new();
    // The broker's keystore: its key and certificate in one PEM file.
    let keystore = ca.dir.join("broker-keystore.pem");
    let pem = [ca.path("server.key"), ca.path("server.pem")]
        .iter()
        .map(|file| std::fs::read_to_string(file).unwrap())
        .collect::<String>();
    std::fs::write(&keystore, pem).unwrap();
    let (ssl, sasl_ssl, mutual) = (
        testkit::process::free_port().unwrap(),
        testkit::process::free_port().unwrap(),
        testkit::process::free_port().unwrap(),
    );
    let properties = format!(
        "listeners=PLAINTEXT://127.0.0.1:{{PLAINTEXT}},CONTROLLER://127.0.0.1:{{CONTROLLER}},\
         SSL://127.0.0.1:{ssl},SASL_SSL://127.0.0.1:{sasl_ssl},MUTUAL://127.0.0.1:{mutual}\n\
         advertised.listeners=PLAINTEXT://127.0.0.1:{{PLAINTEXT}},SSL://127.0.0.1:{ssl},\
         SASL_SSL://127.0.0.1:{sasl_ssl},MUTUAL://127.0.0.1:{mutual}\n\
         listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL,\
         SASL_SSL:SASL_SSL,MUTUAL:SSL\n\
         listener.name.mutual.ssl.client.auth=required\n\
         listener.name.mutual.ssl.truststore.type=PEM\n\
         listener.name.mutual.ssl.truststore.location={}\n\
         ssl.keystore.type=PEM\n\
         ssl.keystore.location={}\n\
         sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512\n\
         listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=\
         org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
         listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\
         org.apache.kafka.common.security.scram.ScramLoginModule required;\n",
        ca.path("ca.pem"),
        keystore.display()
    );
    let users = format!(
        "--add-scram SCRAM-SHA-256=[name={SCRAM_USER},password={SCRAM_PASSWORD}] \
         --add-scram SCRAM-SHA-512=[name={SCRAM_USER},password={SCRAM_PASSWORD}]"
    );
    let _broker =
        testkit::kafka_cluster::KafkaCluster::start_with_settings(&properties, &users).unwrap();

    let over_ssl = [
        "--kafka-security-protocol=ssl".to_owned(),
        format!("--kafka-ca-file={}", ca.path("ca.pem")),
    ];
    let over_sasl = [
        format!("--kafka-brokers=127.0.0.1:{sasl_ssl}"),
        "--kafka-security-protocol=sasl_ssl".to_owned(),
        format!("--kafka-ca-file={}", ca.path("ca.pem")),
        "--kafka-sasl-mechanism=SCRAM-SHA-256".to_owned(),
        format!("--kafka-sasl-username={SCRAM_USER}"),
        format!("--kafka-sasl-password={SCRAM_PASSWORD}"),
    ];
    let ssl_args: Vec<&str> = over_ssl.iter().map(String::as_str).collect();
    let mut env =
        TestEnv::start_with_args(QueueKind::Kafka, &format!("127.0.0.1:{ssl}"), 0, &ssl_args).await;
    // Two workers in the group, one over each listener.
    let mut worker = env.worker_args(100);
    worker.extend(over_ssl.iter().cloned());
    env.start_worker_with(worker).await;
    let mut worker: Vec<String> = env
        .worker_args(100)
        .into_iter()
        .filter(|arg| !arg.starts_with("--kafka-brokers="))
        .collect();
    worker.extend(over_sasl.iter().cloned());
    env.start_worker_with(worker).await;

    // The environment's API publishes over SSL, a second one over SASL_SSL with SCRAM.
    let coupon = env
        .create_coupon(json!({"name": "Kafka over TLS", "totalQuantity": 5}))
        .await;
    for user in 1..=2 {
        assert_eq!(env.issue(coupon, user).await.0, 201);
    }
    let (sasl_api, _) = env.start_another_api(&over_sasl).await;
    for user in 3..=4 {
        let answer = env
            .client
            .post(format!("{sasl_api}/api/v1/coupons/{coupon}/issues"))
            .bearer_auth(harness::user_token(user))
            .send_json(&json!({}))
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 201);
    }
    assert_eq!(env.rows_when_settled(coupon, 4).await, vec![1, 2, 3, 4]);

    let patience = Duration::from_secs(15);
    let wrong_ca = format!("--kafka-ca-file={}", ca.path("wrong-ca.pem"));
    let text = refused_within(&env, std::slice::from_ref(&wrong_ca), patience).await;
    assert!(
        text.contains("cannot create the Kafka topics")
            && text.contains("certificate verify failed"),
        "says the certificate is not trusted: {text}"
    );
    let wrong_password: Vec<String> = over_sasl
        .iter()
        .map(|arg| {
            if arg.starts_with("--kafka-sasl-password=") {
                "--kafka-sasl-password=not-the-password".to_owned()
            } else {
                arg.clone()
            }
        })
        .collect();
    let text = refused_within(&env, &wrong_password, patience).await;
    assert!(
        text.contains("Authentication failed"),
        "says the credentials are wrong: {text}"
    );
    assert!(
        !text.contains("not-the-password"),
        "never the secret: {text}"
    );

    // A listener that asks for a client certificate: refused without one, served with it.
    let mutual_tls = [
        format!("--kafka-brokers=127.0.0.1:{mutual}"),
        "--kafka-security-protocol=SSL".to_owned(),
        format!("--kafka-ca-file={}", ca.path("ca.pem")),
    ];
    let text = refused_within(&env, &mutual_tls, patience).await;
    assert!(text.contains("cannot create the Kafka topics"), "{text}");
    let mut with_certificate = mutual_tls.to_vec();
    with_certificate.push(format!(
        "--kafka-client-cert-file={}",
        ca.path("client.pem")
    ));
    with_certificate.push(format!("--kafka-client-key-file={}", ca.path("client.key")));
    let (api, _) = env.start_another_api(&with_certificate).await;
    let (status, body) = env.get_url(&format!("{api}/readyz")).await;
    assert_eq!(status, 200, "{body}");
    env.shutdown().await;
}

/// A PostgreSQL that asks for a client certificate (Cloud SQL, `clientcert=verify-full`):
/// the services present one when given, and without one start-up stops, saying why.
#[actix_web::test]
async fn postgresql_that_asks_for_a_client_certificate_gets_one() {
    let ca = TestCa::new();
    let postgres = testkit::tls::TlsPostgres::start(&ca, ClientCertificate::Required);
    let env = TestEnv::start(0).await;
    let database = [
        format!("--database-url={}", postgres.url(testkit::tls::PG_PASSWORD)),
        format!("--database-ca-file={}", ca.path("ca.pem")),
    ];
    let text = refused(&env, &database).await;
    assert!(
        text.contains("certificate"),
        "says a certificate is wanted: {text}"
    );

    let mut with_certificate = database.to_vec();
    with_certificate.push(format!(
        "--database-client-cert-file={}",
        ca.path("client.pem")
    ));
    with_certificate.push(format!(
        "--database-client-key-file={}",
        ca.path("client.key")
    ));
    // It migrates the database over the authenticated connection, then serves.
    let (api, _) = env.start_another_api(&with_certificate).await;
    let (status, body) = env.get_url(&format!("{api}/readyz")).await;
    assert_eq!(status, 200, "{body}");

    let mut worker: Vec<String> = env
        .worker_args(100)
        .into_iter()
        .filter(|arg| !arg.starts_with("--database-url="))
        .collect();
    worker.extend(with_certificate);
    let config = issuer_worker::config::Config::try_parse_from(worker).unwrap();
    assert!(issuer_worker::worker::Worker::build(config).await.is_ok());
    env.shutdown().await;
}

/// A Redis that asks for a client certificate (`tls-auth-clients yes`): given one, the API
/// connects; without, start-up stops at once.
#[actix_web::test]
async fn redis_that_asks_for_a_client_certificate_gets_one() {
    let ca = TestCa::new();
    let redis = TlsRedis::start(&ca, ClientCertificate::Required);
    let env = TestEnv::start(0).await;
    let tls = [
        format!("--redis-url={}", redis.url(PASSWORD)),
        format!("--redis-ca-file={}", ca.path("ca.pem")),
    ];
    let text = refused(&env, &tls).await;
    assert!(text.contains("cannot connect to Redis"), "{text}");

    let mut with_certificate = tls.to_vec();
    with_certificate.push(format!(
        "--redis-client-cert-file={}",
        ca.path("client.pem")
    ));
    with_certificate.push(format!("--redis-client-key-file={}", ca.path("client.key")));
    let (api, _) = env.start_another_api(&with_certificate).await;
    let (status, body) = env.get_url(&format!("{api}/readyz")).await;
    assert_eq!(status, 200, "{body}");
    env.shutdown().await;
}
