//! Real processes for failure tests: `conveyor serve …` (address read from
//! its first stdout line) and chaos workers, killed when dropped.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A child process, killed when dropped.
pub struct Process {
    /// The child.
    pub child: Child,
    /// Its listening address, for servers.
    pub addr: String,
}

impl Process {
    /// Sends `signal` (e.g. "KILL", "STOP", "CONT") to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running process").to_string();
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// SIGKILL and reap.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

fn target_dir() -> PathBuf {
    // target/debug/deps/<test binary> -> target/debug
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .to_path_buf()
}

/// The `conveyor` binary, built here if `scripts/test` did not build it yet.
pub fn conveyor_binary() -> PathBuf {
    let path = target_dir().join("conveyor");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "conveyor", "--bin", "conveyor"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building conveyor failed");
    }
    path
}

/// Starts `conveyor ARGS` listening on `listen` and waits for its address.
pub async fn spawn_conveyor(args: &[&str], listen: &str) -> Process {
    let mut child = Command::new(conveyor_binary())
        .args(args)
        .args(["--listen", listen])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn conveyor");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("conveyor started in time")
        .expect("read stdout")
        .expect("a line");
    let addr = line
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_string();
    Process { child, addr }
}

/// Starts a chaos worker (see `src/bin/chaos-worker.rs`; cargo builds it
/// for this package's integration tests).
pub fn spawn_chaos_worker(addr: &str, redis: &str, prefix: &str, worker_id: &str) -> Process {
    let child = Command::new(target_dir().join("chaos-worker"))
        .env("CONVEYOR_ADDR", format!("http://{addr}"))
        .env("CHAOS_REDIS", redis)
        .env("CHAOS_PREFIX", prefix)
        .env("CHAOS_WORKER_ID", worker_id)
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .spawn()
        .expect("spawn chaos worker");
    Process {
        child,
        addr: String::new(),
    }
}
