//! The submission role: validates and accepts tasks. A task is acknowledged
//! only after the store has it; invalid input changes nothing.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use conveyor_api::pb::{self, submission_service_server as server};
use conveyor_core::time::now_ms;
use conveyor_core::validate::validate_with_defaults;
use conveyor_core::workflow::validate_workflow;
use conveyor_core::{ConveyorError, Limits, Namespace, NewTask, TaskDefaults, TaskId, TaskState};
use conveyor_runtime::metrics::{TASKS_CANCELLED, TASKS_SUBMITTED, count_tasks};
use conveyor_store::{CancelAck, EnqueueAck, ReplayAck, Store};

mod group;
use group::GroupCommit;

/// Fully qualified service name, for health.
pub const SERVICE_NAME: &str = "conveyor.v1.SubmissionService";

/// The SubmissionService implementation.
pub struct Submission {
    store: Arc<dyn Store>,
    limits: Limits,
    /// Options per task name.
    defaults: TaskDefaults,
    /// Batches concurrent single submissions into shared store calls.
    group: GroupCommit,
}

impl Submission {
    /// A submission role over `store`. Starts its group-commit loop, so it
    /// must be called within a tokio runtime.
    pub fn new(store: Arc<dyn Store>, limits: Limits, defaults: TaskDefaults) -> Self {
        Self {
            group: GroupCommit::start(store.clone()),
            store,
            limits,
            defaults,
        }
    }

    /// The tonic service, accepting messages up to the documented limits.
    pub fn into_server(self) -> server::SubmissionServiceServer<Self> {
        let max_message = self.limits.max_task_bytes * 2 + 1024 * 1024;
        server::SubmissionServiceServer::new(self)
            .max_decoding_message_size(max_message.max(64 * 1024 * 1024))
    }

    /// NOT_FOUND unless task `id` exists in `namespace` (a task of another
    /// namespace is as invisible as a missing one).
    async fn check_owner(
        &self,
        namespace: &str,
        id: TaskId,
    ) -> Result<conveyor_core::StoredTask, ConveyorError> {
        let namespace = Namespace::parse("namespace", namespace)?;
        match self.store.get(id, now_ms()).await? {
            Some(task) if task.in_namespace(&namespace) => Ok(task),
            _ => Err(ConveyorError::task_not_found(id.to_string())),
        }
    }

    /// Places one task (the store decides its partition).
    fn place(&self, mut task: NewTask) -> NewTask {
        self.store.place(std::slice::from_mut(&mut task));
        task
    }
}

/// The trace a task without its own `trace_context` continues: this call's
/// server span when traces are exported, else the caller's `traceparent`
/// metadata as sent.
fn caller_trace(metadata: &tonic::metadata::MetadataMap) -> Option<pb::TraceContext> {
    if let Some((traceparent, tracestate)) =
        conveyor_runtime::telemetry::context_of(&tracing::Span::current())
    {
        return Some(pb::TraceContext {
            traceparent,
            tracestate,
        });
    }
    let header = |name| {
        metadata
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    };
    let traceparent = header("traceparent")?;
    conveyor_core::validate::is_traceparent(&traceparent).then(|| pb::TraceContext {
        traceparent,
        tracestate: header("tracestate").unwrap_or_default(),
    })
}

/// Metric labels of a task: namespace, queue, task name.
fn labels_of(task: &NewTask) -> (String, String, String) {
    let (namespace, queue) = conveyor_core::namespace::split_queue(&task.queue);
    (
        namespace.name().to_string(),
        queue.to_string(),
        task.record.name.clone(),
    )
}

fn to_response(ack: EnqueueAck) -> pb::SubmitTaskResponse {
    pb::SubmitTaskResponse {
        task_id: ack.id.to_string(),
        duplicate: ack.duplicate,
        state: ack
            .state
            .map_or(pb::TaskState::Unspecified, TaskState::to_pb) as i32,
    }
}

#[tonic::async_trait]
impl server::SubmissionService for Submission {
    async fn submit_task(
        &self,
        request: Request<pb::SubmitTaskRequest>,
    ) -> Result<Response<pb::SubmitTaskResponse>, Status> {
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let (metadata, extensions, request) = request.into_parts();
        let namespace = Namespace::parse("namespace", &request.namespace)?;
        let spec = request
            .task
            .ok_or_else(|| ConveyorError::invalid("task", "is required"))?;
        let now = now_ms();
        let mut task = validate_with_defaults(spec, "task", &self.limits, &self.defaults, now, 0)?
            .in_namespace(&namespace);
        task.record.submitted_by = conveyor_runtime::auth::principal_of(&extensions);
        if task.record.trace_context.is_none() {
            task.record.trace_context = caller_trace(&metadata);
        }
        let task = self.place(task);
        let labels = conveyor_runtime::metrics::enabled().then(|| labels_of(&task));
        let ack = self.group.enqueue(task, now).await?;
        if let Some((namespace, queue, name)) = labels
            && !ack.duplicate
        {
            count_tasks(TASKS_SUBMITTED, &namespace, &queue, &name, 1);
        }
        Ok(Response::new(to_response(ack)))
    }

    async fn submit_tasks(
        &self,
        request: Request<pb::SubmitTasksRequest>,
    ) -> Result<Response<pb::SubmitTasksResponse>, Status> {
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let (metadata, extensions, request) = request.into_parts();
        let namespace = Namespace::parse("namespace", &request.namespace)?;
        let specs = request.tasks;
        if specs.is_empty() {
            return Err(ConveyorError::invalid("tasks", "must not be empty").into());
        }
        if specs.len() > self.limits.max_batch {
            let description = format!(
                "{} tasks, the limit is {}",
                specs.len(),
                self.limits.max_batch
            );
            return Err(ConveyorError::exhausted("tasks", description).into());
        }
        let now = now_ms();
        let mut tasks = specs
            .into_iter()
            .enumerate()
            .map(|(index, spec)| {
                let prefix = format!("tasks[{index}]");
                validate_with_defaults(spec, &prefix, &self.limits, &self.defaults, now, 0)
                    .map(|task| task.in_namespace(&namespace))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let submitter = conveyor_runtime::auth::principal_of(&extensions);
        if !submitter.is_empty() {
            for task in &mut tasks {
                task.record.submitted_by = submitter.clone();
            }
        }
        // One partition for the whole batch: one atomic store call, so a
        // failure stores nothing and a success stored everything.
        // Tasks without a context of their own continue the caller's
        // (worked out once, and only if one needs it).
        if tasks.iter().any(|task| task.record.trace_context.is_none()) {
            let caller = caller_trace(&metadata);
            for task in tasks
                .iter_mut()
                .filter(|task| task.record.trace_context.is_none())
            {
                task.record.trace_context.clone_from(&caller);
            }
        }
        self.store.place(&mut tasks);
        let labels: Vec<_> = if conveyor_runtime::metrics::enabled() {
            tasks.iter().map(labels_of).collect()
        } else {
            Vec::new()
        };
        let acks = self.store.enqueue(tasks, now).await?;
        for ((namespace, queue, name), ack) in labels.iter().zip(&acks) {
            if !ack.duplicate {
                count_tasks(TASKS_SUBMITTED, namespace, queue, name, 1);
            }
        }
        Ok(Response::new(pb::SubmitTasksResponse {
            results: acks.into_iter().map(to_response).collect(),
        }))
    }

    async fn cancel_task(
        &self,
        request: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::CancelTaskResponse>, Status> {
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let access = conveyor_runtime::auth::access_of(&request);
        let request = request.into_inner();
        let id = TaskId::parse(&request.task_id, "task_id")?;
        let task = self.check_owner(&request.namespace, id).await?;
        conveyor_runtime::auth::check_cancel(
            access.as_ref(),
            &request.namespace,
            &task.record.submitted_by,
            &format!("task {id}"),
        )?;
        let (cancelled, state) = match self.store.cancel(id, now_ms()).await? {
            CancelAck::Cancelled => {
                let record = &task.record;
                let queue = record
                    .options
                    .as_ref()
                    .map(|options| options.queue.as_str())
                    .filter(|queue| !queue.is_empty())
                    .unwrap_or(conveyor_core::validate::DEFAULT_QUEUE);
                let namespace = Namespace::from_stored(&record.namespace);
                count_tasks(TASKS_CANCELLED, namespace.name(), queue, &record.name, 1);
                (true, TaskState::Cancelled)
            }
            CancelAck::NotCancellable(state) => (false, state),
            CancelAck::NotFound => return Err(ConveyorError::task_not_found(id.to_string()).into()),
            CancelAck::IsWorkflow => {
                return Err(ConveyorError::FailedPrecondition(format!(
                    "{id} is a workflow, not a task: cancel it with CancelWorkflow \
                     (`conveyor workflow cancel {id}`)"
                ))
                .into());
            }
        };
        Ok(Response::new(pb::CancelTaskResponse {
            cancelled,
            state: state.to_pb() as i32,
        }))
    }

    async fn replay_task(
        &self,
        request: Request<pb::ReplayTaskRequest>,
    ) -> Result<Response<pb::ReplayTaskResponse>, Status> {
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let request = request.into_inner();
        let id = TaskId::parse(&request.task_id, "task_id")?;
        self.check_owner(&request.namespace, id).await?;
        match self.store.replay(id, now_ms()).await? {
            ReplayAck::Replayed => Ok(Response::new(pb::ReplayTaskResponse {
                state: TaskState::Queued.to_pb() as i32,
            })),
            ReplayAck::NotFailed(state) => Err(ConveyorError::FailedPrecondition(format!(
                "task {id} is {state:?}; only FAILED tasks can be replayed"
            ))
            .into()),
            ReplayAck::NotFound => Err(ConveyorError::task_not_found(id.to_string()).into()),
            ReplayAck::WorkflowNode => Err(ConveyorError::FailedPrecondition(format!(
                "task {id} is a workflow node: its dependents already settled on its failure; \
                 submit the workflow again instead"
            ))
            .into()),
        }
    }

    async fn submit_workflow(
        &self,
        request: Request<pb::SubmitWorkflowRequest>,
    ) -> Result<Response<pb::SubmitWorkflowResponse>, Status> {
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let (metadata, extensions, request) = request.into_parts();
        let namespace = Namespace::parse("namespace", &request.namespace)?;
        let mut spec = request
            .workflow
            .ok_or_else(|| ConveyorError::invalid("workflow", "is required"))?;
        if spec.trace_context.is_none() {
            spec.trace_context = caller_trace(&metadata);
        }
        let now = now_ms();
        let mut workflow =
            validate_workflow(spec, &self.limits, &self.defaults, now)?.in_namespace(&namespace);
        let submitter = conveyor_runtime::auth::principal_of(&extensions);
        if !submitter.is_empty() {
            workflow.head.submitted_by = submitter.clone();
            for node in &mut workflow.nodes {
                node.task.record.submitted_by = submitter.clone();
            }
        }
        self.store.place_workflow(&mut workflow);
        let counts: Option<Vec<(String, String, String)>> = conveyor_runtime::metrics::enabled()
            .then(|| {
                workflow
                    .nodes
                    .iter()
                    .map(|node| labels_of(&node.task))
                    .collect()
            });
        let ack = self.store.submit_workflow(workflow, now).await?;
        if let Some(counts) = counts
            && !ack.duplicate
        {
            for (namespace, queue, name) in counts {
                count_tasks(TASKS_SUBMITTED, &namespace, &queue, &name, 1);
            }
        }
        Ok(Response::new(pb::SubmitWorkflowResponse {
            workflow_id: ack.id.to_string(),
            task_ids: ack.task_ids.iter().map(ToString::to_string).collect(),
            duplicate: ack.duplicate,
        }))
    }

    async fn cancel_workflow(
        &self,
        request: Request<pb::CancelWorkflowRequest>,
    ) -> Result<Response<pb::CancelWorkflowResponse>, Status> {
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let access = conveyor_runtime::auth::access_of(&request);
        let request = request.into_inner();
        let namespace = Namespace::parse("namespace", &request.namespace)?;
        let id = TaskId::parse(&request.workflow_id, "workflow_id")?;
        let not_found = || ConveyorError::NotFound {
            kind: "workflow",
            id: id.to_string(),
        };
        match self.store.get(id, now_ms()).await? {
            Some(head) if head.is_workflow && head.in_namespace(&namespace) => {
                conveyor_runtime::auth::check_cancel(
                    access.as_ref(),
                    &request.namespace,
                    &head.record.submitted_by,
                    &format!("workflow {id}"),
                )?;
            }
            _ => return Err(not_found().into()),
        }
        let (cancelled, state) = self
            .store
            .cancel_workflow(id, now_ms())
            .await?
            .ok_or_else(not_found)?;
        Ok(Response::new(pb::CancelWorkflowResponse {
            cancelled,
            state: conveyor_core::workflow::workflow_state(state) as i32,
        }))
    }
}
