//! The scheduling role: promotes due SCHEDULED tasks into their queues,
//! expires unstarted tasks, reaps the leases of sessions whose dispatcher
//! stopped renewing them, and fires periodic schedules through the
//! submission service's contract. Every step is an atomic store operation or
//! idempotent, so any number of replicas can run.

mod schedules;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use conveyor_api::pb::{
    self, scheduling_service_server as server, submission_service_client::SubmissionServiceClient,
};
use conveyor_core::time::{ms_from_timestamp, now_ms, timestamp_from_ms};
use conveyor_core::{ConveyorError, Limits};
use conveyor_store::Store;

use schedules::{next_run_after, next_run_from, prepare, rule_of, run_spec};

/// Fully qualified service name, for health.
pub const SERVICE_NAME: &str = "conveyor.v1.SchedulingService";

/// Timing of the scheduler loops.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Longest sleep between promotion passes when nothing is due sooner.
    pub promote_interval: Duration,
    /// Time between lease reaper passes.
    pub reap_interval: Duration,
    /// Time between passes over due schedules.
    pub schedule_interval: Duration,
    /// A run later than this counts as missed (catch-up policy applies).
    pub catch_up_grace: Duration,
    /// Most tasks moved per store call.
    pub batch: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            promote_interval: Duration::from_millis(100),
            reap_interval: Duration::from_millis(500),
            schedule_interval: Duration::from_millis(100),
            catch_up_grace: Duration::from_secs(10),
            batch: 1000,
        }
    }
}

/// How the scheduler reaches the submission service.
#[derive(Debug, Clone)]
pub struct SubmissionTarget {
    /// A (lazily connecting) channel to it.
    pub channel: Channel,
    /// Bearer token, when the submission service requires one.
    pub token: Option<String>,
}

/// The scheduler: its loops and its gRPC service.
#[derive(Clone)]
pub struct Scheduler {
    store: Arc<dyn Store>,
    config: SchedulerConfig,
    limits: Limits,
    submission: Option<SubmissionTarget>,
    /// Schedules from the config file, created or updated at start.
    declared: Arc<Vec<pb::Schedule>>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    promoted: AtomicU64,
    reaped: AtomicU64,
    schedule_runs: AtomicU64,
}

impl Scheduler {
    /// A scheduler over `store`; schedules fire through `submission`.
    pub fn new(
        store: Arc<dyn Store>,
        config: SchedulerConfig,
        submission: Option<SubmissionTarget>,
    ) -> Self {
        Self {
            store,
            config,
            limits: Limits::default(),
            submission,
            declared: Arc::default(),
            counters: Arc::default(),
        }
    }

    /// Schedules to create, or update in place, when the scheduler starts.
    pub fn with_declared(mut self, schedules: Vec<pb::Schedule>) -> Self {
        self.declared = Arc::new(schedules);
        self
    }

    /// Validates declared schedules without storing them (config checks).
    pub fn check_declared(schedules: &[pb::Schedule]) -> Result<(), ConveyorError> {
        for schedule in schedules {
            prepare(schedule.clone(), None, &Limits::default(), now_ms())?;
        }
        Ok(())
    }

    /// Creates or updates the declared schedules; call before serving.
    pub async fn apply_declared(&self) {
        for schedule in self.declared.iter() {
            let result = async {
                let existing = self.store.get_schedule(&schedule.id).await?;
                let prepared =
                    prepare(schedule.clone(), existing.as_ref(), &self.limits, now_ms())?;
                if existing.is_some() {
                    self.store
                        .replace_schedule(prepared.schedule, prepared.next_ms)
                        .await?;
                } else {
                    self.store
                        .create_schedule(prepared.schedule, prepared.next_ms)
                        .await?;
                }
                Ok::<_, ConveyorError>(())
            }
            .await;
            match result {
                Ok(()) => tracing::info!(schedule = %schedule.id, "declared schedule applied"),
                Err(error) => {
                    tracing::error!(schedule = %schedule.id, %error, "declared schedule rejected")
                }
            }
        }
    }

    /// Runs the loops until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        tokio::join!(
            self.promote_loop(shutdown.clone()),
            self.reap_loop(shutdown.clone()),
            self.schedule_loop(shutdown)
        );
    }

    async fn promote_loop(&self, shutdown: CancellationToken) {
        loop {
            let now = now_ms();
            let sleep = match self.store.promote_due(now, self.config.batch).await {
                Ok(promotion) => {
                    let moved = (promotion.promoted + promotion.expired) as u64;
                    self.counters
                        .promoted
                        .fetch_add(promotion.promoted as u64, Ordering::Relaxed);
                    if moved >= self.config.batch as u64 {
                        Duration::ZERO
                    } else {
                        let until_due = promotion
                            .next_due_ms
                            .map(|due| Duration::from_millis((due - now).max(0) as u64))
                            .unwrap_or(self.config.promote_interval);
                        until_due.min(self.config.promote_interval)
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "promoting due tasks failed");
                    self.config.promote_interval
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    async fn reap_loop(&self, shutdown: CancellationToken) {
        loop {
            match self.store.reap_expired(now_ms(), self.config.batch).await {
                Ok(requeued) if !requeued.is_empty() => {
                    tracing::info!(count = requeued.len(), "requeued tasks of expired leases");
                    self.counters
                        .reaped
                        .fetch_add(requeued.len() as u64, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "reaping expired leases failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.config.reap_interval) => {}
            }
        }
    }

    async fn schedule_loop(&self, shutdown: CancellationToken) {
        loop {
            let now = now_ms();
            match self.store.due_schedules(now, 100).await {
                Ok(due) => {
                    for schedule in due {
                        if let Err(error) = self.fire(schedule.clone(), now).await {
                            tracing::warn!(schedule = %schedule.id, %error, "firing a schedule failed; retrying");
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "reading due schedules failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.config.schedule_interval) => {}
            }
        }
    }

    /// Fires one due run: submit (idempotently), then advance by CAS.
    async fn fire(&self, schedule: pb::Schedule, now: i64) -> Result<(), ConveyorError> {
        let Some(fire_ms) = schedule.next_run_at.as_ref().map(ms_from_timestamp) else {
            return Ok(());
        };
        let rule = rule_of(&schedule)?;
        let missed = now - fire_ms > self.config.catch_up_grace.as_millis() as i64;
        let catch_up = pb::CatchUp::try_from(schedule.catch_up).unwrap_or(pb::CatchUp::Skip);
        let submit = !missed || catch_up == pb::CatchUp::RunOnce;
        let mut run = None;
        if submit {
            let task_id = self
                .submit(run_spec(&schedule, &fire_ms.to_string()))
                .await?;
            run = Some(pb::ScheduleRun {
                fire_at: Some(timestamp_from_ms(fire_ms)),
                task_id,
                triggered: false,
            });
        } else {
            tracing::info!(schedule = %schedule.id, late_ms = now - fire_ms, "skipping a missed run");
        }
        let next_ms = next_run_after(&schedule, &rule, if missed { now } else { fire_ms });
        let mut updated = schedule;
        updated.next_run_at = next_ms.map(timestamp_from_ms);
        if run.is_some() {
            updated.last_run_at = Some(timestamp_from_ms(fire_ms));
            updated.runs += 1;
        }
        let counted = run.is_some();
        if self
            .store
            .advance_schedule(fire_ms, updated, next_ms, run)
            .await?
            && counted
        {
            self.counters.schedule_runs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn submit(&self, spec: pb::TaskSpec) -> Result<String, ConveyorError> {
        let Some(target) = &self.submission else {
            return Err(ConveyorError::Unavailable(
                "no submission service configured for this scheduler (--submission-url)".into(),
            ));
        };
        let mut request = Request::new(pb::SubmitTaskRequest { task: Some(spec) });
        if let Some(token) = &target.token
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        request.set_timeout(Duration::from_secs(10));
        let response = SubmissionServiceClient::new(target.channel.clone())
            .submit_task(request)
            .await
            .map_err(|status| {
                ConveyorError::Unavailable(format!("submission service: {status}"))
            })?;
        Ok(response.into_inner().task_id)
    }

    /// The tonic service.
    pub fn into_server(self) -> server::SchedulingServiceServer<Self> {
        server::SchedulingServiceServer::new(self)
    }

    async fn load(&self, id: &str) -> Result<pb::Schedule, ConveyorError> {
        self.store
            .get_schedule(id)
            .await?
            .ok_or_else(|| ConveyorError::NotFound {
                kind: "schedule",
                id: id.to_string(),
            })
    }
}

fn required(schedule: Option<pb::Schedule>) -> Result<pb::Schedule, ConveyorError> {
    schedule.ok_or_else(|| ConveyorError::invalid("schedule", "is required"))
}

#[tonic::async_trait]
impl server::SchedulingService for Scheduler {
    async fn get_scheduler_status(
        &self,
        _request: Request<pb::GetSchedulerStatusRequest>,
    ) -> Result<Response<pb::GetSchedulerStatusResponse>, Status> {
        let summary = self.store.scheduled_summary().await?;
        Ok(Response::new(pb::GetSchedulerStatusResponse {
            scheduled_tasks: summary.count,
            next_due_at: summary.next_due_ms.map(timestamp_from_ms),
            promoted_total: self.counters.promoted.load(Ordering::Relaxed),
            reaped_total: self.counters.reaped.load(Ordering::Relaxed),
            schedule_runs_total: self.counters.schedule_runs.load(Ordering::Relaxed),
        }))
    }

    async fn create_schedule(
        &self,
        request: Request<pb::CreateScheduleRequest>,
    ) -> Result<Response<pb::CreateScheduleResponse>, Status> {
        let prepared = prepare(
            required(request.into_inner().schedule)?,
            None,
            &self.limits,
            now_ms(),
        )?;
        let id = prepared.schedule.id.clone();
        if !self
            .store
            .create_schedule(prepared.schedule.clone(), prepared.next_ms)
            .await?
        {
            return Err(ConveyorError::AlreadyExists {
                kind: "schedule",
                id,
            }
            .into());
        }
        Ok(Response::new(pb::CreateScheduleResponse {
            schedule: Some(prepared.schedule),
        }))
    }

    async fn get_schedule(
        &self,
        request: Request<pb::GetScheduleRequest>,
    ) -> Result<Response<pb::GetScheduleResponse>, Status> {
        let schedule = self.load(&request.into_inner().id).await?;
        Ok(Response::new(pb::GetScheduleResponse {
            schedule: Some(schedule),
        }))
    }

    async fn list_schedules(
        &self,
        _request: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        Ok(Response::new(pb::ListSchedulesResponse {
            schedules: self.store.list_schedules().await?,
        }))
    }

    async fn update_schedule(
        &self,
        request: Request<pb::UpdateScheduleRequest>,
    ) -> Result<Response<pb::UpdateScheduleResponse>, Status> {
        let schedule = required(request.into_inner().schedule)?;
        let existing = self.load(&schedule.id).await?;
        let prepared = prepare(schedule, Some(&existing), &self.limits, now_ms())?;
        if !self
            .store
            .replace_schedule(prepared.schedule.clone(), prepared.next_ms)
            .await?
        {
            return Err(ConveyorError::NotFound {
                kind: "schedule",
                id: prepared.schedule.id,
            }
            .into());
        }
        Ok(Response::new(pb::UpdateScheduleResponse {
            schedule: Some(prepared.schedule),
        }))
    }

    async fn delete_schedule(
        &self,
        request: Request<pb::DeleteScheduleRequest>,
    ) -> Result<Response<pb::DeleteScheduleResponse>, Status> {
        let id = request.into_inner().id;
        if !self.store.delete_schedule(&id).await? {
            return Err(ConveyorError::NotFound {
                kind: "schedule",
                id,
            }
            .into());
        }
        Ok(Response::new(pb::DeleteScheduleResponse {}))
    }

    async fn pause_schedule(
        &self,
        request: Request<pb::PauseScheduleRequest>,
    ) -> Result<Response<pb::PauseScheduleResponse>, Status> {
        let mut schedule = self.load(&request.into_inner().id).await?;
        schedule.paused = true;
        schedule.next_run_at = None;
        self.store.replace_schedule(schedule.clone(), None).await?;
        Ok(Response::new(pb::PauseScheduleResponse {
            schedule: Some(schedule),
        }))
    }

    async fn resume_schedule(
        &self,
        request: Request<pb::ResumeScheduleRequest>,
    ) -> Result<Response<pb::ResumeScheduleResponse>, Status> {
        let mut schedule = self.load(&request.into_inner().id).await?;
        schedule.paused = false;
        let next_ms = next_run_from(&schedule, &rule_of(&schedule)?, now_ms());
        schedule.next_run_at = next_ms.map(timestamp_from_ms);
        self.store
            .replace_schedule(schedule.clone(), next_ms)
            .await?;
        Ok(Response::new(pb::ResumeScheduleResponse {
            schedule: Some(schedule),
        }))
    }

    async fn trigger_schedule(
        &self,
        request: Request<pb::TriggerScheduleRequest>,
    ) -> Result<Response<pb::TriggerScheduleResponse>, Status> {
        let schedule = self.load(&request.into_inner().id).await?;
        let now = now_ms();
        let task_id = self
            .submit(run_spec(&schedule, &format!("trigger:{now}")))
            .await?;
        let run = pb::ScheduleRun {
            fire_at: Some(timestamp_from_ms(now)),
            task_id,
            triggered: true,
        };
        self.store
            .record_schedule_run(&schedule.id, run.clone())
            .await?;
        Ok(Response::new(pb::TriggerScheduleResponse {
            run: Some(run),
        }))
    }

    async fn list_schedule_runs(
        &self,
        request: Request<pb::ListScheduleRunsRequest>,
    ) -> Result<Response<pb::ListScheduleRunsResponse>, Status> {
        let id = request.into_inner().id;
        self.load(&id).await?;
        Ok(Response::new(pb::ListScheduleRunsResponse {
            runs: self.store.schedule_runs(&id).await?,
        }))
    }
}
