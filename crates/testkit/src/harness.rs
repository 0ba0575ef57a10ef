//! Per-test isolation on the real services: a fresh database, topic, consumer group and
//! Redis key prefix for every test, the API bound to port 0, workers in-process.

// In a harness a panic is exactly the failure report wanted.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use awc::Client;
use clap::Parser;
use coupon_core::domain::QueueKind;
use coupon_core::event::IssueEvent;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use issuer_api::app::Application;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub const ADMIN_TOKEN: &str = "test-admin-token";
/// The HS256 secret every test API verifies users' tokens with.
pub const JWT_SECRET: &str = "test-only-hs256-secret-of-at-least-32-bytes";

/// A valid token for `user`, as a login would hand out.
pub fn user_token(user: i64) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()).unwrap();
    crate::credentials::mint(&key, user)
}

/// The services `make up` starts; override with the usual variables.
pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS")
        .unwrap_or_else(|_| coupon_core::config::DEFAULT_KAFKA_BROKERS.into())
}

/// Which Redis a test's services use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisTopology {
    /// The single node `make up` starts.
    Node,
    /// The Redis Cluster `make test` starts (`crate::redis_cluster::SHARED_NODES`).
    Cluster,
}

impl RedisTopology {
    /// The services' arguments for it in `queue` mode.
    pub fn args(self, queue: QueueKind) -> Vec<String> {
        match self {
            Self::Node => Vec::new(),
            Self::Cluster => cluster_args(&crate::redis_cluster::shared_nodes(), queue),
        }
    }
}

/// The services' arguments for the cluster of seed nodes `nodes` in `queue` mode: in the
/// Redis queue mode, each coupon's replica confirms its admissions and reads (required
/// there, `coupon_core::redis::replicas`).
pub fn cluster_args(nodes: &str, queue: QueueKind) -> Vec<String> {
    let mut args = vec![format!("--redis-cluster-nodes={nodes}")];
    if queue == QueueKind::Redis {
        args.extend([
            "--redis-min-replicas=1".to_owned(),
            "--redis-replica-timeout-ms=500".to_owned(),
        ]);
    }
    args
}

pub struct TestEnv {
    pub base: String,
    pub client: Client,
    pub database_url: String,
    pub topic: String,
    pub group: String,
    pub redis_prefix: String,
    pub brokers: String,
    pub queue: QueueKind,
    /// The Redis the services use: `make up`'s, unless a test passed `--redis-url`.
    pub redis_url: String,
    /// The Sentinel and replica settings a test passed, which the workers get too.
    redis_args: Vec<String>,
    api_args: Vec<String>,
    api: actix_web::dev::ServerHandle,
    workers: Vec<CancellationToken>,
}

impl TestEnv {
    /// A running API and `workers` worker instances (each its own group member), on the
    /// `make up` services.
    pub async fn start(workers: usize) -> TestEnv {
        Self::start_in(QueueKind::Kafka, workers).await
    }

    /// The same with events travelling on `queue`.
    pub async fn start_in(queue: QueueKind, workers: usize) -> TestEnv {
        Self::start_with(queue, &brokers(), workers).await
    }

    /// Kafka mode on the broker at `brokers`.
    pub async fn start_on(brokers: &str, workers: usize) -> TestEnv {
        Self::start_with(QueueKind::Kafka, brokers, workers).await
    }

    pub async fn start_with(queue: QueueKind, brokers: &str, workers: usize) -> TestEnv {
        Self::start_with_args(queue, brokers, workers, &[]).await
    }

    /// Kafka mode on a three-broker cluster: one partition (so one leader to kill),
    /// replicated three times, two replicas in sync to acknowledge.
    pub async fn start_replicated(brokers: &str, workers: usize) -> TestEnv {
        let topology = [
            "--topic-partitions=1",
            "--topic-replication=3",
            "--topic-min-insync-replicas=2",
        ];
        Self::start_with_args(QueueKind::Kafka, brokers, workers, &topology).await
    }

    /// In `queue` mode on `redis`: `make up`'s node, or the suite's Redis Cluster (`make
    /// test` starts it).
    pub async fn start_under(queue: QueueKind, redis: RedisTopology, workers: usize) -> TestEnv {
        let args = redis.args(queue);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start_with_args(queue, &brokers(), workers, &args).await
    }

    /// Any of the above, with `extra` arguments for both services.
    pub async fn start_with_args(
        queue: QueueKind,
        brokers: &str,
        workers: usize,
        extra: &[&str],
    ) -> TestEnv {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_env("TEST_LOG"))
                .with_test_writer()
                .try_init();
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let database_url = crate::database::create_database(&format!("coupon_test_{id}")).await;
        let topic = format!("coupon-issue-test-{id}");
        let group = format!("coupon-issue-worker-test-{id}");
        let redis_prefix = format!("test-{id}:");
        let defaults: Vec<String> = [
            format!("--queue={queue}"),
            format!("--database-url={database_url}"),
            format!("--issue-topic={topic}"),
            format!("--redis-key-prefix={redis_prefix}"),
            format!("--kafka-brokers={brokers}"),
            "--database-pool-size=4".to_owned(),
            format!("--worker-group-id={group}"),
            "--publish-timeout-ms=3000".to_owned(),
            "--reconcile-interval-ms=500".to_owned(),
            "--rebuild-timeout-ms=20000".to_owned(),
            // Tests send one user's requests at once on purpose; the rate limits' own test
            // turns them on.
            "--rate-per-user=0".to_owned(),
            // The suite's own printed secrets, and its tokens' issuer and audience.
            "--dev-secrets=allow".to_owned(),
            format!("--jwt-issuer={}", crate::credentials::DEV_ISSUER),
            format!("--jwt-audience={}", crate::credentials::DEV_AUDIENCE),
            // Tests read the operations routes beside the API (the hardening tests check
            // the default), and read a coupon right after changing it.
            "--ops-listen=public".to_owned(),
            "--coupon-read-cache-ms=0".to_owned(),
            // Tests give stock back (a slot released, a rebuild) and ask again at once; the
            // finished gate's own test turns it on.
            "--finished-gate-ms=0".to_owned(),
        ]
        .into_iter()
        .collect();
        // `extra` replaces a default of the same flag.
        let flag = |arg: &str| arg.split('=').next().unwrap_or_default().to_owned();
        let replaced: Vec<String> = extra.iter().map(|arg| flag(arg)).collect();
        let common: Vec<String> = defaults
            .into_iter()
            .filter(|arg| !replaced.contains(&flag(arg)))
            .chain(extra.iter().map(|arg| (*arg).to_owned()))
            .collect();

        let api_args: Vec<String> = [
            "issuer-api",
            "--listen=127.0.0.1:0",
            "--http-workers=2",
            &format!("--admin-token={ADMIN_TOKEN}"),
            &format!("--jwt-secret={JWT_SECRET}"),
        ]
        .into_iter()
        .map(String::from)
        .chain(common.iter().cloned())
        .collect();
        let api_config = issuer_api::config::Config::try_parse_from(&api_args).unwrap();
        let app = Application::build(api_config).await.unwrap();
        let base = format!("http://{}", app.addr());
        let api = app.handle();
        actix_web::rt::spawn(app.run(std::future::pending()));

        let mut env = TestEnv {
            base,
            client: Client::builder()
                .timeout(Duration::from_secs(30))
                .connector(awc::Connector::new().limit(256))
                .finish(),
            database_url,
            topic,
            group,
            redis_prefix,
            brokers: brokers.to_owned(),
            queue,
            redis_url: extra
                .iter()
                .find_map(|arg| arg.strip_prefix("--redis-url="))
                .map_or_else(redis_url, str::to_owned),
            redis_args: extra
                .iter()
                .filter(|arg| {
                    [
                        "--redis-cluster-nodes",
                        "--redis-sentinel",
                        "--redis-min-replicas",
                        "--redis-replica-timeout",
                    ]
                    .iter()
                    .any(|flag| arg.starts_with(flag))
                })
                .map(|arg| (*arg).to_owned())
                .collect(),
            api_args,
            api,
            workers: Vec::new(),
        };
        for _ in 0..workers {
            env.start_worker(500).await;
        }
        env
    }

    /// An issuer of its own, configured as the API is but on the keys under `prefix`, for a
    /// test to drive one step of the protocol through a connection of its choosing (the
    /// API's reconciler does not look under another prefix).
    pub async fn issuer(&self, prefix: &str) -> issuer_api::issuing::Issuer {
        let args = self
            .api_args
            .iter()
            .filter(|arg| !arg.starts_with("--redis-key-prefix="))
            .cloned()
            .chain([format!("--redis-key-prefix={prefix}")]);
        let config = issuer_api::config::Config::try_parse_from(args).unwrap();
        issuer_api::app::connect(&config).await.unwrap()
    }

    pub fn worker_args(&self, batch_size: u32) -> Vec<String> {
        vec![
            "issuer-worker".into(),
            format!("--queue={}", self.queue),
            format!("--redis-key-prefix={}", self.redis_prefix),
            format!("--redis-url={}", self.redis_url),
            "--claim-idle-ms=1000".into(),
        ]
        .into_iter()
        .chain(self.redis_args.iter().cloned())
        .chain([
            format!("--database-url={}", self.database_url),
            format!("--issue-topic={}", self.topic),
            format!("--group-id={}", self.group),
            format!("--kafka-brokers={}", self.brokers),
            format!("--batch-size={batch_size}"),
            "--batch-linger-ms=10".into(),
            "--database-pool-size=2".into(),
            "--redrive-interval-ms=200".into(),
        ])
        .collect()
    }

    pub async fn start_worker(&mut self, batch_size: u32) {
        self.start_worker_with(self.worker_args(batch_size)).await;
    }

    pub async fn start_worker_with(&mut self, args: Vec<String>) {
        self.spawn_worker(args).await;
    }

    /// A worker serving its `/metrics` on a port of its own; that listener's base URL.
    pub async fn start_worker_serving_metrics(&mut self) -> String {
        let mut args = self.worker_args(100);
        args.push("--metrics-listen=127.0.0.1:0".into());
        let addr = self.spawn_worker(args).await.expect("asked for a listener");
        format!("http://{addr}")
    }

    async fn spawn_worker(&mut self, args: Vec<String>) -> Option<std::net::SocketAddr> {
        let config = issuer_worker::config::Config::try_parse_from(args).unwrap();
        let worker = issuer_worker::worker::Worker::build(config).await.unwrap();
        let addr = worker.metrics_addr();
        let token = CancellationToken::new();
        self.workers.push(token.clone());
        actix_web::rt::spawn(async move { worker.run(token).await.unwrap() });
        addr
    }

    pub async fn stop_workers(&mut self) {
        for token in self.workers.drain(..) {
            token.cancel();
        }
        // Let them leave the group before a new member joins.
        actix_web::rt::time::sleep(Duration::from_secs(1)).await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// POST JSON with a bearer token, returning (status, body as JSON or Null).
    pub async fn post(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        self.post_at(&self.base, path, token, body).await
    }

    /// The same to the API at `base` (another one this test started).
    pub async fn post_at(&self, base: &str, path: &str, token: &str, body: &Value) -> (u16, Value) {
        Self::send(self.client.post(format!("{base}{path}")), token, body).await
    }

    /// PUT JSON with a bearer token, returning (status, body as JSON or Null).
    pub async fn put(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        Self::send(self.client.put(self.url(path)), token, body).await
    }

    async fn send(request: awc::ClientRequest, token: &str, body: &Value) -> (u16, Value) {
        let mut response = request.bearer_auth(token).send_json(body).await.unwrap();
        let bytes = response.body().await.unwrap();
        (
            response.status().as_u16(),
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// GET as an admin, who may read every route.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let (status, text) = self.get_text(path).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        self.get_url(&self.url(path)).await
    }

    /// A GET of any URL (another API's, an operations listener's), as an admin.
    pub async fn get_url(&self, url: &str) -> (u16, String) {
        let mut response = self
            .client
            .get(url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let bytes = response.body().await.unwrap();
        (
            response.status().as_u16(),
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    /// Another API on the same services, with some of its arguments replaced (`--flag=value`
    /// for the same flag); its base URL, and its operations listener's if it has one.
    pub async fn start_another_api(&self, overrides: &[String]) -> (String, Option<String>) {
        let app = self.build_another_api(overrides).await.unwrap();
        let base = format!("http://{}", app.addr());
        let ops = app.ops_addr().map(|addr| format!("http://{addr}"));
        actix_web::rt::spawn(app.run(std::future::pending()));
        (base, ops)
    }

    /// Scrapes `url` until `holds` is true of the text (gauges refresh once a second), or
    /// fails with the last scrape after 20 s.
    pub async fn scrape_until(
        &self,
        url: &str,
        what: &str,
        holds: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, text) = self.get_url(url).await;
            assert_eq!(status, 200, "{text}");
            if holds(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "{what}, never seen in:\n{text}");
            actix_web::rt::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The configuration `issuer-api <command>` runs with beside this environment's API (its
    /// database, topic, Redis and key prefix), as an operator would run the command.
    pub fn command(&self, command: &[&str]) -> issuer_api::config::Config {
        let args = self
            .api_args
            .iter()
            .cloned()
            .chain(command.iter().map(|arg| (*arg).to_owned()));
        issuer_api::config::Config::try_parse_from(args).unwrap()
    }

    /// Builds (connects, binds) another API as `start_another_api` would, and returns what
    /// came of it without serving: for tests of start-up failures.
    pub async fn build_another_api(&self, overrides: &[String]) -> anyhow::Result<Application> {
        let flag = |arg: &String| arg.split('=').next().unwrap_or_default().to_owned();
        let replaced: Vec<String> = overrides.iter().map(flag).collect();
        let args = self
            .api_args
            .iter()
            .filter(|arg| !replaced.contains(&flag(arg)))
            .chain(overrides)
            .cloned();
        let config = issuer_api::config::Config::try_parse_from(args)?;
        Application::build(config).await
    }

    pub async fn create_coupon(&self, body: Value) -> i64 {
        let mut response = self
            .client
            .post(self.url("/api/v1/coupons"))
            .bearer_auth(ADMIN_TOKEN)
            .send_json(&body)
            .await
            .unwrap();
        let json: Value = response.json().await.unwrap();
        assert_eq!(response.status().as_u16(), 201, "{json}");
        json["couponId"].as_i64().unwrap()
    }

    pub async fn coupon_with_quantity(&self, quantity: i64) -> i64 {
        self.create_coupon(json!({ "name": "test", "totalQuantity": quantity }))
            .await
    }

    pub async fn issue(&self, coupon: i64, user: i64) -> (u16, Value) {
        self.post(
            &format!("/api/v1/coupons/{coupon}/issues"),
            &user_token(user),
            &json!({ "userId": user }),
        )
        .await
    }

    /// Admission scripts on this environment's keys, knowing `coupon`'s stamp in force as
    /// an API that met it does (learnt from PostgreSQL): for a test that plays an API's
    /// part.
    pub async fn scripts_for(
        &self,
        coupon: i64,
    ) -> coupon_core::redis::admission::AdmissionScripts {
        let scripts = coupon_core::redis::admission::AdmissionScripts::new(
            self.redis_prefix.clone(),
            self.queue,
        );
        let id = coupon_core::domain::CouponId::new(coupon).unwrap();
        let stamp = coupon_core::db::coupons::redis_stamp(&mut self.pg().await, id)
            .await
            .unwrap()
            .expect("the coupon's state was verified at its creation");
        scripts.learn_stamp(id, stamp);
        scripts
    }

    /// A bucketed coupon's bucket `bucket`: its keys and its stamp in force, as PostgreSQL
    /// keeps them.
    pub async fn bucket_state(
        &self,
        coupon: i64,
        bucket: u16,
    ) -> (
        coupon_core::redis::keys::CouponKeys,
        coupon_core::redis::epoch::Stamp,
    ) {
        let mut db = self.pg().await;
        let record = coupon_core::db::coupons::find_coupon(
            &mut db,
            coupon_core::domain::CouponId::new(coupon).unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
        let rows = coupon_core::db::buckets::coupon_buckets(&mut db, &record)
            .await
            .unwrap();
        let row = &rows[usize::from(bucket)];
        assert_eq!(
            row.bucket,
            coupon_core::buckets::Bucket::of(record.buckets, bucket.into()).unwrap()
        );
        let keys = coupon_core::redis::keys::CouponKeys::of_bucket(&self.redis_prefix, &row.tag);
        (keys, row.stamp.clone().expect("loaded at its creation"))
    }

    /// Deletes every key of `coupon`'s bucket `bucket` in Redis: its state lost, as a
    /// restart without its file would lose it.
    pub async fn lose_bucket_state(&self, coupon: i64, bucket: u16) {
        let keys = self.bucket_state(coupon, bucket).await.0;
        let _: i64 = redis::cmd("DEL")
            .arg(&keys.meta)
            .arg(&keys.issued)
            .arg(&keys.pending)
            .arg(&keys.credited)
            .arg(&keys.outgoing)
            .query_async(&mut self.redis().await)
            .await
            .unwrap();
    }

    pub async fn pg(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.database_url)
            .await
            .unwrap()
    }

    /// The users holding `coupon` in PostgreSQL, sorted.
    pub async fn rows(&self, coupon: i64) -> Vec<i64> {
        use coupon_core::db::schema::coupon_issues::dsl::*;
        use diesel::{ExpressionMethods, QueryDsl};
        coupon_issues
            .filter(coupon_id.eq(coupon))
            .select(user_id)
            .order(user_id)
            .load(&mut self.pg().await)
            .await
            .unwrap()
    }

    /// Waits until PostgreSQL holds `expected` rows for `coupon` and then a little longer
    /// (to catch extra rows arriving late); returns the users.
    pub async fn rows_when_settled(&self, coupon: i64, expected: usize) -> Vec<i64> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let rows = self.rows(coupon).await;
            if rows.len() >= expected || Instant::now() > deadline {
                actix_web::rt::time::sleep(Duration::from_millis(500)).await;
                return self.rows(coupon).await;
            }
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sessions of the test's database waiting for a lock.
    pub async fn waiting_for_a_lock(&self) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct Waiting {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        diesel::sql_query(
            "SELECT count(*) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .get_result::<Waiting>(&mut self.pg().await)
        .await
        .unwrap()
        .n
    }

    /// Holds `coupon`'s row locked (as the worker's guarded insert locks it) until the
    /// returned session commits.
    pub async fn lock_coupon_row(&self, coupon: i64) -> AsyncPgConnection {
        let mut holder = self.pg().await;
        for statement in [
            "BEGIN".to_owned(),
            format!("SELECT 1 FROM coupons WHERE id = {coupon} FOR UPDATE"),
        ] {
            diesel::sql_query(statement)
                .execute(&mut holder)
                .await
                .unwrap();
        }
        holder
    }

    /// A connection to the Redis the services use, as they reach it (one node, or a
    /// cluster's client).
    pub async fn redis(&self) -> coupon_core::redis::connection::RedisConnection {
        issuer_api::config::Config::try_parse_from(&self.api_args)
            .unwrap()
            .redis
            .connect()
            .await
            .unwrap()
    }

    /// `coupon`'s Redis keys under this environment's prefix.
    pub fn keys(&self, coupon: i64) -> coupon_core::redis::keys::CouponKeys {
        coupon_core::redis::keys::CouponKeys::new(
            &self.redis_prefix,
            coupon_core::domain::CouponId::new(coupon).unwrap(),
        )
    }

    pub async fn redis_set_size(&self, coupon: i64) -> i64 {
        redis::cmd("SCARD")
            .arg(self.keys(coupon).issued)
            .query_async(&mut self.redis().await)
            .await
            .unwrap()
    }

    /// The users holding a slot of `coupon` in Redis, sorted.
    pub async fn redis_holders(&self, coupon: i64) -> Vec<i64> {
        self.coupon_users("SMEMBERS", self.keys(coupon).issued)
            .await
    }

    /// The users `command` lists from `key` (a set or a hash), sorted.
    async fn coupon_users(&self, command: &str, key: String) -> Vec<i64> {
        let mut users: Vec<i64> = redis::cmd(command)
            .arg(key)
            .query_async(&mut self.redis().await)
            .await
            .unwrap();
        users.sort_unstable();
        users
    }

    /// Whether someone (a retry or a reconciler) has taken `user`'s pending entry to publish
    /// it again.
    /// Coupons in the registry the reconciler and the stream workers loop over.
    pub async fn registered(&self) -> Vec<i64> {
        let registry = coupon_core::redis::keys::CouponKeys::active_registry(&self.redis_prefix);
        redis::cmd("HKEYS")
            .arg(registry)
            .query_async(&mut self.redis().await)
            .await
            .unwrap()
    }

    pub async fn pending_claimed(&self, coupon: i64, user: i64) -> bool {
        let entry: Option<String> = redis::cmd("HGET")
            .arg(self.keys(coupon).pending)
            .arg(user)
            .query_async(&mut self.redis().await)
            .await
            .unwrap();
        entry.is_some_and(|entry| entry.contains(" claimed "))
    }

    /// Users whose slot in `coupon` is admitted but not yet acknowledged by the broker.
    pub async fn pending_entries(&self, coupon: i64) -> Vec<i64> {
        self.coupon_users("HKEYS", self.keys(coupon).pending).await
    }

    /// Deletes every Redis key of this test, as FLUSHALL would on a Redis of its own.
    pub async fn flush_redis(&self) {
        let mut redis = self.redis().await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.redis_prefix))
            .query_async(&mut redis)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut redis)
                .await
                .unwrap();
        }
    }

    /// Issues until the answer is not a 503, as a client honouring Retry-After would.
    pub async fn issue_retrying(&self, coupon: i64, user: i64) -> (u16, Value) {
        self.issue_retrying_at(&self.base, coupon, user).await
    }

    /// The same through the API at `base`.
    pub async fn issue_retrying_at(&self, base: &str, coupon: i64, user: i64) -> (u16, Value) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = self
                .post_at(
                    base,
                    &format!("/api/v1/coupons/{coupon}/issues"),
                    &user_token(user),
                    &json!({ "userId": user }),
                )
                .await;
            if answer.0 != 503 || Instant::now() > deadline {
                return answer;
            }
            actix_web::rt::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The coupon's event stream (Redis queue mode).
    pub fn stream(&self, coupon: i64) -> String {
        self.keys(coupon).stream
    }

    /// Puts `event` on the queue again, bypassing admission, as a producer retry or a
    /// replay would.
    pub async fn redeliver(&self, event: &IssueEvent) {
        match self.queue {
            QueueKind::Kafka => {
                self.produce_raw(&self.topic, &event.key(), &event.encode())
                    .await
            }
            QueueKind::Redis => {
                let fields = event.stream_fields();
                self.append_raw(event.coupon_id.get(), &fields).await;
            }
        }
    }

    /// Appends an entry with these fields to the coupon's stream, bypassing admission.
    pub async fn append_raw(&self, coupon: i64, fields: &[(&str, String)]) {
        let _: String = redis::cmd("XADD")
            .arg(self.stream(coupon))
            .arg("*")
            .arg(fields)
            .query_async(&mut self.redis().await)
            .await
            .unwrap();
    }

    /// A producer straight to the topic, to play redeliveries and poison messages.
    pub async fn produce_raw(&self, topic: &str, key: &str, payload: &[u8]) {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .unwrap();
        producer
            .send(
                FutureRecord::to(topic).key(key).payload(payload),
                Timeout::After(Duration::from_secs(5)),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    pub async fn shutdown(mut self) {
        self.stop_workers().await;
        self.api.stop(true).await;
    }
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| coupon_core::config::DEFAULT_REDIS_URL.into())
}

pub fn redis_client() -> redis::Client {
    redis::Client::open(redis_url()).unwrap()
}

pub struct TopicMessage {
    pub payload: Vec<u8>,
    pub headers: std::collections::HashMap<String, String>,
}

/// Reads `topic` from the beginning with a throwaway group until `expected` messages
/// arrived (or 30 s passed).
/// Events on the topic now: the sum of its partitions' high watermarks (all start at 0).
pub fn topic_end(topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    (0..partitions(topic) as i32)
        .map(|partition| {
            consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .sum()
}

pub async fn read_topic(topic: &str, expected: usize) -> Vec<TopicMessage> {
    use rdkafka::Message;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Headers;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while messages.len() < expected && Instant::now() < deadline {
        let next = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await;
        let Ok(Ok(message)) = next else { continue };
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|header| {
                        let value = header
                            .value
                            .map(|v| String::from_utf8_lossy(v).into_owned());
                        (header.key.to_owned(), value.unwrap_or_default())
                    })
                    .collect()
            })
            .unwrap_or_default();
        messages.push(TopicMessage {
            payload: message.payload().unwrap_or_default().to_vec(),
            headers,
        });
    }
    messages
}

/// The contract's "unknown, retry" answer: 503 with the UNAVAILABLE error body.
pub fn assert_unavailable((status, body): &(u16, Value)) {
    assert_eq!(
        (*status, &body["error"]),
        (503, &json!("UNAVAILABLE")),
        "{body}"
    );
}

/// A failed event as a test looks at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub id: i64,
    pub reason: String,
    pub status: String,
    pub attempts: i32,
    pub coupon_id: Option<i64>,
    pub due_in_seconds: Option<i64>,
}

/// Every failed event with its schedule, oldest first, read through the same query the
/// operator's `issuer-worker dlq list` uses.
pub async fn failed_schedule(env: &TestEnv) -> Vec<Failed> {
    let mut rows = coupon_core::db::failed_events::list(
        &mut env.pg().await,
        coupon_core::db::failed_events::Filter::default(),
        10_000,
    )
    .await
    .unwrap();
    rows.reverse();
    rows.into_iter()
        .map(|row| Failed {
            id: row.id,
            reason: row.reason,
            status: row.status,
            attempts: row.attempts,
            coupon_id: row.coupon_id,
            due_in_seconds: row
                .next_retry_at
                .map(|n| (n - chrono::Utc::now()).num_seconds()),
        })
        .collect()
}

/// Makes every scheduled retry due now, as if its wait had passed.
pub async fn make_retries_due(env: &TestEnv) {
    use coupon_core::db::schema::failed_events::dsl::*;
    use diesel::{ExpressionMethods, QueryDsl};
    diesel::update(failed_events.filter(next_retry_at.is_not_null()))
        .set(next_retry_at.eq(chrono::Utc::now()))
        .execute(&mut env.pg().await)
        .await
        .unwrap();
}

/// Waits until `check` holds for the failed events (or panics with what they are).
pub async fn wait_for_failed(
    env: &TestEnv,
    what: &str,
    check: impl Fn(&[Failed]) -> bool,
) -> Vec<Failed> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = failed_schedule(env).await;
        if check(&rows) {
            return rows;
        }
        assert!(Instant::now() < deadline, "{what}: {rows:?}");
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (reason, payload) of every failed event, oldest first.
pub async fn failed_events(env: &TestEnv) -> Vec<(String, Vec<u8>)> {
    use coupon_core::db::schema::failed_events::dsl::*;
    use diesel::QueryDsl;
    failed_events
        .select((reason, payload))
        .order(id)
        .load(&mut env.pg().await)
        .await
        .unwrap()
}

pub fn free_port() -> u16 {
    crate::process::free_port().unwrap()
}

/// How many partitions the `make up` broker reports for `topic`.
pub fn partitions(topic: &str) -> usize {
    partitions_on(&brokers(), topic)
}

pub fn partitions_on(brokers: &str, topic: &str) -> usize {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("allow.auto.create.topics", "false")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    metadata.topics()[0].partitions().len()
}

/// One test module per named test, running it as `node` and as `cluster` (each an
/// `actix_web::test` calling `$test(RedisTopology)` of the enclosing module).
#[macro_export]
macro_rules! on_both_topologies {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            use $crate::harness::RedisTopology;

            #[actix_web::test]
            async fn node() {
                super::$test(RedisTopology::Node).await
            }

            #[actix_web::test]
            async fn cluster() {
                super::$test(RedisTopology::Cluster).await
            }
        }
    )*};
}

/// Waits, if the rate limits' wall-clock window of `window_ms` (`issuer-api`'s
/// `rate_limit`) ends within two minutes, for the next one to begin: a test's requests
/// (under two minutes, on a day's window) then all fall in one window, whatever the time of
/// day it runs at.
pub async fn at_a_fresh_rate_window(window_ms: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let left = window_ms - now % window_ms;
    if left < 120_000 {
        actix_web::rt::time::sleep(Duration::from_millis(left + 10)).await;
    }
}
