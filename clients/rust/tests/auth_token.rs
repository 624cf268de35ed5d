//! Bearer tokens against a real `conveyor dev --auth-token`: the client and
//! the worker send `authorization: Bearer <token>`; without it the server
//! answers UNAUTHENTICATED.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use conveyor_client::{Client, Error, TaskContext, TaskRequest, Worker};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const TOKEN: &str = "s3cret";

/// `CONVEYOR_BIN`, else `conveyor` in this test binary's profile directory
/// (`target/debug/deps/<test>` -> `target/debug`, wherever the target is).
fn conveyor_bin() -> PathBuf {
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
struct Server {
    _child: Child,
    endpoint: String,
}

/// Starts `conveyor dev ARGS --listen 127.0.0.1:0` and reads the bound
/// address from its first stdout line.
async fn start_server(args: &[&str]) -> Server {
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

#[tokio::test]
async fn the_token_opens_submission_results_and_the_worker_stream() {
    let server = start_server(&["--auth-token", TOKEN]).await;
    let queue = "rust-auth";
    let task = || TaskRequest::new("add").arg(2).arg(3).queue(queue);

    let anonymous = Client::connect(server.endpoint.clone())
        .await
        .expect("connect");
    let refused = anonymous.submit(task()).await.expect_err("no token");
    assert_eq!(
        refused.code(),
        Some(tonic::Code::Unauthenticated),
        "{refused:?}"
    );
    let wrong = anonymous.clone().with_token("wrong").unwrap();
    let refused = wrong.submit(task()).await.expect_err("wrong token");
    assert_eq!(
        refused.code(),
        Some(tonic::Code::Unauthenticated),
        "{refused:?}"
    );

    let add = |ctx: TaskContext| async move {
        let (a, b): (i64, i64) = (ctx.arg(0)?, ctx.arg(1)?);
        Ok(json!(a + b))
    };
    // A worker without the token is refused for good, not retried forever.
    let refused = tokio::time::timeout(
        Duration::from_secs(15),
        Worker::builder(server.endpoint.clone())
            .queues([queue])
            .register("add", add)
            .run_until(std::future::pending()),
    )
    .await
    .expect("a refused worker returns");
    match refused {
        Err(error @ Error::Rpc(_)) => {
            assert_eq!(
                error.code(),
                Some(tonic::Code::Unauthenticated),
                "{error:?}"
            );
        }
        other => panic!("expected UNAUTHENTICATED, got {other:?}"),
    }

    let client = anonymous.with_token(TOKEN).expect("valid token");
    let id = client.submit(task()).await.expect("submit with the token");
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = Worker::builder(server.endpoint.clone())
        .token(TOKEN)
        .queues([queue])
        .concurrency(2)
        .register("add", add)
        .build()
        .expect("worker");
    let running = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));

    let sum: i64 = client
        .result(&id, Duration::from_secs(15))
        .await
        .expect("the worker ran the task");
    assert_eq!(sum, 5);
    let ids = client.submit_many(vec![task(), task()]).await.unwrap();
    for id in &ids {
        assert_eq!(
            client
                .result::<i64>(id, Duration::from_secs(15))
                .await
                .unwrap(),
            5
        );
        assert_eq!(client.get(id).await.unwrap().id, *id);
    }

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .expect("worker drained in time")
        .expect("worker task")
        .expect("worker ran cleanly");
}
