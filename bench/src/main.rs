//! `conveyor-bench`: the Conveyor side of the benchmark in `bench/`.
//!
//! - `conveyor-bench worker --addr ADDR --concurrency N` runs a worker that
//!   serves `add(a, b)` and `sleep(seconds)`;
//! - `conveyor-bench drive w1|w2|w3|w4 --addr ADDR …` runs one workload
//!   against a running `conveyor` (spawning its own worker processes) and
//!   prints one JSON object of figures on stdout.
//!
//! `bench/run` starts Redis and `conveyor`, calls the drivers and writes the
//! report; see bench/README.md.

mod drive;
mod stats;
mod worker;

use std::time::Duration;

use clap::{Parser, Subcommand};

/// Conveyor benchmark harness.
#[derive(Debug, Parser)]
#[command(name = "conveyor-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A worker process serving `add` and `sleep`.
    Worker {
        /// Conveyor address, `host:port` or a URL.
        #[arg(long)]
        addr: String,
        /// Task slots (credits) of this process.
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
    },
    /// Runs one workload and prints its figures as one JSON object.
    Drive(Box<DriveArgs>),
}

/// Which workload a driver runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Drain: enqueue N tasks, then start the workers.
    W1,
    /// Round trip: submit one task and await it, in sequence.
    W2,
    /// Sustained: a paced producer, then a sweep of higher rates.
    W3,
    /// Recovery: SIGKILL a worker that holds leases.
    W4,
    /// Workflows: a chord of N header tasks, and a 100-step chain.
    W5,
}

/// Settings of every workload (each uses the ones it needs).
#[derive(Debug, clap::Args)]
pub struct DriveArgs {
    /// The workload.
    #[arg(value_enum)]
    pub workload: Workload,
    /// Conveyor address, `host:port` or a URL.
    #[arg(long)]
    pub addr: String,
    /// Redis URL, for `INFO memory` (W1).
    #[arg(long, default_value = "redis://127.0.0.1:6391")]
    pub redis: String,
    /// Worker processes to spawn.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Slots per worker process.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// W1: tasks to drain.
    #[arg(long, default_value_t = 20_000)]
    pub tasks: usize,
    /// W2: round trips measured (after a warm-up).
    #[arg(long, default_value_t = 1000)]
    pub round_trips: usize,
    /// W3: the fixed rate, tasks/s.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// W3: how long the fixed rate runs.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// W3: rates of the sweep, tried in order until one is not sustained
    /// (empty: no sweep).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,2000,3000,5000,7500,10000,15000,20000,30000,50000"
    )]
    pub sweep: Vec<f64>,
    /// W3: how long each sweep step runs.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub step_duration: Duration,
    /// W3: a rate is sustained when the achieved rate is at least this
    /// fraction of it…
    #[arg(long, default_value_t = 0.95)]
    pub min_achieved: f64,
    /// W3: …and its p99 latency at most this many milliseconds.
    #[arg(long, default_value_t = 100.0)]
    pub max_p99_ms: f64,
    /// W3: most submits in flight at once (the producer is open-loop).
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: usize,
    /// W3: most tasks per step whose latency is read back (a uniform sample,
    /// plus the first and last 100).
    #[arg(long, default_value_t = 5000)]
    pub sample: usize,
    /// W3: at the fixed rate, also await every task with WaitTask and
    /// report the producer-observed latency (µs-precise).
    #[arg(long)]
    pub observe: bool,
    /// W4: leases the killed worker holds.
    #[arg(long, default_value_t = 100)]
    pub leases: usize,
    /// W4: how long each `sleep` task runs.
    #[arg(long, default_value_t = 3.0)]
    pub sleep: f64,
    /// W4: give up waiting for recovery after this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub recovery_cap: Duration,
    /// W5: header tasks of the chord.
    #[arg(long, default_value_t = 10_000)]
    pub chord_tasks: usize,
    /// W5: steps of the chain.
    #[arg(long, default_value_t = 100)]
    pub chain_steps: usize,
    /// Include raw latency samples (ms) in the output, for the chart.
    #[arg(long)]
    pub samples: bool,
    /// Label of the worker configuration in the output.
    #[arg(long, default_value = "")]
    pub config: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Workers and drivers run on one thread each, as BullMQ's Node process
    // and Celery's drivers do: the handlers are trivial, the machine's two
    // cores are shared by Redis, the server, the driver and two workers,
    // and a single-threaded runtime spares each message a hop between
    // threads. (`BENCH_THREADS=multi` gives them tokio's default.)
    let one_thread = std::env::var("BENCH_THREADS").as_deref() != Ok("multi");
    let mut builder = if one_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = builder.enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Worker { addr, concurrency } => worker::run(&url_of(&addr), concurrency).await,
            Command::Drive(args) => {
                let figures = drive::run(&args).await?;
                println!("{}", serde_json::to_string(&figures)?);
                Ok(())
            }
        }
    })
}

/// `127.0.0.1:50051` → `http://127.0.0.1:50051`; URLs are kept.
pub fn url_of(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}
