//! The sessions connected to this replica: for ListWorkers, and for
//! rebalancing (a replica over its share asks some sessions to drain).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use conveyor_api::pb;
use conveyor_core::time::{now_ms, timestamp_from_ms};

/// One live session.
#[derive(Debug)]
struct Entry {
    info: pb::WorkerInfo,
    /// Cancelled to ask the session to drain (rebalancing).
    drain: CancellationToken,
}

/// Live sessions by id; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    sessions: Arc<Mutex<HashMap<String, Entry>>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.sessions
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Adds a session; `drain` is cancelled when it is picked to move.
    pub(crate) fn insert(&self, info: pb::WorkerInfo, drain: CancellationToken) {
        self.lock()
            .insert(info.session_id.clone(), Entry { info, drain });
    }

    /// Updates a session's live counters.
    pub(crate) fn update(
        &self,
        session_id: &str,
        active_leases: usize,
        credits: u32,
        completed: u64,
    ) {
        if let Some(entry) = self.lock().get_mut(session_id) {
            let info = &mut entry.info;
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
        let mut workers: Vec<_> = self
            .lock()
            .values()
            .map(|entry| entry.info.clone())
            .collect();
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

    /// Sessions not asked to drain: what this replica holds for good.
    pub(crate) fn staying(&self) -> usize {
        self.lock()
            .values()
            .filter(|entry| !entry.drain.is_cancelled())
            .count()
    }

    /// Asks up to `count` sessions to drain, those holding the fewest
    /// leases first (they move at once), the newest first among equals;
    /// returns how many were asked.
    pub(crate) fn drain_some(&self, count: usize) -> usize {
        let sessions = self.lock();
        let mut candidates: Vec<&Entry> = sessions
            .values()
            .filter(|entry| !entry.drain.is_cancelled())
            .collect();
        candidates.sort_by_key(|entry| {
            let connected = entry
                .info
                .connected_at
                .as_ref()
                .map_or(0, |at| at.seconds * 1_000_000_000 + i64::from(at.nanos));
            (entry.info.active_leases, std::cmp::Reverse(connected))
        });
        let picked = candidates.len().min(count);
        for entry in &candidates[..picked] {
            entry.drain.cancel();
        }
        picked
    }
}
