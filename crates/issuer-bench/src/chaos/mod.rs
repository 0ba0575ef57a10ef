//! `issuer-bench chaos`: sustained load on a cluster of our own while processes die and
//! state is lost, then a check of every invariant in DESIGN.md against what each user was
//! told. Exits non-zero on any violation.

mod cluster;
mod load;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use coupon_core::config::KafkaArgs;
use coupon_core::db::schema::{coupon_issues, failed_events};
use coupon_core::domain::QueueKind;
use coupon_core::domain::{CouponId, UserId};
use coupon_core::event::IssueEvent;
use coupon_core::kafka::offsets::wait_for_group;
use coupon_core::kafka::producer::Producer;
use coupon_core::redis::connection::RedisConnection;
use coupon_core::redis::keys::CouponKeys;
use coupon_core::redis::registry::Registry;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use testkit::redis_cluster::Failover;

pub use self::cluster::RedisTopology;
use self::cluster::{ADMIN_TOKEN, Cluster, GROUP, JWT_SECRET, TOPIC};
use self::load::{Outcome, Unknowns, drive};
use crate::client::ApiClient;
use testkit::credentials::UserCredentials;

pub struct ChaosOptions {
    pub queue: QueueKind,
    pub topology: RedisTopology,
    pub duration: Duration,
    pub coupons: usize,
    pub quantity: i64,
    /// Each coupon's buckets (`coupon_core::buckets`).
    pub buckets: u16,
    pub keep: bool,
}

const GARBAGE_EVENTS: usize = 5;
const ORPHAN_EVENTS: usize = 3;
const GIVE_UP: Duration = Duration::from_secs(60);
const SETTLE_PATIENCE: Duration = Duration::from_secs(120);
/// Between one fault's end and the next fault, so that each fault's effect can be told
/// apart in the logs.
const SETTLE_BETWEEN_FAULTS: Duration = Duration::from_secs(5);
/// How long the partition leader stays dead: about the brokers' session timeout (6 s), so
/// that leadership really moves before it comes back.
const LEADER_DOWN: Duration = Duration::from_secs(8);
/// How long two of the three brokers stay dead: the partitions lose their in-sync quorum
/// and the controllers theirs, so nothing can be acknowledged.
const TWO_BROKERS_DOWN: Duration = Duration::from_secs(4);
/// The load whose writes a cut append-only file loses: a machine crash under
/// `appendfsync everysec` loses up to a second.
const AOF_TAIL_LOST: Duration = Duration::from_secs(1);
/// How far behind the replica falls before it is promoted.
const REPLICA_LAG: Duration = Duration::from_secs(1);
/// How long a primary cut off from its peers stays cut off after another was elected.
const SPLIT_HELD: Duration = Duration::from_secs(3);

/// What a fault threatens, by invariant name (the check table's first column).
struct Fault {
    at: f64,
    kind: FaultKind,
    name: &'static str,
    threatens: &'static [&'static str],
}

#[derive(Clone, Copy)]
enum FaultKind {
    KillWorkers,
    KillLeader,
    TwoBrokersDown,
    CutPostgres,
    KillApi,
    WipeRedis,
    KillRedis,
    CutAofTail,
    PromoteLaggingReplica,
    KillSentinelPrimary,
    FailBack,
    SplitSentinelPrimary,
    HandOver,
    KillClusterPrimary,
    ClusterFailover,
    ClusterFailoverForce,
    MigrateHotSlot,
    HandOverSlot,
    Poison,
}

/// The faults each queue mode meets, in order. Both modes lose workers, PostgreSQL and an
/// API, and see a lagging Redis replica promoted. Kafka mode also loses the partition leader,
/// then two of its three brokers, the tail of Redis's append-only file, and Redis everything
/// (it is only a cache there, rebuilt from PostgreSQL and the topic). In the Redis queue mode
/// Redis is the queue: it is killed and must come back from its append-only file (fsynced
/// before each answer) with every acknowledged admission, and each "yes" waited for the
/// replica, so the promoted one has it. A cut file tail is not among its faults: there it
/// loses the queue's events (the README's trade-off table says so).
fn faults(queue: QueueKind, topology: RedisTopology) -> Vec<Fault> {
    let all = faults_on_one_node(queue);
    match topology {
        RedisTopology::Single => all,
        // Under Sentinel, Redis's own faults are its failovers: the primary cut off from
        // the Sentinels and one replica (a split brain: another elected, the old one still
        // reached by the APIs and confirmed by the other replica until healed and demoted),
        // the primary killed (a replica promoted, the old one back as a replica), the old
        // primary made primary again, and, earlier, a planned switchover through
        // `issuer-api hand-over`. The others stay.
        RedisTopology::Sentinel => {
            let redis_faults = [
                Fault {
                    at: 0.47,
                    kind: FaultKind::SplitSentinelPrimary,
                    name: "the Redis primary cut off from the Sentinels and one replica, the APIs and the other replica still reaching it, then healed",
                    threatens: &["no oversell", "no lost success", "no leaked stock"],
                },
                Fault {
                    at: 0.60,
                    kind: FaultKind::KillSentinelPrimary,
                    name: "kill -9 of the Redis primary under Sentinel, restarted as a replica",
                    threatens: &["no oversell", "no lost success", "no leaked stock"],
                },
                Fault {
                    at: 0.72,
                    kind: FaultKind::FailBack,
                    name: "failback: the old Redis primary made primary again (SENTINEL FAILOVER)",
                    threatens: &["no oversell", "no lost success", "one per user"],
                },
                // Before the unplanned faults, while every coupon is verified and selling:
                // the state a planned switchover meets.
                Fault {
                    at: 0.36,
                    kind: FaultKind::HandOver,
                    name: "a planned switchover: issuer-api hand-over carries the coupons to a new primary",
                    threatens: &["no oversell", "no lost success", "no leaked stock"],
                },
            ];
            with_redis_faults(all, redis_faults)
        }
        // On a cluster, Redis's faults are a shard's: a slot migration of a coupon under
        // load, a graceful and a forced CLUSTER FAILOVER, and kill -9 of a primary (its
        // replica promoted after cluster-node-timeout, the old one back as a replica).
        RedisTopology::Cluster => {
            let redis_faults = [
                Fault {
                    at: 0.28,
                    kind: FaultKind::HandOverSlot,
                    name: "a planned slot migration: issuer-api hand-over carries a selling coupon to another primary",
                    threatens: &["no oversell", "no lost success", "no leaked stock"],
                },
                Fault {
                    at: 0.36,
                    kind: FaultKind::MigrateHotSlot,
                    name: "a slot migration: a selling coupon's slot moved to another primary under load",
                    threatens: &["no oversell", "no lost success", "no leaked stock"],
                },
                Fault {
                    at: 0.47,
                    kind: FaultKind::ClusterFailover,
                    name: "CLUSTER FAILOVER: a shard's replica takes over gracefully",
                    threatens: &["no oversell", "no lost success", "no leaked stock"],
                },
                Fault {
                    at: 0.60,
                    kind: FaultKind::KillClusterPrimary,
                    name: "kill -9 of a shard's primary, its replica promoted, the old one back as a replica",
                    threatens: &["no oversell", "no lost success", "no leaked stock"],
                },
                Fault {
                    at: 0.72,
                    kind: FaultKind::ClusterFailoverForce,
                    name: "CLUSTER FAILOVER FORCE: a shard's replica takes over without its primary's word",
                    threatens: &["no oversell", "no lost success", "one per user"],
                },
            ];
            with_redis_faults(all, redis_faults)
        }
    }
}

/// The single node's faults with its Redis faults (a wipe, a restart, a cut file tail, a
/// lagging replica promoted) replaced by `redis_faults`, the topology's own, in time order.
fn with_redis_faults(all: Vec<Fault>, redis_faults: impl IntoIterator<Item = Fault>) -> Vec<Fault> {
    let mut kept: Vec<Fault> = all
        .into_iter()
        .filter(|fault| {
            !matches!(
                fault.kind,
                FaultKind::WipeRedis
                    | FaultKind::KillRedis
                    | FaultKind::CutAofTail
                    | FaultKind::PromoteLaggingReplica
            )
        })
        .chain(redis_faults)
        .collect();
    kept.sort_by(|a, b| a.at.total_cmp(&b.at));
    kept
}

/// The faults of the single-node topology.
fn faults_on_one_node(queue: QueueKind) -> Vec<Fault> {
    let promote = Fault {
        at: 0.72,
        kind: FaultKind::PromoteLaggingReplica,
        name: "a lagging Redis replica promoted (the primary killed)",
        threatens: &["no oversell", "no lost success", "no leaked stock"],
    };
    let worker = Fault {
        at: 0.06,
        kind: FaultKind::KillWorkers,
        name: "kill -9 of a worker, restarted (twice)",
        threatens: &["no lost success", "one per user"],
    };
    let postgres = Fault {
        at: 0.30,
        kind: FaultKind::CutPostgres,
        name: "PostgreSQL gone for 3 s (every connection dropped)",
        threatens: &["no lost success", "one per user"],
    };
    let api = Fault {
        at: 0.41,
        kind: FaultKind::KillApi,
        name: "kill -9 of an issuer-api with requests in flight",
        threatens: &["no leaked stock", "no lost success"],
    };
    match queue {
        QueueKind::Kafka => vec![
            worker,
            Fault {
                at: 0.16,
                kind: FaultKind::KillLeader,
                name: "kill -9 of the issue topic's partition-0 leader, restarted",
                threatens: &["no lost success", "no leaked stock"],
            },
            postgres,
            api,
            Fault {
                at: 0.53,
                kind: FaultKind::TwoBrokersDown,
                name: "kill -9 of two of the three brokers, restarted",
                threatens: &["no lost success", "no leaked stock"],
            },
            Fault {
                at: 0.60,
                kind: FaultKind::CutAofTail,
                name: "kill -9 of Redis with the tail of its append-only file cut, restarted",
                threatens: &["no oversell", "no lost success", "no leaked stock"],
            },
            Fault {
                at: 0.65,
                kind: FaultKind::WipeRedis,
                name: "Redis restart losing everything, then rebuild-redis --all",
                threatens: &["no oversell", "one per user", "no lost success"],
            },
            promote,
            Fault {
                at: 0.80,
                kind: FaultKind::Poison,
                name: "poison events written straight into the topic",
                threatens: &["poison recorded", "queue drained"],
            },
        ],
        QueueKind::Redis => vec![
            worker,
            Fault {
                at: 0.16,
                kind: FaultKind::KillRedis,
                name: "kill -9 of Redis (the queue), restarted from its AOF",
                threatens: &["no oversell", "no lost success", "one per user"],
            },
            postgres,
            api,
            Fault {
                at: 0.60,
                kind: FaultKind::KillRedis,
                name: "kill -9 of Redis again, under load",
                threatens: &["no oversell", "no lost success", "no leaked stock"],
            },
            promote,
            Fault {
                at: 0.80,
                kind: FaultKind::Poison,
                name: "poison entries written straight into a coupon stream",
                threatens: &["poison recorded", "queue drained"],
            },
        ],
    }
}

pub async fn run(
    bin_dir: &Path,
    admin_database_url: &str,
    options: ChaosOptions,
) -> anyhow::Result<bool> {
    let dir = std::env::current_dir()?.join(".local/chaos");
    let _ = std::fs::remove_dir_all(&dir);
    println!("Starting the chaos cluster (logs in {})", dir.display());
    let mut cluster = Cluster::start(
        bin_dir,
        admin_database_url,
        &dir,
        options.queue,
        options.topology,
    )
    .await?;
    let users = UserCredentials::jwt(JWT_SECRET)?;
    let apis: Rc<Vec<ApiClient>> = Rc::new(
        cluster
            .api_ports
            .iter()
            .map(|port| {
                ApiClient::new(
                    &format!("http://127.0.0.1:{port}"),
                    ADMIN_TOKEN,
                    users.clone(),
                )
            })
            .collect(),
    );
    for (api, port) in apis.iter().zip(&cluster.api_ports) {
        // Their operations routes are beside the API (`cluster`).
        api.wait_ready(&format!("http://127.0.0.1:{port}"), Duration::from_secs(60))
            .await?;
    }
    let mut quantities = BTreeMap::new();
    for n in 0..options.coupons {
        let id = apis[0]
            .create_coupon(&format!("chaos {n}"), options.quantity, options.buckets)
            .await?;
        quantities.insert(id, options.quantity);
    }
    // A third more demand than supply, interleaved so that coupons fill across the whole run.
    let per_coupon = (options.quantity * 4 + 2) / 3;
    let ids: Vec<i64> = quantities.keys().copied().collect();
    let attempts: Vec<(i64, i64)> = (0..per_coupon as usize * ids.len())
        .map(|i| (ids[i % ids.len()], 1_000_000 + i as i64))
        .collect();
    println!(
        "{} queue, Redis {:?}: {} coupons of {}, {} users, over {:?}",
        options.queue,
        options.topology,
        ids.len(),
        options.quantity,
        attempts.len(),
        options.duration
    );

    let started = Instant::now();
    let unknowns = Unknowns::default();
    let load = actix_rt::spawn(drive(
        apis.clone(),
        attempts,
        options.duration,
        GIVE_UP,
        |i| i % 2,
        unknowns.clone(),
    ));
    let mut burst = None;
    let mut log = Vec::new();
    let mut previous_end = started;
    let faults = faults(options.queue, options.topology);
    let mut killed_primary = None;
    let kafka = KafkaArgs {
        kafka_brokers: cluster.kafka_brokers.clone(),
        issue_topic: TOPIC.into(),
        topic_partitions: 3,
        topic_replication: cluster::BROKERS as i32,
        topic_min_insync_replicas: 2,
        producer_linger_ms: 2,
        security: Default::default(),
    };
    for fault in &faults {
        let at = (started + options.duration.mul_f64(fault.at))
            .max(previous_end + SETTLE_BETWEEN_FAULTS);
        actix_rt::time::sleep_until(at.into()).await;
        let began = Instant::now();
        let pause = options.duration.mul_f64(0.04).max(Duration::from_secs(3));
        let detail = match fault.kind {
            FaultKind::KillWorkers => {
                for i in 0..cluster::REPLICAS {
                    cluster.kill_worker(i);
                    actix_rt::time::sleep(pause).await;
                    cluster.start_worker(i)?;
                    actix_rt::time::sleep(pause).await;
                }
                format!("each worker down {pause:?}")
            }
            FaultKind::KillLeader => {
                let brokers = cluster.kafka.clone().context("Kafka mode has brokers")?;
                let leader = brokers.leader(TOPIC, 0)?;
                brokers.kill(leader)?;
                actix_rt::time::sleep(LEADER_DOWN).await;
                // Blocking (a JVM starts): off the runtime that drives the load.
                actix_rt::task::spawn_blocking(move || brokers.restart(&[leader])).await??;
                format!("node {leader} down {LEADER_DOWN:?}")
            }
            FaultKind::TwoBrokersDown => {
                let brokers = cluster.kafka.clone().context("Kafka mode has brokers")?;
                // The leader and one follower: the survivor alone is not enough for anything.
                let leader = brokers.leader(TOPIC, 0)?;
                let victims = [leader, leader % cluster::BROKERS + 1];
                for node in victims {
                    brokers.kill(node)?;
                }
                actix_rt::time::sleep(TWO_BROKERS_DOWN).await;
                actix_rt::task::spawn_blocking(move || brokers.restart(&victims)).await??;
                format!("nodes {victims:?} down {TWO_BROKERS_DOWN:?}")
            }
            FaultKind::CutPostgres => {
                cluster.postgres.cut();
                actix_rt::time::sleep(Duration::from_secs(3)).await;
                cluster.postgres.restore();
                "3 s".into()
            }
            FaultKind::KillApi => {
                // A burst at api-0 alone, so that requests are mid-flight when it dies.
                let extra: Vec<(i64, i64)> = (0..100)
                    .map(|i| (ids[i % ids.len()], 2_000_000 + i as i64))
                    .collect();
                burst = Some(actix_rt::spawn(drive(
                    apis.clone(),
                    extra,
                    Duration::from_millis(20),
                    GIVE_UP,
                    |_| 0,
                    unknowns.clone(),
                )));
                actix_rt::time::sleep(Duration::from_millis(10)).await;
                cluster.kill_api(0);
                actix_rt::time::sleep(pause).await;
                cluster.start_api(0).await?;
                format!("100 requests in flight; down {pause:?}")
            }
            FaultKind::WipeRedis => {
                cluster.wipe_redis().await?;
                let mut rebuild = cluster.rebuild_redis()?;
                let status = actix_rt::task::spawn_blocking(move || rebuild.wait()).await??;
                format!("rebuild-redis --all exited {status}")
            }
            FaultKind::KillRedis => {
                cluster.restart_redis().await?;
                "down while restarting, data kept (AOF, fsync always)".into()
            }
            FaultKind::CutAofTail => {
                let cut = cluster.cut_aof_tail(AOF_TAIL_LOST).await?;
                format!("the last {AOF_TAIL_LOST:?} of writes ({cut} bytes) lost")
            }
            FaultKind::KillSentinelPrimary => {
                let (old, new) = cluster.kill_sentinel_primary().await?;
                killed_primary = Some(old);
                format!(
                    "primary {old} killed; the Sentinels promoted {new}; {old} back as a replica"
                )
            }
            FaultKind::SplitSentinelPrimary => {
                let (old, kept, new) = cluster.split_sentinel_primary(SPLIT_HELD).await?;
                format!(
                    "{old} cut off with {kept}; the Sentinels elected {new}; healed {SPLIT_HELD:?} later, {old} demoted"
                )
            }
            FaultKind::FailBack => {
                let old = killed_primary.context("the primary was killed first")?;
                cluster.fail_back_to(old).await?;
                format!("{old} primary again")
            }
            FaultKind::HandOver => cluster.hand_over(&[]).await?,
            FaultKind::HandOverSlot => {
                let coupon = ids[4 % ids.len()];
                let (from, to, did) = cluster.hand_over_coupon(coupon).await?;
                format!("coupon {coupon}'s slot carried from {from} to {to}: {did}")
            }
            // Each on another coupon, so that each meets a shard with its own history.
            FaultKind::MigrateHotSlot => {
                let (from, to) = cluster.migrate_coupon(ids[0]).await?;
                format!("coupon {}'s slot moved from {from} to {to}", ids[0])
            }
            FaultKind::ClusterFailover => {
                let coupon = ids[1 % ids.len()];
                let (old, new) = cluster
                    .fail_over_cluster(coupon, Failover::Graceful)
                    .await?;
                format!("coupon {coupon}'s shard: {new} took over from {old}")
            }
            FaultKind::KillClusterPrimary => {
                let coupon = ids[2 % ids.len()];
                let (old, new) = cluster.kill_cluster_primary(coupon).await?;
                format!(
                    "coupon {coupon}'s primary {old} killed; {new} promoted; {old} back as a replica"
                )
            }
            FaultKind::ClusterFailoverForce => {
                let coupon = ids[3 % ids.len()];
                let (old, new) = cluster.fail_over_cluster(coupon, Failover::Force).await?;
                format!("coupon {coupon}'s shard: {new} forced over {old}")
            }
            FaultKind::PromoteLaggingReplica => {
                cluster.promote_lagging_replica(REPLICA_LAG).await?;
                format!("replica cut off for {REPLICA_LAG:?}, then promoted")
            }
            FaultKind::Poison => {
                let last_coupon = ids.iter().max().copied().unwrap_or(0);
                match options.queue {
                    QueueKind::Kafka => inject_poison(&kafka, last_coupon).await?,
                    QueueKind::Redis => {
                        inject_stream_poison(&mut cluster.redis().await?, last_coupon).await?
                    }
                }
                format!(
                    "{GARBAGE_EVENTS} undecodable, {ORPHAN_EVENTS} for coupons that do not exist"
                )
            }
        };
        println!(
            "{:>6.1}s  {}: {detail}",
            started.elapsed().as_secs_f64(),
            fault.name
        );
        previous_end = Instant::now();
        log.push(Happened {
            fault,
            detail,
            began,
        });
    }

    let mut outcomes = load.await?;
    if let Some(burst) = burst {
        outcomes.extend(burst.await?);
    }
    println!(
        "{:>6.1}s  load done; letting the cluster settle",
        started.elapsed().as_secs_f64()
    );
    let settled = settle(&cluster, &kafka, options.queue).await;
    let checks = check(&cluster, &quantities, &outcomes, settled).await?;
    print_report(&log, &checks, &outcomes);
    print_costs(&log, &unknowns.borrow());
    let passed = checks.iter().all(|c| c.violations.is_empty());
    cluster.shut_down(options.keep).await?;
    Ok(passed)
}

/// The orphan events a Kafka producer would write, appended to a coupon's stream instead,
/// plus garbage entries. The coupon is registered again (it may have sold out and left the
/// registry already): the workers read only registered coupons' streams.
async fn inject_stream_poison(con: &mut RedisConnection, last_coupon: i64) -> anyhow::Result<()> {
    let coupon = CouponId::new(last_coupon)?;
    let stream = CouponKeys::new("", coupon).stream;
    for n in 0..GARBAGE_EVENTS {
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("garbage")
            .arg(n)
            .query_async(con)
            .await?;
    }
    for n in 1..=ORPHAN_EVENTS as i64 {
        let ghost = CouponId::new(last_coupon + 1000 + n)?;
        let event = IssueEvent::new(ghost, UserId::new(n)?, chrono::Utc::now());
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg(&event.stream_fields())
            .query_async(con)
            .await?;
    }
    Registry::new("", QueueKind::Redis)
        .register(con, coupon)
        .await?;
    Ok(())
}

async fn inject_poison(kafka: &KafkaArgs, last_coupon: i64) -> anyhow::Result<()> {
    let producer = Producer::new(kafka, "chaos-poison", Duration::from_secs(10))?;
    for n in 0..GARBAGE_EVENTS {
        producer
            .send(
                TOPIC,
                n.to_string().as_bytes(),
                format!("{{not an event {n}").as_bytes(),
                None,
            )
            .await?;
    }
    for n in 1..=ORPHAN_EVENTS as i64 {
        let ghost = CouponId::new(last_coupon + 1000 + n)?;
        let event = IssueEvent::new(ghost, UserId::new(n)?, chrono::Utc::now());
        producer
            .send(TOPIC, event.key().as_bytes(), &event.encode(), None)
            .await?;
    }
    Ok(())
}

/// Waits until nothing is pending in Redis and the workers have consumed the whole queue
/// (committed to the end of the topic, or read and acknowledged every stream entry);
/// returns whether that happened in time.
async fn settle(cluster: &Cluster, kafka: &KafkaArgs, queue: QueueKind) -> Result<(), String> {
    let deadline = Instant::now() + SETTLE_PATIENCE;
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut redis = match cluster.redis().await {
            Ok(redis) => redis,
            Err(err) => {
                last = err.to_string();
                actix_rt::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        match pending_slots(&mut redis).await {
            Ok(0) => {
                let drained = match queue {
                    QueueKind::Kafka => wait_for_group(kafka, GROUP, Duration::from_secs(2))
                        .await
                        .map_err(|e| e.to_string()),
                    QueueKind::Redis => streams_drained(&mut redis).await,
                };
                match drained {
                    Ok(()) => return Ok(()),
                    Err(err) => last = err,
                }
            }
            Ok(n) => last = format!("{n} slots still pending in Redis"),
            Err(err) => last = err.to_string(),
        }
        actix_rt::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last)
}

/// Every coupon stream read to its end by the group, with nothing left unacknowledged.
async fn streams_drained(con: &mut RedisConnection) -> Result<(), String> {
    let drained = async {
        let streams: Vec<String> = redis::cmd("KEYS")
            .arg(CouponKeys::of_every_coupon("").stream)
            .query_async(con)
            .await?;
        for stream in streams {
            let groups: redis::streams::StreamInfoGroupsReply =
                redis::AsyncCommands::xinfo_groups(con, &stream).await?;
            let Some(group) = groups.groups.into_iter().find(|g| g.name == GROUP) else {
                return Ok(Some(format!("{stream}: no consumer group")));
            };
            if group.pending > 0 {
                return Ok(Some(format!(
                    "{stream}: {} entries unacknowledged",
                    group.pending
                )));
            }
            let last: redis::streams::StreamRangeReply =
                redis::AsyncCommands::xrevrange_count(con, &stream, "+", "-", 1).await?;
            if let Some(entry) = last.ids.as_slice().first()
                && stream_id(&entry.id) > stream_id(&group.last_delivered_id)
            {
                return Ok(Some(format!("{stream}: entries not read yet")));
            }
        }
        Ok::<_, redis::RedisError>(None)
    };
    match drained.await {
        Ok(None) => Ok(()),
        Ok(Some(why)) => Err(why),
        Err(err) => Err(err.to_string()),
    }
}

/// A stream entry id ("ms-seq") in its order.
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Pending entries left in Redis, over every coupon (on a cluster, KEYS asks every primary).
async fn pending_slots(con: &mut RedisConnection) -> redis::RedisResult<usize> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(CouponKeys::of_every_coupon("").pending)
        .query_async(con)
        .await?;
    let mut total = 0;
    for key in keys {
        let len: usize = redis::cmd("HLEN").arg(key).query_async(con).await?;
        total += len;
    }
    Ok(total)
}

struct Check {
    invariant: &'static str,
    what: String,
    violations: Vec<String>,
}

async fn check(
    cluster: &Cluster,
    quantities: &BTreeMap<i64, i64>,
    outcomes: &[Outcome],
    settled: Result<(), String>,
) -> anyhow::Result<Vec<Check>> {
    let mut db = AsyncPgConnection::establish(&cluster.database_url)
        .await
        .context("checks need PostgreSQL")?;
    let rows: Vec<(i64, i64)> = coupon_issues::table
        .select((coupon_issues::coupon_id, coupon_issues::user_id))
        .load(&mut db)
        .await?;
    let held: HashSet<(i64, i64)> = rows.iter().copied().collect();
    let mut per_coupon: HashMap<i64, i64> = HashMap::new();
    for (coupon, _) in &rows {
        *per_coupon.entry(*coupon).or_default() += 1;
    }
    let failed: Vec<String> = failed_events::table
        .select(failed_events::reason)
        .load(&mut db)
        .await?;
    let count_failed = |reason: &str| failed.iter().filter(|r| *r == reason).count();

    let mut checks = Vec::new();
    let mut violations = Vec::new();
    for (coupon, quantity) in quantities {
        let n = per_coupon.get(coupon).copied().unwrap_or(0);
        if n > *quantity {
            violations.push(format!(
                "coupon {coupon}: {n} rows for a quantity of {quantity}"
            ));
        }
    }
    checks.push(Check {
        invariant: "no oversell",
        what: "rows per coupon ≤ quantity".into(),
        violations,
    });

    let violations = if held.len() == rows.len() {
        vec![]
    } else {
        vec![format!("{} duplicate rows", rows.len() - held.len())]
    };
    checks.push(Check {
        invariant: "one per user",
        what: "no (coupon, user) twice".into(),
        violations,
    });

    let told_yes =
        |o: &Outcome| o.status == Some(201) || (o.status == Some(409) && o.after_unknown);
    let violations = outcomes
        .iter()
        .filter(|o| told_yes(o) && !held.contains(&(o.coupon, o.user)))
        .map(|o| {
            format!(
                "user {} of coupon {} was told {} but has no row",
                o.user, o.coupon, o.result
            )
        })
        .collect();
    let yes = outcomes.iter().filter(|o| told_yes(o)).count();
    checks.push(Check {
        invariant: "no lost success",
        what: format!("each of {yes} users told SUCCESS (or 409 after a 503) has a row"),
        violations,
    });

    let violations = outcomes
        .iter()
        .filter(|o| {
            matches!(o.status, Some(s) if (400..500).contains(&s) && s != 409)
                && held.contains(&(o.coupon, o.user))
        })
        .map(|o| {
            format!(
                "user {} of coupon {} was told {} but has a row",
                o.user, o.coupon, o.result
            )
        })
        .collect();
    checks.push(Check {
        invariant: "errors tell the truth",
        what: "no row for a user finally refused".into(),
        violations,
    });

    let violations = quantities
        .iter()
        .filter_map(|(coupon, quantity)| {
            let n = per_coupon.get(coupon).copied().unwrap_or(0);
            (n != *quantity).then(|| format!("coupon {coupon}: {n} rows of {quantity}"))
        })
        .collect();
    checks.push(Check {
        invariant: "no leaked stock",
        what: "every coupon ends at exactly its quantity".into(),
        violations,
    });

    let (garbage, orphans) = (
        count_failed("UNDECODABLE"),
        count_failed("COUPON_NOT_FOUND"),
    );
    let mut violations = Vec::new();
    if garbage != GARBAGE_EVENTS || orphans != ORPHAN_EVENTS {
        violations.push(format!(
            "failed_events holds {garbage} UNDECODABLE and {orphans} COUPON_NOT_FOUND"
        ));
    }
    checks.push(Check {
        invariant: "poison recorded",
        what: format!("{GARBAGE_EVENTS} + {ORPHAN_EVENTS} poison events in failed_events"),
        violations,
    });

    checks.push(Check {
        invariant: "queue drained",
        what: "nothing pending; the whole queue consumed and acknowledged".into(),
        violations: settled.err().into_iter().collect(),
    });
    Ok(checks)
}

/// A fault as it was run: what was done, and when it began.
struct Happened<'a> {
    fault: &'a Fault,
    detail: String,
    began: Instant,
}

/// What each fault cost the users: the 503s and broken connections from its start to the
/// next fault's (or the end), and how long after its start the last of them came.
fn print_costs(log: &[Happened<'_>], unknowns: &[Instant]) {
    println!(
        "\n| fault | 503s or broken connections | last one, after the fault began |\n|---|---:|---:|"
    );
    for (i, happened) in log.iter().enumerate() {
        let end = log.get(i + 1).map(|next| next.began);
        let during: Vec<&Instant> = unknowns
            .iter()
            .filter(|at| **at >= happened.began && end.is_none_or(|end| **at < end))
            .collect();
        let last = during
            .iter()
            .map(|at| at.duration_since(happened.began))
            .max()
            .map_or("-".to_owned(), |last| {
                format!("{:.1} s", last.as_secs_f64())
            });
        println!(
            "| {} ({}) | {} | {last} |",
            happened.fault.name,
            happened.detail,
            during.len()
        );
    }
}

fn print_report(log: &[Happened<'_>], checks: &[Check], outcomes: &[Outcome]) {
    let result = |invariant: &str| {
        checks
            .iter()
            .find(|c| c.invariant == invariant)
            .map_or("?", |c| {
                if c.violations.is_empty() {
                    "PASS"
                } else {
                    "FAIL"
                }
            })
    };
    println!("\n| fault | invariant | result |\n|---|---|---|");
    for happened in log {
        for invariant in happened.fault.threatens {
            println!(
                "| {} | {invariant} | {} |",
                happened.fault.name,
                result(invariant)
            );
        }
    }
    println!("\n| invariant | checked | violations | result |\n|---|---|---:|---|");
    for c in checks {
        println!(
            "| {} | {} | {} | {} |",
            c.invariant,
            c.what,
            c.violations.len(),
            result(c.invariant)
        );
    }
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    for o in outcomes {
        let key = if o.after_unknown {
            format!("{} (after a 503 or a broken connection)", o.result)
        } else {
            o.result.clone()
        };
        *answers.entry(key).or_default() += 1;
    }
    println!("\nFinal answers: {answers:?}");
    for c in checks {
        for v in c.violations.iter().take(10) {
            println!("VIOLATION [{}]: {v}", c.invariant);
        }
    }
}
