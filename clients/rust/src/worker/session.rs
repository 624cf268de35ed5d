//! One worker session: a `DispatchService.Connect` stream from Hello to its
//! end, run as a single loop over shutdown, dispatcher messages, finished
//! handlers, heartbeats and the drain deadline.

use std::collections::HashMap;
use std::time::Duration;

use conveyor_api::pb;
use conveyor_api::pb::connect_request::Message as Outbound;
use conveyor_api::pb::connect_response::Message as Inbound;
use conveyor_api::pb::dispatch_service_client::DispatchServiceClient;
use conveyor_api::pb::task_outcome::Outcome;
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::client::authorize;
use crate::error::{Error, Result};
use crate::payload::duration_from_proto;
use crate::worker::Runtime;
use crate::worker::context::{TaskContext, TaskFailure};
use crate::worker::runner::{self, Finished, Job, Started};
use crate::worker::state::{Phase, SessionEnd, credits_to_grant, heartbeat_interval, max_credits};

/// Frames queued towards the dispatcher before sends wait.
const OUTBOUND_BUFFER: usize = 64;
/// How long the dispatcher has to answer Hello with Welcome.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait, after closing our side, for the dispatcher to close its
/// side, so that the last frames are delivered rather than reset.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most outcomes in one `ReportOutcomes` frame.
const MAX_OUTCOMES_PER_FRAME: usize = 1024;

/// An assignment of this session whose handler has not finished.
struct Running {
    lease_token: u64,
    cancellation: CancellationToken,
    /// Set by `CancelAssignment`: the outcome will be dropped.
    cancelled: bool,
    /// The runner's task id, to recognise it if it dies without an outcome.
    runner_id: tokio::task::Id,
    /// Stops the runner (and its handler) when a cancelled handler does not
    /// stop by itself, so that its slot is free again.
    abort: tokio::task::AbortHandle,
}

/// Time a revoked handler gets to stop by itself before it is aborted.
const REVOKE_GRACE: Duration = Duration::from_secs(1);

/// Connects, says Hello, awaits Welcome, then serves the stream until it ends.
pub(crate) async fn run(
    runtime: &mut Runtime,
    channel: Channel,
    epoch: u64,
    stop: &CancellationToken,
) -> SessionEnd {
    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_BUFFER);
    let hello = request(Outbound::Hello(runtime.config.hello()));
    let outbound = tokio_stream::once(hello).chain(ReceiverStream::new(out_rx));
    let handshake = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake(channel, outbound, runtime.config.authorization.clone()),
    );
    let (inbound, welcome) = tokio::select! {
        () = stop.cancelled() => return SessionEnd::Stopped,
        result = handshake => match result {
            Ok(Ok(accepted)) => accepted,
            Ok(Err(error)) => return SessionEnd::broken(error, false),
            Err(_elapsed) => {
                let status = tonic::Status::deadline_exceeded("no Welcome within 10s of Hello");
                return SessionEnd::broken(status.into(), false);
            }
        },
    };
    let heartbeat_every = heartbeat_interval(&welcome, runtime.config.heartbeat_override);
    tracing::info!(
        session_id = %welcome.session_id,
        heartbeat_ms = heartbeat_every.as_millis() as u64,
        "worker session established"
    );
    let mut heartbeat = tokio::time::interval_at(Instant::now() + heartbeat_every, heartbeat_every);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut session = Session {
        epoch,
        out_tx: Some(out_tx),
        inbound,
        running: HashMap::new(),
        outstanding_credits: 0,
        max_credits: max_credits(&welcome),
        heartbeat,
        phase: Phase::Active,
    };
    let end = match session.serve(runtime, stop).await {
        Ok(end) => end,
        Err(error) => return SessionEnd::broken(error, true),
    };
    session.close().await;
    end
}

async fn handshake(
    channel: Channel,
    outbound: impl Stream<Item = pb::ConnectRequest> + Send + 'static,
    authorization: Option<MetadataValue<Ascii>>,
) -> Result<(Streaming<pb::ConnectResponse>, pb::Welcome)> {
    let mut client = DispatchServiceClient::new(channel)
        .max_decoding_message_size(crate::client::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::client::MAX_MESSAGE_BYTES);
    let request = authorize(tonic::Request::new(outbound), authorization.as_ref());
    let mut inbound = client.connect(request).await?.into_inner();
    match inbound.message().await? {
        Some(pb::ConnectResponse {
            message: Some(Inbound::Welcome(welcome)),
        }) => {
            if welcome.max_frame_bytes as usize > crate::client::MAX_MESSAGE_BYTES {
                tracing::error!(
                    max_frame_bytes = welcome.max_frame_bytes,
                    limit = crate::client::MAX_MESSAGE_BYTES,
                    "the dispatcher may send frames larger than this SDK receives; upgrade the SDK"
                );
            }
            Ok((inbound, welcome))
        }
        Some(other) => Err(Error::Protocol(format!(
            "expected Welcome as the first message, got {other:?}"
        ))),
        None => Err(tonic::Status::unavailable("stream ended before Welcome").into()),
    }
}

struct Session {
    epoch: u64,
    /// Our half of the stream; `None` once closed.
    out_tx: Option<mpsc::Sender<pb::ConnectRequest>>,
    inbound: Streaming<pb::ConnectResponse>,
    /// Assignments of this session still running, by task id.
    running: HashMap<String, Running>,
    /// Credits granted and not yet used by an assignment.
    outstanding_credits: usize,
    max_credits: usize,
    heartbeat: Interval,
    phase: Phase,
}

impl Session {
    async fn serve(
        &mut self,
        runtime: &mut Runtime,
        stop: &CancellationToken,
    ) -> Result<SessionEnd> {
        loop {
            if let Some(end) = self.phase.completed(self.running.is_empty()) {
                return Ok(end);
            }
            self.grant_credits(runtime).await?;
            let deadline = self.phase.deadline();
            tokio::select! {
                biased;
                () = stop.cancelled(), if !self.phase.is_stopping() => {
                    tracing::info!(running = self.running.len(), "draining before shutdown");
                    self.phase = self.phase.drain(true, runtime.config.grace_period);
                }
                _ = self.heartbeat.tick() => self.send(Outbound::Heartbeat(pb::Heartbeat {})).await?,
                Some(started) = runtime.started_rx.recv() => self.report_started(started).await?,
                Some(joined) = runtime.tasks.join_next_with_id(), if !runtime.tasks.is_empty() => {
                    self.report_finished(runtime, joined).await?;
                }
                message = self.inbound.message() => match message {
                    Ok(Some(response)) => self.handle(runtime, response),
                    Ok(None) => return self.stream_ended(tonic::Status::unavailable("dispatcher ended the stream")),
                    Err(status) => return self.stream_ended(status),
                },
                () = sleep_until(deadline) => {
                    tracing::warn!(abandoned = self.running.len(), "drain grace period over");
                    return Ok(self.phase.grace_over());
                }
            }
        }
    }

    /// Handles one dispatcher message.
    fn handle(&mut self, runtime: &mut Runtime, response: pb::ConnectResponse) {
        match response.message {
            Some(Inbound::Assignments(batch)) => {
                for assignment in batch.assignments {
                    self.start(runtime, assignment);
                }
            }
            Some(Inbound::CancelAssignment(cancel)) => {
                if let Some(running) = self.running.get_mut(&cancel.task_id) {
                    tracing::info!(task_id = %cancel.task_id, reason = %cancel.reason, "task cancelled by dispatcher");
                    running.cancelled = true;
                    running.cancellation.cancel();
                    // A hard time limit takes the slot back at once (as
                    // Celery kills the process); a revoke allows a short grace.
                    let abort = running.abort.clone();
                    if cancel.reason.starts_with("hard time limit") {
                        abort.abort();
                    } else {
                        tokio::spawn(async move {
                            tokio::time::sleep(REVOKE_GRACE).await;
                            abort.abort();
                        });
                    }
                }
            }
            Some(Inbound::Drain(drain)) => {
                let grace = duration_from_proto(drain.grace.as_ref())
                    .unwrap_or(runtime.config.grace_period);
                let reason = match pb::DrainReason::try_from(drain.reason) {
                    Ok(pb::DrainReason::Rebalance) => "rebalance",
                    Ok(pb::DrainReason::Shutdown) => "shutdown",
                    _ => "unspecified",
                };
                tracing::info!(
                    grace_ms = grace.as_millis() as u64,
                    running = self.running.len(),
                    reason,
                    "dispatcher asked to drain"
                );
                self.phase = self.phase.drain(false, grace);
            }
            Some(Inbound::OutcomeRejected(rejected)) => tracing::warn!(
                task_id = %rejected.task_id,
                code = ?tonic::Code::from_i32(rejected.code),
                message = %rejected.message,
                "outcome rejected by dispatcher"
            ),
            Some(Inbound::Welcome(_)) => tracing::warn!("ignoring a second Welcome"),
            None => tracing::debug!("ignoring a message of a kind this sdk does not know"),
        }
    }

    /// Spawns the runner of one assignment, unless draining: then the task
    /// stays leased until the stream closes, which puts it back in its queue.
    fn start(&mut self, runtime: &mut Runtime, assignment: pb::Assignment) {
        if self.outstanding_credits == 0 {
            tracing::warn!(task_id = %assignment.task_id, "assignment beyond the credits granted");
        }
        self.outstanding_credits = self.outstanding_credits.saturating_sub(1);
        if self.phase.is_draining() {
            tracing::debug!(task_id = %assignment.task_id, "not starting an assignment while draining");
            return;
        }
        let task_id = assignment.task_id.clone();
        let lease_token = assignment.lease_token;
        let cancellation = CancellationToken::new();
        let job = Job {
            epoch: self.epoch,
            handler: runtime.config.handlers.get(&assignment.name).cloned(),
            context: TaskContext::new(assignment, cancellation.clone())
                .with_reporter(self.out_tx.clone()),
            slots: runtime.slots.clone(),
            started_tx: runtime.started_tx.clone(),
        };
        let abort = runtime.tasks.spawn(runner::run(job));
        let runner_id = abort.id();
        let running = Running {
            lease_token,
            cancellation,
            cancelled: false,
            runner_id,
            abort,
        };
        // An earlier attempt of the same task may still run here after a
        // cancel; its outcome no longer matches a lease token and is dropped.
        if let Some(previous) = self.running.insert(task_id, running) {
            previous.cancellation.cancel();
        }
    }

    async fn grant_credits(&mut self, runtime: &Runtime) -> Result<()> {
        let credits = credits_to_grant(
            runtime.config.concurrency,
            runtime.tasks.len(),
            self.outstanding_credits,
            self.max_credits,
            self.phase.is_draining(),
        );
        if credits == 0 {
            return Ok(());
        }
        self.outstanding_credits += credits;
        let credits = u32::try_from(credits).unwrap_or(u32::MAX);
        self.send(Outbound::GrantCredits(pb::GrantCredits { credits }))
            .await
    }

    async fn report_started(&mut self, started: Started) -> Result<()> {
        let current = self.running.get(&started.task_id).is_some_and(|running| {
            started.epoch == self.epoch
                && running.lease_token == started.lease_token
                && !running.cancelled
        });
        if !current {
            return Ok(());
        }
        let message = pb::TaskStarted {
            task_id: started.task_id,
            lease_token: started.lease_token,
        };
        self.send(Outbound::TaskStarted(message)).await
    }

    /// Reports the outcome of `first` and of every other runner already done,
    /// in as few frames as the per-frame limit allows.
    async fn report_finished(
        &mut self,
        runtime: &mut Runtime,
        first: std::result::Result<(tokio::task::Id, Finished), tokio::task::JoinError>,
    ) -> Result<()> {
        // Starts announced before these outcomes go first.
        while let Ok(started) = runtime.started_rx.try_recv() {
            self.report_started(started).await?;
        }
        let mut outcomes: Vec<pb::TaskOutcome> = self.outcome_of(first).into_iter().collect();
        while let Some(joined) = runtime.tasks.try_join_next_with_id() {
            outcomes.extend(self.outcome_of(joined));
        }
        while !outcomes.is_empty() {
            let rest = outcomes.split_off(outcomes.len().min(MAX_OUTCOMES_PER_FRAME));
            let frame = pb::ReportOutcomes {
                outcomes: std::mem::replace(&mut outcomes, rest),
            };
            self.send(Outbound::ReportOutcomes(frame)).await?;
        }
        Ok(())
    }

    /// The outcome to report for a finished runner, if it belongs to this
    /// session and was not cancelled.
    fn outcome_of(
        &mut self,
        joined: std::result::Result<(tokio::task::Id, Finished), tokio::task::JoinError>,
    ) -> Option<pb::TaskOutcome> {
        let finished = match joined {
            Ok((_, finished)) => finished,
            Err(join_error) => return self.outcome_of_lost_runner(join_error),
        };
        if finished.epoch != self.epoch {
            return None;
        }
        let current = self.running.get(&finished.task_id)?;
        if current.lease_token != finished.lease_token {
            return None;
        }
        let running = self.running.remove(&finished.task_id)?;
        if running.cancelled {
            tracing::debug!(task_id = %finished.task_id, "dropping the outcome of a cancelled task");
            return None;
        }
        Some(finished.into_proto())
    }

    /// A runner that died without an outcome (only by a bug or an abort)
    /// would hold its lease for as long as the session lives: fail it.
    fn outcome_of_lost_runner(
        &mut self,
        join_error: tokio::task::JoinError,
    ) -> Option<pb::TaskOutcome> {
        let runner_id = join_error.id();
        let task_id = self
            .running
            .iter()
            .find(|(_, running)| running.runner_id == runner_id)
            .map(|(task_id, _)| task_id.clone())?;
        let running = self.running.remove(&task_id)?;
        tracing::error!(task_id = %task_id, error = %join_error, "task runner died");
        let failure = TaskFailure::new("WorkerError", join_error.to_string());
        let outcome = Outcome::Error(failure.into_proto());
        (!running.cancelled).then(|| {
            Finished {
                epoch: self.epoch,
                task_id,
                lease_token: running.lease_token,
                outcome,
            }
            .into_proto()
        })
    }

    /// The end of the session when the dispatcher closed or broke the stream.
    fn stream_ended(&mut self, status: tonic::Status) -> Result<SessionEnd> {
        match self.phase.ended_by_dispatcher() {
            Some(end) => Ok(end),
            None => Err(status.into()),
        }
    }

    async fn send(&mut self, message: Outbound) -> Result<()> {
        let closed = || tonic::Status::unavailable("worker stream closed").into();
        let Some(out_tx) = &self.out_tx else {
            return Err(closed());
        };
        out_tx.send(request(message)).await.map_err(|_| closed())
    }

    /// Closes our half of the stream, then waits (bounded) for the
    /// dispatcher to close its half, so frames already queued are delivered.
    async fn close(&mut self) {
        self.out_tx = None;
        let drain_inbound = async { while let Ok(Some(_)) = self.inbound.message().await {} };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain_inbound).await;
    }
}

impl Drop for Session {
    /// Whatever still runs was leased through this stream and is abandoned
    /// with it: ask the handlers to stop.
    fn drop(&mut self) {
        for running in self.running.values() {
            running.cancellation.cancel();
        }
    }
}

fn request(message: Outbound) -> pb::ConnectRequest {
    pb::ConnectRequest {
        message: Some(message),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
