//! SIGTERM stops the API cleanly: in-flight requests finished, producer flushed, exit 0.

#[path = "../../issuer-worker/tests/process/mod.rs"]
mod process;

use std::time::Duration;

#[test]
fn sigterm_stops_the_api_with_exit_code_zero() {
    let mut env = process::env(&format!("coupon-issue-shutdown-{}", std::process::id()));
    env.push(("ISSUER_LISTEN", "127.0.0.1:0".to_owned()));
    env.push(("ISSUER_ADMIN_TOKEN", "shutdown-test".to_owned()));
    env.push((
        "ISSUER_JWT_SECRET",
        "shutdown-test-hs256-secret-32-bytes-long".to_owned(),
    ));
    let mut api = process::Service::start(env!("CARGO_BIN_EXE_issuer-api"), &env);
    api.wait_for("issuer-api listening", Duration::from_secs(60));

    let status = api.terminate(Duration::from_secs(30));

    assert!(
        status.success(),
        "exit status {status}:\n{}",
        api.seen.join("\n")
    );
    assert!(api.seen.iter().any(|l| l.contains("issuer-api stopped")));
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
    env.push(("ISSUER_LISTEN", "127.0.0.1:0".to_owned()));
    env.push(("ISSUER_ADMIN_TOKEN", "shutdown-test".to_owned()));
    env.push((
        "ISSUER_JWT_SECRET",
        "shutdown-test-hs256-secret-32-bytes-long".to_owned(),
    ));
    let mut api = process::Service::start(env!("CARGO_BIN_EXE_issuer-api"), &env);
    api.wait_for("issuer-api starting", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));

    let status = api.terminate(Duration::from_secs(3));

    assert!(
        status.success(),
        "exit status {status}:\n{}",
        api.seen.join("\n")
    );
    assert!(
        api.seen
            .iter()
            .any(|l| l.contains("stopped during start-up")),
        "{}",
        api.seen.join("\n")
    );
}
