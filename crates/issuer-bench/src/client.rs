//! The bench's view of issuer-api: just the calls a user and an operator make.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use awc::{Client, Connector};
use serde_json::{Value, json};

use testkit::credentials::UserCredentials;

pub struct ApiClient {
    base: String,
    admin_token: String,
    users: UserCredentials,
    route: IssueRoute,
    client: Client,
}

/// Where issue requests go: the product's route, or one of the hand-built ceiling's
/// (`../shared/tools/ceiling`), which take the same body.
#[derive(Clone, Copy)]
pub enum IssueRoute {
    Product,
    /// `/full/{coupon}/issues`: admission and a produce awaiting the acknowledgement.
    CeilingFull,
    /// `/admit/{coupon}/issues`: admission only.
    CeilingAdmit,
}

impl ApiClient {
    /// No connection limit and no reuse preference: each concurrent user opens its own
    /// connection, as the seed's 5,000 browsers did.
    pub fn new(base: &str, admin_token: &str, users: UserCredentials) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            admin_token: admin_token.to_owned(),
            users,
            route: IssueRoute::Product,
            client: Client::builder()
                .connector(Connector::new().limit(0).timeout(Duration::from_secs(10)))
                .timeout(Duration::from_secs(30))
                .finish(),
        }
    }

    /// Keep-alive connections shared by at most `connections` requests at a time: the
    /// shape of a steady stream rather than a burst of new users.
    pub fn pooled(
        base: &str,
        admin_token: &str,
        users: UserCredentials,
        connections: usize,
    ) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            admin_token: admin_token.to_owned(),
            users,
            route: IssueRoute::Product,
            client: Client::builder()
                .connector(
                    Connector::new()
                        .limit(connections)
                        .timeout(Duration::from_secs(10)),
                )
                .timeout(Duration::from_secs(30))
                .finish(),
        }
    }

    /// The same client, sending its issue requests to `route`.
    pub fn on_route(self, route: IssueRoute) -> Self {
        Self { route, ..self }
    }

    /// Refuses to start a measurement against an API that is not up and ready; `ops` is
    /// the base URL of its operations listener (ISSUER_OPS_LISTEN).
    pub async fn wait_ready(&self, ops: &str, patience: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + patience;
        let url = format!("{}/readyz", ops.trim_end_matches('/'));
        loop {
            let last = match self.client.get(&url).send().await {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(mut response) => {
                    let body = response.body().await.unwrap_or_default();
                    format!("{}: {}", response.status(), String::from_utf8_lossy(&body))
                }
                Err(err) => err.to_string(),
            };
            if Instant::now() >= deadline {
                bail!(
                    "issuer-api at {} is not ready after {patience:?} ({last}); start it with `make run`",
                    self.base
                );
            }
            actix_rt::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Creates a coupon of `quantity` units in `buckets` buckets (1: today's keys).
    pub async fn create_coupon(
        &self,
        name: &str,
        quantity: i64,
        buckets: u16,
    ) -> anyhow::Result<i64> {
        let mut response = self
            .client
            .post(format!("{}/api/v1/coupons", self.base))
            .bearer_auth(&self.admin_token)
            .send_json(&json!({ "name": name, "totalQuantity": quantity, "buckets": buckets }))
            .await
            .map_err(|e| anyhow::anyhow!("cannot create a coupon: {e}"))?;
        let body: Value = response.json().await.context("unreadable coupon answer")?;
        if response.status().as_u16() != 201 {
            bail!("creating a coupon answered {}: {body}", response.status());
        }
        body["couponId"]
            .as_i64()
            .context("no couponId in the answer")
    }

    /// One issue request; returns the answer's kind (`SUCCESS`, `SOLD_OUT`, `HTTP 503`,
    /// `ERROR: …`) so every outcome is counted, none hidden.
    pub async fn issue(&self, coupon: i64, user: i64) -> String {
        match self.try_issue(coupon, user).await {
            Ok((_, kind)) => kind,
            Err(err) => format!("ERROR: {err}"),
        }
    }

    /// One issue request: the status and the answer's `result` (or `HTTP <status>`), or the
    /// transport error when no answer came (connection refused or reset, timeout).
    pub async fn try_issue(&self, coupon: i64, user: i64) -> Result<(u16, String), String> {
        let mut request = self.client.post(match self.route {
            IssueRoute::Product => format!("{}/api/v1/coupons/{coupon}/issues", self.base),
            IssueRoute::CeilingFull => format!("{}/full/{coupon}/issues", self.base),
            IssueRoute::CeilingAdmit => format!("{}/admit/{coupon}/issues", self.base),
        });
        for header in self.users.headers_for(user) {
            request = request.insert_header(header);
        }
        let mut response = request
            .send_json(&json!({ "userId": user }))
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let kind = match response.json::<Value>().await {
            Ok(body) => body["result"].as_str().map(str::to_owned),
            Err(_) => None,
        };
        Ok((status, kind.unwrap_or_else(|| format!("HTTP {status}"))))
    }
}
