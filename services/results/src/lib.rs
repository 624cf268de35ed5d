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
use conveyor_store::{DeadLetterCursor, ForgetAck, Store, wait_terminal};

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
            Some(task) if task.in_namespace(namespace) => Ok(task.to_pb()),
            _ => Err(ConveyorError::task_not_found(id.to_string())),
        }
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
        let message = request.into_inner();
        let namespace = Namespace::parse("namespace", &message.namespace)?;
        let id = TaskId::parse(&message.task_id, "task_id")?;
        let requested = match &message.timeout {
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
        let deadline = tokio::time::Instant::now() + wait;
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
        let mut task = task.to_pb();
        if view != pb::TaskView::Full {
            task.args.clear();
            task.kwargs.clear();
        }
        Ok(Response::new(pb::WaitTaskResponse { task: Some(task) }))
    }

    type WatchTaskStream = ReceiverStream<Result<pb::WatchTaskResponse, Status>>;
    type WatchEventsStream = ReceiverStream<Result<pb::WatchEventsResponse, Status>>;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
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
