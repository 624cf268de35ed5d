//! A Redis restart is invisible to callers of an idle process: its first
//! calls after the restart succeed instead of meeting the dead connection
//! ("broken pipe"). Uses a redis-server of its own, restarted on its port.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::task;
use conveyor_store::conformance::test_redis_url;
use conveyor_store::{CancelAck, RedisConfig, RedisStore, Store};

mod common;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis(port: u16) -> Server {
    Server(
        Command::new("redis-server")
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
            .expect("redis-server on PATH (scripts/test installs it)"),
    )
}

async fn until_up(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let client = redis::Client::open(url).expect("url");
        if let Ok(mut connection) = client.get_multiplexed_async_connection().await {
            let pong: redis::RedisResult<String> =
                redis::cmd("PING").query_async(&mut connection).await;
            if pong.is_ok() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "redis-server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_first_calls_after_a_redis_restart_succeed() {
    if test_redis_url().is_none() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let server = start_redis(port);
    until_up(&url).await;
    let store = RedisStore::connect(RedisConfig::new(url.clone()))
        .await
        .unwrap();
    let now = conveyor_core::time::now_ms();
    store.enqueue(vec![task()], now).await.unwrap();

    drop(server);
    let _server = start_redis(port);
    until_up(&url).await;
    // The process stays idle a while, as a quiet replica would.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let now = conveyor_core::time::now_ms();
    let fresh = task();
    let id = fresh.id;
    let acks = store.enqueue(vec![fresh], now).await;
    assert!(acks.is_ok(), "first submit after the restart: {acks:?}");
    let read = store.get(id, now).await;
    assert!(matches!(read, Ok(Some(_))), "first read: {read:?}");
    let cancel = store.cancel(id, now).await;
    assert!(
        matches!(cancel, Ok(CancelAck::Cancelled)),
        "first cancel: {cancel:?}"
    );
}
