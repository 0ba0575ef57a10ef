//! Apache Kafka clusters of a harness's own (the tests', the chaos suite's), one node or
//! three, on free loopback ports. Every node is started by `deploy/kafka/kafka.sh`, the
//! same script `make up` uses, so there is one way brokers are configured and run here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::process::free_port;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/kafka/kafka.sh");

/// Nodes numbered from 1, as their `node.id`. Stopped when dropped; its folder is removed
/// then unless the cluster was started in a folder the caller keeps.
pub struct KafkaCluster {
    dir: PathBuf,
    ports: Vec<u16>,
    remove_dir: bool,
}

fn script(args: &[&str]) -> anyhow::Result<()> {
    script_with(args, &[])
}

fn script_with(args: &[&str], envs: &[(&str, String)]) -> anyhow::Result<()> {
    let status = Command::new("bash")
        .arg(SCRIPT)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .status()
        .with_context(|| format!("cannot run {SCRIPT}"))?;
    if !status.success() {
        bail!("kafka.sh {} failed: {status}", args.join(" "));
    }
    Ok(())
}

fn join_ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

impl KafkaCluster {
    /// `nodes` brokers (each also a controller) in a temporary folder of their own.
    pub fn start(nodes: usize) -> anyhow::Result<KafkaCluster> {
        let dir = std::env::temp_dir().join(format!("kafka-{}", uuid::Uuid::new_v4().simple()));
        let mut cluster = Self::start_in(&dir, nodes)?;
        cluster.remove_dir = true;
        Ok(cluster)
    }

    /// One broker with settings of the caller's appended to its own (more listeners, TLS,
    /// SASL): `{PLAINTEXT}` and `{CONTROLLER}` in `properties` stand for the ports it was
    /// given. `format_args` go to the storage format (SCRAM users: `--add-scram ...`).
    pub fn start_with_settings(
        properties: &str,
        format_args: &str,
    ) -> anyhow::Result<KafkaCluster> {
        let dir = std::env::temp_dir().join(format!("kafka-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let controller = free_port()?;
        let extra = dir.join("extra.properties");
        std::fs::write(
            &extra,
            properties
                .replace("{PLAINTEXT}", &port.to_string())
                .replace("{CONTROLLER}", &controller.to_string()),
        )?;
        let cluster = KafkaCluster {
            dir: dir.clone(),
            ports: vec![port],
            remove_dir: true,
        };
        script_with(
            &[
                "start",
                &dir.to_string_lossy(),
                &port.to_string(),
                &controller.to_string(),
            ],
            &[
                (
                    "KAFKA_EXTRA_PROPERTIES",
                    extra.to_string_lossy().into_owned(),
                ),
                ("KAFKA_FORMAT_ARGS", format_args.to_owned()),
            ],
        )?;
        cluster.wait_for_brokers(1, Duration::from_secs(60))?;
        Ok(cluster)
    }

    /// `nodes` brokers with `properties` appended to each node's own settings (a key given
    /// twice takes its last value), in a temporary folder of their own.
    pub fn start_with_properties(nodes: usize, properties: &str) -> anyhow::Result<KafkaCluster> {
        let dir = std::env::temp_dir().join(format!("kafka-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let extra = dir.join("extra.properties");
        std::fs::write(&extra, properties)?;
        let mut cluster = Self::launch(
            &dir,
            nodes,
            &[(
                "KAFKA_EXTRA_PROPERTIES",
                extra.to_string_lossy().into_owned(),
            )],
        )?;
        cluster.remove_dir = true;
        Ok(cluster)
    }

    /// `nodes` brokers whose data and logs stay in `dir`.
    pub fn start_in(dir: &Path, nodes: usize) -> anyhow::Result<KafkaCluster> {
        Self::launch(dir, nodes, &[])
    }

    fn launch(dir: &Path, nodes: usize, envs: &[(&str, String)]) -> anyhow::Result<KafkaCluster> {
        let ports = (0..nodes)
            .map(|_| free_port())
            .collect::<Result<Vec<_>, _>>()?;
        let controllers = (0..nodes)
            .map(|_| free_port())
            .collect::<Result<Vec<_>, _>>()?;
        let dir_arg = dir.to_string_lossy();
        let cluster = KafkaCluster {
            dir: dir.to_owned(),
            ports,
            remove_dir: false,
        };
        script_with(
            &[
                "start",
                &dir_arg,
                &join_ports(&cluster.ports),
                &join_ports(&controllers),
            ],
            envs,
        )?;
        cluster.wait_for_brokers(nodes, Duration::from_secs(60))?;
        Ok(cluster)
    }

    /// The bootstrap list for clients: every node.
    pub fn bootstrap(&self) -> String {
        self.ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn nodes(&self) -> usize {
        self.ports.len()
    }

    fn dir_arg(&self) -> String {
        self.dir.to_string_lossy().into_owned()
    }

    /// kill -9 of node `id`: no controlled shutdown, its leaderships move only once the
    /// controller fences it.
    pub fn kill(&self, id: usize) -> anyhow::Result<()> {
        script(&["kill", &self.dir_arg(), &id.to_string()])
    }

    /// Nodes `ids` again, on their data; returns once every node is back in the cluster's
    /// metadata.
    pub fn restart(&self, ids: &[usize]) -> anyhow::Result<()> {
        for id in ids {
            script(&["start-node", &self.dir_arg(), &id.to_string()])?;
        }
        self.wait_for_brokers(self.nodes(), Duration::from_secs(60))
    }

    /// SIGSTOP or SIGCONT to every node: a frozen broker accepts connections and answers
    /// nothing, so whatever a producer sent it is in doubt.
    pub fn signal_all(&self, signal: &str) -> anyhow::Result<()> {
        (1..=self.nodes()).try_for_each(|id| self.signal(id, signal))
    }

    /// SIGSTOP or SIGCONT to node `id`. A frozen follower stays in the in-sync set until
    /// the controller fences it (`broker.session.timeout.ms`) or it lags for
    /// `replica.lag.time.max.ms`: until then the leader commits nothing it appends, and the
    /// producer's sends end in doubt.
    pub fn signal(&self, id: usize, signal: &str) -> anyhow::Result<()> {
        crate::process::signal_pid_file(&self.dir.join(format!("node-{id}/pid")), signal)
    }

    fn metadata_client(&self) -> anyhow::Result<BaseConsumer> {
        Ok(ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("allow.auto.create.topics", "false")
            .set("log_level", "3")
            .create()?)
    }

    /// Waits until the cluster's metadata lists `count` brokers.
    fn wait_for_brokers(&self, count: usize, patience: Duration) -> anyhow::Result<()> {
        let client = self.metadata_client()?;
        let deadline = Instant::now() + patience;
        loop {
            let seen = client
                .fetch_metadata(None, Duration::from_secs(5))
                .map(|m| m.brokers().len())
                .unwrap_or(0);
            if seen >= count {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {seen} of {count} brokers registered after {patience:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The node leading `partition` of `topic`, as the cluster's metadata says now.
    pub fn leader(&self, topic: &str, partition: i32) -> anyhow::Result<usize> {
        let metadata = self
            .metadata_client()?
            .fetch_metadata(Some(topic), Duration::from_secs(5))?;
        let leader = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions())
            .find(|p| p.id() == partition)
            .map(|p| p.leader())
            .with_context(|| format!("{topic}/{partition} is not in the metadata"))?;
        usize::try_from(leader).with_context(|| format!("{topic}/{partition} has no leader"))
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        let _ = script(&["stop", &self.dir_arg()]);
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tests start clusters in parallel, and on a machine where `make up` found a broker
    /// running already, the first of them fetches the jars: two fetches at once must both
    /// end with every jar in place, not one deleting what the other is copying.
    #[test]
    fn two_fetches_of_the_jars_at_once_both_succeed() {
        let lib = std::env::temp_dir().join(format!("kafka-lib-{}", uuid::Uuid::new_v4().simple()));
        let fetch = || {
            Command::new("bash")
                .args([SCRIPT, "jars"])
                .env("KAFKA_LIB_DIR", &lib)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        };
        let (mut first, mut second) = (fetch(), fetch());
        assert!(first.wait().unwrap().success(), "the first fetch failed");
        assert!(second.wait().unwrap().success(), "the second fetch failed");
        let jars = std::fs::read_dir(&lib)
            .unwrap()
            .filter(|entry| {
                entry
                    .as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".jar"))
            })
            .count();
        assert!(jars > 40, "only {jars} jars");
        let _ = std::fs::remove_dir_all(&lib);
        let _ = std::fs::remove_file(lib.with_extension("lock"));
    }

    /// The version is pinned once, in deploy/kafka/pom.xml; docker-compose must run the same.
    #[test]
    fn docker_compose_runs_the_pinned_kafka_version() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let pom = std::fs::read_to_string(format!("{root}/deploy/kafka/pom.xml")).unwrap();
        let version = pom
            .split("<kafka.version>")
            .nth(1)
            .and_then(|rest| rest.split("</kafka.version>").next())
            .unwrap();
        let compose = std::fs::read_to_string(format!("{root}/docker-compose.yml")).unwrap();
        assert!(
            compose.contains(&format!("image: apache/kafka:{version}\n")),
            "docker-compose.yml does not run apache/kafka:{version}"
        );
    }
}
