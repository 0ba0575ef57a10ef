//! How many Redis replicas must have a write before it counts: before the API answers an
//! admission (`issuer-api`'s `replication`), and before the Redis queue mode's worker
//! persists a stream entry (`issuer-worker`'s `stream_queue::confirm`).
//!
//! Behind a plain URL it is REDIS_MIN_REPLICAS. Under Sentinel it is every replica the
//! Sentinels know, counted again each second, never fewer than REDIS_MIN_REPLICAS: Sentinel
//! may promote any of them, and a partition can leave one replicating from the old primary,
//! confirming writes the promoted one never gets. A replica added while a process runs is
//! waited for from the next count on; one forgotten with SENTINEL RESET no longer is, once
//! ten counts in a row agree.
//!
//! On a Redis Cluster the same holds of each shard: the cluster may promote any replica of
//! the shard, failed ones included once they return (the cluster runs with
//! `cluster-replica-validity-factor 0`). So every WAIT waits for the replicas of the shard
//! that has the most, as `CLUSTER NODES` lists them, counted again each second, never
//! fewer than REDIS_MIN_REPLICAS. A shard with fewer (a promoted replica whose old primary
//! has not returned) confirms nothing meanwhile: its coupons answer 503, and the others
//! sell.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::RedisError;

use crate::config::{RedisArgs, ReplicaArgs};
use crate::domain::QueueKind;
use crate::redis::connection::RedisConnection;

/// How often the replicas the Sentinels (or the cluster) know are counted again.
const RECOUNT: Duration = Duration::from_secs(1);
/// Recounts in a row that must find fewer replicas before fewer are waited for: a Sentinel
/// just restarted, or mid-failover, may list fewer than can be promoted, and waiting for
/// one replica too many only costs a 503 (or a later write to PostgreSQL) meanwhile.
const FEWER_AFTER_RECOUNTS: u32 = 10;

/// The Sentinels watching one master.
#[derive(Clone)]
pub struct Sentinels {
    /// `host:port` of each.
    pub addresses: Vec<String>,
    pub master: String,
    /// Bounds each Sentinel's connect and answer.
    pub timeout: Duration,
}

impl Sentinels {
    /// How many replicas the Sentinels know for the master (down ones included: they may
    /// come back and be promoted): the most any Sentinel that answers lists, since one just
    /// reset or behind on gossip lists fewer. An error only if none answers.
    pub async fn known_replicas(&self) -> Result<u32, RedisError> {
        let (mut most, mut last) = (None, None);
        for address in &self.addresses {
            let asked = self.ask::<Vec<redis::Value>>(address, "REPLICAS");
            match asked.await {
                Ok(replicas) => {
                    most = most.max(Some(u32::try_from(replicas.len()).unwrap_or(u32::MAX)));
                }
                Err(err) => last = Some(err),
            }
        }
        match (most, last) {
            (Some(most), _) => Ok(most),
            (None, Some(err)) => Err(err),
            (None, None) => Err(no_sentinel()),
        }
    }

    /// Asks the Sentinels to fail the master over to a replica (`SENTINEL FAILOVER`, a
    /// switchover the operator asked for): the first Sentinel that can be reached runs it.
    /// Only a Sentinel that refused the connection sends it to the next one: one that
    /// answered anything else (INPROG, NOGOODSLAVE, a timeout) may have started a failover,
    /// and a second Sentinel would force another.
    pub async fn fail_over(&self) -> Result<(), RedisError> {
        let mut last = None;
        for address in &self.addresses {
            match self.ask::<()>(address, "FAILOVER").await {
                Err(err) if err.is_connection_refusal() => last = Some(err),
                asked => return asked,
            }
        }
        Err(last.unwrap_or_else(no_sentinel))
    }

    /// Where the first Sentinel that answers says the master is.
    pub async fn master_address(&self) -> Result<(String, u16), RedisError> {
        let mut last = None;
        for address in &self.addresses {
            match self
                .ask::<(String, u16)>(address, "GET-MASTER-ADDR-BY-NAME")
                .await
            {
                Ok(master) => return Ok(master),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(no_sentinel))
    }

    /// `SENTINEL <command> <master>` on the Sentinel at `address`.
    async fn ask<T: redis::FromRedisValue>(
        &self,
        address: &str,
        command: &str,
    ) -> Result<T, RedisError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let mut sentinel = redis::Client::open(format!("redis://{address}"))?
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("SENTINEL")
            .arg(command)
            .arg(&self.master)
            .query_async(&mut sentinel)
            .await
    }
}

fn no_sentinel() -> RedisError {
    RedisError::from((redis::ErrorKind::InvalidClientConfig, "no Sentinel given"))
}

/// Who knows the replicas that may be promoted.
pub enum Census {
    Sentinels(Sentinels),
    /// A Redis Cluster, asked through a cluster connection: the replicas of its shard that
    /// has the most.
    Cluster(RedisConnection),
}

impl Census {
    async fn known_replicas(&mut self) -> Result<u32, RedisError> {
        match self {
            Self::Sentinels(sentinels) => sentinels.known_replicas().await,
            Self::Cluster(cluster) => {
                let nodes: String = redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(cluster)
                    .await?;
                Ok(most_replicas_of_a_shard(&nodes))
            }
        }
    }
}

/// The most replicas any primary that serves slots has, in a `CLUSTER NODES` reply
/// (`<id> <address> <flags> <primary id or -> ...`, one node a line): a failed replica is
/// still listed, and still counts, since it may return and be promoted.
fn most_replicas_of_a_shard(nodes: &str) -> u32 {
    let lines: Vec<Vec<&str>> = nodes
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    let serves_slots = |fields: &&Vec<&str>| fields.len() > 8;
    lines
        .iter()
        .filter(serves_slots)
        .map(|primary| {
            let replicas = lines
                .iter()
                .filter(|node| node.len() > 3 && node[3] == primary[0])
                .count();
            u32::try_from(replicas).unwrap_or(u32::MAX)
        })
        .max()
        .unwrap_or(0)
}

/// Which replicas each WAIT waits for.
pub enum Replicas {
    /// A fixed number (REDIS_MIN_REPLICAS, behind a plain URL).
    Fixed(u32),
    /// Every replica the census knows (`known` at start), counted again each second,
    /// never fewer than `floor` (REDIS_MIN_REPLICAS).
    Counted {
        known: u32,
        floor: u32,
        census: Census,
    },
}

/// The number of replicas each WAIT waits for now. Under Sentinel a task counts them again
/// each second for as long as a handle lives.
#[derive(Clone)]
pub struct Required(Arc<AtomicU32>);

impl Required {
    pub fn start(replicas: Replicas) -> Self {
        match replicas {
            Replicas::Fixed(count) => Self(Arc::new(AtomicU32::new(count))),
            Replicas::Counted {
                known,
                floor,
                census,
            } => {
                let count = Arc::new(AtomicU32::new(known.max(floor)));
                tokio::spawn(recount(census, floor, Arc::downgrade(&count)));
                Self(count)
            }
        }
    }

    pub fn count(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

/// More replicas apply at once, fewer once `FEWER_AFTER_RECOUNTS` counts in a row find
/// fewer. A count that cannot be read leaves the last one in force.
async fn recount(mut census: Census, floor: u32, required: Weak<AtomicU32>) {
    let mut unreadable = false;
    let mut fewer_found = 0;
    loop {
        tokio::time::sleep(RECOUNT).await;
        let Some(required) = required.upgrade() else {
            return;
        };
        match census.known_replicas().await {
            Ok(known) => {
                unreadable = false;
                let counted = floor.max(known);
                let before = required.load(Ordering::Relaxed);
                fewer_found = if counted < before { fewer_found + 1 } else { 0 };
                if counted > before || fewer_found >= FEWER_AFTER_RECOUNTS {
                    fewer_found = 0;
                    required.store(counted, Ordering::Relaxed);
                    tracing::info!(
                        before,
                        now = counted,
                        "the replicas that may be promoted changed; every write that must be \
                         confirmed waits for them all"
                    );
                }
            }
            Err(err) => {
                if !unreadable {
                    tracing::warn!(error = %err, "cannot count the replicas that may be promoted; the last count stands");
                }
                unreadable = true;
            }
        }
    }
}

/// Why the replicas to wait for could not be settled at start.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaSetupError {
    #[error(
        "REDIS_MIN_REPLICAS is not offered in Kafka mode on a Redis Cluster: a promoted \
         replica's lost admissions are caught by the epoch check and rebuilt from PostgreSQL \
         and the topic (README, \"Redis Cluster\")"
    )]
    KafkaModeOnCluster,
    #[error(
        "the Redis queue mode on a Redis Cluster needs REDIS_MIN_REPLICAS of 1 or more: the \
         stream is the queue, and a failover would lose every \"yes\" its replica lacks \
         (README, \"Redis Cluster\")"
    )]
    StreamsOnClusterUnreplicated,
    #[error("cannot ask the Sentinels how many replicas the primary has: {0}")]
    Sentinels(#[source] redis::RedisError),
    #[error("cannot ask the Redis Cluster how many replicas its shards have: {0}")]
    Cluster(#[source] crate::redis::connect::RedisSetupError),
    #[error("cannot ask the Redis Cluster how many replicas its shards have: {0}")]
    ClusterNodes(#[source] redis::RedisError),
    #[error(
        "REDIS_MIN_REPLICAS is {floor} but only {known} replicas of {master} are known: no \
         write could ever be confirmed"
    )]
    MoreThanKnown {
        floor: u32,
        known: u32,
        master: String,
    },
    #[error(
        "REDIS_REPLICA_TIMEOUT_MS must be above 0 where replicas confirm (REDIS_MIN_REPLICAS, \
         or Sentinel): WAIT with a timeout of 0 blocks until the replicas answer, holding \
         every write behind it"
    )]
    NoTimeout,
    #[error(
        "REDIS_REPLICA_TIMEOUT_MS ({replica}) must be below REDIS_TIMEOUT_MS ({command}), \
         which cuts every Redis command short"
    )]
    TimeoutPastCommands { replica: u64, command: u64 },
}

impl ReplicaArgs {
    /// The replicas each confirmation waits for, or None where none is required (one node,
    /// or replicas behind a plain URL with REDIS_MIN_REPLICAS at 0). Under Sentinel every
    /// replica the Sentinels know, whatever REDIS_MIN_REPLICAS says. On a Redis Cluster,
    /// every replica of the shard that has the most, never fewer than REDIS_MIN_REPLICAS:
    /// required in the Redis queue mode, not offered in Kafka mode (`queue`).
    pub async fn required(
        &self,
        redis: &RedisArgs,
        queue: QueueKind,
    ) -> Result<Option<Required>, ReplicaSetupError> {
        let floor = self.redis_min_replicas;
        let replicas = match redis.sentinels() {
            // On a cluster each coupon's replicas confirm on its own shard (issuer-api's
            // `replication`).
            None if !redis.redis_cluster_nodes.is_empty() => match (queue, floor) {
                (QueueKind::Kafka, 0) => return Ok(None),
                (QueueKind::Kafka, _) => return Err(ReplicaSetupError::KafkaModeOnCluster),
                (QueueKind::Redis, 0) => {
                    return Err(ReplicaSetupError::StreamsOnClusterUnreplicated);
                }
                (QueueKind::Redis, floor) => {
                    let mut census =
                        Census::Cluster(redis.connect().await.map_err(ReplicaSetupError::Cluster)?);
                    let known = census
                        .known_replicas()
                        .await
                        .map_err(ReplicaSetupError::ClusterNodes)?;
                    if floor > known {
                        return Err(ReplicaSetupError::MoreThanKnown {
                            floor,
                            known,
                            master: "the Redis Cluster's shard with the most".to_owned(),
                        });
                    }
                    Replicas::Counted {
                        known,
                        floor,
                        census,
                    }
                }
            },
            Some(sentinels) => {
                let known = sentinels
                    .known_replicas()
                    .await
                    .map_err(ReplicaSetupError::Sentinels)?;
                if floor > known {
                    return Err(ReplicaSetupError::MoreThanKnown {
                        floor,
                        known,
                        master: sentinels.master,
                    });
                }
                Replicas::Counted {
                    known,
                    floor,
                    census: Census::Sentinels(sentinels),
                }
            }
            None if floor > 0 => Replicas::Fixed(floor),
            None => return Ok(None),
        };
        if self.redis_replica_timeout_ms == 0 {
            return Err(ReplicaSetupError::NoTimeout);
        }
        if self.redis_replica_timeout_ms >= redis.redis_timeout_ms {
            return Err(ReplicaSetupError::TimeoutPastCommands {
                replica: self.redis_replica_timeout_ms,
                command: redis.redis_timeout_ms,
            });
        }
        Ok(Some(Required::start(replicas)))
    }
}

#[cfg(test)]
mod tests {
    use super::most_replicas_of_a_shard;

    #[test]
    fn a_shards_replicas_are_counted_failed_ones_too() {
        // Three primaries; the first has two replicas, one of them failed; the second one;
        // the third none (its replica was promoted in place of a primary that has not
        // returned, which serves no slots and is counted for nobody).
        let nodes = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
b1 127.0.0.1:7002@17002 master - 0 0 2 connected 5461-10922
c2 127.0.0.1:7006@17006 master - 0 0 7 connected 10923-16383
a2 127.0.0.1:7004@17004 slave a1 0 0 1 connected
a3 127.0.0.1:7007@17007 slave,fail a1 0 0 1 connected
b2 127.0.0.1:7005@17005 slave b1 0 0 2 connected
c1 127.0.0.1:7003@17003 master,fail - 0 0 3 disconnected
";
        assert_eq!(most_replicas_of_a_shard(nodes), 2);
        let without_a3: String = nodes
            .lines()
            .filter(|l| !l.starts_with("a3"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(most_replicas_of_a_shard(&without_a3), 1);
    }
}
