//! Conveyor's domain: task ids, states, validation and limits, retry backoff,
//! and the one error type whose mapping to gRPC statuses lives here. No I/O.

pub mod backoff;
pub mod concurrency;
pub mod defaults;
pub mod error;
pub mod ids;
pub mod lifecycle;
pub mod limits;
pub mod namespace;
pub mod placement;
pub mod schedule;
pub mod state;
pub mod task;
pub mod time;
pub mod validate;
pub mod workflow;

pub use defaults::TaskDefaults;
pub use error::{ConveyorError, Result};
pub use ids::TaskId;
pub use limits::Limits;
pub use namespace::Namespace;
pub use state::TaskState;
pub use task::StoredTask;
pub use validate::NewTask;
