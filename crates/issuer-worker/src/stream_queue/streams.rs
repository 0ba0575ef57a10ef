//! Which streams the reader covers: the registry stream and every registered coupon's,
//! each with the group created; a retired coupon's stream leaves this worker.

use std::time::Duration;

use coupon_core::redis::keys::CouponKeys;
use redis::{AsyncCommands, RedisError};
use tokio::time::Instant;

use super::{READ_BLOCK, StreamQueue};

impl StreamQueue {
    /// The registry stream and every active coupon's stream, each with the group created;
    /// the registry itself is read again only when due (see `State`).
    pub(super) async fn streams(&self) -> Result<Vec<String>, RedisError> {
        {
            let state = self.state();
            if Instant::now() < state.refresh_streams_at {
                return Ok(state.streams.clone());
            }
        }
        let mut con = self.commands();
        let registrations = self.registry.members(&mut con).await?;
        let mut streams = vec![self.registry_stream.clone()];
        streams.extend(
            registrations
                .iter()
                .map(|r| CouponKeys::new(&self.key_prefix, r.coupon).stream),
        );
        for stream in &streams {
            if self.state().ready.contains(stream) {
                continue;
            }
            // From the start: entries appended before any worker existed are winners too.
            let created: Result<(), RedisError> =
                con.xgroup_create_mkstream(stream, &self.group, "0").await;
            match created {
                Ok(()) => {}
                Err(err) if err.code() == Some("BUSYGROUP") => {}
                Err(err) => return Err(err),
            }
            self.state().ready.insert(stream.clone());
        }
        // A retired coupon's stream (everything acknowledged) leaves this worker: its name
        // leaves the group, and the stream its memory.
        let retired: Vec<String> = self
            .state()
            .ready
            .iter()
            .filter(|stream| !streams.contains(stream))
            .cloned()
            .collect();
        for stream in &retired {
            if let Err(err) = self.forget(stream, &self.consumer, Duration::ZERO).await {
                tracing::debug!(%stream, error = %err, "could not leave a retired coupon's group");
            }
        }
        let mut state = self.state();
        state.ready.retain(|stream| !retired.contains(stream));
        state.streams = streams.clone();
        state.registrations = registrations;
        state.refresh_streams_at = Instant::now() + READ_BLOCK;
        Ok(streams)
    }

    /// The next read lists the streams from the registry again.
    pub(super) fn refresh_streams(&self) {
        self.state().refresh_streams_at = Instant::now();
    }
}
