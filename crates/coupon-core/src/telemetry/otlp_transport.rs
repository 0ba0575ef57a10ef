//! The OTLP exporter's HTTP client: awc, the HTTP stack the services already carry, rather
//! than the exporter's reqwest/hyper (a second stack in the build).
//!
//! awc is bound to the actix runtime of the thread that made it, and the exporter calls from
//! the span processor's own thread, so the client lives on a thread of its own: requests go
//! to it over a channel and answers come back on a oneshot, which any executor can await.

use std::time::Duration;

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use tokio::sync::{mpsc, oneshot};

/// Longest an export may take; a collector that does not answer loses that batch only.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

type Exchange = (
    Request<Bytes>,
    oneshot::Sender<Result<Response<Bytes>, String>>,
);

#[derive(Debug, Clone)]
pub struct AwcTransport {
    requests: mpsc::UnboundedSender<Exchange>,
}

impl AwcTransport {
    /// Starts the client's thread; it ends when the last transport is dropped.
    pub fn start() -> std::io::Result<Self> {
        let (requests, mut incoming) = mpsc::unbounded_channel::<Exchange>();
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || {
                actix_rt::System::new().block_on(async move {
                    let client = awc::Client::builder().timeout(EXPORT_TIMEOUT).finish();
                    while let Some((request, reply)) = incoming.recv().await {
                        let _ = reply.send(send(&client, request).await);
                    }
                });
            })?;
        Ok(Self { requests })
    }
}

async fn send(client: &awc::Client, request: Request<Bytes>) -> Result<Response<Bytes>, String> {
    let (parts, body) = request.into_parts();
    // awc speaks the `http` 0.2 types and the exporter 1.x: they meet as strings and bytes.
    let method = awc::http::Method::from_bytes(parts.method.as_str().as_bytes())
        .map_err(|e| e.to_string())?;
    let mut outgoing = client.request(method, parts.uri.to_string());
    for (name, value) in &parts.headers {
        outgoing = outgoing.insert_header((name.as_str(), value.as_bytes()));
    }
    let mut answer = outgoing.send_body(body).await.map_err(|e| e.to_string())?;
    let status = answer.status().as_u16();
    let body = answer.body().await.map_err(|e| e.to_string())?;
    Response::builder()
        .status(status)
        .body(body)
        .map_err(|e| e.to_string())
}

#[async_trait::async_trait]
impl HttpClient for AwcTransport {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send((request, reply))
            .map_err(|_| "the OTLP export thread has stopped")?;
        Ok(answer
            .await
            .map_err(|_| "the OTLP export thread has stopped")??)
    }
}
