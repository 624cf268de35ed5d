//! A [`Store`] that times every call and counts its failures
//! (`conveyor_store_call_duration_seconds{op}`,
//! `conveyor_store_errors_total{op}`); wrapped around the real store only
//! while metrics are on.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use conveyor_api::pb;
use conveyor_core::{NewTask, Result, StoredTask, TaskId};
use conveyor_runtime::metrics::{STORE_CALL_DURATION, STORE_ERRORS};
use conveyor_store::*;

/// The metered store.
pub struct Metered(pub Arc<dyn Store>);

fn record<T>(op: &'static str, started: Instant, result: &Result<T>) {
    metrics::histogram!(STORE_CALL_DURATION, "op" => op).record(started.elapsed().as_secs_f64());
    if result.is_err() {
        metrics::counter!(STORE_ERRORS, "op" => op).increment(1);
    }
}

macro_rules! timed {
    ($op:literal, $call:expr) => {{
        let started = Instant::now();
        let result = $call.await;
        record($op, started, &result);
        result
    }};
}

#[async_trait]
impl Store for Metered {
    fn partitions(&self) -> u16 {
        self.0.partitions()
    }

    fn place(&self, tasks: &mut [NewTask]) {
        self.0.place(tasks);
    }

    fn place_workflow(&self, workflow: &mut conveyor_core::workflow::NewWorkflow) {
        self.0.place_workflow(workflow);
    }

    async fn submit_workflow(
        &self,
        workflow: conveyor_core::workflow::NewWorkflow,
        now_ms: i64,
    ) -> Result<conveyor_store::WorkflowAck> {
        timed!("submit_workflow", self.0.submit_workflow(workflow, now_ms))
    }

    async fn get_workflow(
        &self,
        id: TaskId,
        nodes: conveyor_store::WorkflowNodes,
        now_ms: i64,
    ) -> Result<Option<conveyor_store::StoredWorkflow>> {
        timed!("get_workflow", self.0.get_workflow(id, nodes, now_ms))
    }

    async fn cancel_workflow(
        &self,
        id: TaskId,
        now_ms: i64,
    ) -> Result<Option<(u32, conveyor_core::TaskState)>> {
        timed!("cancel_workflow", self.0.cancel_workflow(id, now_ms))
    }

    fn events(&self) -> &EventHub {
        self.0.events()
    }

    async fn enqueue(&self, tasks: Vec<NewTask>, now_ms: i64) -> Result<Vec<EnqueueAck>> {
        timed!("enqueue", self.0.enqueue(tasks, now_ms))
    }

    async fn get(&self, id: TaskId, now_ms: i64) -> Result<Option<StoredTask>> {
        timed!("get", self.0.get(id, now_ms))
    }

    async fn watch(&self, id: TaskId, now_ms: i64) -> Result<Option<StoredTask>> {
        timed!("watch", self.0.watch(id, now_ms))
    }

    async fn lease(&self, request: LeaseRequest) -> Result<Vec<LeasedTask>> {
        timed!("lease", self.0.lease(request))
    }

    async fn mark_started(&self, reports: Vec<StartReport>, now_ms: i64) -> Result<()> {
        timed!("mark_started", self.0.mark_started(reports, now_ms))
    }

    async fn heartbeat(&self, session_id: &str, deadline_ms: i64, now_ms: i64) -> Result<bool> {
        timed!(
            "heartbeat",
            self.0.heartbeat(session_id, deadline_ms, now_ms)
        )
    }

    async fn complete(&self, reports: Vec<OutcomeReport>, now_us: i64) -> Result<Vec<OutcomeAck>> {
        timed!("complete", self.0.complete(reports, now_us))
    }

    async fn release_session(&self, session_id: &str, now_ms: i64) -> Result<Vec<TaskId>> {
        timed!(
            "release_session",
            self.0.release_session(session_id, now_ms)
        )
    }

    async fn reap_expired(&self, now_ms: i64, limit: usize) -> Result<Vec<TaskId>> {
        timed!("reap_expired", self.0.reap_expired(now_ms, limit))
    }

    async fn promote_due(&self, now_ms: i64, limit: usize) -> Result<Promotion> {
        timed!("promote_due", self.0.promote_due(now_ms, limit))
    }

    async fn cancel(&self, id: TaskId, now_ms: i64) -> Result<CancelAck> {
        timed!("cancel", self.0.cancel(id, now_ms))
    }

    async fn record_progress(&self, reports: Vec<ProgressReport>, now_ms: i64) -> Result<()> {
        timed!("record_progress", self.0.record_progress(reports, now_ms))
    }

    async fn forget(&self, id: TaskId) -> Result<ForgetAck> {
        timed!("forget", self.0.forget(id))
    }

    async fn dead_letters(
        &self,
        cursor: DeadLetterCursor,
        limit: usize,
    ) -> Result<(Vec<StoredTask>, Option<DeadLetterCursor>)> {
        timed!("dead_letters", self.0.dead_letters(cursor, limit))
    }

    async fn replay(&self, id: TaskId, now_ms: i64) -> Result<ReplayAck> {
        timed!("replay", self.0.replay(id, now_ms))
    }

    async fn set_queue_paused(&self, queue: &str, paused: bool) -> Result<()> {
        timed!("set_queue_paused", self.0.set_queue_paused(queue, paused))
    }

    async fn create_schedule(
        &self,
        schedule: pb::Schedule,
        next_ms: Option<i64>,
    ) -> Result<Option<u64>> {
        timed!("create_schedule", self.0.create_schedule(schedule, next_ms))
    }

    async fn replace_schedule(
        &self,
        schedule: pb::Schedule,
        next_ms: Option<i64>,
        expected_version: Option<u64>,
    ) -> Result<SchedulePut> {
        timed!(
            "replace_schedule",
            self.0.replace_schedule(schedule, next_ms, expected_version)
        )
    }

    async fn get_schedule(&self, id: &str) -> Result<Option<pb::Schedule>> {
        timed!("get_schedule", self.0.get_schedule(id))
    }

    async fn list_schedules(&self) -> Result<Vec<pb::Schedule>> {
        timed!("list_schedules", self.0.list_schedules())
    }

    async fn delete_schedule(&self, id: &str) -> Result<bool> {
        timed!("delete_schedule", self.0.delete_schedule(id))
    }

    async fn due_schedules(&self, now_ms: i64, limit: usize) -> Result<DueSchedules> {
        timed!("due_schedules", self.0.due_schedules(now_ms, limit))
    }

    async fn claim_schedule_run(
        &self,
        expected_version: u64,
        fire_ms: i64,
        updated: pb::Schedule,
        next_ms: Option<i64>,
        claim_ttl_ms: i64,
        now_ms: i64,
    ) -> Result<bool> {
        timed!(
            "claim_schedule_run",
            self.0.claim_schedule_run(
                expected_version,
                fire_ms,
                updated,
                next_ms,
                claim_ttl_ms,
                now_ms
            )
        )
    }

    async fn settle_schedule_run(
        &self,
        id: &str,
        fire_ms: i64,
        run: Option<pb::ScheduleRun>,
    ) -> Result<bool> {
        timed!(
            "settle_schedule_run",
            self.0.settle_schedule_run(id, fire_ms, run)
        )
    }

    async fn record_schedule_run(&self, id: &str, run: pb::ScheduleRun) -> Result<()> {
        timed!("record_schedule_run", self.0.record_schedule_run(id, run))
    }

    async fn schedule_runs(&self, id: &str) -> Result<Vec<pb::ScheduleRun>> {
        timed!("schedule_runs", self.0.schedule_runs(id))
    }

    async fn scheduled_summary(&self) -> Result<ScheduledSummary> {
        timed!("scheduled_summary", self.0.scheduled_summary())
    }

    async fn queue_depths(&self) -> Result<QueueDepths> {
        timed!("queue_depths", self.0.queue_depths())
    }

    async fn enable_events(&self) -> Result<()> {
        timed!("enable_events", self.0.enable_events())
    }

    async fn publish_event(&self, event: StoreEvent) -> Result<()> {
        timed!("publish_event", self.0.publish_event(event))
    }

    async fn announce_dispatcher(
        &self,
        replica: &str,
        sessions: Option<u32>,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<std::collections::BTreeMap<String, u32>> {
        timed!(
            "announce_dispatcher",
            self.0
                .announce_dispatcher(replica, sessions, ttl_ms, now_ms)
        )
    }

    async fn announce_workers(
        &self,
        replica: &str,
        workers: Option<Vec<u8>>,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<std::collections::BTreeMap<String, Vec<u8>>> {
        timed!(
            "announce_workers",
            self.0.announce_workers(replica, workers, ttl_ms, now_ms)
        )
    }
}
