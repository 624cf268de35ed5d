//! Runs one assignment: waits for a slot, announces the start, runs the
//! handler in a task of its own (so a panic is caught and reported), applies
//! the soft time limit, and turns what the handler returned into an outcome.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use conveyor_api::pb;
use conveyor_api::pb::task_outcome::Outcome;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{AbortHandle, JoinError};
use tracing::Instrument;

use crate::payload::to_payload;
use crate::worker::context::{TaskContext, TaskFailure};

/// What a handler returns: a JSON result or a failure.
pub type HandlerResult = Result<serde_json::Value, TaskFailure>;

/// A registered handler with its future type erased.
pub(crate) type BoxedHandler =
    Arc<dyn Fn(TaskContext) -> BoxFuture<'static, HandlerResult> + Send + Sync>;

/// Erases the future type of `handler`.
pub(crate) fn box_handler<F, Fut>(handler: F) -> BoxedHandler
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    Arc::new(move |context| handler(context).boxed())
}

/// Sent by a runner when its handler starts, so the session can report
/// `TaskStarted` on the stream the assignment came from.
#[derive(Debug)]
pub(crate) struct Started {
    /// The session that received the assignment.
    pub epoch: u64,
    pub task_id: String,
    pub lease_token: u64,
}

/// What a runner returns when the handler is done.
#[derive(Debug)]
pub(crate) struct Finished {
    /// The session that received the assignment; outcomes of earlier
    /// sessions are dropped (fencing would refuse them anyway).
    pub epoch: u64,
    pub task_id: String,
    pub lease_token: u64,
    pub outcome: Outcome,
}

impl Finished {
    pub(crate) fn into_proto(self) -> pb::TaskOutcome {
        pb::TaskOutcome {
            task_id: self.task_id,
            lease_token: self.lease_token,
            outcome: Some(self.outcome),
        }
    }
}

/// Everything one runner needs.
pub(crate) struct Job {
    pub epoch: u64,
    /// `None` when the dispatcher sent a name this worker did not register.
    pub handler: Option<BoxedHandler>,
    pub context: TaskContext,
    /// The worker's slots; a runner holds one while its handler runs.
    pub slots: Arc<Semaphore>,
    pub started_tx: mpsc::UnboundedSender<Started>,
}

/// Runs `job` to its outcome.
pub(crate) async fn run(job: Job) -> Finished {
    let Job {
        epoch,
        handler,
        context,
        slots,
        started_tx,
    } = job;
    // The dispatcher sends no more assignments than credits granted, so a
    // slot is normally free at once; waiting keeps the bound hard regardless.
    // The semaphore is never closed, so a failed acquire cannot happen.
    let _slot = slots.acquire_owned().await.ok();
    let task_id = context.task_id().to_owned();
    let lease_token = context.lease_token();
    // The session may be gone already; then nobody needs to hear of it.
    let _ = started_tx.send(Started {
        epoch,
        task_id: task_id.clone(),
        lease_token,
    });
    // `process {queue}`, a child of the dispatcher's `deliver` span when
    // the task carries a trace (see crate::trace).
    let span = crate::trace::process_span(context.assignment());
    let result = match handler {
        Some(handler) => execute(handler, context).instrument(span.clone()).await,
        None => Err(TaskFailure::new(
            "NotRegistered",
            format!("no handler is registered for {:?}", context.name()),
        )),
    };
    if let Err(failure) = &result {
        crate::trace::record_error_of_type(&span, &failure.error_type, &failure.message);
    }
    Finished {
        epoch,
        task_id,
        lease_token,
        outcome: into_outcome(result),
    }
}

/// Runs the handler in its own task, cancelling its context when the soft
/// time limit passes.
pub(crate) async fn execute(handler: BoxedHandler, context: TaskContext) -> HandlerResult {
    let started_at = Instant::now();
    let soft_time_limit = context.soft_time_limit();
    let cancellation = context.cancellation_token();
    // The handler's own spans nest under the attempt's span.
    let mut handle = tokio::spawn(handler(context).instrument(tracing::Span::current()));
    // Aborting the runner (at shutdown) must stop the handler too.
    let _abort_handler = AbortOnDrop(handle.abort_handle());
    let joined = match soft_time_limit {
        None => (&mut handle).await,
        Some(limit) => tokio::select! {
            joined = &mut handle => joined,
            () = tokio::time::sleep(limit) => {
                tracing::warn!(limit_ms = limit.as_millis() as u64, "soft time limit passed, cancelling");
                cancellation.cancel();
                handle.await
            }
        },
    };
    let result = joined.unwrap_or_else(|join_error| Err(failure_from_join_error(join_error)));
    match &result {
        Ok(_) => tracing::debug!(
            elapsed_ms = started_at.elapsed().as_millis() as u64,
            "task succeeded"
        ),
        Err(failure) => tracing::info!(
            error_type = %failure.error_type,
            message = %failure.message,
            retryable = failure.retryable,
            "task failed"
        ),
    }
    result
}

fn failure_from_join_error(join_error: JoinError) -> TaskFailure {
    match join_error.try_into_panic() {
        Ok(payload) => TaskFailure::from_panic(payload.as_ref()),
        Err(_) => TaskFailure::new("Aborted", "the handler task was aborted"),
    }
}

/// The protobuf outcome of a handler's result.
pub(crate) fn into_outcome(result: HandlerResult) -> Outcome {
    match result {
        Ok(value) => match to_payload(&value) {
            Ok(payload) => Outcome::Result(payload),
            Err(error) => Outcome::Error(
                TaskFailure::new("SerializationError", error.to_string())
                    .non_retryable()
                    .into_proto(),
            ),
        },
        Err(failure) => Outcome::Error(failure.into_proto()),
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
