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

/// Long polls have a budget of their own: with room for 8 calls in flight,
/// 40 WaitTask calls waiting on tasks that never finish do not keep
/// SubmitTask out, and the 41st waiter beyond its own budget is told so.
#[tokio::test]
async fn waiters_never_starve_submissions() {
    let mut config = TestCluster::test_config();
    config.server.max_in_flight = 8;
    config.server.max_waiting = 40;
    let Some(cluster) = TestCluster::start_with(Backend::Memory, config).await else {
        return;
    };
    let mut submission =
        pb::submission_service_client::SubmissionServiceClient::new(cluster.channel.clone());
    let results = pb::results_service_client::ResultsServiceClient::new(cluster.channel.clone());
    let mut waiters = Vec::new();
    for _ in 0..40 {
        let id = submission
            .submit_task(pb::SubmitTaskRequest {
                task: Some(spec("nobody-runs-this", &[])),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .task_id;
        let mut results = results.clone();
        waiters.push(tokio::spawn(async move {
            results
                .wait_task(pb::WaitTaskRequest {
                    task_id: id,
                    timeout: Some(prost_types::Duration {
                        seconds: 30,
                        nanos: 0,
                    }),
                    ..Default::default()
                })
                .await
        }));
    }
    // Every waiter holds its place once one more is refused (an unknown id
    // answers NOT_FOUND at once while there is room).
    let probe = || {
        let mut results = results.clone();
        async move {
            results
                .wait_task(pb::WaitTaskRequest {
                    task_id: conveyor_core::TaskId::new(0).to_string(),
                    ..Default::default()
                })
                .await
                .unwrap_err()
        }
    };
    let full = conveyor_tests::eventually(Duration::from_secs(10), || async {
        probe().await.code() == Code::ResourceExhausted
    })
    .await;
    assert!(full, "40 waiters fill the wait budget");
    assert!(probe().await.message().contains("WaitTask"));
    for _ in 0..20 {
        let submitted = submission
            .submit_task(pb::SubmitTaskRequest {
                task: Some(spec("add", &[json!(1), json!(2)])),
                ..Default::default()
            })
            .await;
        assert!(submitted.is_ok(), "submit starved: {submitted:?}");
    }
    for waiter in waiters {
        waiter.abort();
    }
}
