//! A Redis server of a test's or the chaos suite's own, on the project's configuration
//! (`deploy/redis/redis.conf`): killed with SIGKILL, restarted on the same data, its
//! append-only file cut short (what a machine crash under `appendfsync everysec` loses), or
//! run as a replica.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::process::{Service, free_port, wait_for_port};

const CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/redis/redis.conf");
const START_PATIENCE: Duration = Duration::from_secs(10);
/// Ports a new server tries before its start fails.
const START_ATTEMPTS: u32 = 3;

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    service: Option<Service>,
}

impl RedisServer {
    /// A new server with its data in `dir` (created), on a free loopback port.
    ///
    /// A port found free can be taken by another process before the server binds it (make
    /// test met a connection reset by whatever held it, and a server that never logged a
    /// line): the start counts only once the port answers a Redis `PING`, and tries again on
    /// another port otherwise.
    pub async fn start(dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut server = Self {
            port: free_port()?,
            dir: dir.to_owned(),
            extra: extra.iter().map(|arg| (*arg).to_owned()).collect(),
            service: None,
        };
        let mut attempts = 1;
        loop {
            let started = server.spawn().await;
            let answered = match started {
                Ok(()) => server.answers_ping().await,
                Err(err) => Err(err),
            };
            match answered {
                Ok(()) => return Ok(server),
                Err(err) if attempts >= START_ATTEMPTS => {
                    return Err(err.context(format!("Redis never answered on {}", server.port)));
                }
                Err(_) => {
                    server.kill();
                    server.port = free_port()?;
                    attempts += 1;
                }
            }
        }
    }

    /// Whether what listens on the server's port is a Redis that answers.
    async fn answers_ping(&self) -> anyhow::Result<()> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(START_PATIENCE))
            .set_response_timeout(Some(START_PATIENCE));
        let mut con = redis::Client::open(self.url())?
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        match redis::cmd("PING").query_async::<String>(&mut con).await {
            // A Redis still loading its data is a Redis.
            Err(err) if err.code() != Some("LOADING") => Err(err.into()),
            _ => Ok(()),
        }
    }

    /// A replica of the primary at loopback `port` (the primary's own, or a proxy's that
    /// can cut the link), its data in `dir`.
    pub async fn replica_of(port: u16, dir: &Path) -> anyhow::Result<Self> {
        Self::start(dir, &["--replicaof", "127.0.0.1", &port.to_string()]).await
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let port = self.port.to_string();
        let dir = self.dir.to_string_lossy().into_owned();
        let mut args = vec![CONF, "--port", &port, "--bind", "127.0.0.1", "--dir", &dir];
        args.extend(self.extra.iter().map(String::as_str));
        let log = self.dir.join("redis.log");
        self.service = Some(Service::spawn(
            "redis",
            Path::new("redis-server"),
            &args,
            &[],
            &self.dir,
            &log,
        )?);
        wait_for_port(self.port, START_PATIENCE).await
    }

    /// SIGKILL: the process dies as in a crash; what it wrote to its files stays.
    pub fn kill(&mut self) {
        if let Some(service) = self.service.take() {
            service.kill9();
        }
    }

    /// Starts it again on the same port and data (killing it first if it runs).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn().await
    }

    /// Kills it and starts it again with nothing: every key gone, append-only file included.
    pub async fn wipe(&mut self) -> anyhow::Result<()> {
        self.kill();
        std::fs::remove_dir_all(&self.dir)?;
        std::fs::create_dir_all(&self.dir)?;
        self.spawn().await
    }

    /// Makes this replica a primary (REPLICAOF NO ONE), as a failover does.
    pub async fn promote(&mut self) -> anyhow::Result<()> {
        let mut con = redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await?;
        let () = redis::cmd("REPLICAOF")
            .arg("NO")
            .arg("ONE")
            .query_async(&mut con)
            .await?;
        self.extra.clear();
        Ok(())
    }

    /// The append-only file the writes go to now (Redis 7 keeps a base file and
    /// incremental ones in `appendonlydir`; the newest incremental one takes the writes).
    pub fn aof_tail(&self) -> anyhow::Result<PathBuf> {
        let dir = self.dir.join("appendonlydir");
        let mut incremental: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("no append-only files in {}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.to_string_lossy().ends_with(".incr.aof"))
            .collect();
        // Names end in their sequence number: the longest, then the greatest, is the newest.
        incremental.sort_by_key(|path| (path.as_os_str().len(), path.clone()));
        incremental
            .pop()
            .with_context(|| format!("no incremental append-only file in {}", dir.display()))
    }

    /// How many bytes the append-only file holds now.
    pub fn aof_len(&self) -> anyhow::Result<u64> {
        Ok(std::fs::metadata(self.aof_tail()?)?.len())
    }

    /// Cuts the append-only file back to `len` bytes, dropping every write after that point,
    /// as a machine crash drops what was not yet fsynced. Only while it is not running.
    pub fn cut_aof_to(&self, len: u64) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.service.is_none(),
            "cut the file of a stopped Redis only"
        );
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(self.aof_tail()?)?;
        file.set_len(len)?;
        file.sync_all()?;
        Ok(())
    }
}
