//! The queue's upkeep between reads: entries a dead consumer held are claimed, silent
//! consumers that hold nothing leave the group, acknowledged entries are trimmed, and
//! finished coupons retire.

use std::time::Duration;

use coupon_core::domain::CouponId;
use coupon_core::redis::keys::CouponKeys;
use redis::streams::StreamAutoClaimReply;
use redis::{AsyncCommands, RedisError};
use tokio::time::Instant;

use super::confirm::Read;
use super::{EntryIds, MAINTENANCE_INTERVAL, StreamQueue, take_entry};
use crate::queue::Batch;
use crate::stream_trim;

impl StreamQueue {
    /// Claims entries a dead (or stuck) consumer held for longer than `claim_idle`, removes
    /// consumers that are silent and hold nothing, trims what the group acknowledged, and
    /// retires coupons that are finished.
    pub(super) async fn maintain(&self, batch: &mut Batch<EntryIds>, size: usize) {
        let registrations = {
            let mut state = self.state();
            if Instant::now() < state.next_maintenance {
                return;
            }
            state.next_maintenance = Instant::now() + MAINTENANCE_INTERVAL;
            state.registrations.clone()
        };
        let mut retired = false;
        for registration in registrations {
            let stream = CouponKeys::new(&self.key_prefix, registration.coupon).stream;
            let stream = stream.as_str();
            if batch.len < size
                && let Err(err) = self
                    .claim(stream, registration.coupon, batch, size - batch.len)
                    .await
            {
                tracing::warn!(%stream, error = %err, "claiming idle entries failed");
            }
            if let Err(err) = self.forget_silent_consumers(stream).await {
                tracing::warn!(%stream, error = %err, "removing silent consumers failed");
            }
            let mut commands = self.commands();
            if let Err(err) =
                stream_trim::trim_acknowledged(&mut commands, stream, &self.group).await
            {
                tracing::warn!(%stream, error = %err, "trimming acknowledged entries failed");
            }
            // Entries in this worker's batch are pending in the group, so a coupon is never
            // retired with any of them unpersisted.
            match self
                .registry
                .retire_if_finished(&mut commands, registration, &self.group)
                .await
            {
                Ok(gone) => retired |= gone,
                Err(err) => tracing::warn!(%stream, error = %err, "retiring the coupon failed"),
            }
        }
        if retired {
            self.refresh_streams();
        }
    }

    async fn claim(
        &self,
        stream: &str,
        coupon: CouponId,
        batch: &mut Batch<EntryIds>,
        count: usize,
    ) -> Result<(), RedisError> {
        let mut autoclaim = redis::cmd("XAUTOCLAIM");
        autoclaim
            .arg(stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(self.claim_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(count);
        let reply = match self
            .read::<StreamAutoClaimReply>(&self.commands(), autoclaim, Some(coupon))
            .await?
        {
            Read::Confirmed(reply) => {
                if !reply.claimed.is_empty() {
                    tracing::info!(%stream, entries = reply.claimed.len(), "claimed entries a silent consumer held");
                }
                for entry in &reply.claimed {
                    take_entry(batch, stream, entry);
                }
                reply
            }
            Read::Unconfirmed {
                reply,
                confirmed,
                required,
            } => {
                if !reply.claimed.is_empty() {
                    tracing::warn!(
                        %stream, entries = reply.claimed.len(), confirmed, required,
                        "claimed entries not confirmed by the replicas: left pending, to be claimed again"
                    );
                }
                reply
            }
        };
        if !reply.deleted_ids.is_empty() {
            // Pending but gone from the stream: nothing left to persist.
            let _: i64 = self
                .commands()
                .xack(stream, &self.group, &reply.deleted_ids)
                .await?;
        }
        Ok(())
    }

    /// A consumer with nothing pending loses nothing by being removed, and a live one is
    /// recreated by its next read; one silent for `claim_idle` is a past worker.
    async fn forget_silent_consumers(&self, stream: &str) -> Result<(), RedisError> {
        let mut con = self.commands();
        let info: redis::streams::StreamInfoConsumersReply =
            con.xinfo_consumers(stream, &self.group).await?;
        let silent = info.consumers.into_iter().filter(|c| {
            c.name != self.consumer
                && c.pending == 0
                && c.idle as u128 > self.claim_idle.as_millis()
        });
        for consumer in silent {
            if self.forget(stream, &consumer.name, self.claim_idle).await? {
                tracing::debug!(%stream, consumer = %consumer.name, "removed a silent consumer");
            }
        }
        Ok(())
    }

    /// Removes `consumer` if it still holds nothing and has been silent for `idle`
    /// (checked atomically by the script).
    pub(super) async fn forget(
        &self,
        stream: &str,
        consumer: &str,
        idle: Duration,
    ) -> Result<bool, RedisError> {
        let removed: i64 = self
            .forget_consumer
            .key(stream)
            .arg(&self.group)
            .arg(consumer)
            .arg(idle.as_millis() as u64)
            .invoke_async(&mut self.commands())
            .await?;
        Ok(removed == 1)
    }
}
