//! Trimming a coupon's stream: only entries every consumer is done with may go.

use redis::aio::ConnectionLike;
use redis::{AsyncCommands, RedisError};

/// Removes the entries the group is done with: everything before its oldest pending entry,
/// or with none pending, before the last delivered one.
pub async fn trim_acknowledged<C: ConnectionLike + Send + Sync>(
    con: &mut C,
    stream: &str,
    group: &str,
) -> Result<(), RedisError> {
    let pending: redis::streams::StreamPendingReply = con.xpending(stream, group).await?;
    let keep_from = match pending {
        redis::streams::StreamPendingReply::Data(data) => data.start_id,
        _ => {
            let groups: redis::streams::StreamInfoGroupsReply = con.xinfo_groups(stream).await?;
            let Some(group) = groups.groups.into_iter().find(|g| g.name == group) else {
                return Ok(());
            };
            // Keeps the last delivered entry itself: it marks where the group stands.
            group.last_delivered_id
        }
    };
    let _: i64 = redis::cmd("XTRIM")
        .arg(stream)
        .arg("MINID")
        .arg(keep_from)
        .query_async(con)
        .await?;
    Ok(())
}
