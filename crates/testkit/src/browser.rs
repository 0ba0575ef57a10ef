//! A real browser for the console's tests: Debian's headless `chromium`, driven through
//! `chromedriver` (package `chromium-driver`, installed by `make up`) over the W3C WebDriver
//! protocol.
//!
//! The protocol is a handful of JSON calls over HTTP, spoken here with actix's own client:
//! a WebDriver crate (fantoccini, thirtyfour) would bring hyper or reqwest, a second HTTP
//! stack in the build for the dozen calls below.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use serde_json::{Value, json};

use crate::process::{Service, free_port};

/// The key under which WebDriver names an element (W3C WebDriver, "Elements").
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long `wait_for_text` and `wait_for_url` wait.
const PATIENCE: Duration = Duration::from_secs(20);

pub struct Browser {
    client: awc::Client,
    /// The driver's session URL.
    session: String,
    // Last: dropped after the session's end is sent.
    _driver: Service,
}

/// An element of the current page.
pub struct Element<'b> {
    browser: &'b Browser,
    id: String,
}

impl Browser {
    /// Starts a chromedriver and a headless chromium with a window of `width` × `height`.
    pub async fn start(width: u32, height: u32) -> anyhow::Result<Browser> {
        let port = free_port()?;
        let log = std::env::temp_dir().join(format!("chromedriver-{port}.log"));
        let driver = Service::spawn(
            "chromedriver",
            Path::new("chromedriver"),
            &[&format!("--port={port}")],
            &[],
            &std::env::temp_dir(),
            &log,
        )
        .context("chromedriver: `make up` installs Debian's chromium-driver")?;
        let base = format!("http://127.0.0.1:{port}");
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(60))
            .finish();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let ready = match client.get(format!("{base}/status")).send().await {
                Ok(mut response) => response
                    .json::<Value>()
                    .await
                    .is_ok_and(|status| status["value"]["ready"] == true),
                Err(_) => false,
            };
            if ready {
                break;
            }
            if Instant::now() > deadline {
                bail!("chromedriver did not start: see {}", log.display());
            }
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // The page's console, for `console_errors` (a CSP violation is logged there).
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    format!("--window-size={width},{height}"),
                ],
            },
        }}});
        let created = call(
            &client,
            awc::http::Method::POST,
            &format!("{base}/session"),
            Some(capabilities),
        )
        .await
        .context("chromium did not start")?;
        let id = created["sessionId"]
            .as_str()
            .context("the driver named no session")?;
        Ok(Browser {
            client,
            session: format!("{base}/session/{id}"),
            _driver: driver,
        })
    }

    async fn send(
        &self,
        method: awc::http::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        call(
            &self.client,
            method,
            &format!("{}{path}", self.session),
            body,
        )
        .await
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.send(awc::http::Method::POST, "/url", Some(json!({ "url": url })))
            .await
            .map(drop)
    }

    pub async fn url(&self) -> anyhow::Result<String> {
        let url = self.send(awc::http::Method::GET, "/url", None).await?;
        url.as_str().map(str::to_owned).context("no URL")
    }

    /// The page's whole text as shown.
    pub async fn text(&self) -> anyhow::Result<String> {
        self.find("body").await?.text().await
    }

    /// The first element matching the CSS selector.
    pub async fn find(&self, css: &str) -> anyhow::Result<Element<'_>> {
        let found = self
            .send(
                awc::http::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await
            .with_context(|| format!("no element {css:?}"))?;
        let id = found[ELEMENT]
            .as_str()
            .context("not an element")?
            .to_owned();
        Ok(Element { browser: self, id })
    }

    /// Clicks the first element matching the CSS selector.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        self.find(css).await?.click().await
    }

    /// Types `text` into the first field matching the CSS selector.
    pub async fn fill(&self, css: &str, text: &str) -> anyhow::Result<()> {
        self.find(css).await?.type_text(text).await
    }

    /// Waits until the element's text satisfies `holds` (live parts refresh every second).
    pub async fn wait_for_text(
        &self,
        css: &str,
        what: &str,
        holds: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            // The element is replaced at each refresh: found again each time.
            let text = match self.find(css).await {
                Ok(element) => element.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if holds(&text) {
                return Ok(text);
            }
            if Instant::now() > deadline {
                bail!("{what}: {css:?} still reads {text:?}");
            }
            actix_web::rt::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The page as a PNG.
    pub async fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        let png = self
            .send(awc::http::Method::GET, "/screenshot", None)
            .await?;
        let png = png.as_str().context("no screenshot")?;
        Ok(base64::engine::general_purpose::STANDARD.decode(png)?)
    }

    /// What the pages logged to the console as errors since the last call (chromedriver's
    /// log endpoint; a Content-Security-Policy violation is one).
    pub async fn console_errors(&self) -> anyhow::Result<Vec<String>> {
        let log = self
            .send(
                awc::http::Method::POST,
                "/se/log",
                Some(json!({"type": "browser"})),
            )
            .await?;
        Ok(log
            .as_array()
            .context("no log")?
            .iter()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect())
    }

    /// The browser's cookie `name` for the current page, as WebDriver describes it.
    pub async fn cookie(&self, name: &str) -> anyhow::Result<Value> {
        self.send(awc::http::Method::GET, &format!("/cookie/{name}"), None)
            .await
    }

    pub async fn resize(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.send(
            awc::http::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await
        .map(drop)
    }

    /// Ends the browser's session (the driver and the browser exit with the value).
    pub async fn quit(self) {
        let _ = self.send(awc::http::Method::DELETE, "", None).await;
    }
}

impl Element<'_> {
    fn path(&self, action: &str) -> String {
        format!("/element/{}/{action}", self.id)
    }

    pub async fn click(&self) -> anyhow::Result<()> {
        self.browser
            .send(
                awc::http::Method::POST,
                &self.path("click"),
                Some(json!({})),
            )
            .await
            .map(drop)
    }

    /// Types `text` into the field.
    pub async fn type_text(&self, text: &str) -> anyhow::Result<()> {
        self.browser
            .send(
                awc::http::Method::POST,
                &self.path("value"),
                Some(json!({ "text": text })),
            )
            .await
            .map(drop)
    }

    pub async fn clear(&self) -> anyhow::Result<()> {
        self.browser
            .send(
                awc::http::Method::POST,
                &self.path("clear"),
                Some(json!({})),
            )
            .await
            .map(drop)
    }

    pub async fn text(&self) -> anyhow::Result<String> {
        let text = self
            .browser
            .send(awc::http::Method::GET, &self.path("text"), None)
            .await?;
        text.as_str().map(str::to_owned).context("no text")
    }
}

/// One WebDriver call; its `value`, or the driver's error.
async fn call(
    client: &awc::Client,
    method: awc::http::Method,
    url: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let request = client.request(method, url);
    let mut response = match body {
        Some(body) => request.send_json(&body).await,
        None => request.send().await,
    }
    .map_err(|err| anyhow::anyhow!("WebDriver {url}: {err}"))?;
    let answer: Value = response
        .json()
        .limit(64 * 1024 * 1024)
        .await
        .with_context(|| format!("WebDriver {url}: no JSON"))?;
    if !response.status().is_success() {
        bail!("WebDriver {url}: {}", answer["value"]);
    }
    Ok(answer["value"].clone())
}
