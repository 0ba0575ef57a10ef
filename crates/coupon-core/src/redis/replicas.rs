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

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::RedisError;

use crate::config::{RedisArgs, ReplicaArgs};
use crate::domain::QueueKind;

/// How often the replicas the Sentinels know are counted again.
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

/// Which replicas each WAIT waits for.
pub enum Replicas {
    /// A fixed number (REDIS_MIN_REPLICAS, behind a plain URL).
    Fixed(u32),
    /// Every replica the Sentinels know (`known` at start), counted again each second,
    /// never fewer than `floor` (REDIS_MIN_REPLICAS).
    Sentinels {
        known: u32,
        floor: u32,
        sentinels: Sentinels,
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
            Replicas::Sentinels {
                known,
                floor,
                sentinels,
            } => {
                let count = Arc::new(AtomicU32::new(known.max(floor)));
                tokio::spawn(recount(sentinels, floor, Arc::downgrade(&count)));
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
async fn recount(sentinels: Sentinels, floor: u32, required: Weak<AtomicU32>) {
    let mut unreadable = false;
    let mut fewer_found = 0;
    loop {
        tokio::time::sleep(RECOUNT).await;
        let Some(required) = required.upgrade() else {
            return;
        };
        match sentinels.known_replicas().await {
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
                        "the replicas the Sentinels know changed; every write that must be \
                         confirmed waits for them all"
                    );
                }
            }
            Err(err) => {
                if !unreadable {
                    tracing::warn!(error = %err, "cannot count the replicas the Sentinels know; the last count stands");
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
    #[error(
        "REDIS_MIN_REPLICAS is {floor} but the Sentinels know only {known} replicas of \
         {master}: no write could ever be confirmed"
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
    /// REDIS_MIN_REPLICAS of each coupon's shard: required in the Redis queue mode, not
    /// offered in Kafka mode (`queue`).
    pub async fn required(
        &self,
        redis: &RedisArgs,
        queue: QueueKind,
    ) -> Result<Option<Required>, ReplicaSetupError> {
        let floor = self.redis_min_replicas;
        let replicas = match redis.sentinels() {
            // On a cluster each coupon's replicas confirm on its own shard (issuer-api's
            // `replication`): the count is the floor, one shard like another.
            None if !redis.redis_cluster_nodes.is_empty() => match (queue, floor) {
                (QueueKind::Kafka, 0) => return Ok(None),
                (QueueKind::Kafka, _) => return Err(ReplicaSetupError::KafkaModeOnCluster),
                (QueueKind::Redis, 0) => {
                    return Err(ReplicaSetupError::StreamsOnClusterUnreplicated);
                }
                (QueueKind::Redis, floor) => Replicas::Fixed(floor),
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
                Replicas::Sentinels {
                    known,
                    floor,
                    sentinels,
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
