//! Waiting for a task to finish, woken by change notifications.

use std::sync::Arc;

use tokio::time::Instant;

use conveyor_core::{ConveyorError, Namespace, Result, StoredTask, TaskId, time::now_ms};

use crate::Store;

/// Waits until the task is terminal or `deadline` passes. Subscribes before
/// reading (with [`Store::watch`]), so a change between the read and the
/// wait cannot be missed.
/// `NotFound` for an unknown task or one of another namespace;
/// `DeadlineExceeded` on time-out.
pub async fn wait_terminal(
    store: &dyn Store,
    namespace: &Namespace,
    id: TaskId,
    deadline: Instant,
) -> Result<StoredTask> {
    let mut events = store.events().subscribe_task(id);
    // The first read also asks the store to notify this task's changes.
    let mut read = store.watch(id, now_ms()).await?;
    loop {
        let Some(task) = read.filter(|task| task.in_namespace(namespace)) else {
            return Err(ConveyorError::task_not_found(id.to_string()));
        };
        if task.state.is_terminal() {
            return Ok(task);
        }
        match tokio::time::timeout_at(deadline, events.changed()).await {
            Err(_) => {
                return Err(ConveyorError::DeadlineExceeded(format!(
                    "task {id} is still {:?}; wait again, or check that a connected \
                     worker registered {:?} on queue {:?} (`conveyor workers`)",
                    task.state,
                    task.record.name,
                    conveyor_core::namespace::split_queue(&task.queue).1
                )));
            }
            // The notification carried the finished task: no read needed.
            Ok(Some(finished)) if finished.state.is_terminal() => {
                return Ok(Arc::unwrap_or_clone(finished));
            }
            Ok(_) => read = store.get(id, now_ms()).await?,
        }
    }
}
