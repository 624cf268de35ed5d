//! Rate limits, concurrency limits and queue pause, enforced in the store
//! across dispatch replicas; both stores.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use conveyor_api::pb;
use conveyor_client::{Client, TaskContext, TaskRequest, Worker};
use conveyor_tests::{Backend, TestCluster, eventually, on_both_stores};

on_both_stores!(
    rate_limit_holds_across_two_dispatchers,
    concurrency_limit_holds_across_twelve_workers,
    a_killed_worker_gives_its_permit_back,
    paused_queue_waits_then_drains,
);

/// Front end plus two dispatch replicas, all on one store.
async fn two_dispatchers(backend: Backend) -> Option<(TestCluster, Vec<TestCluster>)> {
    let store = TestCluster::store(backend).await?;
    Some(TestCluster::split(store, 2).await)
}

struct Probe {
    starts: Mutex<Vec<Instant>>,
    running: AtomicUsize,
    most: AtomicUsize,
}

fn worker(
    cluster: &TestCluster,
    id: String,
    concurrency: usize,
    probe: Arc<Probe>,
    work_ms: u64,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let worker = Worker::from_channel(cluster.channel.clone())
        .worker_id(id)
        .concurrency(concurrency)
        .grace_period(Duration::from_millis(500))
        .register("limited", move |_ctx: TaskContext| {
            let probe = probe.clone();
            async move {
                probe.starts.lock().unwrap().push(Instant::now());
                let now = probe.running.fetch_add(1, Ordering::SeqCst) + 1;
                probe.most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(work_ms)).await;
                probe.running.fetch_sub(1, Ordering::SeqCst);
                Ok(Value::Null)
            }
        })
        .build()
        .unwrap();
    tokio::spawn(async move {
        let _ = worker.run_until(stop.cancelled_owned()).await;
    })
}

fn probe() -> Arc<Probe> {
    Arc::new(Probe {
        starts: Mutex::new(Vec::new()),
        running: AtomicUsize::new(0),
        most: AtomicUsize::new(0),
    })
}

async fn all_succeed(client: &Client, ids: &[String]) {
    for id in ids {
        let task = client.wait(id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(task.state, pb::TaskState::Succeeded as i32, "task {id}");
    }
}

async fn rate_limit_holds_across_two_dispatchers(backend: Backend) {
    let Some((front, dispatchers)) = two_dispatchers(backend).await else {
        return;
    };
    let probe = probe();
    let stop = CancellationToken::new();
    let workers: Vec<_> = (0..8)
        .map(|index| {
            worker(
                &dispatchers[index % 2],
                format!("w{index}"),
                4,
                probe.clone(),
                5,
                stop.clone(),
            )
        })
        .collect();
    let client = Client::from_channel(front.channel.clone());
    let total = 201;
    let ids = client
        .submit_many(
            (0..total)
                .map(|_| TaskRequest::new("limited").rate_limit("20/s"))
                .collect(),
        )
        .await
        .unwrap();
    all_succeed(&client, &ids).await;
    let starts = probe.starts.lock().unwrap().clone();
    assert_eq!(starts.len(), total, "each ran once; none lost");
    let span = *starts.iter().max().unwrap() - *starts.iter().min().unwrap();
    let rate = (total - 1) as f64 / span.as_secs_f64();
    println!("{backend:?}: {total} starts over {span:?}: {rate:.2}/s for a limit of 20/s");
    assert!((18.0..=22.0).contains(&rate), "measured {rate:.2}/s");
    // No 1-second window holds more than the rate allows, with the same 10%
    // allowance for timing noise in the measured starts, plus a boundary start.
    let mut sorted = starts.clone();
    sorted.sort();
    for (index, start) in sorted.iter().enumerate() {
        let in_window = sorted[index..]
            .iter()
            .take_while(|later| **later - *start < Duration::from_secs(1))
            .count();
        assert!(in_window <= 23, "{in_window} starts within a second");
    }
    stop.cancel();
    for worker in workers {
        worker.await.unwrap();
    }
}

async fn concurrency_limit_holds_across_twelve_workers(backend: Backend) {
    let Some((front, dispatchers)) = two_dispatchers(backend).await else {
        return;
    };
    let probe = probe();
    let stop = CancellationToken::new();
    let workers: Vec<_> = (0..12)
        .map(|index| {
            worker(
                &dispatchers[index % 2],
                format!("w{index}"),
                2,
                probe.clone(),
                60,
                stop.clone(),
            )
        })
        .collect();
    let client = Client::from_channel(front.channel.clone());
    let ids = client
        .submit_many(
            (0..30)
                .map(|_| TaskRequest::new("limited").concurrency_limit("customer-7", 3))
                .collect(),
        )
        .await
        .unwrap();
    all_succeed(&client, &ids).await;
    let most = probe.most.load(Ordering::SeqCst);
    println!("{backend:?}: at most {most} of 30 ran at once, limit 3, 12 workers");
    assert!(most <= 3, "{most} ran at once");
    assert_eq!(most, 3, "the limit is used, not just respected");
    assert_eq!(probe.starts.lock().unwrap().len(), 30);
    stop.cancel();
    for worker in workers {
        worker.await.unwrap();
    }
}

async fn a_killed_worker_gives_its_permit_back(backend: Backend) {
    let Some(cluster) = TestCluster::start(backend).await else {
        return;
    };
    let client = Client::from_channel(cluster.channel.clone());
    let holder = Worker::from_channel(cluster.channel.clone())
        .worker_id("holder")
        .concurrency(1)
        .register("limited", |ctx: TaskContext| async move {
            ctx.cancelled().await;
            Ok(Value::Null)
        })
        .build()
        .unwrap();
    let holder = tokio::spawn(async move {
        let _ = holder.run().await;
    });
    let first = client
        .submit(TaskRequest::new("limited").concurrency_limit("k", 1))
        .await
        .unwrap();
    let held = eventually(Duration::from_secs(5), || async {
        client.get(&first).await.unwrap().worker_id == "holder"
    })
    .await;
    assert!(held);
    let second = client
        .submit(TaskRequest::new("limited").concurrency_limit("k", 1))
        .await
        .unwrap();
    holder.abort(); // the worker dies holding the only permit
    let killed_at = Instant::now();
    let probe = probe();
    let stop = CancellationToken::new();
    let rescuer = worker(
        &cluster,
        "rescuer".into(),
        2,
        probe.clone(),
        10,
        stop.clone(),
    );
    all_succeed(&client, &[second.clone(), first.clone()]).await;
    let took = killed_at.elapsed();
    println!("{backend:?}: the permit came back and both tasks finished {took:?} after the kill");
    assert!(
        took < Duration::from_secs(2),
        "within the lease time, took {took:?}"
    );
    assert_eq!(probe.most.load(Ordering::SeqCst), 1, "still one at a time");
    stop.cancel();
    rescuer.await.unwrap();
}

async fn paused_queue_waits_then_drains(backend: Backend) {
    let Some(cluster) = TestCluster::start(backend).await else {
        return;
    };
    let mut dispatch = cluster.dispatch();
    dispatch
        .pause_queue(pb::PauseQueueRequest {
            queue: "default".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let probe = probe();
    let stop = CancellationToken::new();
    let handle = worker(&cluster, "w".into(), 2, probe.clone(), 1, stop.clone());
    let client = Client::from_channel(cluster.channel.clone());
    let id = client.submit(TaskRequest::new("limited")).await.unwrap();
    let stayed = !eventually(Duration::from_millis(400), || async {
        client.get(&id).await.unwrap().attempt > 0
    })
    .await;
    assert!(stayed, "a paused queue hands out nothing");
    dispatch
        .resume_queue(pb::ResumeQueueRequest {
            queue: "default".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    all_succeed(&client, &[id]).await;
    let bad = dispatch
        .pause_queue(pb::PauseQueueRequest {
            queue: "no:pe".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    stop.cancel();
    handle.await.unwrap();
}

/// With several partitions (hash slots), tasks sharing a limit share a
/// partition, so the limit stays global.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_with_four_partitions() {
    let Some(url) = conveyor_store::conformance::test_redis_url() else {
        return;
    };
    let mut config = conveyor_store::conformance::test_redis_config(&url);
    config.partitions = 4;
    let store: Arc<dyn conveyor_store::Store> =
        Arc::new(conveyor_store::RedisStore::connect(config).await.unwrap());
    let cluster = TestCluster::start_on(store, TestCluster::test_config()).await;
    let probe = probe();
    let stop = CancellationToken::new();
    let handles: Vec<_> = (0..4)
        .map(|index| {
            worker(
                &cluster,
                format!("w{index}"),
                4,
                probe.clone(),
                40,
                stop.clone(),
            )
        })
        .collect();
    let client = Client::from_channel(cluster.channel.clone());
    let rated = client
        .submit_many(
            (0..21)
                .map(|_| TaskRequest::new("limited").rate_limit("10/s"))
                .collect(),
        )
        .await
        .unwrap();
    all_succeed(&client, &rated).await;
    let starts = probe.starts.lock().unwrap().clone();
    let span = *starts.iter().max().unwrap() - *starts.iter().min().unwrap();
    let rate = 20.0 / span.as_secs_f64();
    println!("four partitions: {rate:.2}/s for a limit of 10/s");
    assert!((9.0..=11.0).contains(&rate), "measured {rate:.2}/s");
    probe.most.store(0, Ordering::SeqCst);
    let limited = client
        .submit_many(
            (0..16)
                .map(|_| TaskRequest::new("limited").concurrency_limit("k", 2))
                .collect(),
        )
        .await
        .unwrap();
    all_succeed(&client, &limited).await;
    assert_eq!(
        probe.most.load(Ordering::SeqCst),
        2,
        "at most 2 at once across partitions"
    );
    stop.cancel();
    for handle in handles {
        handle.await.unwrap();
    }
}

/// A Redis store with `partitions` partitions, on a prefix of its own.
async fn partitioned_store(partitions: u16) -> Option<Arc<dyn conveyor_store::Store>> {
    let url = conveyor_store::conformance::test_redis_url()?;
    let mut config = conveyor_store::conformance::test_redis_config(&url);
    config.partitions = partitions;
    Some(Arc::new(
        conveyor_store::RedisStore::connect(config).await.unwrap(),
    ))
}

/// Eight partitions, two dispatchers, eight workers: a rate of 20/s per task
/// name holds although every task also carries one of 50 concurrency keys
/// (which once placed tasks by key, splitting the rate bucket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_holds_at_eight_partitions_with_concurrency_keys() {
    let Some(store) = partitioned_store(8).await else {
        return;
    };
    let (front, dispatchers) = TestCluster::split(store, 2).await;
    let probe = probe();
    let stop = CancellationToken::new();
    let handles: Vec<_> = (0..8)
        .map(|index| {
            worker(
                &dispatchers[index % 2],
                format!("w{index}"),
                4,
                probe.clone(),
                5,
                stop.clone(),
            )
        })
        .collect();
    let client = Client::from_channel(front.channel.clone());
    let ids = client
        .submit_many(
            (0..41)
                .map(|index| {
                    TaskRequest::new("limited")
                        .rate_limit("20/s")
                        .concurrency_limit(format!("key-{}", index % 50), 1)
                })
                .collect(),
        )
        .await
        .unwrap();
    all_succeed(&client, &ids).await;
    let starts = probe.starts.lock().unwrap().clone();
    let span = *starts.iter().max().unwrap() - *starts.iter().min().unwrap();
    let rate = 40.0 / span.as_secs_f64();
    println!("eight partitions, two dispatchers: {rate:.2}/s for a limit of 20/s");
    assert!(rate <= 20.5, "measured {rate:.2}/s for a limit of 20/s");
    assert!(rate >= 15.0, "measured {rate:.2}/s: far below the limit");
    stop.cancel();
    for handle in handles {
        handle.await.unwrap();
    }
}

/// Eight partitions: one idempotency key sent 200 times at once, with every
/// other option varied (queue, priority, countdown, rate and concurrency
/// limits), creates exactly one task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_one_task_at_eight_partitions() {
    let Some(store) = partitioned_store(8).await else {
        return;
    };
    let cluster = TestCluster::start_on(store, TestCluster::test_config()).await;
    let client = Client::from_channel(cluster.channel.clone());
    let submits = (0..200).map(|index| {
        let client = client.clone();
        async move {
            let mut request = TaskRequest::new("limited")
                .idempotency_key("order-42")
                .priority((index % 10) as u32);
            if index % 3 == 0 {
                request = request.queue(format!("queue{}", index % 5));
            }
            if index % 4 == 0 {
                request = request.rate_limit("10/s");
            }
            if index % 5 == 0 {
                request = request.concurrency_limit(format!("key-{index}"), 2);
            }
            if index % 7 == 0 {
                request = request.countdown(Duration::from_secs(60));
            }
            client.submit(request).await.unwrap()
        }
    });
    let ids: std::collections::BTreeSet<String> = futures::future::join_all(submits)
        .await
        .into_iter()
        .collect();
    assert_eq!(ids.len(), 1, "one task for one key: {ids:?}");
}

/// The partition count is part of the data: a process started with another
/// count on the same store refuses to start, and says what to do.
#[tokio::test]
async fn a_different_partition_count_is_refused() {
    let Some(url) = conveyor_store::conformance::test_redis_url() else {
        return;
    };
    let mut config = conveyor_store::conformance::test_redis_config(&url);
    config.partitions = 8;
    let _first = conveyor_store::RedisStore::connect(config.clone())
        .await
        .unwrap();
    let _same = conveyor_store::RedisStore::connect(config.clone())
        .await
        .expect("the same count connects");
    config.partitions = 2;
    let error = conveyor_store::RedisStore::connect(config)
        .await
        .expect_err("another count is refused")
        .to_string();
    assert!(
        error.contains("--partitions 8") && error.contains("--redis-prefix"),
        "{error}"
    );
}
