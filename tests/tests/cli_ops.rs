//! The operator's commands against a real server, their `--json` output
//! parsed: dead letters listed, replayed (and then succeeding) and
//! forgotten; a paused queue leases nothing until resumed; schedules
//! created, listed, paused, resumed, triggered, their runs read, deleted;
//! `submit`, `get`, `wait`, `cancel` and `workers` as JSON; errors exit 1
//! with the status on stderr.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conveyor_client::{TaskContext, TaskFailure, Worker};
use conveyor_tests::eventually;
use conveyor_tests::processes::{conveyor_binary, spawn_conveyor};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Runs `conveyor ARGS --server URL`; (exit success, stdout, stderr).
async fn cli(url: &str, args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(conveyor_binary())
        .args(args)
        .args(["--server", url])
        .env("RUST_LOG", "warn")
        .env_remove("CONVEYOR_NAMESPACE")
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs a command that must succeed with `--json`, and parses its output.
async fn json(url: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, out, err) = cli(url, &all).await;
    assert!(ok, "conveyor {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|error| panic!("{args:?} printed {out:?}: {error}"))
}

async fn state(url: &str, id: &str) -> String {
    json(url, &["get", id]).await["state"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_with_json() {
    let server = spawn_conveyor(
        &[
            "dev",
            "--metrics-listen",
            "off",
            "--heartbeat-interval",
            "200ms",
        ],
        "127.0.0.1:0",
    )
    .await;
    let url = format!("http://{}", server.addr);

    // A worker whose `flaky` fails the first run of each task, then succeeds.
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let stop = CancellationToken::new();
    let worker = Worker::builder(url.as_str())
        .worker_id("ops-worker")
        .queues(["default", "ops"])
        .register("flaky", {
            let seen = seen.clone();
            move |ctx: TaskContext| {
                let first = seen.lock().unwrap().insert(ctx.task_id().to_string());
                async move {
                    if first {
                        Err(TaskFailure::new("Flaky", "first run fails").non_retryable())
                    } else {
                        Ok(Value::from("fine"))
                    }
                }
            }
        })
        .register("add", |ctx: TaskContext| async move {
            let (a, b): (i64, i64) = (ctx.arg(0)?, ctx.arg(1)?);
            Ok(Value::from(a + b))
        })
        .build()
        .unwrap();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run_until(stop.cancelled_owned()).await }
    });

    // submit / wait / get as JSON.
    let submitted = json(&url, &["submit", "add", "--arg", "2", "--arg", "3"]).await;
    let id = submitted["id"].as_str().unwrap().to_string();
    assert_eq!(submitted["duplicate"], false);
    let done = json(&url, &["wait", &id]).await;
    assert_eq!(done["state"], "SUCCEEDED");
    assert_eq!(done["result"], 5);
    // `wait` answers with the outcome; `get` with the whole task.
    assert_eq!(
        json(&url, &["get", &id]).await["args"],
        serde_json::json!([2, 3])
    );
    let workers = json(&url, &["workers"]).await;
    assert!(
        workers
            .as_array()
            .unwrap()
            .iter()
            .any(|worker| worker["worker_id"] == "ops-worker"),
        "{workers}"
    );

    // Dead letters: two failures; one replayed (then succeeds), one forgotten.
    let first = json(&url, &["submit", "flaky"]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (ok, _, err) = cli(&url, &["wait", &first]).await;
    assert!(!ok && err.contains("Flaky"), "{err}");
    let second = json(&url, &["submit", "flaky"]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (ok, _, _) = cli(&url, &["wait", &second]).await;
    assert!(!ok);
    let dead = json(&url, &["dlq", "list"]).await;
    let dead_ids: Vec<&str> = dead
        .as_array()
        .unwrap()
        .iter()
        .map(|task| task["id"].as_str().unwrap())
        .collect();
    assert!(dead_ids.contains(&first.as_str()), "{dead}");
    let entry = dead
        .as_array()
        .unwrap()
        .iter()
        .find(|task| task["id"] == first.as_str())
        .unwrap();
    assert_eq!(entry["error"]["type"], "Flaky");
    assert_eq!(entry["state"], "FAILED");
    let replayed = json(&url, &["dlq", "replay", &first]).await;
    assert_eq!(replayed[0]["id"], first.as_str());
    let after = json(&url, &["wait", &first]).await;
    assert_eq!(after["state"], "SUCCEEDED", "{after}");
    assert_eq!(after["result"], "fine");
    assert!(dead_ids.contains(&second.as_str()), "{dead}");
    let forgotten = json(&url, &["dlq", "forget", &second]).await;
    assert_eq!(forgotten["forgotten"][0], second.as_str());
    let (ok, _, err) = cli(&url, &["get", &second]).await;
    assert!(!ok && err.contains("NotFound"), "{err}");
    assert_eq!(json(&url, &["dlq", "list"]).await, serde_json::json!([]));
    let (ok, _, err) = cli(&url, &["dlq", "replay", "not-an-id"]).await;
    assert!(!ok && err.contains("InvalidArgument"), "{err}");

    // Pause: nothing leased from the queue until it is resumed.
    let paused = json(&url, &["pause", "ops"]).await;
    assert_eq!(paused, serde_json::json!({"queue": "ops", "paused": true}));
    let held = json(
        &url,
        &[
            "submit", "add", "--arg", "1", "--arg", "1", "--queue", "ops",
        ],
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The worker is idle and takes `ops`: a lease would come within
    // milliseconds; half a second of QUEUED is the paused queue.
    let leased = eventually(Duration::from_millis(500), || async {
        state(&url, &held).await != "QUEUED"
    })
    .await;
    assert!(!leased, "a task of a paused queue was leased");
    // `queues`: the paused queue with its one ready task and its consumer.
    let queues = json(&url, &["queues"]).await;
    let ops = queues
        .as_array()
        .unwrap()
        .iter()
        .find(|queue| queue["name"] == "ops")
        .unwrap_or_else(|| panic!("no ops queue in {queues}"));
    assert_eq!(ops["ready"], 1, "{ops}");
    assert_eq!(ops["paused"], true);
    assert_eq!(ops["ready_by_task"]["add"], 1);
    assert_eq!(ops["ready_by_priority"]["0"], 1);
    assert_eq!(ops["workers"], 1);
    let resumed = json(&url, &["resume", "ops"]).await;
    assert_eq!(resumed["paused"], false);
    assert_eq!(json(&url, &["wait", &held]).await["result"], 2);

    // Cancel as JSON: a finished task is not cancelled.
    let cancelled = json(&url, &["cancel", &held]).await;
    assert_eq!(cancelled["cancelled"], false);
    assert_eq!(cancelled["state"], "SUCCEEDED");

    // Schedules.
    let created = json(
        &url,
        &[
            "schedules",
            "create",
            "hourly-add",
            "--task",
            "add",
            "--arg",
            "20",
            "--arg",
            "22",
            "--every",
            "1h",
        ],
    )
    .await;
    assert_eq!(created["id"], "hourly-add");
    assert_eq!(created["rule"], "every 1h");
    assert_eq!(created["paused"], false);
    let listed = json(&url, &["schedules", "list"]).await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(
        json(&url, &["schedules", "pause", "hourly-add"]).await["paused"],
        true
    );
    assert_eq!(
        json(&url, &["schedules", "get", "hourly-add"]).await["paused"],
        true
    );
    assert_eq!(
        json(&url, &["schedules", "resume", "hourly-add"]).await["paused"],
        false
    );
    let run = json(&url, &["schedules", "trigger", "hourly-add"]).await;
    assert_eq!(run["triggered"], true);
    let task = run["task_id"].as_str().unwrap().to_string();
    assert_eq!(json(&url, &["wait", &task]).await["result"], 42);
    let runs = json(&url, &["schedules", "runs", "hourly-add"]).await;
    assert!(
        runs.as_array()
            .unwrap()
            .iter()
            .any(|run| run["task_id"] == task.as_str() && run["triggered"] == true),
        "{runs}"
    );
    let (ok, _, err) = cli(
        &url,
        &[
            "schedules",
            "create",
            "bad",
            "--task",
            "add",
            "--cron",
            "61 * * * *",
        ],
    )
    .await;
    assert!(!ok && err.contains("cron"), "{err}");
    assert_eq!(
        json(&url, &["schedules", "delete", "hourly-add"]).await["deleted"],
        "hourly-add"
    );
    assert_eq!(
        json(&url, &["schedules", "list"]).await,
        serde_json::json!([])
    );

    // The text forms run too.
    for args in [
        vec!["dlq", "list"],
        vec!["schedules", "list"],
        vec!["workers"],
        vec!["queues"],
        vec!["get", id.as_str()],
    ] {
        let (ok, out, err) = cli(&url, &args).await;
        assert!(ok && !out.is_empty(), "{args:?}: {err}");
    }

    stop.cancel();
    let _ = running.await;
    server.kill().await;
}
