//! The scheduling role: promotes due SCHEDULED tasks into their queues,
//! expires unstarted tasks, reaps the leases of sessions whose dispatcher
//! stopped renewing them, and fires periodic schedules through the
//! submission service's contract. Every step is an atomic store operation or
//! idempotent, so any number of replicas can run.

mod schedules;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tracing::Instrument;

use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use conveyor_api::pb::{
    self, scheduling_service_server as server, submission_service_client::SubmissionServiceClient,
};
use conveyor_core::namespace::{Namespace, split_key};
use conveyor_core::time::{ms_from_timestamp, now_ms, timestamp_from_ms};
use conveyor_core::{ConveyorError, Limits};
use conveyor_store::{SchedulePut, Store};

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
                let namespace = Namespace::parse("schedule.namespace", &schedule.namespace)?;
                self.put(&namespace, schedule.clone(), None, true).await?;
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
                    if promotion.expired > 0 && conveyor_runtime::metrics::enabled() {
                        metrics::counter!(conveyor_runtime::metrics::TASKS_EXPIRED)
                            .increment(promotion.expired as u64);
                    }
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
                    if conveyor_runtime::metrics::enabled() {
                        metrics::counter!(conveyor_runtime::metrics::LEASES_REAPED)
                            .increment(requeued.len() as u64);
                    }
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
                    for schedule in due.due {
                        if let Err(error) = self.fire(schedule.clone(), now).await {
                            tracing::warn!(schedule = %schedule.id, %error, "firing a schedule failed; a replica retries it once its claim lapses");
                        }
                    }
                    for (id, fire_ms) in due.unsettled {
                        if let Err(error) = self.resettle(&id, fire_ms).await {
                            tracing::warn!(schedule = %id, %error, "settling a claimed run failed; retrying");
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

    /// Fires one due run: claim it (compare-and-set on the schedule's
    /// version, due on the store's clock, not paused), then submit it
    /// (idempotently, keyed by the fire time), then settle the claim. A
    /// replica that dies in between leaves the claim to be settled by another
    /// one; a paused or updated schedule cannot be claimed any more.
    async fn fire(&self, schedule: pb::Schedule, now: i64) -> Result<(), ConveyorError> {
        let Some(fire_ms) = schedule.next_run_at.as_ref().map(ms_from_timestamp) else {
            return Ok(());
        };
        let rule = rule_of(&schedule)?;
        let missed = now - fire_ms > self.config.catch_up_grace.as_millis() as i64;
        let catch_up = pb::CatchUp::try_from(schedule.catch_up).unwrap_or(pb::CatchUp::Skip);
        let submit = !missed || catch_up == pb::CatchUp::RunOnce;
        let next_ms = next_run_after(&schedule, &rule, if missed { now } else { fire_ms });
        let mut updated = schedule.clone();
        updated.next_run_at = next_ms.map(timestamp_from_ms);
        if submit {
            updated.last_run_at = Some(timestamp_from_ms(fire_ms));
            updated.runs += 1;
        }
        // A skipped run leaves no claim to settle.
        let claim_ttl_ms = if submit { CLAIM_TTL_MS } else { 0 };
        let claimed = self
            .store
            .claim_schedule_run(
                schedule.version,
                fire_ms,
                updated,
                next_ms,
                claim_ttl_ms,
                now,
            )
            .await?;
        if !claimed {
            return Ok(());
        }
        if !submit {
            tracing::info!(schedule = %schedule.id, late_ms = now - fire_ms, "skipping a missed run");
            return Ok(());
        }
        self.submit_and_settle(&schedule, fire_ms).await
    }

    /// Submits the claimed run at `fire_ms` (a duplicate of an earlier
    /// submit returns the same task) and records it.
    async fn submit_and_settle(
        &self,
        schedule: &pb::Schedule,
        fire_ms: i64,
    ) -> Result<(), ConveyorError> {
        let (namespace, _) = split_key(&schedule.id);
        let task_id = self
            .submit(
                &namespace,
                &schedule.id,
                run_spec(schedule, &fire_ms.to_string()),
            )
            .await?;
        let run = pb::ScheduleRun {
            fire_at: Some(timestamp_from_ms(fire_ms)),
            task_id,
            triggered: false,
        };
        if self
            .store
            .settle_schedule_run(&schedule.id, fire_ms, Some(run))
            .await?
        {
            self.counters.schedule_runs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Finishes a run claimed by a replica that did not settle it.
    async fn resettle(&self, id: &str, fire_ms: i64) -> Result<(), ConveyorError> {
        match self.store.get_schedule(id).await? {
            Some(schedule) => self.submit_and_settle(&schedule, fire_ms).await,
            None => {
                self.store.settle_schedule_run(id, fire_ms, None).await?;
                Ok(())
            }
        }
    }

    /// Creates or replaces a schedule (from a request or the declared file),
    /// compare-and-set on its version so that a concurrent run or change is
    /// never overwritten; retried when a run moved it meanwhile, unless the
    /// caller named the version it expects.
    async fn put(
        &self,
        namespace: &Namespace,
        schedule: pb::Schedule,
        expected_version: Option<u64>,
        create: bool,
    ) -> Result<pb::Schedule, ConveyorError> {
        let user_id = schedule.id.clone();
        check_schedule_id(&user_id)?;
        let store_id = namespace.key(&user_id);
        for _ in 0..8 {
            let existing = self.store.get_schedule(&store_id).await?;
            let Some(existing) = existing else {
                if !create {
                    return Err(schedule_not_found(&user_id));
                }
                let mut prepared = prepare(schedule.clone(), None, &self.limits, now_ms())?;
                prepared.schedule.id = store_id.clone();
                let Some(version) = self
                    .store
                    .create_schedule(prepared.schedule.clone(), prepared.next_ms)
                    .await?
                else {
                    continue; // created meanwhile: replace it
                };
                prepared.schedule.version = version;
                return Ok(public(namespace, prepared.schedule));
            };
            let mut public_existing = public(namespace, existing.clone());
            public_existing.id = user_id.clone();
            let mut prepared = prepare(
                schedule.clone(),
                Some(&public_existing),
                &self.limits,
                now_ms(),
            )?;
            prepared.schedule.id = store_id.clone();
            let expected = expected_version.unwrap_or(existing.version);
            match self
                .store
                .replace_schedule(prepared.schedule.clone(), prepared.next_ms, Some(expected))
                .await?
            {
                SchedulePut::Stored(version) => {
                    prepared.schedule.version = version;
                    return Ok(public(namespace, prepared.schedule));
                }
                SchedulePut::NotFound => return Err(schedule_not_found(&user_id)),
                SchedulePut::Conflict if expected_version.is_some() => {
                    return Err(conflict(&user_id, expected));
                }
                SchedulePut::Conflict => continue,
            }
        }
        Err(ConveyorError::Unavailable(format!(
            "schedule {user_id} kept changing while being written; retry"
        )))
    }

    /// Pauses or resumes, compare-and-set like [`Self::put`].
    async fn set_paused(
        &self,
        namespace: &Namespace,
        id: &str,
        paused: bool,
        expected_version: Option<u64>,
    ) -> Result<pb::Schedule, ConveyorError> {
        let store_id = namespace.key(id);
        for _ in 0..8 {
            let mut schedule = self.load(&store_id).await?;
            let expected = expected_version.unwrap_or(schedule.version);
            schedule.paused = paused;
            let next_ms = if paused {
                None
            } else {
                next_run_from(&schedule, &rule_of(&schedule)?, now_ms())
            };
            schedule.next_run_at = next_ms.map(timestamp_from_ms);
            match self
                .store
                .replace_schedule(schedule.clone(), next_ms, Some(expected))
                .await?
            {
                SchedulePut::Stored(version) => {
                    schedule.version = version;
                    return Ok(public(namespace, schedule));
                }
                SchedulePut::NotFound => return Err(schedule_not_found(id)),
                SchedulePut::Conflict if expected_version.is_some() => {
                    return Err(conflict(id, expected));
                }
                SchedulePut::Conflict => continue,
            }
        }
        Err(ConveyorError::Unavailable(format!(
            "schedule {id} kept changing while being written; retry"
        )))
    }

    async fn submit(
        &self,
        namespace: &Namespace,
        schedule_id: &str,
        mut spec: pb::TaskSpec,
    ) -> Result<String, ConveyorError> {
        // Each run starts a trace of its own (traces on), linked to the
        // trace the schedule was created in, if the template carries one.
        let span = run_span(schedule_id, &mut spec);
        let Some(target) = &self.submission else {
            return Err(ConveyorError::Unavailable(
                "no submission service configured for this scheduler (--submission-url)".into(),
            ));
        };
        let mut request = Request::new(pb::SubmitTaskRequest {
            task: Some(spec),
            namespace: namespace.stored().to_string(),
        });
        if let Some(token) = &target.token
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        request.set_timeout(Duration::from_secs(10));
        if let Some(context) = &span.1
            && let Ok(value) = context.traceparent.parse()
        {
            request.metadata_mut().insert("traceparent", value);
        }
        let response = SubmissionServiceClient::new(target.channel.clone())
            .submit_task(request)
            .instrument(span.0)
            .await
            .map_err(|status| match status.code() {
                // A configuration error, not an outage: say what to set.
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                    ConveyorError::FailedPrecondition(format!(
                        "the submission service refused this scheduler's submission of \
                         schedule {schedule_id}: {}; give the scheduler a token (--scheduler-token) \
                         whose principal has the 'producer' role in namespace '{}'",
                        status.message(),
                        namespace.name()
                    ))
                }
                _ => ConveyorError::Unavailable(format!(
                    "submission service: {}: {}",
                    status.code(),
                    status.message()
                )),
            })?;
        Ok(response.into_inner().task_id)
    }

    /// The tonic service.
    pub fn into_server(self) -> server::SchedulingServiceServer<Self> {
        server::SchedulingServiceServer::new(self)
    }

    /// A stored schedule by its store id (scoped).
    async fn load(&self, store_id: &str) -> Result<pb::Schedule, ConveyorError> {
        self.store
            .get_schedule(store_id)
            .await?
            .ok_or_else(|| schedule_not_found(split_key(store_id).1))
    }
}

/// The root span of a schedule run and its W3C context, which the run's
/// task carries (`None` while traces are off).
fn run_span(
    schedule_id: &str,
    spec: &mut pb::TaskSpec,
) -> (tracing::Span, Option<pb::TraceContext>) {
    if !conveyor_runtime::telemetry::tracing_enabled() {
        return (tracing::Span::none(), None);
    }
    let plain_id = split_key(schedule_id).1;
    let span = tracing::info_span!(
        "schedule run",
        otel.name = %format!("schedule {plain_id}"),
        otel.kind = "producer",
        messaging.system = "conveyor",
        messaging.operation.type = "send",
        conveyor.schedule.id = %plain_id,
        conveyor.task.name = %spec.name,
    );
    conveyor_runtime::telemetry::make_root(&span);
    if let Some(template) = &spec.trace_context {
        conveyor_runtime::telemetry::add_link(&span, &template.traceparent, &template.tracestate);
    }
    let context =
        conveyor_runtime::telemetry::context_of(&span).map(|(traceparent, tracestate)| {
            pb::TraceContext {
                traceparent,
                tracestate,
            }
        });
    if context.is_some() {
        spec.trace_context.clone_from(&context);
    }
    (span, context)
}

/// How long a replica has to submit and settle a run it claimed before
/// another replica does it (the submit itself times out after 10 s).
const CLAIM_TTL_MS: i64 = 30_000;

fn required(schedule: Option<pb::Schedule>) -> Result<pb::Schedule, ConveyorError> {
    schedule.ok_or_else(|| ConveyorError::invalid("schedule", "is required"))
}

fn check_schedule_id(id: &str) -> Result<(), ConveyorError> {
    conveyor_core::validate::check_name("schedule.id", id, 200, &[':', '/'])
}

fn schedule_not_found(id: &str) -> ConveyorError {
    ConveyorError::NotFound {
        kind: "schedule",
        id: id.to_string(),
    }
}

fn conflict(id: &str, expected: u64) -> ConveyorError {
    ConveyorError::Conflict(format!(
        "schedule {id} is no longer at version {expected}; get it again and retry"
    ))
}

/// A stored schedule as its namespace's callers see it.
fn public(namespace: &Namespace, mut schedule: pb::Schedule) -> pb::Schedule {
    if let Some(id) = namespace.unscope_key(&schedule.id) {
        schedule.id = id.to_string();
    }
    schedule.namespace = namespace.name().to_string();
    schedule
}

/// Page bounds: 0 means 100; at most 1000.
fn page_size(requested: u32) -> usize {
    match requested {
        0 => 100,
        size => size.min(1000) as usize,
    }
}

#[tonic::async_trait]
impl server::SchedulingService for Scheduler {
    async fn get_scheduler_status(
        &self,
        request: Request<pb::GetSchedulerStatusRequest>,
    ) -> Result<Response<pb::GetSchedulerStatusResponse>, Status> {
        // The counters are the scheduler's, for the whole deployment; the
        // caller still needs `read` in the namespace it names.
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
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
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let request = request.into_inner();
        let namespace = Namespace::parse("namespace", &request.namespace)?;
        let mut prepared = prepare(required(request.schedule)?, None, &self.limits, now_ms())?;
        let user_id = prepared.schedule.id.clone();
        prepared.schedule.id = namespace.key(&user_id);
        let Some(version) = self
            .store
            .create_schedule(prepared.schedule.clone(), prepared.next_ms)
            .await?
        else {
            return Err(ConveyorError::AlreadyExists {
                kind: "schedule",
                id: user_id,
            }
            .into());
        };
        prepared.schedule.version = version;
        Ok(Response::new(pb::CreateScheduleResponse {
            schedule: Some(public(&namespace, prepared.schedule)),
        }))
    }

    async fn get_schedule(
        &self,
        request: Request<pb::GetScheduleRequest>,
    ) -> Result<Response<pb::GetScheduleResponse>, Status> {
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let request = request.into_inner();
        let namespace = Namespace::parse("namespace", &request.namespace)?;
        let schedule = self.load(&namespace.key(&request.id)).await?;
        Ok(Response::new(pb::GetScheduleResponse {
            schedule: Some(public(&namespace, schedule)),
        }))
    }

    async fn list_schedules(
        &self,
        request: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let request = request.into_inner();
        let namespace = Namespace::parse("namespace", &request.namespace)?;
        let size = page_size(request.page_size);
        let mut schedules: Vec<pb::Schedule> = self
            .store
            .list_schedules()
            .await?
            .into_iter()
            .filter(|schedule| namespace.unscope_key(&schedule.id).is_some())
            .map(|schedule| public(&namespace, schedule))
            .filter(|schedule| schedule.id.as_str() > request.page_token.as_str())
            .collect();
        schedules.sort_by(|left, right| left.id.cmp(&right.id));
        let next_page_token = if schedules.len() > size {
            schedules.truncate(size);
            schedules
                .last()
                .map(|last| last.id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListSchedulesResponse {
            schedules,
            next_page_token,
        }))
    }

    async fn update_schedule(
        &self,
        request: Request<pb::UpdateScheduleRequest>,
    ) -> Result<Response<pb::UpdateScheduleResponse>, Status> {
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let request = request.into_inner();
        let namespace = Namespace::parse("namespace", &request.namespace)?;
        let expected = (request.expected_version > 0).then_some(request.expected_version);
        let schedule = self
            .put(&namespace, required(request.schedule)?, expected, false)
            .await?;
        Ok(Response::new(pb::UpdateScheduleResponse {
            schedule: Some(schedule),
        }))
    }

    async fn delete_schedule(
        &self,
        request: Request<pb::DeleteScheduleRequest>,
    ) -> Result<Response<pb::DeleteScheduleResponse>, Status> {
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let request = request.into_inner();
        let namespace = Namespace::parse("namespace", &request.namespace)?;
        if !self
            .store
            .delete_schedule(&namespace.key(&request.id))
            .await?
        {
            return Err(schedule_not_found(&request.id).into());
        }
        Ok(Response::new(pb::DeleteScheduleResponse {}))
    }

    async fn pause_schedule(
        &self,
        request: Request<pb::PauseScheduleRequest>,
    ) -> Result<Response<pb::PauseScheduleResponse>, Status> {
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let request = request.into_inner();
        let namespace = Namespace::parse("namespace", &request.namespace)?;
        let expected = (request.expected_version > 0).then_some(request.expected_version);
        let schedule = self
            .set_paused(&namespace, &request.id, true, expected)
            .await?;
        Ok(Response::new(pb::PauseScheduleResponse {
            schedule: Some(schedule),
        }))
    }

    async fn resume_schedule(
        &self,
        request: Request<pb::ResumeScheduleRequest>,
    ) -> Result<Response<pb::ResumeScheduleResponse>, Status> {
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let request = request.into_inner();
        let namespace = Namespace::parse("namespace", &request.namespace)?;
        let expected = (request.expected_version > 0).then_some(request.expected_version);
        let schedule = self
            .set_paused(&namespace, &request.id, false, expected)
            .await?;
        Ok(Response::new(pb::ResumeScheduleResponse {
            schedule: Some(schedule),
        }))
    }

    async fn trigger_schedule(
        &self,
        request: Request<pb::TriggerScheduleRequest>,
    ) -> Result<Response<pb::TriggerScheduleResponse>, Status> {
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let request = request.into_inner();
        let namespace = Namespace::parse("namespace", &request.namespace)?;
        let schedule = self.load(&namespace.key(&request.id)).await?;
        let now = now_ms();
        let task_id = self
            .submit(
                &namespace,
                &schedule.id,
                run_spec(&schedule, &format!("trigger:{now}")),
            )
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
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let request = request.into_inner();
        let namespace = Namespace::parse("namespace", &request.namespace)?;
        let store_id = namespace.key(&request.id);
        self.load(&store_id).await?;
        let offset: usize = if request.page_token.is_empty() {
            0
        } else {
            request.page_token.parse().map_err(|_| {
                ConveyorError::invalid("page_token", "is not a token this server issued")
            })?
        };
        let size = page_size(request.page_size);
        let runs = self.store.schedule_runs(&store_id).await?;
        let end = (offset + size).min(runs.len());
        let next_page_token = if end < runs.len() {
            end.to_string()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListScheduleRunsResponse {
            runs: runs.get(offset..end).unwrap_or_default().to_vec(),
            next_page_token,
        }))
    }
}
