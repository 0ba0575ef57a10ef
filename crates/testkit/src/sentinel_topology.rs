//! A replicated Redis under Sentinel of a test's or the chaos suite's own, through the one
//! script that runs it (`deploy/redis/sentinel.sh`): a primary, two replicas, three
//! Sentinels on free loopback ports. Stopped when dropped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::process::free_port;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/redis/sentinel.sh"
);
/// The master's name the script's Sentinels monitor (its default).
pub const MASTER: &str = "coupon";
/// Starts tried before giving up (see `SentinelTopology::start`).
const START_ATTEMPTS: u32 = 3;
/// Longest a failover may take to show in the Sentinels' answer.
const FAILOVER_PATIENCE: Duration = Duration::from_secs(30);

pub struct SentinelTopology {
    dir: PathBuf,
    /// The Redis nodes' ports; the first was the primary at start.
    pub nodes: Vec<u16>,
    pub sentinels: Vec<u16>,
}

impl SentinelTopology {
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        // Free ports are picked before the nodes bind them, and a test running beside may
        // take one meanwhile: the script refuses a port something else holds, and the
        // start is tried again, from nothing, on other ports.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let topology = Self {
                dir: dir.to_owned(),
                nodes: (0..3).map(|_| free_port()).collect::<Result<_, _>>()?,
                sentinels: (0..3).map(|_| free_port()).collect::<Result<_, _>>()?,
            };
            match topology.script(&["start", &list(&topology.nodes), &list(&topology.sentinels)]) {
                Ok(()) => return Ok(topology),
                Err(err) if attempts < START_ATTEMPTS => {
                    eprintln!("[sentinel] start failed ({err:#}); again on other ports");
                    // Stops whatever started, before the folder goes.
                    drop(topology);
                    std::fs::remove_dir_all(dir)?;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Waits until every replica is online with the primary the Sentinels name, and every
    /// Sentinel knows them all: before that, the primary refuses writes
    /// (`min-replicas-to-write`), and a failover finds no replica to promote.
    pub async fn await_replicas(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + FAILOVER_PATIENCE;
        let replicas = self.nodes.len() - 1;
        loop {
            let ready = async {
                let primary = self.primary().await?;
                let mut con = connect(primary).await?;
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut con)
                    .await?;
                let mut known = usize::MAX;
                for port in &self.sentinels {
                    let mut sentinel = connect(*port).await?;
                    let listed: Vec<HashMap<String, String>> = redis::cmd("SENTINEL")
                        .arg("REPLICAS")
                        .arg(MASTER)
                        .query_async(&mut sentinel)
                        .await?;
                    let up = listed
                        .iter()
                        .filter(|replica| {
                            replica.get("flags").is_some_and(|flags| {
                                !flags.contains("s_down") && !flags.contains("disconnected")
                            })
                        })
                        .count();
                    known = known.min(up);
                }
                Ok::<_, anyhow::Error>(info.matches("state=online").count().min(known))
            };
            if ready.await.is_ok_and(|ready| ready >= replicas) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the replicas were not all online after {FAILOVER_PATIENCE:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn script(&self, args: &[impl AsRef<std::ffi::OsStr> + std::fmt::Debug]) -> anyhow::Result<()> {
        let (verb, rest) = args.split_first().context("a verb")?;
        let status = Command::new("bash")
            .arg(SCRIPT)
            .arg(verb)
            .arg(&self.dir)
            .args(rest)
            .status()?;
        if !status.success() {
            bail!("sentinel.sh {args:?} exited {status}");
        }
        Ok(())
    }

    /// `REDIS_SENTINELS` for the services.
    pub fn sentinel_list(&self) -> String {
        self.sentinels
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The port of the primary the Sentinels name now.
    pub async fn primary(&self) -> anyhow::Result<u16> {
        let mut last = None;
        for port in &self.sentinels {
            let asked = async {
                let mut con = connect(*port).await?;
                let (_, primary): (String, u16) = redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(MASTER)
                    .query_async(&mut con)
                    .await?;
                Ok::<_, redis::RedisError>(primary)
            };
            match asked.await {
                Ok(primary) => return Ok(primary),
                Err(err) => last = Some(err),
            }
        }
        Err(last.context("no Sentinel")?.into())
    }

    /// Starts a new replica of the primary on `primary`; returns its port. The Sentinels
    /// find it through the primary (`await_replicas` waits for that).
    pub fn add_replica(&mut self, primary: u16) -> anyhow::Result<u16> {
        let port = free_port()?;
        self.script(&["add-replica", &port.to_string(), &primary.to_string()])?;
        self.nodes.push(port);
        Ok(port)
    }

    /// SIGSTOP or SIGCONT to the Redis node on `port`: a frozen replica stays linked and
    /// acknowledges nothing.
    pub fn signal(&self, port: u16, signal: &str) -> anyhow::Result<()> {
        crate::process::signal_pid_file(&self.dir.join(format!("redis-{port}/pid")), signal)
    }

    /// SENTINEL RESET on every Sentinel: they forget the replicas they knew and learn again
    /// those the primary has (how an operator retires a node gone for good).
    pub async fn reset(&self) -> anyhow::Result<()> {
        for port in &self.sentinels {
            let mut sentinel = connect(*port).await?;
            let _: i64 = redis::cmd("SENTINEL")
                .arg("RESET")
                .arg(MASTER)
                .query_async(&mut sentinel)
                .await?;
        }
        Ok(())
    }

    /// A replica of `primary` (the first other node).
    pub fn replica_of(&self, primary: u16) -> Option<u16> {
        self.nodes.iter().copied().find(|node| *node != primary)
    }

    /// kill -9 of the node on `port`.
    pub fn kill(&self, port: u16) -> anyhow::Result<()> {
        self.script(&["kill", &port.to_string()])
    }

    /// Starts the node on `port` again (a former primary comes back as the primary it
    /// was, until the Sentinels make it a replica).
    pub fn start_node(&self, port: u16) -> anyhow::Result<()> {
        self.script(&["start-node", &port.to_string()])
    }

    /// Cuts the node on `port` off from its replicas and the Sentinels, while the services'
    /// connections to it stay (`sentinel.sh split` says how). The replica on `keep`, if
    /// any, stays on the node's side: still replicating from it, lost to the Sentinels.
    pub fn split(&self, port: u16, keep: Option<u16>) -> anyhow::Result<()> {
        self.script(&partition_args("split", port, keep))
    }

    /// Lets the node (and `keep`) be reached again: the Sentinels then demote it, if
    /// another node was made primary meanwhile, and repoint `keep`.
    pub fn heal(&self, port: u16, keep: Option<u16>) -> anyhow::Result<()> {
        self.script(&partition_args("heal", port, keep))
    }

    /// Waits until the node on `port` replicates from `primary`, linked (the Sentinels
    /// demoted or re-pointed it). A new connection each time: demoting a node, the
    /// Sentinels drop its clients.
    pub async fn await_replica_of(&self, port: u16, primary: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + FAILOVER_PATIENCE;
        loop {
            let role = async {
                let mut con = connect(port).await?;
                // A replica's: ("slave", host, primary's port, link state, offset).
                redis::cmd("ROLE")
                    .query_async::<(String, String, u16, String, i64)>(&mut con)
                    .await
            };
            if let Ok((role, _, following, link, _)) = role.await
                && role == "slave"
                && following == primary
                && link == "connected"
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{port} does not replicate from {primary} after {FAILOVER_PATIENCE:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the Sentinels name another primary than `old`; returns it.
    pub async fn await_failover_from(&self, old: u16) -> anyhow::Result<u16> {
        let deadline = Instant::now() + FAILOVER_PATIENCE;
        loop {
            if let Ok(primary) = self.primary().await
                && primary != old
            {
                return Ok(primary);
            }
            if Instant::now() > deadline {
                bail!("the Sentinels still name {old} after {FAILOVER_PATIENCE:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A failback: makes the node on `port` the primary again through a Sentinel failover
    /// (the other replicas made ineligible meanwhile), and waits until it is.
    pub async fn fail_over_to(&self, port: u16) -> anyhow::Result<()> {
        let others: Vec<u16> = self.nodes.iter().copied().filter(|p| *p != port).collect();
        for other in &others {
            set_priority(*other, 0).await?;
        }
        set_priority(port, 100).await?;
        let mut sentinel = connect(self.sentinels[0]).await?;
        let deadline = Instant::now() + FAILOVER_PATIENCE;
        while self.primary().await? != port {
            // Refused while the node is not yet a synced replica, or another failover runs.
            let _: redis::RedisResult<String> = redis::cmd("SENTINEL")
                .arg("FAILOVER")
                .arg(MASTER)
                .query_async(&mut sentinel)
                .await;
            if Instant::now() > deadline {
                bail!("the Sentinels did not fail over to {port} in {FAILOVER_PATIENCE:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        for other in &others {
            set_priority(*other, 100).await?;
        }
        Ok(())
    }
}

impl Drop for SentinelTopology {
    fn drop(&mut self) {
        let _ = self.script(&["stop"]);
    }
}

fn partition_args(verb: &str, port: u16, keep: Option<u16>) -> Vec<String> {
    [verb.to_owned(), port.to_string()]
        .into_iter()
        .chain(keep.map(|keep| keep.to_string()))
        .collect()
}

/// A connection to the node or Sentinel on `port`.
async fn connect(port: u16) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))?
        .get_multiplexed_async_connection()
        .await
}

async fn set_priority(port: u16, priority: u32) -> anyhow::Result<()> {
    let mut con = connect(port).await?;
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("replica-priority")
        .arg(priority)
        .query_async(&mut con)
        .await?;
    Ok(())
}

fn list(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
