//! Task and worker events for `WatchEvents` (Celery's events): what the
//! store did, in the order it did it.
//!
//! The backends emit them inside their atomic operations (the memory store
//! under its lock, the Redis scripts with `PUBLISH`), so the events of one
//! task are always in order, whichever process caused them. They cost
//! nothing while nobody watches: the memory store checks for subscribers,
//! and the Redis scripts publish only while a watcher keeps the partition's
//! `evon` key alive (see [`crate::Store::enable_events`]).

use conveyor_core::TaskId;

/// What happened (mirrors `conveyor.v1.EventKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Stored, queued or scheduled.
    Submitted,
    /// An attempt was leased.
    Leased,
    /// The handler started.
    Started,
    /// The worker reported progress.
    Progress,
    /// An attempt failed; a retry is scheduled.
    Retried,
    /// Finished successfully.
    Succeeded,
    /// Failed for good.
    Failed,
    /// Cancelled.
    Cancelled,
    /// Expired before running.
    Expired,
    /// Back to its queue (lease lost or released, or replayed).
    Requeued,
    /// A workflow node's parents finished: it left WAITING.
    Ready,
    /// A worker session connected.
    WorkerOnline,
    /// A worker session ended.
    WorkerOffline,
    /// A worker session's periodic summary.
    WorkerHeartbeat,
}

impl EventKind {
    /// The one-letter code the Redis scripts publish.
    pub fn code(self) -> &'static str {
        match self {
            EventKind::Submitted => "S",
            EventKind::Leased => "L",
            EventKind::Started => "B",
            EventKind::Progress => "P",
            EventKind::Retried => "R",
            EventKind::Succeeded => "D",
            EventKind::Failed => "F",
            EventKind::Cancelled => "C",
            EventKind::Expired => "X",
            EventKind::Requeued => "Q",
            EventKind::Ready => "Y",
            EventKind::WorkerOnline => "W+",
            EventKind::WorkerOffline => "W-",
            EventKind::WorkerHeartbeat => "W~",
        }
    }

    /// The kind of a code; `None` for an unknown one.
    pub fn from_code(code: &str) -> Option<EventKind> {
        Some(match code {
            "S" => EventKind::Submitted,
            "L" => EventKind::Leased,
            "B" => EventKind::Started,
            "P" => EventKind::Progress,
            "R" => EventKind::Retried,
            "D" => EventKind::Succeeded,
            "F" => EventKind::Failed,
            "C" => EventKind::Cancelled,
            "X" => EventKind::Expired,
            "Q" => EventKind::Requeued,
            "Y" => EventKind::Ready,
            "W+" => EventKind::WorkerOnline,
            "W-" => EventKind::WorkerOffline,
            "W~" => EventKind::WorkerHeartbeat,
            _ => return None,
        })
    }

    /// The kind a task reaching a final state code (5-8) emits.
    pub fn of_final_state(state: u8) -> EventKind {
        match state {
            5 => EventKind::Succeeded,
            6 => EventKind::Failed,
            7 => EventKind::Cancelled,
            _ => EventKind::Expired,
        }
    }
}

/// One event as the store emits it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreEvent {
    /// What happened.
    pub kind: EventKind,
    /// When, Unix ms (store clock).
    pub at_ms: f64,
    /// The task, for task events.
    pub task: Option<TaskId>,
    /// The task's queue key (`queue:name`, namespace-scoped queue); for
    /// worker events, the scoped namespace queue `ns/` prefix alone.
    pub queue_key: String,
    /// Attempt number.
    pub attempt: u32,
    /// Worker id (leases and worker events).
    pub worker_id: String,
    /// Session id (worker events).
    pub session_id: String,
    /// Worker events: leases held and credits granted.
    pub active: u32,
    /// Worker events: free slots.
    pub slots: u32,
}

/// The separator of fields in a published event (ASCII unit separator:
/// never in a validated name).
pub const SEPARATOR: char = '\u{1f}';

impl StoreEvent {
    /// The text published on Redis: code, time, id, queue key, attempt,
    /// worker, session, active, slots.
    pub fn encode(&self) -> String {
        let id = self.task.map(|id| id.to_string()).unwrap_or_default();
        [
            self.kind.code().to_string(),
            self.at_ms.to_string(),
            id,
            self.queue_key.clone(),
            self.attempt.to_string(),
            self.worker_id.clone(),
            self.session_id.clone(),
            self.active.to_string(),
            self.slots.to_string(),
        ]
        .join(&SEPARATOR.to_string())
    }

    /// Decodes [`encode`](Self::encode)'s text (and the scripts', which may
    /// stop after the worker field).
    pub fn decode(text: &str) -> Option<StoreEvent> {
        let mut fields = text.split(SEPARATOR);
        let kind = EventKind::from_code(fields.next()?)?;
        let at_ms = fields.next()?.parse().ok()?;
        let task = match fields.next()? {
            "" => None,
            id => Some(TaskId::parse(id, "id").ok()?),
        };
        let queue_key = fields.next()?.to_string();
        let attempt = fields.next().unwrap_or("0").parse().unwrap_or(0);
        let worker_id = fields.next().unwrap_or("").to_string();
        let session_id = fields.next().unwrap_or("").to_string();
        let active = fields.next().unwrap_or("0").parse().unwrap_or(0);
        let slots = fields.next().unwrap_or("0").parse().unwrap_or(0);
        Some(StoreEvent {
            kind,
            at_ms,
            task,
            queue_key,
            attempt,
            worker_id,
            session_id,
            active,
            slots,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_encoding() {
        let event = StoreEvent {
            kind: EventKind::Leased,
            at_ms: 1_700_000_000_123.5,
            task: Some(TaskId::parse("01a23a91-fa9c-775e-88ca-2466fbca0000", "id").unwrap()),
            queue_key: "team/emails:send#3".into(),
            attempt: 2,
            worker_id: "w-1".into(),
            session_id: String::new(),
            active: 0,
            slots: 0,
        };
        assert_eq!(StoreEvent::decode(&event.encode()), Some(event));
        assert_eq!(StoreEvent::decode("nope"), None);
    }
}
