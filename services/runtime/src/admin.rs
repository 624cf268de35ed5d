//! The admin listener (`--metrics-listen`): plain HTTP/1.1 for what
//! Prometheus and probes ask, apart from the gRPC port.
//!
//! - `GET /metrics`: the Prometheus text exposition;
//! - `GET /healthz`: `200 ok` while serving, `503 draining` once shutdown began
//!   (Kubernetes HTTP probes need no TLS and no gRPC).

use std::convert::Infallible;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

/// Serves `/metrics` and `/healthz` on `listener` for the life of the
/// process; `/healthz` says `503 draining` once `shutdown` fires.
pub async fn serve_admin(listener: TcpListener, handle: PrometheusHandle, shutdown: Shutdown) {
    loop {
        // Serves until the process exits, through the drain too: probes
        // then read `503 draining` instead of a refused connection.
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "admin listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let handle = handle.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let response = respond(request.uri().path(), &handle, &shutdown);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(
    path: &str,
    handle: &PrometheusHandle,
    shutdown: &Shutdown,
) -> hyper::Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            handle.render(),
        ),
        "/healthz" if shutdown.is_cancelled() => (503, "text/plain", "draining\n".into()),
        "/healthz" => (200, "text/plain", "ok\n".into()),
        _ => (
            404,
            "text/plain",
            "not found: try /metrics or /healthz\n".into(),
        ),
    };
    hyper::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}
