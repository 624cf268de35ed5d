//! In-process fan-out of change notifications. Backends publish into it (the
//! memory store directly, the Redis store from its pub/sub subscriber);
//! result waiters and dispatcher sessions wait on it instead of polling.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Notify, broadcast, mpsc};

use conveyor_core::TaskId;

use crate::types::QueueKey;

/// Fan-out hub; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct EventHub {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// One sender per task somebody is waiting on.
    tasks: Mutex<HashMap<TaskId, broadcast::Sender<()>>>,
    /// Sessions waiting for work, per queue key. `Notify::notify_one` stores
    /// a permit, so a wake-up that lands before the session waits is kept.
    queues: Mutex<HashMap<QueueKey, Vec<Weak<Notify>>>>,
    /// Dispatcher sessions on this process, told when a task they hold is
    /// revoked.
    sessions: Mutex<HashMap<String, mpsc::UnboundedSender<TaskId>>>,
}

impl EventHub {
    /// A task changed state.
    pub fn task_changed(&self, id: TaskId) {
        let tasks = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(sender) = tasks.get(&id) {
            let _ = sender.send(());
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

    /// Work appeared on a queue key.
    pub fn queue_ready(&self, key: &QueueKey) {
        let mut queues = self
            .inner
            .queues
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(waiters) = queues.get_mut(key) {
            waiters.retain(|waiter| match waiter.upgrade() {
                Some(notify) => {
                    notify.notify_one();
                    true
                }
                None => false,
            });
        }
    }

    /// Registers a session's wake-up for work on any of `keys`; it is
    /// forgotten when the session drops its `Arc`.
    pub fn register_queue_waiter(&self, keys: &[QueueKey], notify: &Arc<Notify>) {
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
            let _ = sender.send(());
        }
        let queues = self
            .inner
            .queues
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for waiter in queues.values().flatten() {
            if let Some(notify) = waiter.upgrade() {
                notify.notify_one();
            }
        }
    }
}

/// A subscription to one task's changes.
#[derive(Debug)]
pub struct TaskEvents {
    hub: EventHub,
    id: TaskId,
    receiver: broadcast::Receiver<()>,
}

impl TaskEvents {
    /// Resolves at the next change (or lag: either way, re-read the task).
    pub async fn changed(&mut self) {
        let _ = self.receiver.recv().await;
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
