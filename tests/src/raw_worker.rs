//! A worker that speaks the dispatch protocol message by message, so tests
//! can do what a well-behaved SDK never would: go silent, send stale tokens,
//! say hello twice, drop the stream mid-task.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use conveyor_api::pb::{self, connect_request::Message as Up, connect_response::Message as Down};

/// One open `Connect` stream.
pub struct RawWorker {
    sender: mpsc::Sender<pb::ConnectRequest>,
    inbound: Streaming<pb::ConnectResponse>,
    /// The dispatcher's answer to our hello.
    pub welcome: pb::Welcome,
    /// Background heartbeats, if started; stopped on drop.
    heartbeats: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for RawWorker {
    fn drop(&mut self) {
        if let Some(heartbeats) = self.heartbeats.take() {
            heartbeats.abort();
        }
    }
}

/// A hello for `names` on the default queue.
pub fn hello(worker_id: &str, names: &[&str], concurrency: u32) -> pb::Hello {
    pb::Hello {
        worker_id: worker_id.to_string(),
        queues: vec!["default".into()],
        task_names: names.iter().map(|name| name.to_string()).collect(),
        concurrency,
        language: "rust-raw".into(),
        sdk_version: "test".into(),
        hostname: "localhost".into(),
        ..Default::default()
    }
}

impl RawWorker {
    /// Opens a stream without saying anything yet.
    pub async fn open(
        channel: Channel,
    ) -> Result<
        (
            mpsc::Sender<pb::ConnectRequest>,
            Streaming<pb::ConnectResponse>,
        ),
        Status,
    > {
        let (sender, receiver) = mpsc::channel(1024);
        let mut client = pb::dispatch_service_client::DispatchServiceClient::new(channel);
        let inbound = client
            .connect(ReceiverStream::new(receiver))
            .await?
            .into_inner();
        Ok((sender, inbound))
    }

    /// Connects and says hello; fails unless the answer is a Welcome.
    pub async fn connect(channel: Channel, hello: pb::Hello) -> Result<Self, Status> {
        let (sender, mut inbound) = Self::open(channel).await?;
        sender
            .send(pb::ConnectRequest {
                message: Some(Up::Hello(hello)),
            })
            .await
            .map_err(|_| Status::unavailable("stream closed"))?;
        match inbound.message().await? {
            Some(pb::ConnectResponse {
                message: Some(Down::Welcome(welcome)),
            }) => Ok(Self {
                sender,
                inbound,
                welcome,
                heartbeats: None,
            }),
            other => Err(Status::internal(format!("expected welcome, got {other:?}"))),
        }
    }

    /// Sends one message.
    pub async fn send(&self, message: Up) {
        let _ = self
            .sender
            .send(pb::ConnectRequest {
                message: Some(message),
            })
            .await;
    }

    /// Grants credits.
    pub async fn grant(&self, credits: u32) {
        self.send(Up::GrantCredits(pb::GrantCredits { credits }))
            .await;
    }

    /// Heartbeats in the background at half the dispatcher's interval, as a
    /// live worker does, until dropped.
    pub fn keep_alive(&mut self) {
        let sender = self.sender.clone();
        let interval = self
            .welcome
            .heartbeat_interval
            .map(|interval| {
                Duration::from_millis(
                    (interval.seconds * 1000) as u64 + (interval.nanos / 1_000_000) as u64,
                )
            })
            .unwrap_or(Duration::from_secs(1))
            / 2;
        self.heartbeats = Some(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            loop {
                ticker.tick().await;
                let beat = pb::ConnectRequest {
                    message: Some(Up::Heartbeat(pb::Heartbeat {})),
                };
                if sender.send(beat).await.is_err() {
                    return;
                }
            }
        }));
    }

    /// Sends a heartbeat.
    pub async fn heartbeat(&self) {
        self.send(Up::Heartbeat(pb::Heartbeat {})).await;
    }

    /// Reports a successful result.
    pub async fn succeed(&self, task_id: &str, lease_token: u64, result: pb::Payload) {
        self.report(vec![pb::TaskOutcome {
            task_id: task_id.to_string(),
            lease_token,
            outcome: Some(pb::task_outcome::Outcome::Result(result)),
        }])
        .await;
    }

    /// Reports outcomes in one frame.
    pub async fn report(&self, outcomes: Vec<pb::TaskOutcome>) {
        self.send(Up::ReportOutcomes(pb::ReportOutcomes { outcomes }))
            .await;
    }

    /// The next message, or the status that ended the stream; `None` at a
    /// clean end or after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Result<Down, Status>> {
        match tokio::time::timeout(timeout, self.inbound.message()).await {
            Err(_) => None,
            Ok(Ok(Some(response))) => response.message.map(Ok),
            Ok(Ok(None)) => None,
            Ok(Err(status)) => Some(Err(status)),
        }
    }

    /// Collects assignments until `count` arrived or `timeout` passed,
    /// ignoring other messages.
    pub async fn assignments(&mut self, count: usize, timeout: Duration) -> Vec<pb::Assignment> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut collected = Vec::new();
        while collected.len() < count {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Ok(Down::Assignments(batch))) => collected.extend(batch.assignments),
                Some(Ok(_)) => continue,
                _ => break,
            }
        }
        collected
    }

    /// Drops the stream abruptly, as a crashed process would.
    pub fn drop_stream(self) {
        drop(self);
    }
}
