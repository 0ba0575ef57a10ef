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
    let mut env = process::env(&format!("coupon-issue-startup-{}", std::process::id()));
    env.retain(|(name, _)| *name != "DATABASE_URL");
    env.push((
        "DATABASE_URL",
        format!(
            "postgres://coupon:coupon@{}/coupon_issuance",
            process::black_hole()
        ),
    ));
    let mut worker = process::Service::start(env!("CARGO_BIN_EXE_issuer-worker"), &env);
    worker.wait_for("issuer-worker starting", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));

    let status = worker.terminate(Duration::from_secs(3));

    assert!(
        status.success(),
        "exit status {status}:\n{}",
        worker.seen.join("\n")
    );
    assert!(
        worker
            .seen
            .iter()
            .any(|l| l.contains("stopped during start-up")),
        "{}",
        worker.seen.join("\n")
    );
}
