//! Who may issue and read: verified bearer tokens of every accepted kind, every way a token
//! is refused, the admin's role, and the gateway-header mode. On the real services, through
//! the running API.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::{App, HttpResponse, HttpServer, web};
use coupon_core::domain::QueueKind;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use testkit::harness::{self, TestEnv};

/// The issuer and audience the suite's APIs require (`testkit::harness`).
const ISSUER: &str = testkit::credentials::DEV_ISSUER;
/// The secret the gateway in front sends, in gateway-header mode.
const GATEWAY_SECRET: &str = "a-gateway-secret-of-at-least-32-bytes";
const AUDIENCE: &str = testkit::credentials::DEV_AUDIENCE;

fn keys_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(keys_dir().join(name)).unwrap()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims a login for `user` would issue: ours, valid for ten minutes.
fn claims(user: i64) -> Value {
    json!({ "sub": user.to_string(), "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600 })
}

fn with(mut claims: Value, field: &str, value: Value) -> Value {
    claims[field] = value;
    claims
}

fn without(mut claims: Value, field: &str) -> Value {
    claims.as_object_mut().unwrap().remove(field);
    claims
}

fn hs256(secret: &[u8], claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret).unwrap(),
    )
    .unwrap()
}

/// The test keys by kid, with their algorithms.
fn signing_keys() -> Vec<(&'static str, Algorithm, EncodingKey)> {
    vec![
        (
            "rsa-1",
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&pem("rsa.pem")).unwrap(),
        ),
        (
            "ec-1",
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&pem("ec.pem")).unwrap(),
        ),
        (
            "ed-1",
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(&pem("ed25519.pem")).unwrap(),
        ),
    ]
}

fn signed(kid: &str, alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    encode(&header, claims, key).unwrap()
}

/// The public halves of `keys`, as an issuer publishes them.
fn jwks(keys: &[(&str, Algorithm, EncodingKey)]) -> String {
    let keys = keys
        .iter()
        .map(|(kid, alg, key)| {
            let mut jwk = Jwk::from_encoding_key(key, *alg).unwrap();
            jwk.common.key_id = Some((*kid).to_owned());
            jwk
        })
        .collect();
    serde_json::to_string(&JwkSet { keys }).unwrap()
}

fn jwks_file(name: &str, keys: &[(&str, Algorithm, EncodingKey)]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{name}-{}.jwks.json", std::process::id()));
    std::fs::write(&path, jwks(keys)).unwrap();
    path
}

/// POST an issue request with these headers and body: status and error code (or result).
async fn issue_with(
    env: &TestEnv,
    base: &str,
    coupon: i64,
    headers: &[(&str, String)],
    body: Value,
) -> (u16, String) {
    let mut request = env
        .client
        .post(format!("{base}/api/v1/coupons/{coupon}/issues"));
    for (name, value) in headers {
        request = request.insert_header((*name, value.clone()));
    }
    let mut response = request.send_json(&body).await.unwrap();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    let said = answer["result"]
        .as_str()
        .or(answer["error"].as_str())
        .unwrap_or_default()
        .to_owned();
    let status = response.status().as_u16();
    if status == 401 {
        assert!(
            response.headers().contains_key("www-authenticate"),
            "a 401 says how to authenticate"
        );
    }
    (status, said)
}

/// What is tried, the headers, the body, and the expected status and error code.
type Case = (
    &'static str,
    Vec<(&'static str, String)>,
    Value,
    u16,
    &'static str,
);

fn bearer(token: &str) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {token}"))]
}

/// HS256 with issuer and audience configured: the good token passes, each bad one is
/// refused with 401 (or 403 when it is valid but names someone else), and nothing is
/// admitted for any refused request.
#[actix_web::test]
async fn hs256_tokens_are_verified_and_each_bad_one_refused() {
    let env = TestEnv::start_with_args(
        QueueKind::Kafka,
        &harness::brokers(),
        0,
        &[
            &format!("--jwt-issuer={ISSUER}"),
            &format!("--jwt-audience={AUDIENCE}"),
            "--jwt-leeway-secs=5",
            // Every case is a failed authentication from this one address.
            "--auth-failures-per-address=1000",
        ],
    )
    .await;
    let coupon = env.coupon_with_quantity(100).await;
    let secret = harness::JWT_SECRET.as_bytes();
    let good = hs256(secret, &claims(1));
    let alg_none = {
        // {"alg":"none","typ":"JWT"}, a valid payload, and no signature.
        let payload = good.split('.').nth(1).unwrap();
        format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.")
    };
    let cases: Vec<Case> = vec![
        ("no token", vec![], json!({}), 401, "UNAUTHORIZED"),
        (
            "not a JWT",
            bearer("garbage"),
            json!({}),
            401,
            "UNAUTHORIZED",
        ),
        (
            "basic scheme",
            vec![("authorization", "Basic dXNlcjpwYXNz".into())],
            json!({}),
            401,
            "UNAUTHORIZED",
        ),
        (
            "alg none",
            bearer(&alg_none),
            json!({}),
            401,
            "UNAUTHORIZED",
        ),
        (
            "bad signature",
            bearer(&hs256(
                b"another-secret-that-is-32-bytes-long!!",
                &claims(1),
            )),
            json!({}),
            401,
            "UNAUTHORIZED",
        ),
        (
            "expired",
            bearer(&hs256(secret, &with(claims(1), "exp", json!(now() - 60)))),
            json!({}),
            401,
            "UNAUTHORIZED",
        ),
        (
            "not yet valid",
            bearer(&hs256(secret, &with(claims(1), "nbf", json!(now() + 60)))),
            json!({}),
            401,
            "UNAUTHORIZED",
        ),
        (
            "no expiry",
            bearer(&hs256(secret, &without(claims(1), "exp"))),
            json!({}),
            401,
            "UNAUTHORIZED",
        ),
        (
            "wrong issuer",
            bearer(&hs256(
                secret,
                &with(claims(1), "iss", json!("https://evil.test")),
            )),
            json!({}),
            401,
            "UNAUTHORIZED",
        ),
        (
            "no issuer",
            bearer(&hs256(secret, &without(claims(1), "iss"))),
            json!({}),
            401,
            "UNAUTHORIZED",
        ),
        (
            "wrong audience",
            bearer(&hs256(
                secret,
                &with(claims(1), "aud", json!("another-api")),
            )),
            json!({}),
            401,
            "UNAUTHORIZED",
        ),
        (
            "subject not a user id",
            bearer(&hs256(secret, &with(claims(1), "sub", json!("alice")))),
            json!({}),
            401,
            "UNAUTHORIZED",
        ),
        (
            "no subject",
            bearer(&hs256(secret, &without(claims(1), "sub"))),
            json!({}),
            403,
            "FORBIDDEN",
        ),
        (
            "another user's token for user 1",
            bearer(&hs256(secret, &claims(2))),
            json!({ "userId": 1 }),
            403,
            "FORBIDDEN",
        ),
        (
            "the admin token names no user",
            bearer(harness::ADMIN_TOKEN),
            json!({ "userId": 1 }),
            403,
            "FORBIDDEN",
        ),
    ];
    for (what, headers, body, status, error) in cases {
        let answer = issue_with(&env, &env.base, coupon, &headers, body).await;
        assert_eq!(answer, (status, error.to_owned()), "{what}");
    }
    let (_, view) = env.get(&format!("/api/v1/coupons/{coupon}")).await;
    assert_eq!(view["issuedCount"], 0, "a refused request admitted someone");

    // Within the leeway, an expiry a moment ago is still clock skew.
    let skewed = hs256(secret, &with(claims(3), "exp", json!(now() - 2)));
    assert_eq!(
        issue_with(&env, &env.base, coupon, &bearer(&skewed), json!({})).await,
        (201, "SUCCESS".into())
    );
    // The good token, with or without the (matching) user in the body.
    assert_eq!(
        issue_with(
            &env,
            &env.base,
            coupon,
            &bearer(&good),
            json!({ "userId": 1 })
        )
        .await,
        (201, "SUCCESS".into())
    );
    let user_4 = hs256(secret, &with(claims(4), "sub", json!(4)));
    assert_eq!(
        issue_with(&env, &env.base, coupon, &bearer(&user_4), json!({})).await,
        (201, "SUCCESS".into()),
        "a numeric subject"
    );
    let (_, view) = env.get(&format!("/api/v1/coupons/{coupon}")).await;
    assert_eq!(view["issuedCount"], 3);
    env.shutdown().await;
}

/// RS256, ES256 and EdDSA with keys from a JWKS file, beside the HS256 secret. A token
/// naming HS256 and signed with the public RSA key as its secret (algorithm confusion) is
/// refused, since HS256 is checked against the shared secret alone; as is a token whose
/// header claims one algorithm for a key of another, and a key the issuer never published.
#[actix_web::test]
async fn public_key_tokens_from_a_jwks_file_and_no_algorithm_confusion() {
    let keys = signing_keys();
    let file = jwks_file("identity", &keys);
    let env = TestEnv::start_with_args(
        QueueKind::Kafka,
        &harness::brokers(),
        0,
        &[&format!("--jwt-jwks-file={}", file.display())],
    )
    .await;
    let coupon = env.coupon_with_quantity(100).await;
    for (user, (kid, alg, key)) in (10..).zip(&keys) {
        let token = signed(kid, *alg, key, &claims(user));
        assert_eq!(
            issue_with(&env, &env.base, coupon, &bearer(&token), json!({})).await,
            (201, "SUCCESS".into()),
            "{alg:?}"
        );
    }

    let public_pem = pem("rsa.pub.pem");
    let mut confused = Header::new(Algorithm::HS256);
    confused.kid = Some("rsa-1".into());
    let confused = encode(
        &confused,
        &claims(20),
        &EncodingKey::from_secret(&public_pem).unwrap(),
    )
    .unwrap();
    let (rsa_kid, _, rsa_key) = &keys[0];
    let ec_key = &keys[1].2;
    let stranger = EncodingKey::from_rsa_pem(&pem("rsa-rotated.pem")).unwrap();
    let refused = [
        ("HS256 signed with the public key", confused),
        (
            "ES256 header on the RSA key's kid",
            signed(rsa_kid, Algorithm::ES256, ec_key, &claims(21)),
        ),
        (
            "RS256 with a key never published, under a published kid",
            signed(rsa_kid, Algorithm::RS256, &stranger, &claims(22)),
        ),
        (
            "an unknown kid",
            signed("nobody", Algorithm::RS256, rsa_key, &claims(23)),
        ),
        (
            "no kid",
            encode(&Header::new(Algorithm::RS256), &claims(24), rsa_key).unwrap(),
        ),
    ];
    for (what, token) in refused {
        assert_eq!(
            issue_with(&env, &env.base, coupon, &bearer(&token), json!({})).await,
            (401, "UNAUTHORIZED".into()),
            "{what}"
        );
    }
    let (_, view) = env.get(&format!("/api/v1/coupons/{coupon}")).await;
    assert_eq!(view["issuedCount"], 3);
    env.shutdown().await;
    std::fs::remove_file(file).unwrap();
}

/// Keys from a JWKS URL (https, with the issuer's private CA); when the issuer rotates in a
/// new key, the first token signed with it makes the API read the set again, and is
/// accepted.
#[actix_web::test]
async fn jwks_url_is_read_again_when_a_token_names_a_new_key() {
    let ca = testkit::tls::TestCa::new();
    let published = web::Data::new(std::sync::Mutex::new(jwks(&signing_keys())));
    let serving = published.clone();
    let server = HttpServer::new(move || {
        App::new().app_data(serving.clone()).route(
            "/jwks.json",
            web::get().to(|set: web::Data<std::sync::Mutex<String>>| async move {
                let body = set.lock().unwrap().clone();
                HttpResponse::Ok()
                    .content_type("application/json")
                    .body(body)
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

    let env = TestEnv::start_with_args(
        QueueKind::Kafka,
        &harness::brokers(),
        0,
        &[
            &format!("--jwt-jwks-url=https://localhost:{}/jwks.json", addr.port()),
            &format!("--jwt-jwks-ca-file={}", ca.path("ca.pem")),
        ],
    )
    .await;
    let coupon = env.coupon_with_quantity(10).await;
    let (kid, alg, key) = &signing_keys()[2];
    let token = signed(kid, *alg, key, &claims(40));
    assert_eq!(
        issue_with(&env, &env.base, coupon, &bearer(&token), json!({})).await,
        (201, "SUCCESS".into())
    );

    let rotated = EncodingKey::from_rsa_pem(&pem("rsa-rotated.pem")).unwrap();
    let token = signed("rsa-2", Algorithm::RS256, &rotated, &claims(41));
    let mut keys = signing_keys();
    keys.push(("rsa-2", Algorithm::RS256, rotated));
    *published.lock().unwrap() = jwks(&keys);
    assert_eq!(
        issue_with(&env, &env.base, coupon, &bearer(&token), json!({})).await,
        (201, "SUCCESS".into()),
        "the rotated-in key"
    );
    env.shutdown().await;
    handle.stop(false).await;
}

/// A user's issues and coupons answer to that user and to admins (the admin token, or a
/// token with the admin role); another user gets 403, a stranger 401.
#[actix_web::test]
async fn users_read_only_their_own_and_admins_read_all() {
    let env = TestEnv::start(1).await;
    let coupon = env.coupon_with_quantity(5).await;
    assert_eq!(env.issue(coupon, 1).await.0, 201);
    let secret = harness::JWT_SECRET.as_bytes();
    let admin_role = hs256(
        secret,
        &with(without(claims(1), "sub"), "roles", json!(["coupon-admin"])),
    );
    let routes = [
        format!("/api/v1/coupons/{coupon}/issues/1"),
        "/api/v1/users/1/coupons".to_owned(),
    ];
    for route in &routes {
        for (who, token, status) in [
            ("the user", Some(harness::user_token(1)), 200),
            ("another user", Some(harness::user_token(2)), 403),
            (
                "the admin token",
                Some(harness::ADMIN_TOKEN.to_owned()),
                200,
            ),
            ("an admin's JWT", Some(admin_role.clone()), 200),
            ("nobody", None, 401),
        ] {
            let mut request = env.client.get(env.url(route));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let mut response = request.send().await.unwrap();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert_eq!(
                response.status().as_u16(),
                status,
                "{who} reading {route}: {body}"
            );
        }
    }

    // Creating coupons: the admin role may, a user may not.
    let create = |token: String| {
        let env = &env;
        async move {
            env.client
                .post(env.url("/api/v1/coupons"))
                .bearer_auth(token)
                .send_json(&json!({ "name": "role", "totalQuantity": 1 }))
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(create(admin_role).await, 201);
    assert_eq!(create(harness::user_token(1)).await, 403);
    env.shutdown().await;
}

/// Behind a gateway: the user is the header's, and a request without it is refused.
#[actix_web::test]
async fn gateway_header_mode_takes_the_user_from_the_header() {
    let env = TestEnv::start(0).await;
    let coupon = env.coupon_with_quantity(5).await;
    let (base, _) = env
        .start_another_api(&[
            "--user-auth=gateway-header".into(),
            "--user-header=x-authenticated-user".into(),
            format!("--gateway-secret={GATEWAY_SECRET}"),
        ])
        .await;
    let as_user = |user: &str| {
        vec![
            ("x-authenticated-user", user.to_owned()),
            ("x-gateway-secret", GATEWAY_SECRET.to_owned()),
        ]
    };
    assert_eq!(
        issue_with(&env, &base, coupon, &as_user("5"), json!({})).await,
        (201, "SUCCESS".into())
    );
    assert_eq!(
        issue_with(&env, &base, coupon, &as_user("5"), json!({ "userId": 6 })).await,
        (403, "FORBIDDEN".into())
    );
    assert_eq!(
        issue_with(&env, &base, coupon, &as_user("bob"), json!({})).await,
        (401, "UNAUTHORIZED".into())
    );
    assert_eq!(
        issue_with(
            &env,
            &base,
            coupon,
            &bearer(&harness::user_token(7)),
            json!({})
        )
        .await,
        (401, "UNAUTHORIZED".into()),
        "a token means nothing here: the gateway decides"
    );
    env.shutdown().await;
}
