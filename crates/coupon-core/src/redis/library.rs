//! The scripts that compare a coupon's epoch with the instance's (`crate::redis::epoch`), as one
//! Redis function library: admission, the meta's load, the finished check, the rebuild
//! lease, the hand-over's close, the registry, a cluster's replica fence, a bucketed
//! coupon's transfers and sold-out check, a raise, the operator's settings, a state's
//! holders, and the epoch itself.
//!
//! Why a library rather than EVAL: the instance's epoch costs two `INFO`s to read,
//! and admission reads it on every request, refusals included. A library's locals live as
//! long as it stays loaded on that instance, so the epoch is read once (`scripts/epoch.lua`
//! says why that cannot go stale). Measured in docs/performance.md.
//!
//! The library's name carries a hash of its source: during a rolling upgrade each version
//! calls its own functions, side by side on one Redis. An instance that lacks the library
//! (a new or flushed Redis, one restored from a file written before the load) answers
//! "Function not found"; the caller then loads it and calls again, as redis-rs does for
//! EVALSHA. Loading needs the `FUNCTION` command in the Redis user's ACL. On a Redis
//! Cluster the load goes to every primary (redis-rs routes `FUNCTION LOAD` so), and each
//! replica has it from its primary's replication stream; a node that lacks it all the same
//! (one added later, a replica that resynced from an older file) is loaded by the same
//! retry, since the failed call was routed to it.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{Cmd, FromRedisValue, RedisError};

/// One function of the library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// `scripts/admission.lua`.
    Admit,
    /// `scripts/load_meta.lua`.
    LoadMeta,
    /// `scripts/finished.lua`.
    Finished,
    /// `scripts/rebuild_lease.lua`.
    RebuildLease,
    /// `scripts/hand_over.lua`.
    HandOver,
    /// The instance's epoch (`scripts/epoch.lua`), read on the node of its one key.
    Epoch,
    /// `scripts/registry.lua`.
    Registry,
    /// `scripts/fence.lua`.
    Fence,
    /// `scripts/bucket.lua`.
    Bucket,
    /// `scripts/bucket_restore.lua`.
    BucketRestore,
    /// `scripts/raise.lua`.
    Raise,
    /// `scripts/holders.lua`.
    Holders,
    /// `scripts/settings.lua`.
    Settings,
    /// `scripts/replay_slot.lua`.
    ReplaySlot,
}

impl Function {
    const ALL: [Function; 14] = [
        Function::Admit,
        Function::LoadMeta,
        Function::Finished,
        Function::RebuildLease,
        Function::HandOver,
        Function::Epoch,
        Function::Registry,
        Function::Fence,
        Function::Bucket,
        Function::BucketRestore,
        Function::Raise,
        Function::Holders,
        Function::Settings,
        Function::ReplaySlot,
    ];

    fn suffix(self) -> &'static str {
        match self {
            Function::Admit => "admit",
            Function::LoadMeta => "load_meta",
            Function::Finished => "finished",
            Function::RebuildLease => "rebuild_lease",
            Function::HandOver => "hand_over",
            Function::Epoch => "epoch",
            Function::Registry => "registry",
            Function::Fence => "fence",
            Function::Bucket => "bucket",
            Function::BucketRestore => "bucket_restore",
            Function::Raise => "raise",
            Function::Holders => "holders",
            Function::Settings => "settings",
            Function::ReplaySlot => "replay_slot",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Function::Admit => include_str!("scripts/admission.lua"),
            Function::LoadMeta => include_str!("scripts/load_meta.lua"),
            Function::Finished => include_str!("scripts/finished.lua"),
            Function::RebuildLease => include_str!("scripts/rebuild_lease.lua"),
            Function::HandOver => include_str!("scripts/hand_over.lua"),
            Function::Epoch => "return instance_epoch()",
            Function::Registry => include_str!("scripts/registry.lua"),
            Function::Fence => include_str!("scripts/fence.lua"),
            Function::Bucket => include_str!("scripts/bucket.lua"),
            Function::BucketRestore => include_str!("scripts/bucket_restore.lua"),
            Function::Raise => include_str!("scripts/raise.lua"),
            Function::Holders => include_str!("scripts/holders.lua"),
            Function::Settings => include_str!("scripts/settings.lua"),
            Function::ReplaySlot => include_str!("scripts/replay_slot.lua"),
        }
    }
}

// [`call`] finds a function's name at its position in `Function::ALL`: every function is
// listed there, in declaration order, or the crate does not compile.
const _: () = {
    assert!(Function::ALL.len() == Function::ReplaySlot as usize + 1);
    let mut i = 0;
    while i < Function::ALL.len() {
        assert!(Function::ALL[i] as usize == i);
        i += 1;
    }
};

struct Library {
    source: String,
    /// Each function's full name, in [`Function::ALL`]'s order: formatted once, not on
    /// every call (a profile of the admitted path found the format among the API's costs).
    functions: Vec<String>,
}

static LIBRARY: LazyLock<Library> = LazyLock::new(|| {
    // Shared by the functions that read the epoch, those that hold stock that came back,
    // and those that write the operator's settings.
    let epoch = concat!(
        include_str!("scripts/epoch.lua"),
        include_str!("scripts/stock_hold.lua"),
        include_str!("scripts/write_settings.lua")
    );
    // The version is a hash of every script the library holds (redis-rs's script hash,
    // SHA-1 of the text): any edit gives a new name, and nothing else needs to.
    let scripts: String = Function::ALL.iter().map(|f| f.body()).collect();
    let hash = redis::Script::new(&format!("{epoch}{scripts}")).get_hash()[..16].to_owned();
    let name = format!("coupon_{hash}");
    let mut source = format!("#!lua name={name}\n{epoch}");
    for function in Function::ALL {
        // Each script is the body of a function taking its keys and arguments under the
        // names EVAL gives them, so the scripts read the same either way.
        source.push_str(&format!(
            "redis.register_function('{name}_{}', function(KEYS, ARGV)\n{}\nend)\n",
            function.suffix(),
            function.body()
        ));
    }
    let functions = Function::ALL
        .iter()
        .map(|function| format!("{name}_{}", function.suffix()))
        .collect();
    Library { source, functions }
});

/// An `FCALL` of `function` with `keys`; append its arguments with `Cmd::arg`, then run it
/// with [`invoke`].
pub fn call(function: Function, keys: &[&str]) -> Cmd {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg(&LIBRARY.functions[function as usize])
        .arg(keys.len())
        .arg(keys);
    cmd
}

/// Runs a [`call`], loading the library first if this instance does not have it.
pub async fn invoke<T: FromRedisValue, C: ConnectionLike + Send + Sync>(
    con: &mut C,
    call: &Cmd,
) -> Result<T, RedisError> {
    match call.query_async(con).await {
        Err(err) if is_function_not_found(&err) => {
            load(con).await?;
            call.query_async(con).await
        }
        result => result,
    }
}

/// Loads this version of the library; loading it again replaces it with itself.
pub async fn load<C: ConnectionLike + Send + Sync>(con: &mut C) -> Result<(), RedisError> {
    let _: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(&LIBRARY.source)
        .query_async(con)
        .await?;
    Ok(())
}

fn is_function_not_found(err: &RedisError) -> bool {
    err.code() == Some("ERR")
        && err
            .detail()
            .is_some_and(|detail| detail.starts_with("Function not found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_is_named_after_its_source_and_names_each_function_under_it() {
        let name = LIBRARY
            .source
            .lines()
            .next()
            .and_then(|first| first.strip_prefix("#!lua name="))
            .expect("the source starts with its name");
        assert!(name.starts_with("coupon_"), "{name}");
        assert_eq!(name.len(), "coupon_".len() + 16);
        for function in Function::ALL {
            let registered = format!("redis.register_function('{name}_{}'", function.suffix());
            assert_eq!(
                LIBRARY.source.matches(&registered).count(),
                1,
                "{registered}"
            );
            // The call names the function registered under it, not a neighbour's.
            let cmd = call(function, &[]);
            let called = match cmd.args_iter().nth(1) {
                Some(redis::Arg::Simple(arg)) => String::from_utf8_lossy(arg).into_owned(),
                other => format!("{other:?}"),
            };
            assert_eq!(
                called,
                format!("{name}_{}", function.suffix()),
                "{function:?}"
            );
        }
    }
}
