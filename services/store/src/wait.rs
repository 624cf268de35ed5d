//! Waiting for a task to finish, woken by change notifications.

use tokio::time::Instant;

use conveyor_core::{ConveyorError, Result, StoredTask, TaskId, time::now_ms};

use crate::Store;

/// Waits until the task is terminal or `deadline` passes. Subscribes before
/// reading, so a change between the read and the wait cannot be missed.
/// `NotFound` for an unknown task; `DeadlineExceeded` on time-out.
pub async fn wait_terminal(store: &dyn Store, id: TaskId, deadline: Instant) -> Result<StoredTask> {
    let mut events = store.events().subscribe_task(id);
    loop {
        let Some(task) = store.get(id, now_ms()).await? else {
            return Err(ConveyorError::task_not_found(id.to_string()));
        };
        if task.state.is_terminal() {
            return Ok(task);
        }
        if tokio::time::timeout_at(deadline, events.changed())
            .await
            .is_err()
        {
            return Err(ConveyorError::DeadlineExceeded(format!(
                "task {id} is still {:?}",
                task.state
            )));
        }
    }
}
