//! Logs and traces for both services, configured the same way.
//!
//! Logs: structured, text or JSON, filtered by `RUST_LOG`. Traces: OpenTelemetry spans for
//! the request, the admission script, the publish, and the worker's batch and inserts,
//! exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. The spans are at
//! debug level and only the exporter's layer asks for them, so with no endpoint they are
//! never built: tracing then costs nothing (`docs/performance.md` measures both).

mod otlp_transport;

use clap::{Args, ValueEnum};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// Log line format: text for people, json for collectors.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// OTLP/HTTP endpoint of a trace collector (http://host:4318; `/v1/traces` is added).
    /// Unset: no traces, at no cost.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Share of new traces kept, 0 to 1. A worker follows the decision the request's trace
    /// made, so a kept trace is kept whole.
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG", default_value_t = 1.0)]
    pub trace_sample_ratio: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "OTEL_EXPORTER_OTLP_ENDPOINT must be an http:// URL (send to a collector beside the service, which forwards over TLS): {0}"
    )]
    Endpoint(String),
    #[error("OTEL_TRACES_SAMPLER_ARG must be between 0 and 1, not {0}")]
    Ratio(f64),
    #[error("cannot start the OTLP exporter: {0}")]
    Exporter(String),
}

/// What must be flushed at exit: the spans not exported yet.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered; call last, after the service stopped.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(err) = provider.shutdown()
        {
            tracing::warn!(error = %err, "spans not exported at exit");
        }
    }
}

/// Installs the global subscriber: logs as `RUST_LOG` says (default `info`), and traces to
/// the OTLP endpoint if one is set.
pub fn init(args: &LogArgs, service: &'static str) -> Result<Telemetry, TelemetryError> {
    let provider = match &args.otlp_endpoint {
        Some(endpoint) => Some(otlp_provider(endpoint, args.trace_sample_ratio, service)?),
        None => None,
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for people at a terminal; files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_ansi(ansi).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
    };
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(
            provider
                .as_ref()
                .map(|provider| span_layer(provider, service)),
        )
        .init();
    if let Some(endpoint) = &args.otlp_endpoint {
        crate::trace_context::enable();
        tracing::info!(%endpoint, ratio = args.trace_sample_ratio, "exporting traces");
    }
    Ok(Telemetry { provider })
}

/// The layer that turns the services' spans into OpenTelemetry spans of `provider`; it asks
/// for the debug-level spans of this project's crates and nothing else.
pub fn span_layer<S>(provider: &SdkTracerProvider, service: &'static str) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let ours = Targets::new()
        .with_target("issuer_api", Level::DEBUG)
        .with_target("issuer_worker", Level::DEBUG)
        .with_target("coupon_core", Level::DEBUG);
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service))
        .with_filter(ours)
}

fn otlp_provider(
    endpoint: &str,
    ratio: f64,
    service: &'static str,
) -> Result<SdkTracerProvider, TelemetryError> {
    if !endpoint.starts_with("http://") {
        return Err(TelemetryError::Endpoint(endpoint.to_owned()));
    }
    if !(0.0..=1.0).contains(&ratio) {
        return Err(TelemetryError::Ratio(ratio));
    }
    let transport = otlp_transport::AwcTransport::start()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(transport)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}
