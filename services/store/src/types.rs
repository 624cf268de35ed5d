//! Requests and answers of the `Store` operations.

use conveyor_api::{pb, store_pb};
use conveyor_core::{StoredTask, TaskId, TaskState};

/// A queue and a task name: workers lease per (queue, name), so a worker is
/// never handed a task it did not register.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueKey(String);

impl QueueKey {
    /// The key of `name` tasks in `queue` (queue names contain no ':').
    pub fn new(queue: &str, name: &str) -> Self {
        Self(format!("{queue}:{name}"))
    }

    /// From the encoded form.
    pub fn from_encoded(encoded: String) -> Self {
        Self(encoded)
    }

    /// The encoded form, `queue:name`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The list of this key's tasks at `priority`: level 0 is the key itself
    /// (no cost for the common case), levels 1-9 add `#N` ('#' cannot occur
    /// in queue or task names).
    pub fn at_priority(&self, priority: u32) -> QueueKey {
        if priority == 0 {
            self.clone()
        } else {
            QueueKey(format!("{}#{priority}", self.0))
        }
    }

    /// The key without its priority level: what workers and notifications use.
    pub fn base(&self) -> QueueKey {
        match self.0.split_once('#') {
            Some((base, _)) => QueueKey(base.to_string()),
            None => self.clone(),
        }
    }
}

/// Priority levels, highest first, as leases visit them.
pub const PRIORITIES_HIGH_FIRST: [u32; 10] = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0];

/// What `enqueue` did with one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnqueueAck {
    /// The new task's id, or the earlier task's for a known idempotency key.
    pub id: TaskId,
    /// Its state now; `None` for a duplicate whose first task's record is
    /// gone (forgotten, or its result TTL passed).
    pub state: Option<TaskState>,
    /// Whether an earlier task was returned.
    pub duplicate: bool,
}

/// A lease request from one worker session.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    /// Session asking.
    pub session_id: String,
    /// Worker id of the session, recorded for display.
    pub worker_id: String,
    /// Queue keys the worker can serve.
    pub queue_keys: Vec<QueueKey>,
    /// Most tasks to lease.
    pub max: usize,
    /// Lease deadline if no heartbeat arrives, Unix ms.
    pub lease_deadline_ms: i64,
    /// Now, Unix ms.
    pub now_ms: i64,
}

/// A task leased to a session.
#[derive(Debug, Clone)]
pub struct LeasedTask {
    /// Task id.
    pub id: TaskId,
    /// Submission record.
    pub record: store_pb::TaskRecord,
    /// Attempt number, 1 for the first.
    pub attempt: u32,
    /// Failed attempts before this one.
    pub failures: u32,
    /// Fencing token of this lease.
    pub lease_token: u64,
    /// The workflow the task is a node of.
    pub workflow_id: Option<TaskId>,
}

/// A worker reports that a handler started.
#[derive(Debug, Clone)]
pub struct StartReport {
    /// Task id.
    pub id: TaskId,
    /// Session reporting.
    pub session_id: String,
    /// Token of the lease.
    pub lease_token: u64,
}

/// The outcome of one attempt as reported by the session that ran it.
#[derive(Debug, Clone)]
pub struct OutcomeReport {
    /// Task id.
    pub id: TaskId,
    /// Session reporting.
    pub session_id: String,
    /// Token of the lease.
    pub lease_token: u64,
    /// What happened.
    pub outcome: Outcome,
}

/// What happened in an attempt.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The handler returned a value.
    Succeeded(pb::Payload),
    /// The handler failed; `retry_at_ms` set when the policy allows a retry.
    Failed {
        /// The error.
        error: pb::TaskError,
        /// When to retry, if at all.
        retry_at_ms: Option<i64>,
    },
}

/// Whether an outcome was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeAck {
    /// Recorded; the task's new state.
    Recorded(TaskState),
    /// No such task.
    NotFound,
    /// The token is not the current lease's.
    StaleLease,
    /// The session does not hold the task (anymore).
    NotHeld,
}

/// What `cancel` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelAck {
    /// Cancelled now.
    Cancelled,
    /// Not cancellable in this state (finished).
    NotCancellable(TaskState),
    /// No such task.
    NotFound,
    /// The id is a workflow's: CancelWorkflow cancels it.
    IsWorkflow,
}

/// What `promote_due` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Promotion {
    /// Tasks moved to their queues.
    pub promoted: usize,
    /// Tasks that had expired and became EXPIRED.
    pub expired: usize,
    /// When the next SCHEDULED task is due.
    pub next_due_ms: Option<i64>,
}

/// SCHEDULED tasks at a glance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScheduledSummary {
    /// How many.
    pub count: u64,
    /// The earliest due time.
    pub next_due_ms: Option<i64>,
}

/// Progress reported by the session running a task.
#[derive(Debug, Clone)]
pub struct ProgressReport {
    /// Task id.
    pub id: TaskId,
    /// Session reporting.
    pub session_id: String,
    /// Token of the lease.
    pub lease_token: u64,
    /// What to record.
    pub progress: pb::Progress,
}

/// What `forget` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForgetAck {
    /// Deleted.
    Forgotten,
    /// Not finished yet; nothing changed.
    NotFinished(TaskState),
    /// No such task.
    NotFound,
}

/// What `replay` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayAck {
    /// Queued again.
    Replayed,
    /// Not FAILED; nothing changed.
    NotFailed(TaskState),
    /// No such task.
    NotFound,
    /// A workflow node: its dependents settled on its failure already.
    WorkflowNode,
}

/// Where a dead-letter listing continues: a partition and an offset in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeadLetterCursor {
    /// Partition.
    pub partition: u16,
    /// Offset within the partition's dead letters.
    pub offset: u64,
}

impl DeadLetterCursor {
    /// The opaque page token form.
    pub fn to_token(self) -> String {
        format!("{}.{}", self.partition, self.offset)
    }

    /// From a page token; `None` when malformed.
    pub fn from_token(token: &str) -> Option<Self> {
        if token.is_empty() {
            return Some(Self::default());
        }
        let (partition, offset) = token.split_once('.')?;
        Some(Self {
            partition: partition.parse().ok()?,
            offset: offset.parse().ok()?,
        })
    }
}

/// What `replace_schedule` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulePut {
    /// Stored; the schedule's new version.
    Stored(u64),
    /// No schedule with that id.
    NotFound,
    /// The schedule's version is not the one expected; nothing changed.
    Conflict,
}

/// Schedules to fire, as `due_schedules` finds them.
#[derive(Debug, Clone, Default)]
pub struct DueSchedules {
    /// Unpaused schedules whose next run is due, each with its `version`.
    pub due: Vec<pb::Schedule>,
    /// Claimed runs (schedule id, fire ms) whose replica did not settle them
    /// in time: submit them again (idempotently) and settle them.
    pub unsettled: Vec<(String, i64)>,
}

/// How many tasks wait where, for the queue-depth gauge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueDepths {
    /// Ready tasks per queue list (`queue:name`, priority levels apart).
    pub ready: Vec<(QueueKey, u64)>,
    /// Tasks waiting for their due time (countdown, ETA, retry backoff).
    pub scheduled: u64,
    /// Tasks leased to workers.
    pub leased: u64,
    /// Dead letters.
    pub dead: u64,
    /// Paused queues (namespace-scoped names, `ns/queue`), sorted.
    pub paused: Vec<String>,
}

/// What `submit_workflow` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowAck {
    /// The workflow's id, or the earlier one's for a known idempotency key.
    pub id: TaskId,
    /// Its nodes' task ids, in order.
    pub task_ids: Vec<TaskId>,
    /// Whether an earlier workflow was returned.
    pub duplicate: bool,
}

/// Which nodes `get_workflow` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkflowNodes {
    /// Only the output nodes (for the result).
    Outputs,
    /// Every node.
    All,
}

/// A workflow as stored: its head, graph and (some) nodes.
#[derive(Debug, Clone)]
pub struct StoredWorkflow {
    /// The head: state (WAITING while running), name, namespace, times.
    pub head: StoredTask,
    /// The graph.
    pub graph: store_pb::WorkflowRecord,
    /// Nodes read, by index (a node whose result TTL passed is absent).
    pub nodes: Vec<(u32, StoredTask)>,
    /// Nodes not finished.
    pub unfinished: u32,
    /// Nodes FAILED.
    pub failed: u32,
    /// The first node that FAILED.
    pub first_failed: Option<String>,
}
