//! A real `conveyor dev` for the SDK's tests against a server: started on a
//! free port, its address read from its first stdout line, killed when
//! dropped.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// `CONVEYOR_BIN`, else `conveyor` in this test binary's profile directory
/// (`target/debug/deps/<test>` -> `target/debug`, wherever the target is).
pub fn conveyor_bin() -> PathBuf {
    let path = std::env::var_os("CONVEYOR_BIN").map_or_else(
        || {
            let exe = std::env::current_exe().expect("test binary path");
            let profile = exe
                .parent()
                .and_then(|deps| deps.parent())
                .expect("target/<profile>/deps");
            profile.join("conveyor")
        },
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "no conveyor binary at {}: build it (cargo build -p conveyor) or set CONVEYOR_BIN",
        path.display()
    );
    path
}

/// A `conveyor dev` child, killed when dropped.
pub struct Server {
    _child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl Server {
    /// Starts `conveyor dev ARGS --listen 127.0.0.1:0`.
    pub async fn start(args: &[&str]) -> Server {
        let mut child = Command::new(conveyor_bin())
            .arg("dev")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn conveyor");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("conveyor printed its address in time")
            .expect("read stdout")
            .expect("a line");
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("expected `listening on ADDR`, got {line:?}"));
        Server {
            endpoint: format!("http://{addr}"),
            _child: child,
        }
    }
}
