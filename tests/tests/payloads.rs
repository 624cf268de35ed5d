//! Large payloads with default settings, on both stores. A worker with 50
//! slots once received all its leases in one frame: 50 tasks of 256 KB made
//! a 12.8 MB message, over the 4 MiB receive limit gRPC libraries default to;
//! the stream broke, the same tasks were leased again, forever. Frames are
//! now bounded in bytes, and the SDK receives what the server may send.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use conveyor_api::pb;
use conveyor_client::{Client, TaskContext, TaskRequest, Worker};
use conveyor_tests::{Backend, TestCluster, on_both_stores};

on_both_stores!(large_payloads_run_with_default_settings);

/// The sum of the lengths of the task's string arguments.
async fn measure(ctx: TaskContext) -> Result<Value, conveyor_client::TaskFailure> {
    let mut total = 0;
    let mut index = 0;
    while let Ok(text) = ctx.arg::<String>(index) {
        total += text.len();
        index += 1;
    }
    Ok(Value::from(total))
}

async fn large_payloads_run_with_default_settings(backend: Backend) {
    let Some(cluster) = TestCluster::start(backend).await else {
        return;
    };
    let client = Client::from_channel(cluster.channel.clone());
    let worker = Worker::from_channel(cluster.channel.clone())
        .worker_id("big")
        .concurrency(50)
        .register("measure", measure)
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));
    let began = Instant::now();
    // 200 tasks of 256 KB in one submit_many (51 MB: split into calls).
    let quarter = "q".repeat(256 * 1024);
    let ids = client
        .submit_many(
            (0..200)
                .map(|_| TaskRequest::new("measure").arg(&quarter))
                .collect(),
        )
        .await
        .unwrap();
    // One task at the limits: four payloads of 1 MiB (the JSON string and
    // its quotes), 4 MiB in all, so that its assignment alone exceeds the
    // 4 MiB receive limit gRPC libraries default to.
    let million = "m".repeat(1024 * 1024 - 2);
    let mut biggest = TaskRequest::new("measure");
    for _ in 0..4 {
        biggest = biggest.arg(&million);
    }
    let biggest = client.submit(biggest).await.unwrap();
    for id in &ids {
        let length: usize = client.result(id, Duration::from_secs(60)).await.unwrap();
        assert_eq!(length, 256 * 1024);
    }
    let length: usize = client
        .result(&biggest, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(length, 4 * (1024 * 1024 - 2));
    // Reading the big task back whole (arguments included) works too.
    let task = client.get(&biggest).await.unwrap();
    assert_eq!(task.state, pb::TaskState::Succeeded as i32);
    assert_eq!(task.attempt, 1, "delivered once: no stream broke");
    // WaitTask answers with the outcome, not the megabytes of arguments the
    // waiter sent; the full view has them.
    let wait = |view: pb::TaskView| pb::WaitTaskRequest {
        task_id: biggest.clone(),
        view: view as i32,
        ..Default::default()
    };
    let outcome = cluster
        .results()
        .wait_task(wait(pb::TaskView::Unspecified))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert!(outcome.args.is_empty() && outcome.result.is_some());
    assert!(
        prost::Message::encoded_len(&outcome) < 1024,
        "a small reply"
    );
    let full = cluster
        .results()
        .max_decoding_message_size(64 * 1024 * 1024)
        .wait_task(wait(pb::TaskView::Full))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(full.args.len(), 4);
    let bad = cluster
        .results()
        .wait_task(pb::WaitTaskRequest {
            task_id: biggest.clone(),
            view: 9,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let took = began.elapsed();
    println!("{backend:?}: 200 x 256 KB and one 4 MB task done in {took:?}");
    stop.cancel();
    running.await.unwrap().unwrap();
}
