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

use crate::canvas::{Canvas, WorkflowHandle};
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
    workflows: Mutex<HashMap<String, pb::Workflow>>,
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
        let task = self.run_spec(&spec, "").await;
        let id = task.id.clone();
        self.tasks
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(id.clone(), task);
        Ok(id)
    }

    /// Runs one task to its outcome.
    async fn run_spec(&self, spec: &pb::TaskSpec, workflow_id: &str) -> pb::Task {
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
            workflow_id: workflow_id.to_owned(),
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
                workflow_id: workflow_id.to_owned(),
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
        task
    }

    /// Runs a workflow now, node by node in dependency order, with the
    /// server's rules: a chain step gets the previous result first, a chord
    /// callback the list of its header's results in order, a dependent of
    /// a failed task fails without running (DEPENDENCY_FAILED, naming it),
    /// a link_error callback runs once on the first failure.
    pub async fn submit_workflow(&self, canvas: impl Into<Canvas>) -> Result<WorkflowHandle> {
        let spec = canvas.into().compile()?;
        let workflow_id = uuid::Uuid::now_v7().to_string();
        let mut done: Vec<pb::Task> = Vec::with_capacity(spec.nodes.len());
        // The root cause behind each node that did not run.
        let mut roots: Vec<Option<String>> = Vec::with_capacity(spec.nodes.len());
        for (index, node) in spec.nodes.iter().enumerate() {
            if node.parents.iter().any(|parent| *parent as usize >= index) {
                return Err(Error::Rpc(tonic::Status::invalid_argument(format!(
                    "workflow.nodes[{index}].parents: eager mode runs nodes in order; a parent must come first"
                ))));
            }
            let parents: Vec<&pb::Task> = node.parents.iter().map(|p| &done[*p as usize]).collect();
            let state = |task: &pb::Task| task_state(task);
            let bad = |task: &pb::Task| {
                matches!(state(task), pb::TaskState::Failed | pb::TaskState::Expired)
            };
            let mut spec_of = node.task.clone().unwrap_or_default();
            let trigger = pb::NodeTrigger::try_from(node.trigger).unwrap_or_default();
            let mut root = None;
            let skip = |state: pb::TaskState, error: Option<pb::TaskError>| pb::Task {
                id: uuid::Uuid::now_v7().to_string(),
                name: spec_of_name(node),
                state: state as i32,
                error,
                workflow_id: workflow_id.clone(),
                workflow_node: index as u32,
                ..Default::default()
            };
            let task = if trigger == pb::NodeTrigger::OnFailure {
                match node.parents.iter().find(|p| bad(&done[**p as usize])) {
                    Some(parent) => {
                        let failed = &done[*parent as usize];
                        let cause = roots[*parent as usize]
                            .as_ref()
                            .and_then(|root| done.iter().find(|task| task.id == *root))
                            .unwrap_or(failed);
                        let error = cause.error.clone().unwrap_or_default();
                        let mut args = vec![
                            json_payload(&serde_json::Value::String(cause.id.clone())),
                            json_payload(&serde_json::json!({
                                "type": error.r#type,
                                "message": error.message,
                                "traceback": error.traceback,
                            })),
                        ];
                        args.append(&mut spec_of.args);
                        spec_of.args = args;
                        self.run_spec(&spec_of, &workflow_id).await
                    }
                    None => skip(pb::TaskState::Cancelled, None),
                }
            } else if trigger != pb::NodeTrigger::AllDone
                && let Some(parent) = parents
                    .iter()
                    .find(|task| state(task) != pb::TaskState::Succeeded)
            {
                if bad(parent) {
                    let root_id = roots[node.parents
                        [parents.iter().position(|p| p.id == parent.id).unwrap_or(0)]
                        as usize]
                        .clone()
                        .unwrap_or_else(|| parent.id.clone());
                    root = Some(root_id.clone());
                    skip(
                        pb::TaskState::Failed,
                        Some(pb::TaskError {
                            r#type: "DependencyFailed".into(),
                            message: if root_id == parent.id {
                                format!(
                                    "did not run: the task it depends on, {}, failed",
                                    parent.id
                                )
                            } else {
                                format!(
                                    "did not run: the task it depends on, {}, did not run because task {root_id} failed",
                                    parent.id
                                )
                            },
                            reason: pb::FailureReason::DependencyFailed as i32,
                            cause_task_id: parent.id.clone(),
                            ..Default::default()
                        }),
                    )
                } else {
                    skip(pb::TaskState::Cancelled, None)
                }
            } else {
                let input = pb::NodeInput::try_from(node.input).unwrap_or_default();
                let mut args = match input {
                    pb::NodeInput::One => parents
                        .first()
                        .map(|parent| {
                            vec![
                                parent
                                    .result
                                    .clone()
                                    .unwrap_or_else(|| json_payload(&error_value(parent))),
                            ]
                        })
                        .unwrap_or_default(),
                    pb::NodeInput::List | pb::NodeInput::Unspecified if !parents.is_empty() => {
                        let values: Vec<serde_json::Value> = parents
                            .iter()
                            .map(|parent| match &parent.result {
                                Some(result) if state(parent) == pb::TaskState::Succeeded => {
                                    serde_json::from_slice(&result.data)
                                        .unwrap_or(serde_json::Value::Null)
                                }
                                _ => error_value(parent),
                            })
                            .collect();
                        vec![json_payload(&serde_json::Value::Array(values))]
                    }
                    _ => Vec::new(),
                };
                args.append(&mut spec_of.args);
                spec_of.args = args;
                self.run_spec(&spec_of, &workflow_id).await
            };
            let mut task = task;
            task.workflow_node = index as u32;
            roots.push(root);
            done.push(task);
        }
        let state = if done
            .iter()
            .any(|task| task_state(task) == pb::TaskState::Failed)
        {
            pb::WorkflowState::Failed
        } else {
            pb::WorkflowState::Succeeded
        };
        let result = (state == pb::WorkflowState::Succeeded)
            .then(|| {
                let outputs: Vec<&pb::Task> =
                    spec.outputs.iter().map(|i| &done[*i as usize]).collect();
                if spec.output_list {
                    let values: Vec<serde_json::Value> = outputs
                        .iter()
                        .map(|task| {
                            task.result
                                .as_ref()
                                .and_then(|r| serde_json::from_slice(&r.data).ok())
                                .unwrap_or(serde_json::Value::Null)
                        })
                        .collect();
                    Some(json_payload(&serde_json::Value::Array(values)))
                } else {
                    outputs.first().and_then(|task| task.result.clone())
                }
            })
            .flatten();
        let workflow = pb::Workflow {
            id: workflow_id.clone(),
            name: spec.name.clone(),
            state: state as i32,
            node_count: done.len() as u32,
            result,
            output_task_ids: spec
                .outputs
                .iter()
                .map(|i| done[*i as usize].id.clone())
                .collect(),
            failed_task_id: done
                .iter()
                .find(|task| task_state(task) == pb::TaskState::Failed)
                .map(|task| task.id.clone())
                .unwrap_or_default(),
            nodes: done
                .iter()
                .zip(&spec.nodes)
                .enumerate()
                .map(|(index, (task, node))| pb::WorkflowNodeStatus {
                    index: index as u32,
                    task: Some(task.clone()),
                    parents: node.parents.clone(),
                    input: node.input,
                    trigger: node.trigger,
                    label: node.label.clone(),
                })
                .collect(),
            ..Default::default()
        };
        let handle = WorkflowHandle {
            id: workflow_id.clone(),
            task_ids: done.iter().map(|task| task.id.clone()).collect(),
            output_task_ids: workflow.output_task_ids.clone(),
            duplicate: false,
        };
        let mut tasks = self
            .tasks
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for task in done {
            tasks.insert(task.id.clone(), task);
        }
        drop(tasks);
        self.workflows
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(workflow_id, workflow);
        Ok(handle)
    }

    /// A workflow this client ran, with every node.
    pub fn get_workflow(&self, id: &str) -> Result<pb::Workflow> {
        self.workflows
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| {
                Error::Rpc(tonic::Status::not_found(format!(
                    "workflow not found: {id}"
                )))
            })
    }

    /// The decoded result of a workflow this client ran, or the errors of
    /// [`crate::Client::workflow_result`].
    pub async fn workflow_result<T: DeserializeOwned>(&self, id: &str) -> Result<T> {
        let workflow = self.get_workflow(id)?;
        if workflow.state != pb::WorkflowState::Succeeded as i32 {
            let failed = self.get(&workflow.failed_task_id)?;
            let error = failed.error.unwrap_or_default();
            return Err(Error::TaskFailed {
                error_type: error.r#type,
                message: format!(
                    "workflow {id} failed: its task {} failed: {}",
                    workflow.failed_task_id, error.message
                ),
                traceback: error.traceback,
            });
        }
        from_optional_payload(workflow.result.as_ref()).map_err(|reason| Error::Decode {
            what: format!("result of workflow {id}"),
            reason,
        })
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

fn spec_of_name(node: &pb::WorkflowNode) -> String {
    node.task
        .as_ref()
        .map(|task| task.name.clone())
        .unwrap_or_default()
}

fn json_payload(value: &serde_json::Value) -> pb::Payload {
    pb::Payload {
        data: serde_json::to_vec(value).unwrap_or_default(),
        content_type: "application/json".into(),
    }
}

/// A parent that did not succeed, as a chord callback that allows errors
/// sees it.
fn error_value(task: &pb::Task) -> serde_json::Value {
    let error = task.error.clone().unwrap_or_default();
    serde_json::json!({"error": {"type": error.r#type, "message": error.message, "task_id": task.id}})
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
            .register("xsum", |ctx: TaskContext| async move {
                let numbers: Vec<i64> = ctx.arg(0)?;
                Ok(json!(numbers.iter().sum::<i64>()))
            })
            .register("seen", |ctx: TaskContext| async move {
                let id: String = ctx.arg(0)?;
                let error: serde_json::Value = ctx.arg(1)?;
                Ok(json!([id, error["message"]]))
            })
    }

    #[tokio::test]
    async fn workflows_run_in_process_with_the_servers_rules() {
        use crate::canvas::{chain, chord, group};
        let client = client();
        let workflow = chain([
            TaskRequest::new("add").arg(1).arg(2).into(),
            group((0..3).map(|i| TaskRequest::new("add").arg(i))),
            TaskRequest::new("xsum").into(),
        ]);
        let handle = client.submit_workflow(workflow).await.unwrap();
        assert_eq!(client.workflow_result::<i64>(&handle.id).await.unwrap(), 12);
        let failing = chord(
            [
                TaskRequest::new("add").arg(1).arg(1).into(),
                crate::Canvas::from(TaskRequest::new("boom")),
            ],
            TaskRequest::new("xsum"),
        )
        .link_error(TaskRequest::new("seen"));
        let handle = client.submit_workflow(failing).await.unwrap();
        let workflow = client.get_workflow(&handle.id).unwrap();
        assert_eq!(workflow.state, pb::WorkflowState::Failed as i32);
        let body = workflow.nodes[2].task.as_ref().unwrap();
        let error = body.error.as_ref().unwrap();
        assert_eq!(error.reason, pb::FailureReason::DependencyFailed as i32);
        assert_eq!(error.cause_task_id, handle.task_ids[1]);
        let errback = workflow.nodes[3].task.as_ref().unwrap();
        assert_eq!(errback.state, pb::TaskState::Succeeded as i32);
        let seen: serde_json::Value =
            serde_json::from_slice(&errback.result.as_ref().unwrap().data).unwrap();
        assert_eq!(seen, json!([handle.task_ids[1], "bad input"]));
        let error = client.workflow_result::<i64>(&handle.id).await.unwrap_err();
        assert!(error.to_string().contains(&handle.task_ids[1]), "{error}");
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
