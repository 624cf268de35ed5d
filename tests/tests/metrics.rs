//! Prometheus metrics of every role, each a separate `conveyor serve`
//! process on Redis, scraped during a run of known counts: task counters and
//! queue-depth gauges are checked exactly, and every exposition passes
//! `promtool check metrics`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use conveyor_api::pb;
use conveyor_client::{Client, TaskContext, TaskFailure, TaskRequest, Worker};
use conveyor_tests::processes::{Process, spawn_conveyor};

/// One sample: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').expect("label pair");
                (key.to_string(), value.trim_matches('"').to_string())
            })
            .collect();
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value: value.parse().expect("sample value"),
        });
    }
    samples
}

/// The value of `name` with `labels` (a subset); 0 when absent.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|sample| sample.name == name)
        .filter(|sample| {
            labels
                .iter()
                .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
        })
        .map(|sample| sample.value)
        .sum()
}

async fn scrape(port: u16) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the metrics listener");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("http response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `promtool check metrics` accepts `text` (promtool is installed by
/// scripts/test).
fn promtool_accepts(role: &str, text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/test installs Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics rejected the {role} role's metrics:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

struct Role {
    process: Process,
    metrics: u16,
}

async fn role(name: &str, redis: &str, prefix: &str, extra: &[&str]) -> Role {
    let metrics = free_port();
    let listen = format!("127.0.0.1:{metrics}");
    let mut args = vec![
        "serve",
        name,
        "--store",
        redis,
        "--redis-prefix",
        prefix,
        "--metrics-listen",
        &listen,
        "--heartbeat-interval",
        "200ms",
        "--lease-ttl",
        "1s",
    ];
    // The settings the suite runs at (scripts/test also runs 8 partitions).
    let partitions = conveyor_store::conformance::test_partitions().to_string();
    args.extend_from_slice(&["--partitions", &partitions]);
    args.extend_from_slice(extra);
    let process = spawn_conveyor(&args, "127.0.0.1:0").await;
    Role { process, metrics }
}

async fn eventually_scraped(
    port: u16,
    what: &str,
    check: impl Fn(&[Sample]) -> bool,
) -> Vec<Sample> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let samples = parse(&scrape(port).await);
        if check(&samples) {
            return samples;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never held; last scrape: {samples:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const OK: usize = 20;
const FLAKY: usize = 5;
const BAD: usize = 3;
const LATER: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_counts_exactly() {
    let Some(redis) = conveyor_store::conformance::test_redis_url() else {
        return;
    };
    let prefix = format!("metrics-{}:", uuid::Uuid::new_v4().simple());
    let submission = role("submission", &redis, &prefix, &[]).await;
    let results = role("results", &redis, &prefix, &[]).await;
    let dispatch = role("dispatch", &redis, &prefix, &[]).await;
    let submission_url = format!("http://{}", submission.process.addr);
    let scheduling = role(
        "scheduling",
        &redis,
        &prefix,
        &["--submission-url", &submission_url],
    )
    .await;

    let channel = |addr: &str| {
        Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy()
    };
    let client = Client::from_channels(
        channel(&submission.process.addr),
        channel(&results.process.addr),
    );

    // Submissions: one batch, then one at a time.
    let mut batch = Vec::new();
    for (name, count) in [("m.ok", OK), ("m.flaky", FLAKY), ("m.bad", BAD)] {
        for index in 0..count {
            batch.push(TaskRequest::new(name).queue("m").arg(index).max_retries(2));
        }
    }
    let ids = client.submit_many(batch).await.unwrap();
    let mut later = Vec::new();
    for index in 0..LATER {
        let request = TaskRequest::new("m.later")
            .queue("m")
            .arg(index)
            .countdown(Duration::from_secs(3600));
        later.push(client.submit(request).await.unwrap());
    }
    assert!(client.cancel(&later[0]).await.unwrap());
    // Nobody serves its queue: the scheduler's sweep expires it.
    let expiring = TaskRequest::new("m.expiring")
        .queue("m-idle")
        .expires(SystemTime::now() + Duration::from_millis(300));
    let expiring = client.submit(expiring).await.unwrap();

    // Before any worker: every ready task is counted in its queue.
    let ready = (OK + FLAKY + BAD) as f64;
    eventually_scraped(
        dispatch.metrics,
        "the queue depth before workers",
        |samples| {
            value(
                samples,
                "conveyor_queue_depth",
                &[("queue", "m"), ("state", "ready")],
            ) == ready
                && value(samples, "conveyor_queue_depth", &[("state", "scheduled")])
                    == (LATER - 1) as f64
        },
    )
    .await;

    let stop = CancellationToken::new();
    let worker = Worker::from_channel(channel(&dispatch.process.addr))
        .queues(["m"])
        .concurrency(4)
        .register("m.ok", |_ctx: TaskContext| async { Ok(Value::Null) })
        .register("m.flaky", |ctx: TaskContext| async move {
            if ctx.attempt() == 1 {
                Err(TaskFailure::new("Flaky", "first attempt").retry_in(Duration::from_millis(20)))
            } else {
                Ok(Value::Null)
            }
        })
        .register("m.bad", |_ctx: TaskContext| async {
            Err(TaskFailure::new("Bad", "always").non_retryable())
        })
        .build()
        .unwrap();
    let handle = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = worker.run_until(stop.cancelled_owned()).await;
        })
    };
    for id in &ids {
        let task = client.wait(id, Duration::from_secs(30)).await.unwrap();
        assert!(
            task.state == pb::TaskState::Succeeded as i32
                || task.state == pb::TaskState::Failed as i32
        );
    }
    let task = client
        .wait(&expiring, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(task.state, pb::TaskState::Expired as i32);
    for id in &ids[..3] {
        client.get(id).await.unwrap();
    }

    // Submission: what was accepted and cancelled, and its calls.
    let samples = parse(&scrape(submission.metrics).await);
    let task = |name| [("namespace", "default"), ("queue", "m"), ("task", name)];
    for (name, count) in [
        ("m.ok", OK),
        ("m.flaky", FLAKY),
        ("m.bad", BAD),
        ("m.later", LATER),
    ] {
        assert_eq!(
            value(&samples, "conveyor_tasks_submitted_total", &task(name)),
            count as f64,
            "{name}"
        );
    }
    let idle = [("queue", "m-idle"), ("task", "m.expiring")];
    assert_eq!(
        value(&samples, "conveyor_tasks_submitted_total", &idle),
        1.0
    );
    assert_eq!(
        value(&samples, "conveyor_tasks_cancelled_total", &task("m.later")),
        1.0
    );
    let rpc = |method| {
        [
            ("service", "conveyor.v1.SubmissionService"),
            ("method", method),
            ("code", "OK"),
        ]
    };
    assert_eq!(
        value(&samples, "conveyor_rpc_requests_total", &rpc("SubmitTasks")),
        1.0
    );
    assert_eq!(
        value(&samples, "conveyor_rpc_requests_total", &rpc("SubmitTask")),
        (LATER + 1) as f64
    );
    assert_eq!(
        value(&samples, "conveyor_rpc_requests_total", &rpc("CancelTask")),
        1.0
    );

    // Dispatch: attempts and outcomes, and the depths once drained.
    let samples = eventually_scraped(dispatch.metrics, "the drained queue's depth", |samples| {
        value(
            samples,
            "conveyor_queue_depth",
            &[("queue", "m"), ("state", "ready")],
        ) == 0.0
            && value(samples, "conveyor_queue_depth", &[("state", "leased")]) == 0.0
            && value(samples, "conveyor_workers_connected", &[]) == 1.0
    })
    .await;
    assert_eq!(
        value(&samples, "conveyor_tasks_started_total", &task("m.ok")),
        OK as f64
    );
    assert_eq!(
        value(&samples, "conveyor_tasks_started_total", &task("m.flaky")),
        (2 * FLAKY) as f64
    );
    assert_eq!(
        value(&samples, "conveyor_tasks_started_total", &task("m.bad")),
        BAD as f64
    );
    assert_eq!(
        value(&samples, "conveyor_tasks_succeeded_total", &task("m.ok")),
        OK as f64
    );
    assert_eq!(
        value(&samples, "conveyor_tasks_succeeded_total", &task("m.flaky")),
        FLAKY as f64
    );
    assert_eq!(
        value(&samples, "conveyor_tasks_retried_total", &task("m.flaky")),
        FLAKY as f64
    );
    assert_eq!(
        value(&samples, "conveyor_tasks_failed_total", &task("m.bad")),
        BAD as f64
    );
    assert_eq!(
        value(&samples, "conveyor_tasks_failed_total", &task("m.ok")),
        0.0
    );
    assert_eq!(
        value(
            &samples,
            "conveyor_task_latency_seconds_count",
            &task("m.ok")
        ),
        OK as f64
    );
    assert_eq!(
        value(
            &samples,
            "conveyor_task_queue_wait_seconds_count",
            &task("m.flaky")
        ),
        FLAKY as f64
    );
    assert_eq!(
        value(&samples, "conveyor_queue_depth", &[("state", "scheduled")]),
        (LATER - 1) as f64
    );
    assert_eq!(
        value(&samples, "conveyor_queue_depth", &[("state", "dead")]),
        BAD as f64
    );
    assert_eq!(value(&samples, "conveyor_worker_slots", &[]), 4.0);

    // Scheduling: the expired task; results: its calls.
    let samples = parse(&scrape(scheduling.metrics).await);
    assert_eq!(value(&samples, "conveyor_tasks_expired_total", &[]), 1.0);
    assert_eq!(value(&samples, "conveyor_leases_reaped_total", &[]), 0.0);
    let samples = parse(&scrape(results.metrics).await);
    let get = [
        ("service", "conveyor.v1.ResultsService"),
        ("method", "GetTask"),
        ("code", "OK"),
    ];
    assert_eq!(value(&samples, "conveyor_rpc_requests_total", &get), 3.0);
    assert!(
        value(
            &samples,
            "conveyor_rpc_requests_total",
            &[("method", "WaitTask")]
        ) >= (ids.len() + 1) as f64
    );

    for (name, role) in [
        ("submission", &submission),
        ("results", &results),
        ("dispatch", &dispatch),
        ("scheduling", &scheduling),
    ] {
        promtool_accepts(name, &scrape(role.metrics).await);
    }
    stop.cancel();
    handle.await.unwrap();
}
