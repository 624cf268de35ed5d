//! A worker for the chaos tests: `work(n, sleep_ms)` counts each execution in
//! Redis (`{prefix}exec:{task_id}`), sleeps, and returns n * 2 with its own
//! worker id, so a test can tell who ran what and how often; `collect` is
//! a chord callback that checks it got every header result in order.
//!
//! Environment: CONVEYOR_ADDR, CHAOS_REDIS, CHAOS_PREFIX, CHAOS_WORKER_ID,
//! CONVEYOR_CONCURRENCY (default 8).

use std::time::Duration;

use conveyor_client::{TaskContext, TaskFailure, Worker};
use redis::AsyncCommands;
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::var("CONVEYOR_ADDR")?;
    let redis_url = std::env::var("CHAOS_REDIS")?;
    let prefix = std::env::var("CHAOS_PREFIX")?;
    let worker_id = std::env::var("CHAOS_WORKER_ID")?;
    let concurrency = std::env::var("CONVEYOR_CONCURRENCY")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(8);
    let redis =
        conveyor_store::redis::connection::Connection::open(&redis_url, Duration::from_secs(5))
            .await?;
    let me = worker_id.clone();
    let counter = redis.clone();
    let collect_prefix = prefix.clone();
    let worker = Worker::builder(addr)
        .worker_id(worker_id)
        .concurrency(concurrency)
        .register("work", move |ctx: TaskContext| {
            let mut redis = redis.clone();
            let key = format!("{prefix}exec:{}", ctx.task_id());
            let me = me.clone();
            async move {
                let n: i64 = ctx.arg(0)?;
                let sleep_ms: u64 = ctx.arg(1).unwrap_or(0);
                let _: i64 = redis
                    .incr(&key, 1)
                    .await
                    .map_err(|error| TaskFailure::new("RedisError", error.to_string()))?;
                tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
                Ok(json!({ "n": n * 2, "worker": me }))
            }
        })
        // A chord callback: counts its executions like `work`, and checks
        // that it got every header result, in declaration order.
        .register("collect", move |ctx: TaskContext| {
            let mut redis = counter.clone();
            let key = format!("{collect_prefix}exec:{}", ctx.task_id());
            async move {
                let results: Vec<serde_json::Value> = ctx.arg(0)?;
                let _: i64 = redis
                    .incr(&key, 1)
                    .await
                    .map_err(|error| TaskFailure::new("RedisError", error.to_string()))?;
                let ns: Vec<i64> = results
                    .iter()
                    .map(|result| result["n"].as_i64().unwrap_or(-1))
                    .collect();
                let ordered = ns
                    .iter()
                    .enumerate()
                    .all(|(index, n)| *n == index as i64 * 2);
                Ok(json!({ "count": ns.len(), "ordered": ordered }))
            }
        })
        .build()?;
    worker.run().await?;
    Ok(())
}
