//! The platform end to end over real gRPC on loopback, each test once on the
//! memory store and once on real Redis.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use conveyor_api::pb::{self, connect_response::Message as Down};
use conveyor_tests::raw_worker::hello;
use conveyor_tests::{Backend, RawWorker, TestCluster, eventually, on_both_stores, spec};
use conveyor_tests::{get, state, submit};

on_both_stores!(
    ten_thousand_tasks_over_three_workers,
    dropped_stream_requeues_within_a_second,
    stale_and_foreign_outcomes_are_refused,
    silent_worker_loses_leases_within_three_heartbeats,
    wait_returns_promptly_and_times_out_cleanly,
    watch_streams_every_state,
    countdown_runs_after_its_delay,
    cancel_before_start,
);

/// A raw worker loop for `add`: runs every assignment at once, reports the
/// frame's outcomes together and grants the credits back. Counts executions.
async fn run_adder(
    mut worker: RawWorker,
    concurrency: u32,
    executions: Arc<Mutex<HashMap<String, u32>>>,
    accepted: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    worker.grant(concurrency).await;
    let mut beat = tokio::time::interval(Duration::from_millis(100));
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            _ = beat.tick() => { worker.heartbeat().await; continue; }
            message = worker.next(Duration::from_secs(30)) => message,
        };
        let batch = match message {
            Some(Ok(Down::Assignments(batch))) => batch.assignments,
            Some(Ok(Down::OutcomeRejected(rejected))) => panic!("outcome rejected: {rejected:?}"),
            Some(Ok(_)) => continue,
            _ => return,
        };
        let mut outcomes = Vec::with_capacity(batch.len());
        {
            let mut executions = executions.lock().await;
            for assignment in &batch {
                *executions.entry(assignment.task_id.clone()).or_default() += 1;
                let left: i64 = serde_json::from_slice(&assignment.args[0].data).expect("int");
                let right: i64 = serde_json::from_slice(&assignment.args[1].data).expect("int");
                outcomes.push(pb::TaskOutcome {
                    task_id: assignment.task_id.clone(),
                    lease_token: assignment.lease_token,
                    outcome: Some(pb::task_outcome::Outcome::Result(conveyor_tests::json(
                        json!(left + right),
                    ))),
                });
            }
        }
        accepted.fetch_add(outcomes.len() as u64, Ordering::Relaxed);
        let count = outcomes.len() as u32;
        worker.report(outcomes).await;
        worker.grant(count).await;
    }
}

async fn ten_thousand_tasks_over_three_workers(backend: Backend) {
    let Some(cluster) = TestCluster::start(backend).await else {
        return;
    };
    let total = 10_000usize;
    let mut ids = Vec::with_capacity(total);
    for chunk in 0..(total / 1000) {
        let tasks = (0..1000)
            .map(|index| {
                let n = (chunk * 1000 + index) as i64;
                spec("add", &[json!(n), json!(1)])
            })
            .collect();
        let response = cluster
            .submission()
            .submit_tasks(pb::SubmitTasksRequest {
                tasks,
                ..Default::default()
            })
            .await
            .expect("submit batch")
            .into_inner();
        ids.extend(response.results.into_iter().map(|result| result.task_id));
    }
    let executions = Arc::new(Mutex::new(HashMap::new()));
    let accepted = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    for index in 0..3 {
        let worker = RawWorker::connect(
            cluster.channel.clone(),
            hello(&format!("w{index}"), &["add"], 4),
        )
        .await
        .expect("connect");
        workers.push(tokio::spawn(run_adder(
            worker,
            4,
            executions.clone(),
            accepted.clone(),
            stop.clone(),
        )));
    }
    let started = Instant::now();
    let done = eventually(Duration::from_secs(120), || {
        let accepted = accepted.clone();
        async move { accepted.load(Ordering::Relaxed) >= total as u64 }
    })
    .await;
    let elapsed = started.elapsed();
    stop.cancel();
    for worker in workers {
        worker.await.expect("worker task");
    }
    assert!(
        done,
        "only {} of {total} outcomes accepted",
        accepted.load(Ordering::Relaxed)
    );
    let executions = executions.lock().await;
    let duplicates = executions.values().filter(|count| **count > 1).count();
    println!(
        "{backend:?}: {total} tasks in {elapsed:?} ({:.0}/s), {} executed, {duplicates} executed twice",
        total as f64 / elapsed.as_secs_f64(),
        executions.len()
    );
    assert_eq!(executions.len(), total);
    assert_eq!(duplicates, 0, "no worker died, so nothing may run twice");
    for (index, id) in ids.iter().enumerate().step_by(97) {
        let task = get(&cluster, id).await;
        assert_eq!(state(&task), pb::TaskState::Succeeded);
        assert_eq!(task.attempt, 1);
        let value: i64 = serde_json::from_slice(&task.result.expect("result").data).unwrap();
        assert_eq!(value, index as i64 + 1);
    }
    for id in &ids {
        assert_eq!(
            state(&get(&cluster, id).await),
            pb::TaskState::Succeeded,
            "task {id}"
        );
    }
    cluster.stop().await.expect("clean shutdown");
}

async fn dropped_stream_requeues_within_a_second(backend: Backend) {
    let Some(cluster) = TestCluster::start(backend).await else {
        return;
    };
    let id = submit(&cluster, spec("add", &[json!(1), json!(2)])).await;
    let mut first = RawWorker::connect(cluster.channel.clone(), hello("first", &["add"], 1))
        .await
        .unwrap();
    first.grant(1).await;
    let assigned = first.assignments(1, Duration::from_secs(5)).await;
    assert_eq!(assigned[0].task_id, id);
    assert_eq!(assigned[0].attempt, 1);
    let mut second = RawWorker::connect(cluster.channel.clone(), hello("second", &["add"], 1))
        .await
        .unwrap();
    second.grant(1).await;
    // Let the second session find the queue empty and start waiting.
    assert!(
        second
            .assignments(1, Duration::from_millis(100))
            .await
            .is_empty()
    );
    let dropped_at = Instant::now();
    first.drop_stream();
    let again = second.assignments(1, Duration::from_secs(5)).await;
    let delay = dropped_at.elapsed();
    assert_eq!(again.len(), 1, "the task must be re-leased");
    assert_eq!(again[0].task_id, id);
    assert_eq!(again[0].attempt, 2);
    assert!(again[0].lease_token > assigned[0].lease_token);
    assert!(delay < Duration::from_secs(1), "re-leased after {delay:?}");
    println!("{backend:?}: re-leased {delay:?} after the drop");
    second
        .succeed(&id, again[0].lease_token, conveyor_tests::json(json!(3)))
        .await;
    let done = eventually(Duration::from_secs(5), || async {
        state(&get(&cluster, &id).await) == pb::TaskState::Succeeded
    })
    .await;
    assert!(done);
}

async fn stale_and_foreign_outcomes_are_refused(backend: Backend) {
    let Some(cluster) = TestCluster::start(backend).await else {
        return;
    };
    let id = submit(&cluster, spec("add", &[json!(1), json!(2)])).await;
    let other = submit(&cluster, spec("mul", &[json!(1), json!(2)])).await;
    let mut worker = RawWorker::connect(cluster.channel.clone(), hello("w", &["add"], 1))
        .await
        .unwrap();
    worker.grant(1).await;
    let assignment = worker
        .assignments(1, Duration::from_secs(5))
        .await
        .remove(0);
    // A stale token for a task it holds.
    worker
        .succeed(
            &id,
            assignment.lease_token + 7,
            conveyor_tests::json(json!(666)),
        )
        .await;
    match worker.next(Duration::from_secs(5)).await {
        Some(Ok(Down::OutcomeRejected(rejected))) => {
            assert_eq!(rejected.task_id, id);
            assert_eq!(rejected.code, Code::FailedPrecondition as i32);
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    // A task it never held.
    worker
        .succeed(&other, 1, conveyor_tests::json(json!(666)))
        .await;
    match worker.next(Duration::from_secs(5)).await {
        Some(Ok(Down::OutcomeRejected(rejected))) => {
            assert_eq!(rejected.task_id, other);
            assert_eq!(rejected.code, Code::FailedPrecondition as i32);
        }
        unexpected => panic!("expected a rejection, got {unexpected:?}"),
    }
    let held = get(&cluster, &id).await;
    assert_eq!(state(&held), pb::TaskState::Leased);
    assert!(held.result.is_none());
    let untouched = get(&cluster, &other).await;
    assert_eq!(
        (state(&untouched), untouched.attempt),
        (pb::TaskState::Queued, 0)
    );
    // The stream stays usable: the right token is recorded.
    worker
        .succeed(&id, assignment.lease_token, conveyor_tests::json(json!(3)))
        .await;
    let recorded = eventually(Duration::from_secs(5), || async {
        state(&get(&cluster, &id).await) == pb::TaskState::Succeeded
    })
    .await;
    assert!(recorded);
    assert_eq!(get(&cluster, &id).await.result.unwrap().data, b"3");
    // Once recorded, even the right token cannot overwrite it.
    worker
        .succeed(
            &id,
            assignment.lease_token,
            conveyor_tests::json(json!(999)),
        )
        .await;
    assert!(matches!(
        worker.next(Duration::from_secs(5)).await,
        Some(Ok(Down::OutcomeRejected(_)))
    ));
    assert_eq!(get(&cluster, &id).await.result.unwrap().data, b"3");
}

async fn silent_worker_loses_leases_within_three_heartbeats(backend: Backend) {
    let Some(cluster) = TestCluster::start(backend).await else {
        return;
    };
    let id = submit(&cluster, spec("add", &[json!(1), json!(2)])).await;
    let mut silent = RawWorker::connect(cluster.channel.clone(), hello("silent", &["add"], 1))
        .await
        .unwrap();
    let interval = Duration::from_millis(200);
    silent.grant(1).await;
    let last_message = Instant::now();
    let first = silent.assignments(1, Duration::from_secs(5)).await;
    assert_eq!(first.len(), 1);
    let mut rescuer = RawWorker::connect(cluster.channel.clone(), hello("rescuer", &["add"], 1))
        .await
        .unwrap();
    rescuer.grant(1).await;
    let rescue = tokio::spawn(async move {
        let mut beat = tokio::time::interval(Duration::from_millis(50));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            tokio::select! {
                _ = beat.tick() => rescuer.heartbeat().await,
                message = rescuer.next(Duration::from_millis(50)) => {
                    if let Some(Ok(Down::Assignments(batch))) = message {
                        return Some((Instant::now(), batch.assignments));
                    }
                }
            }
        }
        None
    });
    let (rescued_at, assignments) = rescue
        .await
        .unwrap()
        .expect("the task reached the second worker");
    let lost_after = rescued_at - last_message;
    println!("{backend:?}: silent worker's lease moved after {lost_after:?}");
    assert_eq!(assignments[0].task_id, id);
    assert_eq!(assignments[0].attempt, 2);
    assert!(
        lost_after <= interval * 3 + Duration::from_millis(60),
        "took {lost_after:?}"
    );
    // The silent worker's stream ends with UNAVAILABLE.
    match silent.next(Duration::from_secs(2)).await {
        Some(Err(status)) => assert_eq!(status.code(), Code::Unavailable),
        other => panic!("expected the stream to end, got {other:?}"),
    }
}

async fn wait_returns_promptly_and_times_out_cleanly(backend: Backend) {
    let Some(cluster) = TestCluster::start(backend).await else {
        return;
    };
    let id = submit(&cluster, spec("add", &[json!(2), json!(2)])).await;
    // With a deadline and no worker: DEADLINE_EXCEEDED, and nothing changes.
    let before = get(&cluster, &id).await;
    let status = cluster
        .results()
        .wait_task(pb::WaitTaskRequest {
            task_id: id.clone(),
            timeout: Some(prost_types::Duration {
                seconds: 0,
                nanos: 200_000_000,
            }),
            ..Default::default()
        })
        .await
        .expect_err("must time out");
    assert_eq!(status.code(), Code::DeadlineExceeded);
    let after = get(&cluster, &id).await;
    assert_eq!(
        (state(&before), before.attempt, before.updated_at),
        (state(&after), after.attempt, after.updated_at)
    );
    // Waiting, then completing: the waiter returns within 50 ms.
    let mut results = cluster.results();
    let wait_id = id.clone();
    let waiter = tokio::spawn(async move {
        let response = results
            .wait_task(pb::WaitTaskRequest {
                task_id: wait_id,
                timeout: Some(prost_types::Duration {
                    seconds: 10,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .await;
        (Instant::now(), response)
    });
    let mut worker = RawWorker::connect(cluster.channel.clone(), hello("w", &["add"], 1))
        .await
        .unwrap();
    worker.grant(1).await;
    let assignment = worker
        .assignments(1, Duration::from_secs(5))
        .await
        .remove(0);
    tokio::time::sleep(Duration::from_millis(50)).await; // the waiter is parked
    let completed_at = Instant::now();
    worker
        .succeed(&id, assignment.lease_token, conveyor_tests::json(json!(4)))
        .await;
    let (returned_at, response) = waiter.await.unwrap();
    let task = response.expect("wait succeeds").into_inner().task.unwrap();
    let latency = returned_at - completed_at;
    println!("{backend:?}: WaitTask returned {latency:?} after the outcome was sent");
    assert_eq!(state(&task), pb::TaskState::Succeeded);
    assert_eq!(task.result.unwrap().data, b"4");
    assert!(latency < Duration::from_millis(50), "took {latency:?}");
}

async fn watch_streams_every_state(backend: Backend) {
    let Some(cluster) = TestCluster::start(backend).await else {
        return;
    };
    let id = submit(&cluster, spec("add", &[json!(2), json!(2)])).await;
    let mut watch = cluster
        .results()
        .watch_task(pb::WatchTaskRequest {
            task_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap().task.unwrap();
    assert_eq!(state(&first), pb::TaskState::Queued);
    let mut worker = RawWorker::connect(cluster.channel.clone(), hello("w", &["add"], 1))
        .await
        .unwrap();
    worker.grant(1).await;
    let assignment = worker
        .assignments(1, Duration::from_secs(5))
        .await
        .remove(0);
    worker
        .send(pb::connect_request::Message::TaskStarted(pb::TaskStarted {
            task_id: id.clone(),
            lease_token: assignment.lease_token,
        }))
        .await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            state(&get(&cluster, &id).await) == pb::TaskState::Running
        })
        .await
    );
    worker
        .succeed(&id, assignment.lease_token, conveyor_tests::json(json!(4)))
        .await;
    let mut seen = Vec::new();
    while let Some(update) = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .unwrap()
        .unwrap()
    {
        seen.push(state(&update.task.unwrap()));
    }
    assert_eq!(seen.last(), Some(&pb::TaskState::Succeeded), "saw {seen:?}");
    assert!(
        seen.contains(&pb::TaskState::Running) || seen.contains(&pb::TaskState::Leased),
        "saw {seen:?}"
    );
}

async fn countdown_runs_after_its_delay(backend: Backend) {
    let Some(cluster) = TestCluster::start(backend).await else {
        return;
    };
    let mut task = spec("add", &[json!(2), json!(2)]);
    task.options = Some(pb::TaskOptions {
        countdown: Some(prost_types::Duration {
            seconds: 0,
            nanos: 400_000_000,
        }),
        ..Default::default()
    });
    let submitted_at = Instant::now();
    let id = submit(&cluster, task).await;
    assert_eq!(state(&get(&cluster, &id).await), pb::TaskState::Scheduled);
    let mut worker = RawWorker::connect(cluster.channel.clone(), hello("w", &["add"], 1))
        .await
        .unwrap();
    worker.grant(1).await;
    let assigned = worker.assignments(1, Duration::from_secs(5)).await;
    let delay = submitted_at.elapsed();
    assert_eq!(assigned.len(), 1);
    assert!(
        delay >= Duration::from_millis(400),
        "ran early, after {delay:?}"
    );
    assert!(
        delay < Duration::from_millis(1000),
        "ran late, after {delay:?}"
    );
}

async fn cancel_before_start(backend: Backend) {
    let Some(cluster) = TestCluster::start(backend).await else {
        return;
    };
    let id = submit(&cluster, spec("add", &[json!(2), json!(2)])).await;
    let response = cluster
        .submission()
        .cancel_task(pb::CancelTaskRequest {
            task_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(response.cancelled);
    assert_eq!(state(&get(&cluster, &id).await), pb::TaskState::Cancelled);
    let mut worker = RawWorker::connect(cluster.channel.clone(), hello("w", &["add"], 1))
        .await
        .unwrap();
    worker.grant(1).await;
    assert!(
        worker
            .assignments(1, Duration::from_millis(300))
            .await
            .is_empty()
    );
    let again = cluster
        .submission()
        .cancel_task(pb::CancelTaskRequest {
            task_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.cancelled);
    let missing = cluster
        .submission()
        .cancel_task(pb::CancelTaskRequest {
            task_id: uuid::Uuid::now_v7().to_string(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}
