//! A TCP proxy that can be cut (every connection dropped, new ones refused) and restored:
//! a database outage exactly as its clients see one, without touching the server. Pointed
//! at another server, it is a failover as the clients see one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct CuttableProxy {
    pub port: u16,
    target: Arc<Mutex<String>>,
    cut: Arc<AtomicBool>,
    cuts: watch::Sender<u64>,
}

impl CuttableProxy {
    /// Listens on a free loopback port and forwards to `target` (`host:port`). Runs on the
    /// current actix/tokio local set.
    pub async fn start(target: &str) -> std::io::Result<CuttableProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let cut = Arc::new(AtomicBool::new(false));
        let (cuts, _) = watch::channel(0u64);
        let target = Arc::new(Mutex::new(target.to_owned()));
        let (targets, refusing, cut_signal) = (target.clone(), cut.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if refusing.load(Ordering::SeqCst) {
                    continue; // dropped at once: the client sees its connection closed
                }
                let target = targets.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let mut cut_seen = cut_signal.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_seen.changed() => {}
                    }
                });
            }
        });
        Ok(CuttableProxy {
            port,
            target,
            cut,
            cuts,
        })
    }

    /// Drops every open connection and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// Fails over to `target`: every open connection is dropped, and new ones go there.
    pub fn fail_over_to(&self, target: &str) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = target.to_owned();
        self.cuts.send_modify(|n| *n += 1);
    }

    /// `url` (`scheme://user:pass@host:port/db`) with host and port replaced by this proxy's.
    pub fn url_for(&self, url: &str) -> Option<String> {
        let (scheme_auth, rest) = url.rsplit_once('@')?;
        let (_, path) = rest.split_once('/')?;
        Some(format!("{scheme_auth}@127.0.0.1:{}/{path}", self.port))
    }
}
