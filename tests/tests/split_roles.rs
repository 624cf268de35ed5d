//! One address for clients whatever the layout: four roles as separate
//! processes on Redis, each naming the others with `--peer`, and a client
//! and a worker that know only the submission process's address. Also what
//! a process without a peer answers, a forwarding loop, an unreachable peer
//! and a peer flag that cannot be meant.

use std::time::Duration;

use conveyor_api::pb;
use conveyor_client::{Client, TaskContext, TaskRequest, Worker, canvas};
use conveyor_tests::processes::{Process, conveyor_binary, spawn_conveyor};
use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

struct Layout {
    redis_url: String,
    prefix: String,
    partitions: String,
    /// Flags every process gets (e.g. `--auth-token`).
    extra: Vec<String>,
}

impl Layout {
    fn new() -> Option<Self> {
        let redis_url = conveyor_store::conformance::test_redis_url()?;
        Some(Self {
            redis_url,
            prefix: format!("split-{}:", uuid::Uuid::new_v4().simple()),
            partitions: conveyor_store::conformance::test_partitions().to_string(),
            extra: Vec::new(),
        })
    }

    async fn spawn(&self, roles: &[&str], peers: &[(&str, &str)]) -> Process {
        let mut args: Vec<String> = vec!["serve".into()];
        args.extend(roles.iter().map(|role| role.to_string()));
        args.extend([
            "--store".into(),
            self.redis_url.clone(),
            "--redis-prefix".into(),
            self.prefix.clone(),
            "--partitions".into(),
            self.partitions.clone(),
            "--lease-ttl".into(),
            "3s".into(),
        ]);
        args.extend(self.extra.iter().cloned());
        for (role, addr) in peers {
            args.push("--peer".into());
            args.push(format!("{role}=http://{addr}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        spawn_conveyor(&args, "127.0.0.1:0").await
    }
}

async fn submission_client(
    addr: &str,
) -> pb::submission_service_client::SubmissionServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    pb::submission_service_client::SubmissionServiceClient::new(channel)
}

fn worker(addr: &str) -> Worker {
    Worker::builder(addr)
        .concurrency(4)
        .register("add", |ctx: TaskContext| async move {
            let (left, right): (i64, i64) = (ctx.arg(0)?, ctx.arg(1)?);
            Ok(Value::from(left + right))
        })
        .register("xsum", |ctx: TaskContext| async move {
            let numbers: Vec<i64> = ctx.arg(0)?;
            Ok(Value::from(numbers.iter().sum::<i64>()))
        })
        .register("sleep", |ctx: TaskContext| async move {
            let seconds: f64 = ctx.arg(0)?;
            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
            Ok(Value::Null)
        })
        .build()
        .expect("worker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_workers_need_only_the_submission_address() {
    let Some(layout) = Layout::new() else { return };
    let results = layout.spawn(&["results"], &[]).await;
    let dispatch = layout.spawn(&["dispatch"], &[]).await;
    let submission_probe = layout.spawn(&["submission"], &[]).await;
    // Scheduling submits schedule runs through its submission peer.
    let scheduling = layout
        .spawn(&["scheduling"], &[("submission", &submission_probe.addr)])
        .await;
    let front = layout
        .spawn(
            &["submission"],
            &[
                ("results", &results.addr),
                ("dispatch", &dispatch.addr),
                ("scheduling", &scheduling.addr),
            ],
        )
        .await;
    let addr = format!("http://{}", front.addr);

    // The worker's bidirectional stream is forwarded to dispatch.
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let stop = stop.clone();
        let worker = worker(&addr);
        async move { worker.run_until(stop.cancelled_owned()).await }
    });

    let client = Client::connect(addr.clone()).await.unwrap();
    let id = client
        .submit(TaskRequest::new("add").arg(2).arg(3))
        .await
        .unwrap();
    // WaitTask and WatchTask go to results through the front.
    let mut updates = client.watch(&id).await.unwrap();
    let sum: i64 = client.result(&id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(sum, 5);
    let last = tokio::time::timeout(Duration::from_secs(10), async {
        let mut last = None;
        while let Some(update) = updates.next().await {
            let task = update.unwrap();
            let done = task.state == pb::TaskState::Succeeded as i32;
            last = Some(task);
            if done {
                break;
            }
        }
        last
    })
    .await
    .expect("the watch saw the end in time")
    .expect("a watched update");
    assert_eq!(last.state, pb::TaskState::Succeeded as i32);

    // A workflow, a cancellation of a running task, and the workers list.
    let chord = canvas::chord(
        (0..5).map(|index| TaskRequest::new("add").arg(index).arg(1)),
        TaskRequest::new("xsum"),
    );
    let handle = client.submit_workflow(chord).await.unwrap();
    let total: i64 = client
        .workflow_result(&handle.id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(total, 15);
    let long = client
        .submit(TaskRequest::new("sleep").arg(30.0))
        .await
        .unwrap();
    assert!(
        conveyor_tests::eventually(Duration::from_secs(10), || async {
            let state = client.get(&long).await.unwrap().state;
            state == pb::TaskState::Leased as i32 || state == pb::TaskState::Running as i32
        })
        .await,
        "the sleep task was leased through the front"
    );
    assert!(client.cancel(&long).await.unwrap());
    let cancelled = client.wait(&long, Duration::from_secs(10)).await.unwrap();
    assert_eq!(cancelled.state, pb::TaskState::Cancelled as i32);

    let channel = tonic::transport::Endpoint::from_shared(addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let workers = pb::dispatch_service_client::DispatchServiceClient::new(channel.clone())
        .list_workers(pb::ListWorkersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(workers.workers.len(), 1, "{workers:?}");
    let schedules = pb::scheduling_service_client::SchedulingServiceClient::new(channel)
        .list_schedules(pb::ListSchedulesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(schedules.schedules.is_empty());

    stop.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_a_peer_says_which_flag_to_pass() {
    let Some(layout) = Layout::new() else { return };
    let results = layout.spawn(&["results"], &[]).await;
    let mut submission = submission_client(&results.addr).await;
    let status = submission
        .submit_task(pb::SubmitTaskRequest {
            task: Some(conveyor_tests::spec("add", &[1.into(), 2.into()])),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    assert!(
        status.message().contains("--peer submission=URL"),
        "{status:?}"
    );
}

type HealthClient = tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>;

async fn health_client(addr: &str) -> HealthClient {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

async fn status_of(mut client: HealthClient, service: &str) -> i32 {
    let request = tonic_health::pb::HealthCheckRequest {
        service: service.into(),
    };
    client.check(request).await.unwrap().into_inner().status
}

/// Waits (10 s at most) until `addr` reports `want` for `service`.
async fn until_health(
    addr: &str,
    service: &str,
    want: tonic_health::pb::health_check_response::ServingStatus,
) {
    let client = health_client(addr).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while status_of(client.clone(), service).await != want as i32 {
        assert!(
            std::time::Instant::now() < deadline,
            "{service} at {addr} never reported {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_peers_and_loops_fail_with_a_reason() {
    let Some(layout) = Layout::new() else { return };
    // A peer on a port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = listener.local_addr().unwrap().to_string();
    drop(listener);
    let lonely = layout.spawn(&["results"], &[("submission", &dead)]).await;
    let request = || pb::SubmitTaskRequest {
        task: Some(conveyor_tests::spec("add", &[1.into(), 2.into()])),
        ..Default::default()
    };
    let status = submission_client(&lonely.addr)
        .await
        .submit_task(request())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains(&dead), "{status:?}");
    // Health says so too: the forwarded service is NOT_SERVING while its
    // peer does not answer, the process itself (and what it serves) SERVING.
    use tonic_health::pb::health_check_response::ServingStatus;
    until_health(
        &lonely.addr,
        "conveyor.v1.SubmissionService",
        ServingStatus::NotServing,
    )
    .await;
    let client = health_client(&lonely.addr).await;
    assert_eq!(
        status_of(client.clone(), "conveyor.v1.ResultsService").await,
        ServingStatus::Serving as i32
    );
    assert_eq!(
        status_of(client.clone(), "").await,
        ServingStatus::Serving as i32
    );

    // A peer that does not serve the role either: no second hop.
    let first = layout
        .spawn(&["results"], &[("submission", &lonely.addr)])
        .await;
    let status = submission_client(&first.addr)
        .await
        .submit_task(request())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("already forwarded"), "{status:?}");

    // A live peer that serves it: SERVING.
    let submission = layout.spawn(&["submission"], &[]).await;
    let front = layout
        .spawn(&["results"], &[("submission", &submission.addr)])
        .await;
    until_health(
        &front.addr,
        "conveyor.v1.SubmissionService",
        ServingStatus::Serving,
    )
    .await;
}

#[test]
fn two_peers_for_a_role_and_malformed_peers_stop_the_process() {
    let output = std::process::Command::new(conveyor_binary())
        .args([
            "serve",
            "results",
            "--listen",
            "127.0.0.1:0",
            "--peer",
            "dispatch=http://127.0.0.1:1",
            "--peer",
            "dispatch=http://127.0.0.1:2",
        ])
        .output()
        .expect("run conveyor");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("given twice"), "{stderr}");
    let output = std::process::Command::new(conveyor_binary())
        .args(["serve", "results", "--peer", "results:50051"])
        .output()
        .expect("run conveyor");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ROLE=URL"), "{stderr}");
}

/// Every process may share one CONVEYOR_PEERS naming all four roles: the
/// entry for a role it serves itself is not used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_for_a_served_role_is_ignored() {
    let Some(layout) = Layout::new() else { return };
    let dead = "127.0.0.1:1".to_string();
    let both = layout
        .spawn(
            &["submission", "results"],
            &[("submission", &dead), ("results", &dead)],
        )
        .await;
    let client = Client::connect(format!("http://{}", both.addr))
        .await
        .unwrap();
    let id = client
        .submit(TaskRequest::new("add").arg(1).arg(2))
        .await
        .unwrap();
    assert_eq!(
        client.get(&id).await.unwrap().state,
        pb::TaskState::Queued as i32
    );
}

/// With auth on, the front checks the token and forwards it: the peer
/// checks it again and serves the call; a call without one is refused at
/// the front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_calls_carry_the_callers_token() {
    let Some(mut layout) = Layout::new() else {
        return;
    };
    layout.extra = vec!["--auth-token".into(), "s3cret".into()];
    let results = layout.spawn(&["results"], &[]).await;
    let front = layout
        .spawn(&["submission"], &[("results", &results.addr)])
        .await;
    let addr = format!("http://{}", front.addr);
    let client = Client::connect(addr.clone())
        .await
        .unwrap()
        .with_token("s3cret")
        .unwrap();
    let id = client
        .submit(TaskRequest::new("add").arg(1).arg(2))
        .await
        .unwrap();
    assert_eq!(
        client.get(&id).await.unwrap().state,
        pb::TaskState::Queued as i32
    );
    let anonymous = Client::connect(addr).await.unwrap();
    let refused = anonymous.get(&id).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(tonic::Code::Unauthenticated),
        "{refused:?}"
    );
}
