//! The commands `issuer-api` runs besides serving (`issuer-api --help`): each builds what
//! it needs through the composition root (`crate::app::connect`), does one job and exits.

use std::collections::BTreeSet;
use std::time::Duration;

use coupon_core::db::coupons::all_coupon_ids;
use coupon_core::domain::CouponId;
use coupon_core::redis::admission::RebuildLease;
use coupon_core::redis::connection::RedisConnection;
use coupon_core::redis::epoch::instance_epoch;
use tokio::time::Instant;

use crate::app::connect;
use crate::config::Config;
use crate::issuing::{HandedOver, Issuer, Rebuilt};
use crate::slot_moves::SlotMovePlan;

/// How long the replicas get, in WAITs of REDIS_REPLICA_TIMEOUT_MS each, to acknowledge
/// the hand-over's marks before the switchover.
const MARKS_ON_REPLICAS: Duration = Duration::from_secs(5);
/// Bounds each command to the old primary.
const NODE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two looks for the new primary.
const PRIMARY_POLL: Duration = Duration::from_millis(200);
/// What the lease must leave after the wait: the stamps' recording, the wait for every API
/// to read them, and the opening.
const OPENING_MARGIN: Duration = Duration::from_secs(10);

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
        (None, true) => every_coupon(config).await?,
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

async fn every_coupon(config: &Config) -> anyhow::Result<Vec<CouponId>> {
    let mut conn = config.database.pool()?.get().await?;
    let ids = all_coupon_ids(&mut conn).await?;
    Ok(ids
        .into_iter()
        .filter_map(|id| CouponId::new(id).ok())
        .collect())
}

/// On a Redis Cluster, the slot a hand-over moves: `coupon`'s, to the node at `to`.
#[derive(Debug, Clone)]
pub struct SlotMove {
    pub coupon: CouponId,
    pub to: String,
}

/// `issuer-api hand-over`: a planned switchover of the Redis primary that carries every
/// coupon's state over (`crate::issuing`'s `hand_over` says why that is safe), printing
/// what happened to each coupon. On a Redis Cluster it moves `slot_move`'s slot instead
/// (`crate::slot_moves`), carrying the coupons the move takes along. Fails if the
/// switchover did not happen (the replicas did not acknowledge the marks, the Sentinels
/// refused, no new primary within `wait`, the move failed); the coupons then reopen where
/// they are.
pub async fn hand_over(
    config: &Config,
    slot_move: Option<SlotMove>,
    wait: Duration,
    lease: Duration,
) -> anyhow::Result<Vec<(CouponId, HandedOver)>> {
    anyhow::ensure!(
        lease >= wait + OPENING_MARGIN,
        "--lease-secs must be at least {} s above --wait-secs: the coupons open after the wait",
        OPENING_MARGIN.as_secs()
    );
    let issuer = connect(config).await?;
    let every = every_coupon(config).await?;
    let cluster = !config.redis.redis_cluster_nodes.is_empty();
    // Decided before anything is closed: a move that cannot be made fails with nothing done.
    let plan = match slot_move {
        Some(SlotMove { coupon, to }) if cluster => {
            Some(SlotMovePlan::make(config, coupon, &to, &every).await?)
        }
        None if cluster => {
            anyhow::bail!("on a Redis Cluster, name the slot to move: --coupon ID --to HOST:PORT")
        }
        Some(_) => {
            anyhow::bail!("--coupon and --to move a slot of a Redis Cluster (REDIS_CLUSTER_NODES)")
        }
        None => None,
    };
    let coupons = plan.as_ref().map_or(every, |plan| plan.coupons.clone());
    let started = Instant::now();
    let (closed, not_verified) = issuer.hand_over_close(&coupons, lease).await?;
    tracing::info!(
        closed = closed.coupons.len(),
        not_verified = not_verified.len(),
        "hand-over: coupons closed and marked"
    );
    // Whatever fails from here on, the coupons are opened where they can be: left closed,
    // they would answer 503 for the whole lease.
    let switched = match &plan {
        Some(plan) => {
            let marked: Vec<RebuildLease> = closed
                .coupons
                .iter()
                .map(|(held, _)| held.clone())
                .collect();
            match plan.execute(config, &marked, started + wait).await {
                // The cluster client finds each coupon's new node itself.
                Ok(()) => config.redis.connect().await.map(Some).map_err(Into::into),
                Err(err) => Err(err),
            }
        }
        None => switch_primary(config, &issuer, &closed.on, started + wait).await,
    };
    let (primary, switched) = match switched {
        Ok(Some(primary)) => (Some(primary), Ok(())),
        Ok(None) => (
            None,
            Err(anyhow::anyhow!(
                "no new primary within {} s",
                wait.as_secs()
            )),
        ),
        Err(err) => (None, Err(err)),
    };
    let mut primary = match primary {
        Some(primary) => primary,
        None => primary_where_it_is(config, started + lease).await?,
    };
    let mut outcomes = issuer
        .hand_over_open(&mut primary, &closed.coupons, started + lease)
        .await;
    outcomes.extend(
        not_verified
            .into_iter()
            .map(|coupon| (coupon, HandedOver::NotVerified)),
    );
    for (coupon, outcome) in &outcomes {
        match outcome {
            HandedOver::Carried => println!("coupon {coupon}: carried over, open"),
            HandedOver::LeftToRebuild => {
                println!("coupon {coupon}: not carried over; its next request rebuilds it")
            }
            HandedOver::NotVerified => {
                println!("coupon {coupon}: not verified, left as it was")
            }
        }
    }
    switched.map_err(|err| err.context("no switchover: the coupons reopened where they were"))?;
    Ok(outcomes)
}

/// Once every connected replica has the marks, asks for the switchover (the Sentinels, or
/// the operator behind a plain URL) and waits until `deadline` for the new primary.
async fn switch_primary(
    config: &Config,
    issuer: &Issuer,
    closed_on: &BTreeSet<String>,
    deadline: Instant,
) -> anyhow::Result<Option<RedisConnection>> {
    let (acknowledged, replicas) = issuer
        .hand_over_replicas(config.replicas.timeout(), MARKS_ON_REPLICAS)
        .await?;
    anyhow::ensure!(
        acknowledged >= replicas,
        "{acknowledged} of {replicas} replicas acknowledged the marks within {} s",
        MARKS_ON_REPLICAS.as_secs()
    );
    let Some(sentinels) = config.redis.sentinels() else {
        tracing::warn!(
            "hand-over: fail the primary behind REDIS_URL over now; waiting for a new one"
        );
        return new_primary(config, closed_on, deadline).await;
    };
    let old = sentinels.master_address().await?;
    sentinels.fail_over().await?;
    let found = new_primary(config, closed_on, deadline).await?;
    // What follows only hastens the replicas' return: it fails nothing.
    if found.is_some()
        && let Ok(new) = sentinels.master_address().await
        && new != old
        && let Err(err) = replicate_from(config, &old, &new).await
    {
        tracing::warn!(error = %err, "hand-over: repointing the old primary failed; the Sentinels will");
    }
    Ok(found)
}

/// Makes the old primary a replica of the new one, as the Sentinels do once it has reported
/// itself a primary for a while (about 10 s): until then it confirms nothing, and every
/// "yes" waits for every replica the Sentinels know, it included.
async fn replicate_from(
    config: &Config,
    (host, port): &(String, u16),
    (new_host, new_port): &(String, u16),
) -> anyhow::Result<()> {
    let timeouts = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(NODE_TIMEOUT))
        .set_response_timeout(Some(NODE_TIMEOUT));
    let mut old = config
        .redis
        .node_client(host, *port)?
        .get_multiplexed_async_connection_with_config(&timeouts)
        .await?;
    let () = redis::cmd("REPLICAOF")
        .arg(new_host)
        .arg(new_port)
        .query_async(&mut old)
        .await?;
    // Kept across a restart of the node, as the Sentinels keep what they configure.
    let () = redis::cmd("CONFIG")
        .arg("REWRITE")
        .query_async(&mut old)
        .await?;
    Ok(())
}

/// A connection to a writable primary whose epoch is none of `old`'s, looked for with a
/// new connection each time (through the Sentinels, or the URL's endpoint) until `deadline`.
async fn new_primary(
    config: &Config,
    old: &BTreeSet<String>,
    deadline: Instant,
) -> anyhow::Result<Option<RedisConnection>> {
    loop {
        if let Ok(mut con) = config.redis.connect().await
            && let Ok((info, epoch)) = primary_and_epoch(&mut con).await
            && info.contains("role:master")
            && !old.contains(&epoch)
        {
            return Ok(Some(con));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(PRIMARY_POLL).await;
    }
}

/// A connection to the primary as it is, tried until `deadline` (an endpoint that is
/// moving may refuse for a moment): the coupons must be opened somewhere.
async fn primary_where_it_is(
    config: &Config,
    deadline: Instant,
) -> anyhow::Result<RedisConnection> {
    loop {
        match config.redis.connect().await {
            Ok(primary) => return Ok(primary),
            Err(err) if Instant::now() >= deadline => {
                return Err(anyhow::Error::new(err).context(
                    "no primary to open the coupons on; they open when their lease ends",
                ));
            }
            Err(_) => tokio::time::sleep(PRIMARY_POLL).await,
        }
    }
}

async fn primary_and_epoch(con: &mut RedisConnection) -> anyhow::Result<(String, String)> {
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(con)
        .await?;
    // Under Sentinel one node holds every key: any key names it.
    Ok((info, instance_epoch(con, "").await?))
}
