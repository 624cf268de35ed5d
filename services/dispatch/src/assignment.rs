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
}

/// The assignment sent to the worker, and what to remember.
pub(crate) fn to_assignment(task: LeasedTask) -> (pb::Assignment, HeldLease) {
    let record = task.record;
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
