//! The cluster the chaos run owns: its own Redis (AOF), either a primary with a replica
//! behind a link that can be cut, both reached through one endpoint that a failover
//! repoints, or a primary with two replicas under three Sentinels that the services follow
//! (`deploy/redis/sentinel.sh`), or a Redis Cluster of three primaries with a replica each
//! (`deploy/redis/cluster.sh`); in Kafka mode its own
//! three Apache Kafka brokers (topics replicated 3 times, 2 in sync to acknowledge); its own
//! database behind a cuttable proxy; two issuer-api and two issuer-worker processes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use coupon_core::domain::QueueKind;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use coupon_core::config::RedisArgs;
use coupon_core::redis::connection::RedisConnection;
use testkit::credentials::{DEV_AUDIENCE, DEV_ISSUER};
use testkit::kafka_cluster::KafkaCluster;
use testkit::process::{Service, free_port, wait_for_port};
use testkit::proxy::CuttableProxy;
use testkit::redis_cluster::{Failover, RedisCluster};
use testkit::redis_server::RedisServer;
use testkit::sentinel_topology::SentinelTopology;

pub const ADMIN_TOKEN: &str = "chaos-admin-token";
/// The HS256 secret the cluster's APIs verify users' tokens with; the load signs with it.
pub const JWT_SECRET: &str = "chaos-only-hs256-secret-of-32-bytes-or-more";
pub const TOPIC: &str = "coupon-issue";
pub const GROUP: &str = "coupon-issue-worker";
pub const REPLICAS: usize = 2;
/// Brokers in Kafka mode: one may fail with no pause in sales, two stop them.
pub const BROKERS: usize = 3;
/// Longest `issuer-api hand-over` may run: its default lease (60 s) bounds it, plus a margin
/// for its start-up.
const HAND_OVER_PATIENCE: Duration = Duration::from_secs(90);

/// The Redis the cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RedisTopology {
    /// One node (and a replica a fault promotes), behind one endpoint.
    Single,
    /// A primary and two replicas under three Sentinels.
    Sentinel,
    /// A Redis Cluster: three primaries, a replica each.
    Cluster,
}

/// The single topology's nodes.
struct Endpointed {
    /// Leads to the primary, and after a failover to the promoted replica.
    endpoint: CuttableProxy,
    primary: RedisServer,
    /// A replica of the primary, replicating through `link`.
    replica: RedisServer,
    link: CuttableProxy,
    /// Replicas started so far, each in a directory of its own.
    replicas_started: usize,
}

enum RedisNodes {
    Single(Box<Endpointed>),
    Sentinel(SentinelTopology),
    Cluster(RedisCluster),
}

pub struct Cluster {
    pub queue: QueueKind,
    pub dir: PathBuf,
    bin_dir: PathBuf,
    /// Bootstrap servers the services are given; in the Redis queue mode a port where
    /// nothing listens, so that any use of Kafka would show.
    pub kafka_brokers: String,
    pub api_ports: [u16; REPLICAS],
    /// The chaos database, reached directly (for checks).
    pub database_url: String,
    admin_database_url: String,
    database_name: String,
    pub postgres: CuttableProxy,
    redis: RedisNodes,
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
        topology: RedisTopology,
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

        let redis = match topology {
            RedisTopology::Single => {
                let primary = RedisServer::start(&dir.join("redis"), &[]).await?;
                let link = CuttableProxy::start(&format!("127.0.0.1:{}", primary.port)).await?;
                let replica =
                    RedisServer::replica_of(link.port, &dir.join("redis-replica-1")).await?;
                let endpoint = CuttableProxy::start(&format!("127.0.0.1:{}", primary.port)).await?;
                RedisNodes::Single(Box::new(Endpointed {
                    endpoint,
                    primary,
                    replica,
                    link,
                    replicas_started: 1,
                }))
            }
            RedisTopology::Sentinel => {
                let topology = SentinelTopology::start(&dir.join("redis-sentinel"))?;
                topology.await_replicas().await?;
                RedisNodes::Sentinel(topology)
            }
            RedisTopology::Cluster => {
                RedisNodes::Cluster(RedisCluster::start(&dir.join("redis-cluster"))?)
            }
        };
        let mut cluster = Cluster {
            queue,
            dir: dir.to_owned(),
            bin_dir: bin_dir.to_owned(),
            kafka_brokers: format!("127.0.0.1:{}", free_port()?),
            api_ports: [free_port()?, free_port()?],
            database_url,
            admin_database_url: admin_database_url.to_owned(),
            database_name,
            postgres,
            redis,
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

    /// A connection for the checks and the poison: to the primary now, or a cluster's
    /// client.
    pub async fn redis(&self) -> anyhow::Result<RedisConnection> {
        #[derive(clap::Parser)]
        struct Settings {
            #[command(flatten)]
            redis: RedisArgs,
        }
        let args = match &self.redis {
            RedisNodes::Single(nodes) => {
                vec![format!(
                    "--redis-url=redis://127.0.0.1:{}",
                    nodes.endpoint.port
                )]
            }
            RedisNodes::Sentinel(topology) => vec![format!(
                "--redis-url=redis://127.0.0.1:{}",
                topology.primary().await?
            )],
            RedisNodes::Cluster(cluster) => {
                vec![format!("--redis-cluster-nodes={}", cluster.seed_list())]
            }
        };
        let settings = <Settings as clap::Parser>::try_parse_from(
            std::iter::once("checks".to_owned()).chain(args),
        )?;
        Ok(settings.redis.connect().await?)
    }

    fn service_env(&self) -> Vec<(String, String)> {
        let proxied = self
            .postgres
            .url_for(&self.database_url)
            .unwrap_or_default();
        // Through Sentinel the URL gives only credentials and database; the primary is
        // whichever the Sentinels name, and every answer waits for every replica they know
        // (any of them may be promoted), with no REDIS_MIN_REPLICAS. On one node, where
        // Redis is the queue, a "yes" waits for the replica a fault promotes.
        // On a cluster, where Redis is the queue each coupon's replica confirms (required
        // there); Kafka mode runs without confirmations.
        let mut cluster_nodes = None;
        let (redis_port, sentinels, min_replicas) = match &self.redis {
            RedisNodes::Single(nodes) => (
                nodes.endpoint.port,
                None,
                usize::from(self.queue == QueueKind::Redis),
            ),
            RedisNodes::Sentinel(topology) => {
                (topology.nodes[0], Some(topology.sentinel_list()), 0)
            }
            RedisNodes::Cluster(cluster) => {
                cluster_nodes = Some(cluster.seed_list());
                (
                    cluster.nodes[0],
                    None,
                    usize::from(self.queue == QueueKind::Redis),
                )
            }
        };
        [
            ("REDIS_URL", format!("redis://127.0.0.1:{redis_port}")),
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
            // A test deployment: its own printed secrets, readiness on the API's listener.
            ("ISSUER_DEV_SECRETS", "allow".into()),
            ("ISSUER_JWT_ISSUER", DEV_ISSUER.into()),
            ("ISSUER_JWT_AUDIENCE", DEV_AUDIENCE.into()),
            ("ISSUER_OPS_LISTEN", "public".into()),
            ("ISSUER_HTTP_WORKERS", "1".into()),
            ("PUBLISH_TIMEOUT_MS", "5000".into()),
            ("RECONCILE_INTERVAL_MS", "1000".into()),
            ("REBUILD_TIMEOUT_MS", "30000".into()),
            ("WORKER_BATCH_LINGER_MS", "10".into()),
            ("WORKER_REDRIVE_INTERVAL_MS", "1000".into()),
            ("WORKER_RETRY_MAX_MS", "1000".into()),
            ("RUST_LOG", "info".into()),
            ("REDIS_MIN_REPLICAS", min_replicas.to_string()),
        ]
        .into_iter()
        .chain(sentinels.map(|list| ("REDIS_SENTINELS", list)))
        .chain(cluster_nodes.map(|list| ("REDIS_CLUSTER_NODES", list)))
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn single(&mut self) -> anyhow::Result<&mut Endpointed> {
        match &mut self.redis {
            RedisNodes::Single(nodes) => Ok(nodes),
            _ => bail!("a fault of the single topology on another"),
        }
    }

    fn sentinel(&self) -> anyhow::Result<&SentinelTopology> {
        match &self.redis {
            RedisNodes::Sentinel(topology) => Ok(topology),
            _ => bail!("a fault of the Sentinel topology on another"),
        }
    }

    fn redis_cluster(&self) -> anyhow::Result<&RedisCluster> {
        match &self.redis {
            RedisNodes::Cluster(cluster) => Ok(cluster),
            _ => bail!("a fault of the Redis Cluster on another topology"),
        }
    }

    /// kill -9 of the primary holding `coupon`; once its replica took over (after
    /// `cluster-node-timeout`), it is started again and rejoins as a replica. Returns (old
    /// primary, new primary).
    pub async fn kill_cluster_primary(&self, coupon: i64) -> anyhow::Result<(u16, u16)> {
        let cluster = self.redis_cluster()?;
        let key = coupon_meta(coupon)?;
        let old = cluster.primary_of(&key).await?;
        cluster.kill(old)?;
        let new = cluster.await_failover_from(&key, old).await?;
        cluster.start_node(old)?;
        Ok((old, new))
    }

    /// `CLUSTER FAILOVER` of `mode` to the replica of the primary holding `coupon`. Returns
    /// (old primary, new primary).
    pub async fn fail_over_cluster(
        &self,
        coupon: i64,
        mode: Failover,
    ) -> anyhow::Result<(u16, u16)> {
        let cluster = self.redis_cluster()?;
        let key = coupon_meta(coupon)?;
        let old = cluster.primary_of(&key).await?;
        let replica = cluster.replica_of(old).await?;
        cluster.fail_over_to(replica, mode).await?;
        Ok((old, replica))
    }

    /// Moves `coupon`'s slot, keys and all, to another primary, as `redis-cli --cluster
    /// reshard` does. Returns (from, to).
    pub async fn migrate_coupon(&self, coupon: i64) -> anyhow::Result<(u16, u16)> {
        let (from, to) = self.coupon_and_another_primary(coupon).await?;
        self.redis_cluster()?
            .move_slot_of(&coupon_meta(coupon)?, to)
            .await?;
        Ok((from, to))
    }

    /// The primary holding `coupon`'s slot, and another one.
    async fn coupon_and_another_primary(&self, coupon: i64) -> anyhow::Result<(u16, u16)> {
        let cluster = self.redis_cluster()?;
        let from = cluster.primary_of(&coupon_meta(coupon)?).await?;
        let to = cluster
            .primaries()
            .await?
            .into_iter()
            .find(|port| *port != from)
            .context("another primary")?;
        Ok((from, to))
    }

    /// kill -9 of the primary the Sentinels name; once they name another, it is started
    /// again (and becomes a replica). Returns (old primary, new primary).
    pub async fn kill_sentinel_primary(&self) -> anyhow::Result<(u16, u16)> {
        let topology = self.sentinel()?;
        let old = topology.primary().await?;
        topology.kill(old)?;
        let new = topology.await_failover_from(old).await?;
        topology.start_node(old)?;
        Ok((old, new))
    }

    /// A split brain: the primary cut off from the Sentinels and from one replica, while
    /// the APIs and the other replica still reach it (the replica that would confirm its
    /// writes on its side of the partition), until the Sentinels elect another and `held`
    /// more has passed; then healed, and waited for until the Sentinels demote the old
    /// primary and repoint the replica. Returns the old primary, the replica kept on its
    /// side and the new primary. Healed whatever happened meanwhile.
    pub async fn split_sentinel_primary(&self, held: Duration) -> anyhow::Result<(u16, u16, u16)> {
        let topology = self.sentinel()?;
        let old = topology.primary().await?;
        let kept = topology.replica_of(old).context("a replica")?;
        topology.split(old, Some(kept))?;
        let elected = topology.await_failover_from(old).await;
        if elected.is_ok() {
            actix_rt::time::sleep(held).await;
        }
        topology.heal(old, Some(kept))?;
        let new = elected?;
        topology.await_replica_of(old, new).await?;
        topology.await_replicas().await?;
        Ok((old, kept, new))
    }

    /// A failback: the Sentinels make `node` the primary again.
    pub async fn fail_back_to(&self, node: u16) -> anyhow::Result<()> {
        self.sentinel()?.fail_over_to(node).await
    }

    /// Redis is killed and started again on the same data directory.
    pub async fn restart_redis(&mut self) -> anyhow::Result<()> {
        self.single()?.primary.restart().await
    }

    /// Redis dies and comes back with nothing: every key is gone, AOF included.
    pub async fn wipe_redis(&mut self) -> anyhow::Result<()> {
        self.single()?.primary.wipe().await
    }

    /// Redis dies after `lost` of load whose writes then vanish from its append-only file,
    /// as a machine crash under `appendfsync everysec` loses its last second; it restarts
    /// from what is left. Returns how many bytes of the file were cut.
    pub async fn cut_aof_tail(&mut self, lost: Duration) -> anyhow::Result<u64> {
        let primary = &mut self.single()?.primary;
        let kept = primary.aof_len()?;
        actix_rt::time::sleep(lost).await;
        primary.kill();
        let cut = primary.aof_len()?.saturating_sub(kept);
        primary.cut_aof_to(kept)?;
        primary.restart().await?;
        Ok(cut)
    }

    /// The replica stops receiving (its link cut) for `lag` of load, then the primary dies
    /// and the replica is promoted; the endpoint leads to it from then on, and a new replica
    /// follows it.
    pub async fn promote_lagging_replica(&mut self, lag: Duration) -> anyhow::Result<()> {
        let dir = self.dir.clone();
        let nodes = self.single()?;
        nodes.link.cut();
        actix_rt::time::sleep(lag).await;
        nodes.primary.kill();
        nodes.replica.promote().await?;
        let promoted = format!("127.0.0.1:{}", nodes.replica.port);
        nodes.endpoint.fail_over_to(&promoted);
        nodes.replicas_started += 1;
        nodes.link.fail_over_to(&promoted);
        nodes.link.restore();
        let dir = dir.join(format!("redis-replica-{}", nodes.replicas_started));
        let follower = RedisServer::replica_of(nodes.link.port, &dir).await?;
        let mut old = std::mem::replace(
            &mut nodes.primary,
            std::mem::replace(&mut nodes.replica, follower),
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

    /// `issuer-api hand-over --coupon --to` another primary, as an operator would run it to
    /// move a selling coupon's slot on a cluster. Returns (from, to, what it did).
    pub async fn hand_over_coupon(&self, coupon: i64) -> anyhow::Result<(u16, u16, String)> {
        let (from, to) = self.coupon_and_another_primary(coupon).await?;
        let (coupon_arg, to_arg) = (coupon.to_string(), format!("127.0.0.1:{to}"));
        let did = self
            .hand_over(&["--coupon", &coupon_arg, "--to", &to_arg])
            .await?;
        Ok((from, to, did))
    }

    /// What the last `issuer-api hand-over` did with the coupons, from its log.
    fn last_hand_over(&self) -> anyhow::Result<String> {
        let printed = std::fs::read_to_string(self.log("hand-over"))?;
        let last_run = printed
            .rsplit("hand-over: coupons closed")
            .next()
            .unwrap_or("");
        let count = |said: &str| last_run.lines().filter(|line| line.contains(said)).count();
        Ok(format!(
            "{} coupons carried over, {} left to a rebuild, {} not verified",
            count(": carried over"),
            count(": not carried over"),
            count(": not verified")
        ))
    }

    /// `issuer-api hand-over` with `args`, as an operator would run it for a planned
    /// switchover: waits for it to exit, and says what it did with the coupons.
    pub async fn hand_over(&self, args: &[&str]) -> anyhow::Result<String> {
        let log = self.log("hand-over");
        let out = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut child = std::process::Command::new(self.bin_dir.join("issuer-api"))
            .arg("hand-over")
            .args(args)
            .envs(self.service_env())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let deadline = std::time::Instant::now() + HAND_OVER_PATIENCE;
        // Polled, not waited on: the load shares this thread.
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                bail!("issuer-api hand-over still running after {HAND_OVER_PATIENCE:?}");
            }
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        };
        anyhow::ensure!(
            status.success(),
            "issuer-api hand-over failed ({status}): see {}",
            log.display()
        );
        self.last_hand_over()
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
        // The Sentinel topology and the Redis Cluster stop when dropped.
        if let RedisNodes::Single(nodes) = &mut self.redis {
            nodes.primary.kill();
            nodes.replica.kill();
        }
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

/// The meta key of `coupon` (the chaos cluster runs with no key prefix): its slot is the
/// coupon's.
fn coupon_meta(coupon: i64) -> anyhow::Result<String> {
    let id = coupon_core::domain::CouponId::new(coupon)?;
    Ok(coupon_core::redis::keys::CouponKeys::new("", id).meta)
}
