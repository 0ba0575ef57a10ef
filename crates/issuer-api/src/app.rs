//! Building and running the HTTP server: dependencies first, then routes, then serve
//! until the shutdown signal.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use coupon_core::admission::AdmissionScripts;
use coupon_core::db::migrate::run_migrations;
use coupon_core::kafka::ensure_topics;

use crate::config::Config;
use crate::error::ApiError;
use crate::handlers::{self, AppState};
use crate::issuing::Issuer;
use crate::publisher::Publisher;

/// Requests with bodies larger than this are refused with 413 before they are parsed.
const MAX_BODY_BYTES: usize = 4 * 1024;
/// How long in-flight requests get to finish, and events to be acknowledged, at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub struct Application {
    server: Server,
    addr: SocketAddr,
    publisher: Publisher,
}

impl Application {
    /// Connects to every dependency (migrating the database and creating missing topics
    /// on the way) and binds the listener; serving starts with [`Application::run`].
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !config.admin_token.is_empty(),
            "ISSUER_ADMIN_TOKEN must not be empty"
        );
        let applied = run_migrations(&config.database.database_url).await?;
        tracing::info!(applied, "database schema is current");
        ensure_topics(&config.kafka)
            .await
            .context("cannot create the Kafka topics")?;
        let publisher = Publisher::new(
            &config.kafka,
            Duration::from_millis(config.publish_timeout_ms),
        )?;
        let issuer = Issuer {
            redis: config
                .redis
                .connect()
                .await
                .context("cannot connect to Redis")?,
            scripts: AdmissionScripts::new(config.redis.redis_key_prefix.clone()),
            pool: config.database.pool()?,
            publisher: publisher.clone(),
        };
        let state = web::Data::new(AppState {
            issuer,
            admin_token: config.admin_token.clone(),
        });

        let listener = TcpListener::bind(config.listen)
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let workers = match config.http_workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(json_config())
                .configure(routes)
                .default_service(web::to(handlers::route_not_found))
        })
        .workers(workers)
        // Many short connections at once is the flash-sale shape: keep a deep accept queue.
        .backlog(4096)
        .max_connections(50_000)
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_GRACE.as_secs())
        .listen(listener)?
        .run();
        tracing::info!(%addr, workers, "issuer-api listening");
        Ok(Self {
            server,
            addr,
            publisher,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests
    /// finish, and flushes the producer.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let handle = self.server.handle();
        tokio::spawn(async move {
            shutdown.await;
            handle.stop(true).await;
        });
        self.server.await?;
        let publisher = self.publisher;
        tokio::task::spawn_blocking(move || publisher.flush(SHUTDOWN_GRACE)).await??;
        tracing::info!("issuer-api stopped");
        Ok(())
    }
}

fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(MAX_BODY_BYTES)
        .error_handler(|err, _req| ApiError::from(err).into())
}

/// The routes of the contract; a known path with another method answers 405 in JSON.
pub fn routes(cfg: &mut web::ServiceConfig) {
    let resource =
        |path: &str| web::resource(path).default_service(web::to(handlers::method_not_allowed));
    cfg.service(resource("/api/v1/coupons").route(web::post().to(handlers::create_coupon)))
        .service(resource("/api/v1/coupons/{couponId}").route(web::get().to(handlers::get_coupon)))
        .service(
            resource("/api/v1/coupons/{couponId}/issues")
                .route(web::post().to(handlers::issue_coupon)),
        )
        .service(
            resource("/api/v1/coupons/{couponId}/issues/{userId}")
                .route(web::get().to(handlers::issue_status)),
        )
        .service(
            resource("/api/v1/users/{userId}/coupons")
                .route(web::get().to(handlers::list_user_coupons)),
        )
        .service(resource("/healthz").route(web::get().to(handlers::healthz)))
        .service(resource("/readyz").route(web::get().to(handlers::readyz)));
}
