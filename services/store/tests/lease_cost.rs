//! What a lease costs Redis, counted by Redis itself (`INFO commandstats`) on
//! a server of this test's own, so that nothing else is counted: a worker
//! registered for 200 task names on 20 queues finds the one ready task with
//! one script call of a few commands, not one LPOP per queue, name and
//! priority level.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use conveyor_api::pb;
use conveyor_core::Limits;
use conveyor_core::validate::validate_spec;
use conveyor_store::conformance::test_redis_url;
use conveyor_store::{LeaseRequest, QueueKey, RedisConfig, RedisStore, Store};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// Commands Redis ran so far, by name (`cmdstat_lpop` → `lpop`).
async fn command_counts(url: &str) -> std::collections::BTreeMap<String, u64> {
    let client = redis::Client::open(url).expect("url");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut connection)
        .await
        .expect("info");
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .split(',')
                .next()?
                .strip_prefix("calls=")?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

#[tokio::test]
async fn a_lease_over_4000_queue_keys_is_one_bounded_call() {
    // Runs where the other Redis tests run (scripts/test installs Redis).
    if test_redis_url().is_none() {
        return;
    }
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on PATH (scripts/test installs it)");
    let _server = Server(child);
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let store = loop {
        match RedisStore::connect(RedisConfig::new(url.clone())).await {
            Ok(store) => break store,
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("redis-server did not start: {error}"),
        }
    };
    let names: Vec<String> = (0..200).map(|index| format!("task{index}")).collect();
    let queues: Vec<String> = (0..20).map(|index| format!("queue{index}")).collect();
    let keys: Vec<QueueKey> = queues
        .iter()
        .flat_map(|queue| names.iter().map(move |name| QueueKey::new(queue, name)))
        .collect();
    let request = |session: &str| LeaseRequest {
        session_id: session.into(),
        worker_id: "w".into(),
        queue_keys: keys.clone(),
        max: 10,
        lease_deadline_ms: conveyor_core::time::now_ms() + 5000,
        now_ms: conveyor_core::time::now_ms(),
    };
    // Loads the script (a first EVALSHA may miss the cache).
    assert!(store.lease(request("warm")).await.unwrap().is_empty());
    let spec = pb::TaskSpec {
        name: "task137".into(),
        options: Some(pb::TaskOptions {
            queue: "queue13".into(),
            priority: 3,
            ..Default::default()
        }),
        ..Default::default()
    };
    let task = validate_spec(
        spec,
        "task",
        &Limits::default(),
        conveyor_core::time::now_ms(),
        0,
    )
    .expect("valid");
    let id = task.id;
    store
        .enqueue(vec![task], conveyor_core::time::now_ms())
        .await
        .unwrap();

    let before = command_counts(&url).await;
    let leased = store.lease(request("s1")).await.unwrap();
    let after = command_counts(&url).await;

    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].id, id);
    let delta: std::collections::BTreeMap<&str, u64> = after
        .iter()
        .map(|(name, calls)| {
            (
                name.as_str(),
                calls - before.get(name).copied().unwrap_or(0),
            )
        })
        .filter(|(name, calls)| *calls > 0 && *name != "info")
        .collect();
    let scripts =
        delta.get("evalsha").copied().unwrap_or(0) + delta.get("eval").copied().unwrap_or(0);
    let total: u64 = delta.values().sum();
    eprintln!("commands of one lease: {delta:?}");
    assert_eq!(scripts, 1, "one script call: {delta:?}");
    assert!(
        total <= 16,
        "a lease with one ready task ran {total} commands: {delta:?}"
    );
    assert!(
        delta.get("lpop").copied().unwrap_or(0) <= 2,
        "LPOPs visit only ready lists: {delta:?}"
    );
}
