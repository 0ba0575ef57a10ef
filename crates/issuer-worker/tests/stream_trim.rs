//! Finding 2 of the protocol review: a trim must never remove an entry that is pending or
//! not yet delivered, whatever another worker does while it runs. The other worker's read is
//! forced at the exact point: right after the trim's first command returns, before its next
//! one is sent, through a connection that wraps the real one.

use issuer_worker::stream_trim::trim_acknowledged;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisFuture, Value};

const GROUP: &str = "workers";

/// Passes every command to Redis; after the first one, another worker reads the whole
/// stream (its entries become pending under that worker's name).
struct ReadAfterFirstCommand {
    inner: MultiplexedConnection,
    other: MultiplexedConnection,
    stream: String,
    commands: usize,
}

impl ReadAfterFirstCommand {
    async fn other_worker_reads(&mut self) -> redis::RedisResult<Value> {
        redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg("other-worker")
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(&mut self.other)
            .await
    }
}

impl ConnectionLike for ReadAfterFirstCommand {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let reply = self.inner.req_packed_command(cmd).await;
            self.commands += 1;
            if self.commands == 1 {
                self.other_worker_reads().await?;
            }
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.inner.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

#[tokio::test]
async fn a_read_during_the_trim_cannot_get_its_entries_trimmed() {
    let client = redis::Client::open(
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
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

    let mut racing = ReadAfterFirstCommand {
        inner: con.clone(),
        other: client.get_multiplexed_async_connection().await.unwrap(),
        stream: stream.clone(),
        commands: 0,
    };
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
