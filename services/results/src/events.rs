//! WatchEvents: the store's event stream, filtered per subscriber and sent
//! in batches. At most once: a subscriber that cannot keep up misses events
//! (counted in `dropped`) instead of slowing anything down.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use conveyor_api::pb;
use conveyor_core::Namespace;
use conveyor_core::namespace::split_queue;
use conveyor_store::{EventKind, Store, StoreEvent};

/// How often pending events are sent.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// Most events in one message.
pub const MAX_BATCH: usize = 1_000;
/// Messages waiting for a slow subscriber before events are dropped.
const OUTBOX: usize = 16;
/// How often the subscription renews the store's event switch.
const RENEW_INTERVAL: Duration = Duration::from_secs(5);

/// A subscriber's filter.
pub(crate) struct Filter {
    pub namespace: Namespace,
    pub queues: HashSet<String>,
    pub task_names: HashSet<String>,
    pub kinds: HashSet<i32>,
}

impl Filter {
    /// The public form of `event` if it passes the filter.
    fn pass(&self, event: &StoreEvent) -> Option<pb::Event> {
        let kind = to_pb_kind(event.kind);
        if !self.kinds.is_empty() && !self.kinds.contains(&(kind as i32)) {
            return None;
        }
        // `ns/queue:name#priority`; worker events carry `ns/` alone.
        let key = event.queue_key.split('#').next().unwrap_or("");
        let (scoped, name) = key.split_once(':').unwrap_or((key, ""));
        let (namespace, queue) = split_queue(scoped);
        if namespace != self.namespace {
            return None;
        }
        let worker_event = event.task.is_none();
        if !worker_event {
            if !self.queues.is_empty() && !self.queues.contains(queue) {
                return None;
            }
            if !self.task_names.is_empty() && !self.task_names.contains(name) {
                return None;
            }
        }
        let millis = event.at_ms.floor() as i64;
        let nanos = ((event.at_ms - millis as f64) * 1e6) as i32;
        let mut time = conveyor_core::time::timestamp_from_ms(millis);
        time.nanos += nanos.clamp(0, 999_999);
        Some(pb::Event {
            kind: kind as i32,
            time: Some(time),
            namespace: namespace.name().to_string(),
            queue: queue.to_string(),
            task_name: name.to_string(),
            task_id: event.task.map(|id| id.to_string()).unwrap_or_default(),
            attempt: event.attempt,
            worker_id: event.worker_id.clone(),
            session_id: event.session_id.clone(),
            active: event.active,
            slots: event.slots,
        })
    }
}

fn to_pb_kind(kind: EventKind) -> pb::EventKind {
    match kind {
        EventKind::Submitted => pb::EventKind::TaskSubmitted,
        EventKind::Leased => pb::EventKind::TaskLeased,
        EventKind::Started => pb::EventKind::TaskStarted,
        EventKind::Progress => pb::EventKind::TaskProgress,
        EventKind::Retried => pb::EventKind::TaskRetried,
        EventKind::Succeeded => pb::EventKind::TaskSucceeded,
        EventKind::Failed => pb::EventKind::TaskFailed,
        EventKind::Cancelled => pb::EventKind::TaskCancelled,
        EventKind::Expired => pb::EventKind::TaskExpired,
        EventKind::Requeued => pb::EventKind::TaskRequeued,
        EventKind::Ready => pb::EventKind::TaskReady,
        EventKind::WorkerOnline => pb::EventKind::WorkerOnline,
        EventKind::WorkerOffline => pb::EventKind::WorkerOffline,
        EventKind::WorkerHeartbeat => pb::EventKind::WorkerHeartbeat,
    }
}

/// Forwards the store's events through `filter` to `outbox` until the
/// subscriber goes away.
pub(crate) async fn forward(
    store: Arc<dyn Store>,
    mut events: broadcast::Receiver<Arc<StoreEvent>>,
    filter: Filter,
    outbox: mpsc::Sender<Message>,
) {
    let mut pending: Vec<pb::Event> = Vec::new();
    let mut dropped: u64 = 0;
    let mut flush = tokio::time::interval(FLUSH_INTERVAL);
    let mut renew = tokio::time::interval(RENEW_INTERVAL);
    renew.tick().await;
    loop {
        tokio::select! {
            received = events.recv() => match received {
                Ok(event) => {
                    if let Some(event) = filter.pass(&event) {
                        if pending.len() >= MAX_BATCH * OUTBOX {
                            dropped += 1;
                        } else {
                            pending.push(event);
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    dropped += missed;
                    if conveyor_runtime::metrics::enabled() {
                        metrics::counter!(conveyor_runtime::metrics::EVENTS_DROPPED).increment(missed);
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = flush.tick() => {
                if outbox.is_closed() {
                    return;
                }
                while !pending.is_empty() || dropped > 0 {
                    let rest = pending.split_off(pending.len().min(MAX_BATCH));
                    let batch = std::mem::replace(&mut pending, rest);
                    let count = batch.len() as u64;
                    let message = pb::WatchEventsResponse { events: batch, dropped };
                    match outbox.try_send(Ok(message)) {
                        Ok(()) => dropped = 0,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            // The subscriber is slow: this batch is lost.
                            dropped += count;
                            if conveyor_runtime::metrics::enabled() {
                                metrics::counter!(conveyor_runtime::metrics::EVENTS_DROPPED).increment(count);
                            }
                            break;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
            }
            _ = renew.tick() => {
                if let Err(error) = store.enable_events().await {
                    tracing::warn!(%error, "renewing the event stream failed");
                }
            }
        }
    }
}

type Message = Result<pb::WatchEventsResponse, Status>;

/// The bounded channel a subscriber reads from.
pub(crate) fn outbox() -> (mpsc::Sender<Message>, mpsc::Receiver<Message>) {
    mpsc::channel(OUTBOX)
}
