//! Running a service binary as a real process: started with its environment, watched
//! through its log, stopped with a signal. Shared by the binaries' shutdown tests.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

pub struct Service {
    child: Child,
    lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl Service {
    pub fn start(binary: &str, env: &[(&str, String)]) -> Service {
        let mut child = Command::new(binary)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let (send, lines) = channel();
        for stream in [
            Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("piped")),
        ] {
            let send = send.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = send.send(line);
                }
            });
        }
        Service {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line containing `text`; panics with everything seen if it never comes.
    pub fn wait_for(&mut self, text: &str, patience: Duration) {
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                let found = line.contains(text);
                self.seen.push(line);
                if found {
                    return;
                }
            }
        }
        panic!(
            "no log line with {text:?} within {patience:?}:\n{}",
            self.seen.join("\n")
        );
    }

    /// Sends SIGTERM, as an orchestrator would, and waits for the exit.
    pub fn terminate(&mut self, patience: Duration) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait().expect("waitable") {
                self.seen.extend(self.lines.try_iter());
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "did not exit within {patience:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Settings shared by the services under test: the `make up` services, a topic of our own.
pub fn env(topic: &str) -> Vec<(&'static str, String)> {
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    vec![
        ("ISSUE_TOPIC", topic.to_owned()),
        ("KAFKA_BROKERS", var("KAFKA_BROKERS", "127.0.0.1:9092")),
        ("REDIS_URL", var("REDIS_URL", "redis://127.0.0.1:6379")),
        (
            "DATABASE_URL",
            var(
                "DATABASE_URL",
                "postgres://coupon:coupon@127.0.0.1:5432/coupon_issuance",
            ),
        ),
    ]
}

/// A dependency that accepts connections and never answers: start-up waits on it.
pub fn black_hole() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let addr = listener.local_addr().expect("bound");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    addr
}

/// Starts `binary` with its database a black hole, so start-up waits on it, sends SIGTERM
/// once it logged `starting`, and checks it exits at once, cleanly, saying so.
pub fn assert_stopped_during_start_up(
    binary: &str,
    starting: &str,
    extra: &[(&'static str, String)],
) {
    let mut env = env(&format!("coupon-issue-startup-{}", std::process::id()));
    env.retain(|(name, _)| *name != "DATABASE_URL");
    env.push((
        "DATABASE_URL",
        format!("postgres://coupon:coupon@{}/coupon_issuance", black_hole()),
    ));
    env.extend(extra.iter().cloned());
    let mut service = Service::start(binary, &env);
    service.wait_for(starting, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));

    let status = service.terminate(Duration::from_secs(3));

    assert!(
        status.success(),
        "exit status {status}:\n{}",
        service.seen.join("\n")
    );
    assert!(
        service
            .seen
            .iter()
            .any(|l| l.contains("stopped during start-up")),
        "{}",
        service.seen.join("\n")
    );
}
