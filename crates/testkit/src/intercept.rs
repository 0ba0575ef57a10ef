//! A Redis connection for tests that forces an interleaving at an exact point: it passes every
//! command to the real connection, and runs a hook once, right before or right after the
//! first command a trigger picks. A hook that fails before its command stands for that command
//! failing (a dropped connection, say): the command is not sent.
//!
//! A race that a fault fired at a random moment rarely hits is hit every time here.

use std::future::Future;

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// Where the hook runs, relative to the command the trigger picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    Before,
    After,
}

pub struct Intercepted<C, T, H> {
    inner: C,
    trigger: T,
    at: At,
    hook: Option<H>,
}

impl<C, T, H, F> Intercepted<C, T, H>
where
    C: ConnectionLike + Send,
    T: FnMut(&Cmd) -> bool + Send,
    H: FnOnce() -> F + Send,
    F: Future<Output = RedisResult<()>> + Send,
{
    pub fn new(inner: C, at: At, trigger: T, hook: H) -> Self {
        Self {
            inner,
            trigger,
            at,
            hook: Some(hook),
        }
    }
}

/// Whether `cmd` carries `word` as one of its arguments (its name, a key, a script's
/// operation), ignoring case.
pub fn has_arg(cmd: &Cmd, word: &str) -> bool {
    cmd.args_iter().any(
        |arg| matches!(arg, redis::Arg::Simple(bytes) if bytes.eq_ignore_ascii_case(word.as_bytes())),
    )
}

impl<C, T, H, F> ConnectionLike for Intercepted<C, T, H>
where
    C: ConnectionLike + Send,
    T: FnMut(&Cmd) -> bool + Send,
    H: FnOnce() -> F + Send,
    F: Future<Output = RedisResult<()>> + Send,
{
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let hook = match self.hook.is_some() && (self.trigger)(cmd) {
                true => self.hook.take(),
                false => None,
            };
            let (before, after) = match (hook, self.at) {
                (Some(hook), At::Before) => (Some(hook), None),
                (Some(hook), At::After) => (None, Some(hook)),
                (None, _) => (None, None),
            };
            if let Some(hook) = before {
                hook().await?;
            }
            let reply = self.inner.req_packed_command(cmd).await;
            if let Some(hook) = after {
                hook().await?;
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
