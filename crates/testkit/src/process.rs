//! Child processes a harness starts, kills with SIGKILL, and stops with SIGTERM; and the
//! checks the service binaries' shutdown tests make of them.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub struct Service {
    pub name: String,
    child: Child,
    /// Where its output goes.
    log: PathBuf,
}

impl Service {
    /// Starts `program` with `args` and `env`, its output appended to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
        dir: &Path,
        log: &Path,
    ) -> anyhow::Result<Service> {
        let out = File::options().create(true).append(true).open(log)?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", program.display()))?;
        Ok(Service {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    /// `program` with `env` and `RUST_LOG=info`, its output in a log of its own under the
    /// temporary folder: a service binary under test.
    pub fn spawn_logged(
        name: &str,
        program: &Path,
        env: &[(String, String)],
    ) -> anyhow::Result<Service> {
        let dir = std::env::temp_dir();
        let log = dir.join(format!("{name}-{}.log", uuid::Uuid::new_v4().simple()));
        let mut env = env.to_vec();
        env.push(("RUST_LOG".into(), "info".into()));
        Self::spawn(name, program, &[], &env, &dir, &log)
    }

    /// Where its output goes: it stays readable after the process ended.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Waits until its output has `text`; the error carries the output so far.
    pub fn wait_for_output(&self, text: &str, patience: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + patience;
        loop {
            let output = std::fs::read_to_string(&self.log).unwrap_or_default();
            if output.contains(text) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: no {text:?} in its output within {patience:?}:\n{output}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL: no cleanup, no goodbye, as a crash or an OOM kill.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then up to `patience` for a clean exit; SIGKILL after that.
    pub fn terminate(mut self, patience: Duration) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where `free_port` hands out ports: below Linux's ephemeral range (32768 and up), which
/// the kernel gives to every outgoing connection and to `bind(0)`. A port taken from there
/// could be handed out twice in one process (two binds to 0 in a row may return the same
/// one), or become a client socket's before the server meant for it binds: both happened,
/// a broker's two listeners on one port, and a Sentinel topology's node never started.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A loopback port nothing listens on, never handed out before by this process. Each process
/// starts at its own place in `PORTS`, so two test binaries running at once rarely meet.
pub fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(PORTS.end - PORTS.start);
    // The first call picks the process's starting place from its id and the clock.
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
    let _ = NEXT.compare_exchange(u32::MAX, seed % span, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % span;
        let port = PORTS.start + offset as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port in {PORTS:?}")
}

/// Waits until something accepts connections on the loopback `port`.
pub async fn wait_for_port(port: u16, patience: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + patience;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port} after {patience:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// What a service binary under test needs to reach the `make up` services, on a topic of
/// its own (the environment's values when set).
pub fn services_env(topic: &str) -> Vec<(String, String)> {
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    vec![
        ("ISSUE_TOPIC".into(), topic.to_owned()),
        (
            "KAFKA_BROKERS".into(),
            var("KAFKA_BROKERS", coupon_core::config::DEFAULT_KAFKA_BROKERS),
        ),
        (
            "REDIS_URL".into(),
            var("REDIS_URL", coupon_core::config::DEFAULT_REDIS_URL),
        ),
        (
            "DATABASE_URL".into(),
            var("DATABASE_URL", coupon_core::config::DEFAULT_DATABASE_URL),
        ),
    ]
}

/// A dependency that accepts connections and never answers: start-up waits on it.
pub fn black_hole() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    Ok(addr)
}

/// What a clean stop is checked against: the line that says the service is where it should
/// be stopped, the line it must log on the way out, and how soon it must be gone.
pub struct CleanStop<'a> {
    pub ready: &'a str,
    /// How long after `ready` SIGTERM is sent.
    pub then: Duration,
    pub stopped: &'a str,
    pub patience: Duration,
}

/// Starts `binary` with `env`, sends SIGTERM once it is where `stop` says, and checks that it
/// exits cleanly in time, having logged what it must.
pub fn check_stops_cleanly(
    binary: &Path,
    env: &[(String, String)],
    stop: &CleanStop<'_>,
) -> anyhow::Result<()> {
    let CleanStop {
        ready,
        then,
        stopped,
        patience,
    } = *stop;
    let service = Service::spawn_logged("under-test", binary, env)?;
    service.wait_for_output(ready, Duration::from_secs(60))?;
    std::thread::sleep(then);
    let log = service.log().to_owned();
    let clean = service.terminate(patience);
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    if !clean {
        bail!("no clean exit within {patience:?} of SIGTERM:\n{output}");
    }
    if !output.contains(stopped) {
        bail!("exited without logging {stopped:?}:\n{output}");
    }
    Ok(())
}

/// Starts `binary` with its database a black hole, so that start-up waits on it, sends
/// SIGTERM once it logged `starting`, and checks that it exits at once, cleanly, saying so.
pub fn check_stops_during_start_up(
    binary: &Path,
    starting: &str,
    extra: &[(String, String)],
) -> anyhow::Result<()> {
    let mut env = services_env(&format!("coupon-issue-startup-{}", std::process::id()));
    env.retain(|(name, _)| name != "DATABASE_URL");
    env.push((
        "DATABASE_URL".into(),
        format!("postgres://coupon:coupon@{}/coupon_issuance", black_hole()?),
    ));
    env.extend(extra.iter().cloned());
    // Logged `starting`, it waits on the database: half a second in, it is surely there.
    check_stops_cleanly(
        binary,
        &env,
        &CleanStop {
            ready: starting,
            then: Duration::from_millis(500),
            stopped: "stopped during start-up",
            patience: Duration::from_secs(3),
        },
    )
}

/// Sends `signal` (STOP, CONT, ...) to the process whose pid is in `pid_file`: a frozen
/// process keeps its connections open and answers nothing.
pub fn signal_pid_file(pid_file: &Path, signal: &str) -> anyhow::Result<()> {
    let pid = std::fs::read_to_string(pid_file)
        .with_context(|| format!("{} (not running?)", pid_file.display()))?;
    let status = Command::new("kill")
        .args([&format!("-{signal}"), pid.trim()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} of {} failed", pid.trim());
    Ok(())
}
