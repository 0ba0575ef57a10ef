//! Hardened by default: each of the ten ways an attacker got through a running API with a
//! fresh coupon, tried again here against the running API (on the real services), and
//! refused. One test per point, in the order of the issue that found them.

// Helpers outside `#[test]` functions panic too: in a harness that is the failure report.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::{App, HttpResponse, HttpServer, web};
use clap::Parser;
use issuer_api::config::{Config, OpsListen};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use testkit::harness::{self, TestEnv};
use testkit::tls::TestCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A secret nobody printed anywhere, long enough for every rule.
const STRONG: &str = "9f2c1e7a4b6d8e0f3a5c7e9b1d3f5a7c9e1b3d5f7a9c";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn hs256(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(harness::JWT_SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// Claims as the suite's login issues them (`testkit::credentials`).
fn claims(user: i64) -> Value {
    json!({
        "sub": user.to_string(),
        "iss": testkit::credentials::DEV_ISSUER,
        "aud": testkit::credentials::DEV_AUDIENCE,
        "iat": now(),
        "exp": now() + 600,
    })
}

/// POST to `path` of the API at `base` with these headers (each its own line, repeats
/// kept) and body: the status and the body's `error` or `result`.
async fn post(
    env: &TestEnv,
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> (u16, String) {
    let mut request = env.client.post(format!("{base}{path}"));
    for (name, value) in headers {
        request = request.append_header((*name, *value));
    }
    let mut response = request.send_json(&body).await.unwrap();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    let said = answer["result"]
        .as_str()
        .or(answer["error"].as_str())
        .unwrap_or_default()
        .to_owned();
    (response.status().as_u16(), said)
}

fn issues(coupon: i64) -> String {
    format!("/api/v1/coupons/{coupon}/issues")
}

/// Why an API refused to start, or a panic if it started.
async fn refused_start(env: &TestEnv, overrides: &[&str]) -> String {
    let overrides: Vec<String> = overrides.iter().map(|s| (*s).to_owned()).collect();
    match env.build_another_api(&overrides).await {
        Ok(_) => panic!("started with {overrides:?}"),
        Err(err) => format!("{err:#}"),
    }
}

/// 1. In gateway-header mode the user header is honoured only beside the gateway's secret
/// header; without a secret configured the API does not start, and a user header sent
/// twice (a gateway that appends instead of replacing) is refused.
#[actix_web::test]
async fn the_user_header_is_honoured_only_from_the_gateway() {
    let env = TestEnv::start(0).await;
    let coupon = env.coupon_with_quantity(5).await;
    let why = refused_start(&env, &["--user-auth=gateway-header"]).await;
    assert!(why.contains("ISSUER_GATEWAY_SECRET"), "{why}");

    let (base, _) = env
        .start_another_api(&[
            "--user-auth=gateway-header".into(),
            format!("--gateway-secret={STRONG}"),
        ])
        .await;
    let path = issues(coupon);
    let body = json!({});
    assert_eq!(
        post(&env, &base, &path, &[("x-user-id", "5")], body.clone()).await,
        (401, "UNAUTHORIZED".into()),
        "a client reaching the API directly"
    );
    let wrong = [("x-gateway-secret", "guess"), ("x-user-id", "5")];
    assert_eq!(
        post(&env, &base, &path, &wrong, body.clone()).await,
        (401, "UNAUTHORIZED".into()),
        "a guessed secret"
    );
    let twice = [
        ("x-gateway-secret", STRONG),
        ("x-user-id", "6"),
        ("x-user-id", "5"),
    ];
    assert_eq!(
        post(&env, &base, &path, &twice, body.clone()).await,
        (401, "UNAUTHORIZED".into()),
        "a client's header the gateway appended to"
    );
    let gateway = [("x-gateway-secret", STRONG), ("x-user-id", "5")];
    assert_eq!(
        post(&env, &base, &path, &gateway, body).await,
        (201, "SUCCESS".into())
    );
    env.shutdown().await;
}

/// 2. The secrets the Makefile, the compose file and the README print, and an admin token
/// under 32 bytes, stop the start unless development secrets are allowed explicitly; a
/// loopback listener allows nothing.
#[actix_web::test]
async fn development_and_short_secrets_are_refused() {
    let env = TestEnv::start(0).await;
    let strong_jwt = format!("--jwt-secret={STRONG}");
    let strong_admin = format!("--admin-token={STRONG}");
    for (what, admin, jwt) in [
        (
            "the Makefile's admin token",
            "--admin-token=dev-admin-token",
            strong_jwt.as_str(),
        ),
        (
            "a short admin token",
            "--admin-token=a-token-of-31-bytes-exactly-xyz",
            strong_jwt.as_str(),
        ),
        (
            "the README's HS256 secret",
            strong_admin.as_str(),
            "--jwt-secret=dev-only-hs256-secret-never-use-in-production",
        ),
        (
            "the contract fuzz's HS256 secret",
            strong_admin.as_str(),
            "--jwt-secret=fuzz-only-hs256-secret-of-32-bytes-or-more",
        ),
    ] {
        let why = refused_start(&env, &[admin, jwt, "--dev-secrets=refuse"]).await;
        assert!(why.contains("ISSUER_DEV_SECRETS"), "{what}: {why}");
    }
    // The same with the development setting: it starts.
    let (base, _) = env
        .start_another_api(&[
            "--admin-token=dev-admin-token".into(),
            "--dev-secrets=allow".into(),
        ])
        .await;
    let (status, _) = post(
        &env,
        &base,
        "/api/v1/coupons",
        &[("authorization", "Bearer dev-admin-token")],
        json!({ "name": "dev", "totalQuantity": 1 }),
    )
    .await;
    assert_eq!(status, 201);
    // Strong secrets start without it.
    let (base, _) = env
        .start_another_api(&[strong_admin, strong_jwt, "--dev-secrets=refuse".into()])
        .await;
    let (status, _) = post(
        &env,
        &base,
        "/api/v1/coupons",
        &[("authorization", &format!("Bearer {STRONG}"))],
        json!({ "name": "strong", "totalQuantity": 1 }),
    )
    .await;
    assert_eq!(status, 201);
    env.shutdown().await;
}

/// 3. Guessing the admin token: past a handful of failures an address is answered 429
/// before its token is even compared, and another address is not.
#[actix_web::test]
async fn failed_authentication_is_throttled_per_address() {
    let env = TestEnv::start(0).await;
    let (base, _) = env
        .start_another_api(&["--client-address-header=x-forwarded-for".into()])
        .await;
    let body = json!({ "name": "guess", "totalQuantity": 1 });
    let mut statuses = Vec::new();
    for guess in 0..60 {
        let token = format!("Bearer guess-{guess}");
        let headers = [("x-forwarded-for", "10.0.0.66"), ("authorization", &token)];
        statuses.push(
            post(&env, &base, "/api/v1/coupons", &headers, body.clone())
                .await
                .0,
        );
    }
    let refused = statuses.iter().filter(|&&s| s == 401).count();
    let throttled = statuses.iter().filter(|&&s| s == 429).count();
    assert!(
        (1..=20).contains(&refused) && refused + throttled == 60,
        "sixty guesses: {statuses:?}"
    );
    let admin = format!("Bearer {}", harness::ADMIN_TOKEN);
    let attacker = [("x-forwarded-for", "10.0.0.66"), ("authorization", &admin)];
    assert_eq!(
        post(&env, &base, "/api/v1/coupons", &attacker, body.clone()).await,
        (429, "RATE_LIMITED".into()),
        "the throttled address is refused before its token is looked at"
    );
    let public_read = env
        .client
        .get(format!("{base}/api/v1/coupons/1"))
        .insert_header(("x-forwarded-for", "10.0.0.66"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(
        public_read, 404,
        "a read without credentials guesses nothing"
    );
    let admin_elsewhere = [("x-forwarded-for", "10.0.0.1"), ("authorization", &admin)];
    assert_eq!(
        post(&env, &base, "/api/v1/coupons", &admin_elsewhere, body)
            .await
            .0,
        201,
        "another address is not locked out"
    );
    env.shutdown().await;
}

/// Reads what the server sends on `stream` until it closes or `within` passes: the text,
/// and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into(), false),
        }
    }
}

/// 4. A body that never finishes is answered 408 and its connection closed at the body
/// timeout; a head that never finishes, and an idle kept-alive connection, are closed too.
#[actix_web::test]
async fn a_slow_request_is_cut_off_in_every_phase() {
    let env = TestEnv::start(0).await;
    let addr = env.base.trim_start_matches("http://").to_owned();
    let mut slow_body = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/v1/coupons HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"na",
        harness::ADMIN_TOKEN
    );
    slow_body.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (answer, closed) = read_until_closed(&mut slow_body, Duration::from_secs(12)).await;
    assert!(
        answer.starts_with("HTTP/1.1 408") && closed,
        "after {:?}: closed {closed}, {answer:?}",
        started.elapsed()
    );

    // The head and idle timeouts as set: a second, where actix alone would wait five.
    let (short, _) = env
        .start_another_api(&[
            "--head-timeout-ms=1000".into(),
            "--keep-alive-ms=1000".into(),
        ])
        .await;
    let addr = short.trim_start_matches("http://").to_owned();
    let mut slow_head = TcpStream::connect(&addr).await.unwrap();
    slow_head
        .write_all(b"GET /api/v1/coupons/1 HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let (_, closed) = read_until_closed(&mut slow_head, Duration::from_millis(2500)).await;
    assert!(
        closed,
        "a head that never ends, within ISSUER_HEAD_TIMEOUT_MS"
    );

    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut idle, Duration::from_millis(2500)).await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && closed,
        "an idle keep-alive, within ISSUER_KEEP_ALIVE_MS"
    );
    env.shutdown().await;
}

/// 5. A token issued in the future, one living for a century, and tokens without `iss` or
/// `aud` are refused; without an issuer and an audience configured (or explicitly waived)
/// the API does not start.
#[actix_web::test]
async fn tokens_are_bounded_in_time_and_bound_to_us() {
    let env = TestEnv::start(0).await;
    let coupon = env.coupon_with_quantity(10).await;
    let path = issues(coupon);
    let bearer = |claims: &Value| format!("Bearer {}", hs256(claims));
    let mut good = claims(1);
    let mut cases = vec![("good", good.clone(), 201)];
    good["sub"] = json!("6");
    good["iat"] = json!(now() + 10 * 365 * 86_400);
    cases.push(("issued ten years ahead", good.clone(), 401));
    let mut century = claims(2);
    century["exp"] = json!(now() + 100 * 365 * 86_400);
    cases.push(("a century long", century, 401));
    let mut no_iat_long = claims(3);
    no_iat_long.as_object_mut().unwrap().remove("iat");
    no_iat_long["exp"] = json!(now() + 30 * 86_400);
    cases.push(("no iat, a month left", no_iat_long, 401));
    let mut no_iss = claims(4);
    no_iss.as_object_mut().unwrap().remove("iss");
    cases.push(("no iss", no_iss, 401));
    let mut no_aud = claims(5);
    no_aud.as_object_mut().unwrap().remove("aud");
    cases.push(("no aud", no_aud, 401));
    for (what, claims, status) in cases {
        let token = bearer(&claims);
        let (got, said) = post(
            &env,
            &env.base,
            &path,
            &[("authorization", &token)],
            json!({}),
        )
        .await;
        assert_eq!(got, status, "{what}: {said}");
    }
    for flag in ["--jwt-issuer=", "--jwt-audience="] {
        let why = refused_start(&env, &[flag]).await;
        assert!(why.contains("waive"), "{flag}: {why}");
    }
    env.shutdown().await;
}

/// 6. Two Authorization headers (two users, or one twice) are refused, whoever they name.
#[actix_web::test]
async fn two_authorization_headers_are_refused() {
    let env = TestEnv::start(0).await;
    let coupon = env.coupon_with_quantity(10).await;
    let one = format!("Bearer {}", harness::user_token(1));
    let two = format!("Bearer {}", harness::user_token(2));
    let (one, two) = (one.as_str(), two.as_str());
    for (what, headers) in [
        (
            "two users",
            [("authorization", one), ("authorization", two)],
        ),
        (
            "one user twice",
            [("authorization", one), ("authorization", one)],
        ),
    ] {
        assert_eq!(
            post(&env, &env.base, &issues(coupon), &headers, json!({})).await,
            (401, "UNAUTHORIZED".into()),
            "{what}"
        );
    }
    assert_eq!(env.rows_when_settled(coupon, 0).await, Vec::<i64>::new());
    env.shutdown().await;
}

/// 7. The client's address is the last entry the trusted proxy wrote, across every line of
/// its header; `ip:port` and `Forwarded: for=` are understood, so the per-address limit
/// holds; a header that is no header name stops the start.
#[actix_web::test]
async fn the_client_address_is_the_proxys_last_entry() {
    harness::at_a_fresh_rate_window(86_400_000).await;
    let env = TestEnv::start(0).await;
    let coupon = env.coupon_with_quantity(100).await;
    let path = issues(coupon);
    let limited = |header: &str| {
        vec![
            format!("--client-address-header={header}"),
            "--rate-per-address=2".into(),
            // A day: no window ends between the requests.
            "--rate-window-ms=86400000".into(),
        ]
    };
    let (xff, _) = env.start_another_api(&limited("x-forwarded-for")).await;
    let (forwarded, _) = env.start_another_api(&limited("forwarded")).await;
    let mut user = 100;
    let mut statuses = |base: String, lines: Vec<Vec<String>>| {
        let env = &env;
        let path = path.clone();
        let first = user;
        user += lines.len() as i64;
        async move {
            let mut got = Vec::new();
            for (i, lines) in lines.into_iter().enumerate() {
                let token = format!("Bearer {}", harness::user_token(first + i as i64));
                let mut headers: Vec<(&str, &str)> = vec![("authorization", &token)];
                for line in &lines {
                    let (name, value) = line.split_once(": ").unwrap();
                    headers.push((name, value));
                }
                got.push(post(env, &base, &path, &headers, json!({})).await.0);
            }
            got
        }
    };
    let forged = |i: usize, last: &str| {
        vec![
            format!("x-forwarded-for: 203.0.113.{i}"),
            format!("x-forwarded-for: {last}"),
        ]
    };
    assert_eq!(
        statuses(xff.clone(), (0..3).map(|i| forged(i, "10.1.0.1")).collect()).await,
        [201, 201, 429],
        "a client's own line changed on every request"
    );
    assert_eq!(
        statuses(
            xff.clone(),
            (0..3).map(|i| forged(i, "10.1.0.2:5555")).collect()
        )
        .await,
        [201, 201, 429],
        "ip:port"
    );
    assert_eq!(
        statuses(
            xff,
            (0..3)
                .map(|_| vec!["x-forwarded-for: [2001:db8::7]:443".to_owned()])
                .collect()
        )
        .await,
        [201, 201, 429],
        "[v6]:port"
    );
    let rfc7239 = |i: usize| {
        vec![format!(
            "forwarded: for=203.0.113.{i};proto=https, for=\"10.1.0.3:4711\";by=10.9.9.9"
        )]
    };
    assert_eq!(
        statuses(forwarded, (0..3).map(rfc7239).collect()).await,
        [201, 201, 429],
        "Forwarded: for="
    );
    let why = refused_start(&env, &["--client-address-header=not a header"]).await;
    assert!(why.contains("ISSUER_CLIENT_ADDRESS_HEADER"), "{why}");
    env.shutdown().await;
}

/// An issuer's key-set server over TLS, with a CA made here: `/jwks.json` answers the set
/// until `hang` is set, then never answers; `/moved` redirects to it. Counts its fetches.
struct KeyServer {
    ca: TestCa,
    base: String,
    fetches: Arc<AtomicUsize>,
    hang: Arc<std::sync::atomic::AtomicBool>,
    handle: actix_web::dev::ServerHandle,
}

impl KeyServer {
    fn start(set: String) -> Self {
        let ca = TestCa::new();
        let fetches = Arc::new(AtomicUsize::new(0));
        let hang = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (counted, hanging) = (fetches.clone(), hang.clone());
        let server = HttpServer::new(move || {
            let (counted, hanging, set) = (counted.clone(), hanging.clone(), set.clone());
            App::new()
                .route(
                    "/jwks.json",
                    web::get().to(move || {
                        let (counted, hanging, set) =
                            (counted.clone(), hanging.clone(), set.clone());
                        async move {
                            counted.fetch_add(1, Ordering::SeqCst);
                            if hanging.load(Ordering::SeqCst) {
                                std::future::pending::<()>().await;
                            }
                            HttpResponse::Ok()
                                .content_type("application/json")
                                .body(set)
                        }
                    }),
                )
                .route(
                    "/moved",
                    web::get().to(|| async {
                        HttpResponse::Found()
                            .insert_header(("location", "/jwks.json"))
                            .finish()
                    }),
                )
        })
        .workers(1)
        .bind_rustls_0_23("127.0.0.1:0", ca.server_config())
        .unwrap();
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Self {
            ca,
            base: format!("https://localhost:{}", addr.port()),
            fetches,
            hang,
            handle,
        }
    }
}

/// 8. Keys only over https (a file stays allowed), no redirect followed, and a reading that
/// hangs and is abandoned still counts against the refresh guard: unknown key ids sent
/// one after the other, each given up by its client, fetch the set at most once more.
#[actix_web::test]
async fn jwks_comes_over_https_only_and_refreshes_stay_bounded() {
    let key = EncodingKey::from_rsa_pem(
        &std::fs::read(
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys/rsa.pem"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("rsa-1".into());
    let set = serde_json::to_string(&JwkSet { keys: vec![jwk] }).unwrap();
    let keys = KeyServer::start(set.clone());
    let env = TestEnv::start(0).await;
    let coupon = env.coupon_with_quantity(10).await;

    // Plain http, even on loopback, is refused.
    let http = HttpServer::new(move || {
        let set = set.clone();
        App::new().route(
            "/jwks.json",
            web::get().to(move || {
                let set = set.clone();
                async move {
                    HttpResponse::Ok()
                        .content_type("application/json")
                        .body(set)
                }
            }),
        )
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let http_addr = http.addrs()[0];
    let http = http.run();
    let http_handle = http.handle();
    actix_web::rt::spawn(http);
    let ca = format!(
        "--jwt-jwks-ca-file={}",
        keys.ca.dir.join("ca.pem").display()
    );
    let why = refused_start(
        &env,
        &[&format!("--jwt-jwks-url=http://{http_addr}/jwks.json"), &ca],
    )
    .await;
    assert!(why.contains("https"), "{why}");
    let why = refused_start(&env, &[&format!("--jwt-jwks-url={}/moved", keys.base), &ca]).await;
    assert!(why.contains("302"), "a redirect is not followed: {why}");

    let (base, _) = env
        .start_another_api(&[format!("--jwt-jwks-url={}/jwks.json", keys.base), ca])
        .await;
    let signed = |kid: &str, user: i64| {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        format!("Bearer {}", encode(&header, &claims(user), &key).unwrap())
    };
    assert_eq!(
        post(
            &env,
            &base,
            &issues(coupon),
            &[("authorization", &signed("rsa-1", 1))],
            json!({})
        )
        .await,
        (201, "SUCCESS".into())
    );
    let fetched = keys.fetches.load(Ordering::SeqCst);
    keys.hang.store(true, Ordering::SeqCst);
    let impatient = awc::Client::builder()
        .timeout(Duration::from_millis(300))
        .finish();
    for guess in 0..8 {
        let token = signed(&format!("unknown-{guess}"), 2);
        let sent = impatient
            .post(format!("{base}{}", issues(coupon)))
            .insert_header(("authorization", token))
            .send_json(&json!({}))
            .await;
        assert!(sent.is_err(), "the reading hangs, so the client gives up");
    }
    let more = keys.fetches.load(Ordering::SeqCst) - fetched;
    assert!(more <= 1, "{more} readings for 8 abandoned requests");
    keys.handle.stop(false).await;
    http_handle.stop(false).await;
    env.shutdown().await;
}

/// Transactions committed in this environment's own database so far (PostgreSQL's
/// statistics; a backend reports its own at most once a second, so recent ones may lag).
async fn transactions(env: &TestEnv) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = env.pg().await;
    diesel_async::RunQueryDsl::get_result::<Count>(
        diesel::sql_query(
            "SELECT pg_stat_get_db_xact_commit(oid) AS n FROM pg_database \
             WHERE datname = current_database()",
        ),
        &mut conn,
    )
    .await
    .unwrap()
    .n
}

/// `clients` requests at a time to `url` (with `token`, if any) until `stop`; how many
/// were answered.
fn flood(
    env: &TestEnv,
    url: String,
    token: Option<String>,
    clients: usize,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> Vec<actix_web::rt::task::JoinHandle<u32>> {
    (0..clients)
        .map(|_| {
            let (client, url, token, stop) =
                (env.client.clone(), url.clone(), token.clone(), stop.clone());
            actix_web::rt::spawn(async move {
                let mut answered = 0;
                while !stop.load(Ordering::SeqCst) {
                    let mut request = client.get(&url);
                    if let Some(token) = &token {
                        request = request.bearer_auth(token);
                    }
                    if let Ok(mut response) = request.send().await {
                        let _ = response.body().await;
                        answered += 1;
                    }
                }
                answered
            })
        })
        .collect()
}

/// 9. By default `/metrics`, `/healthz` and `/readyz` are not on the public listener. A
/// flood of public coupon reads is answered from memory (PostgreSQL sees a handful of
/// transactions, not one per read), and readiness asks PostgreSQL on a pool of its own:
/// with every request connection stuck behind a lock, the pod stays ready.
#[actix_web::test]
async fn operations_stay_off_the_public_listener_and_reads_cannot_starve_readiness() {
    let env = TestEnv::start(0).await;
    let coupon = env.coupon_with_quantity(10).await;
    // Shipped, the operations routes have a listener of their own; here on a free port,
    // so as not to meet a `make run` on the default one.
    let shipped = Config::try_parse_from(["issuer-api"]).unwrap().ops_listen;
    assert_eq!(shipped, OpsListen::At("127.0.0.1:8081".parse().unwrap()));
    let (base, ops) = env
        .start_another_api(&[
            format!("--ops-listen=127.0.0.1:{}", harness::free_port()),
            "--coupon-read-cache-ms=1000".into(),
            "--database-pool-size=2".into(),
        ])
        .await;
    let ops = ops.expect("operations on a listener of their own by default");
    for path in ["/metrics", "/healthz", "/readyz"] {
        let (status, _) = env.get_url(&format!("{base}{path}")).await;
        assert_eq!(status, 404, "{path} on the public listener");
    }
    assert_eq!(env.get_url(&format!("{ops}/readyz")).await.0, 200);

    // What the two APIs cost PostgreSQL in two seconds by themselves (their background
    // reads), then with public reads of one coupon for two seconds.
    let idle = transactions(&env).await;
    actix_web::rt::time::sleep(Duration::from_secs(2)).await;
    let before = transactions(&env).await;
    let idle = before - idle;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers = flood(
        &env,
        format!("{base}/api/v1/coupons/{coupon}"),
        None,
        64,
        &stop,
    );
    actix_web::rt::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let mut reads = 0;
    for reader in readers {
        reads += reader.await.unwrap();
    }
    let cost = transactions(&env).await - before;
    assert!(reads > 1000, "the flood ran: {reads} reads");
    // The first instant's requests all find nothing kept and read; after that, one read
    // per second. Unkept, every read would be a transaction.
    assert!(
        cost - idle < i64::from(reads / 100),
        "{reads} reads cost PostgreSQL {cost} transactions, against {idle} without them"
    );

    // Every request connection waits behind a lock on the rows users' reads need, while
    // users read their coupons: readiness must not wait with them.
    let mut holder = env.pg().await;
    for statement in ["BEGIN", "LOCK TABLE coupon_issues IN ACCESS EXCLUSIVE MODE"] {
        diesel_async::RunQueryDsl::execute(diesel::sql_query(statement), &mut holder)
            .await
            .unwrap();
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let token = harness::user_token(1);
    let stuck = flood(
        &env,
        format!("{base}/api/v1/users/1/coupons"),
        Some(token),
        8,
        &stop,
    );
    let mut unready = Vec::new();
    for _ in 0..20 {
        actix_web::rt::time::sleep(Duration::from_millis(400)).await;
        let (status, body) = env.get_url(&format!("{ops}/readyz")).await;
        if status != 200 {
            unready.push(body);
        }
    }
    stop.store(true, Ordering::SeqCst);
    diesel_async::RunQueryDsl::execute(diesel::sql_query("ROLLBACK"), &mut holder)
        .await
        .unwrap();
    for reader in stuck {
        reader.await.unwrap();
    }
    assert!(
        unready.is_empty(),
        "unready with the pool stuck: {unready:?}"
    );
    env.shutdown().await;
}

/// 10. Settings that would silently turn a protection off, or break every request, stop
/// the start with a message; a coupon name with bidirectional controls is refused.
#[actix_web::test]
async fn silent_misconfiguration_is_refused() {
    let env = TestEnv::start(0).await;
    for (flag, said) in [
        ("--rate-window-ms=0", "ISSUER_RATE_WINDOW_MS"),
        ("--rate-window-ms=172800000", "ISSUER_RATE_WINDOW_MS"),
        ("--rate-sync-ms=0", "ISSUER_RATE_SYNC_MS"),
        ("--rate-sync-ms=1001", "ISSUER_RATE_SYNC_MS"),
        // Shorter than two syncs (of 20 ms): a window would end before it is shared.
        ("--rate-window-ms=30", "ISSUER_RATE_SYNC_MS"),
        ("--jwt-leeway-secs=1000000000", "ISSUER_JWT_LEEWAY_SECS"),
        (
            "--auth-failures-per-address=0",
            "ISSUER_AUTH_FAILURES_PER_ADDRESS",
        ),
        ("--jwt-admin-role=", "ISSUER_JWT_ADMIN_ROLE"),
        ("--jwt-admin-role=  ", "ISSUER_JWT_ADMIN_ROLE"),
    ] {
        let why = refused_start(&env, &[flag]).await;
        assert!(why.contains(said), "{flag}: {why}");
    }
    for name in ["evil\u{202E}gpj.exe", "a\u{2066}b", "zero\u{200B}width"] {
        let (status, body) = env
            .post(
                "/api/v1/coupons",
                harness::ADMIN_TOKEN,
                &json!({ "name": name, "totalQuantity": 1 }),
            )
            .await;
        assert_eq!(status, 400, "{name:?}: {body}");
    }
    env.shutdown().await;
}
