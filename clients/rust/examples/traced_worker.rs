//! A worker whose spans are exported over OTLP: the Rust SDK's `process`
//! spans continue the producer's trace (see the tracing guide in
//! docs/telemetry.md). The cross-language trace tests run it.
//!
//! Serves `otel.echo(x)` (returns x) and `otel.flaky()` (fails its first
//! attempt, succeeds on the retry). Environment: `CONVEYOR_ADDR` (default
//! `http://127.0.0.1:50051`), `CONVEYOR_QUEUE` (default `otel`), and the
//! standard `OTEL_EXPORTER_OTLP_ENDPOINT` (default `http://127.0.0.1:4317`)
//! and `OTEL_SERVICE_NAME` (default `rust-worker`).

use std::time::Duration;

use conveyor_client::{TaskContext, TaskFailure, Worker};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use serde_json::Value;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .unwrap_or_else(|_| "http://127.0.0.1:4317".to_owned());
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "rust-worker".to_owned());
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        // The Tokio batch processor: the tonic exporter needs the runtime.
        .with_span_processor(
            opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
                exporter,
                opentelemetry_sdk::runtime::Tokio,
            )
            .build(),
        )
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("conveyor")))
        .init();

    let addr = std::env::var("CONVEYOR_ADDR").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let queue = std::env::var("CONVEYOR_QUEUE").unwrap_or_else(|_| "otel".into());
    let worker = Worker::builder(addr.as_str())
        .queues([queue])
        .concurrency(4)
        .register("otel.echo", |ctx: TaskContext| async move {
            // A span of the handler's own: a child of `process`.
            let _span = tracing::info_span!("echo.handler").entered();
            ctx.arg::<Value>(0)
        })
        .register("otel.flaky", |ctx: TaskContext| async move {
            if ctx.attempt() == 1 {
                return Err(TaskFailure::new("Flaky", "first attempts fail")
                    .retry_in(Duration::from_millis(50)));
            }
            Ok(Value::from("ok"))
        })
        .build()?;
    let result = worker.run().await;
    let _ = provider.force_flush();
    let _ = provider.shutdown();
    result?;
    Ok(())
}
