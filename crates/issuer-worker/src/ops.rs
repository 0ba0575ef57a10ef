//! The worker's operations listener: `/metrics` and `/healthz`, on actix-web, the HTTP stack
//! the API already uses (no second one in the build). One HTTP thread: a scraper is the
//! only client.

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

pub struct OpsServer {
    addr: SocketAddr,
    handle: ServerHandle,
    serving: JoinHandle<std::io::Result<()>>,
}

impl OpsServer {
    /// Binds `listen` and serves from now on, until [`OpsServer::stop`].
    pub fn start(listen: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let metrics = web::Data::from(metrics);
        let bound = HttpServer::new(move || {
            App::new()
                .app_data(metrics.clone())
                .route("/metrics", web::get().to(render))
                .route("/healthz", web::get().to(HttpResponse::Ok))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = *bound
            .addrs()
            .first()
            .context("the metrics listener bound no address")?;
        let server = bound.run();
        let handle = server.handle();
        tracing::info!(%addr, "worker metrics listening");
        Ok(Self {
            addr,
            handle,
            serving: tokio::spawn(server),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.handle.stop(true).await;
        Ok(self.serving.await??)
    }
}

async fn render(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(coupon_core::metrics::CONTENT_TYPE)
        .body(metrics.render())
}
