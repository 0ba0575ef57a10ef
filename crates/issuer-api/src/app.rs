//! The composition root: every dependency connected (`connect`, which the commands in
//! `crate::commands` share), then the routes mounted and served until the shutdown signal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use coupon_core::domain::QueueKind;
use coupon_core::redis::admission::AdmissionScripts;
use coupon_core::redis::connection::Socket;
use coupon_core::redis::keys::CouponKeys;
use coupon_core::startup::prepare;
use tokio_util::sync::CancellationToken;

use crate::auth_throttle::AuthThrottle;
use crate::client_address::ClientAddresses;
use crate::config::{Config, OpsListen, Switch};
use crate::console::{self, Sessions};
use crate::delivery::Delivery;
use crate::delivery::kafka::{KafkaDelivery, KafkaSettings};
use crate::delivery::stream::StreamDelivery;
use crate::error::ApiError;
use crate::http::guards::{MAX_BODY_BYTES, body_in_time, throttle_failed_authentication};
use crate::http::handlers;
use crate::http::routes;
use crate::http::state::AppState;
use crate::http::timing::timed;
use crate::identity::Identity;
use crate::issuing::Issuer;
use crate::layouts::Layouts;
use crate::metrics::Metrics;
use crate::operations::Operations;
use crate::rate_limit::{self, Limits, RateLimiter};
use crate::replication::{Confirmation, Replication, ShardReplication};

/// How long in-flight requests get to finish, and events to be acknowledged, at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Connects to every dependency, migrating the database and (in Kafka mode) creating
/// missing topics on the way.
pub async fn connect(config: &Config) -> anyhow::Result<Issuer> {
    // Under Sentinel a "yes" stands only once every replica it knows has it
    // (`coupon_core::redis::replicas`), whatever REDIS_MIN_REPLICAS says.
    let replicas = config
        .replicas
        .required(&config.redis, config.queue)
        .await?;
    let kafka = (config.queue == QueueKind::Kafka).then_some(&config.kafka);
    prepare(&config.database.target()?, kafka).await?;
    let redis = config
        .redis
        .connect()
        .await
        .context("cannot connect to Redis")?;
    let prefix = config.redis.redis_key_prefix.clone();
    let rebuild_timeout = Duration::from_millis(config.rebuild_timeout_ms);
    // The gates' hold, and how long stock that comes back is held before it is sold: every
    // process that gives stock back (a release, a raise, a rebuild) holds it as long.
    let gate_hold = Duration::from_millis(config.finished_gate_ms);
    let metrics = Arc::new(Metrics::default());
    let pool = config.database.pool()?;
    // On one node, replicas confirm on a socket of their own, which the admissions needing
    // confirmation share; on a cluster, on each coupon's shard, through a cluster
    // connection of their own (`crate::replication`).
    let replication = match replicas {
        Some(replicas) if redis.is_cluster() => {
            Some(Confirmation::Shards(ShardReplication::start(
                config
                    .redis
                    .connect()
                    .await
                    .context("cannot connect to Redis for replica confirmations")?,
                replicas,
                config.replicas.timeout(),
            )))
        }
        Some(replicas) => Some(Confirmation::Socket(Replication::start(
            Socket::new(
                config.redis.target()?,
                Duration::from_millis(config.redis.redis_timeout_ms),
            ),
            CouponKeys::replication_fence(&prefix),
            replicas,
            config.replicas.timeout(),
        ))),
        None => None,
    };
    let layouts = Arc::new(Layouts::new(
        prefix.clone(),
        pool.clone(),
        redis.clone(),
        config.queue,
    ));
    let delivery = match kafka {
        Some(kafka) => Delivery::Kafka(Arc::new(KafkaDelivery::new(
            KafkaSettings {
                kafka: kafka.clone(),
                key_prefix: prefix.clone(),
                worker_group: config.worker_group_id.clone(),
                publish_timeout: Duration::from_millis(config.publish_timeout_ms),
                rebuild_timeout,
                reconcile_interval: Duration::from_millis(config.reconcile_interval_ms),
                pool: pool.clone(),
                replication: replication.as_ref().and_then(Confirmation::socket).cloned(),
                layouts: layouts.clone(),
                reopen_hold: gate_hold,
            },
            redis.clone(),
            metrics.clone(),
        )?)),
        None => Delivery::Stream(StreamDelivery::new(
            prefix.clone(),
            config.worker_group_id.clone(),
        )),
    };
    // Every rebuild, from any process, honours the longest window any API runs with.
    let window = delivery.record_in_flight_window().await?;
    tracing::debug!(
        window_ms = window.as_millis() as u64,
        "in-flight window every rebuild honours"
    );
    Ok(Issuer::new(
        AdmissionScripts::new(prefix, config.queue).with_reopen_hold(gate_hold),
        delivery,
        rebuild_timeout,
        replication,
        metrics,
        layouts,
    )
    .with_finished_gates(gate_hold))
}

pub struct Application {
    server: Server,
    addr: SocketAddr,
    /// The operations listener, when ISSUER_OPS_LISTEN moved the operations routes there.
    ops: Option<(Server, SocketAddr)>,
    issuer: Issuer,
    operations: Arc<Operations>,
    limiter: RateLimiter,
}

impl Application {
    /// Connects to every dependency and binds the listener; serving starts with
    /// [`Application::run`].
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.check()?;
        let identity =
            Identity::new(&config.identity, config.admin_token()?, config.dev_secrets).await?;
        let addresses = ClientAddresses::new(config.client_address_header.as_deref())?;
        let issuer = connect(&config)
            .await?
            .with_coupon_reads_kept(Duration::from_millis(config.coupon_read_cache_ms));
        let probe_pool = coupon_core::db::pool::build_pool(&config.database.target()?, 1)?;
        let operations = Arc::new(Operations::start(&issuer, probe_pool).await);
        let limiter = RateLimiter::new(
            config
                .redis
                .connect()
                .await
                .context("cannot connect to Redis")?,
            config.redis.redis_key_prefix.clone(),
            Limits {
                window: Duration::from_millis(config.rate_window_ms),
                per_user: config.rate_per_user,
                per_address: config.rate_per_address,
                sync: Duration::from_millis(config.rate_sync_ms),
                most_counted_here: rate_limit::MOST_COUNTED_HERE,
            },
        );
        // Its own app data, so that the identity extractor needs nothing of the handlers'.
        let identity = web::Data::new(identity);
        let state = web::Data::new(AppState {
            issuer: Arc::new(issuer.clone()),
            metrics: issuer.metrics().clone(),
            operations: operations.clone(),
            limiter: limiter.clone(),
            addresses,
            auth_throttle: AuthThrottle::new(
                config.auth_failures_per_address,
                Duration::from_millis(config.auth_failure_window_ms),
            ),
            body_timeout: Duration::from_millis(config.body_timeout_ms),
            credential_headers: identity.credential_headers(),
        });
        let console = match (config.console, config.ops_listen) {
            (Switch::On, OpsListen::At(_)) => {
                Some(web::Data::new(Sessions::new(config.console_secure_cookie)))
            }
            (Switch::On, OpsListen::Public) => {
                tracing::info!(
                    "the console is not served: it is served on the operations listener only, and ISSUER_OPS_LISTEN=public"
                );
                None
            }
            (Switch::Off, _) => None,
        };
        let ops = match config.ops_listen {
            OpsListen::At(listen) => Some(ops_server(
                state.clone(),
                listen,
                console.map(|sessions| (sessions, identity.clone())),
            )?),
            OpsListen::Public => {
                tracing::warn!(
                    "ISSUER_OPS_LISTEN=public: /metrics, /healthz and /readyz are served to anyone who reaches the API"
                );
                None
            }
        };
        let public_ops = ops.is_none();

        let workers = match config.http_workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        // actix caps connections per worker thread.
        let connections_per_worker = config.max_connections.div_ceil(workers);
        let bound = HttpServer::new(move || {
            // The last wrapped runs first: timing, then the throttle, then the body.
            let app = App::new()
                .wrap(from_fn(body_in_time))
                .wrap(from_fn(throttle_failed_authentication))
                .wrap(from_fn(timed))
                .app_data(state.clone())
                .app_data(identity.clone())
                .app_data(json_config())
                .configure(routes::public);
            let app = if public_ops {
                app.configure(routes::operations)
            } else {
                app
            };
            app.default_service(web::to(handlers::route_not_found))
        })
        .workers(workers)
        // Many connections at once is the flash-sale shape: ask for the deepest accept queue
        // (the kernel caps it at net.core.somaxconn, see docs/performance.md). actix applies
        // it only to sockets it binds itself, so it binds: a std listener would keep 128.
        .backlog(65_535)
        .max_connections(connections_per_worker)
        .client_request_timeout(Duration::from_millis(config.head_timeout_ms))
        .keep_alive(Duration::from_millis(config.keep_alive_ms))
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
            ops,
            issuer,
            operations,
            limiter,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the operations routes are served, when not beside the API.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().map(|(_, addr)| *addr)
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves (with the delivery's upkeep beside it) until `shutdown` resolves, then stops
    /// accepting, lets in-flight requests finish, and flushes the delivery.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let stop_background = CancellationToken::new();
        let (operations, issuer) = (self.operations.clone(), self.issuer.clone());
        let stamps = {
            let (issuer, stop) = (self.issuer.clone(), stop_background.clone());
            tokio::spawn(async move { issuer.watch_stamps(stop).await })
        };
        let registry = {
            let (issuer, stop) = (self.issuer.clone(), stop_background.clone());
            tokio::spawn(async move { issuer.watch_registry(stop).await })
        };
        let raises = {
            let (issuer, stop) = (self.issuer.clone(), stop_background.clone());
            tokio::spawn(async move { issuer.land_raises(stop).await })
        };
        let limits = {
            let (limiter, stop) = (self.limiter.clone(), stop_background.clone());
            let metrics = self.issuer.metrics().clone();
            tokio::spawn(async move { limiter.run(metrics, stop).await })
        };
        let watching = {
            let stop = stop_background.clone();
            tokio::spawn(async move { operations.run(issuer, stop).await })
        };
        let delivery = self.issuer.delivery().clone();
        let upkeep = delivery.start_background(stop_background.clone());
        // Served alongside; it answers until the API itself has stopped.
        let ops = self.ops.map(|(server, _)| {
            let handle = server.handle();
            (handle, actix_web::rt::spawn(server))
        });
        tokio::spawn(async move {
            shutdown.await;
            handle.stop(true).await;
        });
        self.server.await?;
        if let Some((handle, serving)) = ops {
            handle.stop(true).await;
            serving.await??;
        }
        stop_background.cancel();
        watching.await?;
        stamps.await?;
        registry.await?;
        raises.await?;
        if let Some(upkeep) = upkeep {
            upkeep.await?;
        }
        // The limiter's last sync runs beside the flush (both began at the cancel above);
        // awaited whatever the flush's result, so that it never outlives the call.
        let flushed = delivery.flush(SHUTDOWN_GRACE).await;
        limits.await?;
        flushed?;
        tracing::info!("issuer-api stopped");
        Ok(())
    }
}

fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(MAX_BODY_BYTES)
        .error_handler(|err, _req| ApiError::from(err).into())
}

/// A small server for the operations routes alone, so that they need not be exposed with
/// the public API; and the console, when it is on.
fn ops_server(
    state: web::Data<AppState>,
    listen: SocketAddr,
    console: Option<(web::Data<Sessions>, web::Data<Identity>)>,
) -> anyhow::Result<(Server, SocketAddr)> {
    if console.is_some() {
        tracing::info!(%listen, "the console is served at /console on the operations listener");
    }
    let bound = HttpServer::new(move || {
        let app = App::new()
            .app_data(state.clone())
            .configure(routes::operations);
        let app = match &console {
            Some((sessions, identity)) => app
                .app_data(sessions.clone())
                .app_data(identity.clone())
                .configure(console::routes),
            None => app,
        };
        app.default_service(web::to(handlers::route_not_found))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(SHUTDOWN_GRACE.as_secs())
    .bind(listen)
    .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = *bound
        .addrs()
        .first()
        .context("the operations server bound no address")?;
    tracing::info!(%addr, "operations routes listening");
    Ok((bound.run(), addr))
}
