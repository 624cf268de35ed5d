//! The worker's side of the dispatch protocol, checked against a scripted
//! fake dispatcher (not the real service, whose tests live in `tests/`).

mod support;

use std::sync::Arc;
use std::time::Duration;

use conveyor_client::pb::connect_request::Message as FromWorker;
use conveyor_client::pb::connect_response::Message as ToWorker;
use conveyor_client::pb::{self, task_outcome::Outcome};
use conveyor_client::{Error, TaskContext, TaskFailure, Worker};
use serde_json::json;
use tokio::sync::Notify;
use tonic::Status;

use crate::support::{STEP, fake_dispatcher, gated, next_session, payload, spawn_worker};

#[tokio::test]
async fn runs_assignments_and_reports_outcomes() {
    let (addr, mut sessions) = fake_dispatcher().await;
    let builder = Worker::builder(addr)
        .worker_id("w-1")
        .concurrency(2)
        .register("add", |ctx: TaskContext| async move {
            Ok(json!(ctx.arg::<i64>(0)? + ctx.arg::<i64>(1)?))
        })
        .register("boom", |_ctx: TaskContext| async move { panic!("kaboom") })
        .register("fail", |_ctx: TaskContext| async move {
            Err(TaskFailure::new("ValueError", "bad").non_retryable())
        });
    let (stop, worker) = spawn_worker(builder);
    let mut session = next_session(&mut sessions).await;

    let hello = session.accept().await;
    assert_eq!(hello.worker_id, "w-1");
    assert_eq!(hello.queues, vec!["default"]);
    assert_eq!(hello.task_names, vec!["add", "boom", "fail"]);
    assert_eq!((hello.concurrency, hello.language.as_str()), (2, "rust"));
    assert_eq!(session.expect_credits().await, 2);

    session.assign("t1", "add", json!([2, 3]), 11);
    session.assign("t2", "boom", json!([]), 12);
    let outcomes = session.outcomes(2).await;
    assert_eq!(
        (outcomes[0].task_id.as_str(), outcomes[0].lease_token),
        ("t1", 11)
    );
    assert_eq!(
        outcomes[0].outcome,
        Some(Outcome::Result(payload(&json!(5))))
    );
    let Some(Outcome::Error(panic)) = &outcomes[1].outcome else {
        panic!("expected error")
    };
    assert_eq!(
        (panic.r#type.as_str(), panic.message.as_str()),
        ("panic", "kaboom")
    );

    session.assign("t3", "fail", json!([]), 13);
    let outcomes = session.outcomes(1).await;
    let Some(Outcome::Error(error)) = &outcomes[0].outcome else {
        panic!("expected error")
    };
    assert_eq!(
        (error.r#type.as_str(), error.retryable),
        ("ValueError", false)
    );

    stop.send(()).expect("worker running");
    while session.next().await.is_some() {}
    drop(session);
    worker.await.expect("joins").expect("clean stop");
}

#[tokio::test]
async fn cancel_drops_the_outcome_and_frees_the_slot() {
    let (addr, mut sessions) = fake_dispatcher().await;
    let builder = Worker::builder(addr).register("wait", |ctx: TaskContext| async move {
        ctx.cancelled().await;
        Ok(json!("stopped"))
    });
    let (_stop, _worker) = spawn_worker(builder);
    let mut session = next_session(&mut sessions).await;
    session.accept().await;
    assert_eq!(session.expect_credits().await, 1);

    session.assign("t1", "wait", json!([]), 1);
    let Some(FromWorker::TaskStarted(started)) = session.next().await else {
        panic!("expected TaskStarted")
    };
    assert_eq!((started.task_id.as_str(), started.lease_token), ("t1", 1));
    session.send(ToWorker::CancelAssignment(pb::CancelAssignment {
        task_id: "t1".into(),
        reason: "revoked".into(),
        ..Default::default()
    }));
    assert_eq!(
        session.expect_credits().await,
        1,
        "slot freed, no outcome reported"
    );
}

#[tokio::test]
async fn reconnects_and_abandons_the_broken_sessions_tasks() {
    let (addr, mut sessions) = fake_dispatcher().await;
    let gate = Arc::new(Notify::new());
    let builder = Worker::builder(addr).register("wait", gated(&gate));
    let (_stop, _worker) = spawn_worker(builder);
    let mut first = next_session(&mut sessions).await;
    first.accept().await;
    assert_eq!(first.expect_credits().await, 1);
    first.assign("t1", "wait", json!([]), 1);
    assert!(matches!(
        first.next().await,
        Some(FromWorker::TaskStarted(_))
    ));
    let _ = first
        .to_worker
        .send(Err(Status::unavailable("dispatcher restarting")));

    let mut second = next_session(&mut sessions).await;
    second.accept().await;
    // The abandoned task still holds the only slot: no credit until it ends,
    // and its outcome must not travel on the new stream.
    let early = tokio::time::timeout(Duration::from_millis(200), second.next()).await;
    assert!(early.is_err(), "nothing before the slot frees: {early:?}");
    gate.notify_one();
    assert_eq!(second.expect_credits().await, 1);
    let late = tokio::time::timeout(Duration::from_millis(200), second.next()).await;
    assert!(late.is_err(), "no outcome of the old session: {late:?}");
}

#[tokio::test]
async fn parity_reconnect_after_drain_finishes_running_tasks_then_opens_a_new_connection() {
    let (addr, mut sessions) = fake_dispatcher().await;
    let gate = Arc::new(Notify::new());
    let builder = Worker::builder(addr)
        .concurrency(2)
        .register("wait", gated(&gate));
    let (_stop, _worker) = spawn_worker(builder);
    let mut session = next_session(&mut sessions).await;
    session.accept().await;
    assert_eq!(session.expect_credits().await, 2);
    session.assign("t1", "wait", json!([]), 1);
    assert!(matches!(
        session.next().await,
        Some(FromWorker::TaskStarted(_))
    ));

    let first_peer = session.peer;
    session.send(ToWorker::Drain(pb::Drain {
        grace: Some(prost_types::Duration {
            seconds: 5,
            nanos: 0,
        }),
        reason: pb::DrainReason::Rebalance as i32,
    }));
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.notify_one();
    let outcomes = session.outcomes(1).await;
    assert_eq!(
        outcomes[0].outcome,
        Some(Outcome::Result(payload(&json!("released"))))
    );
    assert!(
        session.next().await.is_none(),
        "worker closes its side, granting nothing more"
    );
    drop(session);

    let mut again = next_session(&mut sessions).await;
    // On a new connection: a load balancer may then send it elsewhere.
    assert!(first_peer.is_some());
    assert_ne!(
        again.peer, first_peer,
        "the session after a drain came on the drained connection"
    );
    again.accept().await;
    assert_eq!(again.expect_credits().await, 2);
}

#[tokio::test]
async fn shutdown_waits_for_running_tasks_up_to_the_grace_period() {
    let (addr, mut sessions) = fake_dispatcher().await;
    let gate = Arc::new(Notify::new());
    let builder = Worker::builder(addr)
        .grace_period(Duration::from_millis(300))
        .register("wait", gated(&gate));
    let (stop, worker) = spawn_worker(builder);
    let mut session = next_session(&mut sessions).await;
    session.accept().await;
    assert_eq!(session.expect_credits().await, 1);
    session.assign("t1", "wait", json!([]), 1);
    assert!(matches!(
        session.next().await,
        Some(FromWorker::TaskStarted(_))
    ));

    let started = tokio::time::Instant::now();
    stop.send(()).expect("worker running");
    assert!(
        session.next().await.is_none(),
        "closed after the grace period"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "waited for the task"
    );
    drop(session);
    worker.await.expect("joins").expect("clean stop");
}

#[tokio::test]
async fn a_first_message_other_than_welcome_is_an_error() {
    let (addr, mut sessions) = fake_dispatcher().await;
    let builder =
        Worker::builder(addr).register("add", |_ctx: TaskContext| async move { Ok(json!(null)) });
    let (_stop, worker) = spawn_worker(builder);
    let mut session = next_session(&mut sessions).await;
    assert!(matches!(session.next().await, Some(FromWorker::Hello(_))));
    session.send(ToWorker::Drain(pb::Drain::default()));
    let result = tokio::time::timeout(STEP, worker)
        .await
        .expect("stops")
        .expect("joins");
    assert!(matches!(result, Err(Error::Protocol(_))), "{result:?}");
}

#[test]
fn build_rejects_unusable_settings() {
    let no_handler = Worker::builder("http://127.0.0.1:1").build();
    assert!(matches!(no_handler, Err(Error::Config(_))));
    let handler = |_ctx: TaskContext| async move { Ok(json!(null)) };
    let zero = Worker::builder("http://127.0.0.1:1")
        .concurrency(0)
        .register("t", handler)
        .build();
    assert!(matches!(zero, Err(Error::Config(_))));
    let bad_endpoint = Worker::builder("not a uri").register("t", handler).build();
    assert!(matches!(bad_endpoint, Err(Error::Transport(_))));
}

#[tokio::test]
async fn heartbeats_at_the_interval_and_reports_outcomes_before_stopping() {
    let (addr, mut sessions) = fake_dispatcher().await;
    let gate = Arc::new(Notify::new());
    let builder = Worker::builder(addr)
        .heartbeat_override(Some(Duration::from_millis(30)))
        .register("wait", gated(&gate));
    let (stop, worker) = spawn_worker(builder);
    let mut session = next_session(&mut sessions).await;
    session.accept().await;
    let mut heartbeats = 0;
    let window = tokio::time::sleep(Duration::from_millis(250));
    tokio::pin!(window);
    loop {
        tokio::select! {
            () = &mut window => break,
            message = session.from_worker.message() => {
                let message = message.expect("stream ok").expect("stream open").message;
                if matches!(message, Some(FromWorker::Heartbeat(_))) {
                    heartbeats += 1;
                }
            }
        }
    }
    assert!(
        (4..=10).contains(&heartbeats),
        "{heartbeats} heartbeats in 250ms at 30ms"
    );

    session.assign("t1", "wait", json!([]), 1);
    assert!(matches!(
        session.next().await,
        Some(FromWorker::TaskStarted(_))
    ));
    stop.send(()).expect("worker running");
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.notify_one();
    let outcomes = session.outcomes(1).await;
    assert_eq!(
        outcomes[0].task_id, "t1",
        "the running task finishes within the grace period"
    );
    assert!(session.next().await.is_none());
    drop(session);
    worker.await.expect("joins").expect("clean stop");
}
