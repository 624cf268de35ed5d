//! Bad input gets a precise status and changes nothing, on both stores.

use std::time::Duration;

use serde_json::json;
use tonic::Code;

use conveyor_api::pb::{self, connect_request::Message as Up};
use conveyor_tests::raw_worker::hello;
use conveyor_tests::{
    Backend, RawWorker, TestCluster, json as payload, on_both_stores, spec, violated_field,
};

on_both_stores!(
    bad_submissions_name_their_field_and_store_nothing,
    unknown_and_malformed_ids,
    protocol_violations_end_the_stream_precisely,
    frames_that_do_not_decode_are_invalid_argument,
);

fn with_options(options: pb::TaskOptions) -> pb::TaskSpec {
    pb::TaskSpec {
        name: "add".into(),
        options: Some(options),
        ..Default::default()
    }
}

async fn submit_err(cluster: &TestCluster, task: Option<pb::TaskSpec>) -> tonic::Status {
    cluster
        .submission()
        .submit_task(pb::SubmitTaskRequest {
            task,
            ..Default::default()
        })
        .await
        .expect_err("must be refused")
}

/// Nothing was stored: a worker for `add` finds no work and nothing is scheduled.
async fn assert_nothing_stored(cluster: &TestCluster) {
    let mut worker = RawWorker::connect(cluster.channel.clone(), hello("probe", &["add"], 1))
        .await
        .unwrap();
    worker.grant(1).await;
    assert!(
        worker
            .assignments(1, Duration::from_millis(300))
            .await
            .is_empty(),
        "a refused task was stored"
    );
    assert_eq!(cluster.store.scheduled_summary().await.unwrap().count, 0);
}

async fn bad_submissions_name_their_field_and_store_nothing(backend: Backend) {
    let Some(cluster) = TestCluster::start(backend).await else {
        return;
    };
    let cases: Vec<(pb::TaskSpec, Code, &str)> = vec![
        (spec("", &[json!(1)]), Code::InvalidArgument, "task.name"),
        (
            spec(&"a".repeat(201), &[json!(1)]),
            Code::InvalidArgument,
            "task.name",
        ),
        (
            spec("has space", &[json!(1)]),
            Code::InvalidArgument,
            "task.name",
        ),
        (
            pb::TaskSpec {
                name: "add".into(),
                args: vec![payload(json!("x".repeat(1024 * 1024)))],
                ..Default::default()
            },
            Code::ResourceExhausted,
            "task.args[0]",
        ),
        (
            pb::TaskSpec {
                name: "add".into(),
                args: vec![pb::Payload {
                    data: b"{\"unterminated\": ".to_vec(),
                    content_type: String::new(),
                }],
                ..Default::default()
            },
            Code::InvalidArgument,
            "task.args[0].data",
        ),
        (
            pb::TaskSpec {
                name: "add".into(),
                options: Some(pb::TaskOptions {
                    countdown: Some(prost_types::Duration {
                        seconds: -1,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Code::InvalidArgument,
            "task.options.countdown",
        ),
        (
            with_options(pb::TaskOptions {
                countdown: Some(prost_types::Duration {
                    seconds: 5,
                    nanos: 0,
                }),
                eta: Some(conveyor_core::time::timestamp_from_ms(
                    conveyor_core::time::now_ms() + 60_000,
                )),
                ..Default::default()
            }),
            Code::InvalidArgument,
            "task.options.eta",
        ),
        (
            with_options(pb::TaskOptions {
                eta: Some(conveyor_core::time::timestamp_from_ms(
                    conveyor_core::time::now_ms() + 60_000,
                )),
                expires: Some(conveyor_core::time::timestamp_from_ms(
                    conveyor_core::time::now_ms() + 30_000,
                )),
                ..Default::default()
            }),
            Code::InvalidArgument,
            "task.options.expires",
        ),
        (
            with_options(pb::TaskOptions {
                rate_limit: "0/s".into(),
                ..Default::default()
            }),
            Code::InvalidArgument,
            "task.options.rate_limit",
        ),
        (
            with_options(pb::TaskOptions {
                rate_limit: " 10/s".into(),
                ..Default::default()
            }),
            Code::InvalidArgument,
            "task.options.rate_limit",
        ),
        (
            pb::TaskSpec {
                name: "add".into(),
                args: vec![payload(json!(1)); 1001],
                ..Default::default()
            },
            Code::ResourceExhausted,
            "task.args",
        ),
        (
            with_options(pb::TaskOptions {
                eta: Some(prost_types::Timestamp {
                    seconds: 253_402_300_800, // 10000-01-01
                    nanos: 0,
                }),
                ..Default::default()
            }),
            Code::InvalidArgument,
            "task.options.eta",
        ),
        (
            with_options(pb::TaskOptions {
                rate_limit: "lots per second".into(),
                ..Default::default()
            }),
            Code::InvalidArgument,
            "task.options.rate_limit",
        ),
        (
            with_options(pb::TaskOptions {
                retry: Some(pb::RetryPolicy {
                    max_retries: 101,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            Code::InvalidArgument,
            "task.options.retry.max_retries",
        ),
        (
            pb::TaskSpec {
                name: "add".into(),
                options: Some(pb::TaskOptions {
                    queue: "no:colons".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Code::InvalidArgument,
            "task.options.queue",
        ),
    ];
    for (task, code, field) in cases {
        let status = submit_err(&cluster, Some(task)).await;
        assert_eq!(status.code(), code, "{field}: {status:?}");
        assert_eq!(
            violated_field(&status).as_deref(),
            Some(field),
            "{status:?}"
        );
        assert!(
            status.message().contains(field),
            "message names the field: {}",
            status.message()
        );
    }
    let missing = submit_err(&cluster, None).await;
    assert_eq!(
        (missing.code(), violated_field(&missing).as_deref()),
        (Code::InvalidArgument, Some("task"))
    );
    // A batch is all or nothing; the violation names the index.
    let mut tasks: Vec<pb::TaskSpec> = (0..5).map(|n| spec("add", &[json!(n), json!(1)])).collect();
    tasks[3].name = String::new();
    let status = cluster
        .submission()
        .submit_tasks(pb::SubmitTasksRequest {
            tasks,
            ..Default::default()
        })
        .await
        .expect_err("batch refused");
    assert_eq!(
        (status.code(), violated_field(&status).as_deref()),
        (Code::InvalidArgument, Some("tasks[3].name"))
    );
    let oversized: Vec<pb::TaskSpec> = (0..1001)
        .map(|n| spec("add", &[json!(n), json!(1)]))
        .collect();
    let status = cluster
        .submission()
        .submit_tasks(pb::SubmitTasksRequest {
            tasks: oversized,
            ..Default::default()
        })
        .await
        .expect_err("batch too large");
    assert_eq!(
        (status.code(), violated_field(&status).as_deref()),
        (Code::ResourceExhausted, Some("tasks"))
    );
    let empty = cluster
        .submission()
        .submit_tasks(pb::SubmitTasksRequest {
            tasks: vec![],
            ..Default::default()
        })
        .await
        .expect_err("empty batch");
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert_nothing_stored(&cluster).await;
}

async fn unknown_and_malformed_ids(backend: Backend) {
    let Some(cluster) = TestCluster::start(backend).await else {
        return;
    };
    let unknown = uuid::Uuid::now_v7().to_string();
    let mut results = cluster.results();
    let status = results
        .get_task(pb::GetTaskRequest {
            task_id: unknown.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = results
        .wait_task(pb::WaitTaskRequest {
            task_id: unknown.clone(),
            timeout: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = results
        .get_task(pb::GetTaskRequest {
            task_id: "not-a-uuid".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), violated_field(&status).as_deref()),
        (Code::InvalidArgument, Some("task_id"))
    );
    let status = results
        .get_task(pb::GetTaskRequest {
            task_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = cluster
        .submission()
        .cancel_task(pb::CancelTaskRequest {
            task_id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = results
        .watch_task(pb::WatchTaskRequest {
            task_id: unknown,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

/// The status that ends a stream, waiting at most a few seconds.
async fn ending_status(worker: &mut RawWorker) -> tonic::Status {
    loop {
        match worker.next(Duration::from_secs(5)).await {
            Some(Err(status)) => return status,
            Some(Ok(_)) => continue,
            None => panic!("stream ended without a status"),
        }
    }
}

async fn protocol_violations_end_the_stream_precisely(backend: Backend) {
    let Some(cluster) = TestCluster::start(backend).await else {
        return;
    };
    let task_id = cluster
        .submission()
        .submit_task(pb::SubmitTaskRequest {
            task: Some(spec("add", &[json!(1), json!(2)])),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .task_id;

    // A second hello, while holding a lease: FAILED_PRECONDITION, and the
    // lease goes back to the queue unchanged but for the attempt count.
    let mut worker = RawWorker::connect(cluster.channel.clone(), hello("twice", &["add"], 1))
        .await
        .unwrap();
    worker.grant(1).await;
    assert_eq!(worker.assignments(1, Duration::from_secs(5)).await.len(), 1);
    worker.send(Up::Hello(hello("twice", &["add"], 1))).await;
    assert_eq!(
        ending_status(&mut worker).await.code(),
        Code::FailedPrecondition
    );
    let requeued = conveyor_tests::eventually(Duration::from_secs(5), || async {
        let task = cluster
            .results()
            .get_task(pb::GetTaskRequest {
                task_id: task_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .task
            .unwrap();
        task.state == pb::TaskState::Queued as i32 && task.result.is_none()
    })
    .await;
    assert!(requeued, "the session's lease was released");

    // A first message that is not hello.
    let (sender, inbound) = RawWorker::open(cluster.channel.clone()).await.unwrap();
    sender
        .send(pb::ConnectRequest {
            message: Some(Up::Heartbeat(pb::Heartbeat {})),
        })
        .await
        .unwrap();
    let status = first_status(inbound).await;
    assert_eq!(status.code(), Code::FailedPrecondition);

    // A hello without task names.
    let status = RawWorker::connect(cluster.channel.clone(), hello("nameless", &[], 1))
        .await
        .err()
        .expect("refused");
    assert_eq!(
        (status.code(), violated_field(&status).as_deref()),
        (Code::InvalidArgument, Some("hello.task_names"))
    );

    // Zero credits, and more credits than allowed.
    let mut zero = RawWorker::connect(cluster.channel.clone(), hello("zero", &["mul"], 1))
        .await
        .unwrap();
    zero.grant(0).await;
    assert_eq!(ending_status(&mut zero).await.code(), Code::InvalidArgument);
    let mut greedy = RawWorker::connect(cluster.channel.clone(), hello("greedy", &["mul"], 1))
        .await
        .unwrap();
    let limit = greedy.welcome.max_credits;
    greedy.grant(limit + 1).await;
    assert_eq!(
        ending_status(&mut greedy).await.code(),
        Code::ResourceExhausted
    );
}

async fn first_status(mut inbound: tonic::Streaming<pb::ConnectResponse>) -> tonic::Status {
    match tokio::time::timeout(Duration::from_secs(5), inbound.message()).await {
        Ok(Err(status)) => status,
        other => panic!("expected a status, got {other:?}"),
    }
}

/// Sends and receives raw bytes, to put frames that are not valid protobuf
/// on the wire.
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Malformed protobuf and strings that are not UTF-8, on a unary call and on
/// the worker stream: INVALID_ARGUMENT saying so, nothing stored.
async fn frames_that_do_not_decode_are_invalid_argument(backend: Backend) {
    let Some(cluster) = TestCluster::start(backend).await else {
        return;
    };
    let submit = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/conveyor.v1.SubmissionService/SubmitTask",
    );
    // SubmitTaskRequest { task: TaskSpec { name: [0xff, 0xfe] } }, then bytes
    // that are no protobuf at all (a field number 0 and a truncated varint).
    for frame in [vec![0x0a, 4, 0x0a, 2, 0xff, 0xfe], vec![0x00, 0xff, 0xff]] {
        let mut grpc = tonic::client::Grpc::new(cluster.channel.clone());
        grpc.ready().await.unwrap();
        let status = grpc
            .unary(tonic::Request::new(frame.clone()), submit.clone(), RawCodec)
            .await
            .expect_err("a frame that does not decode");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{frame:?}: {status:?}"
        );
        assert!(
            status.message().contains("not valid protobuf"),
            "{status:?}"
        );
    }
    assert_nothing_stored(&cluster).await;
    // The worker stream: a hello, then garbage. The stream ends with
    // INVALID_ARGUMENT (not OK), and the dispatcher goes on serving others.
    let connect = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/conveyor.v1.DispatchService/Connect",
    );
    let hello_frame = prost::Message::encode_to_vec(&pb::ConnectRequest {
        message: Some(Up::Hello(hello("garbage", &["add"], 1))),
    });
    let frames = futures::stream::iter([hello_frame, vec![0x0a, 0x05, 0xff]]);
    let mut grpc = tonic::client::Grpc::new(cluster.channel.clone());
    grpc.ready().await.unwrap();
    let mut inbound = grpc
        .streaming(tonic::Request::new(frames), connect, RawCodec)
        .await
        .unwrap()
        .into_inner();
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(5), inbound.message()).await {
            Ok(Ok(Some(_welcome))) => continue,
            Ok(Ok(None)) => panic!("the stream ended with OK after a garbage frame"),
            Ok(Err(status)) => break status,
            Err(_) => panic!("the stream stayed open after a garbage frame"),
        }
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_nothing_stored(&cluster).await;
}
