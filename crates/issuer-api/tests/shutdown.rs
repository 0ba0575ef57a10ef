//! SIGTERM stops the API cleanly: in-flight requests finished, producer flushed, exit 0.

#[path = "../../issuer-worker/tests/process/mod.rs"]
mod process;

use std::time::Duration;

/// What the API needs besides the shared settings: a listener and its two secrets.
const API_SECRETS: [(&str, &str); 3] = [
    ("ISSUER_LISTEN", "127.0.0.1:0"),
    ("ISSUER_ADMIN_TOKEN", "shutdown-test"),
    (
        "ISSUER_JWT_SECRET",
        "shutdown-test-hs256-secret-32-bytes-long",
    ),
];

#[test]
fn sigterm_stops_the_api_with_exit_code_zero() {
    let mut env = process::env(&format!("coupon-issue-shutdown-{}", std::process::id()));
    env.extend(API_SECRETS.map(|(name, value)| (name, value.to_owned())));
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
    process::assert_stopped_during_start_up(
        env!("CARGO_BIN_EXE_issuer-api"),
        "issuer-api starting",
        &API_SECRETS.map(|(name, value)| (name, value.to_owned())),
    );
}
