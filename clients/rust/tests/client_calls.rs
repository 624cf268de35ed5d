//! `Client` against fake submission and results services: what it sends and
//! how it reads the answers (the real services are tested in `tests/`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use conveyor_client::pb::results_service_server::{ResultsService, ResultsServiceServer};
use conveyor_client::pb::submission_service_server::{SubmissionService, SubmissionServiceServer};
use conveyor_client::{Client, Error, TaskRequest, pb};
use futures::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// The `timeout` field and the `grpc-timeout` header of one WaitTask.
type WaitSeen = (Option<prost_types::Duration>, Option<String>);

/// Records what it was sent; answers from the task id.
#[derive(Clone, Default)]
struct Fake {
    /// Sizes of the SubmitTasks batches received.
    batches: Arc<Mutex<Vec<usize>>>,
    /// `(timeout field, grpc-timeout header)` of each WaitTask.
    waits: Arc<Mutex<Vec<WaitSeen>>>,
}

fn task(id: &str, state: pb::TaskState) -> pb::Task {
    pb::Task {
        id: id.into(),
        state: state as i32,
        ..Default::default()
    }
}

/// The terminal task the fake reports for each id.
fn finished(id: &str) -> Result<pb::Task, Status> {
    let mut reported = task(id, pb::TaskState::Succeeded);
    match id {
        "five" => {
            reported.result = Some(pb::Payload {
                data: b"5".to_vec(),
                content_type: "application/json".into(),
            })
        }
        "nothing" => {}
        "failed" => {
            reported.state = pb::TaskState::Failed as i32;
            reported.error = Some(pb::TaskError {
                r#type: "ValueError".into(),
                message: "boom".into(),
                traceback: "tb".into(),
                retryable: false,
                retry_after: None,
                ..Default::default()
            });
        }
        "expired" => reported.state = pb::TaskState::Expired as i32,
        "slow" => return Err(Status::deadline_exceeded("still running")),
        _ => return Err(Status::not_found("no such task")),
    }
    Ok(reported)
}

#[tonic::async_trait]
impl SubmissionService for Fake {
    async fn submit_workflow(
        &self,
        _request: Request<pb::SubmitWorkflowRequest>,
    ) -> Result<Response<pb::SubmitWorkflowResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn cancel_workflow(
        &self,
        _request: Request<pb::CancelWorkflowRequest>,
    ) -> Result<Response<pb::CancelWorkflowResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn submit_task(
        &self,
        request: Request<pb::SubmitTaskRequest>,
    ) -> Result<Response<pb::SubmitTaskResponse>, Status> {
        let spec = request
            .into_inner()
            .task
            .ok_or_else(|| Status::invalid_argument("task"))?;
        let task_id = format!(
            "{}:{}",
            spec.name,
            String::from_utf8_lossy(&spec.args[0].data)
        );
        Ok(Response::new(pb::SubmitTaskResponse {
            task_id,
            ..Default::default()
        }))
    }

    async fn submit_tasks(
        &self,
        request: Request<pb::SubmitTasksRequest>,
    ) -> Result<Response<pb::SubmitTasksResponse>, Status> {
        let tasks = request.into_inner().tasks;
        self.batches.lock().expect("lock").push(tasks.len());
        let results = tasks
            .iter()
            .map(|spec| pb::SubmitTaskResponse {
                task_id: String::from_utf8_lossy(&spec.args[0].data).into_owned(),
                ..Default::default()
            })
            .collect();
        Ok(Response::new(pb::SubmitTasksResponse { results }))
    }

    async fn replay_task(
        &self,
        _request: Request<pb::ReplayTaskRequest>,
    ) -> Result<Response<pb::ReplayTaskResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn cancel_task(
        &self,
        request: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::CancelTaskResponse>, Status> {
        let cancelled = request.into_inner().task_id == "queued";
        Ok(Response::new(pb::CancelTaskResponse {
            cancelled,
            state: pb::TaskState::Cancelled as i32,
        }))
    }
}

#[tonic::async_trait]
impl ResultsService for Fake {
    async fn forget_task(
        &self,
        _request: Request<pb::ForgetTaskRequest>,
    ) -> Result<Response<pb::ForgetTaskResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn list_dead_letters(
        &self,
        _request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    type WatchTaskStream =
        futures::stream::Iter<std::vec::IntoIter<Result<pb::WatchTaskResponse, Status>>>;
    type WatchEventsStream =
        futures::stream::Iter<std::vec::IntoIter<Result<pb::WatchEventsResponse, Status>>>;
    type WatchWorkflowStream =
        futures::stream::Iter<std::vec::IntoIter<Result<pb::WatchWorkflowResponse, Status>>>;

    async fn get_workflow(
        &self,
        _request: Request<pb::GetWorkflowRequest>,
    ) -> Result<Response<pb::GetWorkflowResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn wait_workflow(
        &self,
        _request: Request<pb::WaitWorkflowRequest>,
    ) -> Result<Response<pb::WaitWorkflowResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn watch_workflow(
        &self,
        _request: Request<pb::WatchWorkflowRequest>,
    ) -> Result<Response<Self::WatchWorkflowStream>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn watch_events(
        &self,
        _request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        let task = finished(&request.into_inner().task_id)?;
        Ok(Response::new(pb::GetTaskResponse { task: Some(task) }))
    }

    async fn wait_task(
        &self,
        request: Request<pb::WaitTaskRequest>,
    ) -> Result<Response<pb::WaitTaskResponse>, Status> {
        let header = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let request = request.into_inner();
        self.waits
            .lock()
            .expect("lock")
            .push((request.timeout, header));
        Ok(Response::new(pb::WaitTaskResponse {
            task: Some(finished(&request.task_id)?),
        }))
    }

    async fn watch_task(
        &self,
        request: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let id = request.into_inner().task_id;
        let updates = [
            pb::TaskState::Queued,
            pb::TaskState::Running,
            pb::TaskState::Succeeded,
        ]
        .map(|state| {
            Ok(pb::WatchTaskResponse {
                task: Some(task(&id, state)),
            })
        });
        Ok(Response::new(futures::stream::iter(updates.to_vec())))
    }
}

async fn start() -> (Client, Fake) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let fake = Fake::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SubmissionServiceServer::new(fake.clone()))
            .add_service(ResultsServiceServer::new(fake.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let client = Client::connect(format!("http://{addr}"))
        .await
        .expect("connects");
    (client, fake)
}

#[tokio::test]
async fn submits_one_and_many_in_batches_of_1000() {
    let (client, fake) = start().await;
    let id = client
        .submit(TaskRequest::new("add").arg(7))
        .await
        .expect("submits");
    assert_eq!(id, "add:7");

    let tasks = (0..2500).map(|n| TaskRequest::new("t").arg(n)).collect();
    let ids = client.submit_many(tasks).await.expect("submits");
    assert_eq!(ids.len(), 2500);
    assert_eq!(
        (ids[0].as_str(), ids[2499].as_str()),
        ("0", "2499"),
        "in order"
    );
    assert_eq!(*fake.batches.lock().expect("lock"), vec![1000, 1000, 500]);
    assert!(
        client
            .submit_many(Vec::new())
            .await
            .expect("nothing to do")
            .is_empty()
    );
}

#[tokio::test]
async fn results_decode_or_explain_the_failure() {
    let (client, fake) = start().await;
    let timeout = Duration::from_secs(3);
    assert_eq!(
        client
            .result::<i64>("five", timeout)
            .await
            .expect("succeeded"),
        5
    );
    client
        .result::<()>("nothing", timeout)
        .await
        .expect("null result");
    let Err(Error::TaskFailed {
        error_type,
        message,
        traceback,
    }) = client.result::<i64>("failed", timeout).await
    else {
        panic!("expected TaskFailed")
    };
    assert_eq!(
        (error_type.as_str(), message.as_str(), traceback.as_str()),
        ("ValueError", "boom", "tb")
    );
    let expired = client.result::<i64>("expired", timeout).await;
    assert!(
        matches!(
            expired,
            Err(Error::TaskNotSucceeded {
                state: pb::TaskState::Expired
            })
        ),
        "{expired:?}"
    );
    let wrong_type = client.result::<String>("five", timeout).await;
    assert!(
        matches!(wrong_type, Err(Error::Decode { .. })),
        "{wrong_type:?}"
    );

    let (field, header) = fake.waits.lock().expect("lock")[0].clone();
    let field = field.expect("timeout field set");
    assert!(
        field.seconds == 2 || field.seconds == 3,
        "about 3 s: {field:?}"
    );
    assert!(header.is_some(), "a gRPC deadline travels with the call");
}

#[tokio::test]
async fn wait_get_cancel_and_watch() {
    let (client, _fake) = start().await;
    let slow = client
        .wait("slow", Duration::from_millis(200))
        .await
        .expect_err("times out");
    assert!(slow.is_timeout(), "{slow:?}");
    let missing = client.get("missing").await.expect_err("unknown id");
    assert_eq!(missing.code(), Some(tonic::Code::NotFound));
    assert_eq!(client.get("five").await.expect("found").id, "five");
    assert!(client.cancel("queued").await.expect("cancels"));
    assert!(!client.cancel("running").await.expect("answers"));

    let states: Vec<i32> = client
        .watch("w")
        .await
        .expect("watches")
        .map(|update| update.expect("snapshot").state)
        .collect()
        .await;
    let expected = [
        pb::TaskState::Queued,
        pb::TaskState::Running,
        pb::TaskState::Succeeded,
    ];
    assert_eq!(states, expected.map(|state| state as i32));
}

#[tokio::test]
async fn encoding_errors_surface_before_anything_is_sent() {
    let (client, fake) = start().await;
    let unencodable: std::collections::BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
    let tasks = vec![
        TaskRequest::new("t").arg(1),
        TaskRequest::new("t").arg(&unencodable),
    ];
    let error = client.submit_many(tasks).await.expect_err("cannot encode");
    assert!(matches!(error, Error::Encode { .. }), "{error:?}");
    assert!(fake.batches.lock().expect("lock").is_empty());
}
