//! SIGTERM stops the API cleanly: in-flight requests finished, producer flushed, exit 0.

use std::path::Path;
use std::time::Duration;

use testkit::process::{CleanStop, check_stops_cleanly, check_stops_during_start_up, services_env};

const API: &str = env!("CARGO_BIN_EXE_issuer-api");

/// What the API needs besides the shared settings: its listeners, its two secrets (as a
/// deployment's, no development ones), and its tokens' issuer and audience.
fn api_secrets() -> Vec<(String, String)> {
    [
        ("ISSUER_LISTEN", "127.0.0.1:0"),
        ("ISSUER_OPS_LISTEN", "127.0.0.1:0"),
        ("ISSUER_DEV_SECRETS", "refuse"),
        (
            "ISSUER_ADMIN_TOKEN",
            "shutdown-test-admin-token-of-32-bytes-or-more",
        ),
        (
            "ISSUER_JWT_SECRET",
            "shutdown-test-hs256-secret-32-bytes-long",
        ),
        ("ISSUER_JWT_ISSUER", "https://login.example"),
        ("ISSUER_JWT_AUDIENCE", "coupon-api"),
    ]
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .to_vec()
}

#[test]
fn sigterm_stops_the_api_with_exit_code_zero() {
    let mut env = services_env(&format!("coupon-issue-shutdown-{}", std::process::id()));
    env.extend(api_secrets());
    check_stops_cleanly(
        Path::new(API),
        &env,
        &CleanStop {
            ready: "issuer-api listening",
            then: Duration::ZERO,
            stopped: "issuer-api stopped",
            patience: Duration::from_secs(30),
        },
    )
    .unwrap();
}

/// An orchestrator stops a pod that is still starting (waiting on its database, say): it
/// must exit at once, not when start-up gives up or the grace period ends in a SIGKILL.
#[test]
fn sigterm_during_start_up_exits_at_once() {
    check_stops_during_start_up(Path::new(API), "issuer-api starting", &api_secrets()).unwrap();
}
