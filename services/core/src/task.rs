//! A task as the store holds it, and its conversion to the public view.

use conveyor_api::{pb, store_pb};

use crate::ids::TaskId;
use crate::state::TaskState;
use crate::time::{timestamp_from_ms, timestamp_from_us};

/// Everything the store knows about one task.
#[derive(Debug, Clone)]
pub struct StoredTask {
    /// Task id.
    pub id: TaskId,
    /// Immutable submission record.
    pub record: store_pb::TaskRecord,
    /// Current state.
    pub state: TaskState,
    /// Leases granted so far.
    pub attempt: u32,
    /// Failed attempts so far.
    pub failures: u32,
    /// Token of the current (or last) lease; 0 before the first.
    pub lease_token: u64,
    /// Session holding (or that last held) the lease.
    pub session_id: String,
    /// Worker id of that session.
    pub worker_id: String,
    /// Queue it is routed to.
    pub queue: String,
    /// Last state change, Unix ms.
    pub updated_at_ms: i64,
    /// When it is or was due, Unix ms.
    pub due_at_ms: i64,
    /// When it reached a terminal state, Unix ms; 0 before.
    pub finished_at_ms: i64,
    /// The same instant in Unix µs, where the store kept it that precisely
    /// (an outcome a worker reported); 0 otherwise.
    pub finished_at_us: i64,
    /// The recorded outcome (result, or last error).
    pub outcome: Option<store_pb::OutcomeRecord>,
    /// Latest progress of the running attempt.
    pub progress: Option<pb::Progress>,
    /// The workflow this task is a node of, and its index there.
    pub node_of: Option<(TaskId, u32)>,
    /// Whether this entry is a workflow's head (its state and counters), not
    /// a task: the results service answers for it with GetWorkflow.
    pub is_workflow: bool,
}

impl StoredTask {
    /// Whether the task belongs to `namespace`.
    pub fn in_namespace(&self, namespace: &crate::namespace::Namespace) -> bool {
        crate::namespace::owns(namespace, &self.record.namespace)
    }

    /// The public view of the task.
    pub fn to_pb(&self) -> pb::Task {
        let (result, error) = match self
            .outcome
            .as_ref()
            .and_then(|outcome| outcome.outcome.clone())
        {
            Some(store_pb::outcome_record::Outcome::Result(payload)) => (Some(payload), None),
            Some(store_pb::outcome_record::Outcome::Error(error)) => (None, Some(error)),
            None => (None, None),
        };
        pb::Task {
            id: self.id.to_string(),
            name: self.record.name.clone(),
            args: with_content_types(self.record.args.clone()),
            kwargs: self
                .record
                .kwargs
                .clone()
                .into_iter()
                .map(|(name, payload)| (name, with_content_type(payload)))
                .collect(),
            options: self.record.options.clone(),
            state: self.state.to_pb() as i32,
            attempt: self.attempt,
            failures: self.failures,
            created_at: Some(timestamp_from_ms(self.record.created_at_ms)),
            updated_at: Some(timestamp_from_ms(self.updated_at_ms)),
            due_at: Some(timestamp_from_ms(self.due_at_ms)),
            finished_at: match (self.finished_at_us, self.finished_at_ms) {
                (us, _) if us > 0 => Some(timestamp_from_us(us)),
                (_, ms) if ms > 0 => Some(timestamp_from_ms(ms)),
                _ => None,
            },
            worker_id: self.worker_id.clone(),
            result,
            error,
            queue: crate::namespace::split_queue(&self.queue).1.to_string(),
            progress: self.progress.clone(),
            namespace: crate::namespace::Namespace::from_stored(&self.record.namespace)
                .name()
                .to_string(),
            trace_context: self.record.trace_context.clone(),
            workflow_id: self
                .node_of
                .map(|(workflow, _)| workflow.to_string())
                .unwrap_or_default(),
            workflow_node: self.node_of.map_or(0, |(_, index)| index),
        }
    }
}

/// JSON payloads are stored with the empty (default) content type to keep
/// records small; everything a client or worker reads names it again.
pub fn with_content_type(mut payload: pb::Payload) -> pb::Payload {
    if payload.content_type.is_empty() {
        payload.content_type = "application/json".to_string();
    }
    payload
}

/// [`with_content_type`] over a list.
pub fn with_content_types(payloads: Vec<pb::Payload>) -> Vec<pb::Payload> {
    payloads.into_iter().map(with_content_type).collect()
}
