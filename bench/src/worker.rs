//! The benchmark's worker process: `add(a, b)`, `sleep(seconds)` and the
//! chord callback `tsum(numbers)`, the tasks the Celery and BullMQ workers
//! serve.

use std::time::Duration;

use conveyor_client::{TaskContext, TaskFailure, Worker};
use serde_json::Value;

/// Runs until SIGTERM/Ctrl-C (or until the driver SIGKILLs it).
pub async fn run(addr: &str, concurrency: usize) -> anyhow::Result<()> {
    let worker = Worker::builder(addr)
        .worker_id(format!("bench-{}", std::process::id()))
        .concurrency(concurrency)
        .grace_period(Duration::from_secs(2))
        .register("add", add)
        .register("sleep", sleep)
        .register("tsum", tsum)
        .build()?;
    worker.run().await?;
    Ok(())
}

async fn add(ctx: TaskContext) -> Result<Value, TaskFailure> {
    let (a, b): (i64, i64) = (ctx.arg(0)?, ctx.arg(1)?);
    Ok(Value::from(a.wrapping_add(b)))
}

/// A chord callback: the sum of its header's results.
async fn tsum(ctx: TaskContext) -> Result<Value, TaskFailure> {
    let numbers: Vec<i64> = ctx.arg(0)?;
    Ok(Value::from(numbers.iter().sum::<i64>()))
}

async fn sleep(ctx: TaskContext) -> Result<Value, TaskFailure> {
    let seconds: f64 = ctx.arg(0)?;
    let duration = Duration::try_from_secs_f64(seconds)
        .map_err(|error| TaskFailure::new("ValueError", error.to_string()).non_retryable())?;
    tokio::select! {
        () = tokio::time::sleep(duration) => Ok(Value::Null),
        () = ctx.cancelled() => Err(TaskFailure::new("Cancelled", "sleep was cancelled")),
    }
}
