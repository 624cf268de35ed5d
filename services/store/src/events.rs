//! In-process fan-out of change notifications. Backends publish into it (the
//! memory store directly, the Redis store from its pub/sub subscriber);
//! result waiters and dispatcher sessions wait on it instead of polling.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Notify, broadcast, mpsc};

use conveyor_core::{StoredTask, TaskId};

use crate::stream::StoreEvent;
use crate::types::QueueKey;

/// Fan-out hub; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct EventHub {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// One sender per task somebody is waiting on: `None` says "changed,
    /// read it again", `Some` carries the finished task itself.
    tasks: Mutex<HashMap<TaskId, broadcast::Sender<TaskChange>>>,
    /// Sessions waiting for work, per queue key.
    queues: Mutex<HashMap<QueueKey, Vec<Weak<QueueWaiter>>>>,
    /// Rotates the first waiter tried, so idle sessions share the work.
    rotor: AtomicUsize,
    /// Dispatcher sessions on this process, told when a task they hold is
    /// revoked.
    sessions: Mutex<HashMap<String, mpsc::UnboundedSender<TaskId>>>,
    /// Task and worker events for WatchEvents subscribers (created on first
    /// use).
    stream: std::sync::OnceLock<broadcast::Sender<Arc<StoreEvent>>>,
}

/// Events a WatchEvents subscriber may fall behind by before it misses some.
pub const EVENT_BUFFER: usize = 65_536;

impl EventHub {
    fn stream(&self) -> &broadcast::Sender<Arc<StoreEvent>> {
        self.inner
            .stream
            .get_or_init(|| broadcast::channel(EVENT_BUFFER).0)
    }

    /// Whether anybody in this process watches the event stream.
    pub fn wants_events(&self) -> bool {
        self.inner
            .stream
            .get()
            .is_some_and(|sender| sender.receiver_count() > 0)
    }

    /// Hands an event to this process's event subscribers (none: dropped).
    pub fn emit(&self, event: StoreEvent) {
        if self.wants_events() {
            let _ = self.stream().send(Arc::new(event));
        }
    }

    /// Subscribes to the event stream; a receiver that falls more than
    /// [`EVENT_BUFFER`] events behind gets `Lagged` and misses them.
    pub fn subscribe_events(&self) -> broadcast::Receiver<Arc<StoreEvent>> {
        self.stream().subscribe()
    }

    /// A task changed state.
    pub fn task_changed(&self, id: TaskId) {
        self.send_task(id, None);
    }

    /// A task finished; waiters get it without reading it again.
    pub fn task_finished(&self, task: StoredTask) {
        self.send_task(task.id, Some(Arc::new(task)));
    }

    /// Whether anybody in this process waits on the task.
    pub fn is_watched(&self, id: TaskId) -> bool {
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .contains_key(&id)
    }

    fn send_task(&self, id: TaskId, change: TaskChange) {
        let tasks = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(sender) = tasks.get(&id) {
            let _ = sender.send(change);
        }
    }

    /// Subscribes to a task's changes until the returned handle is dropped.
    pub fn subscribe_task(&self, id: TaskId) -> TaskEvents {
        let mut tasks = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let receiver = tasks
            .entry(id)
            .or_insert_with(|| broadcast::channel(8).0)
            .subscribe();
        TaskEvents {
            hub: self.clone(),
            id,
            receiver,
        }
    }

    /// Work appeared on a queue key. One idle waiter is woken, not all of
    /// them (a herd of sessions racing for one task costs a store call
    /// each); a waiter that then leases a full batch passes the wake-up on
    /// with another `queue_ready`. With no idle waiter, every waiter keeps
    /// a permit, so a session about to wait does not miss the work.
    pub fn queue_ready(&self, key: &QueueKey) {
        let mut queues = self
            .inner
            .queues
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let Some(waiters) = queues.get_mut(key) else {
            return;
        };
        waiters.retain(|waiter| waiter.strong_count() > 0);
        let live: Vec<Arc<QueueWaiter>> = waiters.iter().filter_map(Weak::upgrade).collect();
        drop(queues);
        if live.is_empty() {
            return;
        }
        let start = self.inner.rotor.fetch_add(1, Ordering::Relaxed);
        for offset in 0..live.len() {
            let waiter = &live[(start + offset) % live.len()];
            if waiter.idle.swap(false, Ordering::AcqRel) {
                waiter.notify.notify_one();
                return;
            }
        }
        for waiter in &live {
            waiter.notify.notify_one();
        }
    }

    /// Registers a session's wake-up for work on any of `keys`; it is
    /// forgotten when the session drops its `Arc`.
    pub fn register_queue_waiter(&self, keys: &[QueueKey], notify: &Arc<QueueWaiter>) {
        let mut queues = self
            .inner
            .queues
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for key in keys {
            let waiters = queues.entry(key.clone()).or_default();
            waiters.retain(|waiter| waiter.strong_count() > 0);
            waiters.push(Arc::downgrade(notify));
        }
    }

    /// A task held by `session_id` was revoked (cancelled while running).
    pub fn task_revoked(&self, session_id: &str, id: TaskId) {
        let sessions = self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(sender) = sessions.get(session_id) {
            let _ = sender.send(id);
        }
    }

    /// Registers a session for revocations until the handle is dropped.
    pub fn register_session(&self, session_id: &str) -> SessionEvents {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(session_id.to_string(), sender);
        SessionEvents {
            hub: self.clone(),
            session_id: session_id.to_string(),
            receiver,
        }
    }

    /// Wakes everybody: used after a notification channel reconnects, when
    /// messages may have been missed.
    pub fn wake_all(&self) {
        for sender in self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .values()
        {
            let _ = sender.send(None);
        }
        let queues = self
            .inner
            .queues
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for waiter in queues.values().flatten() {
            if let Some(waiter) = waiter.upgrade() {
                waiter.notify.notify_one();
            }
        }
    }
}

/// A session's wake-up for work on its queues.
#[derive(Debug, Default)]
pub struct QueueWaiter {
    notify: Notify,
    /// Waiting with room for work: preferred by [`EventHub::queue_ready`].
    idle: AtomicBool,
}

impl QueueWaiter {
    /// Resolves when work may be there (a permit stored before counts).
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// Whether the session waits for work and has room for it.
    pub fn set_idle(&self, idle: bool) {
        self.idle.store(idle, Ordering::Release);
    }
}

/// What a task waiter is told: the finished task, or `None` for "it
/// changed, read it again".
pub type TaskChange = Option<Arc<StoredTask>>;

/// A subscription to one task's changes.
#[derive(Debug)]
pub struct TaskEvents {
    hub: EventHub,
    id: TaskId,
    receiver: broadcast::Receiver<TaskChange>,
}

impl TaskEvents {
    /// Resolves at the next change: the finished task when the notification
    /// carried it, else `None` (read the task again; also after a lag).
    pub async fn changed(&mut self) -> TaskChange {
        self.receiver.recv().await.ok().flatten()
    }
}

impl Drop for TaskEvents {
    fn drop(&mut self) {
        let mut tasks = self
            .hub
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(sender) = tasks.get(&self.id) {
            // Our own receiver still counts until this drop completes.
            if sender.receiver_count() <= 1 {
                tasks.remove(&self.id);
            }
        }
    }
}

/// Revocations of one session's tasks.
#[derive(Debug)]
pub struct SessionEvents {
    hub: EventHub,
    session_id: String,
    receiver: mpsc::UnboundedReceiver<TaskId>,
}

impl SessionEvents {
    /// The next revoked task id.
    pub async fn revoked(&mut self) -> Option<TaskId> {
        self.receiver.recv().await
    }
}

impl Drop for SessionEvents {
    fn drop(&mut self) {
        self.hub
            .inner
            .sessions
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .remove(&self.session_id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn woken(waiter: &QueueWaiter) -> bool {
        tokio::time::timeout(Duration::from_millis(50), waiter.notified())
            .await
            .is_ok()
    }

    /// A ready queue wakes one idle waiter, not the herd; with none idle,
    /// every waiter keeps a permit so that none misses the work.
    #[tokio::test]
    async fn ready_queue_wakes_one_idle_waiter_else_leaves_permits() {
        let hub = EventHub::default();
        let key = QueueKey::new("default", "add");
        let waiters: Vec<Arc<QueueWaiter>> =
            (0..3).map(|_| Arc::new(QueueWaiter::default())).collect();
        for waiter in &waiters {
            hub.register_queue_waiter(std::slice::from_ref(&key), waiter);
            waiter.set_idle(true);
        }
        hub.queue_ready(&key);
        let mut count = 0;
        for waiter in &waiters {
            count += usize::from(woken(waiter).await);
        }
        assert_eq!(count, 1, "exactly one idle waiter woken");

        // Two are still idle: two more signals wake them, one each.
        hub.queue_ready(&key);
        hub.queue_ready(&key);
        let mut count = 0;
        for waiter in &waiters {
            count += usize::from(woken(waiter).await);
        }
        assert_eq!(count, 2);

        // Nobody idle now: everybody gets a permit.
        hub.queue_ready(&key);
        for waiter in &waiters {
            assert!(woken(waiter).await, "permit kept for a busy waiter");
        }
    }
}
