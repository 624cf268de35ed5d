//! Chaos on real processes and real Redis, bounded in time. Each test prints
//! its counts (submitted, succeeded, executions, duplicates executed,
//! outcomes recorded, lost) and fails on any loss or double record.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};

use conveyor_api::pb;
use conveyor_store::conformance::test_redis_url;
use conveyor_tests::processes::{Process, spawn_chaos_worker, spawn_conveyor};
use conveyor_tests::spec;

struct Chaos {
    redis: String,
    prefix: String,
}

impl Chaos {
    fn new(redis: &str, name: &str) -> Self {
        Self {
            redis: redis.to_string(),
            prefix: format!("chaos-{name}-{}:", uuid::Uuid::new_v4().simple()),
        }
    }

    fn server_args(&self, roles: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = roles.iter().map(|role| role.to_string()).collect();
        for flag in [
            "--store",
            &self.redis,
            "--redis-prefix",
            &self.prefix,
            "--heartbeat-interval",
            "200ms",
            "--lease-ttl",
            "1s",
        ] {
            args.push(flag.to_string());
        }
        args
    }

    async fn server(&self, roles: &[&str], listen: &str) -> Process {
        let args = self.server_args(roles);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        spawn_conveyor(&args, listen).await
    }

    fn worker(&self, addr: &str, id: &str) -> Process {
        spawn_chaos_worker(addr, &self.redis, &self.prefix, id)
    }

    /// Executions per task, as counted by the workers.
    async fn executions(&self, ids: &[String]) -> HashMap<String, i64> {
        let mut connection = conveyor_store::redis::connection::Connection::open(
            &self.redis,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let mut counts = HashMap::new();
        for chunk in ids.chunks(1000) {
            let keys: Vec<String> = chunk
                .iter()
                .map(|id| format!("{}exec:{id}", self.prefix))
                .collect();
            let values: Vec<Option<i64>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut connection)
                .await
                .unwrap();
            for (id, value) in chunk.iter().zip(values) {
                counts.insert(id.clone(), value.unwrap_or(0));
            }
        }
        counts
    }
}

async fn channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn submit_work(channel: &Channel, count: usize, sleep_ms: u64) -> Vec<String> {
    let mut submission =
        pb::submission_service_client::SubmissionServiceClient::new(channel.clone());
    let mut ids = Vec::with_capacity(count);
    for start in (0..count).step_by(1000) {
        let tasks = (start..(start + 1000).min(count))
            .map(|n| spec("work", &[json!(n), json!(sleep_ms)]))
            .collect();
        let response = submission
            .submit_tasks(pb::SubmitTasksRequest {
                tasks,
                ..Default::default()
            })
            .await
            .unwrap();
        ids.extend(
            response
                .into_inner()
                .results
                .into_iter()
                .map(|result| result.task_id),
        );
    }
    ids
}

/// Waits for every task (in order) and checks each result is recorded once
/// with the right value; prints and returns the counts.
async fn settle(chaos: &Chaos, channel: &Channel, ids: &[String], label: &str) -> (usize, i64) {
    let results = pb::results_service_client::ResultsServiceClient::new(channel.clone());
    let finished: Vec<Option<pb::Task>> = futures::stream::iter(ids.iter().cloned())
        .map(|id| {
            let mut results = results.clone();
            async move {
                let request = pb::WaitTaskRequest {
                    task_id: id,
                    timeout: Some(prost_types::Duration {
                        seconds: 90,
                        nanos: 0,
                    }),
                    ..Default::default()
                };
                results
                    .wait_task(request)
                    .await
                    .ok()
                    .and_then(|response| response.into_inner().task)
            }
        })
        .buffered(32)
        .collect()
        .await;
    let mut succeeded = 0;
    for (n, task) in finished.iter().enumerate() {
        let Some(task) = task else { continue };
        if task.state != pb::TaskState::Succeeded as i32 {
            continue;
        }
        let value: Value =
            serde_json::from_slice(&task.result.as_ref().expect("result").data).unwrap();
        assert_eq!(
            value["n"],
            json!(n as i64 * 2),
            "task {} recorded a wrong result",
            task.id
        );
        succeeded += 1;
    }
    let executions = chaos.executions(ids).await;
    let total_executions: i64 = executions.values().sum();
    let never_ran = executions.values().filter(|count| **count == 0).count();
    let duplicates = total_executions - (ids.len() - never_ran) as i64;
    let lost = ids.len() - succeeded;
    println!(
        "{label}: submitted {}, succeeded {succeeded}, executions {total_executions}, duplicates executed {duplicates}, \
         outcomes recorded {succeeded}, lost {lost}",
        ids.len()
    );
    assert_eq!(lost, 0, "{label}: tasks lost");
    assert_eq!(never_ran, 0, "{label}: a task succeeded without running");
    (succeeded, duplicates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_worker_kills_lose_nothing() {
    let Some(redis) = test_redis_url() else {
        return;
    };
    let chaos = Chaos::new(&redis, "kills");
    let server = chaos.server(&["dev"], "127.0.0.1:0").await;
    let mut workers: Vec<Process> = (0..4)
        .map(|index| chaos.worker(&server.addr, &format!("w{index}")))
        .collect();
    let channel = channel(&server.addr).await;
    let ids = submit_work(&channel, 20_000, 15).await;
    let started = Instant::now();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let killer = {
        let chaos_addr = server.addr.clone();
        let redis = chaos.redis.clone();
        let prefix = chaos.prefix.clone();
        tokio::spawn(async move {
            let mut kills = 0;
            let mut generation = 0;
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
                let victim = rand_index(workers.len());
                let old = std::mem::replace(
                    &mut workers[victim],
                    spawn_chaos_worker(
                        &chaos_addr,
                        &redis,
                        &prefix,
                        &format!("w{victim}-{generation}"),
                    ),
                );
                old.kill().await;
                generation += 1;
                kills += 1;
            }
            for worker in workers {
                worker.kill().await;
            }
            kills
        })
    };
    let (succeeded, _) = settle(&chaos, &channel, &ids, "worker kills").await;
    let _ = stop_tx.send(());
    let kills = killer.await.unwrap();
    println!(
        "worker kills: {kills} SIGKILLs over {:?}",
        started.elapsed()
    );
    assert!(kills >= 2, "the run must see several kills, saw {kills}");
    assert_eq!(succeeded, ids.len());
}

fn rand_index(len: usize) -> usize {
    (uuid::Uuid::new_v4().as_u128() % len as u128) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_dispatcher_mid_run_loses_nothing() {
    let Some(redis) = test_redis_url() else {
        return;
    };
    let chaos = Chaos::new(&redis, "dispatcher");
    let front = chaos
        .server(
            &["serve", "submission", "results", "scheduling"],
            "127.0.0.1:0",
        )
        .await;
    let dispatcher = chaos.server(&["serve", "dispatch"], "127.0.0.1:0").await;
    let dispatch_addr = dispatcher.addr.clone();
    let workers: Vec<Process> = (0..2)
        .map(|index| chaos.worker(&dispatch_addr, &format!("w{index}")))
        .collect();
    let channel = channel(&front.addr).await;
    let ids = submit_work(&channel, 3000, 20).await;
    // Mid-run, with leases held: kill the dispatcher, start another on its address.
    let results = pb::results_service_client::ResultsServiceClient::new(channel.clone());
    let midway = conveyor_tests::eventually(Duration::from_secs(30), || {
        let mut results = results.clone();
        let id = ids[600].clone();
        async move {
            let task = results
                .get_task(pb::GetTaskRequest {
                    task_id: id,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .task
                .unwrap();
            task.state == pb::TaskState::Succeeded as i32
        }
    })
    .await;
    assert!(midway, "work started");
    dispatcher.kill().await;
    let killed_at = Instant::now();
    let replacement = chaos.server(&["serve", "dispatch"], &dispatch_addr).await;
    settle(&chaos, &channel, &ids, "dispatcher kill").await;
    println!(
        "dispatcher kill: all done {:?} after the kill",
        killed_at.elapsed()
    );
    for worker in workers {
        worker.kill().await;
    }
    replacement.kill().await;
}

/// A Redis server of the test's own, with AOF.
struct OwnRedis {
    port: u16,
    dir: std::path::PathBuf,
    fsync: &'static str,
    process: Option<tokio::process::Child>,
}

impl OwnRedis {
    async fn start(fsync: &'static str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("conveyor-aof-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Self {
            port,
            dir,
            fsync,
            process: None,
        };
        redis.launch().await;
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn launch(&mut self) {
        let child = tokio::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", self.fsync])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        self.process = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        let up = conveyor_tests::eventually(Duration::from_secs(10), || {
            let client = client.clone();
            async move {
                match client.get_multiplexed_async_connection().await {
                    Ok(mut connection) => redis::cmd("PING")
                        .query_async::<String>(&mut connection)
                        .await
                        .is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await;
        assert!(up, "redis started");
    }

    async fn crash_and_restart(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        self.launch().await;
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Submits for ~3 s while Redis crashes and restarts at ~1 s; returns the
/// acknowledged ids and how many of them are gone afterwards.
async fn submit_through_a_redis_crash(fsync: &'static str) -> (usize, usize) {
    let mut redis = OwnRedis::start(fsync).await;
    let server = spawn_conveyor(&["dev", "--store", &redis.url()], "127.0.0.1:0").await;
    let channel = channel(&server.addr).await;
    let mut submission =
        pb::submission_service_client::SubmissionServiceClient::new(channel.clone());
    // Redis is killed (SIGKILL) and restarted on its AOF while submissions
    // are in flight.
    let crash = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        redis.crash_and_restart().await;
        redis
    });
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let mut request = tonic::Request::new(pb::SubmitTaskRequest {
            task: Some(spec("work", &[json!(acknowledged.len()), json!(0)])),
            ..Default::default()
        });
        request.set_timeout(Duration::from_secs(2));
        match submission.submit_task(request).await {
            Ok(response) => acknowledged.push(response.into_inner().task_id),
            Err(_) => refused += 1,
        }
    }
    let _redis = crash.await.expect("redis restarted");
    let mut results = pb::results_service_client::ResultsServiceClient::new(channel);
    let mut lost = 0;
    for id in &acknowledged {
        let mut outcome = None;
        for _ in 0..100 {
            match results
                .get_task(pb::GetTaskRequest {
                    task_id: id.clone(),
                    ..Default::default()
                })
                .await
            {
                Ok(_) => {
                    outcome = Some(true);
                    break;
                }
                Err(status) if status.code() == tonic::Code::NotFound => {
                    outcome = Some(false);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        if outcome != Some(true) {
            lost += 1;
        }
    }
    println!(
        "redis crash with appendfsync {fsync}: submitted {} acknowledged, {refused} refused while down, lost {lost}",
        acknowledged.len()
    );
    (acknowledged.len(), lost)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_crash_with_aof_always_loses_no_acknowledged_submission() {
    if test_redis_url().is_none() {
        return;
    }
    let (acknowledged, lost) = submit_through_a_redis_crash("always").await;
    assert!(
        acknowledged > 100,
        "the run submitted enough work: {acknowledged}"
    );
    assert_eq!(
        lost, 0,
        "appendfsync always must not lose an acknowledged submission"
    );
    // everysec may lose up to about a second of acknowledged writes on a crash
    // (README: durability). Reported, not asserted.
    let (acknowledged, lost) = submit_through_a_redis_crash("everysec").await;
    println!("everysec: {lost} of {acknowledged} acknowledged submissions lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_worker_late_outcome_is_refused() {
    let Some(redis) = test_redis_url() else {
        return;
    };
    let chaos = Chaos::new(&redis, "stall");
    let server = chaos.server(&["dev"], "127.0.0.1:0").await;
    let stalled = chaos.worker(&server.addr, "stalled");
    let channel = channel(&server.addr).await;
    let ids = submit_work(&channel, 1, 1500).await;
    let mut results = pb::results_service_client::ResultsServiceClient::new(channel.clone());
    let held = conveyor_tests::eventually(Duration::from_secs(10), || {
        let mut results = results.clone();
        let id = ids[0].clone();
        async move {
            let task = results
                .get_task(pb::GetTaskRequest {
                    task_id: id,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .task
                .unwrap();
            task.worker_id == "stalled"
        }
    })
    .await;
    assert!(held, "the first worker holds the task");
    stalled.signal("STOP");
    let stopped_at = Instant::now();
    let rescuer = chaos.worker(&server.addr, "rescuer");
    let task = results
        .wait_task(pb::WaitTaskRequest {
            task_id: ids[0].clone(),
            timeout: Some(prost_types::Duration {
                seconds: 20,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    println!(
        "stall: re-run finished {:?} after SIGSTOP",
        stopped_at.elapsed()
    );
    stalled.signal("CONT");
    // The stalled handler resumes and finishes within its 1.5 s sleep; watch
    // for longer than that that its late outcome changes nothing.
    let resumed_at = Instant::now();
    let mut dispatch = pb::dispatch_service_client::DispatchServiceClient::new(channel.clone());
    let reconnected = conveyor_tests::eventually(Duration::from_secs(10), || {
        let mut dispatch = dispatch.clone();
        async move {
            let workers = dispatch
                .list_workers(pb::ListWorkersRequest::default())
                .await
                .unwrap()
                .into_inner()
                .workers;
            workers.iter().any(|worker| worker.worker_id == "stalled")
        }
    })
    .await;
    assert!(reconnected, "the stalled worker came back");
    tokio::time::sleep(Duration::from_millis(1600).saturating_sub(resumed_at.elapsed())).await;
    let after = results
        .get_task(pb::GetTaskRequest {
            task_id: ids[0].clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    let value: Value = serde_json::from_slice(&after.result.unwrap().data).unwrap();
    let executions = chaos.executions(&ids).await[&ids[0]];
    println!(
        "stall: submitted 1, succeeded 1, executions {executions}, duplicates executed {}, outcomes recorded 1 (by {}), lost 0",
        executions - 1,
        value["worker"]
    );
    assert_eq!(task.state, pb::TaskState::Succeeded as i32);
    assert_eq!(
        value["worker"],
        json!("rescuer"),
        "the re-run's outcome stands"
    );
    assert_eq!(
        (after.attempt, after.updated_at),
        (2, task.updated_at),
        "the late outcome changed nothing"
    );
    assert_eq!(executions, 2, "both attempts ran");
    let _ = dispatch
        .list_workers(pb::ListWorkersRequest::default())
        .await;
    stalled.kill().await;
    rescuer.kill().await;
}

/// `SubmitTasks` at 8 partitions while Redis is SIGKILLed and restarted on
/// its AOF: a batch is stored whole or not at all (the store places a batch
/// in one partition and stores it with one script), and no acknowledged
/// batch is missing anything. Every stored task is counted by scanning Redis
/// for task hashes, grouped by the batch number each carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_through_a_redis_crash_are_whole_or_absent() {
    if test_redis_url().is_none() {
        return;
    }
    let redis = OwnRedis::start("always").await;
    let url = redis.url();
    let mut redis = Some(redis);
    let server = spawn_conveyor(
        &["dev", "--store", &url, "--partitions", "8"],
        "127.0.0.1:0",
    )
    .await;
    let channel = channel(&server.addr).await;
    let mut submission =
        pb::submission_service_client::SubmissionServiceClient::new(channel.clone());
    const BATCH: usize = 40;
    let mut acknowledged: Vec<(usize, Vec<String>)> = Vec::new();
    let mut refused = 0;
    let mut batch = 0;
    // The crash comes 700 ms after the first acknowledged batch: a server
    // slow to start on a busy machine must not leave the run without any.
    let mut crash = None;
    let mut started = Instant::now();
    let warm_up = Instant::now();
    while crash.is_none() || started.elapsed() < Duration::from_secs(2) {
        assert!(
            warm_up.elapsed() < Duration::from_secs(30),
            "no batch acknowledged in 30 s"
        );
        if crash.is_none() && !acknowledged.is_empty() {
            let mut redis = redis.take().expect("redis");
            started = Instant::now();
            crash = Some(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(700)).await;
                redis.crash_and_restart().await;
                redis
            }));
        }
        let tasks = (0..BATCH)
            .map(|index| spec("work", &[json!(batch), json!(index)]))
            .collect();
        let mut request = tonic::Request::new(pb::SubmitTasksRequest {
            tasks,
            ..Default::default()
        });
        request.set_timeout(Duration::from_secs(2));
        match submission.submit_tasks(request).await {
            Ok(response) => acknowledged.push((
                batch,
                response
                    .into_inner()
                    .results
                    .into_iter()
                    .map(|result| result.task_id)
                    .collect(),
            )),
            Err(_) => refused += 1,
        }
        batch += 1;
    }
    let _redis = crash
        .expect("the crash was started")
        .await
        .expect("redis restarted");
    // Count the stored tasks of every batch, straight from Redis.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("{cv:*}:t:*")
        .query_async(&mut connection)
        .await
        .unwrap();
    let mut stored: HashMap<usize, usize> = HashMap::new();
    for key in &keys {
        let record: Vec<u8> = redis::cmd("HGET")
            .arg(key)
            .arg("sp")
            .query_async(&mut connection)
            .await
            .unwrap();
        let record =
            <conveyor_api::store_pb::TaskRecord as prost::Message>::decode(record.as_slice())
                .unwrap();
        let number: usize = serde_json::from_slice(&record.args[0].data).unwrap();
        *stored.entry(number).or_default() += 1;
    }
    println!(
        "SubmitTasks through a Redis crash: {} batches acknowledged, {refused} refused, {} batches stored",
        acknowledged.len(),
        stored.len()
    );
    // A call in flight during the crash is usually refused; one may instead
    // wait for the restart and succeed, so a run without refusals still
    // checks what matters: stored batches are whole, acknowledged ones all
    // there.
    assert!(acknowledged.len() > 5, "enough batches went through");
    for (number, count) in &stored {
        assert_eq!(
            *count, BATCH,
            "batch {number} is partly stored: {count} of {BATCH}"
        );
    }
    for (number, ids) in &acknowledged {
        assert_eq!(
            stored.get(number),
            Some(&BATCH),
            "acknowledged batch {number} lost tasks"
        );
        let partitions: std::collections::HashSet<u16> = ids
            .iter()
            .map(|id| conveyor_core::TaskId::parse(id, "id").unwrap().partition())
            .collect();
        assert_eq!(partitions.len(), 1, "a batch lives in one partition");
    }
}
