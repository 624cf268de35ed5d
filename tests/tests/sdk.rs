//! The Rust SDK against the real services: producer and worker, results and
//! errors, a dead worker's task finishing elsewhere; on both stores.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use conveyor_client::{Client, Error, TaskContext, TaskFailure, TaskRequest, Worker};
use conveyor_tests::{Backend, TestCluster, on_both_stores};

on_both_stores!(
    sdk_round_trip_results_and_errors,
    sdk_worker_crash_runs_the_task_elsewhere
);

async fn add(ctx: TaskContext) -> Result<Value, TaskFailure> {
    let (left, right): (i64, i64) = (ctx.arg(0)?, ctx.arg(1)?);
    Ok(json!(left + right))
}

async fn fail(ctx: TaskContext) -> Result<Value, TaskFailure> {
    let message: String = ctx.arg(0).unwrap_or_else(|_| "boom".into());
    Err(TaskFailure::new("ValueError", message)
        .with_traceback("at fail (sdk.rs)")
        .non_retryable())
}

fn start_worker(
    cluster: &TestCluster,
    id: &str,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let worker = Worker::from_channel(cluster.channel.clone())
        .worker_id(id)
        .concurrency(4)
        .grace_period(Duration::from_millis(500))
        .register("add", add)
        .register("fail", fail)
        .register("hang", |ctx: TaskContext| async move {
            ctx.cancelled().await;
            Ok(Value::Null)
        })
        .build()
        .expect("worker builds");
    tokio::spawn(async move {
        worker
            .run_until(stop.cancelled_owned())
            .await
            .expect("worker runs");
    })
}

async fn sdk_round_trip_results_and_errors(backend: Backend) {
    let Some(cluster) = TestCluster::start(backend).await else {
        return;
    };
    let stop = CancellationToken::new();
    let worker = start_worker(&cluster, "sdk-worker", stop.clone());
    let client = Client::from_channel(cluster.channel.clone());
    let id = client
        .submit(TaskRequest::new("add").arg(2).arg(2))
        .await
        .unwrap();
    let sum: i64 = client.result(&id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(sum, 4);
    let failing = client
        .submit(TaskRequest::new("fail").arg("no luck"))
        .await
        .unwrap();
    match client
        .result::<Value>(&failing, Duration::from_secs(10))
        .await
    {
        Err(Error::TaskFailed {
            error_type,
            message,
            traceback,
        }) => {
            assert_eq!(error_type, "ValueError");
            assert_eq!(message, "no luck");
            assert!(traceback.contains("sdk.rs"));
        }
        other => panic!("expected a task failure, got {other:?}"),
    }
    let batch: Vec<TaskRequest> = (0..200)
        .map(|n| TaskRequest::new("add").arg(n).arg(n))
        .collect();
    let ids = client.submit_many(batch).await.unwrap();
    for (n, id) in ids.iter().enumerate() {
        let doubled: i64 = client.result(id, Duration::from_secs(10)).await.unwrap();
        assert_eq!(doubled, 2 * n as i64);
    }
    stop.cancel();
    worker.await.unwrap();
    cluster.stop().await.unwrap();
}

async fn sdk_worker_crash_runs_the_task_elsewhere(backend: Backend) {
    let Some(cluster) = TestCluster::start(backend).await else {
        return;
    };
    let client = Client::from_channel(cluster.channel.clone());
    // The first worker only knows `hang`, so the task sits there until the
    // worker dies; the second can finish it.
    let first = Worker::from_channel(cluster.channel.clone())
        .worker_id("doomed")
        .concurrency(1)
        .register("hang", |ctx: TaskContext| async move {
            ctx.cancelled().await;
            Ok(Value::Null)
        })
        .build()
        .unwrap();
    let crashed = tokio::spawn(async move {
        let _ = first.run().await;
    });
    let id = client.submit(TaskRequest::new("hang")).await.unwrap();
    let leased = conveyor_tests::eventually(Duration::from_secs(5), || async {
        let task = client.get(&id).await.unwrap();
        task.worker_id == "doomed" && task.attempt == 1
    })
    .await;
    assert!(leased);
    crashed.abort(); // the process dies: its stream is dropped mid-task
    let stop = CancellationToken::new();
    let rescuer = start_worker(&cluster, "rescuer", stop.clone());
    let rescued = conveyor_tests::eventually(Duration::from_secs(5), || async {
        let task = client.get(&id).await.unwrap();
        task.worker_id == "rescuer" && task.attempt == 2
    })
    .await;
    assert!(rescued, "the task moved to the live worker");
    assert!(
        client.cancel(&id).await.unwrap(),
        "a running task is revoked"
    );
    let revoked = client.get(&id).await.unwrap();
    assert_eq!(
        revoked.state,
        conveyor_client::pb::TaskState::Cancelled as i32
    );
    stop.cancel();
    rescuer.await.unwrap();
}
