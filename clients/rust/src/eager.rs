//! Eager mode, Celery's `task_always_eager`: tasks run in-process at submit,
//! through the same argument encoding, handler invocation (panics and soft
//! time limits included), result decoding and errors as with a real server,
//! so unit tests exercise handlers without Conveyor running.
//!
//! ```
//! # use conveyor_client::{EagerClient, TaskContext, TaskRequest};
//! # async fn example() -> conveyor_client::Result<()> {
//! let client = EagerClient::new().register("add", |ctx: TaskContext| async move {
//!     let (a, b): (i64, i64) = (ctx.arg(0)?, ctx.arg(1)?);
//!     Ok(serde_json::json!(a + b))
//! });
//! let id = client.submit(TaskRequest::new("add").arg(2).arg(3)).await?;
//! let sum: i64 = client.result(&id).await?;
//! assert_eq!(sum, 5);
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use conveyor_api::pb;

use crate::error::{Error, Result, task_state};
use crate::payload::from_optional_payload;
use crate::task::TaskRequest;
use crate::worker::runner::{BoxedHandler, box_handler, execute, into_outcome};
use crate::worker::{HandlerResult, TaskContext, TaskFailure};

/// Runs tasks in-process as they are submitted; records their outcomes.
#[derive(Default)]
pub struct EagerClient {
    handlers: HashMap<String, BoxedHandler>,
    tasks: Mutex<HashMap<String, pb::Task>>,
}

impl std::fmt::Debug for EagerClient {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("EagerClient")
            .field("handlers", &self.handlers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl EagerClient {
    /// No handlers yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for `name`, as [`crate::WorkerBuilder::register`].
    #[must_use]
    pub fn register<F, Fut>(mut self, name: impl Into<String>, handler: F) -> Self
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.handlers.insert(name.into(), box_handler(handler));
        self
    }

    /// Runs the task now, retrying at once while its policy allows (delays
    /// are skipped, as in Celery's eager mode), and returns its id.
    pub async fn submit(&self, request: TaskRequest) -> Result<String> {
        let spec = request.into_spec()?;
        let id = uuid::Uuid::now_v7().to_string();
        let options = spec.options.clone().unwrap_or_default();
        let max_retries = options.retry.as_ref().map_or(0, |retry| retry.max_retries);
        let mut task = pb::Task {
            id: id.clone(),
            name: spec.name.clone(),
            args: spec.args.clone(),
            kwargs: spec.kwargs.clone(),
            queue: if options.queue.is_empty() {
                "default".into()
            } else {
                options.queue.clone()
            },
            options: Some(options.clone()),
            ..Default::default()
        };
        loop {
            task.attempt += 1;
            let assignment = pb::Assignment {
                task_id: id.clone(),
                name: spec.name.clone(),
                args: spec.args.clone(),
                kwargs: spec.kwargs.clone(),
                attempt: task.attempt,
                lease_token: u64::from(task.attempt),
                headers: options.headers.clone(),
                soft_time_limit: options.soft_time_limit,
                hard_time_limit: options.hard_time_limit,
                created_at: None,
                max_retries,
                failures: task.failures,
                trace_context: spec.trace_context.clone(),
                namespace: String::new(),
                queue: task.queue.clone(),
                workflow_id: String::new(),
            };
            let context = TaskContext::new(assignment, CancellationToken::new());
            let result = match self.handlers.get(&spec.name) {
                Some(handler) => execute(handler.clone(), context).await,
                None => Err(TaskFailure::new(
                    "NotRegistered",
                    format!("no handler is registered for {:?}", spec.name),
                )
                .non_retryable()),
            };
            match into_outcome(result) {
                pb::task_outcome::Outcome::Result(payload) => {
                    task.state = pb::TaskState::Succeeded as i32;
                    task.result = Some(payload);
                    task.error = None;
                    break;
                }
                pb::task_outcome::Outcome::Error(error) => {
                    task.failures += 1;
                    let retry = (error.retryable || error.retry_after.is_some())
                        && task.failures <= max_retries;
                    task.error = Some(error);
                    if !retry {
                        task.state = pb::TaskState::Failed as i32;
                        break;
                    }
                }
            }
        }
        self.tasks
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(id.clone(), task);
        Ok(id)
    }

    /// The finished task; NOT_FOUND for an id this client never ran.
    pub fn get(&self, id: &str) -> Result<pb::Task> {
        self.tasks
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| Error::Rpc(tonic::Status::not_found(format!("task not found: {id}"))))
    }

    /// The decoded result, or the same errors as [`crate::Client::result`].
    pub async fn result<T: DeserializeOwned>(&self, id: &str) -> Result<T> {
        let task = self.get(id)?;
        if task_state(&task) != pb::TaskState::Succeeded {
            return Err(Error::from_unsuccessful_task(&task));
        }
        from_optional_payload(task.result.as_ref()).map_err(|reason| Error::Decode {
            what: format!("result of task {id}"),
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn client() -> EagerClient {
        EagerClient::new()
            .register("add", |ctx: TaskContext| async move {
                let (a, b): (i64, i64) = (ctx.arg(0)?, ctx.arg(1)?);
                Ok(json!(a + b))
            })
            .register("flaky", |ctx: TaskContext| async move {
                if ctx.attempt() < 3 {
                    Err(TaskFailure::new(
                        "Flaky",
                        format!("attempt {}", ctx.attempt()),
                    ))
                } else {
                    Ok(json!(ctx.attempt()))
                }
            })
            .register("boom", |_ctx: TaskContext| async move {
                Err(TaskFailure::new("ValueError", "bad input")
                    .with_traceback("tb")
                    .non_retryable())
            })
            .register(
                "panics",
                |_ctx: TaskContext| async move { panic!("kaboom") },
            )
    }

    #[tokio::test]
    async fn results_and_errors_match_the_server_path() {
        let client = client();
        let id = client
            .submit(TaskRequest::new("add").arg(2).arg(3))
            .await
            .unwrap();
        assert_eq!(client.result::<i64>(&id).await.unwrap(), 5);
        let failed = client.submit(TaskRequest::new("boom")).await.unwrap();
        match client.result::<i64>(&failed).await {
            Err(Error::TaskFailed {
                error_type,
                message,
                traceback,
            }) => {
                assert_eq!(
                    (error_type.as_str(), message.as_str(), traceback.as_str()),
                    ("ValueError", "bad input", "tb")
                );
            }
            other => panic!("{other:?}"),
        }
        let panicked = client.submit(TaskRequest::new("panics")).await.unwrap();
        assert!(
            matches!(client.result::<i64>(&panicked).await, Err(Error::TaskFailed { error_type, .. }) if error_type == "panic")
        );
        let unknown = client.submit(TaskRequest::new("nope")).await.unwrap();
        assert!(
            matches!(client.result::<i64>(&unknown).await, Err(Error::TaskFailed { error_type, .. }) if error_type == "NotRegistered")
        );
        let wrong_type = client
            .submit(TaskRequest::new("add").arg("x").arg(1))
            .await
            .unwrap();
        assert!(
            matches!(client.result::<i64>(&wrong_type).await, Err(Error::TaskFailed { error_type, .. }) if error_type == "ArgumentError")
        );
        assert!(client.get("missing").is_err());
    }

    #[tokio::test]
    async fn retries_follow_the_policy_without_delays() {
        let client = client();
        let retried = client
            .submit(TaskRequest::new("flaky").max_retries(2))
            .await
            .unwrap();
        assert_eq!(client.result::<u32>(&retried).await.unwrap(), 3);
        assert_eq!(client.get(&retried).unwrap().failures, 2);
        let exhausted = client
            .submit(TaskRequest::new("flaky").max_retries(1))
            .await
            .unwrap();
        let task = client.get(&exhausted).unwrap();
        assert_eq!(
            (task.state, task.attempt),
            (pb::TaskState::Failed as i32, 2)
        );
    }
}
