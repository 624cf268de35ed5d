//! The dispatch role: one bidirectional stream per worker process. Workers
//! lease tasks under credit-based flow control, heartbeat, and report
//! outcomes fenced by lease token (see `dispatch_service.proto`).

mod assignment;
mod gauges;
mod rebalance;
mod registry;
mod roster;
mod session;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use conveyor_api::pb::{self, dispatch_service_server as server};
use conveyor_core::validate::check_name;
use conveyor_core::{Limits, Namespace};
use conveyor_store::Store;

pub use registry::Registry;

/// Fully qualified service name, for health.
pub const SERVICE_NAME: &str = "conveyor.v1.DispatchService";

/// Session parameters.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// How often workers must heartbeat.
    pub heartbeat_interval: Duration,
    /// How long leases outlive the last renewal (a crashed dispatcher's
    /// sessions are reaped after this).
    pub lease_ttl: Duration,
    /// A worker silent this many heartbeat intervals loses its leases.
    pub missed_heartbeats: f64,
    /// Most credits outstanding per session.
    pub max_credits: u32,
    /// Most tasks leased per store call.
    pub lease_batch: usize,
    /// Time a draining worker gets to finish before its stream is closed.
    pub drain_grace: Duration,
    /// Time allowed between stream open and Hello.
    pub hello_timeout: Duration,
    /// Payload limits (results are held to the same bound as arguments).
    pub limits: Limits,
    /// Record TaskStarted (state RUNNING) in the store. Off by default, as
    /// Celery's `task_track_started`: it costs a store write per task, and
    /// LEASED already says a worker holds the task.
    pub track_started: bool,
    /// How often this replica compares its worker sessions with the other
    /// replicas' and drains what is over its share (see `rebalance.rs`);
    /// zero turns rebalancing off.
    pub rebalance_interval: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(5),
            missed_heartbeats: 2.5,
            max_credits: 1024,
            lease_batch: 256,
            drain_grace: Duration::from_secs(30),
            hello_timeout: Duration::from_secs(10),
            limits: Limits::default(),
            track_started: false,
            rebalance_interval: Duration::from_secs(5),
        }
    }
}

/// The DispatchService implementation.
#[derive(Clone)]
pub struct Dispatcher {
    store: Arc<dyn Store>,
    /// This replica's id in the store's announcements.
    replica: Arc<str>,
    config: Arc<DispatchConfig>,
    registry: Registry,
    shutdown: CancellationToken,
}

impl Dispatcher {
    /// A dispatcher over `store`; sessions drain when `shutdown` fires.
    pub fn new(store: Arc<dyn Store>, config: DispatchConfig, shutdown: CancellationToken) -> Self {
        let dispatcher = Self {
            store,
            replica: uuid::Uuid::now_v7().to_string().into(),
            config: Arc::new(config),
            registry: Registry::default(),
            shutdown,
        };
        if !dispatcher.config.rebalance_interval.is_zero() {
            tokio::spawn(rebalance::run(
                dispatcher.store.clone(),
                dispatcher.registry.clone(),
                dispatcher.config.rebalance_interval,
                dispatcher.shutdown.clone(),
            ));
        }
        tokio::spawn(roster::run(
            dispatcher.store.clone(),
            dispatcher.registry.clone(),
            dispatcher.replica.clone(),
            dispatcher.shutdown.clone(),
        ));
        if conveyor_runtime::metrics::enabled() {
            tokio::spawn(gauges::run(
                dispatcher.store.clone(),
                dispatcher.registry.clone(),
                dispatcher.shutdown.clone(),
            ));
        }
        dispatcher
    }

    /// The sessions connected to this replica.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The tonic service.
    pub fn into_server(self) -> server::DispatchServiceServer<Self> {
        server::DispatchServiceServer::new(self).max_decoding_message_size(64 * 1024 * 1024)
    }
}

#[tonic::async_trait]
impl server::DispatchService for Dispatcher {
    type ConnectStream = ReceiverStream<Result<pb::ConnectResponse, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::ConnectRequest>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let access = conveyor_runtime::auth::access_of(&request);
        let inbound = request.into_inner();
        let (outbound, receiver) = mpsc::channel(64);
        let context = session::SessionContext {
            store: self.store.clone(),
            config: self.config.clone(),
            registry: self.registry.clone(),
            shutdown: self.shutdown.clone(),
            replica: self.replica.clone(),
        };
        // The spawned session is what notices a disconnect and releases leases.
        tokio::spawn(session::run(context, inbound, outbound, access));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let request = request.into_inner();
        let namespace = Namespace::parse("namespace", &request.namespace)?;
        let size = match request.page_size {
            0 => 1000,
            size => size.min(1000) as usize,
        };
        // Ordered by (worker id, session id); the token is the last pair.
        // Every replica's sessions, not only this one's.
        let every = if request.this_replica_only {
            self.registry.snapshot()
        } else {
            roster::all_workers(self.store.as_ref(), &self.registry, &self.replica).await
        };
        let mut workers: Vec<pb::WorkerInfo> = every
            .into_iter()
            .filter(|worker| worker.namespace == namespace.name())
            .filter(|worker| {
                request.page_token.is_empty()
                    || format!("{}\n{}", worker.worker_id, worker.session_id) > request.page_token
            })
            .collect();
        let next_page_token = if workers.len() > size {
            workers.truncate(size);
            workers
                .last()
                .map(|last| format!("{}\n{}", last.worker_id, last.session_id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListWorkersResponse {
            workers,
            next_page_token,
        }))
    }

    async fn list_queues(
        &self,
        request: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let request = request.into_inner();
        let namespace = Namespace::parse("namespace", &request.namespace)?;
        let depths = self.store.queue_depths().await?;
        let mut queues: std::collections::BTreeMap<String, pb::QueueInfo> = Default::default();
        let entry = |queues: &mut std::collections::BTreeMap<String, pb::QueueInfo>, name: &str| {
            queues
                .entry(name.to_string())
                .or_insert_with(|| pb::QueueInfo {
                    name: name.to_string(),
                    ..Default::default()
                })
                .name
                .clone()
        };
        for (key, count) in &depths.ready {
            // `ns/queue:task#priority` (no namespace for default, no
            // priority for level 0).
            let (base, priority) = match key.as_str().split_once('#') {
                Some((base, level)) => (base, level.parse::<u32>().unwrap_or(0)),
                None => (key.as_str(), 0),
            };
            let Some((scoped, task)) = base.split_once(':') else {
                continue;
            };
            let (owner, queue) = conveyor_core::namespace::split_queue(scoped);
            if owner != namespace {
                continue;
            }
            let name = entry(&mut queues, queue);
            let info = queues.get_mut(&name).expect("inserted");
            info.ready += count;
            *info.ready_by_priority.entry(priority).or_default() += count;
            *info.ready_by_task.entry(task.to_string()).or_default() += count;
        }
        for scoped in &depths.paused {
            let (owner, queue) = conveyor_core::namespace::split_queue(scoped);
            if owner == namespace {
                let name = entry(&mut queues, queue);
                queues.get_mut(&name).expect("inserted").paused = true;
            }
        }
        let workers = roster::all_workers(self.store.as_ref(), &self.registry, &self.replica).await;
        for worker in workers
            .iter()
            .filter(|worker| worker.namespace == namespace.name())
        {
            for queue in &worker.queues {
                let name = entry(&mut queues, queue);
                let info = queues.get_mut(&name).expect("inserted");
                info.workers += 1;
                info.slots += worker.concurrency;
            }
        }
        Ok(Response::new(pb::ListQueuesResponse {
            queues: queues.into_values().collect(),
        }))
    }

    async fn pause_queue(
        &self,
        request: Request<pb::PauseQueueRequest>,
    ) -> Result<Response<pb::PauseQueueResponse>, Status> {
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let request = request.into_inner();
        let namespace = Namespace::parse("namespace", &request.namespace)?;
        let queue = request.queue;
        check_name("queue", &queue, self.config.limits.max_queue_len, &[])?;
        self.store
            .set_queue_paused(&namespace.queue(&queue), true)
            .await?;
        tracing::info!(%queue, "queue paused");
        Ok(Response::new(pb::PauseQueueResponse {}))
    }

    async fn resume_queue(
        &self,
        request: Request<pb::ResumeQueueRequest>,
    ) -> Result<Response<pb::ResumeQueueResponse>, Status> {
        conveyor_runtime::auth::authorize(&request, &request.get_ref().namespace)?;
        let request = request.into_inner();
        let namespace = Namespace::parse("namespace", &request.namespace)?;
        let queue = request.queue;
        check_name("queue", &queue, self.config.limits.max_queue_len, &[])?;
        self.store
            .set_queue_paused(&namespace.queue(&queue), false)
            .await?;
        tracing::info!(%queue, "queue resumed");
        Ok(Response::new(pb::ResumeQueueResponse {}))
    }
}
