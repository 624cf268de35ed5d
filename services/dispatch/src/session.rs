//! One worker session: a single `select!` loop over shutdown, the worker's
//! messages, the heartbeat clock and work becoming available. Whatever way
//! the loop ends, the session's leases go back to their queues.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, Streaming};

use conveyor_api::pb::{
    self, connect_request::Message as Inbound, connect_response::Message as Outbound,
};
use conveyor_core::time::{now_ms, now_us, pb_duration, timestamp_from_ms};
use conveyor_core::validate::{DEFAULT_QUEUE, check_name};
use conveyor_core::{ConveyorError, Namespace, TaskId};
use conveyor_store::{
    EventKind, LeaseRequest, OutcomeAck, ProgressReport, QueueKey, QueueWaiter, SessionEvents,
    StartReport, Store, StoreEvent,
};

use crate::assignment::{HeldLease, time_limit_report, to_assignment, to_report};
use crate::{DispatchConfig, Registry};

/// Shared by every session of a dispatcher.
pub(crate) struct SessionContext {
    pub store: Arc<dyn Store>,
    pub config: Arc<DispatchConfig>,
    pub registry: Registry,
    pub shutdown: CancellationToken,
    /// This dispatcher replica's id.
    pub(crate) replica: Arc<str>,
}

type Sender = mpsc::Sender<Result<pb::ConnectResponse, Status>>;

/// Why a session ended.
enum End {
    /// The worker closed its side, or went away.
    Closed,
    /// Finished draining.
    Drained,
    /// Ends the stream with this status.
    Fatal(Status),
    /// The worker stopped reading: a message could not be queued for it
    /// within a lease TTL. Its leases go back to their queues.
    Stalled,
}

const MAX_QUEUES: usize = 64;
const MAX_TASK_NAMES: usize = 1024;
/// Flush reported outcomes at this many even while more frames are waiting.
const FLUSH_AT: usize = 256;
/// Re-check the store this often while starved, in case a notification was lost.
const STARVED_RECHECK: Duration = Duration::from_secs(5);

/// Bytes of assignments gathered in one frame before a new one starts: far
/// under the 4 MiB receive limit gRPC libraries default to.
const FRAME_BUDGET_BYTES: usize = 1024 * 1024;
/// The largest frame a session sends (Welcome.max_frame_bytes): one task's
/// assignment, whose payloads the submission limits keep within 4 MiB, plus
/// its options, headers and names.
pub(crate) const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;

/// Splits assignments into frames of at most [`FRAME_BUDGET_BYTES`] each, or
/// one assignment when it alone is larger; in order.
fn frames(assignments: Vec<pb::Assignment>) -> Vec<Vec<pb::Assignment>> {
    let mut frames = Vec::new();
    let mut frame = Vec::new();
    let mut bytes = 0;
    for assignment in assignments {
        // The field's tag and length prefix: at most 6 bytes.
        let size = prost::Message::encoded_len(&assignment) + 6;
        if !frame.is_empty() && bytes + size > FRAME_BUDGET_BYTES {
            frames.push(std::mem::take(&mut frame));
            bytes = 0;
        }
        bytes += size;
        frame.push(assignment);
    }
    if !frame.is_empty() {
        frames.push(frame);
    }
    frames
}

/// Runs a session from its first message to its end.
pub(crate) async fn run(
    context: SessionContext,
    mut inbound: Streaming<pb::ConnectRequest>,
    outbound: Sender,
    access: Option<conveyor_runtime::auth::Access>,
) {
    let hello = match tokio::time::timeout(context.config.hello_timeout, inbound.message()).await {
        Err(_) => {
            let _ = outbound
                .send(Err(Status::deadline_exceeded("no hello received in time")))
                .await;
            return;
        }
        Ok(Err(status)) if status.code() == tonic::Code::InvalidArgument => {
            tracing::warn!(%status, "a worker stream sent a frame that does not decode");
            let _ = outbound.send(Err(status)).await;
            return;
        }
        Ok(Err(_)) | Ok(Ok(None)) => return,
        Ok(Ok(Some(pb::ConnectRequest {
            message: Some(Inbound::Hello(hello)),
        }))) => hello,
        Ok(Ok(Some(_))) => {
            let status = Status::failed_precondition("the first message of a stream must be hello");
            let _ = outbound.send(Err(status)).await;
            return;
        }
    };
    // A worker leases only in the namespaces its principal may work in;
    // checked first, so a caller learns nothing more of a namespace it may
    // not use.
    if let Err(status) = conveyor_runtime::auth::check(access.as_ref(), &hello.namespace) {
        tracing::info!(%status, "a worker session was refused its namespace");
        let _ = outbound.send(Err(status)).await;
        return;
    }
    let (hello, namespace) = match validate_hello(hello) {
        Ok(checked) => checked,
        Err(error) => {
            let _ = outbound.send(Err(error.into())).await;
            return;
        }
    };
    let mut session = Session::new(context, hello, namespace, outbound);
    session.worker_event(EventKind::WorkerOnline);
    if session
        .send(Outbound::Welcome(session.welcome()))
        .await
        .is_err()
    {
        return;
    }
    tracing::info!(session = %session.id, worker = %session.worker_id, "worker connected");
    let end = session.run(inbound).await;
    session.finish(end).await;
}

/// The worker protocol this dispatcher speaks (Hello.protocol_version).
pub(crate) const PROTOCOL_VERSION: u32 = 1;

fn validate_hello(mut hello: pb::Hello) -> Result<(pb::Hello, Namespace), ConveyorError> {
    // 0: an SDK from before the field existed, which speaks version 1.
    if hello.protocol_version > PROTOCOL_VERSION {
        return Err(ConveyorError::FailedPrecondition(format!(
            "hello.protocol_version {} is not supported: this dispatcher speaks version \
             {PROTOCOL_VERSION}; upgrade the server or use an SDK release for protocol \
             {PROTOCOL_VERSION}",
            hello.protocol_version
        )));
    }
    let namespace = Namespace::parse("hello.namespace", &hello.namespace)?;
    check_name("hello.worker_id", &hello.worker_id, 200, &[':', '/', '@'])?;
    if hello.queues.is_empty() {
        hello.queues.push(DEFAULT_QUEUE.to_string());
    }
    if hello.queues.len() > MAX_QUEUES {
        return Err(ConveyorError::invalid(
            "hello.queues",
            format!("at most {MAX_QUEUES} queues"),
        ));
    }
    for (index, queue) in hello.queues.iter().enumerate() {
        check_name(&format!("hello.queues[{index}]"), queue, 100, &[])?;
    }
    if hello.task_names.is_empty() || hello.task_names.len() > MAX_TASK_NAMES {
        return Err(ConveyorError::invalid(
            "hello.task_names",
            format!("must list 1 to {MAX_TASK_NAMES} task names"),
        ));
    }
    for (index, name) in hello.task_names.iter().enumerate() {
        check_name(
            &format!("hello.task_names[{index}]"),
            name,
            200,
            &[':', '/'],
        )?;
    }
    Ok((hello, namespace))
}

struct Session {
    context: SessionContext,
    id: String,
    worker_id: String,
    keys: Vec<QueueKey>,
    outbound: Sender,
    /// Assignments the worker has room for and we have not sent.
    credits: u32,
    /// Leases held by this session, with what fencing and retries need.
    leases: HashMap<TaskId, HeldLease>,
    completed: u64,
    /// Woken by the store when any of `keys` gets work.
    ready: Arc<QueueWaiter>,
    /// The last lease attempt found less than it asked for.
    starved_since: Option<Instant>,
    last_seen: Instant,
    last_renewal: Instant,
    /// Set once a drain began: the instant the worker must be done by.
    drain_deadline: Option<Instant>,
    /// Whether the leases were already handed back (the drop guard checks).
    released: bool,
    /// Outcomes received and not yet recorded: frames already waiting on the
    /// stream are drained first and recorded in one store call.
    pending_outcomes: Vec<pb::TaskOutcome>,
    /// TaskStarted reports not yet recorded, batched the same way.
    pending_started: Vec<StartReport>,
    /// Revocations of this session's tasks (CancelTask on a running task).
    revocations: Option<SessionEvents>,
    /// The namespace's queue prefix (`ns/`, or empty for `default`), which
    /// worker events carry.
    scope: String,
    /// When the last worker summary event was published.
    last_summary: Instant,
    /// Cancelled when this replica picks the session to move elsewhere.
    rebalance: CancellationToken,
}

/// How long a session drained for balance may take to finish its tasks.
const REBALANCE_GRACE: Duration = Duration::from_secs(3600);

/// How often a session publishes its worker summary event.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(5);

impl Session {
    fn new(
        context: SessionContext,
        hello: pb::Hello,
        namespace: Namespace,
        outbound: Sender,
    ) -> Self {
        let id = uuid::Uuid::now_v7().to_string();
        let keys: Vec<QueueKey> = hello
            .queues
            .iter()
            .flat_map(|queue| {
                let scoped = namespace.queue(queue);
                hello
                    .task_names
                    .iter()
                    .map(move |name| QueueKey::new(&scoped, name))
            })
            .collect();
        let ready = Arc::new(QueueWaiter::default());
        context.store.events().register_queue_waiter(&keys, &ready);
        let revocations = Some(context.store.events().register_session(&id));
        let now = now_ms();
        let rebalance = CancellationToken::new();
        context.registry.insert(
            pb::WorkerInfo {
                worker_id: hello.worker_id.clone(),
                session_id: id.clone(),
                queues: hello.queues,
                task_names: hello.task_names,
                concurrency: hello.concurrency,
                language: hello.language,
                sdk_version: hello.sdk_version,
                hostname: hello.hostname,
                active_leases: 0,
                credits: 0,
                connected_at: Some(timestamp_from_ms(now)),
                last_seen_at: Some(timestamp_from_ms(now)),
                completed: 0,
                namespace: namespace.name().to_string(),
                dispatcher: context.replica.to_string(),
            },
            rebalance.clone(),
        );
        Self {
            context,
            id,
            worker_id: hello.worker_id,
            keys,
            outbound,
            credits: 0,
            leases: HashMap::new(),
            completed: 0,
            ready,
            starved_since: None,
            last_seen: Instant::now(),
            last_renewal: Instant::now(),
            drain_deadline: None,
            released: false,
            revocations,
            pending_outcomes: Vec::new(),
            pending_started: Vec::new(),
            scope: namespace.queue(""),
            last_summary: Instant::now(),
            rebalance,
        }
    }

    /// Publishes a worker event (in the background: it never delays the
    /// session).
    fn worker_event(&self, kind: EventKind) {
        let event = StoreEvent {
            kind,
            at_ms: now_ms() as f64,
            task: None,
            queue_key: self.scope.clone(),
            attempt: 0,
            worker_id: self.worker_id.clone(),
            session_id: self.id.clone(),
            active: self.leases.len() as u32,
            slots: self.credits,
        };
        let store = self.context.store.clone();
        tokio::spawn(async move {
            if let Err(error) = store.publish_event(event).await {
                tracing::debug!(%error, "publishing a worker event failed");
            }
        });
    }

    fn welcome(&self) -> pb::Welcome {
        pb::Welcome {
            session_id: self.id.clone(),
            heartbeat_interval: Some(pb_duration(self.context.config.heartbeat_interval)),
            lease_ttl: Some(pb_duration(self.context.config.lease_ttl)),
            max_credits: self.context.config.max_credits,
            protocol_version: PROTOCOL_VERSION,
            max_frame_bytes: MAX_FRAME_BYTES as u32,
        }
    }

    async fn send(&self, message: Outbound) -> Result<(), End> {
        let response = pb::ConnectResponse {
            message: Some(message),
        };
        // Bounded: a worker that stops reading cannot wedge the session (and
        // with it heartbeats, outcomes and its leases) for longer than a
        // lease would survive anyway.
        match tokio::time::timeout(
            self.context.config.lease_ttl,
            self.outbound.send(Ok(response)),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Closed),
            Err(_) => Err(End::Stalled),
        }
    }

    fn can_lease(&self) -> bool {
        self.credits > 0 && self.starved_since.is_none() && self.drain_deadline.is_none()
    }

    async fn run(&mut self, mut inbound: Streaming<pb::ConnectRequest>) -> End {
        let ready = self.ready.clone();
        let shutdown = self.context.shutdown.clone();
        let rebalance = self.rebalance.clone();
        let mut revocations = self.revocations.take().expect("set at start");
        let mut ticker = tokio::time::interval(self.context.config.heartbeat_interval / 4);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Idle: waiting for work with room for it, so a wake-up for our
            // queues may pick this session.
            ready.set_idle(
                self.starved_since.is_some() && self.credits > 0 && self.drain_deadline.is_none(),
            );
            let hard_deadline = self.next_hard_deadline();
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled(), if self.drain_deadline.is_none() => self.begin_drain(pb::DrainReason::Shutdown).await,
                _ = rebalance.cancelled(), if self.drain_deadline.is_none() => self.begin_drain(pb::DrainReason::Rebalance).await,
                message = inbound.message() => match message {
                    Ok(Some(request)) => self.handle(request).await,
                    Ok(None) => Err(End::Closed),
                    // A frame that does not decode: the worker is told why
                    // (its leases go back to their queues as on any end).
                    Err(status) if status.code() == tonic::Code::InvalidArgument => {
                        tracing::warn!(session = %self.id, worker = %self.worker_id, %status, "a worker sent a frame that does not decode; ending its stream");
                        Err(End::Fatal(status))
                    }
                    Err(status) => {
                        tracing::debug!(session = %self.id, %status, "stream error");
                        Err(End::Closed)
                    }
                },
                                _ = std::future::ready(()), if self.has_pending() => self.flush().await,
                _ = ticker.tick() => self.on_tick().await,
                Some(id) = revocations.revoked() => self.revoke(id, "revoked", pb::CancelReason::Revoked).await,
                _ = sleep_until_deadline(hard_deadline), if hard_deadline.is_some() => self.enforce_time_limits().await,
                _ = ready.notified(), if self.starved_since.is_some() && self.credits > 0 => {
                    self.starved_since = None;
                    Ok(())
                }
                _ = std::future::ready(()), if self.can_lease() => self.lease_and_send().await,
            };
            if let Err(end) = step {
                return end;
            }
            if self.drain_deadline.is_some() && self.leases.is_empty() {
                return End::Drained;
            }
        }
    }

    async fn handle(&mut self, request: pb::ConnectRequest) -> Result<(), End> {
        self.last_seen = Instant::now();
        match request.message {
            Some(Inbound::Hello(_)) => {
                return Err(End::Fatal(Status::failed_precondition(
                    "hello was already received on this stream",
                )));
            }
            Some(Inbound::GrantCredits(grant)) => self.grant(grant.credits)?,
            Some(Inbound::Heartbeat(_)) => {}
            Some(Inbound::ReportOutcomes(report)) => {
                self.pending_outcomes.extend(report.outcomes);
                if self.pending_outcomes.len() >= FLUSH_AT {
                    self.flush().await?;
                }
            }
            Some(Inbound::TaskStarted(started)) => self.mark_started(started).await,
            Some(Inbound::ReportProgress(report)) => self.record_progress(report).await,
            None => {
                return Err(End::Fatal(Status::invalid_argument(
                    "message: empty envelope",
                )));
            }
        }
        if !self.leases.is_empty()
            && self.last_renewal.elapsed() >= self.context.config.heartbeat_interval
        {
            self.renew().await?;
        }
        Ok(())
    }

    fn grant(&mut self, credits: u32) -> Result<(), End> {
        if credits == 0 {
            return Err(End::Fatal(Status::invalid_argument(
                "grant_credits.credits must be at least 1",
            )));
        }
        let outstanding = u64::from(self.credits) + self.leases.len() as u64 + u64::from(credits);
        if outstanding > u64::from(self.context.config.max_credits) {
            return Err(End::Fatal(Status::resource_exhausted(format!(
                "grant_credits: {outstanding} credits and leases outstanding, the limit is {}",
                self.context.config.max_credits
            ))));
        }
        self.credits += credits;
        self.context
            .registry
            .update(&self.id, self.leases.len(), self.credits, self.completed);
        Ok(())
    }

    async fn lease_and_send(&mut self) -> Result<(), End> {
        let max = (self.credits as usize).min(self.context.config.lease_batch);
        let now = now_ms();
        let request = LeaseRequest {
            session_id: self.id.clone(),
            worker_id: self.worker_id.clone(),
            queue_keys: self.keys.clone(),
            max,
            lease_deadline_ms: now + self.context.config.lease_ttl.as_millis() as i64,
            now_ms: now,
        };
        let leased = match self.context.store.lease(request).await {
            Ok(leased) => leased,
            Err(error) => {
                tracing::warn!(session = %self.id, %error, "lease failed; retrying on the next tick");
                self.starved_since = Some(Instant::now());
                // The wake-up that brought us here may have been the only
                // one: another idle session may fare better.
                self.pass_wake_up_on();
                return Ok(());
            }
        };
        if leased.len() < max {
            self.starved_since = Some(Instant::now());
        } else {
            // A full batch: more may be waiting, so pass the wake-up on to
            // another idle session (see EventHub::queue_ready).
            self.pass_wake_up_on();
        }
        if leased.is_empty() {
            return Ok(());
        }
        self.last_renewal = Instant::now();
        let mut assignments = Vec::with_capacity(leased.len());
        for task in leased {
            let id = task.id;
            let (assignment, held) = to_assignment(task);
            self.leases.insert(id, held);
            assignments.push(assignment);
        }
        self.credits -= assignments.len() as u32;
        self.context
            .registry
            .update(&self.id, self.leases.len(), self.credits, self.completed);
        for frame in frames(assignments) {
            self.send(Outbound::Assignments(pb::Assignments {
                assignments: frame,
            }))
            .await?;
        }
        Ok(())
    }

    /// Signals this session's queues again, so that another idle session
    /// looks at them (a ready queue wakes one idle session, not all).
    fn pass_wake_up_on(&self) {
        for key in &self.keys {
            self.context.store.events().queue_ready(key);
        }
    }

    async fn record_outcomes(&mut self, outcomes: Vec<pb::TaskOutcome>) -> Result<(), End> {
        let now_us = now_us();
        let now = now_us.div_euclid(1000);
        let mut reports = Vec::with_capacity(outcomes.len());
        let mut rejections = Vec::new();
        for outcome in outcomes {
            let task_id = outcome.task_id.clone();
            let Ok(id) = TaskId::parse(&outcome.task_id, "task_id") else {
                rejections.push((
                    task_id,
                    Code::InvalidArgument,
                    "task_id must be a UUID".to_string(),
                ));
                continue;
            };
            let Some(held) = self.leases.get(&id) else {
                let message = "task is not leased to this session".to_string();
                rejections.push((task_id, Code::FailedPrecondition, message));
                continue;
            };
            if held.token != outcome.lease_token {
                let message = format!(
                    "stale lease token {}; the current one is {}",
                    outcome.lease_token, held.token
                );
                rejections.push((task_id, Code::FailedPrecondition, message));
                continue;
            }
            let Some(result) = outcome.outcome else {
                rejections.push((
                    task_id,
                    Code::InvalidArgument,
                    "outcome: result or error is required".into(),
                ));
                continue;
            };
            reports.push(to_report(
                id,
                &self.id,
                held,
                result,
                &self.context.config.limits,
                now,
            ));
        }
        if !reports.is_empty() {
            let ids: Vec<TaskId> = reports.iter().map(|report| report.id).collect();
            let acks = self
                .context
                .store
                .complete(reports, now_us)
                .await
                .map_err(|error| End::Fatal(error.into()))?;
            for (id, ack) in ids.into_iter().zip(acks) {
                let held = self.leases.remove(&id);
                let (code, message) = match ack {
                    OutcomeAck::Recorded(state) => {
                        if let Some(observed) = held.and_then(|held| held.observed) {
                            crate::assignment::observe_outcome(&observed, state);
                        }
                        self.completed += 1;
                        continue;
                    }
                    OutcomeAck::StaleLease => (
                        Code::FailedPrecondition,
                        "the task was leased again; outcome refused",
                    ),
                    OutcomeAck::NotHeld => (
                        Code::FailedPrecondition,
                        "the task is no longer leased to this session",
                    ),
                    OutcomeAck::NotFound => (Code::NotFound, "no such task"),
                };
                rejections.push((id.to_string(), code, message.to_string()));
            }
        }
        for (task_id, code, message) in rejections {
            tracing::debug!(session = %self.id, task = %task_id, %message, "outcome rejected");
            let rejected = pb::OutcomeRejected {
                task_id,
                code: code as i32,
                message,
            };
            self.send(Outbound::OutcomeRejected(rejected)).await?;
        }
        self.context
            .registry
            .update(&self.id, self.leases.len(), self.credits, self.completed);
        Ok(())
    }

    fn has_pending(&self) -> bool {
        !self.pending_outcomes.is_empty() || !self.pending_started.is_empty()
    }

    /// Records what the worker reported, in one store call per kind.
    async fn flush(&mut self) -> Result<(), End> {
        if !self.pending_started.is_empty() {
            let reports = std::mem::take(&mut self.pending_started);
            if let Err(error) = self.context.store.mark_started(reports, now_ms()).await {
                tracing::warn!(session = %self.id, %error, "marking tasks running failed");
            }
        }
        if !self.pending_outcomes.is_empty() {
            let outcomes = std::mem::take(&mut self.pending_outcomes);
            self.record_outcomes(outcomes).await?;
        }
        Ok(())
    }

    async fn mark_started(&mut self, started: pb::TaskStarted) {
        if !self.context.config.track_started {
            return;
        }
        let Ok(id) = TaskId::parse(&started.task_id, "task_id") else {
            return;
        };
        if self
            .leases
            .get(&id)
            .is_none_or(|held| held.token != started.lease_token)
        {
            return;
        }
        self.pending_started.push(StartReport {
            id,
            session_id: self.id.clone(),
            lease_token: started.lease_token,
        });
        if self.pending_started.len() >= FLUSH_AT
            && let Err(error) = self
                .context
                .store
                .mark_started(std::mem::take(&mut self.pending_started), now_ms())
                .await
        {
            tracing::warn!(session = %self.id, %error, "marking tasks running failed");
        }
    }

    fn next_hard_deadline(&self) -> Option<Instant> {
        self.leases
            .values()
            .filter_map(|held| held.hard_deadline)
            .min()
    }

    /// The store already took the task from us (CancelTask): tell the worker.
    async fn revoke(
        &mut self,
        id: TaskId,
        reason: &str,
        code: pb::CancelReason,
    ) -> Result<(), End> {
        if self.leases.remove(&id).is_none() {
            return Ok(());
        }
        self.context
            .registry
            .update(&self.id, self.leases.len(), self.credits, self.completed);
        let cancel = pb::CancelAssignment {
            task_id: id.to_string(),
            reason: reason.to_string(),
            reason_code: code as i32,
        };
        self.send(Outbound::CancelAssignment(cancel)).await
    }

    /// Fails the attempts whose hard time limit passed (retried per their
    /// policy) and tells the worker to abandon them, freeing their slots.
    async fn enforce_time_limits(&mut self) -> Result<(), End> {
        let now = Instant::now();
        let expired: Vec<TaskId> = self
            .leases
            .iter()
            .filter(|(_, held)| held.hard_deadline.is_some_and(|deadline| deadline <= now))
            .map(|(id, _)| *id)
            .collect();
        let now_ms = now_ms();
        let reports = expired
            .iter()
            .filter_map(|id| {
                self.leases
                    .get(id)
                    .map(|held| time_limit_report(*id, &self.id, held, now_ms))
            })
            .collect::<Vec<_>>();
        if reports.is_empty() {
            return Ok(());
        }
        tracing::info!(session = %self.id, count = reports.len(), "hard time limit passed");
        let acks = self
            .context
            .store
            .complete(reports, now_ms * 1000)
            .await
            .map_err(|error| End::Fatal(error.into()))?;
        for (id, ack) in expired.iter().zip(acks) {
            if let OutcomeAck::Recorded(state) = ack
                && let Some(observed) = self.leases.get(id).and_then(|held| held.observed.as_ref())
            {
                crate::assignment::observe_outcome(observed, state);
            }
        }
        for id in expired {
            self.revoke(
                id,
                "hard time limit exceeded",
                pb::CancelReason::HardTimeLimit,
            )
            .await?;
        }
        Ok(())
    }

    async fn record_progress(&mut self, report: pb::ReportProgress) {
        let Ok(id) = TaskId::parse(&report.task_id, "task_id") else {
            return;
        };
        let Some(progress) = report.progress else {
            return;
        };
        let meta_size = progress.meta.as_ref().map_or(0, |meta| meta.data.len());
        if progress.state.len() > 100 || meta_size > 64 * 1024 {
            tracing::warn!(session = %self.id, task = %id, "progress over its size limits; dropped");
            return;
        }
        if self
            .leases
            .get(&id)
            .is_none_or(|held| held.token != report.lease_token)
        {
            return;
        }
        let report = ProgressReport {
            id,
            session_id: self.id.clone(),
            lease_token: report.lease_token,
            progress,
        };
        if let Err(error) = self
            .context
            .store
            .record_progress(vec![report], now_ms())
            .await
        {
            tracing::warn!(session = %self.id, %error, "recording progress failed");
        }
    }

    /// Extends the session's leases in the store; if the store no longer
    /// knows them (reaped while we were cut off), tell the worker to stop.
    async fn renew(&mut self) -> Result<(), End> {
        self.last_renewal = Instant::now();
        let now = now_ms();
        let deadline = now + self.context.config.lease_ttl.as_millis() as i64;
        match self.context.store.heartbeat(&self.id, deadline, now).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                tracing::warn!(session = %self.id, leases = self.leases.len(), "leases were reaped; cancelling them on the worker");
                let lost: Vec<TaskId> = self.leases.drain().map(|(id, _)| id).collect();
                for id in lost {
                    let cancel = pb::CancelAssignment {
                        task_id: id.to_string(),
                        reason: "lease expired".into(),
                        reason_code: pb::CancelReason::LeaseLost as i32,
                    };
                    self.send(Outbound::CancelAssignment(cancel)).await?;
                }
                Ok(())
            }
            Err(error) => {
                tracing::warn!(session = %self.id, %error, "renewing leases failed");
                Ok(())
            }
        }
    }

    async fn on_tick(&mut self) -> Result<(), End> {
        let config = &self.context.config;
        let silent_for = self.last_seen.elapsed();
        if silent_for.as_secs_f64()
            > config.heartbeat_interval.as_secs_f64() * config.missed_heartbeats
        {
            tracing::warn!(session = %self.id, ?silent_for, "worker missed its heartbeats; releasing its leases");
            return Err(End::Fatal(Status::unavailable(format!(
                "no message from the worker for {silent_for:?}; its leases were released"
            ))));
        }
        if self
            .drain_deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            return Err(End::Drained);
        }
        if self
            .starved_since
            .is_some_and(|since| since.elapsed() >= STARVED_RECHECK)
        {
            self.starved_since = None;
        }
        if !self.leases.is_empty() && self.last_renewal.elapsed() >= config.heartbeat_interval {
            self.renew().await?;
        }
        if self.last_summary.elapsed() >= SUMMARY_INTERVAL {
            self.last_summary = Instant::now();
            self.worker_event(EventKind::WorkerHeartbeat);
        }
        Ok(())
    }

    /// Asks the worker to finish what it runs and reconnect: the replica
    /// shuts down, or holds more than its share of the sessions. No lease
    /// is handed out from now on; the session ends once the worker's
    /// tasks are reported, or at the grace's end.
    async fn begin_drain(&mut self, reason: pb::DrainReason) -> Result<(), End> {
        // A replica shutting down has its grace; a session moved for
        // balance is not hurried: its tasks finish however long they take
        // (cut off, they would run again elsewhere).
        let grace = match reason {
            pb::DrainReason::Rebalance => REBALANCE_GRACE.max(self.context.config.drain_grace),
            _ => self.context.config.drain_grace,
        };
        self.drain_deadline = Some(Instant::now() + grace);
        if reason == pb::DrainReason::Rebalance {
            tracing::info!(session = %self.id, worker = %self.worker_id, running = self.leases.len(), "asking the worker to reconnect: this replica holds more than its share of the sessions");
        }
        self.send(Outbound::Drain(pb::Drain {
            grace: Some(pb_duration(grace)),
            reason: reason as i32,
        }))
        .await
    }

    async fn finish(&mut self, end: End) {
        // No longer a candidate for wake-ups; one that picked this session
        // since its last lease goes to another idle session instead.
        self.ready.set_idle(false);
        self.pass_wake_up_on();
        // Outcomes that arrived before the end are recorded, not lost.
        let _ = self.flush().await;
        match end {
            End::Fatal(status) => {
                tracing::info!(session = %self.id, %status, "session ended with an error");
                let _ = self.outbound.try_send(Err(status));
            }
            End::Stalled => {
                tracing::warn!(session = %self.id, worker = %self.worker_id, "worker stopped reading its stream; closing the session and requeueing its tasks");
                let _ = self.outbound.try_send(Err(Status::resource_exhausted(
                    "the worker did not read its stream for a lease TTL; reconnect",
                )));
            }
            End::Closed => {
                tracing::info!(session = %self.id, worker = %self.worker_id, "worker disconnected")
            }
            End::Drained => tracing::info!(session = %self.id, "worker drained"),
        }
        self.release().await;
    }

    async fn release(&mut self) {
        self.released = true;
        self.context.registry.remove(&self.id);
        self.worker_event(EventKind::WorkerOffline);
        match self.context.store.release_session(&self.id, now_ms()).await {
            Ok(requeued) if !requeued.is_empty() => {
                tracing::info!(session = %self.id, count = requeued.len(), "requeued the session's tasks");
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(session = %self.id, %error, "releasing leases failed; the reaper will requeue them")
            }
        }
    }
}

impl Drop for Session {
    /// A session dropped without `finish` (its task aborted or panicked)
    /// still hands its leases back.
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.context.registry.remove(&self.id);
        if tokio::runtime::Handle::try_current().is_ok() {
            self.worker_event(EventKind::WorkerOffline);
        }
        let store = self.context.store.clone();
        let id = std::mem::take(&mut self.id);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = store.release_session(&id, now_ms()).await;
            });
        }
    }
}

/// Sleeps until `deadline` (never, without one).
async fn sleep_until_deadline(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(bytes: usize) -> pb::Assignment {
        pb::Assignment {
            task_id: "t".into(),
            args: vec![pb::Payload {
                data: vec![b'x'; bytes],
                content_type: String::new(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn frames_stay_within_the_budget_and_keep_order() {
        // 50 leases of 256 KB: 13 MB in one frame before; now 1 MiB frames.
        let leased: Vec<_> = (0..50).map(|_| assignment(256 * 1024)).collect();
        let sizes: Vec<usize> = leased.iter().map(prost::Message::encoded_len).collect();
        let frames = frames(leased);
        assert_eq!(frames.iter().map(Vec::len).sum::<usize>(), 50);
        for frame in &frames {
            let message = pb::ConnectResponse {
                message: Some(Outbound::Assignments(pb::Assignments {
                    assignments: frame.clone(),
                })),
            };
            assert!(prost::Message::encoded_len(&message) <= FRAME_BUDGET_BYTES);
        }
        assert_eq!(frames.len(), 17, "three of 256 KB per frame");
        let flat: Vec<usize> = frames
            .iter()
            .flatten()
            .map(prost::Message::encoded_len)
            .collect();
        assert_eq!(flat, sizes);
        // A task larger than the budget travels alone, whole.
        let frames = frames_of_sizes(&[100, 3 * 1024 * 1024, 100]);
        assert_eq!(frames, vec![1, 1, 1]);
        assert!(frames_of_sizes(&[]).is_empty());
    }

    fn frames_of_sizes(sizes: &[usize]) -> Vec<usize> {
        frames(sizes.iter().map(|&bytes| assignment(bytes)).collect())
            .iter()
            .map(Vec::len)
            .collect()
    }
}
