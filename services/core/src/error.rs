//! The domain error and its single mapping to `tonic::Status`.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Result with [`ConveyorError`] as the default error.
pub type Result<T, E = ConveyorError> = std::result::Result<T, E>;

/// A field-level validation failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the offending field, e.g. `task.name` or `tasks[3].args[0]`.
    pub field: String,
    /// Why it is invalid, lowercase, no trailing period.
    pub description: String,
}

/// Everything that can go wrong in Conveyor, in domain terms.
#[derive(Debug, thiserror::Error)]
pub enum ConveyorError {
    /// Input that can never be valid; names the field.
    #[error("invalid argument: {}: {}", .0.field, .0.description)]
    InvalidArgument(FieldViolation),
    /// A payload or batch exceeded a documented limit.
    #[error("resource exhausted: {field}: {description}")]
    ResourceExhausted {
        /// The field that exceeded its limit.
        field: String,
        /// Which limit, and by how much.
        description: String,
    },
    /// The named thing does not exist.
    #[error("{kind} not found: {id}")]
    NotFound {
        /// What kind of thing, e.g. "task".
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The thing to create exists already.
    #[error("{kind} already exists: {id}")]
    AlreadyExists {
        /// What kind of thing, e.g. "schedule".
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The operation is valid but not in the current state.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A compare-and-set lost: the thing changed since the caller read it;
    /// nothing changed now. Read it again and retry.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A wait ran out of time; nothing changed.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// The store could not be reached or timed out; retryable.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be decoded; a bug or corruption.
    #[error("corrupt record {key}: {reason}")]
    Corrupt {
        /// The store key or id of the record.
        key: String,
        /// What failed to decode.
        reason: String,
    },
    /// The server is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

impl ConveyorError {
    /// An `InvalidArgument` for `field`.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(FieldViolation {
            field: field.into(),
            description: description.into(),
        })
    }

    /// A `ResourceExhausted` for `field`.
    pub fn exhausted(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::ResourceExhausted {
            field: field.into(),
            description: description.into(),
        }
    }

    /// A task `NotFound`.
    pub fn task_not_found(id: impl Into<String>) -> Self {
        Self::NotFound {
            kind: "task",
            id: id.into(),
        }
    }
}

impl From<ConveyorError> for Status {
    fn from(error: ConveyorError) -> Status {
        let message = error.to_string();
        match error {
            ConveyorError::InvalidArgument(violation) => {
                let details = ErrorDetails::with_bad_request_violation(
                    violation.field,
                    violation.description,
                );
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            ConveyorError::ResourceExhausted { field, description } => {
                let details = ErrorDetails::with_bad_request_violation(field, description);
                Status::with_error_details(Code::ResourceExhausted, message, details)
            }
            ConveyorError::NotFound { .. } => Status::not_found(message),
            ConveyorError::AlreadyExists { .. } => Status::already_exists(message),
            ConveyorError::FailedPrecondition(_) => Status::failed_precondition(message),
            ConveyorError::Conflict(_) => Status::aborted(message),
            ConveyorError::DeadlineExceeded(_) => Status::deadline_exceeded(message),
            ConveyorError::Unavailable(_) => Status::unavailable(message),
            ConveyorError::Corrupt { .. } => Status::internal(message),
            ConveyorError::ShuttingDown => Status::unavailable(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_the_field() {
        let status: Status = ConveyorError::invalid("task.name", "must not be empty").into();
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let bad_request = details.bad_request().expect("bad request details");
        assert_eq!(bad_request.field_violations[0].field, "task.name");
        assert!(status.message().contains("task.name"));
    }

    #[test]
    fn every_kind_has_its_code() {
        let cases: Vec<(ConveyorError, Code)> = vec![
            (ConveyorError::exhausted("a", "b"), Code::ResourceExhausted),
            (ConveyorError::task_not_found("x"), Code::NotFound),
            (
                ConveyorError::AlreadyExists {
                    kind: "schedule",
                    id: "x".into(),
                },
                Code::AlreadyExists,
            ),
            (
                ConveyorError::FailedPrecondition("x".into()),
                Code::FailedPrecondition,
            ),
            (
                ConveyorError::DeadlineExceeded("x".into()),
                Code::DeadlineExceeded,
            ),
            (ConveyorError::Unavailable("x".into()), Code::Unavailable),
            (
                ConveyorError::Corrupt {
                    key: "k".into(),
                    reason: "r".into(),
                },
                Code::Internal,
            ),
            (ConveyorError::ShuttingDown, Code::Unavailable),
            (ConveyorError::Conflict("x".into()), Code::Aborted),
        ];
        for (error, code) in cases {
            assert_eq!(Status::from(error).code(), code);
        }
    }
}
