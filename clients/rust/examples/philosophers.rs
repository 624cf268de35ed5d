//! The dining philosophers, solved by the platform: five philosophers are
//! `eat` tasks, the five forks are concurrency keys with one permit each, and
//! philosopher i needs forks i and i+1. Conveyor leases a meal only when both
//! forks are free and takes both at once, so nobody ever holds one fork while
//! waiting for the other: no deadlock, and waiting meals are served oldest
//! first (nobody starves).
//!
//! Run `conveyor dev` in one terminal, then from the repository root:
//! `cargo run --example philosophers`. Environment: `CONVEYOR_ADDR` (default
//! `http://127.0.0.1:50051`), `MEALS` per philosopher (default 5).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conveyor_client::{Client, TaskContext, TaskRequest, Worker};
use serde_json::Value;

const PHILOSOPHERS: usize = 5;

fn fork(index: usize) -> String {
    format!("fork:{}", index % PHILOSOPHERS)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr =
        std::env::var("CONVEYOR_ADDR").unwrap_or_else(|_| "http://127.0.0.1:50051".to_owned());
    let meals: usize = std::env::var("MEALS").map_or(Ok(5), |text| text.parse())?;

    // Who ate when: (philosopher, start, end).
    let log: Arc<Mutex<Vec<(usize, Instant, Instant)>>> = Arc::default();
    let record = log.clone();
    let worker = Worker::builder(addr.as_str())
        .concurrency(5) // slots for everyone: only the forks limit the table
        .register("eat", move |ctx: TaskContext| {
            let record = record.clone();
            async move {
                let philosopher: usize = ctx.arg(0)?;
                let start = Instant::now();
                tokio::time::sleep(Duration::from_millis(20)).await;
                record
                    .lock()
                    .unwrap()
                    .push((philosopher, start, Instant::now()));
                Ok(Value::Null)
            }
        })
        .build()?;
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));

    let client = Client::connect(addr).await?;
    let ids = client
        .submit_many(
            (0..meals * PHILOSOPHERS)
                .map(|meal| {
                    let philosopher = meal % PHILOSOPHERS;
                    TaskRequest::new("eat")
                        .arg(philosopher)
                        .concurrency_limit(fork(philosopher), 1)
                        .concurrency_limit(fork(philosopher + 1), 1)
                })
                .collect(),
        )
        .await?;
    for id in &ids {
        client.result::<Value>(id, Duration::from_secs(60)).await?;
    }
    stop.cancel();
    running.await??;

    let log = log.lock().unwrap();
    // Most eating at once: walk starts (+1) and ends (-1) in time order,
    // ends first at equal instants.
    let mut events: Vec<(Instant, i32)> = log
        .iter()
        .flat_map(|(_, start, end)| [(*start, 1), (*end, -1)])
        .collect();
    events.sort();
    let (mut eating, mut most) = (0, 0);
    for (_, change) in events {
        eating += change;
        most = most.max(eating);
    }
    // Neighbours share a fork: they must never eat at the same time.
    let mut shared = 0;
    for (index, (philosopher, start, end)) in log.iter().enumerate() {
        shared += log[index + 1..]
            .iter()
            .filter(|(who, s, e)| {
                s < end
                    && start < e
                    && ((who + 1) % PHILOSOPHERS == *philosopher
                        || (philosopher + 1) % PHILOSOPHERS == *who)
            })
            .count();
    }
    for philosopher in 0..PHILOSOPHERS {
        let eaten = log.iter().filter(|(who, _, _)| *who == philosopher).count();
        println!("philosopher {philosopher} ate {eaten} meals");
    }
    println!("at most {most} philosophers ate at once");
    println!("meals that overlapped a neighbour's: {shared}");
    if shared > 0 || most > 2 {
        return Err("a fork was in two hands".into());
    }
    Ok(())
}
