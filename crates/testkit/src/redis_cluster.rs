//! A Redis Cluster through the one script that runs it (`deploy/redis/cluster.sh`): the one
//! `make test` starts for the whole suite ([`shared_nodes`]), or one of a test's or the
//! chaos suite's own ([`RedisCluster::start`]: three primaries, a replica each, on free
//! loopback ports, stopped when dropped), which the test may kill, fail over and reshard.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use redis::aio::MultiplexedConnection;

use crate::process::free_port;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/redis/cluster.sh");
/// The cluster `make test` starts (Makefile, `test-cluster`), when REDIS_CLUSTER_NODES
/// does not name another.
pub const SHARED_NODES: &str =
    "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103,127.0.0.1:7104,127.0.0.1:7105,127.0.0.1:7106";
/// Starts tried before giving up (see `RedisCluster::start`).
const START_ATTEMPTS: u32 = 3;
/// Longest a failover or a slot's move may take to show in the cluster's own answer.
const PATIENCE: Duration = Duration::from_secs(30);

/// `REDIS_CLUSTER_NODES` of the suite's shared cluster.
pub fn shared_nodes() -> String {
    std::env::var("REDIS_CLUSTER_NODES").unwrap_or_else(|_| SHARED_NODES.to_owned())
}

pub struct RedisCluster {
    dir: PathBuf,
    /// Every node's port; the first three were the primaries at start.
    pub nodes: Vec<u16>,
}

impl RedisCluster {
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        // As for Sentinel: ports picked free may be taken before they are bound, and the
        // start is then tried again from nothing on others.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let cluster = Self {
                dir: dir.to_owned(),
                nodes: (0..6).map(|_| free_node_port()).collect::<Result<_, _>>()?,
            };
            let ports = cluster
                .nodes
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",");
            match cluster.script(&["start", &ports]) {
                Ok(()) => return Ok(cluster),
                Err(err) if attempts < START_ATTEMPTS => {
                    eprintln!("[cluster] start failed ({err:#}); again on other ports");
                    drop(cluster);
                    std::fs::remove_dir_all(dir)?;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// `REDIS_CLUSTER_NODES` for the services.
    pub fn seed_list(&self) -> String {
        self.nodes
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn script(&self, args: &[&str]) -> anyhow::Result<()> {
        let (verb, rest) = args.split_first().context("a verb")?;
        let status = Command::new("bash")
            .arg(SCRIPT)
            .arg(verb)
            .arg(&self.dir)
            .args(rest)
            .status()?;
        if !status.success() {
            bail!("cluster.sh {args:?} exited {status}");
        }
        Ok(())
    }

    /// kill -9 of the node on `port`.
    pub fn kill(&self, port: u16) -> anyhow::Result<()> {
        self.script(&["kill", &port.to_string()])
    }

    /// A new node, a further replica of the primary on `primary`, once in sync; its port.
    pub fn add_replica(&mut self, primary: u16) -> anyhow::Result<u16> {
        let port = free_node_port()?;
        self.script(&["add-replica", &port.to_string(), &primary.to_string()])?;
        self.nodes.push(port);
        Ok(port)
    }

    /// SIGSTOP of the node on `port`: it answers nobody, not even the cluster bus, until
    /// [`RedisCluster::resume`].
    pub fn pause(&self, port: u16) -> anyhow::Result<()> {
        self.script(&["pause", &port.to_string()])
    }

    pub fn resume(&self, port: u16) -> anyhow::Result<()> {
        self.script(&["resume", &port.to_string()])
    }

    /// Starts the node on `port` again, with its data and its view of the cluster.
    pub fn start_node(&self, port: u16) -> anyhow::Result<()> {
        self.script(&["start-node", &port.to_string()])
    }

    /// The port of the primary serving `key`'s slot, as the live nodes agree.
    pub async fn primary_of(&self, key: &str) -> anyhow::Result<u16> {
        let mut slot = None;
        for port in &self.nodes {
            if let Ok(found) = slot_of(*port, key).await {
                slot = Some(found);
                break;
            }
        }
        let slot = slot.context("no node answers")?;
        for port in &self.nodes {
            let Ok(mut con) = node(*port).await else {
                continue;
            };
            let Ok(slots) = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<Vec<redis::Value>>(&mut con)
                .await
            else {
                continue;
            };
            for range in slots {
                let redis::Value::Array(parts) = range else {
                    continue;
                };
                let (Some(start), Some(end), Some(primary)) =
                    (parts.first(), parts.get(1), parts.get(2))
                else {
                    continue;
                };
                let start: u16 = redis::FromRedisValue::from_redis_value(start.clone())?;
                let end: u16 = redis::FromRedisValue::from_redis_value(end.clone())?;
                if (start..=end).contains(&slot) {
                    // [host, port, node id, metadata]
                    let primary: Vec<redis::Value> =
                        redis::FromRedisValue::from_redis_value(primary.clone())?;
                    let port = primary.get(1).context("a primary without a port")?;
                    return Ok(redis::FromRedisValue::from_redis_value(port.clone())?);
                }
            }
        }
        bail!("no node answers which primary serves slot {slot}")
    }

    /// The ports of the primaries now.
    pub async fn primaries(&self) -> anyhow::Result<Vec<u16>> {
        let mut primaries = Vec::new();
        for port in &self.nodes {
            if let Ok(role) = role(*port).await
                && role == "master"
            {
                primaries.push(*port);
            }
        }
        Ok(primaries)
    }

    /// The replica of the primary on `primary`.
    pub async fn replica_of(&self, primary: u16) -> anyhow::Result<u16> {
        let mut con = node(primary).await?;
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut con)
            .await?;
        info.lines()
            .filter(|line| line.starts_with("slave"))
            .find_map(|line| {
                line.split(',')
                    .find_map(|field| field.strip_prefix("port="))
                    .and_then(|port| port.parse().ok())
            })
            .with_context(|| format!("no replica of {primary}"))
    }

    /// Waits until `key`'s slot is served by another primary than `old`, and every live
    /// node says the cluster is ok.
    pub async fn await_failover_from(&self, key: &str, old: u16) -> anyhow::Result<u16> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(now) = self.primary_of(key).await
                && now != old
                && self.ok_everywhere(old).await
            {
                return Ok(now);
            }
            if Instant::now() > deadline {
                bail!("{key}'s slot was not failed over from {old} within {PATIENCE:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether every node but `except` answers `cluster_state:ok`.
    async fn ok_everywhere(&self, except: u16) -> bool {
        for port in self.nodes.iter().filter(|port| **port != except) {
            let ok = async {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut node(*port).await?)
                    .await?;
                Ok::<_, anyhow::Error>(info.contains("cluster_state:ok"))
            };
            if !ok.await.unwrap_or(false) {
                return false;
            }
        }
        true
    }

    /// Moves `key`'s slot, with its keys, to the primary on `to`, as `redis-cli --cluster
    /// reshard` does: importing and migrating marks, MIGRATE in batches (during which
    /// clients meet `ASK` and `TRYAGAIN`), then the slot assigned to `to` everywhere.
    pub async fn move_slot_of(&self, key: &str, to: u16) -> anyhow::Result<()> {
        let from = self.primary_of(key).await?;
        let slot = slot_of(from, key).await?;
        if from == to {
            bail!("slot {slot} is on {to} already");
        }
        let mut source = node(from).await?;
        let mut target = node(to).await?;
        let source_id = node_id(&mut source).await?;
        let target_id = node_id(&mut target).await?;
        setslot(&mut target, slot, "IMPORTING", &source_id).await?;
        setslot(&mut source, slot, "MIGRATING", &target_id).await?;
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query_async(&mut source)
                .await?;
            if keys.is_empty() {
                break;
            }
            let () = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to)
                .arg("")
                .arg(0)
                .arg(5_000)
                .arg("KEYS")
                .arg(&keys)
                .query_async(&mut source)
                .await?;
        }
        setslot(&mut target, slot, "NODE", &target_id).await?;
        setslot(&mut source, slot, "NODE", &target_id).await?;
        for port in &self.nodes {
            if *port != from
                && *port != to
                && let Ok(mut other) = node(*port).await
            {
                // A replica or a down node learns it from the others' gossip.
                let _: Result<(), _> = setslot(&mut other, slot, "NODE", &target_id).await;
            }
        }
        Ok(())
    }

    /// `CLUSTER FAILOVER` of `mode` on the replica on `replica`, which then takes its
    /// primary's slots; returns once it says it is a primary.
    pub async fn fail_over_to(&self, replica: u16, mode: Failover) -> anyhow::Result<()> {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("FAILOVER");
        match mode {
            Failover::Graceful => {}
            Failover::Force => {
                cmd.arg("FORCE");
            }
            Failover::Takeover => {
                cmd.arg("TAKEOVER");
            }
        }
        let mut con = node(replica).await?;
        let id = node_id(&mut con).await?;
        let () = cmd.query_async(&mut con).await?;
        let deadline = Instant::now() + PATIENCE;
        while role(replica).await.ok().as_deref() != Some("master")
            || !self.known_everywhere_as_primary(&id).await
        {
            if Instant::now() > deadline {
                bail!("{replica} was not promoted within {PATIENCE:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Whether every node that answers takes node `id` for a primary. The promoted replica
    /// says so first, the others once its gossip reached them: a caller that asks one of
    /// them right after the promotion was seen to be told the old primary (CI, stop 42).
    async fn known_everywhere_as_primary(&self, id: &str) -> bool {
        self.views().await.iter().all(|nodes| {
            nodes.lines().any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.first() == Some(&id)
                    && fields
                        .get(2)
                        .is_some_and(|flags| flags.split(',').any(|flag| flag == "master"))
            })
        })
    }

    /// `CLUSTER NODES` as each node that answers sees the cluster.
    async fn views(&self) -> Vec<String> {
        let mut views = Vec::new();
        for &port in &self.nodes {
            let Ok(mut con) = node(port).await else {
                continue;
            };
            if let Ok(nodes) = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async::<String>(&mut con)
                .await
            {
                views.push(nodes);
            }
        }
        views
    }

    /// Returns once the node on `port` replicates from the primary on `primary`, its link up
    /// (after a full sync where it had writes the primary lacks), and every node that
    /// answers knows it as that primary's replica (a primary ignores a manual failover asked
    /// by a node it does not know so, and the others refuse it their votes while they take
    /// it for a primary).
    pub async fn await_following(&self, port: u16, primary: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + PATIENCE;
        let primary_id = node_id(&mut node(primary).await?).await?;
        let follower_id = node_id(&mut node(port).await?).await?;
        loop {
            let known = self.views().await.iter().all(|nodes| {
                nodes.lines().any(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    fields.first() == Some(&follower_id.as_str())
                        && fields.get(3) == Some(&primary_id.as_str())
                })
            });
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut node(port).await?)
                .await?;
            let field = |name: &str| {
                info.lines()
                    .find_map(|line| line.strip_prefix(name))
                    .map(str::trim)
                    .map(str::to_owned)
            };
            if known
                && field("master_port:") == Some(primary.to_string())
                && field("master_link_status:").as_deref() == Some("up")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{port} did not follow {primary} within {PATIENCE:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Cuts the replication from the primary on `primary`: its replicas' links are dropped
    /// and cannot sync again (PSYNC and SYNC are taken from the default user, which the
    /// replicas log in as), while clients and the cluster bus still reach it. What it
    /// writes from now on is on no replica.
    pub async fn cut_replication(&self, primary: u16) -> anyhow::Result<()> {
        let mut con = node(primary).await?;
        let () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("default")
            .arg("-psync")
            .arg("-sync")
            .query_async(&mut con)
            .await?;
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("replica")
            .query_async(&mut con)
            .await?;
        Ok(())
    }

    /// Gives the node on `port` back what [`RedisCluster::cut_replication`] took.
    pub async fn restore_replication(&self, port: u16) -> anyhow::Result<()> {
        let () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("default")
            .arg("+psync")
            .arg("+sync")
            .query_async(&mut node(port).await?)
            .await?;
        Ok(())
    }

    /// Returns once the replica of the primary on `primary` has every write the primary
    /// made so far: a write of the test's own on `key`'s slot, then WAIT for one replica.
    pub async fn await_replicated(&self, primary: u16, key: &str) -> anyhow::Result<()> {
        let mut con = node(primary).await?;
        let () = redis::cmd("SET")
            .arg(key)
            .arg(1)
            .query_async(&mut con)
            .await?;
        let acknowledged: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(5_000)
            .query_async(&mut con)
            .await?;
        if acknowledged < 1 {
            bail!("the replica of {primary} did not acknowledge within 5 s");
        }
        Ok(())
    }
}

/// How a replica takes over (`CLUSTER FAILOVER`'s options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failover {
    /// Once it has every write of its primary, which pauses its clients meanwhile.
    Graceful,
    /// Without asking its primary (which may be down), with the other primaries' votes.
    Force,
    /// Without asking anyone: the replica takes the slots on its own authority, with
    /// whatever it has.
    Takeover,
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let _ = self.script(&["stop"]);
    }
}

/// The cluster slot of `key`, as the node on `port` computes it.
pub async fn slot_of(port: u16, key: &str) -> anyhow::Result<u16> {
    Ok(redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut node(port).await?)
        .await?)
}

/// A free port whose cluster bus port (port + 10000) is free too.
fn free_node_port() -> anyhow::Result<u16> {
    loop {
        let port = free_port()?;
        if std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
}

/// A plain connection to the one node on `port`, for cluster administration.
pub async fn node(port: u16) -> redis::RedisResult<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    redis::Client::open(format!("redis://127.0.0.1:{port}"))?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

async fn role(port: u16) -> anyhow::Result<String> {
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut node(port).await?)
        .await?;
    info.lines()
        .find_map(|line| line.strip_prefix("role:"))
        .map(|role| role.trim().to_owned())
        .context("INFO replication has no role")
}

async fn node_id(con: &mut MultiplexedConnection) -> anyhow::Result<String> {
    Ok(redis::cmd("CLUSTER").arg("MYID").query_async(con).await?)
}

async fn setslot(
    con: &mut MultiplexedConnection,
    slot: u16,
    state: &str,
    id: &str,
) -> redis::RedisResult<()> {
    redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg(state)
        .arg(id)
        .query_async(con)
        .await
}
