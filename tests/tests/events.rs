//! WatchEvents: every task's transitions arrive, in order per task, on both
//! stores and across a front end and two dispatch replicas; a subscriber
//! that never reads does not slow task processing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use conveyor_api::pb;
use conveyor_client::{Client, TaskContext, TaskFailure, TaskRequest, Worker};
use conveyor_tests::{Backend, TestCluster, on_both_stores};

on_both_stores!(
    a_thousand_tasks_emit_their_transitions_in_order,
    worker_events_follow_sessions,
);

const OK: usize = 700;
const FLAKY: usize = 200;
const BAD: usize = 100;

fn workers(
    dispatchers: &[TestCluster],
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    dispatchers
        .iter()
        .enumerate()
        .map(|(index, cluster)| {
            let worker = Worker::from_channel(cluster.channel.clone())
                .worker_id(format!("events-{index}"))
                .queues(["events-a", "events-b"])
                .concurrency(32)
                .grace_period(Duration::from_millis(500))
                .register("ev.ok", |_ctx: TaskContext| async { Ok(Value::Null) })
                .register("ev.flaky", |ctx: TaskContext| async move {
                    if ctx.attempt() == 1 {
                        Err(TaskFailure::new("Flaky", "first attempt")
                            .retry_in(Duration::from_millis(10)))
                    } else {
                        Ok(Value::Null)
                    }
                })
                .register("ev.bad", |_ctx: TaskContext| async {
                    Err(TaskFailure::new("Bad", "always").non_retryable())
                })
                .build()
                .unwrap();
            let stop = stop.clone();
            tokio::spawn(async move {
                let _ = worker.run_until(stop.cancelled_owned()).await;
            })
        })
        .collect()
}

fn requests(round: &str) -> Vec<TaskRequest> {
    let mut tasks = Vec::new();
    for index in 0..OK + FLAKY + BAD {
        let name = if index < OK {
            "ev.ok"
        } else if index < OK + FLAKY {
            "ev.flaky"
        } else {
            "ev.bad"
        };
        tasks.push(
            TaskRequest::new(name)
                .queue(format!("events-{round}"))
                .arg(index)
                .max_retries(3),
        );
    }
    tasks
}

/// Reads `stream` until every id in `expected` saw a final event; returns the
/// kinds per task.
async fn collect(
    stream: &mut tonic::Streaming<pb::WatchEventsResponse>,
    expected: usize,
) -> (HashMap<String, Vec<pb::EventKind>>, u64) {
    let mut kinds: HashMap<String, Vec<pb::EventKind>> = HashMap::new();
    let mut finished = 0;
    let mut dropped = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while finished < expected {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(remaining, stream.message())
            .await
            .unwrap_or_else(|_| {
                panic!("only {finished} of {expected} tasks finished in the event stream")
            })
            .expect("stream ok")
            .expect("stream open");
        dropped += message.dropped;
        for event in message.events {
            if event.task_id.is_empty() {
                continue;
            }
            let kind = pb::EventKind::try_from(event.kind).expect("known kind");
            if matches!(
                kind,
                pb::EventKind::TaskSucceeded | pb::EventKind::TaskFailed
            ) {
                finished += 1;
            }
            kinds.entry(event.task_id).or_default().push(kind);
        }
    }
    (kinds, dropped)
}

async fn watch(cluster: &TestCluster, queue: &str) -> tonic::Streaming<pb::WatchEventsResponse> {
    cluster
        .results()
        .watch_events(pb::WatchEventsRequest {
            queues: vec![queue.to_string()],
            ..Default::default()
        })
        .await
        .expect("WatchEvents")
        .into_inner()
}

async fn run_round(
    front: &TestCluster,
    client: &Client,
    round: &str,
) -> (Duration, HashMap<String, Vec<pb::EventKind>>, Vec<String>) {
    let mut stream = watch(front, &format!("events-{round}")).await;
    let started = Instant::now();
    let ids = client.submit_many(requests(round)).await.unwrap();
    let (kinds, dropped) = collect(&mut stream, ids.len()).await;
    assert_eq!(dropped, 0, "a subscriber that keeps up misses nothing");
    (started.elapsed(), kinds, ids)
}

async fn a_thousand_tasks_emit_their_transitions_in_order(backend: Backend) {
    let Some(store) = TestCluster::store(backend).await else {
        return;
    };
    let (front, dispatchers) = TestCluster::split(store, 2).await;
    let client = Client::from_channel(front.channel.clone());
    let stop = CancellationToken::new();
    let handles = workers(&dispatchers, &stop);

    use pb::EventKind::*;
    let (baseline, kinds, ids) = run_round(&front, &client, "a").await;
    for (index, id) in ids.iter().enumerate() {
        let expected = if index < OK {
            vec![TaskSubmitted, TaskLeased, TaskSucceeded]
        } else if index < OK + FLAKY {
            vec![
                TaskSubmitted,
                TaskLeased,
                TaskRetried,
                TaskLeased,
                TaskSucceeded,
            ]
        } else {
            vec![TaskSubmitted, TaskLeased, TaskFailed]
        };
        let seen = &kinds[id];
        // STARTED is recorded only while the lease is still current: a
        // worker's start report that arrives with its outcome is moot. When
        // present it follows its lease at once.
        for (at, kind) in seen.iter().enumerate() {
            if *kind == TaskStarted {
                assert_eq!(seen[at - 1], TaskLeased, "task {index}: {seen:?}");
            }
        }
        let without_started: Vec<_> = seen
            .iter()
            .copied()
            .filter(|kind| *kind != TaskStarted)
            .collect();
        assert_eq!(without_started, expected, "task {index} ({id})");
    }
    assert_eq!(kinds.len(), ids.len(), "no events of other tasks");

    // A subscriber that never reads: the next round must not slow down.
    let mut slow = watch(&front, "events-b").await;
    let (with_slow, kinds, ids) = run_round(&front, &client, "b").await;
    assert_eq!(kinds.len(), ids.len());
    println!(
        "{backend:?}: 1,000 tasks with events watched: {baseline:?}; with a stalled subscriber too: {with_slow:?}"
    );
    assert!(
        with_slow < baseline * 3 + Duration::from_secs(1),
        "a stalled subscriber slowed processing: {baseline:?} -> {with_slow:?}"
    );
    // It gets what was buffered for it, or learns what it missed.
    let first = tokio::time::timeout(Duration::from_secs(5), slow.message())
        .await
        .expect("the slow subscriber still gets messages")
        .expect("stream ok")
        .expect("stream open");
    assert!(!first.events.is_empty() || first.dropped > 0);

    stop.cancel();
    for handle in handles {
        handle.await.unwrap();
    }
    for dispatcher in dispatchers {
        dispatcher.stop().await.unwrap();
    }
    front.stop().await.unwrap();
}

async fn worker_events_follow_sessions(backend: Backend) {
    let Some(cluster) = TestCluster::start(backend).await else {
        return;
    };
    let mut stream = cluster
        .results()
        .watch_events(pb::WatchEventsRequest {
            kinds: vec![
                pb::EventKind::WorkerOnline as i32,
                pb::EventKind::WorkerOffline as i32,
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let stop = CancellationToken::new();
    let worker = Worker::from_channel(cluster.channel.clone())
        .worker_id("watched-worker")
        .register("noop", |_ctx: TaskContext| async { Ok(Value::Null) })
        .build()
        .unwrap();
    let handle = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = worker.run_until(stop.cancelled_owned()).await;
        })
    };
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 2 {
        let message = tokio::time::timeout(deadline - Instant::now(), stream.message())
            .await
            .expect("worker events in time")
            .unwrap()
            .unwrap();
        for event in message.events {
            assert_eq!(event.worker_id, "watched-worker");
            assert_eq!(event.namespace, "default");
            assert!(event.task_id.is_empty());
            seen.push(pb::EventKind::try_from(event.kind).unwrap());
        }
        if seen.len() == 1 {
            stop.cancel();
        }
    }
    assert_eq!(
        seen,
        [pb::EventKind::WorkerOnline, pb::EventKind::WorkerOffline]
    );
    handle.await.unwrap();

    // Bad filters are refused with the field named.
    let status = cluster
        .results()
        .watch_events(pb::WatchEventsRequest {
            kinds: vec![99],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("kinds[0]"),
        "{}",
        status.message()
    );
    cluster.stop().await.unwrap();
}
