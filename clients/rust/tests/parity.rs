//! The parity rows of `docs/sdk-parity.md` for the Rust SDK, one
//! `parity_<row>` test each, against a real `conveyor dev` (except
//! `parity_eager_mode`, which runs in-process), and the snippets of
//! `clients/rust/README.md`, which are compiled here (module `readme`) and
//! kept identical to the README by `readme_snippets_are_compiled_here`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use conveyor_client::pb::dispatch_service_client::DispatchServiceClient;
use conveyor_client::pb::scheduling_service_client::SchedulingServiceClient;
use conveyor_client::{Client, Error, TaskContext, TaskFailure, TaskRequest, Worker, pb};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The longest any step waits before the test fails.
const STEP: Duration = Duration::from_secs(15);

mod dev_server;
use dev_server::Server;

/// What the parity tests need of a server beyond starting it.
trait ServerExt {
    async fn start_for_tests(args: &[&str]) -> Server;
    async fn channel(&self) -> tonic::transport::Channel;
    async fn client(&self) -> Client;
}

impl ServerExt for Server {
    /// A dev server with short heartbeats and leases, tracking starts.
    async fn start_for_tests(args: &[&str]) -> Server {
        let mut all = vec![
            "--heartbeat-interval",
            "200ms",
            "--lease-ttl",
            "1s",
            "--track-started",
        ];
        all.extend(args);
        Server::start(&all).await
    }

    async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.endpoint.clone())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect")
    }

    async fn client(&self) -> Client {
        Client::connect(self.endpoint.clone())
            .await
            .expect("connect")
    }
}

/// A worker running in this process until `stop` is cancelled.
struct RunningWorker {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<conveyor_client::Result<()>>,
}

impl RunningWorker {
    fn spawn(builder: conveyor_client::WorkerBuilder) -> RunningWorker {
        let stop = CancellationToken::new();
        let worker = builder
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
            .grace_period(Duration::from_secs(10))
            .build()
            .expect("valid worker");
        let handle = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));
        RunningWorker { stop, handle }
    }

    async fn shutdown(self) {
        self.stop.cancel();
        let result = tokio::time::timeout(STEP, self.handle)
            .await
            .expect("the worker stops in time")
            .expect("the worker task did not panic");
        result.expect("the worker ran without error");
    }
}

async fn add(ctx: TaskContext) -> Result<Value, TaskFailure> {
    let (a, b): (i64, i64) = (ctx.arg(0)?, ctx.arg(1)?);
    Ok(json!(a + b))
}

fn state(task: &pb::Task) -> pb::TaskState {
    pb::TaskState::try_from(task.state).expect("a known state")
}

fn adder(server: &Server, queue: &str) -> RunningWorker {
    RunningWorker::spawn(
        Worker::builder(server.endpoint.clone())
            .queues([queue])
            .concurrency(4)
            .register("add", add),
    )
}

fn add_task(queue: &str, a: i64, b: i64) -> TaskRequest {
    TaskRequest::new("add").arg(a).arg(b).queue(queue)
}

/// Polls `get` until `done(task)` holds or STEP passes.
async fn get_until(client: &Client, id: &str, done: impl Fn(&pb::Task) -> bool) -> pb::Task {
    let deadline = Instant::now() + STEP;
    loop {
        let task = client.get(id).await.expect("get");
        if done(&task) {
            return task;
        }
        assert!(Instant::now() < deadline, "task never got there: {task:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// --- client side ---------------------------------------------------------------------

/// Three tasks in a ring of keys (a: k0+k1, b: k1+k2, c: k2+k0), limit 1
/// each: no two sharing a key overlap; a key named twice is refused.
#[tokio::test]
async fn parity_concurrency_keys() {
    let server = Server::start_for_tests(&[]).await;
    let client = server.client().await;
    let spans: Arc<std::sync::Mutex<Vec<(usize, Instant, Instant)>>> = Arc::default();
    let record = spans.clone();
    let worker = RunningWorker::spawn(
        Worker::builder(server.endpoint.clone())
            .queues(["keys"])
            .concurrency(4)
            .register("hold", move |ctx: TaskContext| {
                let record = record.clone();
                async move {
                    let index: usize = ctx.arg(0)?;
                    let start = Instant::now();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    record.lock().unwrap().push((index, start, Instant::now()));
                    Ok(Value::Null)
                }
            }),
    );
    let key = |index: usize| format!("k{}", index % 3);
    let ids = client
        .submit_many(
            (0..6)
                .map(|index| {
                    TaskRequest::new("hold")
                        .queue("keys")
                        .arg(index % 3)
                        .concurrency_limit(key(index), 1)
                        .concurrency_limit(key(index + 1), 1)
                })
                .collect(),
        )
        .await
        .expect("submit");
    for id in &ids {
        client
            .result::<Value>(id, STEP)
            .await
            .expect("every task runs");
    }
    worker.shutdown().await;
    let spans = spans.lock().unwrap().clone();
    assert_eq!(spans.len(), 6);
    // Any two of the ring share a key: none may overlap.
    for (i, (_, start, end)) in spans.iter().enumerate() {
        for (other_start, other_end) in spans[i + 1..].iter().map(|(_, s, e)| (s, e)) {
            assert!(
                end <= other_start || other_end <= start,
                "two tasks sharing a key overlapped"
            );
        }
    }
    let error = client
        .submit(
            TaskRequest::new("hold")
                .concurrency_limit("k0", 1)
                .concurrency_limit("k0", 1),
        )
        .await
        .expect_err("a key named twice");
    match error {
        Error::Rpc(status) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains("concurrency_keys"), "{status:?}");
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

/// `examples/philosophers.rs`, as its doc says to run it, against a dev
/// server: every philosopher eats, at most two at once, no fork shared.
#[tokio::test]
async fn the_philosophers_example_runs() {
    let Some(example) = std::env::current_exe().ok().and_then(|exe| {
        let path = exe
            .parent()?
            .parent()?
            .join("examples")
            .join("philosophers");
        path.exists().then_some(path)
    }) else {
        panic!("build the examples first: cargo build -p conveyor-client --examples");
    };
    let server = Server::start_for_tests(&[]).await;
    let output = tokio::process::Command::new(example)
        .env("CONVEYOR_ADDR", &server.endpoint)
        .env("MEALS", "4")
        .output()
        .await
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for philosopher in 0..5 {
        assert!(
            stdout.contains(&format!("philosopher {philosopher} ate 4 meals")),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains("meals that overlapped a neighbour's: 0"),
        "{stdout}"
    );
}

#[tokio::test]
async fn parity_submit() {
    let server = Server::start_for_tests(&[]).await;
    let worker = adder(&server, "p-submit");
    let client = server.client().await;
    let id = client.submit(add_task("p-submit", 2, 3)).await.unwrap();
    assert_eq!(id.len(), 36, "a hyphenated UUID: {id}");
    let sum: i64 = client.result(&id, STEP).await.unwrap();
    assert_eq!(sum, 5);
    worker.shutdown().await;
}

/// The general address answers nothing; every call reaches the server
/// through its service's entry.
#[tokio::test]
async fn parity_per_service_endpoints() {
    let server = Server::start_for_tests(&[]).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let endpoints = conveyor_client::Endpoints::default()
        .submission(server.endpoint.clone())
        .results(server.endpoint.clone())
        .dispatch(server.endpoint.clone());
    let worker = RunningWorker::spawn(
        Worker::builder_endpoints(dead.clone(), &endpoints)
            .queues(["p-endpoints"])
            .concurrency(4)
            .register("add", add),
    );
    let client = Client::connect_endpoints(dead.clone(), &endpoints)
        .await
        .unwrap();
    let id = client.submit(add_task("p-endpoints", 4, 5)).await.unwrap();
    assert_eq!(client.result::<i64>(&id, STEP).await.unwrap(), 9);
    // Without the entries, the calls go to the general address.
    let unreachable = Client::connect_endpoints(dead, &conveyor_client::Endpoints::default()).await;
    if std::env::var("CONVEYOR_SUBMISSION_ADDR").is_err() {
        assert!(unreachable.is_err(), "the dead general address was used");
    }
    worker.shutdown().await;
}

#[tokio::test]
async fn parity_submit_many() {
    let server = Server::start_for_tests(&[]).await;
    let worker = adder(&server, "p-many");
    let client = server.client().await;
    let tasks = (1..=3).map(|n| add_task("p-many", n, n)).collect();
    let ids = client.submit_many(tasks).await.unwrap();
    assert_eq!(ids.len(), 3);
    let mut sums = Vec::new();
    for id in &ids {
        sums.push(client.result::<i64>(id, STEP).await.unwrap());
    }
    assert_eq!(sums, vec![2, 4, 6], "results in submission order");
    worker.shutdown().await;
}

#[tokio::test]
async fn parity_get() {
    let server = Server::start_for_tests(&[]).await;
    let client = server.client().await;
    let id = client.submit(add_task("p-get", 2, 3)).await.unwrap();
    let queued = client.get(&id).await.unwrap();
    assert_eq!(
        (state(&queued), queued.name.as_str()),
        (pb::TaskState::Queued, "add")
    );
    let worker = adder(&server, "p-get");
    let done = get_until(&client, &id, |task| state(task) == pb::TaskState::Succeeded).await;
    assert_eq!(done.result.expect("a result").data, b"5");
    let missing = client.get("01a20142-922e-703f-8c4d-8ef264590000").await;
    assert_eq!(missing.unwrap_err().code(), Some(tonic::Code::NotFound));
    worker.shutdown().await;
}

#[tokio::test]
async fn parity_wait() {
    let server = Server::start_for_tests(&[]).await;
    let client = server.client().await;
    let id = client.submit(add_task("p-wait", 20, 22)).await.unwrap();
    let early = client.wait(&id, Duration::from_millis(300)).await;
    assert!(
        early.as_ref().is_err_and(Error::is_timeout),
        "no worker yet: {early:?}"
    );
    let worker = adder(&server, "p-wait");
    let task = client.wait(&id, STEP).await.unwrap();
    assert_eq!(state(&task), pb::TaskState::Succeeded);
    assert_eq!(client.result::<i64>(&id, STEP).await.unwrap(), 42);
    worker.shutdown().await;
}

#[tokio::test]
async fn parity_watch() {
    let server = Server::start_for_tests(&[]).await;
    let client = server.client().await;
    let id = client.submit(add_task("p-watch", 1, 1)).await.unwrap();
    let mut updates = client.watch(&id).await.unwrap();
    let first = updates.next().await.expect("an update").unwrap();
    assert_eq!(state(&first), pb::TaskState::Queued);
    let worker = adder(&server, "p-watch");
    let mut seen = vec![state(&first)];
    while let Some(update) = tokio::time::timeout(STEP, updates.next())
        .await
        .expect("updates in time")
    {
        seen.push(state(&update.unwrap()));
    }
    assert_eq!(seen.last(), Some(&pb::TaskState::Succeeded), "{seen:?}");
    worker.shutdown().await;
}

#[tokio::test]
async fn parity_cancel() {
    let server = Server::start_for_tests(&[]).await;
    let client = server.client().await;
    let id = client.submit(add_task("p-cancel", 1, 1)).await.unwrap();
    assert!(
        client.cancel(&id).await.unwrap(),
        "a queued task is cancelled"
    );
    assert_eq!(
        state(&client.get(&id).await.unwrap()),
        pb::TaskState::Cancelled
    );
    assert!(!client.cancel(&id).await.unwrap(), "already cancelled");
    let worker = adder(&server, "p-cancel");
    let later = client.submit(add_task("p-cancel", 2, 2)).await.unwrap();
    assert_eq!(client.result::<i64>(&later, STEP).await.unwrap(), 4);
    assert_eq!(
        state(&client.get(&id).await.unwrap()),
        pb::TaskState::Cancelled,
        "the cancelled task never ran"
    );
    worker.shutdown().await;
}

/// A worker whose `flaky` fails (not retryable) on its first call only.
fn flaky_worker(server: &Server, queue: &str) -> RunningWorker {
    let calls = Arc::new(AtomicU32::new(0));
    RunningWorker::spawn(
        Worker::builder(server.endpoint.clone())
            .queues([queue])
            .register("flaky", move |_ctx: TaskContext| {
                let call = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if call == 0 {
                        Err(TaskFailure::new("ValueError", "first call fails").non_retryable())
                    } else {
                        Ok(json!("fixed"))
                    }
                }
            }),
    )
}

/// Submits `flaky` and waits for it to fail: a dead letter.
async fn dead_letter(client: &Client, queue: &str) -> String {
    let id = client
        .submit(TaskRequest::new("flaky").queue(queue))
        .await
        .unwrap();
    let failed = client.wait(&id, STEP).await.unwrap();
    assert_eq!(state(&failed), pb::TaskState::Failed);
    id
}

#[tokio::test]
async fn parity_replay() {
    let server = Server::start_for_tests(&[]).await;
    let worker = flaky_worker(&server, "p-replay");
    let client = server.client().await;
    let id = dead_letter(&client, "p-replay").await;
    let request = client.request(pb::ReplayTaskRequest {
        task_id: id.clone(),
        ..Default::default()
    });
    client
        .submission_client()
        .replay_task(request)
        .await
        .unwrap();
    let fixed: String = client.result(&id, STEP).await.unwrap();
    assert_eq!(fixed, "fixed", "the replay ran under the same id");
    let request = client.request(pb::ReplayTaskRequest {
        task_id: id,
        ..Default::default()
    });
    let refused = client.submission_client().replay_task(request).await;
    assert_eq!(
        refused.unwrap_err().code(),
        tonic::Code::FailedPrecondition,
        "only a failed task can be replayed"
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn parity_forget() {
    let server = Server::start_for_tests(&[]).await;
    let worker = adder(&server, "p-forget");
    let client = server.client().await;
    let id = client.submit(add_task("p-forget", 1, 2)).await.unwrap();
    assert_eq!(client.result::<i64>(&id, STEP).await.unwrap(), 3);
    let request = client.request(pb::ForgetTaskRequest {
        task_id: id.clone(),
        ..Default::default()
    });
    client.results_client().forget_task(request).await.unwrap();
    let gone = client.get(&id).await.unwrap_err();
    assert_eq!(gone.code(), Some(tonic::Code::NotFound), "{gone:?}");
    worker.shutdown().await;
}

#[tokio::test]
async fn parity_dead_letters() {
    let server = Server::start_for_tests(&[]).await;
    let worker = flaky_worker(&server, "p-dead");
    let client = server.client().await;
    let id = dead_letter(&client, "p-dead").await;
    let request = client.request(pb::ListDeadLettersRequest {
        page_size: 10,
        page_token: String::new(),
        ..Default::default()
    });
    let letters = client
        .results_client()
        .list_dead_letters(request)
        .await
        .unwrap()
        .into_inner()
        .tasks;
    let letter = letters
        .iter()
        .find(|task| task.id == id)
        .expect("the failed task is a dead letter");
    let error = letter.error.as_ref().expect("its error");
    assert_eq!(
        (error.r#type.as_str(), error.message.as_str()),
        ("ValueError", "first call fails")
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn parity_schedules_crud() {
    let server = Server::start_for_tests(&[]).await;
    let client = server.client().await;
    let mut schedules = SchedulingServiceClient::new(server.channel().await);
    let every = |seconds| {
        Some(pb::schedule::Rule::Interval(pb::IntervalRule {
            every: Some(prost_types::Duration { seconds, nanos: 0 }),
        }))
    };
    let schedule = pb::Schedule {
        id: "parity-rust".into(),
        task: Some(add_task("p-sched", 1, 1).into_spec().unwrap()),
        rule: every(3600),
        ..Default::default()
    };
    let created = schedules
        .create_schedule(client.request(pb::CreateScheduleRequest {
            schedule: Some(schedule.clone()),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert!(created.next_run_at.is_some(), "{created:?}");
    let got = schedules
        .get_schedule(client.request(pb::GetScheduleRequest {
            id: "parity-rust".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert_eq!(got.rule, every(3600));
    let listed = schedules
        .list_schedules(client.request(pb::ListSchedulesRequest {
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .schedules;
    assert!(listed.iter().any(|s| s.id == "parity-rust"), "{listed:?}");
    let updated = schedules
        .update_schedule(client.request(pb::UpdateScheduleRequest {
            schedule: Some(pb::Schedule {
                rule: every(7200),
                ..schedule
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert_eq!(updated.rule, every(7200));
    schedules
        .delete_schedule(client.request(pb::DeleteScheduleRequest {
            id: "parity-rust".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    let gone = schedules
        .get_schedule(client.request(pb::GetScheduleRequest {
            id: "parity-rust".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn parity_pause_queue() {
    let server = Server::start_for_tests(&[]).await;
    let client = server.client().await;
    let mut dispatch = DispatchServiceClient::new(server.channel().await);
    dispatch
        .pause_queue(client.request(pb::PauseQueueRequest {
            queue: "p-pause".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    let worker = adder(&server, "p-pause");
    let id = client.submit(add_task("p-pause", 1, 2)).await.unwrap();
    let held = client.wait(&id, Duration::from_millis(1500)).await;
    assert!(
        held.as_ref().is_err_and(Error::is_timeout),
        "a paused queue's task ran: {held:?}"
    );
    assert_eq!(
        state(&client.get(&id).await.unwrap()),
        pb::TaskState::Queued
    );
    dispatch
        .resume_queue(client.request(pb::ResumeQueueRequest {
            queue: "p-pause".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(client.result::<i64>(&id, STEP).await.unwrap(), 3);
    worker.shutdown().await;
}

// --- worker side ---------------------------------------------------------------------

#[tokio::test]
async fn parity_progress() {
    let server = Server::start_for_tests(&[]).await;
    let release = CancellationToken::new();
    let gate = release.clone();
    let worker = RunningWorker::spawn(
        Worker::builder(server.endpoint.clone())
            .queues(["p-progress"])
            .register("download", move |ctx: TaskContext| {
                let gate = gate.clone();
                async move {
                    let sent = ctx
                        .report_progress("DOWNLOADING", 50.0, Some(json!({"file": "a.csv"})))
                        .await;
                    assert!(sent, "the progress report was sent");
                    tokio::select! {
                        () = gate.cancelled() => Ok(json!("done")),
                        () = tokio::time::sleep(STEP) => Err(TaskFailure::new("Timeout", "never released")),
                    }
                }
            }),
    );
    let client = server.client().await;
    let id = client
        .submit(TaskRequest::new("download").queue("p-progress"))
        .await
        .unwrap();
    let running = get_until(&client, &id, |task| task.progress.is_some()).await;
    let progress = running.progress.expect("progress");
    assert_eq!(
        (progress.state.as_str(), progress.percent),
        ("DOWNLOADING", 50.0)
    );
    let meta: Value = serde_json::from_slice(&progress.meta.expect("meta").data).unwrap();
    assert_eq!(meta, json!({"file": "a.csv"}));
    release.cancel();
    assert_eq!(client.result::<String>(&id, STEP).await.unwrap(), "done");
    worker.shutdown().await;
}

#[tokio::test]
async fn parity_retry_delay() {
    let server = Server::start_for_tests(&[]).await;
    let (attempts_tx, mut attempts) = mpsc::unbounded_channel();
    let worker = RunningWorker::spawn(
        Worker::builder(server.endpoint.clone())
            .queues(["p-retry"])
            .register("again", move |ctx: TaskContext| {
                let _ = attempts_tx.send((ctx.attempt(), Instant::now()));
                async move {
                    if ctx.attempt() == 1 {
                        Err(TaskFailure::new("Busy", "try later").retry_in(Duration::from_secs(1)))
                    } else {
                        Ok(json!(ctx.attempt()))
                    }
                }
            }),
    );
    let client = server.client().await;
    // The policy's own backoff would wait a minute: the handler's delay wins.
    let policy = pb::RetryPolicy {
        max_retries: 2,
        backoff_base: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
        ..Default::default()
    };
    let id = client
        .submit(
            TaskRequest::new("again")
                .queue("p-retry")
                .retry_policy(policy),
        )
        .await
        .unwrap();
    assert_eq!(client.result::<u32>(&id, STEP).await.unwrap(), 2);
    let (first, first_at) = attempts.recv().await.unwrap();
    let (second, second_at) = attempts.recv().await.unwrap();
    assert_eq!((first, second), (1, 2));
    let delay = second_at - first_at;
    assert!(
        delay >= Duration::from_millis(900) && delay < Duration::from_secs(10),
        "attempt 2 started {delay:?} after attempt 1, asked for 1 s"
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn parity_soft_limit() {
    let server = Server::start_for_tests(&[]).await;
    let worker = RunningWorker::spawn(
        Worker::builder(server.endpoint.clone())
            .queues(["p-soft"])
            .register("slow", |ctx: TaskContext| async move {
                tokio::select! {
                    () = ctx.cancelled() => Err(TaskFailure::new("SoftTimeLimitExceeded", "stopped at the soft limit")),
                    () = tokio::time::sleep(STEP) => Ok(json!("ran to the end")),
                }
            }),
    );
    let client = server.client().await;
    let started = Instant::now();
    let id = client
        .submit(
            TaskRequest::new("slow")
                .queue("p-soft")
                .soft_time_limit(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    let outcome = client.result::<Value>(&id, STEP).await.unwrap_err();
    assert!(
        matches!(&outcome, Error::TaskFailed { error_type, .. } if error_type == "SoftTimeLimitExceeded"),
        "{outcome:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn parity_revoke() {
    let server = Server::start_for_tests(&[]).await;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let worker = RunningWorker::spawn(
        Worker::builder(server.endpoint.clone())
            .queues(["p-revoke"])
            .register("long", move |ctx: TaskContext| {
                let events = events_tx.clone();
                async move {
                    let _ = events.send("started");
                    tokio::select! {
                        () = ctx.cancelled() => {
                            let _ = events.send("cancelled");
                            Err(TaskFailure::new("Revoked", "stopped"))
                        }
                        () = tokio::time::sleep(STEP) => Ok(json!("ran to the end")),
                    }
                }
            }),
    );
    let client = server.client().await;
    let id = client
        .submit(TaskRequest::new("long").queue("p-revoke"))
        .await
        .unwrap();
    assert_eq!(events.recv().await, Some("started"));
    client.cancel(&id).await.unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
    assert_eq!(stopped, Ok(Some("cancelled")), "the handler saw the revoke");
    let task = client.wait(&id, STEP).await.unwrap();
    assert_eq!(state(&task), pb::TaskState::Cancelled);
    worker.shutdown().await;
}

#[tokio::test]
async fn parity_drain() {
    let server = Server::start_for_tests(&[]).await;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let worker = RunningWorker::spawn(
        Worker::builder(server.endpoint.clone())
            .queues(["p-drain"])
            .register("second", move |ctx: TaskContext| {
                let _ = started_tx.send(());
                async move {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => Ok(json!("finished")),
                        () = ctx.cancelled() => Err(TaskFailure::new("Cancelled", "cut short by the drain")),
                    }
                }
            }),
    );
    let client = server.client().await;
    let id = client
        .submit(TaskRequest::new("second").queue("p-drain"))
        .await
        .unwrap();
    started.recv().await.expect("the task started");
    let asked = Instant::now();
    worker.shutdown().await;
    assert!(
        asked.elapsed() >= Duration::from_millis(700),
        "the worker returned before its running task finished ({:?})",
        asked.elapsed()
    );
    let task = client.get(&id).await.unwrap();
    assert_eq!(state(&task), pb::TaskState::Succeeded, "{task:?}");
}

#[tokio::test]
async fn parity_token() {
    let server = Server::start_for_tests(&["--auth-token", "s3cret"]).await;
    let anonymous = server.client().await;
    let refused = anonymous.submit(add_task("p-token", 1, 1)).await;
    assert_eq!(
        refused.unwrap_err().code(),
        Some(tonic::Code::Unauthenticated)
    );
    let sum = readme::with_token(&server.endpoint, "s3cret", "p-token")
        .await
        .unwrap();
    assert_eq!(sum, 5);
}

#[tokio::test]
async fn parity_eager_mode() {
    readme::eager().await.unwrap();
    let client = conveyor_client::EagerClient::new().register("add", readme::add);
    let id = client
        .submit(TaskRequest::new("add").arg("two").arg(2))
        .await
        .unwrap();
    let failed = client.result::<i64>(&id).await.unwrap_err();
    assert!(
        matches!(&failed, Error::TaskFailed { error_type, .. } if error_type == conveyor_client::worker::ARGUMENT_ERROR),
        "{failed:?}"
    );
}

// --- the README ------------------------------------------------------------------------

/// The README's client and worker snippets, run against a server.
#[tokio::test]
async fn readme_client_and_worker_snippets_run() {
    let server = Server::start_for_tests(&[]).await;
    let stop = CancellationToken::new();
    let worker = tokio::spawn(readme::run_worker_until(
        server.endpoint.clone(),
        stop.clone().cancelled_owned(),
    ));
    readme::client_calls(&server.endpoint).await.unwrap();
    stop.cancel();
    worker.await.unwrap().unwrap();
}

/// Every `rust` block of the README appears, line for line (leading
/// whitespace aside), in this file: each snippet is compiled here.
#[test]
fn readme_snippets_are_compiled_here() {
    let readme = include_str!("../README.md");
    let source: Vec<&str> = include_str!("parity.rs").lines().map(str::trim).collect();
    let mut blocks = 0;
    for block in readme.split("```rust\n").skip(1) {
        let code = block.split("```").next().unwrap();
        let lines: Vec<&str> = code.lines().map(str::trim).collect();
        assert!(
            source
                .windows(lines.len())
                .any(|window| window == lines.as_slice()),
            "this README snippet is not in tests/parity.rs (copy it into `mod readme`):\n{code}"
        );
        blocks += 1;
    }
    assert!(blocks >= 4, "found {blocks} rust snippets in the README");
    let manifest = include_str!("../Cargo.toml");
    assert!(manifest.contains("name = \"conveyor-client\""));
    assert!(
        readme.contains("conveyor-client = { path = "),
        "the README shows the path dependency"
    );
}

/// The snippets of `clients/rust/README.md`, verbatim.
#[allow(dead_code)]
mod readme {
    use std::future::Future;

    // README: client
    use std::time::Duration;

    use conveyor_client::{Client, TaskRequest};
    use futures::StreamExt;

    pub async fn client_calls(endpoint: &str) -> conveyor_client::Result<()> {
        let client = Client::connect(endpoint).await?;

        // Submit one task, or many in one call; each gets an id.
        let id = client.submit(TaskRequest::new("add").arg(2).arg(3)).await?;
        let ids = client
            .submit_many(vec![
                TaskRequest::new("add").arg(1).arg(1),
                TaskRequest::new("add")
                    .arg(2)
                    .arg(2)
                    .queue("default")
                    .priority(9),
            ])
            .await?;

        // Await a result (decoded from JSON), or the whole task record.
        let sum: i64 = client.result(&id, Duration::from_secs(10)).await?;
        assert_eq!(sum, 5);
        let task = client.wait(&ids[0], Duration::from_secs(10)).await?;
        println!("{} is {:?}", task.id, task.state());

        // Read the current state, follow every change, cancel.
        let now = client.get(&ids[1]).await?;
        println!("attempt {}", now.attempt);
        let mut updates = client.watch(&ids[1]).await?;
        while let Some(update) = updates.next().await {
            println!("{:?}", update?.state());
        }
        let later = client
            .submit(
                TaskRequest::new("add")
                    .arg(1)
                    .arg(2)
                    .countdown(Duration::from_secs(60)),
            )
            .await?;
        assert!(client.cancel(&later).await?);
        Ok(())
    }

    // README: worker
    use conveyor_client::{TaskContext, TaskFailure, Worker};
    use serde_json::{Value, json};

    pub async fn add(ctx: TaskContext) -> Result<Value, TaskFailure> {
        let (a, b): (i64, i64) = (ctx.arg(0)?, ctx.arg(1)?);
        Ok(json!(a + b))
    }

    pub async fn slow(ctx: TaskContext) -> Result<Value, TaskFailure> {
        ctx.report_progress("STARTED", 0.0, None).await;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(5)) => Ok(json!("done")),
            // Revoked, soft time limit passed, or the worker is shutting down.
            () = ctx.cancelled() => Err(TaskFailure::new("Cancelled", "stopped early")),
        }
    }

    pub async fn run_worker(endpoint: &str) -> conveyor_client::Result<()> {
        Worker::builder(endpoint)
            .queues(["default"])
            .concurrency(8)
            .register("add", add)
            .register("slow", slow)
            .build()?
            .run() // until SIGTERM or Ctrl-C, then drains
            .await
    }

    pub async fn run_worker_until(
        endpoint: String,
        shutdown: impl Future<Output = ()>,
    ) -> conveyor_client::Result<()> {
        Worker::builder(endpoint)
            .concurrency(8)
            .register("add", add)
            .register("slow", slow)
            .run_until(shutdown)
            .await
    }

    // README: eager
    use conveyor_client::EagerClient;

    pub async fn eager() -> conveyor_client::Result<()> {
        let client = EagerClient::new().register("add", add);
        let id = client.submit(TaskRequest::new("add").arg(2).arg(3)).await?;
        let sum: i64 = client.result(&id).await?;
        assert_eq!(sum, 5);
        Ok(())
    }

    // README: token
    pub async fn with_token(
        endpoint: &str,
        token: &str,
        queue: &str,
    ) -> conveyor_client::Result<i64> {
        let client = Client::connect(endpoint).await?.with_token(token)?;
        let worker = Worker::builder(endpoint)
            .token(token)
            .queues([queue])
            .register("add", add)
            .build()?;
        let stop = tokio_util::sync::CancellationToken::new();
        let running = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));

        let id = client
            .submit(TaskRequest::new("add").arg(2).arg(3).queue(queue))
            .await?;
        let sum: i64 = client.result(&id, Duration::from_secs(10)).await?;
        stop.cancel();
        running.await.expect("the worker task")?;
        Ok(sum)
    }
}

#[tokio::test]
async fn parity_workflows() {
    use conveyor_client::canvas::{chain, group};
    let server = Server::start_for_tests(&[]).await;
    let worker = adder(&server, "p-workflows");
    let client = server.client().await;
    let step = |n: i64| TaskRequest::new("add").arg(n).queue("p-workflows");
    // add(1, 2) | group(add(_, 10), add(_, 20)): the group's results in order.
    let handle = client
        .submit_workflow(chain([
            add_task("p-workflows", 1, 2).into(),
            group([step(10), step(20)]),
        ]))
        .await
        .unwrap();
    let result: Vec<i64> = client.workflow_result(&handle.id, STEP).await.unwrap();
    assert_eq!(result, [13, 23]);
    let workflow = client.get_workflow(&handle.id).await.unwrap();
    assert_eq!(workflow.nodes.len(), 3);
    assert_eq!(workflow.state, pb::WorkflowState::Succeeded as i32);
    worker.shutdown().await;
}

/// Namespaces: a task of namespace A runs on A's worker only, even when B's
/// worker takes the same queue and task name; B cannot see it.
#[tokio::test]
async fn parity_namespace() {
    let server = Server::start_for_tests(&[]).await;
    let labelled = |namespace: &'static str| {
        RunningWorker::spawn(
            Worker::builder(server.endpoint.clone())
                .namespace(namespace)
                .queues(["p-namespace"])
                .register("whoami", move |_ctx: TaskContext| async move {
                    Ok(Value::from(namespace))
                }),
        )
    };
    let worker_a = labelled("ns-a");
    let worker_b = labelled("ns-b");
    let client_a = server.client().await.with_namespace("ns-a");
    let client_b = server.client().await.with_namespace("ns-b");
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(
            client_a
                .submit(TaskRequest::new("whoami").queue("p-namespace"))
                .await
                .unwrap(),
        );
    }
    for id in &ids {
        let ran_on: String = client_a.result(id, STEP).await.unwrap();
        assert_eq!(ran_on, "ns-a");
        let hidden = client_b.get(id).await.unwrap_err();
        assert_eq!(hidden.code(), Some(tonic::Code::NotFound), "{hidden}");
    }
    worker_a.shutdown().await;
    worker_b.shutdown().await;
}

/// With an auth file, each role gets exactly its calls in its namespace;
/// other namespaces, no token, a bad token and a revoked token are refused
/// with the documented codes.
#[tokio::test]
async fn parity_authorization() {
    use conveyor_client::canvas::chain;
    use tonic::Code;
    let dir = std::env::temp_dir().join(format!("conveyor-rust-authz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("auth.toml");
    let hash = |token: &str| {
        let output = std::process::Command::new(dev_server::conveyor_bin())
            .args(["auth", "hash-token", token])
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    };
    let roles = ["producer", "worker", "reader", "admin"];
    let write = |with_former: bool| {
        let mut text = String::new();
        for role in roles.iter().copied().chain(with_former.then_some("former")) {
            let granted = if role == "former" { "admin" } else { role };
            text.push_str(&format!(
                "[[principal]]\nname = \"{role}\"\ntoken_sha256 = [\"{}\"]\nroles = {{ team-a = [\"{granted}\"] }}\n\n",
                hash(&format!("{role}-token"))
            ));
        }
        let staging = file.with_extension("tmp");
        std::fs::write(&staging, text).unwrap();
        std::fs::rename(&staging, &file).unwrap();
    };
    write(true);
    let server = Server::start_for_tests(&["--auth-file", file.to_str().unwrap()]).await;
    let client = |token: Option<&str>, namespace: &str| {
        let endpoint = server.endpoint.clone();
        let token = token.map(str::to_string);
        let namespace = namespace.to_string();
        async move {
            let client = Client::connect(endpoint)
                .await
                .unwrap()
                .with_namespace(namespace);
            match token {
                Some(token) => client.with_token(token).unwrap(),
                None => client,
            }
        }
    };
    // An admin's task to read and cancel.
    let admin = client(Some("admin-token"), "team-a").await;
    let existing = admin.submit(add_task("p-authz", 1, 2)).await.unwrap();

    /// Each wrapped call: its name, whether the role may make it, and the
    /// outcome (an error code, or none).
    async fn calls(
        client: &Client,
        existing: &str,
    ) -> Vec<(&'static str, &'static str, Option<Code>)> {
        let code = |result: Result<(), Error>| result.err().and_then(|error| error.code());
        // A producer cancels what it submitted itself (an admin anything).
        let submitted = client.submit(add_task("p-authz", 1, 1)).await;
        let own = submitted
            .as_ref()
            .map_or(existing.to_string(), |id| id.clone());
        vec![
            ("submit", "submit", code(submitted.map(drop))),
            (
                "submit_many",
                "submit",
                code(
                    client
                        .submit_many(vec![add_task("p-authz", 2, 2)])
                        .await
                        .map(drop),
                ),
            ),
            (
                "submit_workflow",
                "submit",
                code(
                    client
                        .submit_workflow(chain([add_task("p-authz", 1, 1)]))
                        .await
                        .map(drop),
                ),
            ),
            ("get", "read", code(client.get(existing).await.map(drop))),
            (
                "wait",
                "read",
                code(
                    client
                        .wait(existing, Duration::from_millis(50))
                        .await
                        .map(drop),
                ),
            ),
            (
                "watch",
                "read",
                code(client.watch(existing).await.map(drop)),
            ),
            (
                "get_workflow",
                "read",
                code(
                    client
                        .get_workflow("0190f5c2-0000-7000-8000-000000000000")
                        .await
                        .map(drop),
                ),
            ),
            (
                "cancel",
                "cancel",
                code(client.cancel(&own).await.map(drop)),
            ),
        ]
    }
    fn grants(role: &str, permission: &str) -> bool {
        match role {
            "admin" => true,
            "producer" => matches!(permission, "submit" | "cancel" | "read"),
            "reader" => permission == "read",
            _ => false,
        }
    }
    for role in roles {
        let home = client(Some(&format!("{role}-token")), "team-a").await;
        for (call, permission, code) in calls(&home, &existing).await {
            if grants(role, permission) {
                assert!(
                    !matches!(code, Some(Code::PermissionDenied | Code::Unauthenticated)),
                    "{role} {call} in team-a: {code:?}"
                );
            } else {
                assert_eq!(
                    code,
                    Some(Code::PermissionDenied),
                    "{role} {call} in team-a"
                );
            }
        }
        let away = client(Some(&format!("{role}-token")), "team-b").await;
        for (call, _, code) in calls(&away, &existing).await {
            assert_eq!(
                code,
                Some(Code::PermissionDenied),
                "{role} {call} in team-b"
            );
        }
    }
    // A producer cancels only what it submitted: the admin's task is not its.
    let producer = client(Some("producer-token"), "team-a").await;
    let foreign = producer.cancel(&existing).await.unwrap_err();
    assert_eq!(foreign.code(), Some(Code::PermissionDenied), "{foreign}");
    assert!(
        foreign.to_string().contains("only what it submitted"),
        "{foreign}"
    );
    // Revoke "former" by editing the file; wait for the server to re-read it.
    let former = client(Some("former-token"), "team-a").await;
    assert!(former.get(&existing).await.is_ok());
    write(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while former.get(&existing).await.is_ok() {
        assert!(Instant::now() < deadline, "the revoked token still works");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for token in [None, Some("bad-token"), Some("former-token")] {
        let refused = client(token, "team-a").await;
        for (call, _, code) in calls(&refused, &existing).await {
            assert_eq!(code, Some(Code::Unauthenticated), "{call} with {token:?}");
        }
    }
    // Workers: the worker role's session runs tasks in team-a; in team-b,
    // and for a producer, the session is refused and the worker stops with
    // PERMISSION_DENIED (retrying would repeat it).
    let worker = RunningWorker::spawn(
        Worker::builder(server.endpoint.clone())
            .token("worker-token")
            .namespace("team-a")
            .queues(["p-authz-work"])
            .register("add", add),
    );
    let id = admin
        .submit(add_task("p-authz-work", 20, 22))
        .await
        .unwrap();
    assert_eq!(admin.result::<i64>(&id, STEP).await.unwrap(), 42);
    worker.shutdown().await;
    for (token, namespace) in [("worker-token", "team-b"), ("producer-token", "team-a")] {
        let stranded = admin
            .submit(add_task("p-authz-refused", 1, 1))
            .await
            .unwrap();
        let refused = Worker::builder(server.endpoint.clone())
            .token(token)
            .namespace(namespace)
            .queues(["p-authz-refused"])
            .register("add", add)
            .build()
            .unwrap();
        let ended = tokio::time::timeout(STEP, refused.run_until(std::future::pending()))
            .await
            .expect("a refused worker stops");
        let error = ended.expect_err("a refused worker ends with an error");
        assert_eq!(error.code(), Some(Code::PermissionDenied), "{error}");
        let task = admin.get(&stranded).await.unwrap();
        assert_eq!(
            task.state,
            pb::TaskState::Queued as i32,
            "{token} ran a task in {namespace}"
        );
    }
}
