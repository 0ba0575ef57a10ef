//! The operator console (`issuer_api::console`) on the real services: its guards over plain
//! HTTP (where it is served, the session, CSRF, the role, the headers), and an operator's
//! whole sale in a real browser (Debian's headless chromium, through chromedriver).
//!
//! Set CONSOLE_SCREENSHOTS to a folder to keep the browser's screenshots there (the README's
//! come from `CONSOLE_SCREENSHOTS=docs/console`).

// A panic is exactly the failure report wanted here.
#![allow(clippy::unwrap_used)]

use std::rc::Rc;

use actix_web::http::header::{self, HeaderMap};
use coupon_core::db::schema::{coupon_issues, failed_events};
use coupon_core::domain::{CouponId, UserId};
use coupon_core::event::IssueEvent;
use diesel::{ExpressionMethods, QueryDsl};
use diesel_async::RunQueryDsl;
use issuer_bench::client::ApiClient;
use issuer_bench::sustained::{self, Load};
use serde_json::json;
use testkit::browser::Browser;
use testkit::credentials::UserCredentials;
use testkit::harness::{self, TestEnv};

/// Names and values: cookies, headers, a form's fields.
type Pairs<'a> = Vec<(&'a str, &'a str)>;

/// What the console answered: status, headers, body.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map_or("", |value| value.to_str().unwrap())
    }

    /// The whole `Set-Cookie` line for `name`.
    fn set_cookie(&self, name: &str) -> String {
        self.headers
            .get_all(header::SET_COOKIE)
            .map(|value| value.to_str().unwrap().to_owned())
            .find(|line| line.starts_with(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} cookie set: {:?}", self.headers))
    }

    /// The value of cookie `name` it set.
    fn cookie(&self, name: &str) -> String {
        let line = self.set_cookie(name);
        line[name.len() + 1..].split(';').next().unwrap().to_owned()
    }

    /// The CSRF token of the page's first form.
    fn csrf(&self) -> String {
        let field = r#"name="csrf" value=""#;
        let at = self.body.find(field).unwrap() + field.len();
        self.body[at..].split('"').next().unwrap().to_owned()
    }

    /// Refused: the sign-in page, or the refresh's way there.
    fn to_sign_in(&self) -> bool {
        (self.status, self.header("location")) == (303, "/console/sign-in")
            || (self.status, self.header("hx-redirect")) == (401, "/console/sign-in")
    }
}

/// A request to the console: `cookies` and `headers` sent, and a form posted if given.
async fn send_with(
    url: &str,
    cookies: &[(&str, &str)],
    headers: &[(&str, &str)],
    form: Option<&[(&str, &str)]>,
) -> Answer {
    let client = awc::Client::builder().disable_redirects().finish();
    let mut request = match form {
        Some(_) => client.post(url),
        None => client.get(url),
    };
    let cookie = cookies
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("; ");
    if !cookie.is_empty() {
        request = request.insert_header((header::COOKIE, cookie));
    }
    for (name, value) in headers {
        request = request.insert_header((*name, *value));
    }
    let mut response = match form {
        Some(form) => request.send_form(&form).await.unwrap(),
        None => request.send().await.unwrap(),
    };
    let body = response.body().await.unwrap();
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn send(url: &str, cookies: &[(&str, &str)], form: Option<&[(&str, &str)]>) -> Answer {
    send_with(url, cookies, &[], form).await
}

/// Signs in with `token` through the form; the answer to the form's post.
async fn sign_in(ops: &str, token: &str) -> Answer {
    let form = send(&format!("{ops}/console/sign-in"), &[], None).await;
    assert_eq!(form.status, 200, "{}", form.body);
    let cookie = form.cookie("console-sign-in");
    let csrf = form.csrf();
    send(
        &format!("{ops}/console/sign-in"),
        &[("console-sign-in", &cookie)],
        Some(&[("csrf", &csrf), ("token", token)]),
    )
    .await
}

/// A signed-in admin's session cookie and CSRF token.
async fn signed_in(ops: &str) -> (String, String) {
    let admin = sign_in(ops, harness::ADMIN_TOKEN).await;
    assert_eq!(admin.status, 303, "{}", admin.body);
    let session = admin.cookie("console-session");
    let page = send(
        &format!("{ops}/console/sales"),
        &[("console-session", &session)],
        None,
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.body);
    (session, page.csrf())
}

/// Everything an action could have changed: the coupon's settings and quantity, how many
/// coupons there are, the failed event's status.
async fn world(env: &TestEnv, coupon: i64, event: i64) -> String {
    let (status, body) = env.get(&format!("/api/v1/coupons/{coupon}")).await;
    assert_eq!(status, 200, "{body}");
    let coupons: i64 = coupon_core::db::schema::coupons::table
        .count()
        .get_result(&mut env.pg().await)
        .await
        .unwrap();
    let event: String = failed_events::table
        .find(event)
        .select(failed_events::status)
        .get_result(&mut env.pg().await)
        .await
        .unwrap();
    format!(
        "paused {} quantity {} ends {} coupons {coupons} event {event}",
        body["paused"], body["totalQuantity"], body["endsAt"]
    )
}

/// Whether the page has anything the CSP would block: inline style or script, or an
/// event handler attribute.
fn inline_code(body: &str) -> Option<&str> {
    if body.contains("style=") || body.contains("<style") {
        return Some("inline style");
    }
    if body.match_indices("<script").any(|(at, _)| {
        let tag = &body[at..at + body[at..].find('>').unwrap()];
        !tag.contains(" src=")
    }) {
        return Some("inline script");
    }
    let handler = body.match_indices(" on").any(|(at, _)| {
        let name: String = body[at + 1..]
            .chars()
            .take_while(char::is_ascii_alphabetic)
            .collect();
        name.len() > 2 && body[at + 1 + name.len()..].starts_with('=')
    });
    handler.then_some("an event handler attribute")
}

#[actix_web::test]
async fn the_console_is_served_on_the_operations_listener_only() {
    let env = TestEnv::start(0).await;
    let (public, ops) = env
        .start_another_api(&["--ops-listen=127.0.0.1:0".into()])
        .await;
    let ops = ops.unwrap();
    assert_eq!(
        send(&format!("{ops}/console/sign-in"), &[], None)
            .await
            .status,
        200
    );
    assert_eq!(
        send(&format!("{public}/console/sign-in"), &[], None)
            .await
            .status,
        404
    );
    // Not even when the operations routes are served beside the API.
    let (beside, none) = env.start_another_api(&["--ops-listen=public".into()]).await;
    assert!(none.is_none());
    assert_eq!(
        send(&format!("{beside}/console/sign-in"), &[], None)
            .await
            .status,
        404
    );
    assert_eq!(
        send(&format!("{beside}/metrics"), &[], None).await.status,
        200
    );
    // Nor at all when turned off.
    let (_, off) = env
        .start_another_api(&["--ops-listen=127.0.0.1:0".into(), "--console=off".into()])
        .await;
    let off = off.unwrap();
    assert_eq!(
        send(&format!("{off}/console/sign-in"), &[], None)
            .await
            .status,
        404
    );
    assert_eq!(send(&format!("{off}/healthz"), &[], None).await.status, 200);
}

#[actix_web::test]
async fn signing_in_takes_the_form_token_a_credential_and_the_admin_role() {
    let env = TestEnv::start(0).await;
    let (_, ops) = env
        .start_another_api(&["--ops-listen=127.0.0.1:0".into()])
        .await;
    let ops = ops.unwrap();
    let form = send(&format!("{ops}/console/sign-in"), &[], None).await;
    let set = form.set_cookie("console-sign-in");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(set.contains(attribute), "{set}");
    }
    let (cookie, csrf) = (form.cookie("console-sign-in"), form.csrf());
    let url = format!("{ops}/console/sign-in");
    let admin_token = [("csrf", csrf.as_str()), ("token", harness::ADMIN_TOKEN)];
    let no_session = |answer: &Answer| {
        !answer
            .headers
            .get_all(header::SET_COOKIE)
            .any(|line| line.to_str().unwrap().starts_with("console-session="))
    };
    for (why, cookies, headers, form) in [
        ("no sign-in cookie", vec![], vec![], admin_token.to_vec()),
        (
            "a forged form token",
            vec![("console-sign-in", cookie.as_str())],
            vec![],
            vec![("csrf", "forged"), ("token", harness::ADMIN_TOKEN)],
        ),
        (
            "posted from another site",
            vec![("console-sign-in", cookie.as_str())],
            vec![("sec-fetch-site", "cross-site")],
            admin_token.to_vec(),
        ),
    ] {
        let refused = send_with(&url, &cookies, &headers, Some(&form)).await;
        assert_eq!(refused.status, 403, "{why}: {}", refused.body);
        assert!(no_session(&refused), "{why}");
    }

    let wrong = sign_in(&ops, "not-the-admin-token").await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(no_session(&wrong));
    let user = sign_in(&ops, &harness::user_token(7)).await;
    assert_eq!(
        user.status, 403,
        "a user's token is no admin's: {}",
        user.body
    );
    assert!(user.body.contains("for admins"), "{}", user.body);

    let admin = sign_in(&ops, harness::ADMIN_TOKEN).await;
    assert_eq!(
        (admin.status, admin.header("location")),
        (303, "/console/sales"),
        "{}",
        admin.body
    );
    let set = admin.set_cookie("console-session");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP over loopback: {set}");

    // A session ends when the admin JWT it was opened with expires.
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let exp = unix.as_secs() + 2;
    let claims = json!({
        "sub": "1",
        "iss": testkit::credentials::DEV_ISSUER,
        "aud": testkit::credentials::DEV_AUDIENCE,
        "exp": exp,
        "roles": ["coupon-admin"],
    });
    let key = jsonwebtoken::EncodingKey::from_secret(harness::JWT_SECRET.as_bytes()).unwrap();
    let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
    let short = sign_in(&ops, &token).await;
    assert_eq!(short.status, 303, "{}", short.body);
    let cookie = short.cookie("console-session");
    let sales = format!("{ops}/console/sales");
    let page = send(&sales, &[("console-session", &cookie)], None).await;
    assert_eq!(page.status, 200, "before the JWT's expiry");
    let expired = std::time::UNIX_EPOCH + std::time::Duration::from_secs(exp + 1);
    let wait = expired
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    actix_web::rt::time::sleep(wait).await;
    let page = send(&sales, &[("console-session", &cookie)], None).await;
    assert!(page.to_sign_in(), "after the JWT's expiry: {}", page.status);

    // Failed sign-ins are throttled per address (the test's limit is the default's).
    let mut throttled = None;
    for _ in 0..50 {
        let answer = sign_in(&ops, "guess").await;
        if answer.status == 429 {
            throttled = Some(answer);
            break;
        }
        assert_eq!(answer.status, 401, "{}", answer.body);
    }
    let throttled = throttled.expect("failed sign-ins never throttled");
    assert!(!throttled.header("retry-after").is_empty());

    // Behind a TLS proxy on the same host, the cookie is Secure all the same.
    let (_, proxied) = env
        .start_another_api(&[
            "--ops-listen=127.0.0.1:0".into(),
            "--console-secure-cookie=always".into(),
        ])
        .await;
    let admin = sign_in(&proxied.unwrap(), harness::ADMIN_TOKEN).await;
    assert!(admin.set_cookie("console-session").contains("Secure"));
}

#[actix_web::test]
async fn every_page_needs_a_session_and_every_action_its_csrf_token() {
    let env = TestEnv::start(0).await;
    let (_, ops) = env
        .start_another_api(&["--ops-listen=127.0.0.1:0".into()])
        .await;
    let ops = ops.unwrap();
    let ends = chrono::Utc::now() + chrono::Duration::hours(1);
    let coupon = env
        .create_coupon(json!({ "name": "guarded", "totalQuantity": 10, "endsAt": ends }))
        .await;
    let event = failed(&env, coupon, 100).await;
    let (session, csrf) = signed_in(&ops).await;
    let (other_session, other_csrf) = signed_in(&ops).await;
    assert_ne!(csrf, other_csrf, "each session has its own token");

    // Pages: without a session, the sign-in (a refresh is sent there whole); with one, a
    // page with nothing the CSP would block, under the console's headers.
    let pages = [
        ("/console", false),
        ("/console/sales", false),
        ("/console/sales/new", false),
        (&*format!("/console/sales/{coupon}"), false),
        ("/console/failed-events", false),
        (&*format!("/console/failed-events?coupon={coupon}"), false),
        ("/console/sales/rows", true),
        (&*format!("/console/sales/{coupon}/live"), true),
    ];
    for (path, refresh) in pages {
        let url = format!("{ops}{path}");
        let hx: &[(&str, &str)] = if refresh {
            &[("hx-request", "true")]
        } else {
            &[]
        };
        for cookies in [vec![], vec![("console-session", "made-up")]] {
            let answer = send_with(&url, &cookies, hx, None).await;
            assert!(
                answer.to_sign_in(),
                "{path} {cookies:?}: {} {:?}",
                answer.status,
                answer.headers
            );
            assert!(!answer.body.contains("coupon"), "{path}: nothing shown");
        }
        let answer = send_with(&url, &[("console-session", &session)], hx, None).await;
        if path == "/console" {
            assert_eq!(
                (answer.status, answer.header("location")),
                (303, "/console/sales")
            );
            continue;
        }
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        assert_eq!(inline_code(&answer.body), None, "{path}");
        assert!(
            answer
                .header("content-security-policy")
                .contains("script-src 'self'")
        );
        assert!(!answer.header("content-security-policy").contains("unsafe"));
        assert_eq!(answer.header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(answer.header("referrer-policy"), "no-referrer", "{path}");
        assert_eq!(answer.header("cache-control"), "no-store", "{path}");
    }

    // Actions: without the session, or its own token, or from another site: 403, and
    // nothing done.
    let actions = [
        (
            "/console/sales".to_owned(),
            vec![("name", "Forged"), ("totalQuantity", "5")],
        ),
        (
            format!("/console/sales/{coupon}/paused"),
            vec![("paused", "true")],
        ),
        (
            format!("/console/sales/{coupon}/quantity"),
            vec![("totalQuantity", "20")],
        ),
        (format!("/console/sales/{coupon}/end"), vec![("noEnd", "1")]),
        (format!("/console/failed-events/{event}/replay"), vec![]),
        (format!("/console/failed-events/{event}/discard"), vec![]),
        ("/console/sign-out".to_owned(), vec![]),
    ];
    let before = world(&env, coupon, event).await;
    for (path, fields) in &actions {
        let url = format!("{ops}{path}");
        let with = |token: &'static str| -> Vec<(&str, &str)> {
            let token = match token {
                "own" => csrf.as_str(),
                "other" => other_csrf.as_str(),
                _ => "0000",
            };
            fields.iter().copied().chain([("csrf", token)]).collect()
        };
        let own = vec![("console-session", session.as_str())];
        // (why, cookies, headers, form)
        let cases: Vec<(&str, Pairs<'_>, Pairs<'_>, Pairs<'_>)> = vec![
            ("no session", vec![], vec![], with("own")),
            (
                "a made-up session",
                vec![("console-session", "made-up")],
                vec![],
                with("own"),
            ),
            ("no token", own.clone(), vec![], fields.clone()),
            ("a wrong token", own.clone(), vec![], with("wrong")),
            (
                "another session's token",
                own.clone(),
                vec![],
                with("other"),
            ),
            (
                "from another site",
                own.clone(),
                vec![("sec-fetch-site", "cross-site")],
                with("own"),
            ),
        ];
        for (why, cookies, headers, form) in cases {
            let answer = send_with(&url, &cookies, &headers, Some(&form)).await;
            let no_live_session = <[_]>::first(&cookies).is_none_or(|c| c.1 == "made-up");
            if path == "/console/sign-out" && no_live_session {
                // Without a live session there is nothing to end: the cookie is cleared.
                assert_eq!(answer.status, 303, "{path}, {why}");
            } else {
                assert_eq!(answer.status, 403, "{path}, {why}: {}", answer.body);
            }
            assert_eq!(
                world(&env, coupon, event).await,
                before,
                "{path}, {why}: done anyway"
            );
            let still = send(
                &format!("{ops}/console/sales"),
                &[("console-session", &session)],
                None,
            )
            .await;
            assert_eq!(still.status, 200, "{path}, {why}: the session ended");
        }
    }

    // With both, each is done (and sign-out ends the session for good). The discard of
    // the event just replayed into a row is refused as the API refuses it (409), and said
    // on the page the operator goes back to.
    for (path, fields) in &actions {
        let form: Vec<(&str, &str)> = fields
            .iter()
            .copied()
            .chain([("csrf", csrf.as_str())])
            .collect();
        let answer = send(
            &format!("{ops}{path}"),
            &[("console-session", &session)],
            Some(&form),
        )
        .await;
        assert_eq!(answer.status, 303, "{path}: {}", answer.body);
        if path.ends_with("/discard") {
            let list = send(
                &format!("{ops}{}", answer.header("location")),
                &[("console-session", &session)],
                None,
            )
            .await;
            assert!(
                list.body.contains(r#"class="error""#) && list.body.contains("nothing to discard"),
                "{}",
                list.body
            );
        }
    }
    let after = world(&env, coupon, event).await;
    assert!(
        after.starts_with("paused true quantity 20 ends null"),
        "{after}"
    );
    assert!(after.ends_with("event RECOVERED"), "{after}");
    let gone = send(
        &format!("{ops}/console/sales"),
        &[("console-session", &session)],
        None,
    )
    .await;
    assert!(gone.to_sign_in(), "signed out");
    let other = send(
        &format!("{ops}/console/sales"),
        &[("console-session", &other_session)],
        None,
    )
    .await;
    assert_eq!(other.status, 200, "another session stays");
}

/// A failed event's row as a worker writes it; its id.
async fn failed(env: &TestEnv, coupon: i64, user: i64) -> i64 {
    let payload = IssueEvent::new(
        CouponId::new(coupon).unwrap(),
        UserId::new(user).unwrap(),
        chrono::Utc::now(),
    )
    .encode();
    diesel::insert_into(failed_events::table)
        .values((
            failed_events::reason.eq("REJECTED"),
            failed_events::detail.eq("set aside by the test"),
            failed_events::source.eq(format!("test:{}", uuid::Uuid::new_v4())),
            failed_events::coupon_id.eq(coupon),
            failed_events::user_id.eq(user),
            failed_events::payload.eq(payload),
            failed_events::status.eq("ABANDONED"),
        ))
        .returning(failed_events::id)
        .get_result(&mut env.pg().await)
        .await
        .unwrap()
}

/// Issues to each of `users`; the statuses answered.
async fn issue_all(env: &TestEnv, coupon: i64, users: std::ops::RangeInclusive<i64>) -> Vec<u16> {
    let answers =
        futures_util::future::join_all(users.map(|user| env.issue_retrying(coupon, user))).await;
    answers.into_iter().map(|(status, _)| status).collect()
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[actix_web::test]
async fn an_operator_runs_a_sale_in_a_real_browser() {
    let env = TestEnv::start(1).await;
    let (_, ops) = env
        .start_another_api(&["--ops-listen=127.0.0.1:0".into()])
        .await;
    let ops = ops.unwrap();
    let shots = std::env::var_os("CONSOLE_SCREENSHOTS").map(std::path::PathBuf::from);
    let browser = Browser::start(1280, 800).await.unwrap();
    let shoot = async |name: &str| {
        if let Some(dir) = &shots {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(name), browser.screenshot().await.unwrap()).unwrap();
        }
    };

    // Sign in.
    browser.goto(&format!("{ops}/console")).await.unwrap();
    assert!(browser.url().await.unwrap().ends_with("/console/sign-in"));
    browser.fill("#token", harness::ADMIN_TOKEN).await.unwrap();
    browser.click("button[type=submit]").await.unwrap();
    browser
        .wait_for_text("h1", "signed in", |t| t == "Sales")
        .await
        .unwrap();
    let cookie = browser.cookie("console-session").await.unwrap();
    assert_eq!(
        (cookie["httpOnly"].as_bool(), cookie["sameSite"].as_str()),
        (Some(true), Some("Strict"))
    );

    // Create a sale; the API's validation and message on a bad one.
    browser
        .goto(&format!("{ops}/console/sales/new"))
        .await
        .unwrap();
    browser.fill("#name", "Browser sale").await.unwrap();
    browser.fill("#totalQuantity", "0").await.unwrap();
    browser.click("#create").await.unwrap();
    browser
        .wait_for_text(".error", "the API's message", |t| {
            t.contains("totalQuantity must be an integer from 1")
        })
        .await
        .unwrap();
    let quantity = browser.find("#totalQuantity").await.unwrap();
    quantity.clear().await.unwrap();
    quantity.type_text("10").await.unwrap();
    browser.click("#create").await.unwrap();
    browser
        .wait_for_text(".notice", "created", |t| t.contains("created"))
        .await
        .unwrap();
    let url = browser.url().await.unwrap();
    let coupon: i64 = url.rsplit('/').next().unwrap().parse().unwrap();

    // issuer-bench sends load (six users, two a second); the live part moves while it runs,
    // without a reload.
    let bench = Rc::new(ApiClient::new(
        &env.base,
        harness::ADMIN_TOKEN,
        UserCredentials::jwt(harness::JWT_SECRET).unwrap(),
    ));
    let load =
        actix_web::rt::spawn(
            async move { sustained::run(bench, &[coupon], 6, Load::Rate(2.0)).await },
        );
    browser
        .wait_for_text("#issued", "issued in Redis, under load", |t| {
            matches!(t, "1" | "2" | "3" | "4" | "5")
        })
        .await
        .unwrap();
    assert!(!load.is_finished(), "the counter moved only after the load");
    let report = load.await.unwrap().unwrap();
    assert_eq!(
        report.answers.get("SUCCESS"),
        Some(&6),
        "{:?}",
        report.answers
    );
    browser
        .wait_for_text("#issued", "issued in Redis", |t| t == "6")
        .await
        .unwrap();
    browser
        .wait_for_text("#rows", "rows in PostgreSQL", |t| t == "6")
        .await
        .unwrap();
    browser
        .wait_for_text("#remaining", "remaining", |t| t == "4")
        .await
        .unwrap();
    shoot("sale.png").await;

    // Pause: users are refused; resume: admitted again.
    browser.click("#pause").await.unwrap();
    browser
        .wait_for_text(".notice", "paused", |t| t.contains("Admission paused"))
        .await
        .unwrap();
    let (status, body) = env.issue(coupon, 7).await;
    assert_eq!((status, &body["result"]), (403, &json!("PAUSED")), "{body}");
    browser.click("#resume").await.unwrap();
    browser
        .wait_for_text(".notice", "resumed", |t| t.contains("Admission resumed"))
        .await
        .unwrap();
    assert_eq!(env.issue(coupon, 7).await.0, 201);

    // Raise the quantity by 2: exactly 2 more are admitted.
    browser.fill("#totalQuantity", "12").await.unwrap();
    browser.click("#raise").await.unwrap();
    browser
        .wait_for_text(".notice", "raised", |t| t.contains("Quantity raised to 12"))
        .await
        .unwrap();
    browser
        .wait_for_text("#quantity", "the new quantity", |t| t == "12")
        .await
        .unwrap();
    let statuses = issue_all(&env, coupon, 8..=20).await;
    assert_eq!(
        (count(&statuses, 201), count(&statuses, 410)),
        (5, 8),
        "{statuses:?}"
    );
    browser
        .wait_for_text("#rows", "every 201 a row", |t| t == "12")
        .await
        .unwrap();

    // The list shows it sold out.
    browser.goto(&format!("{ops}/console/sales")).await.unwrap();
    browser
        .wait_for_text("#sales", "the list", |t| {
            t.contains("Browser sale") && t.contains("sold-out")
        })
        .await
        .unwrap();
    shoot("sales.png").await;

    // Failed events: one replayed into a row, one discarded, each recorded with who.
    let other = env.coupon_with_quantity(10).await;
    let replayed = failed(&env, other, 100).await;
    let discarded = failed(&env, other, 101).await;
    browser
        .goto(&format!("{ops}/console/failed-events?coupon={other}"))
        .await
        .unwrap();
    for (id, action, done) in [
        (replayed, "replay", "RECOVERED"),
        (discarded, "discard", "discarded"),
    ] {
        // Each goes back to the list narrowed to the coupon, with what it did.
        let button = format!("#failed-event-{id} form[action$={action}] button");
        browser.click(&button).await.unwrap();
        browser
            .wait_for_text(".notice", action, |t| t.contains(done))
            .await
            .unwrap();
        assert!(
            browser
                .url()
                .await
                .unwrap()
                .ends_with(&format!("?coupon={other}"))
        );
    }
    shoot("failed-events.png").await;
    let rows: Vec<(i64, String, Option<String>)> = failed_events::table
        .filter(failed_events::id.eq_any([replayed, discarded]))
        .order(failed_events::id)
        .select((
            failed_events::id,
            failed_events::status,
            failed_events::resolved_by,
        ))
        .load(&mut env.pg().await)
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![
            (
                replayed,
                "RECOVERED".to_owned(),
                Some("the admin token".to_owned())
            ),
            (
                discarded,
                "DISCARDED".to_owned(),
                Some("the admin token".to_owned())
            ),
        ]
    );
    let holders: Vec<i64> = coupon_issues::table
        .filter(coupon_issues::coupon_id.eq(other))
        .select(coupon_issues::user_id)
        .load(&mut env.pg().await)
        .await
        .unwrap();
    assert_eq!(holders, vec![100], "the replayed event is a row");

    // An end moved: here, removed.
    let ends = chrono::Utc::now() + chrono::Duration::hours(1);
    let ending = env
        .create_coupon(json!({ "name": "Ending sale", "totalQuantity": 5, "endsAt": ends }))
        .await;
    browser
        .goto(&format!("{ops}/console/sales/{ending}"))
        .await
        .unwrap();
    browser.click("input[name=noEnd]").await.unwrap();
    browser.click("#move-end").await.unwrap();
    browser
        .wait_for_text(".notice", "the end moved", |t| {
            t.contains("The end is now no end")
        })
        .await
        .unwrap();
    let (_, read) = env.get(&format!("/api/v1/coupons/{ending}")).await;
    assert_eq!(read["endsAt"], serde_json::Value::Null, "{read}");

    // Readable on a phone-sized window.
    browser.resize(390, 844).await.unwrap();
    browser
        .goto(&format!("{ops}/console/sales/{coupon}"))
        .await
        .unwrap();
    browser
        .wait_for_text("#issued", "on a phone", |t| t == "12")
        .await
        .unwrap();
    shoot("sale-phone.png").await;
    browser.resize(1280, 800).await.unwrap();

    // Nothing the pages did was refused by the CSP (htmx injects no style, evaluates
    // nothing), and no page failed to load a part.
    // (The one 400 logged is the refused form's, above.)
    let errors = browser.console_errors().await.unwrap();
    let unexpected: Vec<&String> = errors
        .iter()
        .filter(|e| !e.contains("/console/sales - Failed to load resource: the server responded with a status of 400"))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:#?}");

    // Sign out: the pages lead to the sign-in again.
    browser.click("#sign-out").await.unwrap();
    browser.goto(&format!("{ops}/console/sales")).await.unwrap();
    assert!(browser.url().await.unwrap().ends_with("/console/sign-in"));
    browser.quit().await;
}
