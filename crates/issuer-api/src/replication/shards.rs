//! Replica confirmations on a Redis Cluster: each coupon's (or each bucket's, for a bucketed
//! coupon) on its own shard.
//!
//! Invariant, as on one node (`super::socket`): a write counts as confirmed only by a WAIT
//! that follows, on one connection, a write of its own applied after it on the same
//! instance. On a cluster the admissions go through the shared cluster client, which picks
//! and replaces its connections itself, so a confirmation cannot rest on the connection the
//! admission used. It rests on the instance instead: one pipeline, on one connection to the
//! coupon's primary, sends a fence write made only if the admission's stamp names that
//! instance in its present incarnation and is its meta's stamp still (`scripts/fence.lua`),
//! then the WAIT. One instance has one replication stream,
//! and the fence is sent after the admission's reply came back, so it is applied after the
//! admission: a replica that acknowledged the fence has the admission. A fence refused
//! (another instance holds the coupon now: a failover or a slot migration in between; this
//! one resynced from another, a full sync that discards what only it had; a rebuild
//! replaced the state) confirms nothing, and the answer is 503. A pipeline the client sends again on a new
//! connection sends its fence again too.
//!
//! Confirmations asked for while one of their coupon's is in flight are grouped by coupon
//! and stamp: one fence and one WAIT each, on a cluster connection of the confirmations' own
//! (a WAIT holds up every command behind it on its connection). Each coupon's go on their
//! own: a shard that cannot confirm holds up only its own coupons.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use coupon_core::redis::connection::RedisConnection;
use coupon_core::redis::epoch::Stamp;
use coupon_core::redis::keys::CouponKeys;
use coupon_core::redis::library::{self, Function};
use coupon_core::redis::replicas::Required;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};

use crate::error::ApiError;

/// What one WAIT found: how many replicas confirmed, of how many it waited for.
type Confirmed = Result<(u32, u32), String>;
/// An asker: the state (a coupon's or a bucket's) and stamp its admission ran under, and
/// where its answer goes.
type Asker = (CouponKeys, Stamp, oneshot::Sender<Confirmed>);

#[derive(Clone)]
pub struct ShardReplication {
    timeout: Duration,
    askers: mpsc::UnboundedSender<Asker>,
}

impl ShardReplication {
    /// Starts the task that sends the fences and WAITs on `redis`, a cluster connection of
    /// their own. The task ends when the last handle is dropped.
    pub fn start(redis: RedisConnection, required: Required, timeout: Duration) -> Self {
        let (askers, waiting) = mpsc::unbounded_channel();
        tokio::spawn(confirm_in_groups(redis, required, timeout, waiting));
        Self { timeout, askers }
    }

    /// Returns once the required replicas of the instance `stamp` names have everything it
    /// applied before this call (the admission decided under `stamp` among it).
    pub async fn confirm(&self, keys: CouponKeys, stamp: Option<Stamp>) -> Result<(), ApiError> {
        let Some(stamp) = stamp else {
            return Err(ApiError::unavailable(
                "redis replicas",
                "the admission passed no stamp: which instance decided is unknown",
            ));
        };
        let (tell, told) = oneshot::channel();
        let stopped = || ApiError::Internal("the replication task has stopped".into());
        self.askers
            .send((keys.clone(), stamp, tell))
            .map_err(|_| stopped())?;
        let (confirmed, required) = told
            .await
            .map_err(|_| stopped())?
            .map_err(|err| ApiError::unavailable("redis replicas", err))?;
        if confirmed < required {
            return Err(ApiError::unavailable(
                "redis replicas",
                format!(
                    "{confirmed} of {required} replicas of the shard of {} confirmed in {:?} \
                     at most",
                    keys.meta, self.timeout
                ),
            ));
        }
        Ok(())
    }
}

/// How long the WAIT of a coupon whose last confirmation fell short may take, doubled at
/// each shortfall in a row up to REDIS_REPLICA_TIMEOUT_MS. One node's confirmations share
/// one connection, which a WAIT holds: at the full timeout each, the WAITs of a shard that
/// cannot confirm (its replica down) would queue up behind each other past the command
/// timeout. The doubling keeps a replica that is slow, not gone, able to confirm again.
const PROBE: Duration = Duration::from_millis(50);

/// One confirmation in flight per coupon and stamp: askers that come meanwhile wait for it
/// to end, then go together (one fence and one WAIT for all of them). Coupons do not wait
/// for each other: a shard whose WAIT runs out (its replica down) holds up its own
/// coupons' answers only, and after one falls short a coupon's next WAITs wait [`PROBE`]
/// at most, doubled at each further shortfall, until one confirms.
async fn confirm_in_groups(
    redis: RedisConnection,
    required: Required,
    timeout: Duration,
    mut waiting: mpsc::UnboundedReceiver<Asker>,
) {
    let mut queued: HashMap<(CouponKeys, Stamp), Vec<oneshot::Sender<Confirmed>>> = HashMap::new();
    let mut flying: FuturesUnordered<BoxFuture<'static, ((CouponKeys, Stamp), bool)>> =
        FuturesUnordered::new();
    let mut busy: HashSet<(CouponKeys, Stamp)> = HashSet::new();
    // Shortfalls in a row, by coupon.
    let mut short: HashMap<CouponKeys, u32> = HashMap::new();
    let mut open = true;
    while open || !flying.is_empty() {
        tokio::select! {
            asker = waiting.recv(), if open => match asker {
                Some((keys, stamp, tell)) => queued.entry((keys, stamp)).or_default().push(tell),
                // Every handle is gone: what is in flight still answers its askers.
                None => open = false,
            },
            Some((key, confirmed)) = flying.next() => {
                if confirmed {
                    short.remove(&key.0);
                } else {
                    *short.entry(key.0.clone()).or_default() += 1;
                }
                busy.remove(&key);
            }
        }
        let ready: Vec<(CouponKeys, Stamp)> = queued
            .keys()
            .filter(|key| !busy.contains(*key))
            .cloned()
            .collect();
        for key in ready {
            let Some(tellers) = queued.remove(&key) else {
                continue;
            };
            busy.insert(key.clone());
            let mut redis = redis.clone();
            let keys = key.0.clone();
            let min = required.count();
            let wait = short
                .get(&key.0)
                .map_or(timeout, |shortfalls| probe(*shortfalls, timeout));
            flying.push(Box::pin(async move {
                let answer = fence_and_wait(&mut redis, &keys, &key.1, min, wait)
                    .await
                    .map(|count| (count, min));
                for tell in tellers {
                    // An asker that went away needs no answer.
                    let _ = tell.send(answer.clone());
                }
                let confirmed = matches!(answer, Ok((count, min)) if count >= min);
                (key, confirmed)
            }));
        }
    }
}

/// The WAIT after `shortfalls` in a row: [`PROBE`], doubled at each, at most `timeout`.
fn probe(shortfalls: u32, timeout: Duration) -> Duration {
    PROBE
        .saturating_mul(2u32.saturating_pow(shortfalls.saturating_sub(1)))
        .min(timeout)
}

/// The fence on the coupon's shard, then the WAIT, on one connection; how many replicas
/// acknowledged.
async fn fence_and_wait(
    redis: &mut RedisConnection,
    keys: &CouponKeys,
    stamp: &Stamp,
    min: u32,
    timeout: Duration,
) -> Result<u32, String> {
    let mut call = library::call(Function::Fence, &[&keys.fence, &keys.meta]);
    call.arg(stamp.as_str());
    let mut pipe = redis::pipe();
    pipe.add_command(call)
        .cmd("WAIT")
        .arg(min)
        .arg(timeout.as_millis() as u64);
    let (fenced, count): (i64, u32) = redis
        .pipeline_on_node_of(&keys.fence, &pipe)
        .await
        .map_err(|err| err.to_string())?;
    if fenced == 0 {
        return Err(
            "another instance, or another verification, holds the coupon now: whether the \
             replicas of the one that decided have it is unknown"
                .to_owned(),
        );
    }
    Ok(count)
}
