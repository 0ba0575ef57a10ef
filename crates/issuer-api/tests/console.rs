//! The operator console (`issuer_api::console`) on the real services: its guards over plain
//! HTTP (where it is served, the session, CSRF, the role, the headers), and an operator's
//! whole sale in a real browser (Debian's headless chromium, through chromedriver).
//!
//! Set CONSOLE_SCREENSHOTS to a folder to keep the browser's screenshots there (the README's
//! come from `CONSOLE_SCREENSHOTS=docs/console`).

// A panic is exactly the failure report wanted here.
#![allow(clippy::unwrap_used)]

use actix_web::http::header;
use coupon_core::db::schema::{coupon_issues, failed_events};
use coupon_core::domain::{CouponId, UserId};
use coupon_core::event::IssueEvent;
use diesel::{ExpressionMethods, QueryDsl};
use diesel_async::RunQueryDsl;
use serde_json::json;
use testkit::browser::Browser;
use testkit::harness::{self, TestEnv};

/// What the console answered: status, its `Location`, its `Set-Cookie`s and its body.
struct Answer {
    status: u16,
    location: String,
    cookies: Vec<String>,
    csp: String,
    body: String,
}

impl Answer {
    /// The value of cookie `name` it set.
    fn cookie(&self, name: &str) -> String {
        let set = self.set_cookie(name);
        set[name.len() + 1..].split(';').next().unwrap().to_owned()
    }

    /// The whole `Set-Cookie` line for `name`.
    fn set_cookie(&self, name: &str) -> &str {
        self.cookies
            .iter()
            .find(|c| c.starts_with(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} cookie in {:?}", self.cookies))
    }

    /// The CSRF token of the page's first form.
    fn csrf(&self) -> String {
        let at = self.body.find(r#"name="csrf" value=""#).unwrap() + r#"name="csrf" value=""#.len();
        self.body[at..].split('"').next().unwrap().to_owned()
    }
}

async fn send(url: &str, cookies: &[(&str, &str)], form: Option<&[(&str, &str)]>) -> Answer {
    let client = awc::Client::builder().disable_redirects().finish();
    let request = match form {
        Some(_) => client.post(url),
        None => client.get(url),
    };
    let cookie = cookies
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("; ");
    let request = if cookie.is_empty() {
        request
    } else {
        request.insert_header((header::COOKIE, cookie))
    };
    let mut response = match form {
        Some(form) => request.send_form(&form).await.unwrap(),
        None => request.send().await.unwrap(),
    };
    let text = |name| {
        response
            .headers()
            .get(name)
            .map(|v: &header::HeaderValue| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (location, csp) = (
        text(header::LOCATION),
        text(header::CONTENT_SECURITY_POLICY),
    );
    let cookies = response
        .headers()
        .get_all(header::SET_COOKIE)
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let body = response.body().await.unwrap();
    Answer {
        status: response.status().as_u16(),
        location,
        cookies,
        csp,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
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

async fn paused(env: &TestEnv, coupon: i64) -> bool {
    let (status, body) = env.get(&format!("/api/v1/coupons/{coupon}")).await;
    assert_eq!(status, 200, "{body}");
    body["paused"].as_bool().unwrap()
}

#[actix_web::test]
async fn the_console_is_guarded_by_session_csrf_role_and_headers() {
    let env = TestEnv::start(0).await;
    let (public, ops) = env
        .start_another_api(&["--ops-listen=127.0.0.1:0".into()])
        .await;
    let ops = ops.unwrap();

    // Only on the operations listener; never on the public one, even when the operations
    // routes are served there; and not at all when turned off.
    assert_eq!(
        send(&format!("{public}/console/sign-in"), &[], None)
            .await
            .status,
        404
    );
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

    // The headers: no inline script or style, no framing.
    let form = send(&format!("{ops}/console/sign-in"), &[], None).await;
    assert!(form.csp.contains("script-src 'self'"), "{}", form.csp);
    assert!(form.csp.contains("frame-ancestors 'none'"), "{}", form.csp);
    assert!(!form.csp.contains("unsafe"), "{}", form.csp);
    let htmx = send(
        &format!("{ops}/console/static/htmx-2.0.11.min.js"),
        &[],
        None,
    )
    .await;
    assert_eq!(htmx.status, 200);
    assert!(
        !form.body.contains("style=") && !form.body.contains("<style"),
        "no inline style"
    );

    // A page without a session leads to the sign-in.
    let page = send(&format!("{ops}/console/sales"), &[], None).await;
    assert_eq!(
        (page.status, page.location.as_str()),
        (303, "/console/sign-in")
    );

    // Sign-in: its own form token, a credential, the admin role.
    let cookie = form.cookie("console-sign-in");
    let refused = send(
        &format!("{ops}/console/sign-in"),
        &[],
        Some(&[("csrf", &form.csrf()), ("token", harness::ADMIN_TOKEN)]),
    )
    .await;
    assert_eq!(refused.status, 403, "no sign-in cookie: {}", refused.body);
    let refused = send(
        &format!("{ops}/console/sign-in"),
        &[("console-sign-in", &cookie)],
        Some(&[("csrf", "forged"), ("token", harness::ADMIN_TOKEN)]),
    )
    .await;
    assert_eq!(refused.status, 403, "a forged form token: {}", refused.body);
    let wrong = sign_in(&ops, "not-the-admin-token").await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    let user = sign_in(&ops, &harness::user_token(7)).await;
    assert_eq!(
        user.status, 403,
        "a user's token is no admin's: {}",
        user.body
    );
    assert!(user.body.contains("for admins"), "{}", user.body);
    let admin = sign_in(&ops, harness::ADMIN_TOKEN).await;
    assert_eq!(
        (admin.status, admin.location.as_str()),
        (303, "/console/sales"),
        "{}",
        admin.body
    );
    let set = admin.set_cookie("console-session");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP over loopback: {set}");
    let session = admin.cookie("console-session");
    let sales = send(
        &format!("{ops}/console/sales"),
        &[("console-session", &session)],
        None,
    )
    .await;
    assert_eq!(sales.status, 200, "{}", sales.body);
    let csrf = sales.csrf();

    // An action needs the session and its CSRF token; refused, it does nothing.
    let coupon = env.coupon_with_quantity(10).await;
    let pause = format!("{ops}/console/sales/{coupon}/paused");
    for (cookies, form, why) in [
        (
            vec![],
            vec![("csrf", csrf.as_str()), ("paused", "true")],
            "no session",
        ),
        (
            vec![("console-session", session.as_str())],
            vec![("paused", "true")],
            "no CSRF token",
        ),
        (
            vec![("console-session", session.as_str())],
            vec![("csrf", "0000"), ("paused", "true")],
            "a wrong CSRF token",
        ),
        (
            vec![("console-session", "made-up")],
            vec![("csrf", csrf.as_str()), ("paused", "true")],
            "a made-up session",
        ),
    ] {
        let answer = send(&pause, &cookies, Some(&form)).await;
        assert_eq!(answer.status, 403, "{why}: {}", answer.body);
        assert!(!paused(&env, coupon).await, "{why}: paused anyway");
    }
    let done = send(
        &pause,
        &[("console-session", &session)],
        Some(&[("csrf", &csrf), ("paused", "true")]),
    )
    .await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert!(paused(&env, coupon).await);

    // Sign-out ends the session for good.
    let out = send(
        &format!("{ops}/console/sign-out"),
        &[("console-session", &session)],
        Some(&[("csrf", &csrf)]),
    )
    .await;
    assert_eq!(out.status, 303, "{}", out.body);
    let page = send(
        &format!("{ops}/console/sales"),
        &[("console-session", &session)],
        None,
    )
    .await;
    assert_eq!(
        (page.status, page.location.as_str()),
        (303, "/console/sign-in")
    );

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
    browser
        .find("#token")
        .await
        .unwrap()
        .type_text(harness::ADMIN_TOKEN)
        .await
        .unwrap();
    browser
        .find("button[type=submit]")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
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
    browser
        .find("#name")
        .await
        .unwrap()
        .type_text("Browser sale")
        .await
        .unwrap();
    browser
        .find("#totalQuantity")
        .await
        .unwrap()
        .type_text("0")
        .await
        .unwrap();
    browser
        .find("#create")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_for_text(".error", "the API's message", |t| {
            t.contains("totalQuantity must be an integer from 1")
        })
        .await
        .unwrap();
    let quantity = browser.find("#totalQuantity").await.unwrap();
    quantity.clear().await.unwrap();
    quantity.type_text("10").await.unwrap();
    browser
        .find("#create")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_for_text(".notice", "created", |t| t.contains("created"))
        .await
        .unwrap();
    let url = browser.url().await.unwrap();
    let coupon: i64 = url.rsplit('/').next().unwrap().parse().unwrap();

    // Load; the live part moves without a reload.
    let statuses = issue_all(&env, coupon, 1..=6).await;
    assert_eq!(count(&statuses, 201), 6, "{statuses:?}");
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
    browser.find("#pause").await.unwrap().click().await.unwrap();
    browser
        .wait_for_text(".notice", "paused", |t| t.contains("Admission paused"))
        .await
        .unwrap();
    let (status, body) = env.issue(coupon, 7).await;
    assert_eq!((status, &body["result"]), (403, &json!("PAUSED")), "{body}");
    browser
        .find("#resume")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_for_text(".notice", "resumed", |t| t.contains("Admission resumed"))
        .await
        .unwrap();
    assert_eq!(env.issue(coupon, 7).await.0, 201);

    // Raise the quantity by 2: exactly 2 more are admitted.
    browser
        .find("#totalQuantity")
        .await
        .unwrap()
        .type_text("12")
        .await
        .unwrap();
    browser.find("#raise").await.unwrap().click().await.unwrap();
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
        .wait_for_text(&format!("#sales"), "the list", |t| {
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
    browser
        .find(&format!(
            "#failed-event-{replayed} form[action$=replay] button"
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_for_text(".notice", "replayed", |t| t.contains("RECOVERED"))
        .await
        .unwrap();
    browser
        .goto(&format!("{ops}/console/failed-events?coupon={other}"))
        .await
        .unwrap();
    browser
        .find(&format!(
            "#failed-event-{discarded} form[action$=discard] button"
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_for_text(".notice", "discarded", |t| t.contains("discarded"))
        .await
        .unwrap();
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

    // Sign out: the pages lead to the sign-in again.
    browser
        .find("#sign-out")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.goto(&format!("{ops}/console/sales")).await.unwrap();
    assert!(browser.url().await.unwrap().ends_with("/console/sign-in"));
    browser.quit().await;
}
