//! Real processes: the four roles as separate `conveyor serve` processes on
//! one Redis, the README quick start (dev server, example worker, CLI), and
//! graceful shutdown on SIGTERM.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};

use conveyor_client::{Client, TaskRequest, Worker};
use conveyor_store::conformance::test_redis_url;

const BINARY: &str = env!("CARGO_BIN_EXE_conveyor");

/// A child process that is killed when dropped.
struct Process {
    child: Child,
    addr: String,
}

/// Starts `conveyor ARGS --listen 127.0.0.1:0` and reads the bound address
/// from its first stdout line.
async fn spawn_conveyor(args: &[&str]) -> Process {
    let mut child = Command::new(BINARY)
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn conveyor");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("conveyor printed its address in time")
        .expect("read stdout")
        .expect("a line");
    let addr = line
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_string();
    Process { child, addr }
}

async fn channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn redis_args(url: &str, prefix: &str) -> Vec<String> {
    vec![
        "--store".into(),
        url.into(),
        "--redis-prefix".into(),
        prefix.into(),
        "--heartbeat-interval".into(),
        "200ms".into(),
        "--lease-ttl".into(),
        "1s".into(),
        "--partitions".into(),
        conveyor_store::conformance::test_partitions().to_string(),
    ]
}

#[tokio::test]
async fn separate_role_processes_on_one_redis() {
    let Some(url) = test_redis_url() else { return };
    let prefix = format!("proc-{}:", uuid::Uuid::new_v4().simple());
    let extra = redis_args(&url, &prefix);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut processes = Vec::new();
    for role in ["submission", "dispatch", "results", "scheduling"] {
        let mut args = vec!["serve", role];
        args.extend(&extra);
        processes.push(spawn_conveyor(&args).await);
    }
    let [submission, dispatch, results, _scheduling] = &processes[..] else {
        unreachable!()
    };
    let stop = tokio_util_stop();
    let worker = Worker::from_channel(channel(&dispatch.addr).await)
        .worker_id("split-worker")
        .concurrency(4)
        .register("add", |ctx: conveyor_client::TaskContext| async move {
            let (left, right): (i64, i64) = (ctx.arg(0)?, ctx.arg(1)?);
            Ok(serde_json::json!(left + right))
        })
        .build()
        .unwrap();
    let stopper = stop.clone();
    let worker = tokio::spawn(async move {
        worker
            .run_until(async move { stopper.notified().await })
            .await
    });
    let client = Client::from_channels(
        channel(&submission.addr).await,
        channel(&results.addr).await,
    );
    let id = client
        .submit(TaskRequest::new("add").arg(2).arg(2))
        .await
        .unwrap();
    let sum: i64 = client.result(&id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(sum, 4);
    // A countdown needs the scheduling process to promote it.
    let submitted = Instant::now();
    let delayed = client
        .submit(
            TaskRequest::new("add")
                .arg(20)
                .arg(22)
                .countdown(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    let answer: i64 = client
        .result(&delayed, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(answer, 42);
    assert!(submitted.elapsed() >= Duration::from_millis(300));
    // Many at once through the split deployment.
    let ids = client
        .submit_many(
            (0..500)
                .map(|n| TaskRequest::new("add").arg(n).arg(1))
                .collect(),
        )
        .await
        .unwrap();
    for (n, id) in ids.iter().enumerate() {
        let value: i64 = client.result(id, Duration::from_secs(20)).await.unwrap();
        assert_eq!(value, n as i64 + 1);
    }
    stop.notify_one();
    worker.await.unwrap().unwrap();
}

/// A one-shot stop signal for a worker.
fn tokio_util_stop() -> std::sync::Arc<tokio::sync::Notify> {
    std::sync::Arc::new(tokio::sync::Notify::new())
}

/// The example worker's binary, built by `scripts/test` (or built here).
fn example_worker() -> PathBuf {
    let path = PathBuf::from(BINARY)
        .with_file_name("examples")
        .join("worker");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "conveyor-client", "--example", "worker"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the example worker failed");
    }
    path
}

async fn cli(args: &[&str]) -> std::process::Output {
    Command::new(BINARY)
        .args(args)
        .output()
        .await
        .expect("run conveyor cli")
}

#[tokio::test]
async fn quick_start_dev_server_example_worker_and_cli() {
    let dev = spawn_conveyor(&["dev"]).await;
    let server = format!("http://{}", dev.addr);
    let _worker = Command::new(example_worker())
        .env("CONVEYOR_ADDR", &server)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("spawn example worker");
    let output = cli(&[
        "submit", "add", "--arg", "2", "--arg", "2", "--wait", "--server", &server,
    ])
    .await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "4\n");
    let output = cli(&[
        "submit",
        "xsum",
        "--arg",
        "[1, 2, 3.5]",
        "--wait",
        "--server",
        &server,
    ])
    .await;
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "6.5\n",
        "{output:?}"
    );
    let failed = cli(&[
        "submit",
        "fail",
        "--arg",
        "\"bad input\"",
        "--wait",
        "--server",
        &server,
    ])
    .await;
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("ValueError") && stderr.contains("bad input"),
        "{stderr}"
    );
    let workers = cli(&["workers", "--server", &server]).await;
    let listing = String::from_utf8_lossy(&workers.stdout);
    assert!(
        listing.contains("rust") && listing.contains("add"),
        "{listing}"
    );
    let id = cli(&[
        "submit", "add", "--arg", "1", "--arg", "1", "--server", &server,
    ])
    .await;
    let id = String::from_utf8_lossy(&id.stdout).trim().to_string();
    let shown = cli(&["get", &id, "--server", &server]).await;
    assert!(String::from_utf8_lossy(&shown.stdout).contains(&id));
    let bad = cli(&["submit", "add", "--arg", "{nope", "--server", &server]).await;
    assert!(!bad.status.success());
    let usage = cli(&["serve"]).await;
    assert_eq!(
        usage.status.code(),
        Some(64),
        "invalid configuration exits 64"
    );
}

#[tokio::test]
async fn sigterm_drains_running_tasks_then_exits() {
    let Some(url) = test_redis_url() else { return };
    let prefix = format!("drain-{}:", uuid::Uuid::new_v4().simple());
    let mut args = vec!["dev".to_string(), "--grace".into(), "5s".into()];
    args.extend(redis_args(&url, &prefix));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut dev = spawn_conveyor(&args).await;
    let server = channel(&dev.addr).await;
    let worker = Worker::from_channel(server.clone())
        .worker_id("drainer")
        .concurrency(1)
        .register("slow", |_ctx: conveyor_client::TaskContext| async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            Ok(serde_json::json!("finished"))
        })
        .build()
        .unwrap();
    let worker = tokio::spawn(async move { worker.run().await });
    let client = Client::from_channel(server);
    let id = client.submit(TaskRequest::new("slow")).await.unwrap();
    let mut running = false;
    for _ in 0..500 {
        if client.get(&id).await.unwrap().worker_id == "drainer" {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(running, "the task reached the worker");
    let pid = dev.child.id().expect("pid").to_string();
    let sent = Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exit = tokio::time::timeout(Duration::from_secs(10), dev.child.wait())
        .await
        .expect("exited within the grace period")
        .unwrap();
    assert!(exit.success(), "clean exit, got {exit:?}");
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(5), "drain took {took:?}");
    // The running task finished during the drain and its outcome was kept.
    let mut config = conveyor_store::RedisConfig::new(url.clone());
    config.prefix = prefix;
    config.partitions = conveyor_store::conformance::test_partitions();
    let store = conveyor_store::RedisStore::connect(config).await.unwrap();
    use conveyor_store::Store;
    let task_id = conveyor_core::TaskId::parse(&id, "id").unwrap();
    let task = store.get(task_id, 0).await.unwrap().expect("task kept");
    assert_eq!(
        task.state,
        conveyor_core::TaskState::Succeeded,
        "drain took {took:?}"
    );
    worker.abort();
}

#[tokio::test]
async fn killed_dispatcher_leases_are_reaped_and_rerun() {
    let Some(url) = test_redis_url() else { return };
    let prefix = format!("reap-{}:", uuid::Uuid::new_v4().simple());
    let extra = redis_args(&url, &prefix);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let with = |roles: &[&'static str]| {
        let mut args: Vec<&str> = vec!["serve"];
        args.extend(roles);
        args.extend(&extra);
        args
    };
    let front = spawn_conveyor(&with(&["submission", "results", "scheduling"])).await;
    let mut doomed = spawn_conveyor(&with(&["dispatch"])).await;
    let spare = spawn_conveyor(&with(&["dispatch"])).await;
    let client = Client::connect(format!("http://{}", front.addr))
        .await
        .unwrap();
    // The first worker holds the task forever; its dispatcher is then killed.
    let stuck = Worker::from_channel(channel(&doomed.addr).await)
        .worker_id("stuck")
        .concurrency(1)
        .register("job", |ctx: conveyor_client::TaskContext| async move {
            ctx.cancelled().await;
            Ok(serde_json::json!("stuck"))
        })
        .build()
        .unwrap();
    let stuck = tokio::spawn(async move { stuck.run().await });
    let id = client.submit(TaskRequest::new("job")).await.unwrap();
    let mut leased = false;
    for _ in 0..500 {
        let task = client.get(&id).await.unwrap();
        if task.worker_id == "stuck" {
            leased = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(leased, "the first worker leased the task");
    doomed.child.start_kill().unwrap();
    doomed.child.wait().await.unwrap();
    let killed_at = Instant::now();
    let rescuer = Worker::from_channel(channel(&spare.addr).await)
        .worker_id("rescuer")
        .concurrency(1)
        .register("job", |_ctx: conveyor_client::TaskContext| async move {
            Ok(serde_json::json!("rescued"))
        })
        .build()
        .unwrap();
    let stop = tokio_util_stop();
    let stopper = stop.clone();
    let rescuer = tokio::spawn(async move {
        rescuer
            .run_until(async move { stopper.notified().await })
            .await
    });
    let result: String = client.result(&id, Duration::from_secs(10)).await.unwrap();
    let recovered_in = killed_at.elapsed();
    assert_eq!(result, "rescued");
    let task = client.get(&id).await.unwrap();
    assert_eq!((task.attempt, task.worker_id.as_str()), (2, "rescuer"));
    println!("dispatcher killed: task re-run and done {recovered_in:?} later (lease ttl 1s)");
    assert!(
        recovered_in < Duration::from_secs(3),
        "took {recovered_in:?}"
    );
    stop.notify_one();
    rescuer.await.unwrap().unwrap();
    stuck.abort();
}

#[tokio::test]
async fn cli_sends_the_bearer_token() {
    let dev = spawn_conveyor(&["dev", "--auth-token", "s3cret"]).await;
    let server = format!("http://{}", dev.addr);
    let refused = cli(&[
        "submit", "add", "--arg", "1", "--arg", "1", "--server", &server,
    ])
    .await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Unauthenticated"),
        "{refused:?}"
    );
    let accepted = cli(&[
        "submit", "add", "--arg", "1", "--arg", "1", "--server", &server, "--token", "s3cret",
    ])
    .await;
    assert!(accepted.status.success(), "{accepted:?}");
    let id = String::from_utf8_lossy(&accepted.stdout).trim().to_string();
    for command in [
        vec!["get", id.as_str()],
        vec!["cancel", id.as_str()],
        vec!["workers"],
    ] {
        let mut args = command.clone();
        args.extend(["--server", server.as_str(), "--token", "s3cret"]);
        let output = cli(&args).await;
        assert!(
            output.status.success(),
            "{command:?} with a token: {output:?}"
        );
        let mut bare = command.clone();
        bare.extend(["--server", server.as_str()]);
        assert!(
            !cli(&bare).await.status.success(),
            "{command:?} without a token is refused"
        );
    }
}

#[tokio::test]
async fn invalid_task_defaults_exit_64() {
    let path =
        std::env::temp_dir().join(format!("defaults-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, "[tasks.charge]\nmax-retries = 1000\n").unwrap();
    let output = Command::new(BINARY)
        .args(["dev", "--listen", "127.0.0.1:0", "--task-defaults"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(output.status.code(), Some(64), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("tasks.charge"),
        "{output:?}"
    );
}

#[tokio::test]
async fn schedules_declared_in_a_file_fire() {
    let path =
        std::env::temp_dir().join(format!("schedules-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(
        &path,
        "[schedules.heartbeat]\ntask = \"add\"\nargs = [2, 3]\nevery = \"1s\"\n",
    )
    .unwrap();
    let dev = spawn_conveyor(&["dev", "--schedules", path.to_str().unwrap()]).await;
    std::fs::remove_file(&path).unwrap();
    let mut scheduling =
        conveyor_client::pb::scheduling_service_client::SchedulingServiceClient::new(
            channel(&dev.addr).await,
        );
    let listed = scheduling
        .list_schedules(conveyor_client::pb::ListSchedulesRequest {
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .schedules;
    assert_eq!(
        listed
            .iter()
            .map(|schedule| schedule.id.as_str())
            .collect::<Vec<_>>(),
        vec!["heartbeat"]
    );
    let started = Instant::now();
    loop {
        let runs = scheduling
            .list_schedule_runs(conveyor_client::pb::ListScheduleRunsRequest {
                id: "heartbeat".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .runs;
        if runs.len() >= 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the declared schedule fires"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Replicas whose clocks are 30 s off in both directions share one Redis:
/// the reaper runs 30 s ahead of a dispatcher that runs 30 s behind, and two
/// dispatchers 60 s apart hand out rate-limited tasks. Lease deadlines and
/// rate slots are compared on the store's clock, so no live lease is reaped
/// and the rate holds. (On their own clocks, the reaper would take every
/// lease at once and the fast dispatcher would ignore the rate.)
#[tokio::test]
async fn skewed_clocks_neither_reap_live_leases_nor_break_rates() {
    let Some(url) = test_redis_url() else { return };
    let prefix = format!("skew-{}:", uuid::Uuid::new_v4().simple());
    let partitions = conveyor_store::conformance::test_partitions().to_string();
    // Roomier heartbeats than the other tests: under a loaded CI machine a
    // late heartbeat must not pass for a clock problem (30 s dwarfs both).
    let extra: Vec<&str> = vec![
        "--store",
        &url,
        "--redis-prefix",
        &prefix,
        "--heartbeat-interval",
        "500ms",
        "--lease-ttl",
        "2s",
        "--partitions",
        &partitions,
    ];
    let with = |roles: &[&'static str], skew: &'static str| {
        let mut args: Vec<&str> = vec!["serve"];
        args.extend(roles);
        args.extend(&extra);
        args.extend(["--clock-skew", skew]);
        args
    };
    let front = spawn_conveyor(&with(&["submission", "results", "scheduling"], "+30s")).await;
    let behind = spawn_conveyor(&with(&["dispatch"], "-30s")).await;
    let ahead = spawn_conveyor(&with(&["dispatch"], "+30s")).await;
    let client = Client::connect(format!("http://{}", front.addr))
        .await
        .unwrap();
    let starts = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let stop = tokio_util_stop();
    let mut workers = Vec::new();
    for (name, dispatcher) in [("behind", &behind), ("ahead", &ahead)] {
        let starts = starts.clone();
        let worker = Worker::from_channel(channel(&dispatcher.addr).await)
            .worker_id(name)
            .concurrency(4)
            .register("hold", |_ctx: conveyor_client::TaskContext| async move {
                // Longer than two lease TTLs: only heartbeats keep it.
                tokio::time::sleep(Duration::from_millis(4500)).await;
                Ok(serde_json::json!("held"))
            })
            .register("tick", move |_ctx: conveyor_client::TaskContext| {
                let starts = starts.clone();
                async move {
                    starts.lock().unwrap().push(Instant::now());
                    Ok(serde_json::json!("tick"))
                }
            })
            .build()
            .unwrap();
        let stopper = stop.clone();
        workers.push(tokio::spawn(async move {
            worker
                .run_until(async move { stopper.notified().await })
                .await
        }));
    }
    // Held on the dispatcher that runs behind, reaped by a scheduler ahead.
    let held = client
        .submit(TaskRequest::new("hold").queue("default"))
        .await
        .unwrap();
    // Five starts a second, handed out by both dispatchers.
    let ticks = client
        .submit_many(
            (0..8)
                .map(|_| TaskRequest::new("tick").rate_limit("5/s"))
                .collect(),
        )
        .await
        .unwrap();
    for id in &ticks {
        let _: String = client.result(id, Duration::from_secs(20)).await.unwrap();
    }
    let outcome: String = client.result(&held, Duration::from_secs(20)).await.unwrap();
    assert_eq!(outcome, "held");
    let task = client.get(&held).await.unwrap();
    assert_eq!(
        task.attempt, 1,
        "the live lease was never reaped (worker {})",
        task.worker_id
    );
    let mut starts = starts.lock().unwrap().clone();
    starts.sort();
    let span = starts[starts.len() - 1] - starts[0];
    println!("8 ticks at 5/s across dispatchers 60 s apart started over {span:?}");
    // 8 starts at 5/s: 7 gaps of 200 ms (a little early at most by the
    // store's ms rounding and this process's scheduling). The instants are
    // taken in the handlers, after delivery: on a loaded machine one
    // delivery may lag the next by tens of ms (117 ms was seen with a fuzzer
    // busy on one of the two cores), so a gap is only required to be over
    // half the spacing; the span is the rate's measure (the store's exact
    // spacing is the conformance suite's).
    assert!(span >= Duration::from_millis(1300), "rate broken: {span:?}");
    for pair in starts.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(100),
            "two starts {:?} apart",
            pair[1] - pair[0]
        );
    }
    stop.notify_waiters();
    for worker in workers {
        worker.abort();
    }
}

/// The Rust client and worker given two servers (`A,B`, one without a
/// scheme) keep working when one of them is SIGKILLed.
#[tokio::test]
async fn rust_client_and_worker_fail_over_to_the_second_server() {
    let Some(url) = test_redis_url() else { return };
    let prefix = format!("failover-{}:", uuid::Uuid::new_v4().simple());
    let extra = redis_args(&url, &prefix);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut args = vec!["dev"];
    args.extend(&extra);
    let mut first = spawn_conveyor(&args).await;
    let second = spawn_conveyor(&args).await;
    let addresses = format!("http://{},{}", first.addr, second.addr);
    let client = Client::connect(addresses.clone()).await.unwrap();
    let stop = tokio_util_stop();
    let stopper = stop.clone();
    let worker = Worker::builder(addresses)
        .worker_id("failover")
        .concurrency(4)
        .register("add", |ctx: conveyor_client::TaskContext| async move {
            let (left, right): (i64, i64) = (ctx.arg(0)?, ctx.arg(1)?);
            Ok(serde_json::json!(left + right))
        })
        .build()
        .unwrap();
    let worker = tokio::spawn(async move {
        worker
            .run_until(async move { stopper.notified().await })
            .await
    });
    for n in 0..5 {
        let id = client
            .submit(TaskRequest::new("add").arg(n).arg(1))
            .await
            .unwrap();
        let sum: i64 = client.result(&id, Duration::from_secs(10)).await.unwrap();
        assert_eq!(sum, n + 1);
    }
    first.child.start_kill().unwrap();
    first.child.wait().await.unwrap();
    let killed = Instant::now();
    for n in 0..20 {
        let id = client
            .submit(TaskRequest::new("add").arg(n).arg(2))
            .await
            .unwrap_or_else(|error| panic!("submit {n} after the kill: {error}"));
        let sum: i64 = client.result(&id, Duration::from_secs(20)).await.unwrap();
        assert_eq!(sum, n + 2);
    }
    println!(
        "20 round trips after a server was killed, in {:?}",
        killed.elapsed()
    );
    stop.notify_one();
    worker.await.unwrap().unwrap();
}

/// The CLI takes an address without a scheme, and logs written to a pipe
/// carry no colour escape codes.
#[tokio::test]
async fn cli_takes_a_bare_address_and_pipes_get_plain_logs() {
    let mut child = Command::new(BINARY)
        .args(["dev", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn conveyor");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = line.strip_prefix("listening on ").unwrap().to_string();
    // Read up to the serving line: a warning may come first (another test's
    // `conveyor dev` may hold the default metrics port). No line may carry
    // escape codes.
    loop {
        let log = tokio::time::timeout(Duration::from_secs(10), stderr.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            !log.contains('\u{1b}'),
            "escape codes in piped logs: {log:?}"
        );
        if log.contains("conveyor serving") {
            break;
        }
    }
    let output = cli(&["workers", "--server", &addr]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
