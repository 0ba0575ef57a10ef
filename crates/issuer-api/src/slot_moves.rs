//! Moving one coupon's slot on a Redis Cluster, for `issuer-api hand-over --coupon --to`:
//! a graceful `CLUSTER FAILOVER` to a replica of the coupon's primary (the whole shard
//! moves), or a migration of the slot to another primary. The hand-over
//! (`crate::issuing`'s `hand_over`) closes and marks the coupons before the move and opens
//! them after it where the mark arrived; this module only moves, and says which coupons
//! the move carries.
//!
//! Why a migration of its own, not `redis-cli --cluster reshard`: `MIGRATE` deletes the keys
//! on the source as soon as the target has them, before the target's replicas do, so a
//! target that dies then loses them (in the Redis queue mode, events never persisted).
//! Here the keys of the coupons the hand-over closed are copied (`MIGRATE ... COPY
//! REPLACE`), waited for on the target's replicas (every one connected, and at least
//! REDIS_MIN_REPLICAS), and only then deleted on the source. What a closed coupon still
//! writes between the copy and the delete (a settle, a worker's acknowledgement) may be
//! missing on the target: a write a restart could lose too, resolved again the same way.
//!
//! Invariant: a copy is deleted on the source only while the coupon is closed there by this
//! hand-over's mark, which admits nothing. A close whose answer was lost may never have run,
//! and a lease may run out: what such a coupon admitted between the copy and the delete
//! would go with the delete (`failover_model.rs`, `Bug::DeleteUnchecked`). So the mark is
//! looked for on the source before the copy and again before the delete (the lease key
//! holding the token, with at least [`LEASE_LEFT`] to run, and the meta closed); a coupon
//! without it, and any other key of the slot (a rate-limit counter, or the registry's when
//! it shares the slot), is moved by a plain `MIGRATE ... REPLACE`, which moves a key whole
//! and loses no write, then waited for on the target's replicas the same way.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use coupon_core::domain::CouponId;
use coupon_core::redis::admission::RebuildLease;
use coupon_core::redis::keys::CouponKeys;
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use crate::config::Config;

/// Keys per `MIGRATE`.
const BATCH: usize = 100;
/// `MIGRATE`'s own bound on its transfer; each command to a node is allowed more.
const MIGRATE_TIMEOUT_MS: u64 = 5_000;
const NODE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two looks at a node's replicas or role.
const POLL: Duration = Duration::from_millis(20);
/// What a closed coupon's lease must still have to run for its keys to be copied, or its
/// copy's source deleted: far above the few milliseconds between the look and the delete.
const LEASE_LEFT: Duration = Duration::from_secs(5);

/// A node as `CLUSTER NODES` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClusterNode {
    id: String,
    host: String,
    port: u16,
    /// The node that answered the listing.
    myself: bool,
    /// The id of the primary it replicates; None for a primary.
    replicates: Option<String>,
    /// The slot ranges it serves (a primary's), both ends included.
    slots: Vec<(u16, u16)>,
}

impl ClusterNode {
    fn serves(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|(first, last)| (*first..=*last).contains(&slot))
    }

    fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// `CLUSTER NODES`, one node per line: `<id> <ip:port@bus[,hostname]> <flags> <primary id
/// or -> <ping> <pong> <config epoch> <link> <slot or range>...`. A migration's own entries
/// (`[slot->-id]`, `[slot-<-id]`) are not served slots and are skipped.
fn parse_nodes(listing: &str) -> anyhow::Result<Vec<ClusterNode>> {
    listing
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [id, address, flags, primary, ..] = fields[..] else {
                bail!("CLUSTER NODES line not understood: {line}");
            };
            let endpoint = address.split(['@', ',']).next().unwrap_or(address);
            let (host, port) = split_address(endpoint)?;
            let mut slots = Vec::new();
            for slot in fields.iter().skip(8).filter(|slot| !slot.starts_with('[')) {
                let (first, last) = slot.split_once('-').unwrap_or((slot, slot));
                slots.push((first.parse()?, last.parse()?));
            }
            Ok(ClusterNode {
                id: id.to_owned(),
                host,
                port,
                myself: flags.split(',').any(|flag| flag == "myself"),
                replicates: (primary != "-").then(|| primary.to_owned()),
                slots,
            })
        })
        .collect()
}

/// `host:port`, the host possibly an IPv6 address.
fn split_address(address: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = address
        .rsplit_once(':')
        .with_context(|| format!("{address:?} is not host:port"))?;
    let port = port
        .parse()
        .with_context(|| format!("{address:?}: the port is not a number"))?;
    Ok((host.to_owned(), port))
}

/// How the slot moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The target is a replica of the slot's primary: a graceful `CLUSTER FAILOVER`.
    SwitchOver,
    /// The target is another primary: the slot migrated there.
    Migration { slot: u16 },
}

/// A move decided against the cluster as it is, before anything is closed.
pub struct SlotMovePlan {
    kind: Kind,
    source: ClusterNode,
    target: ClusterNode,
    /// The coupons whose keys the move carries: every coupon on the slot's primary for a
    /// switchover, every coupon on the slot for a migration.
    pub coupons: Vec<CouponId>,
}

impl SlotMovePlan {
    /// Decides how `coupon`'s slot reaches the node at `to`, and which of `every` coupon
    /// moves with it. Fails, with nothing done, when `to` already serves the slot, is no
    /// node of the cluster, or replicates another primary.
    pub async fn make(
        config: &Config,
        coupon: CouponId,
        to: &str,
        every: &[CouponId],
    ) -> anyhow::Result<Self> {
        let (host, port) = split_address(to)?;
        let mut asked = node(config, &host, port)
            .await
            .with_context(|| format!("--to {to}: no Redis node answers there"))?;
        let prefix = &config.redis.redis_key_prefix;
        let slot = key_slot(&mut asked, &CouponKeys::new(prefix, coupon).meta).await?;
        let listing: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut asked)
            .await?;
        let nodes = parse_nodes(&listing)?;
        let source = nodes
            .iter()
            .find(|node| node.replicates.is_none() && node.serves(slot))
            .with_context(|| format!("no primary serves slot {slot} (coupon {coupon})"))?
            .clone();
        let target = nodes
            .iter()
            .find(|node| node.myself)
            .context("CLUSTER NODES names no node as myself")?
            .clone();
        let kind = if target.id == source.id {
            bail!("coupon {coupon}'s slot {slot} is on {to} already");
        } else if target.replicates.as_deref() == Some(source.id.as_str()) {
            Kind::SwitchOver
        } else if target.replicates.is_none() {
            Kind::Migration { slot }
        } else {
            bail!(
                "{to} replicates another primary than {}, which serves coupon {coupon}",
                source.address()
            );
        };
        let mut slots = redis::pipe();
        for other in every {
            slots
                .cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(CouponKeys::new(prefix, *other).meta);
        }
        let slots: Vec<u16> = slots.query_async(&mut asked).await?;
        let coupons = every
            .iter()
            .zip(slots)
            .filter(|(_, other)| match kind {
                Kind::SwitchOver => source.serves(*other),
                Kind::Migration { slot } => *other == slot,
            })
            .map(|(coupon, _)| *coupon)
            .collect();
        Ok(Self {
            kind,
            source,
            target,
            coupons,
        })
    }

    /// Moves the slot, returning once the target serves it; fails past `deadline`. On a
    /// failed migration the slot is left in its migrating state for `redis-cli --cluster
    /// fix`, which the error says.
    pub async fn execute(
        &self,
        config: &Config,
        closed: &[RebuildLease],
        deadline: Instant,
    ) -> anyhow::Result<()> {
        tracing::info!(kind = ?self.kind, from = %self.source.address(), to = %self.target.address(),
            coupons = self.coupons.len(), "hand-over: moving the slot");
        match self.kind {
            Kind::SwitchOver => self.switch_over(config, deadline).await,
            Kind::Migration { slot } => self
                .migrate(config, slot, closed, deadline)
                .await
                .with_context(|| {
                    format!("slot {slot} left migrating; `redis-cli --cluster fix` settles it")
                }),
        }
    }

    /// `CLUSTER FAILOVER` on the replica: it waits for every write of its primary, which
    /// stops taking writes meanwhile, then takes its slots.
    async fn switch_over(&self, config: &Config, deadline: Instant) -> anyhow::Result<()> {
        let mut replica = node(config, &self.target.host, self.target.port).await?;
        let () = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query_async(&mut replica)
            .await?;
        loop {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut replica)
                .await?;
            if info.lines().any(|line| line.trim() == "role:master") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{} was not promoted in time", self.target.address());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn migrate(
        &self,
        config: &Config,
        slot: u16,
        closed: &[RebuildLease],
        deadline: Instant,
    ) -> anyhow::Result<()> {
        let mut source = node(config, &self.source.host, self.source.port).await?;
        let mut target = node(config, &self.target.host, self.target.port).await?;
        let prefix = &config.redis.redis_key_prefix;
        let floor = config.replicas.redis_min_replicas as usize;
        // Which closed coupon each key belongs to.
        let owners: HashMap<String, (&RebuildLease, CouponKeys)> = closed
            .iter()
            .flat_map(|held| {
                let keys = CouponKeys::new(prefix, held.coupon);
                [
                    keys.meta.clone(),
                    keys.issued.clone(),
                    keys.pending.clone(),
                    keys.rebuilding.clone(),
                    keys.stream.clone(),
                    keys.fence.clone(),
                ]
                .map(|key| (key, (held, keys.clone())))
            })
            .collect();
        set_slot(&mut target, slot, "IMPORTING", &self.source.id).await?;
        set_slot(&mut source, slot, "MIGRATING", &self.target.id).await?;
        let auth = credentials(config)?;
        loop {
            if Instant::now() >= deadline {
                bail!("the migration did not end in time");
            }
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(BATCH)
                .query_async(&mut source)
                .await?;
            if keys.is_empty() {
                break;
            }
            let mut carried: Vec<(&RebuildLease, &CouponKeys, Vec<String>)> = Vec::new();
            let mut moved = Vec::new();
            for key in keys {
                let Some((held, keys)) = owners.get(&key) else {
                    moved.push(key);
                    continue;
                };
                match carried.iter_mut().find(|(h, ..)| h.coupon == held.coupon) {
                    Some((.., of_coupon)) => of_coupon.push(key),
                    None => carried.push((held, keys, vec![key])),
                }
            }
            let mut copied = Vec::new();
            for (held, keys, of_coupon) in carried {
                if still_closed(&mut source, held, keys).await? {
                    copied.push((held, keys, of_coupon));
                } else {
                    moved.extend(of_coupon);
                }
            }
            if !copied.is_empty() {
                let all: Vec<String> = copied.iter().flat_map(|(.., of)| of.clone()).collect();
                self.transfer(&mut source, &all, Transfer::Copy, &auth)
                    .await?;
                await_replicas(&mut target, floor, deadline).await?;
                for (held, keys, of_coupon) in copied {
                    if still_closed(&mut source, held, keys).await? {
                        delete_copied(&mut source, &of_coupon).await?;
                    } else {
                        // Opened since the copy: moved whole, over the stale copy.
                        tracing::warn!(coupon = %held.coupon, "hand-over: the mark went during the copy; moved whole");
                        self.transfer(&mut source, &of_coupon, Transfer::Move, &auth)
                            .await?;
                        await_replicas(&mut target, floor, deadline).await?;
                    }
                }
            }
            if !moved.is_empty() {
                self.transfer(&mut source, &moved, Transfer::Move, &auth)
                    .await?;
                await_replicas(&mut target, floor, deadline).await?;
            }
        }
        set_slot(&mut target, slot, "NODE", &self.target.id).await?;
        set_slot(&mut source, slot, "NODE", &self.target.id).await?;
        Ok(())
    }

    /// `MIGRATE` of `keys` from the source to the target, replacing what is there (a copy
    /// made earlier, or a failed run's).
    async fn transfer(
        &self,
        source: &mut MultiplexedConnection,
        keys: &[String],
        how: Transfer,
        auth: &Option<(Option<String>, String)>,
    ) -> anyhow::Result<()> {
        let mut migrate = redis::cmd("MIGRATE");
        migrate
            .arg(&self.target.host)
            .arg(self.target.port)
            .arg("")
            .arg(0)
            .arg(MIGRATE_TIMEOUT_MS);
        if how == Transfer::Copy {
            migrate.arg("COPY");
        }
        migrate.arg("REPLACE");
        match auth {
            Some((Some(user), password)) => {
                migrate.arg("AUTH2").arg(user).arg(password);
            }
            Some((None, password)) => {
                migrate.arg("AUTH").arg(password);
            }
            None => {}
        }
        // `NOKEY` (every key went since the listing: a settle emptied a pending hash) is a
        // status reply, and nothing to move.
        let () = migrate.arg("KEYS").arg(keys).query_async(source).await?;
        Ok(())
    }
}

/// How [`SlotMovePlan::transfer`] sends keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transfer {
    /// Kept on the source, to be deleted once the target's replicas have them.
    Copy,
    /// Deleted on the source in the same command.
    Move,
}

/// Whether `held`'s coupon is closed on the source by this hand-over's mark, with at least
/// [`LEASE_LEFT`] of its lease to run: then nothing admits there before the delete. A key
/// gone from the source (`ASK`) counts as not closed: the coupon is then moved whole.
async fn still_closed(
    source: &mut MultiplexedConnection,
    held: &RebuildLease,
    keys: &CouponKeys,
) -> anyhow::Result<bool> {
    let looked: Result<(Option<String>, i64, Option<String>), _> = redis::pipe()
        .get(&keys.rebuilding)
        .pttl(&keys.rebuilding)
        .hget(&keys.meta, "epoch")
        .query_async(source)
        .await;
    match looked {
        Ok((token, left, meta)) => Ok(token.as_deref() == Some(held.token())
            && u128::try_from(left).is_ok_and(|left| left >= LEASE_LEFT.as_millis())
            && meta.as_deref() == Some("rebuilding")),
        Err(err) if err.code() == Some("ASK") => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// Deletes the copied `keys` on the source, one by one: a closed coupon's settle may have
/// emptied one since (the key gone), and on a migrating slot a command on several keys,
/// one of them gone, is refused as a whole (`TRYAGAIN`), while one on a gone key is sent
/// to the target (`ASK`): there is nothing left to delete then.
async fn delete_copied(source: &mut MultiplexedConnection, keys: &[String]) -> anyhow::Result<()> {
    for key in keys {
        match redis::cmd("DEL").arg(key).query_async::<i64>(source).await {
            Err(err) if err.code() == Some("ASK") => {}
            deleted => {
                deleted?;
            }
        }
    }
    Ok(())
}

/// REDIS_URL's user and password, which `MIGRATE` passes on to the target.
fn credentials(config: &Config) -> anyhow::Result<Option<(Option<String>, String)>> {
    let info = redis::IntoConnectionInfo::into_connection_info(config.redis.redis_url.as_str())?;
    let settings = info.redis_settings();
    Ok(settings
        .password()
        .map(|password| (settings.username().map(str::to_owned), password.to_owned())))
}

/// Returns once every replica connected to the node, and at least `floor` of them, has
/// acknowledged its replication offset as it was when asked; fails past `deadline`.
async fn await_replicas(
    con: &mut MultiplexedConnection,
    floor: usize,
    deadline: Instant,
) -> anyhow::Result<()> {
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(con)
        .await?;
    let written = field(&info, "master_repl_offset").unwrap_or(0);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(con)
            .await?;
        let offsets: Vec<Option<u64>> = info
            .lines()
            .filter(|line| line.starts_with("slave"))
            .map(|line| {
                line.split(',')
                    .find_map(|part| part.strip_prefix("offset="))
                    .and_then(|offset| offset.parse().ok())
            })
            .collect();
        let acknowledged = offsets
            .iter()
            .filter(|offset| offset.is_some_and(|offset| offset >= written))
            .count();
        if acknowledged == offsets.len() && acknowledged >= floor {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{acknowledged} of the target's {} replicas (at least {floor} required) acknowledged the keys in time",
                offsets.len()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

fn field(info: &str, name: &str) -> Option<u64> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|value| value.trim().parse().ok())
}

async fn key_slot(con: &mut MultiplexedConnection, key: &str) -> anyhow::Result<u16> {
    Ok(redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(con)
        .await?)
}

async fn set_slot(
    con: &mut MultiplexedConnection,
    slot: u16,
    state: &str,
    id: &str,
) -> anyhow::Result<()> {
    let () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg(state)
        .arg(id)
        .query_async(con)
        .await?;
    Ok(())
}

/// A connection to the one node at `host:port`, with REDIS_URL's credentials and TLS.
async fn node(config: &Config, host: &str, port: u16) -> anyhow::Result<MultiplexedConnection> {
    let timeouts = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(NODE_TIMEOUT))
        .set_response_timeout(Some(NODE_TIMEOUT));
    Ok(config
        .redis
        .node_client(host, port)?
        .get_multiplexed_async_connection_with_config(&timeouts)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_are_read_with_their_roles_and_slots() {
        let listing = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,host-a slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922 [5463->-e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca]
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 12000
";
        let nodes = parse_nodes(listing).unwrap();
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0].address(), "127.0.0.1:30004");
        assert_eq!(
            nodes[0].replicates.as_deref(),
            Some("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca")
        );
        assert!(nodes[1].serves(5463) && !nodes[1].serves(10923));
        assert!(nodes[2].myself && nodes[2].serves(12000) && !nodes[2].serves(12001));
        assert!(!nodes[0].myself && nodes[0].slots.is_empty());
    }

    #[test]
    fn a_listing_it_cannot_read_is_an_error() {
        assert!(parse_nodes("abc 127.0.0.1 master").is_err());
        assert!(parse_nodes("a 127.0.0.1:x@1 master - 0 0 1 connected").is_err());
    }
}
