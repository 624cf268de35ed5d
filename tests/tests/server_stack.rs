//! The shared server stack: health and reflection always mounted, bearer
//! token authentication when configured, graceful drain of worker streams.

use std::time::Duration;

use serde_json::json;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use conveyor_api::pb::{self, connect_response::Message as Down};
use conveyor_tests::raw_worker::hello;
use conveyor_tests::{Backend, RawWorker, TestCluster, spec};

#[tokio::test]
async fn health_reports_every_role() {
    let cluster = TestCluster::start(Backend::Memory).await.unwrap();
    let mut health = HealthClient::new(cluster.channel.clone());
    for service in [
        "",
        "conveyor.v1.SubmissionService",
        "conveyor.v1.DispatchService",
        "conveyor.v1.ResultsService",
        "conveyor.v1.SchedulingService",
    ] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            response.status,
            ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
}

#[tokio::test]
async fn bearer_tokens_guard_every_call_but_health() {
    let mut config = TestCluster::test_config();
    config.server.auth_tokens = vec!["s3cret".into()];
    let cluster = TestCluster::start_with(Backend::Memory, config)
        .await
        .unwrap();
    let request = || pb::SubmitTaskRequest {
        task: Some(spec("add", &[json!(1), json!(2)])),
        ..Default::default()
    };
    let status = cluster
        .submission()
        .submit_task(request())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut wrong = tonic::Request::new(request());
    wrong
        .metadata_mut()
        .insert("authorization", MetadataValue::from_static("Bearer nope"));
    assert_eq!(
        cluster
            .submission()
            .submit_task(wrong)
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let mut right = tonic::Request::new(request());
    right
        .metadata_mut()
        .insert("authorization", MetadataValue::from_static("Bearer s3cret"));
    assert!(cluster.submission().submit_task(right).await.is_ok());
    let mut health = HealthClient::new(cluster.channel.clone());
    assert!(
        health
            .check(HealthCheckRequest {
                service: String::new()
            })
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn shutdown_drains_worker_streams() {
    let cluster = TestCluster::start(Backend::Memory).await.unwrap();
    let mut worker = RawWorker::connect(cluster.channel.clone(), hello("w", &["add"], 1))
        .await
        .unwrap();
    worker.grant(1).await;
    let stopping = tokio::spawn(cluster.stop());
    let mut drained = false;
    while let Some(message) = worker.next(Duration::from_secs(5)).await {
        if let Ok(Down::Drain(drain)) = message {
            assert!(drain.grace.is_some());
            drained = true;
            break;
        }
    }
    assert!(drained, "the worker was asked to drain");
    drop(worker); // the worker finishes and closes its stream
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("the server stopped within its grace period")
        .unwrap()
        .unwrap();
}
