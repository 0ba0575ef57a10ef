//! The pending (write-ahead) ledger of Kafka mode: every admitted slot whose event the
//! broker has not acknowledged yet, with who owns its publish.
//!
//! Invariant: a slot is given back only by the actor that owns its entry, and only when
//! that actor knows its event never reached the log. Ownership changes hands atomically
//! (`scripts/ledger.lua`, on Redis's clock), and every transition first compares the entry
//! it expects, so a report that arrives after someone else took the entry does nothing.
//!
//! ```text
//!   admission ──► InFlight ──ack──► (gone)        NotPersisted: (gone), slot given back
//!                    │  PossiblyPersisted ──► Doubt ◄── a claimer's publish failed
//!                    │ window passed                │ claim (at once)
//!                    ▼                              ▼
//!                 Claimed ◄──── window passed ─── Claimed ──ack──► (gone)
//! ```

use std::time::Duration;

use chrono::DateTime;
use redis::aio::ConnectionLike;
use redis::{AsyncCommands, ErrorKind, RedisError, Script};

use crate::domain::{CouponId, UserId};
use crate::event::{EVENT_VERSION, IssueEvent};
use crate::redis::keys::CouponKeys;

/// Who owns a pending slot's publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingState {
    /// The admitting request is publishing it (or its API died doing so).
    InFlight,
    /// A publish ended without knowing whether the broker has it; nobody owns it.
    Doubt,
    /// A retry or a reconciler took it to publish it again.
    Claimed,
    /// A bucketed coupon's slot being given back: nobody publishes it
    /// (`scripts/ledger.lua`).
    Releasing,
}

impl PendingState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InFlight => "inflight",
            Self::Doubt => "doubt",
            Self::Claimed => "claimed",
            Self::Releasing => "releasing",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "inflight" => Some(Self::InFlight),
            "doubt" => Some(Self::Doubt),
            "claimed" => Some(Self::Claimed),
            "releasing" => Some(Self::Releasing),
            _ => None,
        }
    }
}

/// One pending slot. Its text form, `"<eventId> <issuedMs> <state> <sinceMs> <attempt>"`,
/// is what `admission.lua` writes and `ledger.lua` reads; this is the Rust side of that one
/// codec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEntry {
    pub event: IssueEvent,
    pub state: PendingState,
    /// When the state began, on Redis's clock.
    pub since_ms: i64,
    /// How many times the entry was claimed for a republish.
    pub attempt: u32,
}

impl PendingEntry {
    /// The entry the admission script writes beside a new slot.
    pub fn admitted(event: IssueEvent) -> Self {
        let since_ms = event.issued_at.timestamp_millis();
        Self {
            event,
            state: PendingState::InFlight,
            since_ms,
            attempt: 0,
        }
    }

    pub fn encode(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.event.event_id,
            self.event.issued_at.timestamp_millis(),
            self.state.as_str(),
            self.since_ms,
            self.attempt
        )
    }

    pub fn decode(coupon: CouponId, user: UserId, text: &str) -> Result<Self, RedisError> {
        let unreadable = || {
            RedisError::from((
                ErrorKind::UnexpectedReturnType,
                "unreadable pending entry",
                text.to_owned(),
            ))
        };
        let mut parts = text.split(' ');
        let mut next = || parts.next().ok_or_else(unreadable);
        let event_id = next()?.parse().map_err(|_| unreadable())?;
        let issued_at = next()?
            .parse()
            .ok()
            .and_then(DateTime::from_timestamp_millis)
            .ok_or_else(unreadable)?;
        let state = PendingState::parse(next()?).ok_or_else(unreadable)?;
        let since_ms = next()?.parse().map_err(|_| unreadable())?;
        let attempt = next()?.parse().map_err(|_| unreadable())?;
        Ok(Self {
            event: IssueEvent {
                v: EVENT_VERSION,
                event_id,
                coupon_id: coupon,
                user_id: user,
                issued_at,
            },
            state,
            since_ms,
            attempt,
        })
    }
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller owns the publish now; this is the entry as it stands.
    Claimed(PendingEntry),
    /// Someone is publishing it within their window: the outcome is not known yet.
    Busy(PendingEntry),
    /// Nothing is pending for this user (settled or given back meanwhile).
    Absent,
}

/// Where one coupon's pending entries are kept, and so what giving a slot back there does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LedgerAt {
    /// A coupon's own state (a coupon of one bucket): a release frees the slot at once.
    Coupon(CouponKeys),
    /// One bucket of a bucketed coupon (`crate::buckets`): a release flags the slot, and a
    /// mover frees it once every bucket's sold-out mark is cleared
    /// (`crate::buckets::mover::Mover::reopen_released`); freed at once, a bucket marked
    /// sold out would answer SOLD_OUT while the unit is for sale.
    Bucket(CouponKeys),
}

impl LedgerAt {
    pub fn keys(&self) -> &CouponKeys {
        match self {
            Self::Coupon(keys) | Self::Bucket(keys) => keys,
        }
    }
}

#[derive(Clone)]
pub struct Ledger {
    key_prefix: String,
    script: Script,
    settle: Script,
    /// How long a slot given back to a sold-out coupon is held before it is sold again
    /// (`scripts/stock_hold.lua`).
    reopen_hold: Duration,
}

impl Ledger {
    pub fn new(key_prefix: impl Into<String>) -> Self {
        Self {
            key_prefix: key_prefix.into(),
            script: Script::new(concat!(
                include_str!("scripts/stock_hold.lua"),
                include_str!("scripts/ledger.lua")
            )),
            settle: Script::new(include_str!("scripts/settle.lua")),
            reopen_hold: Duration::ZERO,
        }
    }

    /// The same, holding a slot given back for `hold` before it is sold again: the API's
    /// finished gates' hold (`crate::redis::admission::AdmissionScripts::with_reopen_hold`).
    pub fn with_reopen_hold(self, hold: Duration) -> Self {
        Self {
            reopen_hold: hold,
            ..self
        }
    }

    /// A coupon of one bucket's entries.
    pub fn of_coupon(&self, coupon: CouponId) -> LedgerAt {
        LedgerAt::Coupon(CouponKeys::new(&self.key_prefix, coupon))
    }

    async fn run<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        at: &LedgerAt,
        user: UserId,
        op: &str,
        arg: &str,
    ) -> Result<(i64, String), RedisError> {
        let keys = at.keys();
        let mut invocation = self.script.key(&keys.issued);
        invocation.key(&keys.pending).key(&keys.meta);
        if let LedgerAt::Bucket(keys) = at {
            invocation.key(&keys.releasing);
        }
        invocation
            .arg(user.get())
            .arg(op)
            .arg(arg)
            .arg(self.reopen_hold.as_millis() as u64)
            .invoke_async(con)
            .await
    }

    /// Takes the user's entry to publish it again: at once if it is in doubt, else only
    /// once its owner has had a whole `publish_window` (and so has died or given up).
    pub async fn claim<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        at: &LedgerAt,
        coupon: CouponId,
        user: UserId,
        publish_window: Duration,
    ) -> Result<Claim, RedisError> {
        let window = publish_window.as_millis().to_string();
        let (code, text) = self.run(con, at, user, "claim", &window).await?;
        match code {
            0 => Ok(Claim::Absent),
            1 => PendingEntry::decode(coupon, user, &text).map(Claim::Claimed),
            _ => PendingEntry::decode(coupon, user, &text).map(Claim::Busy),
        }
    }

    /// The owner's publish certainly never reached the log: the entry goes, and the slot
    /// is given back as `at` says. False if the entry is no longer `entry` (someone else
    /// owns its fate now).
    pub async fn release<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        at: &LedgerAt,
        entry: &PendingEntry,
    ) -> Result<bool, RedisError> {
        self.if_unchanged(con, at, entry, "release").await
    }

    /// The owner's publish ended in doubt: the entry is handed back for anyone to claim.
    /// False if it is no longer `entry`.
    pub async fn mark_in_doubt<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        at: &LedgerAt,
        entry: &PendingEntry,
    ) -> Result<bool, RedisError> {
        self.if_unchanged(con, at, entry, "doubt").await
    }

    /// Runs `op` on the entry only if it still reads exactly `entry`.
    async fn if_unchanged<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        at: &LedgerAt,
        entry: &PendingEntry,
        op: &str,
    ) -> Result<bool, RedisError> {
        let user = entry.event.user_id;
        let (code, _) = self.run(con, at, user, op, &entry.encode()).await?;
        Ok(code == 1)
    }

    /// These events, each group kept at its place, are acknowledged, whoever published
    /// them: their entries go, in one script run. On a Redis Cluster the places must share a
    /// slot (one place: a coupon, or a bucket). Returns how many were still pending.
    pub async fn settle<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        places: &[(&LedgerAt, Vec<&IssueEvent>)],
    ) -> Result<usize, RedisError> {
        let mut invocation = self.settle.prepare_invoke();
        for (at, events) in places {
            invocation.key(&at.keys().pending).arg(events.len());
        }
        for event in places.iter().flat_map(|(_, events)| events) {
            invocation
                .arg(event.user_id.get())
                .arg(event.event_id.to_string());
        }
        invocation.invoke_async(con).await
    }

    /// Every pending entry of `coupon` kept `at`.
    pub async fn entries<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        at: &LedgerAt,
        coupon: CouponId,
    ) -> Result<Vec<PendingEntry>, RedisError> {
        let entries: Vec<(i64, String)> = con.hgetall(&at.keys().pending).await?;
        entries
            .into_iter()
            .filter_map(|(user, text)| UserId::new(user).ok().map(|user| (user, text)))
            .map(|(user, text)| PendingEntry::decode(coupon, user, &text))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_reads_back_as_written_in_every_state() {
        let event = IssueEvent::new(
            CouponId::new(3).unwrap(),
            UserId::new(7).unwrap(),
            DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
        );
        let admitted = PendingEntry::admitted(event.clone());
        assert_eq!(
            admitted.encode(),
            format!("{} 1700000000123 inflight 1700000000123 0", event.event_id)
        );
        for state in [
            PendingState::InFlight,
            PendingState::Doubt,
            PendingState::Claimed,
            PendingState::Releasing,
        ] {
            let entry = PendingEntry {
                state,
                since_ms: 1_700_000_009_000,
                attempt: 4,
                ..admitted.clone()
            };
            let back = PendingEntry::decode(event.coupon_id, event.user_id, &entry.encode());
            assert_eq!(back.ok(), Some(entry));
        }
    }

    #[test]
    fn a_malformed_entry_is_an_error_not_a_guess() {
        let (coupon, user) = (CouponId::new(3).unwrap(), UserId::new(7).unwrap());
        for text in [
            "",
            "not-a-uuid 1 inflight 1 0",
            "5f0c3e0e-8d6e-4e0e-9b1e-1c1f6f0d1a11 1 inflight",
            "5f0c3e0e-8d6e-4e0e-9b1e-1c1f6f0d1a11 1 lost 1 0",
        ] {
            assert!(PendingEntry::decode(coupon, user, text).is_err(), "{text}");
        }
    }
}
