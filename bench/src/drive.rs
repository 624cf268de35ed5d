//! The workload drivers W1–W4 for Conveyor. Each spawns its own worker
//! processes (this binary's `worker` subcommand), measures, kills them and
//! returns its figures.
//!
//! Times that say when an outcome was stored come from the server
//! (`Task.finished_at`, `Task.updated_at`); times on the producer's side from
//! this process's wall clock. Both are the same machine's clock.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use conveyor_client::pb::dispatch_service_client::DispatchServiceClient;
use conveyor_client::{Client, TaskRequest, pb};
use futures::{StreamExt, TryStreamExt, stream};
use prost::Message;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use crate::stats::{now, percentile, round3, summary, timestamp};
use crate::{DriveArgs, Workload, url_of};

/// Calls in flight when reading outcomes back after a workload (after the
/// measured part; wide, because each call is cheap but may wait).
const READBACK_CONCURRENCY: usize = 256;
/// Round trips run before W2's measured ones.
const W2_WARMUP: usize = 50;

/// Runs the workload `args` names.
pub async fn run(args: &DriveArgs) -> anyhow::Result<Value> {
    let url = url_of(&args.addr);
    let channel = Endpoint::from_shared(url.clone())?
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let client = Client::from_channel(channel.clone());
    let bench = Bench {
        args,
        url,
        client,
        channel,
    };
    let (workload, mut figures) = match args.workload {
        Workload::W1 => ("w1", bench.w1().await?),
        Workload::W2 => ("w2", bench.w2().await?),
        Workload::W3 => ("w3", bench.w3().await?),
        Workload::W4 => ("w4", bench.w4().await?),
        Workload::W5 => ("w5", bench.w5().await?),
    };
    let config = if args.config.is_empty() {
        format!("{}x{}", args.workers, args.concurrency)
    } else {
        args.config.clone()
    };
    let object = figures.as_object_mut().context("figures are an object")?;
    object.insert("system".into(), json!("conveyor"));
    object.insert("config".into(), json!(config));
    object.insert("workload".into(), json!(workload));
    Ok(figures)
}

struct Bench<'a> {
    args: &'a DriveArgs,
    url: String,
    client: Client,
    channel: Channel,
}

/// Worker processes spawned by a driver; killed when dropped.
struct Workers {
    children: Vec<Child>,
}

impl Workers {
    fn spawn(url: &str, count: usize, concurrency: usize) -> anyhow::Result<Workers> {
        let exe = std::env::current_exe().context("locating conveyor-bench")?;
        let children = (0..count)
            .map(|_| {
                Command::new(&exe)
                    .args(["worker", "--addr", url, "--concurrency"])
                    .arg(concurrency.to_string())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .context("spawning a worker process")
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Workers { children })
    }

    /// SIGKILLs every process and reaps it.
    async fn kill(&mut self) {
        for child in &mut self.children {
            let _ = child.start_kill();
        }
        for child in &mut self.children {
            let _ = child.wait().await;
        }
    }
}

impl Bench<'_> {
    fn dispatch(&self) -> DispatchServiceClient<Channel> {
        DispatchServiceClient::new(self.channel.clone())
    }

    /// Waits until `count` workers are connected (ListWorkers), then a
    /// little longer for their first credits to reach the dispatcher.
    async fn wait_ready(&self, count: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut dispatch = self.dispatch();
        loop {
            let workers = dispatch
                .list_workers(pb::ListWorkersRequest::default())
                .await?
                .into_inner()
                .workers;
            if workers.len() >= count {
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "workers not ready after 20 s: {} of {count} connected",
                workers.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for each task (WaitTask, `concurrency` at once) and returns them
    /// in the order of `ids`.
    async fn read_back(
        &self,
        ids: &[String],
        timeout: Duration,
        concurrency: usize,
    ) -> anyhow::Result<Vec<pb::Task>> {
        stream::iter(ids.iter().cloned())
            .map(|id| {
                let client = self.client.clone();
                async move {
                    // GetTask first: most tasks are finished by now, and a
                    // finished one needs no wait.
                    let task = client
                        .get(&id)
                        .await
                        .with_context(|| format!("reading task {id}"))?;
                    if is_terminal(&task) {
                        return Ok(task);
                    }
                    client
                        .wait(&id, timeout)
                        .await
                        .with_context(|| format!("waiting for task {id}"))
                }
            })
            .buffered(concurrency)
            .try_collect()
            .await
    }

    /// W1 drain: enqueue N `add` tasks, measure Redis memory per queued
    /// task, start the workers, time until the last outcome is stored.
    async fn w1(&self) -> anyhow::Result<Value> {
        let args = self.args;
        let n = args.tasks;
        ensure!(n >= 2, "--tasks must be at least 2");
        let redis = redis::Client::open(args.redis.as_str())?;
        let mut redis = redis.get_multiplexed_async_connection().await?;
        let memory_before = used_memory(&mut redis).await?;

        let requests: Vec<TaskRequest> = (0..n).map(|_| add_request()).collect();
        let spec = add_request().into_spec()?;
        let payload_bytes: usize = spec.args.iter().map(|p| p.data.len()).sum();
        let started = Instant::now();
        let ids = self.client.submit_many(requests).await?;
        let enqueue_s = started.elapsed().as_secs_f64();
        let memory_after = used_memory(&mut redis).await?;

        let spawned_at = now();
        let mut workers = Workers::spawn(&self.url, args.workers, args.concurrency)?;
        let timeout = Duration::from_secs(120);
        // Wait on the tail first, then read every outcome back (most are
        // already stored, so these calls answer at once).
        let tail = &ids[n.saturating_sub(100)..];
        self.read_back(tail, timeout, tail.len()).await?;
        let tail_s = now() - spawned_at;
        // Redis's work during the drain (bench/run resets the stats before
        // each workload); taken before the read-back adds its own calls.
        let commands = command_stats(&mut redis).await?;
        let readback = Instant::now();
        let tasks = self.read_back(&ids, timeout, READBACK_CONCURRENCY).await?;
        let readback_s = readback.elapsed().as_secs_f64();
        workers.kill().await;

        let succeeded = tasks
            .iter()
            .filter(|t| t.state == pb::TaskState::Succeeded as i32)
            .count();
        ensure!(
            succeeded == n,
            "{} of {n} tasks did not succeed",
            n - succeeded
        );
        let finished: Vec<f64> = tasks
            .iter()
            .filter_map(|t| t.finished_at.as_ref().map(timestamp))
            .collect();
        let first = finished.iter().copied().fold(f64::INFINITY, f64::min);
        let last = finished.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let bytes_per_task = (memory_after as f64 - memory_before as f64) / n as f64;
        Ok(json!({
            "tasks": n,
            "tasks_per_s": round3((n - 1) as f64 / (last - first)),
            "drain_s": round3(last - first),
            "spawn_to_last_s": round3(last - spawned_at),
            "spawn_to_first_s": round3(first - spawned_at),
            "enqueue_s": round3(enqueue_s),
            "enqueue_per_s": round3(n as f64 / enqueue_s),
            "spawn_to_tail_seen_s": round3(tail_s),
            "readback_s": round3(readback_s),
            "redis_commands": commands,
            "memory": {
                "used_before": memory_before,
                "used_after": memory_after,
                "bytes_per_task": round3(bytes_per_task),
                "payload_bytes": payload_bytes,
                "encoded_spec_bytes": spec.encoded_len(),
            },
        }))
    }

    /// W2 round trip: submit one task and await its outcome, in sequence.
    async fn w2(&self) -> anyhow::Result<Value> {
        let args = self.args;
        let mut workers = Workers::spawn(&self.url, args.workers, args.concurrency)?;
        self.wait_ready(args.workers).await?;
        for _ in 0..W2_WARMUP {
            self.round_trip().await?;
        }
        let mut samples = Vec::with_capacity(args.round_trips);
        for _ in 0..args.round_trips {
            samples.push(self.round_trip().await?);
        }
        workers.kill().await;
        let mut figures = summary(&samples);
        if args.samples {
            figures["samples_ms"] = json!(samples.iter().map(|s| round3(*s)).collect::<Vec<_>>());
        }
        Ok(figures)
    }

    /// W5 workflows: a chord of N `add(2, 3)` header tasks and a `tsum`
    /// callback, submit to the callback's stored finish; then a chain of
    /// `add` steps, each adding 1 to the previous result, with the time
    /// between consecutive steps' stored finishes.
    async fn w5(&self) -> anyhow::Result<Value> {
        use conveyor_client::{TaskRequest, canvas};
        let args = self.args;
        let mut workers = Workers::spawn(&self.url, args.workers, args.concurrency)?;
        self.wait_ready(args.workers).await?;
        let n = args.chord_tasks;
        let chord = canvas::chord(
            (0..n).map(|_| TaskRequest::new("add").arg(2).arg(3)),
            TaskRequest::new("tsum"),
        );
        let started = std::time::SystemTime::now();
        let clock = Instant::now();
        let handle = self.client.submit_workflow(chord).await?;
        let submit_s = clock.elapsed().as_secs_f64();
        let sum: i64 = self
            .client
            .workflow_result(&handle.id, Duration::from_secs(600))
            .await?;
        let callback = self.client.get(&handle.output_task_ids[0]).await?;
        let finished = stored_ms(callback.finished_at.as_ref());
        let started_ms = started.duration_since(std::time::UNIX_EPOCH)?.as_secs_f64() * 1e3;
        let chord_s = (finished - started_ms) / 1e3;
        let steps = args.chain_steps.max(2);
        let chain = canvas::chain(
            std::iter::once(TaskRequest::new("add").arg(0).arg(1))
                .chain((1..steps).map(|_| TaskRequest::new("add").arg(1))),
        );
        let clock = Instant::now();
        let handle = self.client.submit_workflow(chain).await?;
        let last: i64 = self
            .client
            .workflow_result(&handle.id, Duration::from_secs(600))
            .await?;
        let chain_s = clock.elapsed().as_secs_f64();
        let workflow = self.client.get_workflow(&handle.id).await?;
        let mut finishes: Vec<(u32, f64)> = workflow
            .nodes
            .iter()
            .map(|node| {
                (
                    node.index,
                    stored_ms(
                        node.task
                            .as_ref()
                            .and_then(|task| task.finished_at.as_ref()),
                    ),
                )
            })
            .collect();
        finishes.sort_by_key(|(index, _)| *index);
        let mut gaps: Vec<f64> = finishes
            .windows(2)
            .map(|pair| pair[1].1 - pair[0].1)
            .collect();
        gaps.sort_by(f64::total_cmp);
        workers.kill().await;
        Ok(json!({
            "chord_tasks": n,
            "chord_submit_s": round3(submit_s),
            "chord_s": round3(chord_s),
            "chord_ok": sum == 5 * n as i64,
            "chain_steps": steps,
            "chain_ok": last == steps as i64,
            "chain_s": round3(chain_s),
            "chain_step_p50_ms": round3(percentile(&gaps, 50.0)),
            "chain_step_p99_ms": round3(percentile(&gaps, 99.0)),
        }))
    }

    /// One submit-and-await, in milliseconds.
    async fn round_trip(&self) -> anyhow::Result<f64> {
        let started = Instant::now();
        let id = self.client.submit(add_request()).await?;
        let task = self.client.wait(&id, Duration::from_secs(30)).await?;
        let elapsed = started.elapsed().as_secs_f64() * 1e3;
        ensure!(
            task.state == pb::TaskState::Succeeded as i32,
            "task {id} ended in state {}",
            task.state
        );
        Ok(elapsed)
    }

    /// W3 sustained: the fixed rate, then the sweep.
    async fn w3(&self) -> anyhow::Result<Value> {
        let args = self.args;
        let mut workers = Workers::spawn(&self.url, args.workers, args.concurrency)?;
        self.wait_ready(args.workers).await?;
        // Warm-up: connections, scripts, allocators.
        self.step(args.rate, Duration::from_millis(500), 0, false)
            .await?;

        let main = self
            .step(args.rate, args.duration, usize::MAX, args.observe)
            .await?;
        let mut max_sustainable = if main.ok { args.rate } else { 0.0 };
        let mut sweep = Vec::new();
        if main.ok {
            for &rate in args.sweep.iter().filter(|&&rate| rate > args.rate) {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let step = self
                    .step(rate, args.step_duration, args.sample, false)
                    .await?;
                let ok = step.ok;
                if ok {
                    max_sustainable = rate;
                }
                sweep.push(step.figures(false));
                if !ok {
                    break;
                }
            }
        }
        workers.kill().await;
        let mut figures = main.figures(args.samples);
        figures["sweep"] = json!(sweep);
        figures["max_sustainable_rate"] = json!(max_sustainable);
        figures["duration_s"] = json!(args.duration.as_secs_f64());
        figures["step_duration_s"] = json!(args.step_duration.as_secs_f64());
        Ok(figures)
    }

    /// Submits `add` tasks open-loop at `rate` for `duration`, one SubmitTask
    /// each, then reads back the outcomes of up to `sample` of them (all
    /// when `usize::MAX`). Latency runs from the instant a task was due to
    /// be submitted to the instant its outcome was stored, so a producer
    /// that falls behind counts against the system.
    ///
    /// With `observe`, each submit is followed by a WaitTask, and the time
    /// from due to its answer is kept too (µs-precise, where `finished_at`
    /// has whole milliseconds; it adds one call per task).
    async fn step(
        &self,
        rate: f64,
        duration: Duration,
        sample: usize,
        observe: bool,
    ) -> anyhow::Result<Step> {
        let args = self.args;
        let n = ((rate * duration.as_secs_f64()).round() as usize).max(2);
        let permits = Arc::new(Semaphore::new(args.max_in_flight));
        let start = Instant::now();
        let start_wall = now();
        // The pacing loop runs on a thread of its own and sleeps with the OS
        // timer: tokio's timer wheel has whole-millisecond ticks, so a
        // `sleep_until` would submit up to a millisecond after the due
        // instant and count that against the system measured.
        let client = self.client.clone();
        let handle = tokio::runtime::Handle::current();
        let mut submits = tokio::task::spawn_blocking(move || {
            let mut submits = JoinSet::new();
            let mut next = 0usize;
            while next < n {
                let elapsed = start.elapsed().as_secs_f64();
                let due = ((elapsed * rate).floor() as usize + 1).min(n);
                while next < due {
                    let permit = handle.block_on(permits.clone().acquire_owned())?;
                    let client = client.clone();
                    let index = next;
                    let due = start + Duration::from_secs_f64(index as f64 / rate);
                    submits.spawn_on(
                        async move {
                            let result = client.submit(add_request()).await;
                            drop(permit);
                            // The producer's view: due to submit → WaitTask answers.
                            let observed = match (&result, observe) {
                                (Ok(id), true) => client
                                    .wait(id, Duration::from_secs(30))
                                    .await
                                    .ok()
                                    .map(|_| due.elapsed().as_secs_f64() * 1e3),
                                _ => None,
                            };
                            (index, result, observed)
                        },
                        &handle,
                    );
                    next += 1;
                }
                if next < n {
                    let at = start + Duration::from_secs_f64(next as f64 / rate);
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                }
            }
            anyhow::Ok(submits)
        })
        .await??;
        let mut ids = vec![String::new(); n];
        let mut errors = 0usize;
        let mut observed = Vec::new();
        while let Some(joined) = submits.join_next().await {
            let (index, result, seen) = joined?;
            observed.extend(seen);
            match result {
                Ok(id) => ids[index] = id,
                Err(error) => {
                    errors += 1;
                    if errors == 1 {
                        eprintln!("conveyor-bench: submit failed: {error}");
                    }
                }
            }
        }
        let producer_s = start.elapsed().as_secs_f64();

        // The first and last 100 (for the completion window) and a uniform
        // sample between them.
        let mut picked: Vec<usize> = if sample >= n {
            (0..n).collect()
        } else {
            let edge = 100.min(n / 2);
            let middle = n - 2 * edge;
            let mut rng = rand::rng();
            let extra = sample.saturating_sub(2 * edge).min(middle);
            let mut picked: Vec<usize> = (0..edge).chain(n - edge..n).collect();
            picked.extend(
                rand::seq::index::sample(&mut rng, middle, extra)
                    .into_iter()
                    .map(|i| i + edge),
            );
            picked
        };
        picked.retain(|&i| !ids[i].is_empty());
        picked.sort_unstable();
        // Tail first: when it is done, the queue has (nearly) drained.
        let cap = Duration::from_secs_f64((2.0 * duration.as_secs_f64()).max(10.0));
        let tail: Vec<String> = picked
            .iter()
            .rev()
            .take(100)
            .map(|&i| ids[i].clone())
            .collect();
        let tail_done = tokio::time::timeout(cap, self.read_back(&tail, cap, tail.len().max(1)))
            .await
            .map(|result| result.is_ok())
            .unwrap_or(false);
        let mut latencies = Vec::with_capacity(picked.len());
        let mut first_done = f64::INFINITY;
        let mut last_done = f64::NEG_INFINITY;
        let mut unfinished = 0usize;
        if tail_done {
            let chosen: Vec<String> = picked.iter().map(|&i| ids[i].clone()).collect();
            let tasks = self
                .read_back(&chosen, Duration::from_secs(10), READBACK_CONCURRENCY)
                .await?;
            for (&index, task) in picked.iter().zip(&tasks) {
                match task.finished_at.as_ref().map(timestamp) {
                    Some(done) if task.state == pb::TaskState::Succeeded as i32 => {
                        let due = start_wall + index as f64 / rate;
                        latencies.push((done - due) * 1e3);
                        first_done = first_done.min(done);
                        last_done = last_done.max(done);
                    }
                    _ => unfinished += 1,
                }
            }
        }
        let achieved = if last_done > first_done {
            (n - 1) as f64 / (last_done - first_done)
        } else {
            0.0
        };
        let mut sorted = latencies.clone();
        sorted.sort_by(f64::total_cmp);
        let p99 = percentile(&sorted, 99.0);
        let ok = tail_done
            && errors == 0
            && unfinished == 0
            && achieved >= args.min_achieved * rate
            && p99 <= args.max_p99_ms;
        Ok(Step {
            rate,
            tasks: n,
            errors,
            unfinished: if tail_done { unfinished } else { n },
            producer_rate: n as f64 / producer_s,
            achieved,
            latencies,
            observed,
            ok,
        })
    }

    /// W4 recovery: a worker holding `leases` long tasks is SIGKILLed while a
    /// second worker stands by; time until every task is leased again
    /// (attempt 2) and until all are done.
    async fn w4(&self) -> anyhow::Result<Value> {
        let args = self.args;
        let n = args.leases;
        let requests = (0..n)
            .map(|_| TaskRequest::new("sleep").arg(args.sleep))
            .collect();
        let ids = self.client.submit_many(requests).await?;

        // One WatchTask stream per task; every update carries the task as
        // the server stored it.
        let (updates_tx, mut updates) = mpsc::unbounded_channel::<(usize, pb::Task)>();
        let mut watches = JoinSet::new();
        for (index, id) in ids.iter().enumerate() {
            let client = self.client.clone();
            let id = id.clone();
            let tx = updates_tx.clone();
            watches.spawn(async move {
                let mut stream = client.watch(&id).await?;
                while let Some(task) = stream.next().await {
                    if tx.send((index, task?)).is_err() {
                        break;
                    }
                }
                anyhow::Ok(())
            });
        }
        drop(updates_tx);
        let mut latest: Vec<Option<pb::Task>> = vec![None; n];

        let mut victim = Workers::spawn(&self.url, 1, n)?;
        let held = |latest: &[Option<pb::Task>]| {
            latest
                .iter()
                .flatten()
                .filter(|t| t.attempt == 1 && is_held(t))
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while held(&latest) < n {
            let update = tokio::time::timeout_at(deadline.into(), updates.recv())
                .await
                .context("the first worker did not lease every task within 20 s")?;
            let (index, task) = update.context("watch streams ended")?;
            latest[index] = Some(task);
        }
        let mut standby = Workers::spawn(&self.url, 1, n)?;
        self.wait_ready(2).await?;
        // Drain updates that arrived meanwhile, then count what is held.
        while let Ok((index, task)) = updates.try_recv() {
            latest[index] = Some(task);
        }
        let held_at_kill = held(&latest);

        let killed_at = now();
        victim.kill().await;
        let mut released: Vec<Option<f64>> = vec![None; n];
        let mut done: Vec<Option<f64>> = vec![None; n];
        let cap = Instant::now() + args.recovery_cap;
        while done.iter().any(Option::is_none) {
            let Ok(update) = tokio::time::timeout_at(cap.into(), updates.recv()).await else {
                break;
            };
            let Some((index, task)) = update else { break };
            let changed_at = task.updated_at.as_ref().map(timestamp).unwrap_or_else(now);
            if task.attempt >= 2 && released[index].is_none() {
                released[index] = Some(changed_at);
            }
            if let Some(finished) = task.finished_at.as_ref().map(timestamp) {
                done[index].get_or_insert(finished);
            }
        }
        standby.kill().await;
        watches.abort_all();

        let since_kill = |times: &[Option<f64>]| -> Vec<f64> {
            let mut list: Vec<f64> = times.iter().flatten().map(|t| t - killed_at).collect();
            list.sort_by(f64::total_cmp);
            list
        };
        let released_s = since_kill(&released);
        let done_s = since_kill(&done);
        let all_released = released_s.len() == n;
        let all_done = done_s.len() == n;
        Ok(json!({
            "leases": n,
            "held_at_kill": held_at_kill,
            "sleep_s": args.sleep,
            "released": released_s.len(),
            "all_released_s": if all_released { json!(round3(*released_s.last().unwrap_or(&0.0))) } else { Value::Null },
            "first_released_s": released_s.first().map(|v| round3(*v)),
            "median_released_s": if released_s.is_empty() { Value::Null } else { json!(round3(percentile(&released_s, 50.0))) },
            "done": done_s.len(),
            "all_done_s": if all_done { json!(round3(*done_s.last().unwrap_or(&0.0))) } else { Value::Null },
            "cap_s": args.recovery_cap.as_secs_f64(),
            "note": "kill to re-lease (attempt 2) as stored by the server; one worker process of concurrency = leases killed, a second one standing by",
        }))
    }
}

/// The task every throughput and latency workload runs: `add(2, 3)`.
fn add_request() -> TaskRequest {
    TaskRequest::new("add").arg(2).arg(3)
}

fn is_terminal(task: &pb::Task) -> bool {
    task.state >= pb::TaskState::Succeeded as i32 && task.state <= pb::TaskState::Expired as i32
}

fn is_held(task: &pb::Task) -> bool {
    task.state == pb::TaskState::Leased as i32 || task.state == pb::TaskState::Running as i32
}

/// `used_memory` from `INFO memory`.
async fn used_memory(redis: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(redis).await?;
    for line in info.lines() {
        if let Some(value) = line.strip_prefix("used_memory:") {
            return Ok(value.trim().parse()?);
        }
    }
    bail!("INFO memory has no used_memory")
}

/// `INFO commandstats` as `{command: {calls, usec}}`.
async fn command_stats(redis: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<Value> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await?;
    let mut commands = serde_json::Map::new();
    for line in info.lines() {
        let Some((name, fields)) = line
            .strip_prefix("cmdstat_")
            .and_then(|rest| rest.split_once(':'))
        else {
            continue;
        };
        let field = |key: &str| -> u64 {
            fields
                .split(',')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
                .unwrap_or(0)
        };
        commands.insert(
            name.to_owned(),
            json!({"calls": field("calls"), "usec": field("usec")}),
        );
    }
    Ok(Value::Object(commands))
}

/// One rate of W3.
struct Step {
    rate: f64,
    tasks: usize,
    errors: usize,
    unfinished: usize,
    producer_rate: f64,
    achieved: f64,
    latencies: Vec<f64>,
    /// Due → WaitTask answered, ms (only with `observe`).
    observed: Vec<f64>,
    ok: bool,
}

impl Step {
    fn figures(&self, with_samples: bool) -> Value {
        let mut figures = summary(&self.latencies);
        figures["rate"] = json!(self.rate);
        figures["tasks"] = json!(self.tasks);
        figures["errors"] = json!(self.errors);
        figures["unfinished"] = json!(self.unfinished);
        figures["producer_rate"] = json!(round3(self.producer_rate));
        figures["achieved_rate"] = json!(round3(self.achieved));
        figures["sustained"] = json!(self.ok);
        if !self.observed.is_empty() {
            figures["observed"] = summary(&self.observed);
        }
        if with_samples {
            figures["samples_ms"] = json!(
                self.latencies
                    .iter()
                    .map(|s| round3(*s))
                    .collect::<Vec<_>>()
            );
        }
        figures
    }
}

/// A stored timestamp in Unix ms (µs precise).
fn stored_ms(at: Option<&prost_types::Timestamp>) -> f64 {
    at.map_or(0.0, |at| {
        at.seconds as f64 * 1e3 + f64::from(at.nanos) / 1e6
    })
}
