//! The cluster the chaos run owns: its own Redis (AOF) with a replica behind a link that can
//! be cut, both reached through one endpoint that a failover repoints; in Kafka mode its own
//! three Apache Kafka brokers (topics replicated 3 times, 2 in sync to acknowledge); its own
//! database behind a cuttable proxy; two issuer-api and two issuer-worker processes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use coupon_core::config::QueueKind;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::kafka_cluster::KafkaCluster;
use crate::process::{Service, free_port, wait_for_port};
use crate::proxy::CuttableProxy;
use crate::redis_server::RedisServer;

pub const ADMIN_TOKEN: &str = "chaos-admin-token";
/// The HS256 secret the cluster's APIs verify users' tokens with; the load signs with it.
pub const JWT_SECRET: &str = "chaos-only-hs256-secret-of-32-bytes-or-more";
pub const TOPIC: &str = "coupon-issue";
pub const GROUP: &str = "coupon-issue-worker";
pub const REPLICAS: usize = 2;
/// Brokers in Kafka mode: one may fail with no pause in sales, two stop them.
pub const BROKERS: usize = 3;

pub struct Cluster {
    pub queue: QueueKind,
    pub dir: PathBuf,
    bin_dir: PathBuf,
    /// Where the services (and the checks) reach Redis: the endpoint, which leads to the
    /// primary, and after a failover to the promoted replica.
    pub redis_port: u16,
    /// Bootstrap servers the services are given; in the Redis queue mode a port where
    /// nothing listens, so that any use of Kafka would show.
    pub kafka_brokers: String,
    pub api_ports: [u16; REPLICAS],
    /// The chaos database, reached directly (for checks).
    pub database_url: String,
    admin_database_url: String,
    database_name: String,
    pub postgres: CuttableProxy,
    redis_endpoint: CuttableProxy,
    redis: RedisServer,
    /// A replica of the primary, replicating through `replica_link`.
    replica: RedisServer,
    replica_link: CuttableProxy,
    /// Replicas started so far, each in a directory of its own.
    replicas_started: usize,
    /// Shared with the blocking tasks that restart its nodes while the load runs.
    pub kafka: Option<Arc<KafkaCluster>>,
    apis: [Option<Service>; REPLICAS],
    workers: [Option<Service>; REPLICAS],
}

impl Cluster {
    pub async fn start(
        bin_dir: &Path,
        admin_database_url: &str,
        dir: &Path,
        queue: QueueKind,
    ) -> anyhow::Result<Cluster> {
        for binary in ["issuer-api", "issuer-worker"] {
            if !bin_dir.join(binary).exists() {
                bail!(
                    "{binary} not found in {}; build it first (make chaos does)",
                    bin_dir.display()
                );
            }
        }
        std::fs::create_dir_all(dir)?;
        let database_name = format!("coupon_chaos_{}", uuid::Uuid::new_v4().simple());
        let mut admin = AsyncPgConnection::establish(admin_database_url)
            .await
            .context("cannot reach PostgreSQL (is `make up` done?)")?;
        diesel::sql_query(format!("CREATE DATABASE {database_name}"))
            .execute(&mut admin)
            .await?;
        let (server, _) = admin_database_url
            .rsplit_once('/')
            .context("DATABASE_URL has no database")?;
        let database_url = format!("{server}/{database_name}");
        let pg_target = server
            .rsplit_once('@')
            .map_or(server, |(_, host)| host)
            .to_owned();
        let postgres = CuttableProxy::start(&pg_target).await?;

        let redis = RedisServer::start(&dir.join("redis"), &[]).await?;
        let replica_link = CuttableProxy::start(&format!("127.0.0.1:{}", redis.port)).await?;
        let replica =
            RedisServer::replica_of(replica_link.port, &dir.join("redis-replica-1")).await?;
        let redis_endpoint = CuttableProxy::start(&format!("127.0.0.1:{}", redis.port)).await?;
        let mut cluster = Cluster {
            queue,
            dir: dir.to_owned(),
            bin_dir: bin_dir.to_owned(),
            redis_port: redis_endpoint.port,
            kafka_brokers: format!("127.0.0.1:{}", free_port()?),
            api_ports: [free_port()?, free_port()?],
            database_url,
            admin_database_url: admin_database_url.to_owned(),
            database_name,
            postgres,
            redis_endpoint,
            redis,
            replica,
            replica_link,
            replicas_started: 1,
            kafka: None,
            apis: [None, None],
            workers: [None, None],
        };
        if queue == QueueKind::Kafka {
            let kafka = KafkaCluster::start_in(&dir.join("kafka"), BROKERS)?;
            cluster.kafka_brokers = kafka.bootstrap();
            cluster.kafka = Some(Arc::new(kafka));
        }
        for i in 0..REPLICAS {
            cluster.start_worker(i)?;
            cluster.start_api(i).await?;
        }
        Ok(cluster)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    fn service_env(&self) -> Vec<(String, String)> {
        let proxied = self
            .postgres
            .url_for(&self.database_url)
            .unwrap_or_default();
        [
            (
                "REDIS_URL",
                format!("redis://127.0.0.1:{}", self.redis_port),
            ),
            ("KAFKA_BROKERS", self.kafka_brokers.clone()),
            ("ISSUE_TOPIC_REPLICATION", BROKERS.to_string()),
            ("ISSUE_TOPIC_MIN_INSYNC_REPLICAS", "2".into()),
            ("DATABASE_URL", proxied),
            ("DATABASE_POOL_SIZE", "4".into()),
            ("ISSUE_QUEUE", self.queue.to_string()),
            ("WORKER_CLAIM_IDLE_MS", "3000".into()),
            ("ISSUE_TOPIC", TOPIC.into()),
            ("WORKER_GROUP_ID", GROUP.into()),
            ("ISSUER_ADMIN_TOKEN", ADMIN_TOKEN.into()),
            ("ISSUER_JWT_SECRET", JWT_SECRET.into()),
            ("ISSUER_HTTP_WORKERS", "1".into()),
            ("PUBLISH_TIMEOUT_MS", "5000".into()),
            ("RECONCILE_INTERVAL_MS", "1000".into()),
            ("REBUILD_TIMEOUT_MS", "30000".into()),
            ("WORKER_BATCH_LINGER_MS", "10".into()),
            ("WORKER_REDRIVE_INTERVAL_MS", "1000".into()),
            ("WORKER_RETRY_MAX_MS", "1000".into()),
            ("RUST_LOG", "info".into()),
            // Where Redis is the queue, a "yes" waits for the replica: a failover keeps it.
            (
                "REDIS_MIN_REPLICAS",
                u8::from(self.queue == QueueKind::Redis).to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Redis is killed and started again on the same data directory.
    pub async fn restart_redis(&mut self) -> anyhow::Result<()> {
        self.redis.restart().await
    }

    /// Redis dies and comes back with nothing: every key is gone, AOF included.
    pub async fn wipe_redis(&mut self) -> anyhow::Result<()> {
        self.redis.wipe().await
    }

    /// Redis dies after `lost` of load whose writes then vanish from its append-only file,
    /// as a machine crash under `appendfsync everysec` loses its last second; it restarts
    /// from what is left. Returns how many bytes of the file were cut.
    pub async fn cut_aof_tail(&mut self, lost: Duration) -> anyhow::Result<u64> {
        let kept = self.redis.aof_len()?;
        actix_rt::time::sleep(lost).await;
        self.redis.kill();
        let cut = self.redis.aof_len()?.saturating_sub(kept);
        self.redis.cut_aof_to(kept)?;
        self.redis.restart().await?;
        Ok(cut)
    }

    /// The replica stops receiving (its link cut) for `lag` of load, then the primary dies
    /// and the replica is promoted; the endpoint leads to it from then on, and a new replica
    /// follows it.
    pub async fn promote_lagging_replica(&mut self, lag: Duration) -> anyhow::Result<()> {
        self.replica_link.cut();
        actix_rt::time::sleep(lag).await;
        self.redis.kill();
        self.replica.promote().await?;
        let promoted = format!("127.0.0.1:{}", self.replica.port);
        self.redis_endpoint.fail_over_to(&promoted);
        self.replicas_started += 1;
        self.replica_link.fail_over_to(&promoted);
        self.replica_link.restore();
        let dir = self
            .dir
            .join(format!("redis-replica-{}", self.replicas_started));
        let follower = RedisServer::replica_of(self.replica_link.port, &dir).await?;
        let mut old = std::mem::replace(
            &mut self.redis,
            std::mem::replace(&mut self.replica, follower),
        );
        old.kill();
        Ok(())
    }

    /// Starts `binary` (issuer-api or issuer-worker) as replica `i`, logging to `<name>.log`.
    fn spawn_service(
        &self,
        binary: &str,
        name: &str,
        extra: (&str, String),
    ) -> anyhow::Result<Service> {
        let mut env = self.service_env();
        env.push((extra.0.to_owned(), extra.1));
        let program = self.bin_dir.join(binary);
        Service::spawn(name, &program, &[], &env, &self.dir, &self.log(name))
    }

    pub async fn start_api(&mut self, i: usize) -> anyhow::Result<()> {
        let listen = ("ISSUER_LISTEN", format!("127.0.0.1:{}", self.api_ports[i]));
        self.apis[i] = Some(self.spawn_service("issuer-api", &format!("api-{i}"), listen)?);
        wait_for_port(self.api_ports[i], Duration::from_secs(60)).await
    }

    pub fn kill_api(&mut self, i: usize) {
        if let Some(api) = self.apis[i].take() {
            api.kill9();
        }
    }

    pub fn start_worker(&mut self, i: usize) -> anyhow::Result<()> {
        // A stable identity (static membership): a restarted worker takes its partitions
        // back at once instead of waiting out the killed member's session.
        let instance = ("WORKER_INSTANCE_ID", format!("chaos-worker-{i}"));
        let name = format!("worker-{i}");
        self.workers[i] = Some(self.spawn_service("issuer-worker", &name, instance)?);
        Ok(())
    }

    pub fn kill_worker(&mut self, i: usize) {
        if let Some(worker) = self.workers[i].take() {
            worker.kill9();
        }
    }

    /// `issuer-api rebuild-redis --all`, as an operator would run it after losing Redis.
    pub fn rebuild_redis(&self) -> anyhow::Result<std::process::Child> {
        let out = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.log("rebuild"))?;
        Ok(std::process::Command::new(self.bin_dir.join("issuer-api"))
            .args(["rebuild-redis", "--all"])
            .envs(self.service_env())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?)
    }

    /// Stops the services gracefully, then the infrastructure, and drops the database.
    pub async fn shut_down(mut self, keep_database: bool) -> anyhow::Result<()> {
        for service in self
            .apis
            .iter_mut()
            .chain(self.workers.iter_mut())
            .filter_map(Option::take)
        {
            let name = service.name.clone();
            if !service.terminate(Duration::from_secs(20)) {
                eprintln!("warning: {name} did not stop cleanly on SIGTERM");
            }
        }
        // Its nodes stop when the last handle is dropped.
        self.kafka = None;
        self.redis.kill();
        self.replica.kill();
        if !keep_database {
            let mut admin = AsyncPgConnection::establish(&self.admin_database_url).await?;
            diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.database_name
            ))
            .execute(&mut admin)
            .await?;
        }
        Ok(())
    }
}
