//! The sessions connected to this replica, for ListWorkers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use conveyor_api::pb;
use conveyor_core::time::{now_ms, timestamp_from_ms};

/// Live sessions by id; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    sessions: Arc<Mutex<HashMap<String, pb::WorkerInfo>>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, pb::WorkerInfo>> {
        self.sessions
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Adds a session.
    pub(crate) fn insert(&self, info: pb::WorkerInfo) {
        self.lock().insert(info.session_id.clone(), info);
    }

    /// Updates a session's live counters.
    pub(crate) fn update(
        &self,
        session_id: &str,
        active_leases: usize,
        credits: u32,
        completed: u64,
    ) {
        if let Some(info) = self.lock().get_mut(session_id) {
            info.active_leases = active_leases as u32;
            info.credits = credits;
            info.completed = completed;
            info.last_seen_at = Some(timestamp_from_ms(now_ms()));
        }
    }

    /// Removes a session.
    pub(crate) fn remove(&self, session_id: &str) {
        self.lock().remove(session_id);
    }

    /// All sessions, ordered by worker id.
    pub fn snapshot(&self) -> Vec<pb::WorkerInfo> {
        let mut workers: Vec<_> = self.lock().values().cloned().collect();
        workers.sort_by(|left, right| left.worker_id.cmp(&right.worker_id));
        workers
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
