//! The `Store`: the task lifecycle as atomic operations, with an embedded
//! memory backend and a Redis backend that pass one conformance suite.

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod events;
pub mod memory;
pub mod redis;
mod stream;
mod types;
mod wait;

use std::collections::BTreeMap;

use async_trait::async_trait;
use conveyor_api::pb;
use conveyor_core::workflow::NewWorkflow;
use conveyor_core::{NewTask, Result, StoredTask, TaskId, TaskState};

pub use events::{EVENT_BUFFER, EventHub, QueueWaiter, SessionEvents, TaskChange, TaskEvents};
pub use memory::MemoryStore;
pub use redis::{RedisConfig, RedisStore, RedisTls, StoreClock};
pub use stream::{EventKind, StoreEvent};
pub use types::*;
pub use wait::wait_terminal;

/// The task lifecycle. Every method is one atomic transition in the backend.
///
/// Instants (`now_ms`, deadlines, due times) are in the caller's clock, so
/// that tests control time. A store shared by several processes compares
/// them on its own clock instead (Redis: `TIME`): it turns each instant into
/// an offset from the caller's `now` and applies it to the store's, so a
/// replica whose clock is off can neither reap live leases nor break rates.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Number of partitions; task ids choose one with [`TaskId::new`].
    fn partitions(&self) -> u16;

    /// Places tasks that will be stored together in one `enqueue` call (a
    /// `SubmitTasks` batch: one partition, so the call is all-or-nothing),
    /// giving each an id that names its partition. The store decides: see
    /// [`conveyor_core::placement`].
    fn place(&self, tasks: &mut [NewTask]) {
        conveyor_core::placement::place(tasks, self.partitions());
    }

    /// Places a workflow: the head and every node in one partition (the
    /// coordination partition when a node needs it), so that a node's
    /// outcome and its dependents change in one atomic operation.
    fn place_workflow(&self, workflow: &mut NewWorkflow) {
        let partitions = self.partitions();
        let partition = if partitions <= 1 || workflow.needs_coordination() {
            conveyor_core::placement::COORDINATION_PARTITION
        } else {
            (rand::random::<u32>() % u32::from(partitions)) as u16
        };
        workflow.assign_ids(partition);
    }

    /// Change notifications for waiters (tasks) and dispatchers (queues).
    fn events(&self) -> &EventHub;

    /// Stores new tasks: QUEUED, or SCHEDULED when due later. A task whose
    /// idempotency key is known returns the first task instead.
    async fn enqueue(&self, tasks: Vec<NewTask>, now_ms: i64) -> Result<Vec<EnqueueAck>>;

    /// Stores a placed workflow in one atomic operation: its head (WAITING
    /// until every node finished) and its nodes, those without parents
    /// QUEUED (or SCHEDULED), the others WAITING. A workflow whose
    /// idempotency key is known returns the first one instead.
    async fn submit_workflow(&self, workflow: NewWorkflow, now_ms: i64) -> Result<WorkflowAck>;

    /// A workflow by id with the nodes asked for; `None` when unknown or
    /// its result TTL passed.
    async fn get_workflow(
        &self,
        id: TaskId,
        nodes: WorkflowNodes,
        now_ms: i64,
    ) -> Result<Option<StoredWorkflow>>;

    /// Cancels every unfinished node of a workflow in one atomic operation
    /// (leased ones are taken from their sessions, which are told).
    /// `None` for an unknown workflow, else the nodes cancelled and the
    /// workflow head's state after the call.
    async fn cancel_workflow(&self, id: TaskId, now_ms: i64) -> Result<Option<(u32, TaskState)>>;

    /// A task by id; `None` when unknown or its result expired.
    async fn get(&self, id: TaskId, now_ms: i64) -> Result<Option<StoredTask>>;

    /// [`Store::get`] for a waiter that subscribed to the task's events:
    /// from now on its changes are notified through [`EventHub`] (a store
    /// may notify only the changes of tasks somebody watches, and send the
    /// finished task along).
    async fn watch(&self, id: TaskId, now_ms: i64) -> Result<Option<StoredTask>> {
        self.get(id, now_ms).await
    }

    /// Leases up to `max` QUEUED tasks from the given queue keys to a session,
    /// in one round trip. Expired tasks met on the way become EXPIRED.
    async fn lease(&self, request: LeaseRequest) -> Result<Vec<LeasedTask>>;

    /// Marks leased tasks RUNNING (when the token still matches).
    async fn mark_started(&self, reports: Vec<StartReport>, now_ms: i64) -> Result<()>;

    /// Extends every lease of the session. `false`: the session holds no
    /// registered leases (never leased, or reaped).
    async fn heartbeat(&self, session_id: &str, deadline_ms: i64, now_ms: i64) -> Result<bool>;

    /// Records outcomes, fenced by lease token and session. `now_us` is in
    /// microseconds: the finish time is kept that precisely.
    async fn complete(&self, reports: Vec<OutcomeReport>, now_us: i64) -> Result<Vec<OutcomeAck>>;

    /// Puts every task the session holds back at the head of its queue.
    async fn release_session(&self, session_id: &str, now_ms: i64) -> Result<Vec<TaskId>>;

    /// Releases the sessions whose lease deadline passed, up to `limit`.
    async fn reap_expired(&self, now_ms: i64, limit: usize) -> Result<Vec<TaskId>>;

    /// Moves SCHEDULED tasks that are due into their queues, up to `limit`.
    async fn promote_due(&self, now_ms: i64, limit: usize) -> Result<Promotion>;

    /// Cancels a task that has not finished. A leased one is taken from its
    /// session, which is told through [`EventHub::task_revoked`].
    async fn cancel(&self, id: TaskId, now_ms: i64) -> Result<CancelAck>;

    /// Records progress of leased tasks (when the token still matches).
    async fn record_progress(&self, reports: Vec<ProgressReport>, now_ms: i64) -> Result<()>;

    /// Deletes a finished task now.
    async fn forget(&self, id: TaskId) -> Result<ForgetAck>;

    /// FAILED tasks, oldest failure first, from `cursor`; returns the next cursor.
    async fn dead_letters(
        &self,
        cursor: DeadLetterCursor,
        limit: usize,
    ) -> Result<(Vec<StoredTask>, Option<DeadLetterCursor>)>;

    /// Queues a FAILED task again with its failures reset.
    async fn replay(&self, id: TaskId, now_ms: i64) -> Result<ReplayAck>;

    /// Pauses (or resumes) handing out a queue's tasks, on every replica.
    async fn set_queue_paused(&self, queue: &str, paused: bool) -> Result<()>;

    /// Stores a new schedule firing next at `next_ms`; its version (1), or
    /// `None` if the id exists.
    async fn create_schedule(
        &self,
        schedule: pb::Schedule,
        next_ms: Option<i64>,
    ) -> Result<Option<u64>>;

    /// Replaces a schedule, when its version is `expected_version` (any
    /// version when `None`): compare-and-set, so concurrent updates, pauses
    /// and runs never overwrite each other.
    async fn replace_schedule(
        &self,
        schedule: pb::Schedule,
        next_ms: Option<i64>,
        expected_version: Option<u64>,
    ) -> Result<SchedulePut>;

    /// A schedule by id, with its version.
    async fn get_schedule(&self, id: &str) -> Result<Option<pb::Schedule>>;

    /// Every schedule, by id, with versions.
    async fn list_schedules(&self) -> Result<Vec<pb::Schedule>>;

    /// Deletes a schedule and its runs; `false` if there is no such id.
    async fn delete_schedule(&self, id: &str) -> Result<bool>;

    /// Unpaused schedules whose next run is due on the store's clock, and
    /// claimed runs left unsettled past their deadline.
    async fn due_schedules(&self, now_ms: i64, limit: usize) -> Result<DueSchedules>;

    /// Claims the run at `fire_ms` before submitting it: compare-and-set on
    /// the schedule's version, and only when `fire_ms` is still its next run,
    /// it is not paused, and the run is due on the store's clock. Stores
    /// `updated` (next run `next_ms`) and a pending claim that must be
    /// settled within `claim_ttl_ms`. `false`: another replica claimed it,
    /// the schedule changed, or the run is not due.
    async fn claim_schedule_run(
        &self,
        expected_version: u64,
        fire_ms: i64,
        updated: pb::Schedule,
        next_ms: Option<i64>,
        claim_ttl_ms: i64,
        now_ms: i64,
    ) -> Result<bool>;

    /// Settles a claimed run: records `run` in the history (a skipped run
    /// records nothing) and drops the claim. `false` when already settled.
    async fn settle_schedule_run(
        &self,
        id: &str,
        fire_ms: i64,
        run: Option<pb::ScheduleRun>,
    ) -> Result<bool>;

    /// Records a run outside the rule (TriggerSchedule).
    async fn record_schedule_run(&self, id: &str, run: pb::ScheduleRun) -> Result<()>;

    /// The last 100 runs, newest first.
    async fn schedule_runs(&self, id: &str) -> Result<Vec<pb::ScheduleRun>>;

    /// How many tasks are SCHEDULED and when the next is due.
    async fn scheduled_summary(&self) -> Result<ScheduledSummary>;

    /// Counts of ready, scheduled, leased and dead tasks (the ready ones per
    /// queue list), read without blocking writers for long.
    async fn queue_depths(&self) -> Result<QueueDepths>;

    /// Keeps the event stream on for about 15 s: call it every 5 s while a
    /// `WatchEvents` subscriber is connected (the Redis scripts publish
    /// task events only meanwhile). Events reach [`EventHub::subscribe_events`].
    async fn enable_events(&self) -> Result<()>;

    /// Publishes a worker event to every process's subscribers.
    async fn publish_event(&self, event: StoreEvent) -> Result<()>;

    /// Records that dispatcher replica `replica` holds `sessions` worker
    /// sessions, until `ttl_ms` from now on the store's clock, and returns
    /// the session count of every replica whose record is alive, this one
    /// included, by replica id. `sessions: None` withdraws the replica (it
    /// shuts down). Replicas compare their counts to share sessions fairly.
    async fn announce_dispatcher(
        &self,
        replica: &str,
        sessions: Option<u32>,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<BTreeMap<String, u32>>;

    /// Records `replica`'s worker sessions (`workers`: an encoded
    /// `ListWorkersResponse`; `None` withdraws them) until `now_ms + ttl_ms`,
    /// forgets records past their time, and returns every live replica's,
    /// this one's included. An empty `replica` only reads.
    async fn announce_workers(
        &self,
        replica: &str,
        workers: Option<Vec<u8>>,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<BTreeMap<String, Vec<u8>>>;
}
