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
