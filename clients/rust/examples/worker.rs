//! Example worker serving `add`, `mul`, `xsum`, `sleep` and `fail`; run it
//! from the repository root with `cargo run --example worker`.
//!
//! Environment: `CONVEYOR_ADDR` (default `http://127.0.0.1:50051`),
//! `CONVEYOR_QUEUE` (default `default`), `CONVEYOR_CONCURRENCY` (default 8),
//! `CONVEYOR_WORKER_ID` (default `host-pid`), `RUST_LOG` (default `info`).
//! It also serves `lang()` (returns "rust") for the cross-language tests.

use std::time::Duration;

use conveyor_client::{TaskContext, TaskFailure, Worker};
use serde_json::{Number, Value};
use tracing_subscriber::EnvFilter;

const DEFAULT_ADDR: &str = "http://127.0.0.1:50051";
const DEFAULT_CONCURRENCY: usize = 8;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let addr = std::env::var("CONVEYOR_ADDR").unwrap_or_else(|_| DEFAULT_ADDR.to_owned());
    let concurrency = match std::env::var("CONVEYOR_CONCURRENCY") {
        Ok(text) => text
            .parse()
            .map_err(|error| format!("CONVEYOR_CONCURRENCY={text:?}: {error}"))?,
        Err(_) => DEFAULT_CONCURRENCY,
    };
    let queue = std::env::var("CONVEYOR_QUEUE").unwrap_or_else(|_| "default".to_owned());
    let mut builder = Worker::builder(addr.as_str()).queues([queue]);
    if let Ok(worker_id) = std::env::var("CONVEYOR_WORKER_ID") {
        builder = builder.worker_id(worker_id);
    }
    let worker = builder
        .concurrency(concurrency)
        .register("lang", |_ctx: TaskContext| async {
            Ok(Value::from("rust"))
        })
        .register("add", add)
        .register("mul", mul)
        .register("xsum", xsum)
        .register("sleep", sleep)
        .register("fail", fail)
        .build()?;
    tracing::info!(%addr, concurrency, worker_id = worker.worker_id(), "worker starting");
    worker.run().await?;
    tracing::info!("worker stopped");
    Ok(())
}

/// `add(a, b)`: the sum of two numbers.
async fn add(ctx: TaskContext) -> Result<Value, TaskFailure> {
    let (a, b): (Number, Number) = (ctx.arg(0)?, ctx.arg(1)?);
    combine(&a, &b, i64::checked_add, |x, y| x + y).map(Value::Number)
}

/// `mul(a, b)`: the product of two numbers.
async fn mul(ctx: TaskContext) -> Result<Value, TaskFailure> {
    let (a, b): (Number, Number) = (ctx.arg(0)?, ctx.arg(1)?);
    combine(&a, &b, i64::checked_mul, |x, y| x * y).map(Value::Number)
}

/// `xsum([n, …])`: the sum of a list of numbers.
async fn xsum(ctx: TaskContext) -> Result<Value, TaskFailure> {
    let numbers: Vec<Number> = ctx.arg(0)?;
    let mut total = Number::from(0);
    for number in &numbers {
        total = combine(&total, number, i64::checked_add, |x, y| x + y)?;
    }
    Ok(Value::Number(total))
}

/// `sleep(seconds)`: sleeps, returns null; stops early when cancelled.
async fn sleep(ctx: TaskContext) -> Result<Value, TaskFailure> {
    let seconds: f64 = ctx.arg(0)?;
    let duration = Duration::try_from_secs_f64(seconds)
        .map_err(|error| TaskFailure::new("ValueError", error.to_string()).non_retryable())?;
    tokio::select! {
        () = tokio::time::sleep(duration) => Ok(Value::Null),
        () = ctx.cancelled() => Err(TaskFailure::new("Cancelled", "sleep was cancelled")),
    }
}

/// `fail([message])`: always fails with a non-retryable `ValueError`.
async fn fail(ctx: TaskContext) -> Result<Value, TaskFailure> {
    let message = if ctx.args().is_empty() {
        "boom".to_owned()
    } else {
        match ctx.arg::<Value>(0)? {
            Value::String(text) => text,
            other => other.to_string(),
        }
    };
    Err(TaskFailure::new("ValueError", message)
        .with_traceback(std::backtrace::Backtrace::force_capture().to_string())
        .non_retryable())
}

/// Combines two JSON numbers: exactly when both are integers and the result
/// fits, in floating point otherwise.
fn combine(
    a: &Number,
    b: &Number,
    integer: fn(i64, i64) -> Option<i64>,
    float: fn(f64, f64) -> f64,
) -> Result<Number, TaskFailure> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64())
        && let Some(exact) = integer(x, y)
    {
        return Ok(Number::from(exact));
    }
    let (x, y) = (
        a.as_f64().unwrap_or(f64::NAN),
        b.as_f64().unwrap_or(f64::NAN),
    );
    Number::from_f64(float(x, y)).ok_or_else(|| {
        TaskFailure::new("ArithmeticError", "result is not a finite number").non_retryable()
    })
}
