//! The embedded store: one mutex over plain collections. The default of
//! `conveyor dev` and of tests; it passes the same conformance suite as Redis.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use conveyor_api::pb;
use conveyor_api::store_pb::{self, outcome_record};
use conveyor_core::concurrency::{OVERTAKE_LIMIT, WAKE_WINDOW};
use conveyor_core::workflow::{
    Arrival, NewWorkflow, NodeRule, ReadyDelay, dependency_error, inputs,
};
use conveyor_core::{NewTask, Result, StoredTask, TaskId, TaskState};

use crate::Store;
use crate::events::EventHub;
use crate::stream::{EventKind, StoreEvent};
use crate::types::*;

/// In-memory [`Store`].
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    events: EventHub,
}

#[derive(Debug, Default)]
struct Inner {
    tasks: HashMap<TaskId, Entry>,
    queues: HashMap<QueueKey, VecDeque<TaskId>>,
    /// (due ms, id) of SCHEDULED tasks.
    scheduled: BTreeSet<(i64, TaskId)>,
    sessions: HashMap<String, Session>,
    /// Dispatcher replicas: sessions held, record alive until (ms).
    dispatchers: HashMap<String, (u32, i64)>,
    /// Worker sessions per dispatcher replica, and until when.
    worker_lists: HashMap<String, (Vec<u8>, i64)>,
    /// Idempotency key → (task, forget at ms).
    idempotency: HashMap<String, (TaskId, i64)>,
    /// (purge at ms, id) of finished tasks whose result TTL runs.
    purge: BTreeSet<(i64, TaskId)>,
    /// (failed at ms, id): the dead letters.
    dead: BTreeSet<(i64, TaskId)>,
    /// (expires at ms, id) of unstarted tasks with an expiry.
    expiring: BTreeSet<(i64, TaskId)>,
    /// Schedules by id, with their next run (absent: paused or finished).
    schedules: std::collections::BTreeMap<String, (conveyor_api::pb::Schedule, Option<i64>)>,
    /// Claimed, unsettled schedule runs: (id, fire ms) → settle deadline.
    schedule_claims: std::collections::BTreeMap<(String, i64), i64>,
    /// Recent runs per schedule, newest first.
    schedule_runs: HashMap<String, VecDeque<conveyor_api::pb::ScheduleRun>>,
    /// Rate limit buckets: theoretical arrival time (GCRA), ms.
    rate_tat: HashMap<String, f64>,
    /// Concurrency keys in use: holders, waiting line, reservation.
    keys: HashMap<String, KeyState>,
    /// The last park sequence number given out.
    park_seq: u64,
    /// Paused queues.
    paused: HashSet<String>,
    /// Queue keys that got work back from a freed permit; notified after
    /// the lock is released.
    ready: Vec<QueueKey>,
    /// Where task events go (see [`crate::stream`]).
    hub: Option<EventHub>,
    /// Workflows by id (their heads are entries of `tasks`).
    workflows: HashMap<TaskId, Flow>,
    /// Tasks a workflow step changed besides the one operated on; notified
    /// after the lock is released.
    touched: Vec<TaskId>,
}

/// A workflow's head counters (the memory twin of the Redis head hash).
#[derive(Debug)]
struct Flow {
    graph: store_pb::WorkflowRecord,
    nodes: Vec<TaskId>,
    unfinished: u32,
    failed: u32,
    cancelled: u32,
    first_failed: Option<TaskId>,
    cancelling: bool,
}

/// A workflow node's links (the memory twin of the `w*` hash fields).
#[derive(Debug)]
struct Node {
    workflow: TaskId,
    children: Vec<(TaskId, u32)>,
    /// Parents not finished, while WAITING.
    left: u32,
    rule: NodeRule,
    ready_delay: Option<ReadyDelay>,
    /// Inputs so far, by parent position.
    arrivals: BTreeMap<u32, Arrival>,
    /// For a node that did not run: the parent that settled it and the
    /// root cause.
    cause: Option<(TaskId, String)>,
}

/// One concurrency key (see [`conveyor_core::concurrency`]).
#[derive(Debug, Default)]
struct KeyState {
    /// Tasks holding a permit.
    holders: HashSet<TaskId>,
    /// Parked tasks by park sequence, oldest first.
    line: BTreeMap<u64, TaskId>,
    /// The older waiter one permit is held back for, with its sequence.
    reserved: Option<(TaskId, u64)>,
    /// Younger tasks admitted while the line's head waited.
    overtakes: u32,
}

impl KeyState {
    fn is_idle(&self) -> bool {
        self.holders.is_empty() && self.line.is_empty() && self.reserved.is_none()
    }
}

#[derive(Debug)]
struct Session {
    deadline_ms: i64,
    leases: HashSet<TaskId>,
}

#[derive(Debug)]
struct Entry {
    task: StoredTask,
    queue_key: QueueKey,
    expires_at_ms: i64,
    result_ttl_ms: i64,
    /// Rate bucket and ms between starts.
    rate_limit: Option<(String, f64)>,
    /// The slot a rate-parked task reserved.
    reserved_slot: Option<i64>,
    /// Concurrency keys and limits.
    concurrency: Vec<(String, u32)>,
    /// Place in the waiting lines, given when the task first parks.
    park_seq: Option<u64>,
    /// Workflow links of a node.
    node: Option<Node>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        let events = EventHub::default();
        let inner = Inner {
            hub: Some(events.clone()),
            ..Inner::default()
        };
        Self {
            inner: Mutex::new(inner),
            events,
        }
    }
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

impl Inner {
    /// Emits a task event, if anybody watches: under the lock, so a task's
    /// events are in order.
    fn emit(&self, kind: EventKind, id: TaskId, now_ms: f64) {
        let Some(hub) = self.hub.as_ref().filter(|hub| hub.wants_events()) else {
            return;
        };
        let Some(entry) = self.tasks.get(&id) else {
            return;
        };
        hub.emit(StoreEvent {
            kind,
            at_ms: now_ms,
            task: Some(id),
            queue_key: entry.queue_key.as_str().to_string(),
            attempt: entry.task.attempt,
            worker_id: if kind == EventKind::Leased {
                entry.task.worker_id.clone()
            } else {
                String::new()
            },
            session_id: String::new(),
            active: 0,
            slots: 0,
        });
    }

    /// Rate and concurrency admission of a popped QUEUED task; mirrors the
    /// Redis lease script.
    fn admit(&mut self, id: TaskId, now_ms: i64, changed: &mut Vec<TaskId>) -> bool {
        let Some(entry) = self.tasks.get_mut(&id) else {
            return false;
        };
        if let Some((bucket, interval)) = entry.rate_limit.clone() {
            if entry.reserved_slot.is_none_or(|slot| slot > now_ms) {
                let tat = self
                    .rate_tat
                    .get(&bucket)
                    .copied()
                    .unwrap_or(0.0)
                    .max(now_ms as f64);
                self.rate_tat.insert(bucket, tat + interval);
                if tat > now_ms as f64 {
                    let slot = tat.ceil() as i64;
                    entry.task.state = TaskState::Scheduled;
                    entry.task.due_at_ms = slot;
                    entry.task.updated_at_ms = now_ms;
                    entry.reserved_slot = Some(slot);
                    self.scheduled.insert((slot, id));
                    changed.push(id);
                    return false;
                }
            }
            entry.reserved_slot = None;
        }
        if entry.concurrency.is_empty() {
            return true;
        }
        if !self.fits(id, &HashMap::new()) {
            self.park(id);
            return false;
        }
        let Some(entry) = self.tasks.get(&id) else {
            return false;
        };
        let seq = entry.park_seq.unwrap_or(u64::MAX);
        for (key, _) in entry.concurrency.clone() {
            let state = self.keys.entry(key).or_default();
            state.holders.insert(id);
            if state.reserved.is_some_and(|(reserved, _)| reserved == id) {
                state.reserved = None;
                state.overtakes = 0;
            } else if let Some((&head_seq, &head)) = state.line.first_key_value()
                && head_seq < seq
            {
                state.overtakes += 1;
                if state.overtakes >= OVERTAKE_LIMIT && state.reserved.is_none() {
                    state.reserved = Some((head, head_seq));
                }
            }
        }
        true
    }

    /// Whether `id` would get every permit it needs now; `promised` counts
    /// permits promised to tasks woken earlier in the same scan.
    fn fits(&self, id: TaskId, promised: &HashMap<String, usize>) -> bool {
        let Some(entry) = self.tasks.get(&id) else {
            return false;
        };
        let seq = entry.park_seq.unwrap_or(u64::MAX);
        entry.concurrency.iter().all(|(key, limit)| {
            let mut used = promised.get(key).copied().unwrap_or(0);
            if let Some(state) = self.keys.get(key) {
                if state.holders.contains(&id) {
                    return true;
                }
                used += state.holders.len();
                if state
                    .reserved
                    .is_some_and(|(reserved, reserved_seq)| reserved != id && reserved_seq < seq)
                {
                    used += 1;
                }
            }
            used < *limit as usize
        })
    }

    /// Puts a task that cannot be admitted in the line of each of its keys,
    /// then wakes whoever its keys have room for (it may have been woken for
    /// a permit that someone else took; others in a line may fit).
    fn park(&mut self, id: TaskId) {
        let next = self.park_seq + 1;
        let Some(entry) = self.tasks.get_mut(&id) else {
            return;
        };
        let seq = *entry.park_seq.get_or_insert(next);
        if seq == next {
            self.park_seq = next;
        }
        let keys = entry.concurrency.clone();
        for (key, _) in &keys {
            self.keys
                .entry(key.clone())
                .or_default()
                .line
                .insert(seq, id);
        }
        for (key, limit) in &keys {
            self.wake(key, *limit);
        }
    }

    /// Takes a parked task out of every line it is in.
    fn leave_lines(&mut self, id: TaskId) {
        let Some(entry) = self.tasks.get(&id) else {
            return;
        };
        let Some(seq) = entry.park_seq else {
            return;
        };
        for (key, _) in &entry.concurrency {
            if let Some(state) = self.keys.get_mut(key)
                && state.line.remove(&seq).is_some()
                && state.line.is_empty()
            {
                state.overtakes = 0;
                if state.is_idle() {
                    self.keys.remove(key);
                }
            }
        }
    }

    /// A key gained room: the tasks of its line (the first
    /// [`WAKE_WINDOW`], oldest first) that would be admitted now go back to
    /// the head of their queues, as many as `limit` leaves room for.
    fn wake(&mut self, key: &str, limit: u32) {
        let Some(state) = self.keys.get(key) else {
            return;
        };
        let mut room = (limit as usize).saturating_sub(state.holders.len());
        if room == 0 {
            return;
        }
        let line: Vec<TaskId> = state.line.values().take(WAKE_WINDOW).copied().collect();
        let mut promised: HashMap<String, usize> = HashMap::new();
        let mut woken = Vec::new();
        for id in line {
            if !self.fits(id, &promised) {
                continue;
            }
            for (key, _) in &self.tasks[&id].concurrency {
                *promised.entry(key.clone()).or_default() += 1;
            }
            self.leave_lines(id);
            woken.push(id);
            room -= 1;
            if room == 0 {
                break;
            }
        }
        // The oldest ends up first.
        for id in woken.into_iter().rev() {
            let queue_key = self.tasks[&id].queue_key.clone();
            self.queues
                .entry(queue_key.clone())
                .or_default()
                .push_front(id);
            self.ready.push(queue_key);
        }
    }

    /// Gives back every permit the task holds, then wakes the keys' lines.
    fn free_permits(&mut self, id: TaskId) {
        let Some(entry) = self.tasks.get(&id) else {
            return;
        };
        let keys = entry.concurrency.clone();
        let mut freed = Vec::new();
        for (key, limit) in keys {
            if let Some(state) = self.keys.get_mut(&key)
                && state.holders.remove(&id)
            {
                if state.is_idle() {
                    self.keys.remove(&key);
                }
                freed.push((key, limit));
            }
        }
        for (key, limit) in freed {
            self.wake(&key, limit);
        }
    }

    /// Drops the permits held back for a task that will not run now.
    fn drop_reservations(&mut self, id: TaskId) {
        let Some(entry) = self.tasks.get(&id) else {
            return;
        };
        for (key, limit) in entry.concurrency.clone() {
            if let Some(state) = self.keys.get_mut(&key)
                && state.reserved.is_some_and(|(reserved, _)| reserved == id)
            {
                state.reserved = None;
                state.overtakes = 0;
                if state.is_idle() {
                    self.keys.remove(&key);
                }
                self.wake(&key, limit);
            }
        }
    }

    /// Takes a QUEUED task out of its queue or out of the lines it is
    /// parked in.
    fn unqueue(&mut self, id: TaskId) {
        let Some(entry) = self.tasks.get(&id) else {
            return;
        };
        let key = entry.queue_key.clone();
        let queued = self.queues.get_mut(&key).and_then(|queue| {
            let position = queue.iter().position(|queued| *queued == id)?;
            queue.remove(position)
        });
        if queued.is_none() {
            self.leave_lines(id);
        }
    }

    fn finish(&mut self, id: TaskId, state: TaskState, now_ms: i64) {
        self.finish_at_us(id, state, now_ms * 1000);
    }

    /// [`Inner::finish`] at a µs-precise instant (a reported outcome), then
    /// the workflow steps it causes.
    fn finish_at_us(&mut self, id: TaskId, state: TaskState, now_us: i64) {
        self.finish_task_at_us(id, state, now_us);
        if self
            .tasks
            .get(&id)
            .is_some_and(|entry| entry.node.is_some())
        {
            self.wf_after(id, state, now_us.div_euclid(1000));
        }
    }

    /// A task reaches a final state, without workflow steps.
    fn finish_task_at_us(&mut self, id: TaskId, state: TaskState, now_us: i64) {
        let now_ms = now_us.div_euclid(1000);
        self.free_permits(id);
        self.drop_reservations(id);
        if let Some(entry) = self.tasks.get_mut(&id) {
            entry.task.state = state;
            entry.task.updated_at_ms = now_ms;
            entry.task.finished_at_ms = now_ms;
            entry.task.finished_at_us = now_us;
            self.purge.insert((now_ms + entry.result_ttl_ms, id));
            let kind = match state {
                TaskState::Succeeded => EventKind::Succeeded,
                TaskState::Failed => EventKind::Failed,
                TaskState::Cancelled => EventKind::Cancelled,
                _ => EventKind::Expired,
            };
            self.emit(kind, id, now_us as f64 / 1000.0);
        }
    }

    /// Takes an unfinished task out of wherever it waits or runs, before it
    /// is cancelled: its queue, the schedule, or its session (returned, to
    /// be told). `Err` with the state of a finished task.
    fn take_unfinished(&mut self, id: TaskId) -> std::result::Result<Option<String>, TaskState> {
        let Some(entry) = self.tasks.get(&id) else {
            return Ok(None);
        };
        let (state, due) = (entry.task.state, entry.task.due_at_ms);
        match state {
            TaskState::Queued => self.unqueue(id),
            TaskState::Scheduled => {
                self.scheduled.remove(&(due, id));
            }
            TaskState::Leased | TaskState::Running => {
                let session_id = entry.task.session_id.clone();
                if let Some(session) = self.sessions.get_mut(&session_id) {
                    session.leases.remove(&id);
                }
                return Ok(Some(session_id));
            }
            TaskState::Waiting => {}
            other => return Err(other),
        }
        Ok(None)
    }

    /// A WAITING node whose inputs are complete goes to its queue (or
    /// SCHEDULED for its delay); cancelled instead while its workflow is.
    /// Mirrors `wf_ready` in common.lua.
    fn wf_ready(
        &mut self,
        id: TaskId,
        now_ms: i64,
        cancelling: bool,
        work: &mut VecDeque<(TaskId, TaskState)>,
    ) {
        if cancelling {
            self.finish_task_at_us(id, TaskState::Cancelled, now_ms * 1000);
            work.push_back((id, TaskState::Cancelled));
            return;
        }
        let Some(entry) = self.tasks.get_mut(&id) else {
            return;
        };
        let Some(node) = entry.node.as_mut() else {
            return;
        };
        let arrivals: Vec<Arrival> = std::mem::take(&mut node.arrivals).into_values().collect();
        let mut args = inputs(node.rule, &arrivals);
        if !args.is_empty() {
            args.append(&mut entry.task.record.args);
            entry.task.record.args = args;
        }
        let due = node.ready_delay.map_or(now_ms, |delay| delay.due(now_ms));
        entry.task.updated_at_ms = now_ms;
        if due > now_ms {
            entry.task.state = TaskState::Scheduled;
            entry.task.due_at_ms = due;
            self.scheduled.insert((due, id));
        } else {
            entry.task.state = TaskState::Queued;
            let key = entry.queue_key.clone();
            self.queues.entry(key.clone()).or_default().push_back(id);
            self.ready.push(key);
        }
        self.touched.push(id);
        self.emit(EventKind::Ready, id, now_ms as f64);
    }

    /// What a finished node leaves its children.
    fn arrival_of(&self, id: TaskId, state: TaskState) -> Arrival {
        let entry = self.tasks.get(&id);
        Arrival {
            task_id: id.to_string(),
            state,
            // A node that did not run has no outcome of its own at rest.
            outcome: entry
                .filter(|entry| entry.node.as_ref().is_none_or(|node| node.cause.is_none()))
                .and_then(|entry| entry.task.outcome.clone()),
        }
    }

    /// Node `id` finished in `state`: settles its children, and theirs
    /// when they cannot run, then the head's counters. Mirrors `wf_after`
    /// in common.lua.
    fn wf_after(&mut self, id: TaskId, state: TaskState, now_ms: i64) {
        let Some(workflow) = self
            .tasks
            .get(&id)
            .and_then(|entry| entry.node.as_ref())
            .map(|node| node.workflow)
        else {
            return;
        };
        let cancelling = self
            .workflows
            .get(&workflow)
            .is_some_and(|flow| flow.cancelling);
        let mut work = VecDeque::from([(id, state)]);
        let (mut finished, mut failed, mut cancelled, mut first_failed) = (0u32, 0u32, 0u32, None);
        while let Some((parent, parent_state)) = work.pop_front() {
            finished += 1;
            let bad = matches!(parent_state, TaskState::Failed | TaskState::Expired);
            if parent_state == TaskState::Failed {
                failed += 1;
            }
            if bad {
                first_failed.get_or_insert(parent);
            }
            // A link_error callback that was not needed (Waiting in the
            // work list) is CANCELLED but not counted.
            let parent_state = match parent_state {
                TaskState::Cancelled => {
                    cancelled += 1;
                    TaskState::Cancelled
                }
                TaskState::Waiting => TaskState::Cancelled,
                other => other,
            };
            let Some((children, root)) = self.tasks.get(&parent).and_then(|entry| {
                let node = entry.node.as_ref()?;
                Some((
                    node.children.clone(),
                    node.cause.as_ref().map(|(_, root)| root.clone()),
                ))
            }) else {
                continue;
            };
            let arrival = self.arrival_of(parent, parent_state);
            let root_text = root.clone().unwrap_or_else(|| parent.to_string());
            for (child, position) in children {
                let Some((left, trigger)) = self
                    .tasks
                    .get(&child)
                    .filter(|entry| entry.task.state == TaskState::Waiting)
                    .and_then(|entry| entry.node.as_ref())
                    .map(|node| (node.left, node.rule.trigger))
                else {
                    continue;
                };
                fn node(inner: &mut Inner, child: TaskId) -> Option<&mut Node> {
                    inner
                        .tasks
                        .get_mut(&child)
                        .and_then(|entry| entry.node.as_mut())
                }
                if trigger == pb::NodeTrigger::OnFailure {
                    if bad {
                        let fired = match &root {
                            Some(root_id) => match TaskId::parse(root_id, "root") {
                                Ok(root_id) => {
                                    let root_state = self
                                        .tasks
                                        .get(&root_id)
                                        .map_or(TaskState::Failed, |entry| entry.task.state);
                                    self.arrival_of(root_id, root_state)
                                }
                                Err(_) => arrival.clone(),
                            },
                            None => arrival.clone(),
                        };
                        if let Some(node) = node(self, child) {
                            node.arrivals = BTreeMap::from([(0, fired)]);
                        }
                        self.wf_ready(child, now_ms, cancelling, &mut work);
                    } else if left <= 1 {
                        self.finish_task_at_us(child, TaskState::Cancelled, now_ms * 1000);
                        work.push_back((child, TaskState::Waiting));
                    } else if let Some(node) = node(self, child) {
                        node.left -= 1;
                    }
                } else if parent_state == TaskState::Succeeded
                    || trigger == pb::NodeTrigger::AllDone
                {
                    if let Some(node) = node(self, child) {
                        node.arrivals.insert(position, arrival.clone());
                        if left > 1 {
                            node.left -= 1;
                            continue;
                        }
                    }
                    self.wf_ready(child, now_ms, cancelling, &mut work);
                } else {
                    let child_state = if bad {
                        TaskState::Failed
                    } else {
                        TaskState::Cancelled
                    };
                    if let Some(entry) = self.tasks.get_mut(&child) {
                        if let Some(node) = entry.node.as_mut() {
                            node.cause = Some((parent, root_text.clone()));
                            node.arrivals.clear();
                        }
                        if child_state == TaskState::Failed {
                            entry.task.outcome = Some(store_pb::OutcomeRecord {
                                outcome: Some(outcome_record::Outcome::Error(dependency_error(
                                    &parent.to_string(),
                                    &root_text,
                                ))),
                            });
                        }
                    }
                    self.finish_task_at_us(child, child_state, now_ms * 1000);
                    work.push_back((child, child_state));
                }
            }
            if let Some(node) = self.tasks.get_mut(&parent).and_then(|e| e.node.as_mut()) {
                node.arrivals.clear();
            }
        }
        let Some(flow) = self.workflows.get_mut(&workflow) else {
            return;
        };
        flow.unfinished = flow.unfinished.saturating_sub(finished);
        flow.failed += failed;
        flow.cancelled += cancelled;
        if flow.first_failed.is_none() {
            flow.first_failed = first_failed;
        }
        self.touched.push(workflow);
        if flow.unfinished > 0 {
            return;
        }
        let head_state = if flow.cancelling {
            TaskState::Cancelled
        } else if flow.failed > 0 {
            TaskState::Failed
        } else if flow.cancelled > 0 {
            TaskState::Cancelled
        } else {
            TaskState::Succeeded
        };
        if let Some(entry) = self.tasks.get_mut(&workflow) {
            entry.task.state = head_state;
            entry.task.updated_at_ms = now_ms;
            entry.task.finished_at_ms = now_ms;
            self.purge.insert((now_ms + entry.result_ttl_ms, workflow));
        }
    }

    /// Requeues the session's leases at the head of their queues.
    fn release(
        &mut self,
        session_id: &str,
        now_ms: i64,
        ready: &mut HashSet<QueueKey>,
    ) -> Vec<TaskId> {
        let Some(session) = self.sessions.remove(session_id) else {
            return Vec::new();
        };
        let mut requeued = Vec::new();
        // Newest first to the head: the head is back in submission order
        // (ids are UUIDv7).
        let mut leases: Vec<TaskId> = session.leases.into_iter().collect();
        leases.sort_unstable_by(|left, right| right.cmp(left));
        for id in leases {
            let Some(entry) = self.tasks.get_mut(&id) else {
                continue;
            };
            if !entry.task.state.is_leased() || entry.task.session_id != session_id {
                continue;
            }
            self.free_permits(id);
            let Some(entry) = self.tasks.get_mut(&id) else {
                continue;
            };
            entry.task.state = TaskState::Queued;
            entry.task.updated_at_ms = now_ms;
            self.queues
                .entry(entry.queue_key.clone())
                .or_default()
                .push_front(id);
            ready.insert(entry.queue_key.clone());
            requeued.push(id);
            self.emit(EventKind::Requeued, id, now_ms as f64);
        }
        requeued
    }

    fn purge_expired(&mut self, now_ms: i64) {
        while let Some(&(at, id)) = self.purge.first() {
            if at > now_ms {
                break;
            }
            self.purge.pop_first();
            // A dead letter goes with its task.
            self.workflows.remove(&id);
            if let Some(entry) = self.tasks.remove(&id)
                && entry.task.state == TaskState::Failed
            {
                self.dead.retain(|(_, dead)| *dead != id);
            }
        }
        self.idempotency
            .retain(|_, (_, forget_at)| *forget_at > now_ms);
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn partitions(&self) -> u16 {
        1
    }

    fn events(&self) -> &EventHub {
        &self.events
    }

    async fn enqueue(&self, tasks: Vec<NewTask>, now_ms: i64) -> Result<Vec<EnqueueAck>> {
        let mut acks = Vec::with_capacity(tasks.len());
        let mut ready = HashSet::new();
        {
            let mut inner = self.lock();
            for task in tasks {
                if let Some(key) = &task.idempotency_key {
                    if let Some((existing, forget_at)) = inner.idempotency.get(key).copied()
                        && forget_at > now_ms
                    {
                        let state = inner.tasks.get(&existing).map(|entry| entry.task.state);
                        acks.push(EnqueueAck {
                            id: existing,
                            state,
                            duplicate: true,
                        });
                        continue;
                    }
                    inner
                        .idempotency
                        .insert(key.clone(), (task.id, now_ms + task.idempotency_ttl_ms));
                }
                let state = if task.is_delayed() {
                    TaskState::Scheduled
                } else {
                    TaskState::Queued
                };
                let priority = task
                    .record
                    .options
                    .as_ref()
                    .map_or(0, |options| options.priority);
                let queue_key = QueueKey::new(&task.queue, &task.record.name).at_priority(priority);
                let id = task.id;
                if state == TaskState::Scheduled {
                    inner.scheduled.insert((task.due_at_ms, id));
                } else {
                    inner
                        .queues
                        .entry(queue_key.clone())
                        .or_default()
                        .push_back(id);
                    ready.insert(queue_key.clone());
                }
                if task.expires_at_ms > 0 {
                    inner.expiring.insert((task.expires_at_ms, id));
                }
                let stored = StoredTask {
                    id,
                    record: task.record,
                    state,
                    attempt: 0,
                    failures: 0,
                    lease_token: 0,
                    session_id: String::new(),
                    worker_id: String::new(),
                    queue: task.queue,
                    updated_at_ms: now_ms,
                    due_at_ms: task.due_at_ms,
                    finished_at_ms: 0,
                    finished_at_us: 0,
                    outcome: None,
                    progress: None,
                    node_of: None,
                    is_workflow: false,
                };
                inner.tasks.insert(
                    id,
                    Entry {
                        task: stored,
                        queue_key,
                        expires_at_ms: task.expires_at_ms,
                        result_ttl_ms: task.result_ttl_ms,
                        rate_limit: task.rate_limit.clone(),
                        reserved_slot: None,
                        concurrency: task.concurrency.clone(),
                        park_seq: None,
                        node: None,
                    },
                );
                inner.emit(EventKind::Submitted, id, now_ms as f64);
                acks.push(EnqueueAck {
                    id,
                    state: Some(state),
                    duplicate: false,
                });
            }
        }
        for key in &ready {
            self.events.queue_ready(&key.base());
        }
        Ok(acks)
    }

    async fn submit_workflow(&self, workflow: NewWorkflow, now_ms: i64) -> Result<WorkflowAck> {
        {
            let mut inner = self.lock();
            if let Some(key) = &workflow.idempotency_key {
                if let Some((existing, forget_at)) = inner.idempotency.get(key).copied()
                    && forget_at > now_ms
                {
                    let task_ids = inner
                        .workflows
                        .get(&existing)
                        .map(|flow| flow.nodes.clone())
                        .unwrap_or_default();
                    return Ok(WorkflowAck {
                        id: existing,
                        task_ids,
                        duplicate: true,
                    });
                }
                inner.idempotency.insert(
                    key.clone(),
                    (workflow.id, now_ms + workflow.idempotency_ttl_ms),
                );
            }
            let ids: Vec<TaskId> = workflow.nodes.iter().map(|node| node.task.id).collect();
            for (index, node) in workflow.nodes.into_iter().enumerate() {
                let task = node.task;
                let waiting = !node.parents.is_empty();
                let state = if waiting {
                    TaskState::Waiting
                } else if task.is_delayed() {
                    TaskState::Scheduled
                } else {
                    TaskState::Queued
                };
                let priority = task
                    .record
                    .options
                    .as_ref()
                    .map_or(0, |options| options.priority);
                let queue_key = QueueKey::new(&task.queue, &task.record.name).at_priority(priority);
                let id = task.id;
                match state {
                    TaskState::Scheduled => {
                        inner.scheduled.insert((task.due_at_ms, id));
                    }
                    TaskState::Queued => {
                        inner
                            .queues
                            .entry(queue_key.clone())
                            .or_default()
                            .push_back(id);
                        inner.ready.push(queue_key.clone());
                    }
                    _ => {}
                }
                if task.expires_at_ms > 0 {
                    inner.expiring.insert((task.expires_at_ms, id));
                }
                let stored = StoredTask {
                    id,
                    record: task.record,
                    state,
                    attempt: 0,
                    failures: 0,
                    lease_token: 0,
                    session_id: String::new(),
                    worker_id: String::new(),
                    queue: task.queue,
                    updated_at_ms: now_ms,
                    due_at_ms: if waiting { now_ms } else { task.due_at_ms },
                    finished_at_ms: 0,
                    finished_at_us: 0,
                    outcome: None,
                    progress: None,
                    node_of: Some((workflow.id, index as u32)),
                    is_workflow: false,
                };
                inner.tasks.insert(
                    id,
                    Entry {
                        task: stored,
                        queue_key,
                        expires_at_ms: task.expires_at_ms,
                        result_ttl_ms: task.result_ttl_ms,
                        rate_limit: task.rate_limit.clone(),
                        reserved_slot: None,
                        concurrency: task.concurrency.clone(),
                        park_seq: None,
                        node: Some(Node {
                            workflow: workflow.id,
                            children: node
                                .children
                                .iter()
                                .map(|(child, position)| (ids[*child as usize], *position))
                                .collect(),
                            left: node.parents.len() as u32,
                            rule: node.rule,
                            ready_delay: node.ready_delay,
                            arrivals: BTreeMap::new(),
                            cause: None,
                        }),
                    },
                );
                inner.emit(EventKind::Submitted, id, now_ms as f64);
            }
            let head = StoredTask {
                id: workflow.id,
                record: workflow.head,
                state: TaskState::Waiting,
                attempt: 0,
                failures: 0,
                lease_token: 0,
                session_id: String::new(),
                worker_id: String::new(),
                queue: String::new(),
                updated_at_ms: now_ms,
                due_at_ms: now_ms,
                finished_at_ms: 0,
                finished_at_us: 0,
                outcome: None,
                progress: None,
                node_of: None,
                is_workflow: true,
            };
            inner.tasks.insert(
                workflow.id,
                Entry {
                    task: head,
                    queue_key: QueueKey::new("", ""),
                    expires_at_ms: 0,
                    result_ttl_ms: workflow.result_ttl_ms,
                    rate_limit: None,
                    reserved_slot: None,
                    concurrency: Vec::new(),
                    park_seq: None,
                    node: None,
                },
            );
            inner.workflows.insert(
                workflow.id,
                Flow {
                    graph: workflow.graph,
                    nodes: ids.clone(),
                    unfinished: ids.len() as u32,
                    failed: 0,
                    cancelled: 0,
                    first_failed: None,
                    cancelling: false,
                },
            );
            drop(inner);
            self.notify_ready();
            return Ok(WorkflowAck {
                id: workflow.id,
                task_ids: ids,
                duplicate: false,
            });
        }
    }

    async fn get_workflow(
        &self,
        id: TaskId,
        nodes: WorkflowNodes,
        now_ms: i64,
    ) -> Result<Option<StoredWorkflow>> {
        let Some(head) = self.get(id, now_ms).await? else {
            return Ok(None);
        };
        let inner = self.lock();
        let Some(flow) = inner.workflows.get(&id) else {
            return Ok(None);
        };
        let wanted: Vec<u32> = match nodes {
            WorkflowNodes::All => (0..flow.nodes.len() as u32).collect(),
            WorkflowNodes::Outputs => flow.graph.outputs.clone(),
        };
        let read = wanted
            .into_iter()
            .filter_map(|index| {
                let entry = inner.tasks.get(flow.nodes.get(index as usize)?)?;
                let purged = entry.task.finished_at_ms > 0
                    && entry.task.finished_at_ms + entry.result_ttl_ms <= now_ms;
                (!purged).then(|| (index, entry.task.clone()))
            })
            .collect();
        let mut graph = flow.graph.clone();
        for (record, id) in graph.nodes.iter_mut().zip(&flow.nodes) {
            record.task_id = id.to_string();
        }
        Ok(Some(StoredWorkflow {
            head,
            graph,
            nodes: read,
            unfinished: flow.unfinished,
            failed: flow.failed,
            first_failed: flow.first_failed.map(|id| id.to_string()),
        }))
    }

    async fn cancel_workflow(&self, id: TaskId, now_ms: i64) -> Result<Option<(u32, TaskState)>> {
        let mut revoked = Vec::new();
        let answer = {
            let mut inner = self.lock();
            let Some(head_state) = inner.tasks.get(&id).map(|entry| entry.task.state) else {
                return Ok(None);
            };
            let Some(flow) = inner.workflows.get_mut(&id) else {
                return Ok(None);
            };
            if head_state != TaskState::Waiting {
                return Ok(Some((0, head_state)));
            }
            flow.cancelling = true;
            let cancelled = flow.unfinished;
            let nodes = flow.nodes.clone();
            for node in nodes {
                let Ok(session) = inner.take_unfinished(node) else {
                    continue;
                };
                if let Some(session) = session {
                    revoked.push((session, node));
                }
                inner.expiring.retain(|(_, expiring)| *expiring != node);
                inner.finish(node, TaskState::Cancelled, now_ms);
                inner.touched.push(node);
            }
            let state = inner
                .tasks
                .get(&id)
                .map_or(TaskState::Cancelled, |entry| entry.task.state);
            (cancelled, state)
        };
        self.notify_ready();
        for (session, node) in revoked {
            self.events.task_revoked(&session, node);
        }
        Ok(Some(answer))
    }

    async fn get(&self, id: TaskId, now_ms: i64) -> Result<Option<StoredTask>> {
        let inner = self.lock();
        let Some(entry) = inner.tasks.get(&id) else {
            return Ok(None);
        };
        let purged = entry.task.finished_at_ms > 0
            && entry.task.finished_at_ms + entry.result_ttl_ms <= now_ms;
        Ok((!purged).then(|| entry.task.clone()))
    }

    async fn lease(&self, request: LeaseRequest) -> Result<Vec<LeasedTask>> {
        let mut leased = Vec::new();
        let mut changed = Vec::new();
        {
            let mut inner = self.lock();
            let open: Vec<QueueKey> = request
                .queue_keys
                .iter()
                .filter(|key| {
                    let queue = key.as_str().split(':').next().unwrap_or_default();
                    !inner.paused.contains(queue)
                })
                .cloned()
                .collect();
            for priority in PRIORITIES_HIGH_FIRST {
                if open.is_empty() {
                    break;
                }
                let keys: Vec<QueueKey> =
                    open.iter().map(|key| key.at_priority(priority)).collect();
                let mut empty_streak = 0;
                let mut index = 0;
                while leased.len() < request.max && empty_streak < keys.len() {
                    let key = &keys[index % keys.len()];
                    index += 1;
                    let Some(id) = inner.queues.get_mut(key).and_then(VecDeque::pop_front) else {
                        empty_streak += 1;
                        continue;
                    };
                    empty_streak = 0;
                    let Some(entry) = inner.tasks.get_mut(&id) else {
                        continue;
                    };
                    if entry.task.state != TaskState::Queued {
                        continue;
                    }
                    changed.push(id);
                    if entry.expires_at_ms > 0 && entry.expires_at_ms <= request.now_ms {
                        inner.finish(id, TaskState::Expired, request.now_ms);
                        continue;
                    }
                    if !inner.admit(id, request.now_ms, &mut changed) {
                        continue;
                    }
                    let Some(entry) = inner.tasks.get_mut(&id) else {
                        continue;
                    };
                    let task = &mut entry.task;
                    task.state = TaskState::Leased;
                    task.attempt += 1;
                    task.lease_token += 1;
                    task.session_id = request.session_id.clone();
                    task.worker_id = request.worker_id.clone();
                    task.updated_at_ms = request.now_ms;
                    task.progress = None;
                    inner.emit(EventKind::Leased, id, request.now_ms as f64);
                    let Some(task) = inner.tasks.get(&id).map(|entry| &entry.task) else {
                        continue;
                    };
                    leased.push(LeasedTask {
                        id,
                        record: task.record.clone(),
                        attempt: task.attempt,
                        failures: task.failures,
                        lease_token: task.lease_token,
                        workflow_id: task.node_of.map(|(workflow, _)| workflow),
                    });
                }
            }
            if !leased.is_empty() {
                let session = inner
                    .sessions
                    .entry(request.session_id.clone())
                    .or_insert_with(|| Session {
                        deadline_ms: request.lease_deadline_ms,
                        leases: HashSet::new(),
                    });
                session.deadline_ms = request.lease_deadline_ms;
                session.leases.extend(leased.iter().map(|task| task.id));
            }
        }
        for id in changed {
            self.events.task_changed(id);
        }
        self.notify_ready();
        Ok(leased)
    }

    async fn mark_started(&self, reports: Vec<StartReport>, now_ms: i64) -> Result<()> {
        let mut changed = Vec::new();
        {
            let mut inner = self.lock();
            for report in reports {
                let Some(entry) = inner.tasks.get_mut(&report.id) else {
                    continue;
                };
                let task = &mut entry.task;
                if task.state == TaskState::Leased
                    && task.lease_token == report.lease_token
                    && task.session_id == report.session_id
                {
                    task.state = TaskState::Running;
                    task.updated_at_ms = now_ms;
                    changed.push(report.id);
                    inner.emit(EventKind::Started, report.id, now_ms as f64);
                }
            }
        }
        for id in changed {
            self.events.task_changed(id);
        }
        Ok(())
    }

    async fn heartbeat(&self, session_id: &str, deadline_ms: i64, _now_ms: i64) -> Result<bool> {
        let mut inner = self.lock();
        Ok(match inner.sessions.get_mut(session_id) {
            Some(session) => {
                session.deadline_ms = deadline_ms;
                true
            }
            None => false,
        })
    }

    async fn complete(&self, reports: Vec<OutcomeReport>, now_us: i64) -> Result<Vec<OutcomeAck>> {
        let mut acks = Vec::with_capacity(reports.len());
        let mut changed = Vec::new();
        {
            let mut inner = self.lock();
            for report in reports {
                let id = report.id;
                let ack = complete_one(&mut inner, report, now_us);
                if matches!(ack, OutcomeAck::Recorded(_)) {
                    changed.push(id);
                }
                acks.push(ack);
            }
        }
        for id in changed {
            self.events.task_changed(id);
        }
        self.notify_ready();
        Ok(acks)
    }

    async fn release_session(&self, session_id: &str, now_ms: i64) -> Result<Vec<TaskId>> {
        let mut ready = HashSet::new();
        let requeued = self.lock().release(session_id, now_ms, &mut ready);
        self.notify(&requeued, &ready);
        Ok(requeued)
    }

    async fn reap_expired(&self, now_ms: i64, limit: usize) -> Result<Vec<TaskId>> {
        let mut ready = HashSet::new();
        let mut requeued = Vec::new();
        {
            let mut inner = self.lock();
            let expired: Vec<String> = inner
                .sessions
                .iter()
                .filter(|(_, session)| session.deadline_ms <= now_ms)
                .map(|(id, _)| id.clone())
                .take(limit)
                .collect();
            for session_id in expired {
                requeued.extend(inner.release(&session_id, now_ms, &mut ready));
            }
        }
        self.notify(&requeued, &ready);
        Ok(requeued)
    }

    async fn promote_due(&self, now_ms: i64, limit: usize) -> Result<Promotion> {
        let mut promotion = Promotion::default();
        let mut ready = HashSet::new();
        let mut changed = Vec::new();
        {
            let mut inner = self.lock();
            inner.purge_expired(now_ms);
            while promotion.promoted + promotion.expired < limit {
                let Some(&(due, id)) = inner.scheduled.first() else {
                    break;
                };
                if due > now_ms {
                    break;
                }
                inner.scheduled.pop_first();
                let Some(entry) = inner.tasks.get_mut(&id) else {
                    continue;
                };
                if entry.task.state != TaskState::Scheduled {
                    continue;
                }
                changed.push(id);
                if entry.expires_at_ms > 0 && entry.expires_at_ms <= now_ms {
                    inner.finish(id, TaskState::Expired, now_ms);
                    promotion.expired += 1;
                    continue;
                }
                entry.task.state = TaskState::Queued;
                entry.task.updated_at_ms = now_ms;
                let key = entry.queue_key.clone();
                inner.queues.entry(key.clone()).or_default().push_back(id);
                ready.insert(key);
                promotion.promoted += 1;
            }
            while let Some(&(expires, id)) = inner.expiring.first() {
                if expires > now_ms {
                    break;
                }
                inner.expiring.pop_first();
                let Some(entry) = inner.tasks.get(&id) else {
                    continue;
                };
                let (state, due) = (entry.task.state, entry.task.due_at_ms);
                match state {
                    TaskState::Queued => inner.unqueue(id),
                    TaskState::Scheduled => {
                        inner.scheduled.remove(&(due, id));
                    }
                    _ => continue,
                }
                inner.finish(id, TaskState::Expired, now_ms);
                changed.push(id);
                promotion.expired += 1;
            }
            promotion.next_due_ms = inner.scheduled.first().map(|(due, _)| *due);
        }
        self.notify(&changed, &ready);
        Ok(promotion)
    }

    async fn cancel(&self, id: TaskId, now_ms: i64) -> Result<CancelAck> {
        let revoked_from;
        let ack = {
            let mut inner = self.lock();
            let Some(entry) = inner.tasks.get(&id) else {
                return Ok(CancelAck::NotFound);
            };
            if entry.task.is_workflow {
                return Ok(CancelAck::IsWorkflow);
            }
            match inner.take_unfinished(id) {
                Err(state) => return Ok(CancelAck::NotCancellable(state)),
                Ok(session) => revoked_from = session,
            }
            inner.finish(id, TaskState::Cancelled, now_ms);
            CancelAck::Cancelled
        };
        self.notify_ready();
        self.events.task_changed(id);
        if let Some(session_id) = revoked_from {
            self.events.task_revoked(&session_id, id);
        }
        Ok(ack)
    }

    async fn record_progress(&self, reports: Vec<ProgressReport>, now_ms: i64) -> Result<()> {
        let mut changed = Vec::new();
        {
            let mut inner = self.lock();
            for report in reports {
                let Some(entry) = inner.tasks.get_mut(&report.id) else {
                    continue;
                };
                let task = &mut entry.task;
                if task.state.is_leased()
                    && task.lease_token == report.lease_token
                    && task.session_id == report.session_id
                {
                    let mut progress = report.progress;
                    progress.reported_at = Some(conveyor_core::time::timestamp_from_ms(now_ms));
                    task.progress = Some(progress);
                    task.updated_at_ms = now_ms;
                    changed.push(report.id);
                    inner.emit(EventKind::Progress, report.id, now_ms as f64);
                }
            }
        }
        for id in changed {
            self.events.task_changed(id);
        }
        Ok(())
    }

    async fn forget(&self, id: TaskId) -> Result<ForgetAck> {
        let ack = {
            let mut inner = self.lock();
            let Some(entry) = inner.tasks.get(&id) else {
                return Ok(ForgetAck::NotFound);
            };
            let task = &entry.task;
            if !task.state.is_terminal() {
                return Ok(ForgetAck::NotFinished(task.state));
            }
            let purge_at = task.finished_at_ms + entry.result_ttl_ms;
            let finished = task.finished_at_ms;
            inner.purge.remove(&(purge_at, id));
            inner.dead.remove(&(finished, id));
            inner.tasks.remove(&id);
            ForgetAck::Forgotten
        };
        self.events.task_changed(id);
        Ok(ack)
    }

    async fn dead_letters(
        &self,
        cursor: DeadLetterCursor,
        limit: usize,
    ) -> Result<(Vec<StoredTask>, Option<DeadLetterCursor>)> {
        let inner = self.lock();
        let mut tasks = Vec::new();
        let entries = (cursor.offset..).zip(inner.dead.iter().skip(cursor.offset as usize));
        for (offset, (_, id)) in entries {
            if tasks.len() >= limit {
                return Ok((
                    tasks,
                    Some(DeadLetterCursor {
                        partition: 0,
                        offset,
                    }),
                ));
            }
            if let Some(entry) = inner.tasks.get(id) {
                tasks.push(entry.task.clone());
            }
        }
        Ok((tasks, None))
    }

    async fn replay(&self, id: TaskId, now_ms: i64) -> Result<ReplayAck> {
        let key = {
            let mut inner = self.lock();
            let Some(entry) = inner.tasks.get_mut(&id) else {
                return Ok(ReplayAck::NotFound);
            };
            if entry.task.state != TaskState::Failed {
                return Ok(ReplayAck::NotFailed(entry.task.state));
            }
            if entry.node.is_some() {
                return Ok(ReplayAck::WorkflowNode);
            }
            let finished = entry.task.finished_at_ms;
            let purge_at = finished + entry.result_ttl_ms;
            entry.task.state = TaskState::Queued;
            entry.task.failures = 0;
            entry.task.finished_at_ms = 0;
            entry.task.finished_at_us = 0;
            entry.task.updated_at_ms = now_ms;
            let key = entry.queue_key.clone();
            inner.purge.remove(&(purge_at, id));
            inner.dead.remove(&(finished, id));
            inner.queues.entry(key.clone()).or_default().push_back(id);
            inner.emit(EventKind::Requeued, id, now_ms as f64);
            key
        };
        self.events.task_changed(id);
        self.events.queue_ready(&key.base());
        Ok(ReplayAck::Replayed)
    }

    async fn set_queue_paused(&self, queue: &str, paused: bool) -> Result<()> {
        {
            let mut inner = self.lock();
            if paused {
                inner.paused.insert(queue.to_string());
            } else {
                inner.paused.remove(queue);
            }
        }
        if !paused {
            self.events.wake_all();
        }
        Ok(())
    }

    async fn create_schedule(
        &self,
        mut schedule: pb::Schedule,
        next_ms: Option<i64>,
    ) -> Result<Option<u64>> {
        let mut inner = self.lock();
        if inner.schedules.contains_key(&schedule.id) {
            return Ok(None);
        }
        schedule.version = 1;
        inner
            .schedules
            .insert(schedule.id.clone(), (schedule, next_ms));
        Ok(Some(1))
    }

    async fn replace_schedule(
        &self,
        mut schedule: pb::Schedule,
        next_ms: Option<i64>,
        expected_version: Option<u64>,
    ) -> Result<SchedulePut> {
        let mut inner = self.lock();
        let Some(entry) = inner.schedules.get_mut(&schedule.id) else {
            return Ok(SchedulePut::NotFound);
        };
        let version = entry.0.version;
        if expected_version.is_some_and(|expected| expected != version) {
            return Ok(SchedulePut::Conflict);
        }
        schedule.version = version + 1;
        *entry = (schedule, next_ms);
        Ok(SchedulePut::Stored(version + 1))
    }

    async fn get_schedule(&self, id: &str) -> Result<Option<pb::Schedule>> {
        Ok(self
            .lock()
            .schedules
            .get(id)
            .map(|(schedule, _)| schedule.clone()))
    }

    async fn list_schedules(&self) -> Result<Vec<pb::Schedule>> {
        Ok(self
            .lock()
            .schedules
            .values()
            .map(|(schedule, _)| schedule.clone())
            .collect())
    }

    async fn delete_schedule(&self, id: &str) -> Result<bool> {
        let mut inner = self.lock();
        inner.schedule_runs.remove(id);
        inner
            .schedule_claims
            .retain(|(claimed, _), _| claimed != id);
        Ok(inner.schedules.remove(id).is_some())
    }

    async fn due_schedules(&self, now_ms: i64, limit: usize) -> Result<DueSchedules> {
        let inner = self.lock();
        Ok(DueSchedules {
            // Earliest first, as the Redis index orders them.
            due: {
                let mut due: Vec<(i64, &pb::Schedule)> = inner
                    .schedules
                    .values()
                    .filter_map(|(schedule, next)| {
                        next.filter(|next| *next <= now_ms)
                            .map(|next| (next, schedule))
                    })
                    .collect();
                due.sort_by(|left, right| (left.0, &left.1.id).cmp(&(right.0, &right.1.id)));
                due.into_iter()
                    .take(limit)
                    .map(|(_, schedule)| schedule.clone())
                    .collect()
            },
            unsettled: inner
                .schedule_claims
                .iter()
                .filter(|(_, deadline)| **deadline <= now_ms)
                .take(limit)
                .map(|(claim, _)| claim.clone())
                .collect(),
        })
    }

    async fn claim_schedule_run(
        &self,
        expected_version: u64,
        fire_ms: i64,
        mut updated: pb::Schedule,
        next_ms: Option<i64>,
        claim_ttl_ms: i64,
        now_ms: i64,
    ) -> Result<bool> {
        let mut inner = self.lock();
        let id = updated.id.clone();
        let Some(entry) = inner.schedules.get_mut(&id) else {
            return Ok(false);
        };
        if entry.0.version != expected_version || entry.1 != Some(fire_ms) || fire_ms > now_ms {
            return Ok(false);
        }
        updated.version = expected_version + 1;
        *entry = (updated, next_ms);
        if claim_ttl_ms > 0 {
            inner
                .schedule_claims
                .insert((id, fire_ms), now_ms + claim_ttl_ms);
        }
        Ok(true)
    }

    async fn settle_schedule_run(
        &self,
        id: &str,
        fire_ms: i64,
        run: Option<pb::ScheduleRun>,
    ) -> Result<bool> {
        let mut inner = self.lock();
        if inner
            .schedule_claims
            .remove(&(id.to_string(), fire_ms))
            .is_none()
        {
            return Ok(false);
        }
        if let Some(run) = run
            && inner.schedules.contains_key(id)
        {
            let runs = inner.schedule_runs.entry(id.to_string()).or_default();
            runs.push_front(run);
            runs.truncate(100);
        }
        Ok(true)
    }

    async fn record_schedule_run(&self, id: &str, run: pb::ScheduleRun) -> Result<()> {
        let mut inner = self.lock();
        let runs = inner.schedule_runs.entry(id.to_string()).or_default();
        runs.push_front(run);
        runs.truncate(100);
        Ok(())
    }

    async fn schedule_runs(&self, id: &str) -> Result<Vec<pb::ScheduleRun>> {
        Ok(self
            .lock()
            .schedule_runs
            .get(id)
            .map(|runs| runs.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn scheduled_summary(&self) -> Result<ScheduledSummary> {
        let inner = self.lock();
        Ok(ScheduledSummary {
            count: inner.scheduled.len() as u64,
            next_due_ms: inner.scheduled.first().map(|(due, _)| *due),
        })
    }

    async fn enable_events(&self) -> Result<()> {
        Ok(())
    }

    async fn publish_event(&self, event: StoreEvent) -> Result<()> {
        self.events.emit(event);
        Ok(())
    }

    async fn announce_dispatcher(
        &self,
        replica: &str,
        sessions: Option<u32>,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<std::collections::BTreeMap<String, u32>> {
        let mut inner = self.lock();
        match sessions {
            Some(sessions) => {
                inner
                    .dispatchers
                    .insert(replica.to_string(), (sessions, now_ms + ttl_ms));
            }
            None => {
                inner.dispatchers.remove(replica);
            }
        }
        inner.dispatchers.retain(|_, (_, until)| *until > now_ms);
        Ok(inner
            .dispatchers
            .iter()
            .map(|(replica, (sessions, _))| (replica.clone(), *sessions))
            .collect())
    }

    async fn announce_workers(
        &self,
        replica: &str,
        workers: Option<Vec<u8>>,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<std::collections::BTreeMap<String, Vec<u8>>> {
        let mut inner = self.lock();
        if !replica.is_empty() {
            match workers {
                Some(workers) => {
                    inner
                        .worker_lists
                        .insert(replica.to_string(), (workers, now_ms + ttl_ms));
                }
                None => {
                    inner.worker_lists.remove(replica);
                }
            }
        }
        inner.worker_lists.retain(|_, (_, until)| *until > now_ms);
        Ok(inner
            .worker_lists
            .iter()
            .map(|(replica, (workers, _))| (replica.clone(), workers.clone()))
            .collect())
    }

    async fn queue_depths(&self) -> Result<QueueDepths> {
        let inner = self.lock();
        let mut ready: Vec<(QueueKey, u64)> = inner
            .queues
            .iter()
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(key, ids)| (key.clone(), ids.len() as u64))
            .collect();
        ready.sort_by(|left, right| left.0.as_str().cmp(right.0.as_str()));
        Ok(QueueDepths {
            ready,
            scheduled: inner.scheduled.len() as u64,
            leased: inner
                .sessions
                .values()
                .map(|session| session.leases.len() as u64)
                .sum(),
            dead: inner.dead.len() as u64,
            paused: {
                let mut paused: Vec<String> = inner.paused.iter().cloned().collect();
                paused.sort();
                paused
            },
        })
    }
}

impl MemoryStore {
    /// Wakes sessions for queues that got work back (freed permits, ready
    /// workflow nodes), and waiters of tasks a workflow step changed.
    fn notify_ready(&self) {
        let (ready, touched) = {
            let mut inner = self.lock();
            (
                std::mem::take(&mut inner.ready),
                std::mem::take(&mut inner.touched),
            )
        };
        for key in ready {
            self.events.queue_ready(&key.base());
        }
        for id in touched {
            self.events.task_changed(id);
        }
    }

    fn notify(&self, tasks: &[TaskId], queues: &HashSet<QueueKey>) {
        self.notify_ready();
        for id in tasks {
            self.events.task_changed(*id);
        }
        for key in queues {
            self.events.queue_ready(&key.base());
        }
    }
}

fn complete_one(inner: &mut Inner, report: OutcomeReport, now_us: i64) -> OutcomeAck {
    let now_ms = now_us.div_euclid(1000);
    let Some(entry) = inner.tasks.get_mut(&report.id) else {
        return OutcomeAck::NotFound;
    };
    let task = &mut entry.task;
    if task.lease_token != report.lease_token {
        return OutcomeAck::StaleLease;
    }
    if task.session_id != report.session_id || !task.state.is_leased() {
        return OutcomeAck::NotHeld;
    }
    if let Some(session) = inner.sessions.get_mut(&report.session_id) {
        session.leases.remove(&report.id);
    }
    let entry = inner.tasks.get_mut(&report.id).expect("checked above");
    let task = &mut entry.task;
    task.updated_at_ms = now_ms;
    let state = match report.outcome {
        Outcome::Succeeded(payload) => {
            task.outcome = Some(store_pb::OutcomeRecord {
                outcome: Some(outcome_record::Outcome::Result(payload)),
            });
            TaskState::Succeeded
        }
        Outcome::Failed { error, retry_at_ms } => {
            task.failures += 1;
            task.outcome = Some(store_pb::OutcomeRecord {
                outcome: Some(outcome_record::Outcome::Error(error)),
            });
            match retry_at_ms {
                Some(due) => {
                    inner.free_permits(report.id);
                    let Some(entry) = inner.tasks.get_mut(&report.id) else {
                        return OutcomeAck::NotFound;
                    };
                    let task = &mut entry.task;
                    task.state = TaskState::Scheduled;
                    task.due_at_ms = due;
                    inner.scheduled.insert((due, report.id));
                    inner.emit(EventKind::Retried, report.id, now_us as f64 / 1000.0);
                    return OutcomeAck::Recorded(TaskState::Scheduled);
                }
                None => {
                    inner.dead.insert((now_ms, report.id));
                    TaskState::Failed
                }
            }
        }
    };
    inner.finish_at_us(report.id, state, now_us);
    OutcomeAck::Recorded(state)
}
