//! A scripted fake dispatcher: each `Connect` stream is handed to the test,
//! which plays the dispatcher's side message by message.

use std::sync::Arc;
use std::time::Duration;

use conveyor_client::pb;
use conveyor_client::pb::connect_request::Message as FromWorker;
use conveyor_client::pb::connect_response::Message as ToWorker;
use conveyor_client::pb::dispatch_service_server::{DispatchService, DispatchServiceServer};
use conveyor_client::{TaskContext, TaskFailure, WorkerBuilder};
use serde_json::json;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};

pub const STEP: Duration = Duration::from_secs(5);

/// Hands every `Connect` stream to the test as a [`FakeSession`].
pub struct FakeDispatcher {
    sessions: mpsc::UnboundedSender<FakeSession>,
}

#[tonic::async_trait]
impl DispatchService for FakeDispatcher {
    type ConnectStream = UnboundedReceiverStream<Result<pb::ConnectResponse, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::ConnectRequest>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let (to_worker, rx) = mpsc::unbounded_channel();
        let peer = request.remote_addr();
        let session = FakeSession {
            from_worker: request.into_inner(),
            to_worker,
            peer,
        };
        self.sessions
            .send(session)
            .map_err(|_| Status::internal("test is gone"))?;
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }

    async fn list_workers(
        &self,
        _request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        Ok(Response::new(pb::ListWorkersResponse::default()))
    }

    async fn list_queues(
        &self,
        _request: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        Ok(Response::new(pb::ListQueuesResponse::default()))
    }

    async fn pause_queue(
        &self,
        _request: Request<pb::PauseQueueRequest>,
    ) -> Result<Response<pb::PauseQueueResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn resume_queue(
        &self,
        _request: Request<pb::ResumeQueueRequest>,
    ) -> Result<Response<pb::ResumeQueueResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }
}

pub struct FakeSession {
    pub from_worker: Streaming<pb::ConnectRequest>,
    pub to_worker: mpsc::UnboundedSender<Result<pb::ConnectResponse, Status>>,
    /// The worker's end of the connection the stream came on.
    pub peer: Option<std::net::SocketAddr>,
}

impl FakeSession {
    /// The worker's next message other than a heartbeat; `None` once the
    /// worker closed its side.
    pub async fn next(&mut self) -> Option<FromWorker> {
        loop {
            let message = tokio::time::timeout(STEP, self.from_worker.message())
                .await
                .expect("worker message in time")
                .ok()??;
            match message.message.expect("message set") {
                FromWorker::Heartbeat(_) => continue,
                other => return Some(other),
            }
        }
    }

    pub async fn expect_credits(&mut self) -> u32 {
        match self.next().await {
            Some(FromWorker::GrantCredits(grant)) => grant.credits,
            other => panic!("expected GrantCredits, got {other:?}"),
        }
    }

    pub fn send(&self, message: ToWorker) {
        let _ = self.to_worker.send(Ok(pb::ConnectResponse {
            message: Some(message),
        }));
    }

    /// Reads Hello, answers Welcome, returns the Hello.
    pub async fn accept(&mut self) -> pb::Hello {
        let Some(FromWorker::Hello(hello)) = self.next().await else {
            panic!("expected Hello")
        };
        self.send(ToWorker::Welcome(pb::Welcome {
            session_id: "s-1".into(),
            heartbeat_interval: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            lease_ttl: Some(prost_types::Duration {
                seconds: 180,
                nanos: 0,
            }),
            max_credits: 1024,
            ..Default::default()
        }));
        hello
    }

    pub fn assign(&self, task_id: &str, name: &str, args: serde_json::Value, lease_token: u64) {
        let args = args
            .as_array()
            .expect("array")
            .iter()
            .map(payload)
            .collect();
        let assignment = pb::Assignment {
            task_id: task_id.into(),
            name: name.into(),
            args,
            attempt: 1,
            lease_token,
            ..Default::default()
        };
        self.send(ToWorker::Assignments(pb::Assignments {
            assignments: vec![assignment],
        }));
    }

    /// Collects outcomes until `count` arrived, skipping starts and credits.
    pub async fn outcomes(&mut self, count: usize) -> Vec<pb::TaskOutcome> {
        let mut outcomes = Vec::new();
        while outcomes.len() < count {
            match self.next().await {
                Some(FromWorker::ReportOutcomes(frame)) => outcomes.extend(frame.outcomes),
                Some(_) => {}
                None => panic!("stream closed before {count} outcomes"),
            }
        }
        outcomes.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        outcomes
    }
}

pub fn payload(value: &serde_json::Value) -> pb::Payload {
    pb::Payload {
        data: serde_json::to_vec(value).expect("json"),
        content_type: "application/json".into(),
    }
}

/// Starts a fake dispatcher on an ephemeral port.
pub async fn fake_dispatcher() -> (String, mpsc::UnboundedReceiver<FakeSession>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (sessions, rx) = mpsc::unbounded_channel();
    let service = DispatchServiceServer::new(FakeDispatcher { sessions });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), rx)
}

pub async fn next_session(sessions: &mut mpsc::UnboundedReceiver<FakeSession>) -> FakeSession {
    tokio::time::timeout(STEP, sessions.recv())
        .await
        .expect("worker connects in time")
        .expect("server alive")
}

/// Runs the worker until the returned sender fires (or is dropped).
pub fn spawn_worker(
    builder: WorkerBuilder,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<conveyor_client::Result<()>>,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    let worker = builder
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .build()
        .expect("valid");
    let handle = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    (stop, handle)
}

pub fn gated(
    gate: &Arc<Notify>,
) -> impl Fn(TaskContext) -> futures::future::BoxFuture<'static, Result<serde_json::Value, TaskFailure>>
+ Send
+ Sync
+ 'static {
    let gate = gate.clone();
    move |_ctx| {
        let gate = gate.clone();
        Box::pin(async move {
            gate.notified().await;
            Ok(json!("released"))
        })
    }
}
