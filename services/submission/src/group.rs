//! Group commit for single submissions: `SubmitTask` calls that arrive while
//! earlier store calls are in flight are enqueued together, in one store
//! call (one script, one ready notification). An idle server adds nothing but
//! a channel hop; a busy one turns many small calls into a few large ones.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use conveyor_core::{ConveyorError, NewTask, Result};
use conveyor_store::{EnqueueAck, Store};

/// Store calls in flight at once; while all are busy, submissions gather
/// into the next batch.
const IN_FLIGHT: usize = 4;
/// Most tasks in one store call.
const MAX_BATCH: usize = 512;
/// Submissions waiting for a batch before callers wait for room.
const QUEUE: usize = 4096;

struct Pending {
    task: NewTask,
    now_ms: i64,
    reply: oneshot::Sender<Result<EnqueueAck>>,
}

/// Handle to the batching loop; cheap to clone.
#[derive(Clone)]
pub(crate) struct GroupCommit {
    sender: mpsc::Sender<Pending>,
}

impl GroupCommit {
    /// Starts the batching loop on the current runtime; it ends when every
    /// handle is dropped.
    pub(crate) fn start(store: Arc<dyn Store>) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(run(store, receiver));
        Self { sender }
    }

    /// Enqueues one task, in whichever batch it joins.
    pub(crate) async fn enqueue(&self, task: NewTask, now_ms: i64) -> Result<EnqueueAck> {
        let (reply, answer) = oneshot::channel();
        let closed = || ConveyorError::Unavailable("submission is shutting down".into());
        self.sender
            .send(Pending {
                task,
                now_ms,
                reply,
            })
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

async fn run(store: Arc<dyn Store>, mut receiver: mpsc::Receiver<Pending>) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // Wait for room first: what arrives meanwhile joins this batch.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = receiver.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        let store = store.clone();
        tokio::spawn(async move {
            commit(store.as_ref(), batch).await;
            drop(permit);
        });
    }
}

async fn commit(store: &dyn Store, batch: Vec<Pending>) {
    // One store call per partition: each is atomic, so a failure in one
    // partition cannot fail a caller whose task another one stored.
    let mut by_partition: BTreeMap<u16, Vec<Pending>> = BTreeMap::new();
    for pending in batch {
        by_partition
            .entry(pending.task.id.partition())
            .or_default()
            .push(pending);
    }
    futures::future::join_all(
        by_partition
            .into_values()
            .map(|group| commit_partition(store, group)),
    )
    .await;
}

async fn commit_partition(store: &dyn Store, group: Vec<Pending>) {
    let now_ms = group
        .iter()
        .map(|pending| pending.now_ms)
        .max()
        .unwrap_or(0);
    let (tasks, mut replies): (Vec<NewTask>, Vec<_>) = group
        .into_iter()
        .map(|pending| (pending.task, pending.reply))
        .unzip();
    match store.enqueue(tasks, now_ms).await {
        Ok(acks) if acks.len() == replies.len() => {
            for (reply, ack) in replies.into_iter().zip(acks) {
                let _ = reply.send(Ok(ack));
            }
        }
        Ok(_) => {
            for reply in replies {
                let message = "store returned a short acknowledgement".to_string();
                let _ = reply.send(Err(ConveyorError::Unavailable(message)));
            }
        }
        Err(error) if replies.len() == 1 => {
            let _ = replies.remove(0).send(Err(error));
        }
        Err(error) => {
            // The call failed as a whole (a timed-out one may still have
            // been applied, as for any store call); every caller sees it.
            let message = error.to_string();
            for reply in replies {
                let _ = reply.send(Err(ConveyorError::Unavailable(message.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use conveyor_api::pb;
    use conveyor_core::time::now_ms;
    use conveyor_core::validate::validate_spec;
    use conveyor_core::{Limits, TaskState};
    use conveyor_store::MemoryStore;

    use super::*;

    fn task(idempotency_key: &str, partition: u16) -> NewTask {
        let spec = pb::TaskSpec {
            name: "add".into(),
            idempotency_key: idempotency_key.into(),
            ..Default::default()
        };
        validate_spec(spec, "task", &Limits::default(), now_ms(), partition).expect("valid")
    }

    /// Concurrent submissions share store calls and each gets its own
    /// acknowledgement; two with one idempotency key get one task.
    #[tokio::test]
    async fn concurrent_submissions_are_each_acknowledged_once() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let group = GroupCommit::start(store.clone());
        let calls = (0..300u16).map(|index| {
            let group = group.clone();
            // Ids carry partitions 0-3: one store call per partition.
            let (key, partition) = if index < 2 {
                ("same", 0)
            } else {
                ("", index % 4)
            };
            async move { group.enqueue(task(key, partition), now_ms()).await }
        });
        let acks: Vec<EnqueueAck> = futures::future::try_join_all(calls).await.unwrap();
        let ids: HashSet<_> = acks.iter().map(|ack| ack.id).collect();
        assert_eq!(ids.len(), 299, "the two with one key share a task");
        assert_eq!(acks.iter().filter(|ack| ack.duplicate).count(), 1);
        for ack in &acks {
            let stored = store.get(ack.id, now_ms()).await.unwrap().expect("stored");
            assert_eq!(stored.state, TaskState::Queued);
        }
    }
}
