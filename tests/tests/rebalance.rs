//! Dispatch replicas share worker sessions: workers connect through a
//! round-robin TCP proxy (what a Kubernetes Service does: it balances
//! connections, not calls). Four workers all reach replica A; replica B
//! starts and joins the proxy; A, over its share, asks two to reconnect,
//! and they land on B. Then B is scaled down (removed from the proxy,
//! SIGTERM): it drains its sessions, which come back to A. Tasks submitted
//! all along each run exactly once and all finish.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conveyor_api::pb;
use conveyor_client::{Client, TaskContext, TaskRequest, Worker};
use conveyor_tests::processes::{Process, spawn_conveyor};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A TCP proxy handing each new connection to the next backend in turn.
struct Proxy {
    addr: SocketAddr,
    backends: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    async fn start(backends: Vec<String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backends = Arc::new(Mutex::new(backends));
        let shared = backends.clone();
        tokio::spawn(async move {
            let mut turn = 0usize;
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let backend = {
                    let backends = shared.lock().unwrap();
                    turn += 1;
                    backends[turn % backends.len()].clone()
                };
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&backend).await {
                        let _ = outbound.set_nodelay(true);
                        let _ = inbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { addr, backends }
    }

    fn set(&self, backends: Vec<String>) {
        *self.backends.lock().unwrap() = backends;
    }
}

async fn spawn_replica(redis: &str, prefix: &str) -> Process {
    spawn_conveyor(
        &[
            "serve",
            "submission",
            "dispatch",
            "results",
            "--store",
            redis,
            "--redis-prefix",
            prefix,
            "--partitions",
            &conveyor_store::conformance::test_partitions().to_string(),
            "--rebalance-interval",
            "300ms",
            "--grace",
            "10s",
            "--metrics-listen",
            "off",
        ],
        "127.0.0.1:0",
    )
    .await
}

async fn sessions(addr: &str) -> usize {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut dispatch = pb::dispatch_service_client::DispatchServiceClient::new(channel);
    dispatch
        .list_workers(pb::ListWorkersRequest {
            this_replica_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .workers
        .len()
}

async fn until(what: &str, deadline: Duration, mut check: impl AsyncFnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !check().await {
        assert!(Instant::now() < end, "{what} within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Submits `count` tasks and waits for each to succeed.
async fn run_tasks(client: &Client, count: usize) {
    let batch = (0..count)
        .map(|n| TaskRequest::new("add").arg(n).arg(1))
        .collect();
    let ids = client.submit_many(batch).await.unwrap();
    for id in ids {
        let task = client.wait(&id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_sessions_and_a_scaled_down_one_hands_them_back() {
    let Some(redis) = conveyor_store::conformance::test_redis_url() else {
        return;
    };
    let prefix = format!("rb-{}:", uuid::Uuid::new_v4().simple());
    let a = spawn_replica(&redis, &prefix).await;
    let proxy = Proxy::start(vec![a.addr.clone()]).await;

    let runs: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    for n in 0..4 {
        let worker = Worker::builder(format!("http://{}", proxy.addr))
            .worker_id(format!("rb-worker-{n}"))
            .concurrency(4)
            .register("add", {
                let runs = runs.clone();
                move |ctx: TaskContext| {
                    *runs
                        .lock()
                        .unwrap()
                        .entry(ctx.task_id().to_string())
                        .or_default() += 1;
                    async move {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let (a, b): (i64, i64) = (ctx.arg(0)?, ctx.arg(1)?);
                        Ok(Value::from(a + b))
                    }
                }
            })
            .build()
            .unwrap();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            worker.run_until(stop.cancelled_owned()).await
        }));
    }
    until("four sessions on A", Duration::from_secs(15), async || {
        sessions(&a.addr).await == 4
    })
    .await;
    let client = Client::connect(format!("http://{}", a.addr)).await.unwrap();
    run_tasks(&client, 100).await;

    // Scale up: B joins; A, over its share of 2, moves 2 sessions.
    let b = spawn_replica(&redis, &prefix).await;
    proxy.set(vec![a.addr.clone(), b.addr.clone()]);
    let moving = {
        let client = client.clone();
        tokio::spawn(async move { run_tasks(&client, 400).await })
    };
    until(
        "two sessions on each replica",
        Duration::from_secs(20),
        async || sessions(&a.addr).await == 2 && sessions(&b.addr).await == 2,
    )
    .await;
    moving.await.unwrap();
    // Stays balanced: no session keeps moving.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!((sessions(&a.addr).await, sessions(&b.addr).await), (2, 2));

    // Scale down: B leaves the proxy and gets SIGTERM; its sessions drain
    // and reconnect to A.
    proxy.set(vec![a.addr.clone()]);
    let moving = {
        let client = client.clone();
        tokio::spawn(async move { run_tasks(&client, 400).await })
    };
    b.signal("TERM");
    until(
        "all four sessions back on A",
        Duration::from_secs(20),
        async || sessions(&a.addr).await == 4,
    )
    .await;
    moving.await.unwrap();
    run_tasks(&client, 100).await;

    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 1000, "every task ran");
    let twice: Vec<_> = runs.iter().filter(|(_, count)| **count > 1).collect();
    assert!(twice.is_empty(), "tasks run more than once: {twice:?}");
    stop.cancel();
    for worker in workers {
        worker.await.unwrap().unwrap();
    }
}

/// ListWorkers on any replica lists the sessions of every replica (the
/// others' as of their last announcement, every 2 s), each with the replica
/// it is on; `this_replica_only` lists the answering replica's; a session
/// that ends leaves every replica's list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_workers_spans_replicas() {
    use conveyor_tests::{Backend, TestCluster};
    let store = TestCluster::store(Backend::Memory).await.unwrap();
    let (front, dispatchers) = TestCluster::split(store, 2).await;
    let stops: Vec<CancellationToken> = (0..2).map(|_| CancellationToken::new()).collect();
    let mut running = Vec::new();
    for (index, dispatcher) in dispatchers.iter().enumerate() {
        let worker = Worker::from_channel(dispatcher.channel.clone())
            .worker_id(format!("on-replica-{index}"))
            .register("noop", |_ctx: TaskContext| async move { Ok(Value::Null) })
            .build()
            .unwrap();
        let stop = stops[index].clone();
        running.push(tokio::spawn(async move {
            worker.run_until(stop.cancelled_owned()).await
        }));
    }
    let list = |index: usize, this_replica_only: bool| {
        let channel = dispatchers[index].channel.clone();
        async move {
            let mut dispatch = pb::dispatch_service_client::DispatchServiceClient::new(channel);
            let workers = dispatch
                .list_workers(pb::ListWorkersRequest {
                    this_replica_only,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .workers;
            workers
                .into_iter()
                .map(|worker| (worker.worker_id, worker.dispatcher))
                .collect::<Vec<_>>()
        }
    };
    until(
        "every replica lists both workers",
        Duration::from_secs(10),
        async || list(0, false).await.len() == 2 && list(1, false).await.len() == 2,
    )
    .await;
    let all = list(0, false).await;
    assert_eq!(all[0].0, "on-replica-0");
    assert_eq!(all[1].0, "on-replica-1");
    assert_ne!(all[0].1, all[1].1, "each names its replica: {all:?}");
    assert!(!all[0].1.is_empty());
    assert_eq!(list(0, true).await, vec![all[0].clone()]);
    assert_eq!(list(1, true).await, vec![all[1].clone()]);
    // The front forwards nothing here (it has no dispatch role), so ask the
    // replicas; the second worker stops and leaves both lists.
    stops[1].cancel();
    until(
        "the stopped worker leaves every list",
        Duration::from_secs(10),
        async || list(0, false).await.len() == 1 && list(1, false).await.len() == 1,
    )
    .await;
    stops[0].cancel();
    for handle in running {
        let _ = handle.await;
    }
    drop(front);
}
