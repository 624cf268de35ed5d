//! The cross-service test harness: a `TestCluster` of real servers on
//! loopback (any subset of roles, memory or Redis store), a raw-protocol
//! worker for driving the dispatch stream precisely, and `eventually`.

pub mod cluster;
pub mod processes;
pub mod raw;
pub mod raw_worker;

use std::future::Future;
use std::time::Duration;

use conveyor_api::pb;

pub use cluster::{Backend, TestCluster};
pub use raw_worker::RawWorker;

/// A JSON payload.
pub fn json(value: serde_json::Value) -> pb::Payload {
    pb::Payload {
        data: serde_json::to_vec(&value).expect("json encodes"),
        content_type: "application/json".into(),
    }
}

/// A task spec with JSON positional arguments.
pub fn spec(name: &str, args: &[serde_json::Value]) -> pb::TaskSpec {
    pb::TaskSpec {
        name: name.to_string(),
        args: args.iter().cloned().map(json).collect(),
        ..Default::default()
    }
}

/// Polls `condition` every 10 ms until it holds or `timeout` passes; returns
/// whether it held. For convergence, instead of fixed sleeps.
pub async fn eventually<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The field named by an INVALID_ARGUMENT / RESOURCE_EXHAUSTED status.
pub fn violated_field(status: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt;
    let details = status.get_error_details();
    details
        .bad_request()?
        .field_violations
        .first()
        .map(|violation| violation.field.clone())
}

/// A task's state as the enum.
pub fn state(task: &pb::Task) -> pb::TaskState {
    pb::TaskState::try_from(task.state).expect("known state")
}

/// GetTask, which must succeed.
pub async fn get(cluster: &TestCluster, id: &str) -> pb::Task {
    cluster
        .results()
        .get_task(pb::GetTaskRequest {
            task_id: id.into(),
            ..Default::default()
        })
        .await
        .expect("get task")
        .into_inner()
        .task
        .expect("task")
}

/// SubmitTask, which must succeed; the new task's id.
pub async fn submit(cluster: &TestCluster, task: pb::TaskSpec) -> String {
    cluster
        .submission()
        .submit_task(pb::SubmitTaskRequest {
            task: Some(task),
            ..Default::default()
        })
        .await
        .expect("submit")
        .into_inner()
        .task_id
}

/// Installs a test log subscriber once (RUST_LOG controls it).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
