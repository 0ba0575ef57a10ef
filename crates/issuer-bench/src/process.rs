//! Child processes a harness starts, kills with SIGKILL, and stops with SIGTERM.

use std::fs::File;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub struct Service {
    pub name: String,
    child: Child,
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
        })
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

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until something accepts connections on the loopback `port`.
pub async fn wait_for_port(port: u16, patience: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + patience;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port} after {patience:?}");
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
