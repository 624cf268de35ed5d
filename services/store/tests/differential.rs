//! The differential test: random sequences of store operations run against
//! the memory store and the Redis store side by side, comparing every result
//! and the state of every task after each step. The two backends implement
//! one state machine; any disagreement is a bug in one of them, and proptest
//! shrinks it to a short sequence that it prints.
//!
//! Runs `CONVEYOR_DIFF_CASES` sequences (default 10,000) from the fixed seed
//! `CONVEYOR_DIFF_SEED` (default below), or from a random seed with
//! `CONVEYOR_DIFF_SEED=random` (the seed is printed so that a failure can be
//! replayed). Needs `CONVEYOR_TEST_REDIS`, as the conformance suite does.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};

use conveyor_api::pb;
use conveyor_core::validate::validate_spec;
use conveyor_core::{Limits, NewTask, StoredTask, TaskId, TaskState, lifecycle};
use conveyor_store::conformance::{test_redis_config, test_redis_url};
use conveyor_store::{
    LeaseRequest, MemoryStore, Outcome, OutcomeReport, ProgressReport, QueueKey, RedisStore,
    StartReport, Store, StoreClock,
};

const NOW: i64 = 1_800_000_000_000;
const NAMES: [&str; 2] = ["add", "mul"];
const SESSIONS: [&str; 2] = ["s0", "s1"];
// The fastest and (almost) the slowest rates validation allows among them.
const RATES: [&str; 4] = ["5/s", "1000000/s", "1/h", "0.0417/h"];
// Concurrency keys and limits: overlapping single permits (forks), a key
// with room for two, and one that never runs out.
const KEY_LIMITS: [(&str, u32); 4] = [("f0", 1), ("f1", 1), ("f2", 2), ("c", u32::MAX)];
const DEFAULT_SEED: u64 = 0x00C0_FFEE;

/// One step of a sequence. Indices pick among what the sequence created.
#[derive(Debug, Clone)]
enum Op {
    Submit {
        name: usize,
        priority: u32,
        countdown_ms: Option<u64>,
        expires_in_ms: Option<u64>,
        max_retries: u32,
        idempotency_key: Option<u8>,
        rate: Option<usize>,
        /// Concurrency keys (indexes into KEY_LIMITS); the first through the
        /// one-key fields when `legacy_key`.
        concurrency: Vec<usize>,
        legacy_key: bool,
        result_ttl_ms: Option<u64>,
    },
    Lease {
        session: usize,
        name: usize,
        max: usize,
        ttl_ms: i64,
    },
    Heartbeat {
        session: usize,
        ttl_ms: i64,
    },
    Start {
        session: usize,
        pick: usize,
    },
    Progress {
        session: usize,
        pick: usize,
    },
    Complete {
        session: usize,
        pick: usize,
        /// 0 succeed, 1 fail for good, 2 retry after `delay_ms`.
        kind: u8,
        delay_ms: i64,
        /// Report with a wrong token (fencing).
        stale: bool,
    },
    Cancel(usize),
    Replay(usize),
    Forget(usize),
    Release(usize),
    Reap,
    Promote,
    Pause(bool),
    Advance(i64),
    /// Creates schedule `id` (0..2) firing `in_ms` from now.
    CreateSchedule {
        id: u8,
        in_ms: i64,
    },
    /// Claims the schedule's next run at the version read, as a replica.
    ClaimRun {
        id: u8,
        /// Claim with a version one behind (a replica that read too early).
        stale: bool,
        ttl_ms: i64,
    },
    /// Settles a claimed run (what the replica does after submitting).
    SettleRun {
        id: u8,
    },
    /// Pauses (no next run) or resumes (`in_ms` from now).
    PauseSchedule {
        id: u8,
        paused: bool,
    },
    DueSchedules,
    /// Submits a workflow: per node a task name and its parents (indices
    /// of earlier nodes), input rule and trigger (0 all succeeded, 1 all
    /// done, 2 on failure).
    SubmitWorkflow {
        nodes: Vec<(usize, Vec<usize>, u8)>,
        countdown_last: bool,
    },
    /// Cancels a workflow this sequence submitted.
    CancelWorkflow(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let submit = (
        0..NAMES.len(),
        prop_oneof![Just(0u32), Just(5u32)],
        // Up to the longest countdown allowed (near the horizon, 3,660 days).
        prop::option::weighted(
            0.3,
            prop_oneof![Just(0u64), Just(50), Just(700), Just(316_000_000_000)],
        ),
        prop::option::weighted(0.2, prop_oneof![Just(100u64), Just(1500)]),
        0u32..3,
        prop::option::weighted(0.3, 0u8..2),
        prop::option::weighted(0.2, 0..RATES.len()),
        prop::option::weighted(
            0.35,
            prop::sample::subsequence(vec![0usize, 1, 2, 3], 1..=3),
        )
        .prop_map(Option::unwrap_or_default),
        any::<bool>(),
        // Redis expires results on its own (real) clock, so only TTLs that
        // outlast a run are comparable here; the conformance suite covers
        // expiry itself.
        prop::option::weighted(0.1, prop_oneof![Just(3_600_000u64), Just(86_400_000)]),
    )
        .prop_map(
            |(
                name,
                priority,
                countdown_ms,
                expires_in_ms,
                max_retries,
                idempotency_key,
                rate,
                concurrency,
                legacy_key,
                result_ttl_ms,
            )| Op::Submit {
                name,
                priority,
                countdown_ms,
                expires_in_ms,
                max_retries,
                idempotency_key,
                rate,
                concurrency,
                legacy_key,
                result_ttl_ms,
            },
        );
    prop_oneof![
        4 => submit,
        4 => (0..SESSIONS.len(), 0..NAMES.len(), 1usize..4, prop_oneof![Just(300i64), Just(5000)])
            .prop_map(|(session, name, max, ttl_ms)| Op::Lease { session, name, max, ttl_ms }),
        1 => (0..SESSIONS.len(), prop_oneof![Just(300i64), Just(5000)])
            .prop_map(|(session, ttl_ms)| Op::Heartbeat { session, ttl_ms }),
        1 => (0..SESSIONS.len(), 0usize..4).prop_map(|(session, pick)| Op::Start { session, pick }),
        1 => (0..SESSIONS.len(), 0usize..4).prop_map(|(session, pick)| Op::Progress { session, pick }),
        4 => (0..SESSIONS.len(), 0usize..4, 0u8..3, prop_oneof![Just(0i64), Just(200), Just(2000)], prop::bool::weighted(0.1))
            .prop_map(|(session, pick, kind, delay_ms, stale)| Op::Complete { session, pick, kind, delay_ms, stale }),
        1 => (0usize..6).prop_map(Op::Cancel),
        1 => (0usize..6).prop_map(Op::Replay),
        1 => (0usize..6).prop_map(Op::Forget),
        1 => (0..SESSIONS.len()).prop_map(Op::Release),
        1 => Just(Op::Reap),
        2 => Just(Op::Promote),
        1 => any::<bool>().prop_map(Op::Pause),
        3 => prop_oneof![Just(1i64), Just(100), Just(400), Just(1000), Just(3000)].prop_map(Op::Advance),
        1 => (0u8..2, prop_oneof![Just(0i64), Just(500)]).prop_map(|(id, in_ms)| Op::CreateSchedule { id, in_ms }),
        1 => (0u8..2, prop::bool::weighted(0.2), prop_oneof![Just(0i64), Just(1000)])
            .prop_map(|(id, stale, ttl_ms)| Op::ClaimRun { id, stale, ttl_ms }),
        1 => (0u8..2).prop_map(|id| Op::SettleRun { id }),
        1 => (0u8..2, any::<bool>()).prop_map(|(id, paused)| Op::PauseSchedule { id, paused }),
        1 => Just(Op::DueSchedules),
        2 => workflow(),
        1 => (0usize..4).prop_map(Op::CancelWorkflow),
    ]
}

/// A random DAG of 1 to 6 tasks: each node names earlier nodes as parents.
fn workflow() -> impl Strategy<Value = Op> {
    (
        prop::collection::vec(
            (
                0..NAMES.len(),
                prop::collection::vec(0usize..6, 0..3),
                0u8..3,
            ),
            1..7,
        ),
        any::<bool>(),
    )
        .prop_map(|(nodes, countdown_last)| {
            let nodes = nodes
                .into_iter()
                .enumerate()
                .map(|(index, (name, parents, trigger))| {
                    let mut parents: Vec<usize> = parents
                        .into_iter()
                        .filter(|_| index > 0)
                        .map(|parent| parent % index.max(1))
                        .collect();
                    parents.sort_unstable();
                    parents.dedup();
                    let trigger = if parents.is_empty() { 0 } else { trigger };
                    (name, parents, trigger)
                })
                .collect();
            Op::SubmitWorkflow {
                nodes,
                countdown_last,
            }
        })
}

/// Sequences about workflows: DAGs submitted, their tasks leased and
/// finished (mostly successfully, so that inputs meet), cancelled, expired.
fn workflow_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => workflow(),
        6 => (0..SESSIONS.len(), 0..NAMES.len(), 1usize..5)
            .prop_map(|(session, name, max)| Op::Lease { session, name, max, ttl_ms: 5000 }),
        8 => (0..SESSIONS.len(), 0usize..4, prop_oneof![6 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8)])
            .prop_map(|(session, pick, kind)| Op::Complete { session, pick, kind, delay_ms: 0, stale: false }),
        1 => (0usize..40).prop_map(Op::Cancel),
        1 => (0usize..4).prop_map(Op::CancelWorkflow),
        1 => (0usize..40).prop_map(Op::Replay),
        1 => (0..SESSIONS.len()).prop_map(Op::Release),
        1 => Just(Op::Promote),
        1 => prop_oneof![Just(200i64), Just(1000)].prop_map(Op::Advance),
    ]
}

/// Sequences about concurrency keys alone, long enough for waiting lines,
/// overtakes and reservations to build up: every task needs one to three
/// overlapping keys.
fn contention_op() -> impl Strategy<Value = Op> {
    let submit = (
        0..NAMES.len(),
        prop::sample::subsequence(vec![0usize, 1, 2], 1..=3),
        any::<bool>(),
        prop::option::weighted(0.1, Just(100u64)),
    )
        .prop_map(
            |(name, concurrency, legacy_key, expires_in_ms)| Op::Submit {
                name,
                priority: 0,
                countdown_ms: None,
                expires_in_ms,
                max_retries: 1,
                idempotency_key: None,
                rate: None,
                concurrency,
                legacy_key,
                result_ttl_ms: None,
            },
        );
    prop_oneof![
        5 => submit,
        5 => (0..SESSIONS.len(), 0..NAMES.len(), 1usize..4)
            .prop_map(|(session, name, max)| Op::Lease { session, name, max, ttl_ms: 5000 }),
        5 => (0..SESSIONS.len(), 0usize..4, 0u8..3)
            .prop_map(|(session, pick, kind)| Op::Complete { session, pick, kind, delay_ms: 0, stale: false }),
        1 => (0usize..40).prop_map(Op::Cancel),
        1 => (0..SESSIONS.len()).prop_map(Op::Release),
        1 => Just(Op::Promote),
        1 => prop_oneof![Just(200i64), Just(1000)].prop_map(Op::Advance),
    ]
}

/// What a test can see of a task.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    state: TaskState,
    attempt: u32,
    failures: u32,
    lease_token: u64,
    due_at_ms: Option<i64>,
    outcome: Option<String>,
    progress: bool,
    session: String,
    /// Arguments as a worker would get them (a workflow task's inputs first).
    args: Vec<(Vec<u8>, String)>,
}

fn seen(task: Option<StoredTask>) -> Option<Seen> {
    task.map(|task| Seen {
        state: task.state,
        attempt: task.attempt,
        failures: task.failures,
        lease_token: task.lease_token,
        due_at_ms: (task.state == TaskState::Scheduled).then_some(task.due_at_ms),
        outcome: task
            .outcome
            .and_then(|outcome| outcome.outcome)
            .map(|outcome| format!("{outcome:?}")),
        progress: task.progress.is_some(),
        args: task
            .record
            .args
            .iter()
            .map(|arg| (arg.data.clone(), arg.content_type.clone()))
            .collect(),
        session: if task.state.is_leased() {
            task.session_id
        } else {
            String::new()
        },
    })
}

/// The model of one sequence: the tasks it created and the leases it holds.
struct Run {
    stores: [Arc<dyn Store>; 2],
    now: i64,
    tasks: Vec<TaskId>,
    /// Workflows the sequence submitted (their heads).
    workflows: Vec<TaskId>,
    /// Leases per session, as the stores granted them: (task, token).
    leases: BTreeMap<usize, Vec<(TaskId, u64)>>,
    /// Each task's state after the last step.
    states: BTreeMap<TaskId, Option<TaskState>>,
    /// The run each schedule was last claimed for.
    claims: BTreeMap<u8, i64>,
    /// The next run each schedule was last given (the stores keep it apart
    /// from the record; `due_schedules` reveals it).
    schedule_nexts: BTreeMap<u8, Option<i64>>,
    /// Each store's event stream (WatchEvents' source), in the sequences
    /// that compare events.
    events: Option<[tokio::sync::broadcast::Receiver<Arc<conveyor_store::StoreEvent>>; 2]>,
}

/// What an event says, apart from its time.
fn event_seen(event: &conveyor_store::StoreEvent) -> String {
    format!(
        "{:?} {:?} {} attempt {} {}",
        event.kind, event.task, event.queue_key, event.attempt, event.worker_id
    )
}

fn schedule(id: u8) -> pb::Schedule {
    pb::Schedule {
        id: format!("sched-{id}"),
        task: Some(pb::TaskSpec {
            name: "tick".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Run {
    fn new_task(&self, op: &Op) -> NewTask {
        let Op::Submit {
            name,
            priority,
            countdown_ms,
            expires_in_ms,
            max_retries,
            idempotency_key,
            rate,
            concurrency,
            legacy_key,
            result_ttl_ms,
        } = op
        else {
            unreachable!()
        };
        let ms = |value: u64| prost_types::Duration {
            seconds: (value / 1000) as i64,
            nanos: ((value % 1000) * 1_000_000) as i32,
        };
        let due = self.now + countdown_ms.unwrap_or(0) as i64;
        let options = pb::TaskOptions {
            priority: *priority,
            countdown: countdown_ms.map(ms),
            expires: expires_in_ms
                .map(|after| conveyor_core::time::timestamp_from_ms(due + after as i64)),
            retry: Some(pb::RetryPolicy {
                max_retries: *max_retries,
                backoff_base: Some(ms(100)),
                ..Default::default()
            }),
            rate_limit: rate.map(|rate| RATES[rate].to_string()).unwrap_or_default(),
            concurrency_key: match concurrency.first() {
                Some(&key) if *legacy_key => KEY_LIMITS[key].0.into(),
                _ => String::new(),
            },
            concurrency_limit: match concurrency.first() {
                Some(&key) if *legacy_key => KEY_LIMITS[key].1,
                _ => 0,
            },
            concurrency_keys: concurrency
                .iter()
                .skip(usize::from(*legacy_key))
                .map(|&key| pb::ConcurrencyKey {
                    key: KEY_LIMITS[key].0.into(),
                    limit: KEY_LIMITS[key].1,
                })
                .collect(),
            result_ttl: result_ttl_ms.map(ms),
            ..Default::default()
        };
        let spec = pb::TaskSpec {
            name: NAMES[*name].to_string(),
            args: vec![pb::Payload {
                data: b"1".to_vec(),
                content_type: String::new(),
            }],
            options: Some(options),
            idempotency_key: idempotency_key
                .map(|key| format!("key-{key}"))
                .unwrap_or_default(),
            ..Default::default()
        };
        let mut task =
            validate_spec(spec, "task", &Limits::default(), self.now, 0).expect("valid spec");
        self.stores[0].place(std::slice::from_mut(&mut task));
        task
    }

    /// The next run of schedule `id` as this model last set it.
    fn schedule_next(&self, id: u8) -> Option<i64> {
        self.schedule_nexts.get(&id).copied().flatten()
    }

    fn pick(&self, session: usize, pick: usize) -> Option<(TaskId, u64)> {
        let held = self.leases.get(&session)?;
        (!held.is_empty()).then(|| held[pick % held.len()])
    }

    fn task(&self, index: usize) -> Option<TaskId> {
        (!self.tasks.is_empty()).then(|| self.tasks[index % self.tasks.len()])
    }

    /// Runs `op` on both stores; the results, normalized, must be equal.
    async fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let now = self.now;
        let results = match op {
            Op::Submit { .. } => {
                let task = self.new_task(op);
                let mut out = Vec::new();
                for store in &self.stores {
                    let acks = store.enqueue(vec![task.clone()], now).await.map_err(fail)?;
                    out.push(format!("{acks:?}"));
                }
                if !self.tasks.contains(&task.id) {
                    self.tasks.push(task.id);
                }
                out
            }
            Op::Lease {
                session,
                name,
                max,
                ttl_ms,
            } => {
                let request = LeaseRequest {
                    session_id: SESSIONS[*session].into(),
                    worker_id: "w".into(),
                    queue_keys: vec![QueueKey::new("default", NAMES[*name])],
                    max: *max,
                    lease_deadline_ms: now + ttl_ms,
                    now_ms: now,
                };
                let mut out = Vec::new();
                let mut granted = Vec::new();
                for store in &self.stores {
                    let leased = store.lease(request.clone()).await.map_err(fail)?;
                    granted = leased
                        .iter()
                        .map(|task| (task.id, task.lease_token))
                        .collect();
                    out.push(format!(
                        "{:?}",
                        leased
                            .iter()
                            .map(|task| (task.id, task.attempt, task.failures, task.lease_token))
                            .collect::<Vec<_>>()
                    ));
                }
                self.leases.entry(*session).or_default().extend(granted);
                out
            }
            Op::Heartbeat { session, ttl_ms } => {
                let mut out = Vec::new();
                for store in &self.stores {
                    let alive = store
                        .heartbeat(SESSIONS[*session], now + ttl_ms, now)
                        .await
                        .map_err(fail)?;
                    out.push(format!("{alive}"));
                }
                out
            }
            Op::Start { session, pick } => {
                let Some((id, token)) = self.pick(*session, *pick) else {
                    return Ok(());
                };
                for store in &self.stores {
                    let report = StartReport {
                        id,
                        session_id: SESSIONS[*session].into(),
                        lease_token: token,
                    };
                    store.mark_started(vec![report], now).await.map_err(fail)?;
                }
                Vec::new()
            }
            Op::Progress { session, pick } => {
                let Some((id, token)) = self.pick(*session, *pick) else {
                    return Ok(());
                };
                for store in &self.stores {
                    let report = ProgressReport {
                        id,
                        session_id: SESSIONS[*session].into(),
                        lease_token: token,
                        progress: pb::Progress {
                            state: "HALF".into(),
                            percent: 50.0,
                            ..Default::default()
                        },
                    };
                    store
                        .record_progress(vec![report], now)
                        .await
                        .map_err(fail)?;
                }
                Vec::new()
            }
            Op::Complete {
                session,
                pick,
                kind,
                delay_ms,
                stale,
            } => {
                let Some((id, token)) = self.pick(*session, *pick) else {
                    return Ok(());
                };
                let error = pb::TaskError {
                    r#type: "E".into(),
                    message: "boom".into(),
                    ..Default::default()
                };
                let outcome = match kind {
                    0 => Outcome::Succeeded(pb::Payload {
                        data: b"2".to_vec(),
                        content_type: String::new(),
                    }),
                    1 => Outcome::Failed {
                        error,
                        retry_at_ms: None,
                    },
                    _ => Outcome::Failed {
                        error,
                        retry_at_ms: Some(now + delay_ms),
                    },
                };
                let report = OutcomeReport {
                    id,
                    session_id: SESSIONS[*session].into(),
                    lease_token: if *stale { token + 7 } else { token },
                    outcome,
                };
                let mut out = Vec::new();
                for store in &self.stores {
                    let acks = store
                        .complete(vec![report.clone()], now * 1000)
                        .await
                        .map_err(fail)?;
                    out.push(format!("{acks:?}"));
                }
                if let Some(held) = self.leases.get_mut(session) {
                    held.retain(|(held_id, _)| *held_id != id);
                }
                out
            }
            Op::Cancel(index) | Op::Replay(index) | Op::Forget(index) => {
                let Some(id) = self.task(*index) else {
                    return Ok(());
                };
                let mut out = Vec::new();
                for store in &self.stores {
                    out.push(match op {
                        Op::Cancel(_) => {
                            format!("{:?}", store.cancel(id, now).await.map_err(fail)?)
                        }
                        Op::Replay(_) => {
                            format!("{:?}", store.replay(id, now).await.map_err(fail)?)
                        }
                        _ => format!("{:?}", store.forget(id).await.map_err(fail)?),
                    });
                }
                out
            }
            Op::SubmitWorkflow {
                nodes,
                countdown_last,
            } => {
                let count = nodes.len();
                let spec = pb::WorkflowSpec {
                    nodes: nodes
                        .iter()
                        .enumerate()
                        .map(|(index, (name, parents, trigger))| pb::WorkflowNode {
                            task: Some(pb::TaskSpec {
                                name: NAMES[*name].to_string(),
                                args: vec![pb::Payload {
                                    data: b"1".to_vec(),
                                    content_type: String::new(),
                                }],
                                options: Some(pb::TaskOptions {
                                    countdown: (*countdown_last && index + 1 == count && index > 0)
                                        .then_some(prost_types::Duration {
                                            seconds: 0,
                                            nanos: 400_000_000,
                                        }),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }),
                            parents: parents.iter().map(|parent| *parent as u32).collect(),
                            trigger: match trigger {
                                1 => pb::NodeTrigger::AllDone,
                                2 => pb::NodeTrigger::OnFailure,
                                _ => pb::NodeTrigger::AllSucceeded,
                            } as i32,
                            ..Default::default()
                        })
                        .collect(),
                    outputs: vec![count as u32 - 1],
                    ..Default::default()
                };
                let mut workflow = conveyor_core::workflow::validate_workflow(
                    spec,
                    &Limits::default(),
                    &conveyor_core::TaskDefaults::default(),
                    now,
                )
                .expect("valid workflow");
                self.stores[0].place_workflow(&mut workflow);
                let mut out = Vec::new();
                for store in &self.stores {
                    let ack = store
                        .submit_workflow(workflow.clone(), now)
                        .await
                        .map_err(fail)?;
                    out.push(format!("{ack:?}"));
                }
                self.workflows.push(workflow.id);
                self.tasks
                    .extend(workflow.nodes.iter().map(|node| node.task.id));
                out
            }
            Op::CancelWorkflow(index) => {
                if self.workflows.is_empty() {
                    return Ok(());
                }
                let id = self.workflows[index % self.workflows.len()];
                let mut out = Vec::new();
                for store in &self.stores {
                    out.push(format!(
                        "{:?}",
                        store.cancel_workflow(id, now).await.map_err(fail)?
                    ));
                }
                out
            }
            Op::Release(session) => {
                let mut out = Vec::new();
                for store in &self.stores {
                    let mut ids = store
                        .release_session(SESSIONS[*session], now)
                        .await
                        .map_err(fail)?;
                    ids.sort();
                    out.push(format!("{ids:?}"));
                }
                self.leases.remove(session);
                out
            }
            Op::Reap => {
                let mut out = Vec::new();
                for store in &self.stores {
                    let mut ids = store.reap_expired(now, 100).await.map_err(fail)?;
                    ids.sort();
                    out.push(format!("{ids:?}"));
                }
                out
            }
            Op::Promote => {
                let mut out = Vec::new();
                for store in &self.stores {
                    let promotion = store.promote_due(now, 100).await.map_err(fail)?;
                    out.push(format!("{promotion:?}"));
                }
                out
            }
            Op::Pause(paused) => {
                for store in &self.stores {
                    store
                        .set_queue_paused("default", *paused)
                        .await
                        .map_err(fail)?;
                }
                Vec::new()
            }
            Op::Advance(ms) => {
                self.now += ms;
                Vec::new()
            }
            Op::CreateSchedule { id, in_ms } => {
                let mut out = Vec::new();
                for store in &self.stores {
                    let created = store
                        .create_schedule(schedule(*id), Some(now + in_ms))
                        .await
                        .map_err(fail)?;
                    out.push(format!("{created:?}"));
                }
                if out[0] != "None" {
                    self.schedule_nexts.insert(*id, Some(now + in_ms));
                }
                out
            }
            Op::ClaimRun { id, stale, ttl_ms } => {
                let mut out = Vec::new();
                // The run the replica read as next: the stored one.
                let fire_ms = self.schedule_next(*id);
                for store in &self.stores {
                    let Some(current) =
                        store.get_schedule(&schedule(*id).id).await.map_err(fail)?
                    else {
                        out.push("none".to_string());
                        continue;
                    };
                    let version = current.version - u64::from(*stale);
                    let mut updated = current.clone();
                    updated.runs += 1;
                    let claimed = store
                        .claim_schedule_run(
                            version,
                            fire_ms.unwrap_or(now),
                            updated,
                            fire_ms.map(|fire| fire + 1000),
                            *ttl_ms,
                            now,
                        )
                        .await
                        .map_err(fail)?;
                    out.push(format!("{claimed}"));
                }
                if out[0] == "true" {
                    self.claims.insert(*id, fire_ms.unwrap_or(now));
                    self.schedule_nexts
                        .insert(*id, fire_ms.map(|fire| fire + 1000));
                }
                out
            }
            Op::SettleRun { id } => {
                let Some(fire_ms) = self.claims.get(id).copied() else {
                    return Ok(());
                };
                let run = pb::ScheduleRun {
                    fire_at: Some(conveyor_core::time::timestamp_from_ms(fire_ms)),
                    task_id: "t".into(),
                    triggered: false,
                };
                let mut out = Vec::new();
                for store in &self.stores {
                    let settled = store
                        .settle_schedule_run(&schedule(*id).id, fire_ms, Some(run.clone()))
                        .await
                        .map_err(fail)?;
                    out.push(format!("{settled}"));
                }
                out
            }
            Op::PauseSchedule { id, paused } => {
                let mut out = Vec::new();
                let next = (!paused).then_some(now + 100);
                for store in &self.stores {
                    let put = store
                        .replace_schedule(schedule(*id), next, None)
                        .await
                        .map_err(fail)?;
                    out.push(format!("{put:?}"));
                }
                if out[0] != "NotFound" {
                    self.schedule_nexts.insert(*id, next);
                }
                out
            }
            Op::DueSchedules => {
                let mut out = Vec::new();
                for store in &self.stores {
                    let due = store.due_schedules(now, 10).await.map_err(fail)?;
                    let ids: Vec<(String, u64)> =
                        due.due.iter().map(|s| (s.id.clone(), s.version)).collect();
                    out.push(format!("{ids:?} {:?}", due.unsettled));
                }
                out
            }
        };
        if let [memory, redis] = results.as_slice() {
            prop_assert_eq!(memory, redis, "results of {:?} differ (memory, redis)", op);
        }

        // Every schedule, on both.
        for id in 0..2u8 {
            let name = schedule(id).id;
            let memory = self.stores[0].get_schedule(&name).await.map_err(fail)?;
            let redis = self.stores[1].get_schedule(&name).await.map_err(fail)?;
            prop_assert_eq!(
                memory,
                redis,
                "schedule {} after {:?} (memory, redis)",
                name,
                op
            );
            let memory = self.stores[0].schedule_runs(&name).await.map_err(fail)?;
            let redis = self.stores[1].schedule_runs(&name).await.map_err(fail)?;
            prop_assert_eq!(
                memory,
                redis,
                "runs of {} after {:?} (memory, redis)",
                name,
                op
            );
        }
        // Every workflow's head and counters, on both.
        for id in self.workflows.clone() {
            let view = |workflow: Option<conveyor_store::StoredWorkflow>| {
                workflow.map(|workflow| {
                    (
                        workflow.head.state,
                        workflow.unfinished,
                        workflow.failed,
                        workflow.first_failed,
                        workflow
                            .nodes
                            .iter()
                            .map(|(index, task)| (*index, task.state, task.record.args.len()))
                            .collect::<Vec<_>>(),
                    )
                })
            };
            let memory = view(
                self.stores[0]
                    .get_workflow(id, conveyor_store::WorkflowNodes::All, self.now)
                    .await
                    .map_err(fail)?,
            );
            let redis = view(
                self.stores[1]
                    .get_workflow(id, conveyor_store::WorkflowNodes::All, self.now)
                    .await
                    .map_err(fail)?,
            );
            prop_assert_eq!(
                memory,
                redis,
                "workflow {} after {:?} (memory, redis)",
                id,
                op
            );
        }
        // Every task's state, on both; every change one the lifecycle allows.
        for id in self.tasks.clone() {
            let memory = seen(self.stores[0].get(id, self.now).await.map_err(fail)?);
            let redis = seen(self.stores[1].get(id, self.now).await.map_err(fail)?);
            let state = memory.as_ref().map(|seen| seen.state);
            let before = self.states.insert(id, state).flatten();
            prop_assert!(
                lifecycle::allows(before, state),
                "{:?} took task {} from {:?} to {:?}, which conveyor_core::lifecycle does not allow",
                op,
                id,
                before,
                state
            );
            prop_assert_eq!(memory, redis, "task {} after {:?} (memory, redis)", id, op);
        }
        Ok(())
    }
}

fn fail(error: conveyor_core::ConveyorError) -> TestCaseError {
    TestCaseError::fail(format!("store error: {error}"))
}

fn seed() -> u64 {
    match std::env::var("CONVEYOR_DIFF_SEED").as_deref() {
        Ok("random") => {
            let seed = rand::random::<u64>();
            eprintln!("differential test: CONVEYOR_DIFF_SEED={seed}");
            seed
        }
        Ok(text) => text
            .parse()
            .expect("CONVEYOR_DIFF_SEED: a number or `random`"),
        Err(_) => DEFAULT_SEED,
    }
}

#[test]
fn memory_and_redis_agree_on_random_sequences() {
    let cases: u32 = std::env::var("CONVEYOR_DIFF_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(10_000);
    agree(cases, prop::collection::vec(op(), 1..16));
}

#[test]
fn memory_and_redis_agree_on_workflows() {
    let cases: u32 = std::env::var("CONVEYOR_DIFF_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(10_000)
        / 40;
    agree(cases.max(1), prop::collection::vec(workflow_op(), 10..60));
}

#[test]
fn memory_and_redis_agree_on_concurrency_keys() {
    let cases: u32 = std::env::var("CONVEYOR_DIFF_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(10_000)
        / 10;
    agree(cases.max(1), prop::collection::vec(contention_op(), 10..80));
}

impl Run {
    /// The stores emitted the same events, in the same order, over the
    /// whole sequence (the memory store sends them under its lock; Redis'
    /// arrive over pub/sub, so they are compared once, at the end, rather
    /// than waited for after every step). Shrinking finds the step.
    async fn same_events(&mut self) -> Result<(), TestCaseError> {
        let Some(events) = self.events.as_mut() else {
            return Ok(());
        };
        let mut memory = Vec::new();
        while let Ok(event) = events[0].try_recv() {
            memory.push(event_seen(&event));
        }
        let mut redis = Vec::new();
        while redis.len() < memory.len() {
            match tokio::time::timeout(std::time::Duration::from_secs(2), events[1].recv()).await {
                Ok(Ok(event)) => redis.push(event_seen(&event)),
                _ => break,
            }
        }
        // Anything Redis sent beyond memory's count is a disagreement too.
        tokio::task::yield_now().await;
        while let Ok(event) = events[1].try_recv() {
            redis.push(event_seen(&event));
        }
        prop_assert_eq!(memory, redis, "events differ (memory, redis)");
        Ok(())
    }
}

/// Sequences run so far (every fourth compares events).
static EVENT_SEQUENCES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn agree(cases: u32, sequences: impl Strategy<Value = Vec<Op>>) {
    let Some(url) = test_redis_url() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let config = Config {
        cases,
        rng_seed: RngSeed::Fixed(seed()),
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&sequences, |ops| {
        runtime.block_on(async {
            let mut redis_config = test_redis_config(&url);
            redis_config.clock = StoreClock::Caller;
            // One partition, as memory has: with several, FIFO holds per
            // partition only, a documented difference, not a disagreement.
            redis_config.partitions = 1;
            let redis = RedisStore::connect(redis_config).await.map_err(fail)?;
            let stores: [Arc<dyn Store>; 2] = [Arc::new(MemoryStore::new()), Arc::new(redis)];
            // Every fourth sequence also compares the event streams (with
            // events on, Redis publishes every transition: a cost the other
            // sequences spare, to keep the suite's time).
            let events = if EVENT_SEQUENCES
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .is_multiple_of(4)
            {
                let events = [
                    stores[0].events().subscribe_events(),
                    stores[1].events().subscribe_events(),
                ];
                for store in &stores {
                    store.enable_events().await.map_err(fail)?;
                }
                Some(events)
            } else {
                None
            };
            let mut run = Run {
                events,
                stores,
                now: NOW,
                tasks: Vec::new(),
                workflows: Vec::new(),
                leases: BTreeMap::new(),
                claims: BTreeMap::new(),
                states: BTreeMap::new(),
                schedule_nexts: BTreeMap::new(),
            };
            for op in &ops {
                run.step(op).await?;
            }
            run.same_events().await
        })
    });
    if let Err(error) = result {
        panic!("memory and redis disagree: {error}");
    }
}
