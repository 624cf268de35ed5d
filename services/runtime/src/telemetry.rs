//! Logging and tracing set-up: `RUST_LOG` filters (default `info`), plain or
//! JSON lines on stderr, and, when an OTLP endpoint is configured,
//! OpenTelemetry traces exported over OTLP/gRPC.
//!
//! Traces are off unless `--otlp-endpoint` or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` names a
//! collector (`OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn
//! them off again). Off, no OpenTelemetry layer is installed and no context is
//! extracted: the cost is one relaxed atomic load per call site. On, the
//! sampler follows `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` and the
//! resource `OTEL_SERVICE_NAME` (default `conveyor`) and
//! `OTEL_RESOURCE_ATTRIBUTES`.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an OTLP endpoint is configured).
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// Telemetry settings of a process.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// JSON log lines instead of text.
    pub log_json: bool,
    /// OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`; `None` falls back
    /// to the `OTEL_EXPORTER_OTLP_*ENDPOINT` variables.
    pub otlp_endpoint: Option<String>,
}

/// Flushes and stops the exporter when dropped (at the end of `main`).
#[derive(Debug, Default)]
#[must_use = "spans are flushed when the guard is dropped"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

fn env_set(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

/// The collector to export to, if traces are on.
fn otlp_endpoint(config: &TelemetryConfig) -> Option<String> {
    if env_set("OTEL_SDK_DISABLED").is_some_and(|value| value.eq_ignore_ascii_case("true"))
        || env_set("OTEL_TRACES_EXPORTER").is_some_and(|value| value == "none")
    {
        return None;
    }
    config
        .otlp_endpoint
        .clone()
        .filter(|endpoint| !endpoint.is_empty())
        .or_else(|| env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        .or_else(|| env_set("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// Installs the global subscriber once; later calls are no-ops (tests call it
/// from many places). Needs a Tokio runtime when traces are on.
pub fn init_telemetry(config: &TelemetryConfig) -> TelemetryGuard {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: logs piped to a file or a collector
    // stay free of escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // RUST_LOG filters the logs only: the exported spans are Conveyor's own
    // at INFO whatever the log level (`RUST_LOG=warn` must not stop traces).
    let text = (!config.log_json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .with_filter(filter())
    });
    let json = config.log_json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter())
    });
    let mut guard = TelemetryGuard::default();
    let otel = otlp_endpoint(config).and_then(|endpoint| match tracer_provider(&endpoint) {
        Ok(provider) => {
            let tracer = provider.tracer("conveyor");
            guard.provider = Some(provider);
            let spans = tracing_subscriber::filter::Targets::new()
                .with_target("conveyor", tracing::Level::INFO);
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(spans),
            )
        }
        Err(error) => {
            eprintln!(
                "conveyor: OpenTelemetry export to {endpoint} is off: {error}; \
                 give --otlp-endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT) an OTLP/gRPC \
                 collector address such as http://127.0.0.1:4317"
            );
            None
        }
    });
    let enabled = otel.is_some();
    let installed = tracing_subscriber::registry()
        .with(text)
        .with(json)
        .with(otel)
        .try_init()
        .is_ok();
    if installed && enabled {
        TRACING.store(true, Ordering::Relaxed);
    }
    guard
}

/// Logging only (tests and tools).
pub fn init_tracing(json: bool) {
    std::mem::forget(init_telemetry(&TelemetryConfig {
        log_json: json,
        otlp_endpoint: None,
    }));
}

fn tracer_provider(endpoint: &str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|error| error.to_string())?;
    let service_name = env_set("OTEL_SERVICE_NAME").unwrap_or_else(|| "conveyor".into());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name)
        .build();
    // The batch processor of the Tokio runtime: the tonic exporter needs
    // its reactor (the default processor's own thread has none, and would
    // export only at shutdown).
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build())
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct PairExtractor<'a>(&'a str, &'a str);

impl Extractor for PairExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.0),
            "tracestate" if !self.1.is_empty() => Some(self.1),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

#[derive(Default)]
struct PairInjector {
    traceparent: String,
    tracestate: String,
}

impl Injector for PairInjector {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.traceparent = value,
            "tracestate" => self.tracestate = value,
            _ => {}
        }
    }
}

/// Makes `span` a child of the W3C context in a request's headers, if any.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    if headers.contains_key("traceparent") {
        let context = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let _ = span.set_parent(context);
    }
}

/// Makes `span` a child of a stored W3C context.
pub fn set_parent(span: &tracing::Span, traceparent: &str, tracestate: &str) {
    let context = TraceContextPropagator::new().extract(&PairExtractor(traceparent, tracestate));
    let _ = span.set_parent(context);
}

/// Makes `span` the root of a new trace, whatever span is current.
pub fn make_root(span: &tracing::Span) {
    let _ = span.set_parent(opentelemetry::Context::new());
}

/// Adds a link from `span` to a stored W3C context.
pub fn add_link(span: &tracing::Span, traceparent: &str, tracestate: &str) {
    let context = TraceContextPropagator::new().extract(&PairExtractor(traceparent, tracestate));
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.add_link(span_context);
    }
}

/// The W3C `(traceparent, tracestate)` of `span`, if it is being traced.
pub fn context_of(span: &tracing::Span) -> Option<(String, String)> {
    if !tracing_enabled() {
        return None;
    }
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut injector = PairInjector::default();
    TraceContextPropagator::new().inject_context(&context, &mut injector);
    (!injector.traceparent.is_empty()).then_some((injector.traceparent, injector.tracestate))
}
