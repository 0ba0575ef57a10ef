//! The alert rules and the dashboard against a real Prometheus (Debian's package,
//! which `make up` installs) scraping both services during a small run:
//! - `promtool check rules` and `promtool test rules` (deploy/prometheus/alerts_test.yml
//!   fires each alert on its series and keeps it quiet on the near misses);
//! - an OVER_QUANTITY injected through the real path (events beyond the quantity straight
//!   onto the topic, as a Redis that lost its state would let through) fires its alert;
//! - every metric the rules and the dashboard name is one the services expose, and every
//!   dashboard query is one Prometheus accepts.

// Helpers outside `#[test]` functions panic too: in a harness that is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use coupon_core::domain::{CouponId, UserId};
use coupon_core::event::IssueEvent;
use serde_json::{Value, json};
use testkit::harness::TestEnv;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn run(program: &str, args: &[&str], dir: &Path) {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|err| panic!("{program} cannot run ({err}): `make up` installs it"));
    assert!(
        output.status.success(),
        "{program} {args:?}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A Prometheus server of the test's own, stopped when dropped.
struct Prometheus {
    child: Child,
    base: String,
    _dir: tempfile_dir::Dir,
}

mod tempfile_dir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Prometheus {
    fn start(api: &str, worker: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("prometheus-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let rules = deploy()
            .join("prometheus/alerts.yml")
            .canonicalize()
            .unwrap();
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [\"{}\"]\n\
             scrape_configs:\n\
             - job_name: coupon-api\n  static_configs: [{{targets: [\"{api}\"]}}]\n\
             - job_name: coupon-worker\n  static_configs: [{{targets: [\"{worker}\"]}}]\n",
            rules.display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        // A port free a moment ago; Prometheus cannot report one it picked itself.
        let port = testkit::process::free_port().unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus cannot run: `make up` installs it");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: tempfile_dir::Dir(dir),
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn json_at(env: &TestEnv, url: &str) -> Option<Value> {
    let mut response = env.client.get(url).send().await.ok()?;
    serde_json::from_slice(&response.body().await.ok()?).ok()
}

/// Every `coupon_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(found) = text[at..].find("coupon_") {
        let start = at + found;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |n| start + n);
        if boundary {
            names.insert(text[start..end].to_owned());
        }
        at = end;
    }
    names
}

#[actix_web::test]
async fn alert_rules_fire_on_a_real_prometheus_and_the_dashboard_names_real_metrics() {
    let rules_dir = deploy().join("prometheus");
    run("promtool", &["check", "rules", "alerts.yml"], &rules_dir);
    run(
        "promtool",
        &["test", "rules", "alerts_test.yml"],
        &rules_dir,
    );

    let mut env = TestEnv::start(0).await;
    let worker = env.start_worker_serving_metrics().await;
    let coupon = env
        .create_coupon(json!({"name": "alerts", "totalQuantity": 3}))
        .await;
    for user in 1..=3 {
        assert_eq!(env.issue(coupon, user).await.0, 201);
    }
    let prometheus = Prometheus::start(
        env.base.trim_start_matches("http://"),
        worker.trim_start_matches("http://"),
    );
    // Two more winners than the quantity reach the topic: the worker's guard sets them
    // aside as OVER_QUANTITY, and the alert must fire.
    for user in 4..=5 {
        let event = IssueEvent::new(
            CouponId::new(coupon).unwrap(),
            UserId::new(user).unwrap(),
            Utc::now(),
        );
        env.redeliver(&event).await;
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    let firing = loop {
        let alerts = json_at(&env, &format!("{}/api/v1/alerts", prometheus.base)).await;
        let over = alerts.as_ref().and_then(|alerts| {
            alerts["data"]["alerts"]
                .as_array()?
                .iter()
                .find(|alert| {
                    alert["labels"]["alertname"] == "CouponOverQuantity"
                        && alert["state"] == "firing"
                })
                .cloned()
        });
        if let Some(over) = over {
            break over;
        }
        assert!(
            Instant::now() < deadline,
            "CouponOverQuantity never fired: {alerts:?}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(firing["labels"]["reason"], "OVER_QUANTITY", "{firing}");
    assert_eq!(firing["value"], "2e+00", "{firing}");

    // The first coupon sold out and settled, so it left the active set; one with stock
    // left keeps the per-coupon gauges in the scrape, as during a sale, and in buckets the
    // per-bucket ones.
    let open = env
        .create_coupon(json!({"name": "still selling", "totalQuantity": 10, "buckets": 2}))
        .await;
    assert_eq!(env.issue(open, 1).await.0, 201);
    env.scrape_until(
        &env.url("/metrics"),
        "per-coupon and per-bucket gauges for an open coupon",
        |text| text.contains("coupon_active_issued{") && text.contains("coupon_bucket_stock{"),
    )
    .await;

    // What the services expose now, after a run with a failure in it.
    let mut exposed = BTreeSet::new();
    for url in [env.url("/metrics"), format!("{worker}/metrics")] {
        let (status, text) = env.get_url(&url).await;
        assert_eq!(status, 200);
        exposed.extend(
            text.lines()
                .filter(|line| !line.starts_with('#'))
                .filter_map(|line| line.split(['{', ' ']).next())
                .map(str::to_owned),
        );
    }
    let dashboard_text =
        std::fs::read_to_string(deploy().join("grafana/dashboards/coupon-issuance.json")).unwrap();
    let rules_text = std::fs::read_to_string(rules_dir.join("alerts.yml")).unwrap();
    for (file, text) in [("dashboard", &dashboard_text), ("alert rules", &rules_text)] {
        let unknown: Vec<String> = metric_names(text).difference(&exposed).cloned().collect();
        assert!(
            unknown.is_empty(),
            "the {file} names metrics nobody exposes: {unknown:?}"
        );
    }
    let dashboard: Value = serde_json::from_str(&dashboard_text).unwrap();
    let queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| target["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(queries.len() > 10, "{queries:?}");
    for query in queries {
        let mut response = env
            .client
            .get(format!("{}/api/v1/query", prometheus.base))
            .query(&[("query", query.as_str())])
            .unwrap()
            .send()
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&response.body().await.unwrap()).unwrap();
        assert_eq!(body["status"], "success", "{query}: {body}");
    }
    env.shutdown().await;
}
