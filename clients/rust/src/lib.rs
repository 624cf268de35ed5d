//! Rust client and worker SDK for Conveyor, a distributed task queue.
//!
//! Producers use [`Client`] to submit tasks described by [`TaskRequest`] and
//! to await, watch or cancel them. Workers use [`Worker`] to register
//! handlers, each an async function of a [`TaskContext`] returning a JSON
//! value or a [`TaskFailure`]; the worker holds the dispatcher stream,
//! grants credits as slots free up, heartbeats, reports outcomes, reconnects
//! when the stream breaks and drains on shutdown.
//!
//! ```no_run
//! # use std::time::Duration;
//! # use conveyor_client::{Client, TaskRequest};
//! # async fn example() -> conveyor_client::Result<()> {
//! let client = Client::connect("http://127.0.0.1:50051").await?;
//! let id = client.submit(TaskRequest::new("add").arg(2).arg(3)).await?;
//! let sum: i64 = client.result(&id, Duration::from_secs(10)).await?;
//! assert_eq!(sum, 5);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod canvas;
mod client;
mod eager;
mod endpoints;
mod error;
pub mod payload;
mod task;
mod tls;
pub use tls::Tls;
mod trace;
pub mod worker;

pub use conveyor_api::pb;

pub use crate::canvas::{Canvas, WorkflowHandle, chain, chord, group};
pub use crate::client::{Client, MAX_BATCH_BYTES, MAX_TASKS_PER_BATCH};
pub use crate::eager::EagerClient;
pub use crate::endpoints::Endpoints;
pub use crate::error::{Error, Result};
pub use crate::task::TaskRequest;
pub use crate::worker::{HandlerResult, TaskContext, TaskFailure, Worker, WorkerBuilder};
