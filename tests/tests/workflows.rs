//! Workflows against the real services, on both stores: every canvas
//! primitive and nesting through the Rust SDK and a real worker, results in
//! declaration order, failures with their cause chain, WatchWorkflow, the
//! CLI's tree, bad DAGs refused with nothing stored; and, on Redis, a chord
//! of 10,000 under worker and dispatcher SIGKILLs whose callback runs once.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use conveyor_api::pb;
use conveyor_client::canvas::{Canvas, chain, chord, group};
use conveyor_client::{Client, Error, TaskContext, TaskFailure, TaskRequest, Worker};
use conveyor_store::conformance::test_redis_url;
use conveyor_tests::processes::{Process, conveyor_binary, spawn_chaos_worker, spawn_conveyor};
use conveyor_tests::{Backend, TestCluster, on_both_stores, violated_field};

on_both_stores!(
    canvas_primitives_and_nesting_run_in_order,
    failures_name_their_cause_and_link_error_runs_once,
    watch_and_cancel_a_workflow,
    bad_workflows_are_refused_and_store_nothing
);

fn start_worker(cluster: &TestCluster, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    let worker = Worker::from_channel(cluster.channel.clone())
        .worker_id("wf-worker")
        .concurrency(8)
        .grace_period(Duration::from_millis(500))
        .register("add", |ctx: TaskContext| async move {
            let (left, right): (i64, i64) = (ctx.arg(0)?, ctx.arg(1)?);
            Ok(json!(left + right))
        })
        .register("xsum", |ctx: TaskContext| async move {
            let numbers: Vec<i64> = ctx.arg(0)?;
            Ok(json!(numbers.iter().sum::<i64>()))
        })
        .register("echo", |ctx: TaskContext| async move {
            let value: Value = ctx.arg(0)?;
            Ok(json!({"value": value, "workflow": ctx.workflow_id()}))
        })
        .register("fail", |_ctx: TaskContext| async move {
            Err::<Value, _>(TaskFailure::new("ValueError", "boom").non_retryable())
        })
        .register("seen", |ctx: TaskContext| async move {
            let failed: String = ctx.arg(0)?;
            let error: Value = ctx.arg(1)?;
            Ok(json!([failed, error["message"]]))
        })
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

fn add(a: i64) -> Canvas {
    TaskRequest::new("add").arg(a).into()
}

const WAIT: Duration = Duration::from_secs(20);

async fn canvas_primitives_and_nesting_run_in_order(backend: Backend) {
    let Some(cluster) = TestCluster::start(backend).await else {
        return;
    };
    let stop = CancellationToken::new();
    let worker = start_worker(&cluster, stop.clone());
    let client = Client::from_channel(cluster.channel.clone());
    let run = |canvas: Canvas| {
        let client = client.clone();
        async move {
            let handle = client.submit_workflow(canvas).await.unwrap();
            client
                .workflow_result::<Value>(&handle.id, WAIT)
                .await
                .unwrap()
        }
    };
    // chain: each step gets the previous result first.
    let first: Canvas = TaskRequest::new("add").arg(1).arg(2).into();
    assert_eq!(
        run(chain([first.clone(), add(10), add(100)])).await,
        json!(113)
    );
    // group: results in declaration order.
    let numbers = group((0..20).map(|i| TaskRequest::new("add").arg(i).arg(i)));
    assert_eq!(
        run(numbers).await,
        json!((0..20).map(|i| i * 2).collect::<Vec<_>>())
    );
    // chain of a group then a task: a chord (Celery's rule).
    assert_eq!(
        run(chain([
            first.clone(),
            group((0..10).map(add)),
            TaskRequest::new("xsum").into()
        ]))
        .await,
        json!(75)
    );
    // group of chains; chord inside a chain; chord of chords.
    assert_eq!(
        run(group([
            chain([first.clone(), add(1)]),
            chain([first.clone(), add(2)])
        ]))
        .await,
        json!([4, 5])
    );
    assert_eq!(
        run(chain([
            first.clone(),
            chord([add(1), add(2)], TaskRequest::new("xsum")),
            add(1000)
        ]))
        .await,
        json!(1009)
    );
    let inner = |n: i64| chord([add(n), add(n)], TaskRequest::new("xsum"));
    let zero: Canvas = TaskRequest::new("add").arg(0).arg(0).into();
    assert_eq!(
        run(chain([
            zero,
            chord([inner(1), inner(2)], TaskRequest::new("xsum"))
        ]))
        .await,
        json!(6)
    );
    // An immutable signature ignores its parent; a link gets the result.
    let handle = client
        .submit_workflow(
            chain([
                first.clone(),
                Canvas::immutable(TaskRequest::new("echo").arg("alone")),
            ])
            .link(TaskRequest::new("echo")),
        )
        .await
        .unwrap();
    let result: Value = client.workflow_result(&handle.id, WAIT).await.unwrap();
    assert_eq!(result["value"], "alone");
    assert_eq!(
        result["workflow"],
        handle.id.as_str(),
        "handlers see their workflow"
    );
    let linked = client.wait(&handle.task_ids[2], WAIT).await.unwrap();
    let linked: Value = serde_json::from_slice(&linked.result.unwrap().data).unwrap();
    assert_eq!(linked["value"]["value"], "alone");
    let task = client.get(&handle.task_ids[0]).await.unwrap();
    assert_eq!(task.workflow_id, handle.id);
    stop.cancel();
    worker.await.unwrap();
    cluster.stop().await.unwrap();
}

async fn failures_name_their_cause_and_link_error_runs_once(backend: Backend) {
    let Some(cluster) = TestCluster::start(backend).await else {
        return;
    };
    let stop = CancellationToken::new();
    let worker = start_worker(&cluster, stop.clone());
    let client = Client::from_channel(cluster.channel.clone());
    // fail | add | add, with a link_error on the whole chain.
    let canvas = chain([TaskRequest::new("fail").into(), add(1), add(2)])
        .link_error(TaskRequest::new("seen"));
    let handle = client.submit_workflow(canvas).await.unwrap();
    match client.workflow_result::<Value>(&handle.id, WAIT).await {
        Err(Error::TaskFailed { message, .. }) => {
            assert!(message.contains(&handle.task_ids[0]), "{message}")
        }
        other => panic!("expected TaskFailed, got {other:?}"),
    }
    let workflow = client.get_workflow(&handle.id).await.unwrap();
    assert_eq!(workflow.state, pb::WorkflowState::Failed as i32);
    assert_eq!(workflow.failed_task_id, handle.task_ids[0]);
    let task = |index: usize| workflow.nodes[index].task.clone().unwrap();
    // The cause chain: node 2 names node 1, which names node 0.
    let second = task(1).error.unwrap();
    let third = task(2).error.unwrap();
    assert_eq!(second.reason, pb::FailureReason::DependencyFailed as i32);
    assert_eq!(second.cause_task_id, handle.task_ids[0]);
    assert_eq!(third.cause_task_id, handle.task_ids[1]);
    assert_eq!(task(1).attempt, 0, "a dependent that cannot run never runs");
    // The errback ran once, with the root failure.
    let errback = task(3);
    assert_eq!(errback.state, pb::TaskState::Succeeded as i32);
    assert_eq!(errback.attempt, 1);
    let seen: Value = serde_json::from_slice(&errback.result.unwrap().data).unwrap();
    assert_eq!(seen, json!([handle.task_ids[0], "boom"]));
    // A chord that opts in to errors gets them in place.
    let canvas = chord(
        [add(1).then(add(1)), TaskRequest::new("fail").into()],
        TaskRequest::new("echo"),
    )
    .allow_errors();
    let handle = client
        .submit_workflow(chain([
            TaskRequest::new("add").arg(0).arg(0).into(),
            canvas,
        ]))
        .await
        .unwrap();
    let workflow = client.wait_workflow(&handle.id, WAIT).await.unwrap();
    assert_eq!(workflow.state, pb::WorkflowState::Failed as i32);
    let body = client.get(&handle.output_task_ids[0]).await.unwrap();
    let got: Value = serde_json::from_slice(&body.result.unwrap().data).unwrap();
    assert_eq!(got["value"][0], 2);
    assert_eq!(got["value"][1]["error"]["message"], "boom");
    stop.cancel();
    worker.await.unwrap();
    cluster.stop().await.unwrap();
}

async fn watch_and_cancel_a_workflow(backend: Backend) {
    let Some(cluster) = TestCluster::start(backend).await else {
        return;
    };
    let stop = CancellationToken::new();
    let worker = start_worker(&cluster, stop.clone());
    let client = Client::from_channel(cluster.channel.clone());
    // Watch: snapshots until the end, the last one SUCCEEDED.
    let handle = client
        .submit_workflow(chain([
            TaskRequest::new("add").arg(1).arg(1).into(),
            add(1),
            add(1),
        ]))
        .await
        .unwrap();
    let mut stream = cluster
        .results()
        .watch_workflow(pb::WatchWorkflowRequest {
            workflow_id: handle.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut snapshots = Vec::new();
    while let Some(snapshot) = tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
        snapshots.push(snapshot.unwrap().workflow.unwrap());
    }
    let last = snapshots.last().unwrap();
    assert_eq!(last.state, pb::WorkflowState::Succeeded as i32);
    assert_eq!(last.result.as_ref().unwrap().data, b"4");
    assert_eq!(last.state_counts[pb::TaskState::Succeeded as usize], 3);
    // The CLI prints the tree and the JSON.
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(conveyor_binary())
            .args(args)
            .args(["--server", &format!("http://{}", cluster.addr)])
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (ok, tree) = cli(&["workflow", "get", &handle.id]);
    assert!(ok, "{tree}");
    assert!(
        tree.contains("SUCCEEDED") && tree.contains("#2 add SUCCEEDED = 4"),
        "{tree}"
    );
    let (ok, text) = cli(&["workflow", "get", &handle.id, "--json"]);
    assert!(ok);
    let parsed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(parsed["state"], "SUCCEEDED");
    assert_eq!(parsed["nodes"][2]["result"], 4);
    let (ok, text) = cli(&["workflow", "wait", &handle.id, "--timeout", "5s"]);
    assert!(ok && text.contains("result: 4"), "{text}");
    // Cancel: running, queued and waiting nodes at once; none starts after.
    let handle = client
        .submit_workflow(chain([
            group([TaskRequest::new("hang"), TaskRequest::new("hang")]),
            TaskRequest::new("xsum").into(),
        ]))
        .await
        .unwrap();
    let running = conveyor_tests::eventually(WAIT, || {
        let client = client.clone();
        let id = handle.task_ids[0].clone();
        async move { client.get(&id).await.unwrap().state == pb::TaskState::Running as i32 }
    })
    .await;
    assert!(running);
    let (ok, text) = cli(&["workflow", "cancel", &handle.id]);
    assert!(
        ok && text.contains("cancelled 3 task(s); workflow is CANCELLED"),
        "{text}"
    );
    let workflow = client.get_workflow(&handle.id).await.unwrap();
    assert_eq!(workflow.state, pb::WorkflowState::Cancelled as i32);
    assert!(
        workflow
            .nodes
            .iter()
            .all(|node| node.task.as_ref().unwrap().state == pb::TaskState::Cancelled as i32)
    );
    assert_eq!(client.cancel_workflow(&handle.id).await.unwrap(), 0);
    // Another namespace sees no such workflow.
    let other = client.clone().with_namespace("elsewhere");
    let error = other.get_workflow(&handle.id).await.unwrap_err();
    assert!(matches!(error, Error::Rpc(status) if status.code() == tonic::Code::NotFound));
    stop.cancel();
    worker.await.unwrap();
    cluster.stop().await.unwrap();
}

async fn bad_workflows_are_refused_and_store_nothing(backend: Backend) {
    let Some(cluster) = TestCluster::start(backend).await else {
        return;
    };
    let before = cluster.store.queue_depths().await.unwrap();
    let node = |name: &str, parents: &[u32]| pb::WorkflowNode {
        task: Some(conveyor_tests::spec(name, &[])),
        parents: parents.to_vec(),
        ..Default::default()
    };
    let cases: Vec<(Vec<pb::WorkflowNode>, tonic::Code, &str)> = vec![
        (vec![], tonic::Code::InvalidArgument, "workflow.nodes"),
        (
            vec![node("a", &[1]), node("b", &[0])],
            tonic::Code::InvalidArgument,
            "workflow.nodes[0].parents",
        ),
        (
            vec![node("a", &[]), node("b", &[5])],
            tonic::Code::InvalidArgument,
            "workflow.nodes[1].parents[0]",
        ),
        (
            vec![node("a", &[]), node("", &[0])],
            tonic::Code::InvalidArgument,
            "workflow.nodes[1].task.name",
        ),
        (
            (0..=conveyor_core::workflow::MAX_NODES)
                .map(|_| node("a", &[]))
                .collect(),
            tonic::Code::ResourceExhausted,
            "workflow.nodes",
        ),
    ];
    for (nodes, code, field) in cases {
        let status = cluster
            .submission()
            .max_encoding_message_size(64 << 20)
            .submit_workflow(pb::SubmitWorkflowRequest {
                workflow: Some(pb::WorkflowSpec {
                    nodes,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{field}: {}", status.message());
        assert_eq!(
            violated_field(&status).as_deref(),
            Some(field),
            "{}",
            status.message()
        );
    }
    let status = cluster
        .results()
        .get_workflow(pb::GetWorkflowRequest {
            workflow_id: uuid::Uuid::now_v7().to_string(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(
        cluster.store.queue_depths().await.unwrap(),
        before,
        "nothing stored"
    );
    cluster.stop().await.unwrap();
}

/// A chord of 10,000 `work` header tasks and a `collect` callback on Redis,
/// with a chaos worker SIGKILLed every 2 s and the dispatcher SIGKILLed
/// once: the callback runs exactly once and gets all 10,000 results in
/// order; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chord_of_10000_survives_worker_and_dispatcher_kills() {
    let Some(redis_url) = test_redis_url() else {
        return;
    };
    let prefix = format!("chaos-chord-{}:", uuid::Uuid::new_v4().simple());
    let args = |roles: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = roles.iter().map(|role| role.to_string()).collect();
        for flag in [
            "--store",
            &redis_url,
            "--redis-prefix",
            &prefix,
            "--heartbeat-interval",
            "200ms",
            "--lease-ttl",
            "1s",
        ] {
            args.push(flag.to_string());
        }
        args
    };
    let spawn = |roles: &'static [&'static str], listen: String| {
        let args = args(roles);
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            spawn_conveyor(&args, &listen).await
        }
    };
    let front = spawn(
        &["serve", "submission", "results", "scheduling"],
        "127.0.0.1:0".into(),
    )
    .await;
    let dispatcher = spawn(&["serve", "dispatch"], "127.0.0.1:0".into()).await;
    let dispatch_addr = dispatcher.addr.clone();
    let mut workers: Vec<Process> = (0..4)
        .map(|index| spawn_chaos_worker(&dispatch_addr, &redis_url, &prefix, &format!("w{index}")))
        .collect();
    let client = Client::connect(format!("http://{}", front.addr))
        .await
        .unwrap();
    let n = 10_000usize;
    let canvas = chord(
        (0..n).map(|i| TaskRequest::new("work").arg(i).arg(20)),
        TaskRequest::new("collect"),
    );
    let started = Instant::now();
    let handle = client.submit_workflow(canvas).await.unwrap();
    let mut kills = 0;
    let mut dispatcher = Some(dispatcher);
    let mut dispatcher_killed = false;
    let mut replacement = None;
    let mut next_kill = Instant::now() + Duration::from_secs(2);
    let workflow = loop {
        let wait = client
            .wait_workflow(&handle.id, Duration::from_millis(200))
            .await;
        match wait {
            Ok(workflow) => break workflow,
            Err(error) if error.is_timeout() => {}
            Err(error) => panic!("waiting: {error}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the chord never finished"
        );
        if Instant::now() >= next_kill {
            next_kill += Duration::from_secs(2);
            let victim = kills % workers.len();
            let fresh = spawn_chaos_worker(
                &dispatch_addr,
                &redis_url,
                &prefix,
                &format!("w{victim}-{kills}"),
            );
            std::mem::replace(&mut workers[victim], fresh).kill().await;
            kills += 1;
            if kills == 2 && !dispatcher_killed {
                dispatcher.take().unwrap().kill().await;
                dispatcher_killed = true;
                replacement = Some(spawn(&["serve", "dispatch"], dispatch_addr.clone()).await);
            }
        }
    };
    let elapsed = started.elapsed();
    assert_eq!(workflow.state, pb::WorkflowState::Succeeded as i32);
    let result: Value = serde_json::from_slice(&workflow.result.unwrap().data).unwrap();
    assert_eq!(result, json!({"count": n, "ordered": true}));
    // Executions, as the workers counted them in Redis.
    let mut connection =
        conveyor_store::redis::connection::Connection::open(&redis_url, Duration::from_secs(5))
            .await
            .unwrap();
    let mut executions = 0i64;
    let mut never = 0;
    for chunk in handle.task_ids.chunks(1000) {
        let keys: Vec<String> = chunk
            .iter()
            .map(|id| format!("{prefix}exec:{id}"))
            .collect();
        let counts: Vec<Option<i64>> = ::redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut connection)
            .await
            .unwrap();
        executions += counts.iter().flatten().sum::<i64>();
        never += counts.iter().filter(|count| count.is_none()).count();
    }
    let callback = &handle.output_task_ids[0];
    let callback_runs: Option<i64> = ::redis::cmd("GET")
        .arg(format!("{prefix}exec:{callback}"))
        .query_async(&mut connection)
        .await
        .unwrap();
    println!(
        "chord chaos: {n} headers + callback in {elapsed:?}; {kills} worker SIGKILLs, dispatcher killed: \
         {dispatcher_killed}; executions {executions} (re-runs {}), callback executions {callback_runs:?}, lost 0",
        executions - (n as i64 + 1)
    );
    assert_eq!(never, 0, "every task ran");
    assert_eq!(callback_runs, Some(1), "the callback runs exactly once");
    assert!(kills >= 2 && dispatcher_killed, "the run saw {kills} kills");
    for worker in workers {
        worker.kill().await;
    }
    if let Some(replacement) = replacement {
        replacement.kill().await;
    }
    front.kill().await;
}
