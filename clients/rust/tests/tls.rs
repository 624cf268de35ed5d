//! The SDK over TLS against a real `conveyor dev`: [`Tls`] settings in
//! code, a client and a worker round trip, and mTLS.

mod dev_server;

use std::path::{Path, PathBuf};
use std::time::Duration;

use conveyor_client::{Client, TaskContext, TaskRequest, Tls, Worker};
use dev_server::Server;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Certificates for one test (tests run in parallel: one directory each).
fn certs(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("conveyor-rs-tls-{}-{test}", std::process::id()));
    {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/gen-test-certs");
        let output = std::process::Command::new(script)
            .arg(&dir)
            .output()
            .expect("run scripts/gen-test-certs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    dir
}

fn https(server: &Server) -> String {
    server
        .endpoint
        .replace("http://127.0.0.1", "https://localhost")
}

async fn round_trip(url: &str, tls: &Tls) -> conveyor_client::Result<i64> {
    let client = Client::connect_with_tls(url, tls.clone()).await?;
    let id = client.submit(TaskRequest::new("add").arg(2).arg(3)).await?;
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

#[tokio::test]
async fn parity_tls_client_and_worker_trust_the_servers_ca() {
    let dir = certs("tls");
    let cert = dir.join("server.pem");
    let key = dir.join("server.key");
    let server = Server::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--metrics-listen",
        "off",
    ])
    .await;
    let url = https(&server);
    let tls = Tls::new().ca_file(dir.join("ca.pem"));
    assert_eq!(round_trip(&url, &tls).await.unwrap(), 5);
    // Another CA only: the handshake fails.
    let other = Tls::new().ca_file(dir.join("other-ca.pem"));
    assert!(Client::connect_with_tls(url.as_str(), other).await.is_err());
}

#[tokio::test]
async fn parity_mtls_needs_a_client_certificate() {
    let dir = certs("mtls");
    let cert = dir.join("server.pem");
    let key = dir.join("server.key");
    let ca = dir.join("ca.pem");
    let server = Server::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--tls-client-ca",
        ca.to_str().unwrap(),
        "--metrics-listen",
        "off",
    ])
    .await;
    let url = https(&server);
    let anonymous = Tls::new().ca_file(&ca);
    let refused = async {
        let client = Client::connect_with_tls(url.as_str(), anonymous).await?;
        client.submit(TaskRequest::new("add")).await
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(10), refused)
            .await
            .expect("an answer")
            .is_err(),
        "a client without a certificate was served"
    );
    let identified = Tls::new()
        .ca_file(&ca)
        .identity_files(dir.join("client.pem"), dir.join("client.key"));
    assert_eq!(round_trip(&url, &identified).await.unwrap(), 5);
}
