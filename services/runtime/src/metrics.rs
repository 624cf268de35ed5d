//! Prometheus metrics: the names every role records, the recorder, and the
//! tower layer that counts and times every RPC.
//!
//! Off unless a process has an admin listener (`--metrics-listen`): then no
//! recorder is installed and every call site skips its labels after one
//! relaxed atomic load ([`enabled`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tower::{Layer, Service};

/// RPCs answered, by service, method and gRPC status code.
pub const RPC_REQUESTS: &str = "conveyor_rpc_requests_total";
/// RPC latency until the response headers (a stream: until it opens).
pub const RPC_DURATION: &str = "conveyor_rpc_duration_seconds";
/// Tasks accepted (duplicates of an idempotency key not counted).
pub const TASKS_SUBMITTED: &str = "conveyor_tasks_submitted_total";
/// Attempts handed to a worker.
pub const TASKS_STARTED: &str = "conveyor_tasks_started_total";
/// Tasks that finished successfully.
pub const TASKS_SUCCEEDED: &str = "conveyor_tasks_succeeded_total";
/// Tasks that failed for good (retries exhausted or not retryable).
pub const TASKS_FAILED: &str = "conveyor_tasks_failed_total";
/// Failed attempts that will be retried.
pub const TASKS_RETRIED: &str = "conveyor_tasks_retried_total";
/// Tasks that reached their `expires` instant before running.
pub const TASKS_EXPIRED: &str = "conveyor_tasks_expired_total";
/// Tasks cancelled (revoked).
pub const TASKS_CANCELLED: &str = "conveyor_tasks_cancelled_total";
/// Submission to final outcome, for tasks that finished on a worker.
pub const TASK_LATENCY: &str = "conveyor_task_latency_seconds";
/// Submission to the first lease (a countdown or ETA counts as waiting).
pub const TASK_QUEUE_WAIT: &str = "conveyor_task_queue_wait_seconds";
/// Tasks per queue and state (ready, scheduled, leased, dead).
pub const QUEUE_DEPTH: &str = "conveyor_queue_depth";
/// Worker sessions connected to this dispatcher.
pub const WORKERS_CONNECTED: &str = "conveyor_workers_connected";
/// Credits (free slots) the connected workers have granted.
pub const WORKER_SLOTS: &str = "conveyor_worker_slots";
/// Leases the scheduler's reaper took back: their dispatcher died or lost
/// the store (a live dispatcher requeues a silent worker's tasks itself).
pub const LEASES_REAPED: &str = "conveyor_leases_reaped_total";
/// Store calls, by operation.
pub const STORE_CALL_DURATION: &str = "conveyor_store_call_duration_seconds";
/// Store calls that failed, by operation.
pub const STORE_ERRORS: &str = "conveyor_store_errors_total";
/// Task events not delivered to a slow `WatchEvents` subscriber.
pub const EVENTS_DROPPED: &str = "conveyor_events_dropped_total";

static ENABLED: AtomicBool = AtomicBool::new(false);
static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Whether metrics are recorded in this process.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Installs the Prometheus recorder (once per process) and returns the
/// handle that renders the text exposition.
pub fn install() -> Result<PrometheusHandle, String> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let latency = [
        0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        30.0, 60.0, 300.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
        .map_err(|error| error.to_string())?
        .install_recorder()
        .map_err(|error| error.to_string())?;
    describe();
    let handle = HANDLE.get_or_init(|| handle).clone();
    ENABLED.store(true, Ordering::Relaxed);
    Ok(handle)
}

fn describe() {
    describe_counter!(
        RPC_REQUESTS,
        "RPCs answered, by service, method and gRPC status code."
    );
    describe_histogram!(
        RPC_DURATION,
        Unit::Seconds,
        "RPC latency until the response starts."
    );
    describe_counter!(
        TASKS_SUBMITTED,
        "Tasks accepted (idempotent duplicates not counted)."
    );
    describe_counter!(TASKS_STARTED, "Attempts handed to a worker.");
    describe_counter!(TASKS_SUCCEEDED, "Tasks that finished successfully.");
    describe_counter!(TASKS_FAILED, "Tasks that failed for good.");
    describe_counter!(TASKS_RETRIED, "Failed attempts that will be retried.");
    describe_counter!(TASKS_EXPIRED, "Tasks that expired before running.");
    describe_counter!(TASKS_CANCELLED, "Tasks cancelled (revoked).");
    describe_histogram!(TASK_LATENCY, Unit::Seconds, "Submission to final outcome.");
    describe_histogram!(
        TASK_QUEUE_WAIT,
        Unit::Seconds,
        "Ready to leased, per attempt."
    );
    describe_gauge!(
        QUEUE_DEPTH,
        "Tasks per queue and state (ready, scheduled, leased, dead)."
    );
    describe_gauge!(
        WORKERS_CONNECTED,
        "Worker sessions connected to this dispatcher."
    );
    describe_gauge!(
        WORKER_SLOTS,
        "Free slots (credits) granted by connected workers."
    );
    describe_counter!(
        LEASES_REAPED,
        "Leases the reaper took back from dead dispatchers."
    );
    describe_histogram!(
        STORE_CALL_DURATION,
        Unit::Seconds,
        "Store call latency by operation."
    );
    describe_counter!(STORE_ERRORS, "Store calls that failed, by operation.");
    describe_counter!(
        EVENTS_DROPPED,
        "Task events a slow WatchEvents subscriber missed."
    );
}

/// Counts and times every RPC: [`RPC_REQUESTS`] and [`RPC_DURATION`].
#[derive(Debug, Clone, Default)]
pub struct RpcMetricsLayer;

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

/// Service of [`RpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> Service<http::Request<B>> for RpcMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Send + 'static,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !enabled() {
            return Box::pin(self.inner.call(request));
        }
        let path = request.uri().path().trim_start_matches('/').to_string();
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await;
            let (service, method) = path.split_once('/').unwrap_or((path.as_str(), ""));
            // An error answered at once travels in the headers
            // (trailers-only); a success's status comes in the trailers, after
            // the body, which is `OK` unless a stream fails later.
            let code = match &response {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.parse::<i32>().ok())
                    .map_or("OK", |code| code_name(code)),
                Err(_) => "UNAVAILABLE",
            };
            let labels = [
                ("service", service.to_string()),
                ("method", method.to_string()),
            ];
            metrics::histogram!(RPC_DURATION, &labels).record(started.elapsed().as_secs_f64());
            metrics::counter!(
                RPC_REQUESTS,
                "service" => service.to_string(),
                "method" => method.to_string(),
                "code" => code,
            )
            .increment(1);
            response
        })
    }
}

/// The canonical name of a gRPC status code.
fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// Adds `n` to a task counter (`TASKS_*`) labelled by namespace, queue and
/// task name. A no-op while metrics are off.
pub fn count_tasks(metric: &'static str, namespace: &str, queue: &str, task: &str, n: u64) {
    if !enabled() || n == 0 {
        return;
    }
    metrics::counter!(
        metric,
        "namespace" => namespace.to_string(),
        "queue" => queue.to_string(),
        "task" => task.to_string(),
    )
    .increment(n);
}

/// Records a task histogram (`TASK_*`) sample, in seconds.
pub fn observe_task(metric: &'static str, namespace: &str, queue: &str, task: &str, seconds: f64) {
    if !enabled() {
        return;
    }
    metrics::histogram!(
        metric,
        "namespace" => namespace.to_string(),
        "queue" => queue.to_string(),
        "task" => task.to_string(),
    )
    .record(seconds.max(0.0));
}
