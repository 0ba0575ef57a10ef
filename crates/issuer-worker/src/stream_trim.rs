//! Trimming a coupon's stream: only entries every consumer is done with may go.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{RedisError, Script};

static TRIM: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/trim_stream.lua")));

/// Removes the entries the group is done with: everything before its oldest pending entry,
/// or with none pending, before the last delivered one. Bounds and trim are one script:
/// read as separate commands, another worker's read in between moved the last delivered
/// entry past entries it had just made pending, and the trim deleted them.
pub async fn trim_acknowledged<C: ConnectionLike + Send + Sync>(
    con: &mut C,
    stream: &str,
    group: &str,
) -> Result<(), RedisError> {
    let _: i64 = TRIM.key(stream).arg(group).invoke_async(con).await?;
    Ok(())
}
