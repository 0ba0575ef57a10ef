//! SIGTERM stops the worker cleanly: batch finished, offsets committed, group left, exit 0.

use std::path::Path;
use std::time::Duration;

use testkit::process::{CleanStop, check_stops_cleanly, check_stops_during_start_up, services_env};

const WORKER: &str = env!("CARGO_BIN_EXE_issuer-worker");

#[test]
fn sigterm_stops_the_worker_with_exit_code_zero() {
    let id = std::process::id();
    let mut env = services_env(&format!("coupon-issue-shutdown-{id}"));
    env.push((
        "WORKER_GROUP_ID".into(),
        format!("coupon-issue-worker-shutdown-{id}"),
    ));
    check_stops_cleanly(
        Path::new(WORKER),
        &env,
        &CleanStop {
            ready: "issuer-worker consuming",
            then: Duration::ZERO,
            stopped: "issuer-worker stopped",
            patience: Duration::from_secs(30),
        },
    )
    .unwrap();
}

/// An orchestrator stops a pod that is still starting (waiting on its database, say): it
/// must exit at once, not when start-up gives up or the grace period ends in a SIGKILL.
#[test]
fn sigterm_during_start_up_exits_at_once() {
    check_stops_during_start_up(Path::new(WORKER), "issuer-worker starting", &[]).unwrap();
}
