//! Building and running the HTTP server: dependencies first, then routes, then serve
//! until the shutdown signal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, FromRequest, Handler, HttpServer, Resource, Responder, web};
use anyhow::Context;
use coupon_core::admission::AdmissionScripts;
use coupon_core::config::QueueKind;
use coupon_core::db::coupons::all_coupon_ids;
use coupon_core::domain::CouponId;
use coupon_core::startup::prepare;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Config;
use crate::delivery::Delivery;
use crate::delivery::kafka::{KafkaDelivery, KafkaSettings, reconciler};
use crate::delivery::stream::StreamDelivery;
use crate::error::ApiError;
use crate::handlers::{self, AppState};
use crate::identity::Identity;
use crate::issuing::{Issuer, Rebuilt};
use crate::metrics::{HttpLabels, Metrics};
use crate::operations::Operations;
use crate::rate_limit::{Limits, RateLimiter};
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
    prepare(&config.database.target()?, kafka).await?;
    let redis = config
        .redis
        .connect()
        .await
        .context("cannot connect to Redis")?;
    let prefix = config.redis.redis_key_prefix.clone();
    let rebuild_timeout = Duration::from_millis(config.rebuild_timeout_ms);
    let metrics = Arc::new(Metrics::default());
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
            metrics.clone(),
        )?)),
        None => Delivery::Stream(StreamDelivery::new(
            prefix.clone(),
            config.worker_group_id.clone(),
        )),
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
        metrics,
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
    /// The operations listener, when ISSUER_OPS_LISTEN moved the operations routes there.
    ops: Option<(Server, SocketAddr)>,
    issuer: Issuer,
    operations: Arc<Operations>,
    reconcile_interval: Duration,
}

impl Application {
    /// Connects to every dependency and binds the listener; serving starts with
    /// [`Application::run`].
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let identity = Identity::new(&config.identity, config.admin_token()?).await?;
        let issuer = connect(&config).await?;
        let operations = Arc::new(Operations::start(&issuer).await);
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
                address_header: config.client_address_header.clone(),
            },
        );
        if let Some(header) = &config.client_address_header {
            tracing::warn!(%header, "trusting this header for client addresses: only a proxy in front must be able to set it");
        }
        let state = web::Data::new(AppState {
            issuer: issuer.clone(),
            identity,
            metrics: issuer.metrics().clone(),
            operations: operations.clone(),
            limiter,
        });
        let ops = match config.ops_listen {
            Some(listen) => Some(ops_server(state.clone(), listen)?),
            None => None,
        };
        let public_ops = ops.is_none();

        let workers = match config.http_workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let bound = HttpServer::new(move || {
            let app = App::new()
                .wrap(from_fn(timed))
                .app_data(state.clone())
                .app_data(json_config())
                .configure(routes);
            let app = if public_ops {
                app.configure(operations_routes)
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
            ops,
            issuer,
            operations,
            reconcile_interval: Duration::from_millis(config.reconcile_interval_ms),
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

    /// Serves (and, in Kafka mode, reconciles in-doubt reservations) until `shutdown`
    /// resolves, then stops accepting, lets in-flight requests finish, and flushes the
    /// producer.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let stop_background = CancellationToken::new();
        let (operations, issuer) = (self.operations.clone(), self.issuer.clone());
        let watching = {
            let stop = stop_background.clone();
            tokio::spawn(async move { operations.run(issuer, stop).await })
        };
        // Only Kafka mode leaves slots pending; the Redis queue mode has nothing to settle.
        let kafka = self.issuer.delivery().kafka().cloned();
        let reconciling = kafka.clone().map(|kafka| {
            tokio::spawn(reconciler::run(
                kafka,
                self.reconcile_interval,
                stop_background.clone(),
            ))
        });
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

/// Times every request of the public routes into `coupon_http_request_duration_seconds`,
/// labelled with the route's pattern (never the raw path, which would let clients mint
/// series) and the status sent, and runs it in its span.
async fn timed(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = std::time::Instant::now();
    // A client may send any method name: only the standard ones become label values.
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|state| state.metrics.clone());
    // The request's span (a trace's root when tracing is on; never built otherwise).
    let span = tracing::debug_span!("request", method, route = tracing::field::Empty);
    let response = next.call(req).instrument(span.clone()).await;
    // The pattern is known once routing ran, inside the call.
    let (route, status) = match &response {
        Ok(response) => (response.request().match_pattern(), response.status()),
        Err(err) => (None, err.as_response_error().status_code()),
    };
    let route = route.unwrap_or_else(|| "unmatched".to_owned());
    span.record("route", route.as_str());
    if let Some(metrics) = metrics {
        let labels = HttpLabels {
            route,
            method,
            status: status.as_u16(),
        };
        metrics.record_http(labels, started.elapsed().as_secs_f64());
    }
    response
}

fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(MAX_BODY_BYTES)
        .error_handler(|err, _req| ApiError::from(err).into())
}

/// The routes of the contract; a known path with another method answers 405 in JSON.
pub fn routes(cfg: &mut web::ServiceConfig) {
    // The hot route first: actix tries resources in order, and each dynamic one it passes
    // costs a regex match (the largest user-space cost of a sold-out request in a profile).
    cfg.service(resource(
        "/api/v1/coupons/{couponId}/issues",
        Method::POST,
        handlers::issue_coupon,
    ))
    .service(resource(
        "/api/v1/coupons",
        Method::POST,
        handlers::create_coupon,
    ))
    .service(resource(
        "/api/v1/coupons/{couponId}",
        Method::GET,
        handlers::get_coupon,
    ))
    .service(resource(
        "/api/v1/coupons/{couponId}/issues/{userId}",
        Method::GET,
        handlers::issue_status,
    ))
    .service(resource(
        "/api/v1/users/{userId}/coupons",
        Method::GET,
        handlers::list_user_coupons,
    ))
    .service(resource("/openapi.json", Method::GET, handlers::openapi));
}

/// The operations routes: beside the API, or on their own listener (ISSUER_OPS_LISTEN).
pub fn operations_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/metrics", Method::GET, handlers::metrics))
        .service(resource("/healthz", Method::GET, handlers::healthz))
        .service(resource("/readyz", Method::GET, handlers::readyz));
}

/// A path served with one method; any other answers 405 with `Allow` naming it (RFC 9110).
fn resource<F, Args>(path: &str, method: Method, handler: F) -> Resource
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    let allow = method.clone();
    web::resource(path)
        .route(web::method(method).to(handler))
        .default_service(web::to(move || handlers::method_not_allowed(allow.clone())))
}

/// A small server for the operations routes alone, so that they need not be exposed with
/// the public API.
fn ops_server(
    state: web::Data<AppState>,
    listen: SocketAddr,
) -> anyhow::Result<(Server, SocketAddr)> {
    let bound = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(operations_routes)
            .default_service(web::to(handlers::route_not_found))
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
