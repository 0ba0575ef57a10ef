//! The Redis queue mode: the admission script appended each event to the coupon's stream
//! in the same atomic step as taking its slot, so a SUCCESS is queued when it is decided.

use std::collections::HashMap;

use coupon_core::domain::CouponId;
use coupon_core::event::IssueEvent;
use coupon_core::redis::keys::CouponKeys;
use coupon_core::redis::ledger::LedgerAt;
use redis::AsyncCommands;
use redis::aio::ConnectionLike;
use redis::streams::StreamRangeReply;

use super::Backlog;
use crate::error::ApiError;

/// Stream entries read per XRANGE, so one command never blocks Redis for long.
const PAGE: usize = 10_000;

#[derive(Clone)]
pub struct StreamDelivery {
    key_prefix: String,
    /// The workers' consumer group, whose backlog the metrics show.
    worker_group: String,
}

impl StreamDelivery {
    pub fn new(key_prefix: impl Into<String>, worker_group: impl Into<String>) -> Self {
        Self {
            key_prefix: key_prefix.into(),
            worker_group: worker_group.into(),
        }
    }

    /// Over `coupons`' streams: entries the workers' group has not read, and entries read
    /// but not acknowledged (`XINFO GROUPS`' lag and pending; a stream the group has not
    /// met yet counts whole as unread).
    pub async fn backlog<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        coupons: &[CouponId],
    ) -> Result<Backlog, ApiError> {
        let (mut unread, mut pending) = (0, 0);
        for &coupon in coupons {
            let stream = CouponKeys::new(&self.key_prefix, coupon).stream;
            let length: i64 = con.xlen(&stream).await?;
            if length == 0 {
                continue;
            }
            let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&stream)
                .query_async(con)
                .await?;
            let ours = groups.iter().find(|group| {
                group
                    .get("name")
                    .and_then(|name| redis::from_redis_value_ref::<String>(name).ok())
                    .is_some_and(|name| name == self.worker_group)
            });
            let field = |group: &std::collections::HashMap<String, redis::Value>, name: &str| {
                group
                    .get(name)
                    .and_then(|value| redis::from_redis_value_ref::<i64>(value).ok())
            };
            match ours {
                Some(group) => {
                    // Redis reports no lag when it cannot tell (entries deleted before the
                    // group read them): the whole stream is then the upper bound.
                    unread += field(group, "lag").unwrap_or(length);
                    pending += field(group, "pending").unwrap_or_default();
                }
                None => unread += length,
            }
        }
        Ok(Backlog::Streams { unread, pending })
    }

    /// Users whose events for this coupon are still on its stream. The workers acknowledge an entry
    /// only after its row committed, and only acknowledged entries are trimmed, so these
    /// (read first) plus PostgreSQL's holders (read next) are everyone admitted.
    pub async fn unsettled_users<C: ConnectionLike + Send + Sync>(
        &self,
        con: &mut C,
        at: &LedgerAt,
        coupon: CouponId,
    ) -> Result<Vec<i64>, ApiError> {
        let stream = &at.keys().stream;
        let mut users = Vec::new();
        let mut start = "-".to_owned();
        loop {
            let page: StreamRangeReply = con.xrange_count(stream, &start, "+", PAGE).await?;
            let Some(last) = page.ids.last() else { break };
            // The next page starts just after this one's last id ("(" = exclusive).
            start = format!("({}", last.id);
            let full = page.ids.len() == PAGE;
            // Only this coupon's own events are winners of it: a stream can also hold an
            // event for another coupon or garbage (poison the workers set aside), whose
            // users counted as holders would keep slots with no event behind them.
            users.extend(page.ids.iter().filter_map(|entry| {
                let fields: HashMap<String, String> = entry
                    .map
                    .iter()
                    .filter_map(|(name, value)| {
                        redis::from_redis_value_ref::<String>(value)
                            .ok()
                            .map(|value| (name.clone(), value))
                    })
                    .collect();
                IssueEvent::from_stream_fields(&fields)
                    .ok()
                    .filter(|event| event.coupon_id == coupon)
                    .map(|event| event.user_id.get())
            }));
            if !full {
                break;
            }
        }
        Ok(users)
    }
}
