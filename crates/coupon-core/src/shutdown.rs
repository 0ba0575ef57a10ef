//! The one shutdown signal both services listen for.

use std::future::Future;

/// Registers for SIGINT and SIGTERM (what container orchestrators send) *now*, and returns a
/// future that resolves on either. Call it first thing: a signal that arrives before the
/// handlers exist would kill the process instead of stopping it gracefully.
#[cfg(unix)]
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (terminate, interrupt) {
            (Ok(mut terminate), Ok(mut interrupt)) => tokio::select! {
                _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
                _ = interrupt.recv() => tracing::info!("SIGINT received, shutting down"),
            },
            (Err(err), _) | (_, Err(err)) => {
                tracing::warn!(error = %err, "cannot listen for signals; stopping only on kill");
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(not(unix))]
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Ctrl-C received, shutting down");
    }
}
