//! Building and running the HTTP server: dependencies first, then routes, then serve
//! until the shutdown signal.

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use coupon_core::admission::AdmissionScripts;
use coupon_core::config::QueueKind;
use coupon_core::db::coupons::all_coupon_ids;
use coupon_core::domain::CouponId;
use coupon_core::startup::prepare;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::delivery::Delivery;
use crate::delivery::kafka::{KafkaDelivery, KafkaSettings, reconciler};
use crate::delivery::stream::StreamDelivery;
use crate::error::ApiError;
use crate::handlers::{self, AppState};
use crate::issuing::{Issuer, Rebuilt};
use crate::replication::Replication;

/// Requests with bodies larger than this are refused with 413 before they are parsed.
const MAX_BODY_BYTES: usize = 4 * 1024;
/// How long in-flight requests get to finish, and events to be acknowledged, at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Connects to every dependency, migrating the database and (in Kafka mode) creating
/// missing topics on the way.
pub async fn connect(config: &Config) -> anyhow::Result<Issuer> {
    anyhow::ensure!(
        config.redis_min_replicas == 0
            || config.redis_replica_timeout_ms < config.redis.redis_timeout_ms,
        "REDIS_REPLICA_TIMEOUT_MS ({}) must be below REDIS_TIMEOUT_MS ({}), which cuts every \
         Redis command short",
        config.redis_replica_timeout_ms,
        config.redis.redis_timeout_ms
    );
    let kafka = (config.queue == QueueKind::Kafka).then_some(&config.kafka);
    prepare(&config.database.database_url, kafka).await?;
    let redis = config
        .redis
        .connect()
        .await
        .context("cannot connect to Redis")?;
    let prefix = config.redis.redis_key_prefix.clone();
    let rebuild_timeout = Duration::from_millis(config.rebuild_timeout_ms);
    let delivery = match kafka {
        Some(kafka) => Delivery::Kafka(Box::new(KafkaDelivery::new(
            KafkaSettings {
                kafka: kafka.clone(),
                key_prefix: prefix.clone(),
                worker_group: config.worker_group_id.clone(),
                publish_timeout: Duration::from_millis(config.publish_timeout_ms),
                rebuild_timeout,
            },
            redis.clone(),
        )?)),
        None => Delivery::Stream(StreamDelivery::new(prefix.clone())),
    };
    let replication = (config.redis_min_replicas > 0).then(|| {
        Replication::start(
            redis.clone(),
            config.redis_min_replicas,
            Duration::from_millis(config.redis_replica_timeout_ms),
        )
    });
    Ok(Issuer::new(
        redis,
        AdmissionScripts::new(prefix, config.queue),
        config.database.pool()?,
        delivery,
        rebuild_timeout,
        replication,
    ))
}

/// `issuer-api rebuild-redis`: rebuilds one coupon or all, printing what happened to
/// each; fails if any could not be rebuilt.
pub async fn rebuild_redis(
    config: &Config,
    coupon: Option<CouponId>,
    all: bool,
) -> anyhow::Result<()> {
    let issuer = connect(config).await?;
    let coupons = match (coupon, all) {
        (Some(coupon), _) => vec![coupon],
        (None, true) => {
            let mut conn = config.database.pool()?.get().await?;
            let ids = all_coupon_ids(&mut conn).await?;
            ids.into_iter()
                .filter_map(|id| CouponId::new(id).ok())
                .collect()
        }
        (None, false) => anyhow::bail!("name a coupon with --coupon ID, or --all"),
    };
    for (coupon, rebuilt) in issuer.rebuild(&coupons).await? {
        match rebuilt {
            Rebuilt::Restored { holders } => {
                println!("coupon {coupon}: restored, {holders} holders")
            }
            Rebuilt::AlreadyRunning => {
                println!("coupon {coupon}: another process is rebuilding it")
            }
        }
    }
    Ok(())
}

pub struct Application {
    server: Server,
    addr: SocketAddr,
    issuer: Issuer,
    reconcile_interval: Duration,
}

impl Application {
    /// Connects to every dependency and binds the listener; serving starts with
    /// [`Application::run`].
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !config.admin_token.is_empty(),
            "ISSUER_ADMIN_TOKEN must not be empty"
        );
        let issuer = connect(&config).await?;
        let state = web::Data::new(AppState {
            issuer: issuer.clone(),
            admin_token: config.admin_token.clone(),
            counters: Default::default(),
        });

        let workers = match config.http_workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let bound = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(json_config())
                .configure(routes)
                .default_service(web::to(handlers::route_not_found))
        })
        .workers(workers)
        // Many connections at once is the flash-sale shape: ask for the deepest accept queue
        // (the kernel caps it at net.core.somaxconn, see docs/performance.md). actix applies
        // it only to sockets it binds itself, so it binds: a std listener would keep 128.
        .backlog(65_535)
        .max_connections(50_000)
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_GRACE.as_secs())
        .bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = *bound
            .addrs()
            .first()
            .context("the server bound no address")?;
        let server = bound.run();
        tracing::info!(%addr, workers, queue = %config.queue, "issuer-api listening");
        Ok(Self {
            server,
            addr,
            issuer,
            reconcile_interval: Duration::from_millis(config.reconcile_interval_ms),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves (and, in Kafka mode, reconciles in-doubt reservations) until `shutdown`
    /// resolves, then stops accepting, lets in-flight requests finish, and flushes the
    /// producer.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let stop_reconciler = CancellationToken::new();
        // Only Kafka mode leaves slots pending; the Redis queue mode has nothing to settle.
        let kafka = self.issuer.delivery().kafka().cloned();
        let reconciling = kafka.clone().map(|kafka| {
            tokio::spawn(reconciler::run(
                kafka,
                self.reconcile_interval,
                stop_reconciler.clone(),
            ))
        });
        tokio::spawn(async move {
            shutdown.await;
            handle.stop(true).await;
        });
        self.server.await?;
        stop_reconciler.cancel();
        if let Some(reconciling) = reconciling {
            reconciling.await?;
        }
        if let Some(kafka) = kafka {
            kafka.flush(SHUTDOWN_GRACE).await?;
        }
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
    // The hot route first: actix tries resources in order, and each dynamic one it passes
    // costs a regex match (the largest user-space cost of a sold-out request in a profile).
    cfg.service(
        resource("/api/v1/coupons/{couponId}/issues").route(web::post().to(handlers::issue_coupon)),
    )
    .service(resource("/api/v1/coupons").route(web::post().to(handlers::create_coupon)))
    .service(resource("/api/v1/coupons/{couponId}").route(web::get().to(handlers::get_coupon)))
    .service(
        resource("/api/v1/coupons/{couponId}/issues/{userId}")
            .route(web::get().to(handlers::issue_status)),
    )
    .service(
        resource("/api/v1/users/{userId}/coupons")
            .route(web::get().to(handlers::list_user_coupons)),
    )
    .service(resource("/metrics").route(web::get().to(handlers::metrics)))
    .service(resource("/healthz").route(web::get().to(handlers::healthz)))
    .service(resource("/readyz").route(web::get().to(handlers::readyz)));
}
