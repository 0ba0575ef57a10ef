//! A trim racing a read: a trim must never remove an entry that is pending or
//! not yet delivered, whatever another worker does while it runs. The other worker's read is
//! forced at the exact point: right after the trim's first command returns, before its next
//! one is sent, through a connection that wraps the real one.

use issuer_worker::stream_trim::trim_acknowledged;
use redis::aio::MultiplexedConnection;
use redis::{Cmd, Value};
use testkit::intercept::{At, Intercepted};

const GROUP: &str = "workers";

/// Another worker reads the whole stream: its entries become pending under that worker.
async fn other_worker_reads(
    mut other: MultiplexedConnection,
    stream: String,
) -> redis::RedisResult<()> {
    let _: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("other-worker")
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut other)
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_read_during_the_trim_cannot_get_its_entries_trimmed() {
    let client = redis::Client::open(
        std::env::var("REDIS_URL")
            .unwrap_or_else(|_| coupon_core::config::DEFAULT_REDIS_URL.into()),
    )
    .unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let stream = format!("test-trim-{}", uuid::Uuid::new_v4().simple());
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut con)
        .await
        .unwrap();
    for n in 0..5 {
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("n")
            .arg(n)
            .query_async(&mut con)
            .await
            .unwrap();
    }

    // Right after the trim's first command returns, before its next one is sent.
    let other = client.get_multiplexed_async_connection().await.unwrap();
    let mut racing = Intercepted::new(
        con.clone(),
        At::After,
        |_: &Cmd| true,
        || other_worker_reads(other, stream.clone()),
    );
    trim_acknowledged(&mut racing, &stream, GROUP)
        .await
        .unwrap();

    let left: i64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut con)
        .await
        .unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(
        left, 5,
        "the trim removed entries another worker holds unacknowledged"
    );
}
