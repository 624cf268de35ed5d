//! Leased tasks as assignments, and worker outcomes as store reports.

use conveyor_api::pb;
use conveyor_core::backoff::Backoff;
use conveyor_core::task::{with_content_type, with_content_types};
use conveyor_core::time::{duration_ms, timestamp_from_ms};
use conveyor_core::{Limits, TaskId};
use conveyor_store::{LeasedTask, Outcome, OutcomeReport};

/// What a session remembers about a lease it holds.
#[derive(Debug, Clone)]
pub(crate) struct HeldLease {
    pub token: u64,
    pub failures: u32,
    pub backoff: Backoff,
    /// When the hard time limit revokes the lease, if the task has one.
    pub hard_deadline: Option<tokio::time::Instant>,
    /// Labels and trace of the attempt, kept only while metrics or traces
    /// are on.
    pub observed: Option<Box<Observed>>,
}

/// What metrics and traces need of a lease at its outcome.
#[derive(Debug, Clone)]
pub(crate) struct Observed {
    pub namespace: String,
    pub queue: String,
    pub name: String,
    pub created_at_ms: i64,
    /// The `deliver` span's context, which the outcome's `settle` span
    /// continues.
    pub trace: Option<pb::TraceContext>,
}

/// Metrics for a leased attempt, and the `deliver` span that hands it over
/// (traces on): its context replaces the producer's in the assignment, so
/// the worker's `process` span is its child.
fn observe(
    task: &LeasedTask,
    record: &mut conveyor_api::store_pb::TaskRecord,
) -> Option<Box<Observed>> {
    let metrics_on = conveyor_runtime::metrics::enabled();
    let traces_on = conveyor_runtime::telemetry::tracing_enabled();
    if !metrics_on && !traces_on {
        return None;
    }
    let namespace = conveyor_core::Namespace::from_stored(&record.namespace)
        .name()
        .to_string();
    let queue = record
        .options
        .as_ref()
        .map(|options| options.queue.clone())
        .filter(|queue| !queue.is_empty())
        .unwrap_or_else(|| conveyor_core::validate::DEFAULT_QUEUE.to_string());
    if metrics_on {
        use conveyor_runtime::metrics::{
            TASK_QUEUE_WAIT, TASKS_STARTED, count_tasks, observe_task,
        };
        count_tasks(TASKS_STARTED, &namespace, &queue, &record.name, 1);
        if task.attempt <= 1 {
            let waited = conveyor_core::time::now_ms() - record.created_at_ms;
            observe_task(
                TASK_QUEUE_WAIT,
                &namespace,
                &queue,
                &record.name,
                waited as f64 / 1000.0,
            );
        }
    }
    let mut trace = None;
    if traces_on && let Some(producer) = &record.trace_context {
        let span = tracing::info_span!(
            "deliver",
            otel.name = %format!("deliver {queue}"),
            messaging.system = "conveyor",
            messaging.operation.type = "send",
            messaging.destination.name = %queue,
            messaging.message.id = %task.id,
            conveyor.task.name = %record.name,
            conveyor.task.attempt = i64::from(task.attempt),
        );
        conveyor_runtime::telemetry::set_parent(&span, &producer.traceparent, &producer.tracestate);
        trace = conveyor_runtime::telemetry::context_of(&span).map(|(traceparent, tracestate)| {
            pb::TraceContext {
                traceparent,
                tracestate,
            }
        });
        if trace.is_some() {
            record.trace_context.clone_from(&trace);
        }
    }
    Some(Box::new(Observed {
        namespace,
        queue,
        name: record.name.clone(),
        created_at_ms: record.created_at_ms,
        trace,
    }))
}

/// Metrics of a recorded outcome, and its `settle` span (traces on).
pub(crate) fn observe_outcome(observed: &Observed, state: conveyor_core::TaskState) {
    use conveyor_core::TaskState;
    use conveyor_runtime::metrics::{
        TASK_LATENCY, TASKS_FAILED, TASKS_RETRIED, TASKS_SUCCEEDED, count_tasks, observe_task,
    };
    let Observed {
        namespace,
        queue,
        name,
        created_at_ms,
        trace,
    } = observed;
    let (metric, outcome) = match state {
        TaskState::Succeeded => (TASKS_SUCCEEDED, "succeeded"),
        TaskState::Failed => (TASKS_FAILED, "failed"),
        _ => (TASKS_RETRIED, "retried"),
    };
    count_tasks(metric, namespace, queue, name, 1);
    if metric != TASKS_RETRIED {
        let latency = conveyor_core::time::now_ms() - created_at_ms;
        observe_task(
            TASK_LATENCY,
            namespace,
            queue,
            name,
            latency as f64 / 1000.0,
        );
    }
    if let Some(trace) = trace {
        let span = tracing::info_span!(
            "settle",
            otel.name = %format!("settle {queue}"),
            messaging.system = "conveyor",
            messaging.operation.type = "settle",
            messaging.destination.name = %queue,
            conveyor.task.outcome = outcome,
        );
        conveyor_runtime::telemetry::set_parent(&span, &trace.traceparent, &trace.tracestate);
    }
}

/// The assignment sent to the worker, and what to remember.
pub(crate) fn to_assignment(mut task: LeasedTask) -> (pb::Assignment, HeldLease) {
    let mut record = std::mem::take(&mut task.record);
    let observed = observe(&task, &mut record);
    let options = record.options.unwrap_or_default();
    let backoff = Backoff::from_pb(options.retry.as_ref());
    let hard_deadline = options
        .hard_time_limit
        .as_ref()
        .and_then(conveyor_core::time::duration_ms)
        .filter(|limit| *limit > 0)
        .map(|limit| tokio::time::Instant::now() + std::time::Duration::from_millis(limit as u64));
    let held = HeldLease {
        token: task.lease_token,
        failures: task.failures,
        backoff: backoff.clone(),
        hard_deadline,
        observed,
    };
    let assignment = pb::Assignment {
        task_id: task.id.to_string(),
        name: record.name,
        args: with_content_types(record.args),
        kwargs: record
            .kwargs
            .into_iter()
            .map(|(name, payload)| (name, with_content_type(payload)))
            .collect(),
        attempt: task.attempt,
        lease_token: task.lease_token,
        headers: options.headers,
        soft_time_limit: options.soft_time_limit,
        hard_time_limit: options.hard_time_limit,
        created_at: Some(timestamp_from_ms(record.created_at_ms)),
        max_retries: backoff.max_retries,
        failures: task.failures,
        trace_context: record.trace_context,
        namespace: conveyor_core::Namespace::from_stored(&record.namespace)
            .name()
            .to_string(),
        queue: if options.queue.is_empty() {
            conveyor_core::validate::DEFAULT_QUEUE.to_string()
        } else {
            options.queue
        },
        workflow_id: task
            .workflow_id
            .map(|workflow| workflow.to_string())
            .unwrap_or_default(),
    };
    (assignment, held)
}

/// The store report for a worker's outcome. An oversized result becomes a
/// non-retryable failure: the attempt ran, but its value cannot be kept.
pub(crate) fn to_report(
    id: TaskId,
    session_id: &str,
    held: &HeldLease,
    outcome: pb::task_outcome::Outcome,
    limits: &Limits,
    now_ms: i64,
) -> OutcomeReport {
    let outcome = match outcome {
        pb::task_outcome::Outcome::Result(payload)
            if payload.data.len() > limits.max_payload_bytes =>
        {
            Outcome::Failed {
                error: pb::TaskError {
                    r#type: "ResultTooLarge".into(),
                    reason: pb::FailureReason::ResultTooLarge as i32,
                    message: format!(
                        "result is {} bytes, the limit is {}",
                        payload.data.len(),
                        limits.max_payload_bytes
                    ),
                    traceback: String::new(),
                    retryable: false,
                    retry_after: None,
                    cause_task_id: String::new(),
                },
                retry_at_ms: None,
            }
        }
        pb::task_outcome::Outcome::Result(payload) => Outcome::Succeeded(payload),
        pb::task_outcome::Outcome::Error(error) => {
            let requested_ms = error.retry_after.as_ref().and_then(duration_ms);
            let retry_at_ms = if error.retryable || requested_ms.is_some() {
                held.backoff
                    .retry_at_with(held.failures, now_ms, requested_ms)
            } else {
                None
            };
            Outcome::Failed { error, retry_at_ms }
        }
    };
    OutcomeReport {
        id,
        session_id: session_id.to_string(),
        lease_token: held.token,
        outcome,
    }
}

/// The failure recorded when the hard time limit passes.
pub(crate) fn time_limit_report(
    id: TaskId,
    session_id: &str,
    held: &HeldLease,
    now_ms: i64,
) -> OutcomeReport {
    let error = pb::TaskError {
        r#type: "TimeLimitExceeded".into(),
        reason: pb::FailureReason::HardTimeLimit as i32,
        message: "the hard time limit passed; the worker was told to abandon the task".into(),
        traceback: String::new(),
        retryable: true,
        retry_after: None,
        cause_task_id: String::new(),
    };
    to_report(
        id,
        session_id,
        held,
        pb::task_outcome::Outcome::Error(error),
        &Limits::default(),
        now_ms,
    )
}
