//! The scheduling role: promotes due SCHEDULED tasks into their queues and
//! reaps the leases of sessions whose dispatcher stopped renewing them. Both
//! are atomic store operations, so any number of replicas can run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use conveyor_api::pb::{self, scheduling_service_server as server};
use conveyor_core::time::{now_ms, timestamp_from_ms};
use conveyor_store::Store;

/// Fully qualified service name, for health.
pub const SERVICE_NAME: &str = "conveyor.v1.SchedulingService";

/// Timing of the scheduler loops.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Longest sleep between promotion passes when nothing is due sooner.
    pub promote_interval: Duration,
    /// Time between lease reaper passes.
    pub reap_interval: Duration,
    /// Most tasks moved per store call.
    pub batch: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            promote_interval: Duration::from_millis(100),
            reap_interval: Duration::from_millis(500),
            batch: 1000,
        }
    }
}

/// The scheduler: its loops and its gRPC status service.
#[derive(Clone)]
pub struct Scheduler {
    store: Arc<dyn Store>,
    config: SchedulerConfig,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    promoted: AtomicU64,
    reaped: AtomicU64,
}

impl Scheduler {
    /// A scheduler over `store`.
    pub fn new(store: Arc<dyn Store>, config: SchedulerConfig) -> Self {
        Self {
            store,
            config,
            counters: Arc::default(),
        }
    }

    /// Runs the promotion and reaper loops until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        tokio::join!(
            self.promote_loop(shutdown.clone()),
            self.reap_loop(shutdown)
        );
    }

    async fn promote_loop(&self, shutdown: CancellationToken) {
        loop {
            let now = now_ms();
            let sleep = match self.store.promote_due(now, self.config.batch).await {
                Ok(promotion) => {
                    let moved = (promotion.promoted + promotion.expired) as u64;
                    self.counters
                        .promoted
                        .fetch_add(promotion.promoted as u64, Ordering::Relaxed);
                    if moved >= self.config.batch as u64 {
                        Duration::ZERO
                    } else {
                        let until_due = promotion
                            .next_due_ms
                            .map(|due| Duration::from_millis((due - now).max(0) as u64))
                            .unwrap_or(self.config.promote_interval);
                        until_due.min(self.config.promote_interval)
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "promoting due tasks failed");
                    self.config.promote_interval
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    async fn reap_loop(&self, shutdown: CancellationToken) {
        loop {
            match self.store.reap_expired(now_ms(), self.config.batch).await {
                Ok(requeued) if !requeued.is_empty() => {
                    tracing::info!(count = requeued.len(), "requeued tasks of expired leases");
                    self.counters
                        .reaped
                        .fetch_add(requeued.len() as u64, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "reaping expired leases failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.config.reap_interval) => {}
            }
        }
    }

    /// The tonic status service.
    pub fn into_server(self) -> server::SchedulingServiceServer<Self> {
        server::SchedulingServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl server::SchedulingService for Scheduler {
    async fn get_scheduler_status(
        &self,
        _request: Request<pb::GetSchedulerStatusRequest>,
    ) -> Result<Response<pb::GetSchedulerStatusResponse>, Status> {
        let summary = self.store.scheduled_summary().await?;
        Ok(Response::new(pb::GetSchedulerStatusResponse {
            scheduled_tasks: summary.count,
            next_due_at: summary.next_due_ms.map(timestamp_from_ms),
            promoted_total: self.counters.promoted.load(Ordering::Relaxed),
            reaped_total: self.counters.reaped.load(Ordering::Relaxed),
        }))
    }
}
