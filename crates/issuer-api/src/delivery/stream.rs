//! The Redis queue mode: the admission script appended each event to the coupon's stream
//! in the same atomic step as taking its slot, so a SUCCESS is queued when it is decided.

use coupon_core::domain::CouponId;
use coupon_core::redis_keys::CouponKeys;
use redis::AsyncCommands;
use redis::aio::ConnectionLike;
use redis::streams::StreamRangeReply;

use crate::error::ApiError;

/// Stream entries read per XRANGE, so one command never blocks Redis for long.
const PAGE: usize = 10_000;

#[derive(Clone)]
pub struct StreamDelivery {
    key_prefix: String,
}

impl StreamDelivery {
    pub fn new(key_prefix: impl Into<String>) -> Self {
        Self {
            key_prefix: key_prefix.into(),
        }
    }

    /// Users whose events are still on the coupon's stream. The workers acknowledge an entry
    /// only after its row committed, and only acknowledged entries are trimmed, so these
    /// (read first) plus PostgreSQL's holders (read next) are everyone admitted.
    pub async fn unsettled_users<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        coupon: CouponId,
    ) -> Result<Vec<i64>, ApiError> {
        let stream = CouponKeys::new(&self.key_prefix, coupon).stream;
        let mut users = Vec::new();
        let mut start = "-".to_owned();
        loop {
            let page: StreamRangeReply = con.xrange_count(&stream, &start, "+", PAGE).await?;
            let Some(last) = page.ids.last() else { break };
            // The next page starts just after this one's last id ("(" = exclusive).
            start = format!("({}", last.id);
            let full = page.ids.len() == PAGE;
            users.extend(
                page.ids
                    .iter()
                    .filter_map(|entry| entry.get::<i64>("userId")),
            );
            if !full {
                break;
            }
        }
        Ok(users)
    }
}
