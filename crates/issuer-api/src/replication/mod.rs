//! Confirming writes on Redis replicas (`REDIS_MIN_REPLICAS`, or every replica Sentinel
//! knows) before they count: on one node's numbered socket (`socket`), or on each coupon's
//! own shard of a Redis Cluster (`shards`).

mod shards;
mod socket;

use coupon_core::redis::epoch::Stamp;
use coupon_core::redis::keys::CouponKeys;

pub use shards::ShardReplication;
pub use socket::Replication;

use crate::error::ApiError;

/// Where the admissions' replicas confirm.
#[derive(Clone)]
pub enum Confirmation {
    /// One node (a URL, or the primary Sentinel names): on the socket the write went out on.
    Socket(Replication),
    /// A Redis Cluster: on the shard that holds the coupon (or the bucket) admitted in.
    Shards(ShardReplication),
}

/// Where an admission's write went (or the writes its refusal read), for its confirmation.
pub enum Written {
    /// On the replication socket of this number.
    Socket(u64),
    /// On the instance `stamp` names (the stamp the admission passed and was decided
    /// under), in the state at `keys`: a coupon's, or one of its buckets'.
    Shard {
        keys: Box<CouponKeys>,
        stamp: Option<Stamp>,
    },
}

impl Confirmation {
    /// Returns once the required replicas have what was `written`; 503 if they do not
    /// confirm in time, or if that is unknown.
    pub async fn confirm(&self, written: Written) -> Result<(), ApiError> {
        match (self, written) {
            (Self::Socket(replication), Written::Socket(generation)) => {
                replication.confirm(generation).await
            }
            (Self::Shards(replication), Written::Shard { keys, stamp }) => {
                replication.confirm(*keys, stamp).await
            }
            _ => Err(ApiError::Internal(
                "a write meant for one kind of replica confirmation reached the other".into(),
            )),
        }
    }

    /// The socket kind's handle, for what only one node confirms (Kafka mode's claims: on a
    /// cluster, Kafka mode runs without confirmations).
    pub fn socket(&self) -> Option<&Replication> {
        match self {
            Self::Socket(replication) => Some(replication),
            Self::Shards(_) => None,
        }
    }
}
