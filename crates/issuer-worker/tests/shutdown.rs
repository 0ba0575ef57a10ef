//! SIGTERM stops the worker cleanly: batch finished, offsets committed, group left, exit 0.

mod process;

use std::time::Duration;

#[test]
fn sigterm_stops_the_worker_with_exit_code_zero() {
    let id = std::process::id();
    let mut env = process::env(&format!("coupon-issue-shutdown-{id}"));
    env.push((
        "WORKER_GROUP_ID",
        format!("coupon-issue-worker-shutdown-{id}"),
    ));
    let mut worker = process::Service::start(env!("CARGO_BIN_EXE_issuer-worker"), &env);
    worker.wait_for("issuer-worker consuming", Duration::from_secs(60));

    let status = worker.terminate(Duration::from_secs(30));

    assert!(
        status.success(),
        "exit status {status}:\n{}",
        worker.seen.join("\n")
    );
    assert!(
        worker
            .seen
            .iter()
            .any(|l| l.contains("issuer-worker stopped"))
    );
}

/// An orchestrator stops a pod that is still starting (waiting on its database, say): it
/// must exit at once, not when start-up gives up or the grace period ends in a SIGKILL.
#[test]
fn sigterm_during_start_up_exits_at_once() {
    process::assert_stopped_during_start_up(
        env!("CARGO_BIN_EXE_issuer-worker"),
        "issuer-worker starting",
        &[],
    );
}
