//! The results role: task states and outcomes, and waiting for them. Waits
//! are woken by store notifications, never by polling.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use conveyor_api::pb::{self, results_service_server as server};
use conveyor_core::time::{duration_ms, now_ms};
use conveyor_core::{ConveyorError, Namespace, TaskId};
use conveyor_store::{
    DeadLetterCursor, ForgetAck, Store, StoredWorkflow, WorkflowNodes, wait_terminal,
};

mod events;

/// Fully qualified service name, for health.
pub const SERVICE_NAME: &str = "conveyor.v1.ResultsService";

/// The ResultsService implementation.
pub struct Results {
    store: Arc<dyn Store>,
    /// Longest a single WaitTask may wait.
    max_wait: Duration,
}

impl Results {
    /// A results role over `store`; WaitTask waits at most `max_wait`.
    pub fn new(store: Arc<dyn Store>, max_wait: Duration) -> Self {
        Self { store, max_wait }
    }

    /// The tonic service.
    pub fn into_server(self) -> server::ResultsServiceServer<Self> {
        server::ResultsServiceServer::new(self).max_encoding_message_size(64 * 1024 * 1024)
    }

    /// Task `id` if it exists in `namespace`: one of another namespace is
    /// as invisible as a missing one.
    async fn load(&self, namespace: &Namespace, id: TaskId) -> Result<pb::Task, ConveyorError> {
        match self.store.get(id, now_ms()).await? {
            Some(task) if task.is_workflow && task.in_namespace(namespace) => Err(not_a_task(id)),
            Some(task) if task.in_namespace(namespace) => Ok(task.to_pb()),
            _ => Err(ConveyorError::task_not_found(id.to_string())),
        }
    }

    /// When a wait ends: the soonest of the requested timeout, the caller's
    /// `grpc-timeout` and the server's maximum wait.
    fn wait_deadline(
        &self,
        timeout: Option<&prost_types::Duration>,
        caller_deadline: Option<Duration>,
    ) -> Result<tokio::time::Instant, ConveyorError> {
        let requested = match timeout {
            Some(timeout) => Some(Duration::from_millis(
                duration_ms(timeout)
                    .ok_or_else(|| ConveyorError::invalid("timeout", "must be non-negative"))?
                    as u64,
            )),
            None => None,
        };
        let wait = [requested, caller_deadline, Some(self.max_wait)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.max_wait);
        Ok(tokio::time::Instant::now() + wait)
    }

    /// Workflow `id` if it exists in `namespace`, with the nodes asked for.
    async fn load_workflow(
        &self,
        namespace: &Namespace,
        id: TaskId,
        nodes: WorkflowNodes,
    ) -> Result<StoredWorkflow, ConveyorError> {
        match self.store.get_workflow(id, nodes, now_ms()).await? {
            Some(workflow) if workflow.head.in_namespace(namespace) => Ok(workflow),
            _ => Err(workflow_not_found(id)),
        }
    }
}

fn not_a_task(id: TaskId) -> ConveyorError {
    ConveyorError::FailedPrecondition(format!(
        "{id} is a workflow, not a task: read it with GetWorkflow (`conveyor workflow get {id}`)"
    ))
}

fn workflow_not_found(id: TaskId) -> ConveyorError {
    ConveyorError::NotFound {
        kind: "workflow",
        id: id.to_string(),
    }
}

/// The view a request asks for, `default` when unset.
fn workflow_view(value: i32, default: pb::WorkflowView) -> Result<pb::WorkflowView, ConveyorError> {
    match pb::WorkflowView::try_from(value) {
        Ok(pb::WorkflowView::Unspecified) => Ok(default),
        Ok(view) => Ok(view),
        Err(_) => Err(ConveyorError::invalid(
            "view",
            format!("{value} is not a WorkflowView: 1 (summary), 2 (nodes) or 3 (full)"),
        )),
    }
}

fn nodes_for(view: pb::WorkflowView) -> WorkflowNodes {
    if view == pb::WorkflowView::Summary {
        WorkflowNodes::Outputs
    } else {
        WorkflowNodes::All
    }
}

/// The public view of a stored workflow.
fn workflow_to_pb(workflow: &StoredWorkflow, view: pb::WorkflowView) -> pb::Workflow {
    let by_index: std::collections::HashMap<u32, &conveyor_core::StoredTask> = workflow
        .nodes
        .iter()
        .map(|(index, task)| (*index, task))
        .collect();
    let state = conveyor_core::workflow::workflow_state(workflow.head.state);
    let result = (state == pb::WorkflowState::Succeeded)
        .then(|| {
            conveyor_core::workflow::workflow_result(&workflow.graph, |index| {
                by_index.get(&index).copied()
            })
        })
        .flatten();
    let mut state_counts = Vec::new();
    let mut nodes = Vec::new();
    if view != pb::WorkflowView::Summary {
        state_counts = vec![0u32; 10];
        for (index, task) in &workflow.nodes {
            if let Some(count) = state_counts.get_mut(task.state.as_i32() as usize) {
                *count += 1;
            }
            let record = &workflow.graph.nodes[*index as usize];
            let mut task = task.to_pb();
            if view != pb::WorkflowView::Full {
                task.args.clear();
                task.kwargs.clear();
            }
            nodes.push(pb::WorkflowNodeStatus {
                index: *index,
                task: Some(task),
                parents: record.parents.clone(),
                input: record.input,
                trigger: record.trigger,
                label: record.label.clone(),
            });
        }
    }
    let head = &workflow.head;
    pb::Workflow {
        id: head.id.to_string(),
        name: head.record.name.clone(),
        state: state as i32,
        nodes,
        state_counts,
        node_count: workflow.graph.nodes.len() as u32,
        result,
        output_task_ids: workflow
            .graph
            .outputs
            .iter()
            .filter_map(|index| workflow.graph.nodes.get(*index as usize))
            .map(|node| node.task_id.clone())
            .collect(),
        created_at: Some(conveyor_core::time::timestamp_from_ms(
            head.record.created_at_ms,
        )),
        finished_at: (head.finished_at_ms > 0)
            .then(|| conveyor_core::time::timestamp_from_ms(head.finished_at_ms)),
        namespace: Namespace::from_stored(&head.record.namespace)
            .name()
            .to_string(),
        failed_task_id: workflow.first_failed.clone().unwrap_or_default(),
    }
}

/// The caller's `grpc-timeout`, if it sent one (e.g. `100m`, `5S`).
fn grpc_timeout<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[tonic::async_trait]
impl server::ResultsService for Results {
    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let request = request.into_inner();
        let namespace = Namespace::parse("namespace", &request.namespace)?;
        let id = TaskId::parse(&request.task_id, "task_id")?;
        Ok(Response::new(pb::GetTaskResponse {
            task: Some(self.load(&namespace, id).await?),
        }))
    }

    async fn wait_task(
        &self,
        request: Request<pb::WaitTaskRequest>,
    ) -> Result<Response<pb::WaitTaskResponse>, Status> {
        let caller_deadline = grpc_timeout(&request);
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let message = request.into_inner();
        let namespace = Namespace::parse("namespace", &message.namespace)?;
        let id = TaskId::parse(&message.task_id, "task_id")?;
        let deadline = self.wait_deadline(message.timeout.as_ref(), caller_deadline)?;
        let view = pb::TaskView::try_from(message.view).map_err(|_| {
            ConveyorError::invalid(
                "view",
                format!(
                    "{} is not a TaskView: 1 (outcome) or 2 (full)",
                    message.view
                ),
            )
        })?;
        let task = wait_terminal(self.store.as_ref(), &namespace, id, deadline).await?;
        if task.is_workflow {
            return Err(not_a_task(id).into());
        }
        let mut task = task.to_pb();
        if view != pb::TaskView::Full {
            task.args.clear();
            task.kwargs.clear();
        }
        Ok(Response::new(pb::WaitTaskResponse { task: Some(task) }))
    }

    type WatchTaskStream = ReceiverStream<Result<pb::WatchTaskResponse, Status>>;
    type WatchWorkflowStream = ReceiverStream<Result<pb::WatchWorkflowResponse, Status>>;

    async fn get_workflow(
        &self,
        request: Request<pb::GetWorkflowRequest>,
    ) -> Result<Response<pb::GetWorkflowResponse>, Status> {
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let request = request.into_inner();
        let namespace = Namespace::parse("namespace", &request.namespace)?;
        let id = TaskId::parse(&request.workflow_id, "workflow_id")?;
        let view = workflow_view(request.view, pb::WorkflowView::Nodes)?;
        let workflow = self.load_workflow(&namespace, id, nodes_for(view)).await?;
        Ok(Response::new(pb::GetWorkflowResponse {
            workflow: Some(workflow_to_pb(&workflow, view)),
        }))
    }

    async fn wait_workflow(
        &self,
        request: Request<pb::WaitWorkflowRequest>,
    ) -> Result<Response<pb::WaitWorkflowResponse>, Status> {
        let caller_deadline = grpc_timeout(&request);
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let message = request.into_inner();
        let namespace = Namespace::parse("namespace", &message.namespace)?;
        let id = TaskId::parse(&message.workflow_id, "workflow_id")?;
        let view = workflow_view(message.view, pb::WorkflowView::Summary)?;
        let deadline = self.wait_deadline(message.timeout.as_ref(), caller_deadline)?;
        // A workflow's head finishes with its last node.
        let head = self.store.get(id, now_ms()).await?;
        if !head.is_some_and(|head| head.is_workflow && head.in_namespace(&namespace)) {
            return Err(workflow_not_found(id).into());
        }
        match wait_terminal(self.store.as_ref(), &namespace, id, deadline).await {
            Ok(_) => {}
            Err(ConveyorError::DeadlineExceeded(_)) => {
                return Err(ConveyorError::DeadlineExceeded(format!(
                    "workflow {id} is still running; wait again, or look at its nodes with \
                     `conveyor workflow get {id}`"
                ))
                .into());
            }
            Err(error) => return Err(error.into()),
        }
        let workflow = self.load_workflow(&namespace, id, nodes_for(view)).await?;
        Ok(Response::new(pb::WaitWorkflowResponse {
            workflow: Some(workflow_to_pb(&workflow, view)),
        }))
    }

    async fn watch_workflow(
        &self,
        request: Request<pb::WatchWorkflowRequest>,
    ) -> Result<Response<Self::WatchWorkflowStream>, Status> {
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let request = request.into_inner();
        let namespace = Namespace::parse("namespace", &request.namespace)?;
        let id = TaskId::parse(&request.workflow_id, "workflow_id")?;
        let view = workflow_view(request.view, pb::WorkflowView::Nodes)?;
        // Subscribe (and ask the store to notify the head) before reading.
        let mut events = self.store.events().subscribe_task(id);
        match self.store.watch(id, now_ms()).await? {
            Some(head) if head.is_workflow && head.in_namespace(&namespace) => {}
            _ => return Err(workflow_not_found(id).into()),
        }
        let first = workflow_to_pb(
            &self.load_workflow(&namespace, id, nodes_for(view)).await?,
            view,
        );
        let (sender, receiver) = mpsc::channel(16);
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut done = first.state != pb::WorkflowState::Running as i32;
            let mut last = first.clone();
            if sender
                .send(Ok(pb::WatchWorkflowResponse {
                    workflow: Some(first),
                }))
                .await
                .is_err()
            {
                return;
            }
            while !done {
                tokio::select! {
                    _ = events.changed() => {},
                    _ = sender.closed() => return,
                }
                let read = match store.get_workflow(id, nodes_for(view), now_ms()).await {
                    Ok(Some(workflow)) => workflow_to_pb(&workflow, view),
                    Ok(None) => {
                        let _ = sender.send(Err(workflow_not_found(id).into())).await;
                        return;
                    }
                    Err(error) => {
                        let _ = sender.send(Err(error.into())).await;
                        return;
                    }
                };
                if read == last {
                    continue;
                }
                done = read.state != pb::WorkflowState::Running as i32;
                last = read.clone();
                if sender
                    .send(Ok(pb::WatchWorkflowResponse {
                        workflow: Some(read),
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
    type WatchEventsStream = ReceiverStream<Result<pb::WatchEventsResponse, Status>>;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let request = request.into_inner();
        let namespace = Namespace::parse("namespace", &request.namespace)?;
        for (index, kind) in request.kinds.iter().enumerate() {
            if pb::EventKind::try_from(*kind).is_err() || *kind == 0 {
                return Err(ConveyorError::invalid(
                    format!("kinds[{index}]"),
                    format!(
                        "{kind} is not an EventKind; use the values of conveyor.v1.EventKind, \
                         e.g. 6 (EVENT_KIND_TASK_SUCCEEDED), or no kinds for all"
                    ),
                )
                .into());
            }
        }
        let filter = events::Filter {
            namespace,
            queues: request.queues.into_iter().collect(),
            task_names: request.task_names.into_iter().collect(),
            kinds: request.kinds.into_iter().collect(),
        };
        // Subscribe before switching the stream on, so nothing published
        // after this call returns is missed.
        let receiver = self.store.events().subscribe_events();
        self.store.enable_events().await?;
        let (outbox, inbox) = events::outbox();
        tokio::spawn(events::forward(
            self.store.clone(),
            receiver,
            filter,
            outbox,
        ));
        Ok(Response::new(ReceiverStream::new(inbox)))
    }

    async fn watch_task(
        &self,
        request: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let request = request.into_inner();
        let namespace = Namespace::parse("namespace", &request.namespace)?;
        let id = TaskId::parse(&request.task_id, "task_id")?;
        // Subscribe before the first read so no change is missed in between.
        let mut events = self.store.events().subscribe_task(id);
        let first = match self.store.watch(id, now_ms()).await? {
            Some(task) if task.in_namespace(&namespace) => task.to_pb(),
            _ => return Err(ConveyorError::task_not_found(id.to_string()).into()),
        };
        let (sender, receiver) = mpsc::channel(16);
        let store = self.store.clone();
        tokio::spawn(async move {
            // Every field a watcher cares about: a progress report can land in
            // the same millisecond as the state change before it.
            let mut last = (
                first.state,
                first.updated_at,
                first.attempt,
                first.progress.clone(),
            );
            let mut terminal = is_terminal(&first);
            if sender
                .send(Ok(pb::WatchTaskResponse { task: Some(first) }))
                .await
                .is_err()
            {
                return;
            }
            while !terminal {
                let finished = tokio::select! {
                    change = events.changed() => change,
                    _ = sender.closed() => return,
                };
                let read = match finished {
                    Some(task) => Ok(Some(Arc::unwrap_or_clone(task))),
                    None => store.get(id, now_ms()).await,
                };
                let task = match read {
                    Ok(Some(task)) => task.to_pb(),
                    Ok(None) => {
                        let _ = sender
                            .send(Err(ConveyorError::task_not_found(id.to_string()).into()))
                            .await;
                        return;
                    }
                    Err(error) => {
                        let _ = sender.send(Err(error.into())).await;
                        return;
                    }
                };
                let current = (
                    task.state,
                    task.updated_at,
                    task.attempt,
                    task.progress.clone(),
                );
                if current == last {
                    continue;
                }
                last = current;
                terminal = is_terminal(&task);
                if sender
                    .send(Ok(pb::WatchTaskResponse { task: Some(task) }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn forget_task(
        &self,
        request: Request<pb::ForgetTaskRequest>,
    ) -> Result<Response<pb::ForgetTaskResponse>, Status> {
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let request = request.into_inner();
        let namespace = Namespace::parse("namespace", &request.namespace)?;
        let id = TaskId::parse(&request.task_id, "task_id")?;
        self.load(&namespace, id).await?;
        match self.store.forget(id).await? {
            ForgetAck::Forgotten => Ok(Response::new(pb::ForgetTaskResponse {})),
            ForgetAck::NotFinished(state) => Err(ConveyorError::FailedPrecondition(format!(
                "task {id} is {state:?}; only finished tasks can be forgotten"
            ))
            .into()),
            ForgetAck::NotFound => Err(ConveyorError::task_not_found(id.to_string()).into()),
        }
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let message = request.into_inner();
        if message.page_size > MAX_PAGE {
            return Err(
                ConveyorError::invalid("page_size", format!("must be at most {MAX_PAGE}")).into(),
            );
        }
        let page_size = if message.page_size == 0 {
            DEFAULT_PAGE
        } else {
            message.page_size
        };
        let cursor = DeadLetterCursor::from_token(&message.page_token).ok_or_else(|| {
            ConveyorError::invalid("page_token", "not a token from a previous response")
        })?;
        let namespace = Namespace::parse("namespace", &message.namespace)?;
        let (tasks, next) = self.store.dead_letters(cursor, page_size as usize).await?;
        // Filtered after the read: a page of another namespace's dead letters
        // comes back short (possibly empty) with a next token.
        Ok(Response::new(pb::ListDeadLettersResponse {
            tasks: tasks
                .iter()
                .filter(|task| task.in_namespace(&namespace))
                .map(|task| task.to_pb())
                .collect(),
            next_page_token: next.map(DeadLetterCursor::to_token).unwrap_or_default(),
        }))
    }
}

/// Most dead letters per page, and the default.
const MAX_PAGE: u32 = 1000;
const DEFAULT_PAGE: u32 = 100;

fn is_terminal(task: &pb::Task) -> bool {
    conveyor_core::TaskState::from_i32(task.state)
        .is_some_and(conveyor_core::TaskState::is_terminal)
}
