//! The crate's one error type, shared by the client and the worker.

use conveyor_api::pb;

/// `Result` with this crate's [`enum@Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when talking to Conveyor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint could not be parsed, or the connection could not be made.
    #[error("transport error: {}", error_chain(.0))]
    Transport(#[from] tonic::transport::Error),

    /// A call returned a gRPC status other than OK. The status is kept whole,
    /// so callers can branch on [`tonic::Status::code`] (for instance
    /// `DEADLINE_EXCEEDED` from [`Client::wait`](crate::Client::wait)).
    #[error("rpc failed: {}: {}", .0.code(), .0.message())]
    Rpc(#[from] tonic::Status),

    /// A value could not be encoded as a JSON payload.
    #[error("cannot encode {what} as json: {source}")]
    Encode {
        /// What was being encoded, e.g. "positional argument 1".
        what: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },

    /// A payload could not be decoded into the requested type.
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// What was being decoded, e.g. "result of task 0190…".
        what: String,
        /// Why decoding failed.
        reason: String,
    },

    /// The task finished in state `FAILED`; its last error is attached.
    #[error("task failed: {error_type}: {message}")]
    TaskFailed {
        /// Error type or class name reported by the handler, e.g. "ValueError".
        error_type: String,
        /// Human-readable message reported by the handler.
        message: String,
        /// Stack trace or traceback text, possibly empty.
        traceback: String,
    },

    /// The task finished without a result: `CANCELLED` or `EXPIRED`.
    #[error("task did not succeed: it ended {}", .state.as_str_name())]
    TaskNotSucceeded {
        /// The terminal state the task ended in.
        state: pb::TaskState,
    },

    /// The server broke the protocol, e.g. a response without its task, or a
    /// worker stream whose first message is not `Welcome`.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// A worker or client was configured in a way that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// An operating-system error, e.g. while installing signal handlers.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The gRPC status code when this error is an [`Error::Rpc`].
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Rpc(status) => Some(status.code()),
            _ => None,
        }
    }

    /// True when a wait ended because its timeout or deadline passed first.
    pub fn is_timeout(&self) -> bool {
        self.code() == Some(tonic::Code::DeadlineExceeded)
    }

    /// Builds the error for a terminal task that did not succeed.
    pub(crate) fn from_unsuccessful_task(task: &pb::Task) -> Error {
        let state = task_state(task);
        if state != pb::TaskState::Failed {
            return Error::TaskNotSucceeded { state };
        }
        let task_error = task.error.clone().unwrap_or_default();
        Error::TaskFailed {
            error_type: task_error.r#type,
            message: task_error.message,
            traceback: task_error.traceback,
        }
    }
}

/// An error's message followed by its sources, so the cause of a bare
/// "transport error" shows.
pub(crate) fn error_chain<E: std::error::Error + ?Sized>(error: &E) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The task's state as an enum; unknown numbers read as `UNSPECIFIED`.
pub(crate) fn task_state(task: &pb::Task) -> pb::TaskState {
    pb::TaskState::try_from(task.state).unwrap_or(pb::TaskState::Unspecified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_task_becomes_task_failed() {
        let task = pb::Task {
            state: pb::TaskState::Failed as i32,
            error: Some(pb::TaskError {
                r#type: "ValueError".into(),
                message: "boom".into(),
                traceback: "tb".into(),
                retryable: false,
                retry_after: None,
                ..Default::default()
            }),
            ..Default::default()
        };
        let error = Error::from_unsuccessful_task(&task);
        assert!(matches!(
            &error,
            Error::TaskFailed { error_type, message, traceback }
                if error_type == "ValueError" && message == "boom" && traceback == "tb"
        ));
        assert_eq!(error.to_string(), "task failed: ValueError: boom");
    }

    #[test]
    fn cancelled_task_becomes_not_succeeded() {
        let task = pb::Task {
            state: pb::TaskState::Cancelled as i32,
            ..Default::default()
        };
        let error = Error::from_unsuccessful_task(&task);
        assert!(matches!(
            error,
            Error::TaskNotSucceeded {
                state: pb::TaskState::Cancelled
            }
        ));
    }

    #[test]
    fn rpc_error_exposes_code() {
        let error = Error::from(tonic::Status::deadline_exceeded("late"));
        assert!(error.is_timeout());
        assert_eq!(error.code(), Some(tonic::Code::DeadlineExceeded));
        assert_eq!(Error::Protocol("x".into()).code(), None);
    }
}
