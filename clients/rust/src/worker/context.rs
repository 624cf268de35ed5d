//! What a handler sees (`TaskContext`: the assignment, its arguments and its
//! cancellation) and how it fails (`TaskFailure`).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use conveyor_api::pb;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::error::error_chain;
use crate::payload::{duration_from_proto, from_payload};

/// Error type reported when an argument is missing or does not decode.
pub const ARGUMENT_ERROR: &str = "ArgumentError";

/// Error type reported for a handler that panicked.
pub const PANIC_ERROR: &str = "panic";

/// One attempt of one task, as handed to its handler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TaskContext {
    assignment: Arc<pb::Assignment>,
    /// Fires when the dispatcher cancels the assignment, the soft time limit
    /// passes, the stream breaks, or a drain's grace period ends.
    cancellation: CancellationToken,
    /// The session's outbound stream, for progress reports; `None` in unit
    /// tests and after the stream closed.
    reporter: Option<tokio::sync::mpsc::Sender<pb::ConnectRequest>>,
}

impl TaskContext {
    /// A context for `assignment`, cancelled through `cancellation`. Public so
    /// that handlers can be unit-tested without a server.
    pub fn new(assignment: pb::Assignment, cancellation: CancellationToken) -> TaskContext {
        TaskContext {
            assignment: Arc::new(assignment),
            cancellation,
            reporter: None,
        }
    }

    /// The assignment this context was made from.
    pub(crate) fn assignment(&self) -> &pb::Assignment {
        &self.assignment
    }

    /// Routes `report_progress` to a session's stream.
    pub(crate) fn with_reporter(
        mut self,
        reporter: Option<tokio::sync::mpsc::Sender<pb::ConnectRequest>>,
    ) -> TaskContext {
        self.reporter = reporter;
        self
    }

    /// Reports progress or a custom state (Celery's `update_state`); watchers
    /// of the task see it. `meta` is any JSON value. Best effort: returns
    /// `false` when it could not be sent (no stream, or the stream closed).
    pub async fn report_progress(
        &self,
        state: &str,
        percent: f64,
        meta: Option<serde_json::Value>,
    ) -> bool {
        let Some(reporter) = &self.reporter else {
            return false;
        };
        let meta = match meta.map(|value| serde_json::to_vec(&value)) {
            Some(Ok(data)) => Some(pb::Payload {
                data,
                content_type: crate::payload::JSON_CONTENT_TYPE.to_string(),
            }),
            Some(Err(_)) => return false,
            None => None,
        };
        let report = pb::ReportProgress {
            task_id: self.assignment.task_id.clone(),
            lease_token: self.assignment.lease_token,
            progress: Some(pb::Progress {
                state: state.to_string(),
                percent,
                meta,
                reported_at: None,
            }),
        };
        let message = pb::ConnectRequest {
            message: Some(pb::connect_request::Message::ReportProgress(report)),
        };
        reporter.send(message).await.is_ok()
    }

    /// The task id (a UUIDv7).
    pub fn task_id(&self) -> &str {
        &self.assignment.task_id
    }

    /// The workflow this task is a node of (Celery's `request.root_id`).
    pub fn workflow_id(&self) -> Option<&str> {
        Some(self.assignment.workflow_id.as_str()).filter(|id| !id.is_empty())
    }

    /// The registered task name.
    pub fn name(&self) -> &str {
        &self.assignment.name
    }

    /// The attempt number, 1 for the first.
    pub fn attempt(&self) -> u32 {
        self.assignment.attempt
    }

    /// Retries the task's policy allows after the first attempt.
    pub fn max_retries(&self) -> u32 {
        self.assignment.max_retries
    }

    /// The lease token fencing this attempt.
    pub fn lease_token(&self) -> u64 {
        self.assignment.lease_token
    }

    /// Headers from the task's options (trace context among them).
    pub fn headers(&self) -> &HashMap<String, String> {
        &self.assignment.headers
    }

    /// The cooperative time limit, if the task has one; the worker cancels
    /// the context when it passes.
    pub fn soft_time_limit(&self) -> Option<Duration> {
        duration_from_proto(self.assignment.soft_time_limit.as_ref())
    }

    /// The positional arguments, still encoded.
    pub fn args(&self) -> &[pb::Payload] {
        &self.assignment.args
    }

    /// The named arguments, still encoded.
    pub fn kwargs(&self) -> &HashMap<String, pb::Payload> {
        &self.assignment.kwargs
    }

    /// Decodes positional argument `index` from JSON. A missing or malformed
    /// argument is a non-retryable `ArgumentError`: running again would not
    /// change it.
    pub fn arg<T: DeserializeOwned>(&self, index: usize) -> Result<T, TaskFailure> {
        let payload = self.args().get(index).ok_or_else(|| {
            argument_error(format!(
                "missing positional argument {index} (got {})",
                self.args().len()
            ))
        })?;
        from_payload(payload)
            .map_err(|reason| argument_error(format!("positional argument {index}: {reason}")))
    }

    /// Decodes named argument `name` from JSON; errors as [`arg`](Self::arg).
    pub fn kwarg<T: DeserializeOwned>(&self, name: &str) -> Result<T, TaskFailure> {
        let payload = self
            .kwargs()
            .get(name)
            .ok_or_else(|| argument_error(format!("missing named argument {name:?}")))?;
        from_payload(payload)
            .map_err(|reason| argument_error(format!("named argument {name:?}: {reason}")))
    }

    /// Completes when the attempt is cancelled. Handlers that run for long
    /// should select on it and return early; their outcome is discarded.
    pub async fn cancelled(&self) {
        self.cancellation.cancelled().await;
    }

    /// True once the attempt has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancellation.is_cancelled()
    }

    /// The cancellation token itself, to hand to sub-tasks.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.cancellation.clone()
    }
}

fn argument_error(message: String) -> TaskFailure {
    TaskFailure::new(ARGUMENT_ERROR, message).non_retryable()
}

/// Why a handler failed, reported to the platform as a `TaskError`.
///
/// Any `std::error::Error` converts into it (so `?` works in handlers), with
/// the error's type name, its message and a backtrace. Deliberately not an
/// `Error` itself, which is what makes that blanket conversion possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure {
    /// Error type or class name, e.g. "ValueError".
    pub error_type: String,
    /// Human-readable message.
    pub message: String,
    /// Stack trace text, possibly empty.
    pub traceback: String,
    /// Whether the task's retry policy may run it again (default true).
    pub retryable: bool,
    /// Retry after this delay instead of the policy's backoff (still within
    /// the policy's max retries); see [`TaskFailure::retry_in`].
    pub retry_after: Option<Duration>,
}

impl TaskFailure {
    /// A retryable failure of type `error_type`.
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> TaskFailure {
        TaskFailure {
            error_type: error_type.into(),
            message: message.into(),
            traceback: String::new(),
            retryable: true,
            retry_after: None,
        }
    }

    /// Asks for a retry after `delay` (Celery's `self.retry(countdown=...)`):
    /// `return Err(TaskFailure::new("Busy", "rate limited upstream").retry_in(d))`.
    #[must_use]
    pub fn retry_in(mut self, delay: Duration) -> TaskFailure {
        self.retryable = true;
        self.retry_after = Some(delay);
        self
    }

    /// Marks the failure final: no retry, whatever the policy says.
    #[must_use]
    pub fn non_retryable(mut self) -> TaskFailure {
        self.retryable = false;
        self
    }

    /// Attaches stack trace text.
    #[must_use]
    pub fn with_traceback(mut self, traceback: impl Into<String>) -> TaskFailure {
        self.traceback = traceback.into();
        self
    }

    /// A retryable failure from a Rust error: its type name, its message with
    /// the chain of sources, and a backtrace captured here.
    pub fn from_error<E: std::error::Error + ?Sized>(error: &E) -> TaskFailure {
        TaskFailure::new(std::any::type_name::<E>(), error_chain(error))
            .with_traceback(std::backtrace::Backtrace::force_capture().to_string())
    }

    /// The failure of a handler that panicked with `payload`.
    pub(crate) fn from_panic(payload: &(dyn std::any::Any + Send)) -> TaskFailure {
        let message = if let Some(text) = payload.downcast_ref::<&str>() {
            (*text).to_owned()
        } else if let Some(text) = payload.downcast_ref::<String>() {
            text.clone()
        } else {
            "handler panicked".to_owned()
        };
        TaskFailure::new(PANIC_ERROR, message)
    }

    /// The protobuf form.
    pub fn into_proto(self) -> pb::TaskError {
        pb::TaskError {
            r#type: self.error_type,
            message: self.message,
            traceback: self.traceback,
            retryable: self.retryable,
            retry_after: self.retry_after.map(crate::payload::duration_to_proto),
            reason: pb::FailureReason::Unspecified as i32,
            cause_task_id: String::new(),
        }
    }
}

impl fmt::Display for TaskFailure {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", self.error_type, self.message)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for TaskFailure {
    fn from(error: E) -> TaskFailure {
        TaskFailure::from_error(&error)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::payload::to_payload;

    fn context() -> TaskContext {
        let assignment = pb::Assignment {
            task_id: "0190-id".into(),
            name: "add".into(),
            args: vec![
                to_payload(&2).expect("encodes"),
                to_payload(&json!(["a", "b"])).expect("encodes"),
                pb::Payload {
                    data: b"\x01".to_vec(),
                    content_type: "application/octet-stream".into(),
                },
            ],
            kwargs: [("scale".to_owned(), to_payload(&1.5).expect("encodes"))].into(),
            attempt: 2,
            lease_token: 77,
            headers: [("traceparent".to_owned(), "00-x".to_owned())].into(),
            soft_time_limit: Some(prost_types::Duration {
                seconds: 3,
                nanos: 0,
            }),
            max_retries: 5,
            ..Default::default()
        };
        TaskContext::new(assignment, CancellationToken::new())
    }

    #[test]
    fn exposes_the_assignment() {
        let ctx = context();
        assert_eq!(ctx.task_id(), "0190-id");
        assert_eq!(ctx.name(), "add");
        assert_eq!(
            (ctx.attempt(), ctx.max_retries(), ctx.lease_token()),
            (2, 5, 77)
        );
        assert_eq!(ctx.headers()["traceparent"], "00-x");
        assert_eq!(ctx.soft_time_limit(), Some(Duration::from_secs(3)));
        assert_eq!(ctx.args().len(), 3);
        assert_eq!(ctx.kwargs().len(), 1);
    }

    #[test]
    fn decodes_arguments() {
        let ctx = context();
        assert_eq!(ctx.arg::<i64>(0), Ok(2));
        assert_eq!(ctx.arg::<f64>(0), Ok(2.0));
        assert_eq!(
            ctx.arg::<Vec<String>>(1),
            Ok(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(ctx.kwarg::<f64>("scale"), Ok(1.5));
    }

    #[test]
    fn bad_arguments_are_final_argument_errors() {
        let ctx = context();
        for failure in [
            ctx.arg::<String>(0).expect_err("number is not a string"),
            ctx.arg::<i64>(3).expect_err("no fourth argument"),
            ctx.arg::<i64>(2).expect_err("not json"),
            ctx.kwarg::<i64>("scale")
                .expect_err("1.5 is not an integer"),
            ctx.kwarg::<i64>("missing").expect_err("no such kwarg"),
        ] {
            assert_eq!(failure.error_type, ARGUMENT_ERROR);
            assert!(!failure.retryable, "{failure}");
        }
        let missing = ctx.arg::<i64>(3).expect_err("no fourth argument");
        assert_eq!(missing.message, "missing positional argument 3 (got 3)");
    }

    #[tokio::test]
    async fn cancellation_reaches_the_handler() {
        let token = CancellationToken::new();
        let ctx = TaskContext::new(pb::Assignment::default(), token.clone());
        assert!(!ctx.is_cancelled());
        token.cancel();
        ctx.cancelled().await;
        assert!(ctx.is_cancelled());
    }

    #[test]
    fn failures_build_and_convert() {
        let failure = TaskFailure::new("ValueError", "boom");
        assert!(failure.retryable);
        assert_eq!(failure.to_string(), "ValueError: boom");
        let proto = failure.non_retryable().with_traceback("tb").into_proto();
        assert_eq!(
            (
                proto.r#type.as_str(),
                proto.message.as_str(),
                proto.traceback.as_str(),
                proto.retryable
            ),
            ("ValueError", "boom", "tb", false)
        );
    }

    #[test]
    fn rust_errors_convert_with_type_and_backtrace() {
        fn parse(text: &str) -> Result<i64, TaskFailure> {
            Ok(text.parse::<i64>()?)
        }
        let failure = parse("x").expect_err("not a number");
        assert_eq!(failure.error_type, "core::num::error::ParseIntError");
        assert_eq!(failure.message, "invalid digit found in string");
        assert!(failure.retryable);
        assert!(!failure.traceback.is_empty());
    }

    #[test]
    fn panics_become_panic_failures() {
        let from_str: Box<dyn std::any::Any + Send> = Box::new("static message");
        assert_eq!(
            TaskFailure::from_panic(from_str.as_ref()).message,
            "static message"
        );
        let from_string: Box<dyn std::any::Any + Send> = Box::new(format!("formatted {}", 1));
        let failure = TaskFailure::from_panic(from_string.as_ref());
        assert_eq!(
            (failure.error_type.as_str(), failure.message.as_str()),
            (PANIC_ERROR, "formatted 1")
        );
        let opaque: Box<dyn std::any::Any + Send> = Box::new(42);
        assert_eq!(
            TaskFailure::from_panic(opaque.as_ref()).message,
            "handler panicked"
        );
    }
}
