//! TLS on the listener: a client trusting the server's CA submits and a
//! worker runs the task over TLS; a client trusting another CA is refused; a
//! certificate replaced on disk reaches new connections without a restart;
//! with a client CA (mTLS) a client without a certificate is refused and one
//! with a certificate works; a plaintext URL with TLS settings is a
//! configuration error; unusable files stop the server at start, naming the
//! flag. The Rust SDK's settings are given in code ([`Tls`]); the
//! environment variables every SDK reads are checked through the `conveyor`
//! CLI, which reads them the same way.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use conveyor_client::{Client, Error, TaskContext, TaskRequest, Tls, Worker};
use conveyor_tests::processes::{conveyor_binary, spawn_conveyor};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn certs(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/gen-test-certs");
    let output = std::process::Command::new(script)
        .arg(dir)
        .output()
        .expect("run scripts/gen-test-certs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Submits `add(20, 22)` over `url` and has a worker (same settings) run it.
async fn round_trip(url: &str, tls: &Tls) -> conveyor_client::Result<i64> {
    let client = Client::connect_with_tls(url, tls.clone()).await?;
    let id = client
        .submit(TaskRequest::new("add").arg(20).arg(22))
        .await?;
    let stop = CancellationToken::new();
    let worker = Worker::builder(url)
        .tls(tls.clone())
        .register("add", |ctx: TaskContext| async move {
            let (a, b): (i64, i64) = (ctx.arg(0)?, ctx.arg(1)?);
            Ok(Value::from(a + b))
        })
        .build()?;
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run_until(stop.cancelled_owned()).await }
    });
    let result = client.result::<i64>(&id, Duration::from_secs(15)).await;
    stop.cancel();
    let _ = running.await;
    result
}

/// A submit that must fail: the TLS handshake is refused.
async fn refused(url: &str, tls: &Tls) -> String {
    let attempt = async {
        let client = Client::connect_with_tls(url, tls.clone()).await?;
        client.submit(TaskRequest::new("add")).await
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Err(error)) => error.to_string(),
        Ok(Ok(id)) => panic!("{url} accepted a submission ({id}) it should have refused"),
        Err(_) => panic!("{url}: no answer within 10 s"),
    }
}

fn copy_pair(from: &Path, to: &Path) {
    // Key first, then certificate: the server retries a pair that does not
    // match yet at its next check.
    std::fs::copy(from.join("server.key"), to.join("server.key")).unwrap();
    std::fs::copy(from.join("server.pem"), to.join("server.pem")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mtls_rotation_and_refusals() {
    let root = std::env::temp_dir().join(format!("conveyor-tls-{}", uuid::Uuid::new_v4().simple()));
    let (a, b, live) = (root.join("a"), root.join("b"), root.join("live"));
    certs(&a);
    certs(&b);
    std::fs::create_dir_all(&live).unwrap();
    copy_pair(&a, &live);
    let path = |dir: &PathBuf, file: &str| dir.join(file);

    // TLS, server certificate from `live` (a's for now).
    let cert = path(&live, "server.pem");
    let key = path(&live, "server.key");
    let server = spawn_conveyor(
        &[
            "dev",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--metrics-listen",
            "off",
        ],
        "127.0.0.1:0",
    )
    .await;
    let port = server.addr.rsplit(':').next().unwrap().to_string();
    let https = format!("https://localhost:{port}");

    let trust_a = Tls::new().ca_file(path(&a, "ca.pem"));
    assert_eq!(round_trip(&https, &trust_a).await.unwrap(), 42);
    // No scheme with settings given: https.
    assert_eq!(
        round_trip(&format!("127.0.0.1:{port}"), &trust_a)
            .await
            .unwrap(),
        42
    );
    // Plaintext with TLS settings: said at once.
    let plain = Client::connect_with_tls(format!("http://localhost:{port}"), trust_a.clone()).await;
    assert!(
        matches!(&plain, Err(Error::Config(message)) if message.contains("use https://")),
        "{:?}",
        plain.err()
    );
    // The environment variables, as every SDK reads them: the CLI.
    let cli = |ca: &Path| {
        std::process::Command::new(conveyor_binary())
            .args(["workers", "--server", &https])
            .env("CONVEYOR_TLS_CA", ca)
            .output()
            .unwrap()
    };
    let output = cli(&path(&a, "ca.pem"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!cli(&path(&a, "other-ca.pem")).status.success());

    // Trusting another CA only: refused.
    let message = refused(&https, &Tls::new().ca_file(path(&a, "other-ca.pem"))).await;
    assert!(!message.is_empty());

    // Rotation: b's certificate replaces a's on disk; new connections get
    // it without a restart.
    copy_pair(&b, &live);
    let trust_b = Tls::new().ca_file(path(&b, "ca.pem"));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match round_trip(&https, &trust_b).await {
            Ok(42) => break,
            other => assert!(
                Instant::now() < deadline,
                "the rotated certificate was not served: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    refused(&https, &trust_a).await;
    drop(server);

    // mTLS: a client certificate signed by a's CA is required.
    let server = spawn_conveyor(
        &[
            "dev",
            "--tls-cert",
            path(&a, "server.pem").to_str().unwrap(),
            "--tls-key",
            path(&a, "server.key").to_str().unwrap(),
            "--tls-client-ca",
            path(&a, "ca.pem").to_str().unwrap(),
            "--metrics-listen",
            "off",
        ],
        "127.0.0.1:0",
    )
    .await;
    let port = server.addr.rsplit(':').next().unwrap().to_string();
    let https = format!("https://localhost:{port}");
    refused(&https, &trust_a).await;
    // A certificate from another CA: refused too.
    let foreign = trust_a
        .clone()
        .identity_files(path(&b, "client.pem"), path(&b, "client.key"));
    refused(&https, &foreign).await;
    let mine = trust_a
        .clone()
        .identity_files(path(&a, "client.pem"), path(&a, "client.key"));
    assert_eq!(round_trip(&https, &mine).await.unwrap(), 42);
    drop(server);

    // Unusable files stop the server at start, naming the flag.
    let output = std::process::Command::new(conveyor_binary())
        .args(["dev", "--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .args(["--tls-cert", root.join("missing.pem").to_str().unwrap()])
        .args(["--tls-key", path(&a, "server.key").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--tls-cert"), "{stderr}");
    // A key that is not the certificate's.
    let output = std::process::Command::new(conveyor_binary())
        .args(["dev", "--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .args(["--tls-cert", path(&a, "server.pem").to_str().unwrap()])
        .args(["--tls-key", path(&b, "server.key").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("do not belong together"), "{stderr}");
    let _ = std::fs::remove_dir_all(&root);
}

/// TLS where it meets the other settings: Redis (at the suite's partition
/// count) and bearer tokens. A token is still required over TLS, and a
/// client and worker with both are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_tokens_on_redis() {
    let Some(redis) = conveyor_store::conformance::test_redis_url() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!(
        "conveyor-tls-auth-{}",
        uuid::Uuid::new_v4().simple()
    ));
    certs(&dir);
    let prefix = format!("tls-{}:", uuid::Uuid::new_v4().simple());
    let partitions = conveyor_store::conformance::test_partitions().to_string();
    let server = spawn_conveyor(
        &[
            "dev",
            "--store",
            &redis,
            "--redis-prefix",
            &prefix,
            "--partitions",
            &partitions,
            "--auth-token",
            "s3cret",
            "--tls-cert",
            dir.join("server.pem").to_str().unwrap(),
            "--tls-key",
            dir.join("server.key").to_str().unwrap(),
            "--metrics-listen",
            "off",
        ],
        "127.0.0.1:0",
    )
    .await;
    let port = server.addr.rsplit(':').next().unwrap().to_string();
    let https = format!("https://localhost:{port}");
    let tls = Tls::new().ca_file(dir.join("ca.pem"));

    let anonymous = Client::connect_with_tls(https.as_str(), tls.clone())
        .await
        .unwrap();
    let refused = anonymous.submit(TaskRequest::new("add")).await.unwrap_err();
    assert!(
        refused.to_string().contains("Unauthenticated") || refused.to_string().contains("token"),
        "{refused}"
    );

    let client = Client::connect_with_tls(https.as_str(), tls.clone())
        .await
        .unwrap()
        .with_token("s3cret")
        .unwrap();
    let id = client
        .submit(TaskRequest::new("add").arg(20).arg(22))
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let worker = Worker::builder(https.as_str())
        .tls(tls)
        .token("s3cret")
        .register("add", |ctx: TaskContext| async move {
            let (a, b): (i64, i64) = (ctx.arg(0)?, ctx.arg(1)?);
            Ok(Value::from(a + b))
        })
        .build()
        .unwrap();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run_until(stop.cancelled_owned()).await }
    });
    assert_eq!(
        client
            .result::<i64>(&id, Duration::from_secs(15))
            .await
            .unwrap(),
        42
    );
    stop.cancel();
    running.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The store over TLS (`rediss://`, `scripts/start-redis-tls`; the suite sets
/// CONVEYOR_TEST_REDIS_TLS and CONVEYOR_REDIS_TLS_CA): a server trusting the
/// CA runs a task, with and without a client certificate; without the CA it
/// stops at start saying which flag to give; TLS settings with a `redis://`
/// URL are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_over_tls() {
    let Some(url) = std::env::var("CONVEYOR_TEST_REDIS_TLS")
        .ok()
        .filter(|url| !url.is_empty())
    else {
        eprintln!("CONVEYOR_TEST_REDIS_TLS is not set: skipping (scripts/test sets it)");
        return;
    };
    let ca =
        std::env::var("CONVEYOR_REDIS_TLS_CA").expect("CONVEYOR_REDIS_TLS_CA with the TLS Redis");
    let certs = Path::new(&ca).parent().unwrap().to_path_buf();
    let prefix = format!("tls-store-{}:", uuid::Uuid::new_v4().simple());
    let client_cert = certs.join("client.pem");
    let client_key = certs.join("client.key");
    for identity in [false, true] {
        let mut args = vec![
            "dev",
            "--store",
            &url,
            "--redis-prefix",
            &prefix,
            "--redis-tls-ca",
            &ca,
            "--metrics-listen",
            "off",
        ];
        if identity {
            args.extend([
                "--redis-tls-cert",
                client_cert.to_str().unwrap(),
                "--redis-tls-key",
                client_key.to_str().unwrap(),
            ]);
        }
        let server = spawn_conveyor(&args, "127.0.0.1:0").await;
        let sum = round_trip(&format!("http://{}", server.addr), &Tls::new())
            .await
            .unwrap();
        assert_eq!(sum, 42, "identity {identity}");
        server.kill().await;
    }
    for (args, expected) in [
        (vec!["--store", url.as_str()], "--redis-tls-ca"),
        (
            vec![
                "--store",
                "redis://127.0.0.1:1",
                "--redis-tls-ca",
                ca.as_str(),
            ],
            "rediss://",
        ),
    ] {
        let output = std::process::Command::new(conveyor_binary())
            .arg("dev")
            .args(&args)
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
            .env("RUST_LOG", "warn")
            .env_remove("CONVEYOR_REDIS_TLS_CA")
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} started");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
