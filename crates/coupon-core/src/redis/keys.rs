//! Where a coupon lives in Redis.
//!
//! Every key of one coupon carries the coupon id as its hash tag (`coupon:{42}:…`), so
//! they sit on one Redis Cluster slot and one script may touch them all atomically.

use crate::domain::CouponId;
use crate::domain::QueueKind;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CouponKeys {
    /// Hash: `quantity`, and `starts_at` / `ends_at` in epoch milliseconds when set.
    pub meta: String,
    /// Set of admitted user ids: its size is the number of slots taken.
    pub issued: String,
    /// Hash user id → pending entry (`crate::redis::ledger::PendingEntry`, Kafka mode): admitted
    /// users whose event the broker has not acknowledged yet. Written by the admission
    /// script with the slot, removed on acknowledgement or release; what is left is
    /// republished.
    pub pending: String,
    /// Present while one process rebuilds this coupon's state from PostgreSQL.
    pub rebuilding: String,
    /// Stream of the coupon's issue events in the Redis queue mode, appended by the
    /// admission script itself; entries are trimmed once the worker group acknowledged them.
    pub stream: String,
    /// A bucketed coupon's bucket (`crate::buckets`): the transfer out of it in flight, if
    /// any (`scripts/bucket.lua`).
    pub outgoing: String,
    /// The same: the ids of the transfers credited to it, so that a credit repeated by a
    /// mover that took another's transfer over adds nothing.
    pub credited: String,
    /// The same: the users whose slot is being given back (`scripts/ledger.lua`), until a
    /// mover puts their units back for sale.
    pub releasing: String,
    /// On a Redis Cluster, the write each replica confirmation of this coupon's makes just
    /// before its WAIT, on the coupon's own shard (`replication_fence` on one node).
    pub fence: String,
}

impl CouponKeys {
    /// `prefix` lets several environments (or test runs) share one Redis without
    /// sharing coupons; it is prepended verbatim and may be empty.
    pub fn new(prefix: &str, coupon: CouponId) -> Self {
        Self::tagged(prefix, &coupon.to_string())
    }

    /// The keys of one bucket of a bucketed coupon, under the tag chosen for it at the
    /// coupon's creation (`crate::buckets::choose_tags`): bucket 0's tag is the coupon id,
    /// whose keys are [`CouponKeys::new`]'s.
    pub fn of_bucket(prefix: &str, tag: &str) -> Self {
        Self::tagged(prefix, tag)
    }

    /// Glob patterns (for KEYS or SCAN's MATCH) of these keys of every coupon under
    /// `prefix`: for tools and checks that look over the keyspace, never the hot path.
    pub fn of_every_coupon(prefix: &str) -> Self {
        Self::tagged(prefix, "*")
    }

    fn tagged(prefix: &str, tag: &str) -> Self {
        // The common part formatted once, each key its suffix appended: built for every
        // admission, nine formats were a visible part of the issue path's profile.
        let base = format!("{prefix}coupon:{{{tag}}}:");
        let key = |suffix: &str| [base.as_str(), suffix].concat();
        Self {
            meta: key("meta"),
            issued: key("issued"),
            pending: key("pending"),
            rebuilding: key("rebuilding"),
            stream: key("issues"),
            fence: key("fence"),
            outgoing: key("outgoing"),
            credited: key("credited"),
            releasing: key("releasing"),
        }
    }

    /// The keys admission and the finished check take, in their order: meta, issued set,
    /// pending hash, and in the Redis queue mode the stream.
    pub fn state(&self, queue: QueueKind) -> Vec<&str> {
        let mut keys = vec![self.meta.as_str(), &self.issued, &self.pending];
        if queue == QueueKind::Redis {
            keys.push(&self.stream);
        }
        keys
    }

    /// A bucket's rebuild's holders, staged under its lease token until its restore moves
    /// them over the issued set (`crate::redis::buckets::BucketSteps::restore`).
    pub fn staged_holders(&self, token: &str, part: &str) -> String {
        format!("{}:staged:{token}:{part}", self.issued)
    }

    /// The keys a step of `scripts/bucket.lua` takes, in its order.
    pub fn bucket_steps(&self) -> [&str; 6] {
        [
            &self.meta,
            &self.issued,
            &self.outgoing,
            &self.credited,
            &self.releasing,
            &self.pending,
        ]
    }

    /// Hash coupon id → registration generation: the coupons that need work, so the
    /// reconciler and the stream workers find them without scanning the keyspace
    /// (`crate::redis::registry`). Its keys share the `{coupons}` hash tag (another cluster slot
    /// than any coupon's).
    pub fn active_registry(prefix: &str) -> String {
        format!("{prefix}{{coupons}}:registry")
    }

    /// Counter the registry's generations are drawn from.
    pub fn registry_generation(prefix: &str) -> String {
        format!("{prefix}{{coupons}}:generation")
    }

    /// The epoch the registry was last found complete under (`crate::redis::registry`).
    pub fn registry_checked(prefix: &str) -> String {
        format!("{prefix}{{coupons}}:checked")
    }

    /// Counter of a user's issue requests in rate-limit window number `window` (unix ms
    /// divided by the window; `issuer-api`'s `rate_limit`). Each counter is its own hash
    /// tag: on a cluster, counters spread over every slot as users do, and no shard sees
    /// every request.
    pub fn rate_of_user(prefix: &str, user: impl std::fmt::Display, window: u64) -> String {
        format!("{prefix}rate:{{user:{user}}}:{window}")
    }

    /// The same for a client address; `unknown` when none is known.
    pub fn rate_of_address(
        prefix: &str,
        address: Option<impl std::fmt::Display>,
        window: u64,
    ) -> String {
        match address {
            Some(address) => format!("{prefix}rate:{{address:{address}}}:{window}"),
            None => format!("{prefix}rate:{{address:unknown}}:{window}"),
        }
    }

    /// Counter each replica confirmation writes just before its WAIT: a replica that has
    /// this write has every write the primary applied before it (`issuer-api`'s
    /// `replication`).
    pub fn replication_fence(prefix: &str) -> String {
        format!("{prefix}replication:fence")
    }

    /// Stream with one entry per coupon newly added to the registry: in the Redis queue
    /// mode the workers block on it beside the coupon streams, so a new coupon's first
    /// events are read at once rather than after the next registry refresh.
    pub fn registry_stream(prefix: &str) -> String {
        format!("{prefix}coupons:registered")
    }
}

#[cfg(test)]
mod tests {
    use redis::cluster_routing::Slot;

    use super::*;

    #[test]
    fn keys_of_one_coupon_share_its_hash_tag() {
        let keys = CouponKeys::new("", CouponId::new(42).unwrap());
        assert_eq!(keys.meta, "coupon:{42}:meta");
        assert_eq!(keys.issued, "coupon:{42}:issued");
        assert_eq!(keys.pending, "coupon:{42}:pending");
        assert_eq!(keys.stream, "coupon:{42}:issues");
        assert_eq!(keys.rebuilding, "coupon:{42}:rebuilding");
        assert_eq!(keys.fence, "coupon:{42}:fence");
        assert_eq!(keys.outgoing, "coupon:{42}:outgoing");
        assert_eq!(keys.credited, "coupon:{42}:credited");
        assert_eq!(keys.releasing, "coupon:{42}:releasing");
        let prefixed = CouponKeys::new("test-1:", CouponId::new(7).unwrap());
        assert_eq!(prefixed.issued, "test-1:coupon:{7}:issued");
    }

    #[test]
    fn rate_counters_are_each_their_own_slot_and_never_a_coupons() {
        let user = CouponKeys::rate_of_user("", 42, 7);
        let address = CouponKeys::rate_of_address("", Some("10.0.0.1"), 7);
        assert_eq!(user, "rate:{user:42}:7");
        assert_eq!(address, "rate:{address:10.0.0.1}:7");
        // User 42's counter must not share coupon 42's slot (tag "42").
        let coupon = CouponKeys::new("", CouponId::new(42).unwrap());
        assert_ne!(Slot::for_key(&user), Slot::for_key(&coupon.meta));
        assert_eq!(Slot::for_key(&coupon.meta), Slot::for_key(&coupon.issued));
    }
}
