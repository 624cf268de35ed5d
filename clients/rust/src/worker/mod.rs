//! The worker: registers handlers, holds one `DispatchService.Connect` stream
//! (reconnecting with backoff when it breaks), and drains on shutdown.

mod backoff;
mod context;
pub(crate) mod runner;
mod session;
mod state;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use conveyor_api::pb;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use self::backoff::{Backoff, default_worker_id, hostname};
pub use self::backoff::{DEFAULT_MAX_BACKOFF, DEFAULT_MIN_BACKOFF};
pub use self::context::{ARGUMENT_ERROR, PANIC_ERROR, TaskContext, TaskFailure};
pub use self::runner::HandlerResult;
use self::runner::{BoxedHandler, Finished, Started, box_handler};
use self::state::{SessionEnd, is_fatal};
use crate::client::bearer;
use crate::error::{Error, Result};

/// Default time running tasks get to finish once shutdown starts.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);

/// Limits the dispatcher enforces on Hello, checked early for a clear error.
const MAX_QUEUES: usize = 64;
const MAX_TASK_NAMES: usize = 1024;
const MAX_WORKER_ID_LEN: usize = 200;
/// Far above any useful slot count, and far below the semaphore's limit.
const MAX_CONCURRENCY: usize = 1 << 20;

/// A worker process's connection to Conveyor. Build one with
/// [`Worker::builder`], then [`run`](Worker::run) it.
///
/// ```no_run
/// # use conveyor_client::{Worker, TaskContext, TaskFailure};
/// # async fn example() -> conveyor_client::Result<()> {
/// Worker::builder("http://127.0.0.1:50051")
///     .concurrency(4)
///     .register("add", |ctx: TaskContext| async move {
///         let (a, b): (i64, i64) = (ctx.arg(0)?, ctx.arg(1)?);
///         Ok(serde_json::json!(a + b))
///     })
///     .build()?
///     .run()
///     .await
/// # }
/// ```
pub struct Worker {
    config: Arc<WorkerConfig>,
    target: Target,
    tls: Option<crate::Tls>,
}

/// Where the worker connects.
#[derive(Clone)]
enum Target {
    Endpoint(String),
    Channel(Channel),
}

/// Settings of a built worker, shared with its sessions.
pub(crate) struct WorkerConfig {
    worker_id: String,
    hostname: String,
    queues: Vec<String>,
    concurrency: usize,
    heartbeat_override: Option<Duration>,
    grace_period: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
    handlers: HashMap<String, BoxedHandler>,
    /// `Bearer <token>`, sent as `authorization` on the Connect stream.
    authorization: Option<MetadataValue<Ascii>>,
    /// Namespace whose queues the worker consumes.
    namespace: String,
}

/// The worker protocol version this SDK speaks.
const PROTOCOL_VERSION: u32 = 1;

impl WorkerConfig {
    fn hello(&self) -> pb::Hello {
        let mut task_names: Vec<String> = self.handlers.keys().cloned().collect();
        task_names.sort();
        pb::Hello {
            worker_id: self.worker_id.clone(),
            queues: self.queues.clone(),
            task_names,
            concurrency: u32::try_from(self.concurrency).unwrap_or(u32::MAX),
            language: "rust".to_owned(),
            sdk_version: env!("CARGO_PKG_VERSION").to_owned(),
            hostname: self.hostname.clone(),
            protocol_version: PROTOCOL_VERSION,
            namespace: self.namespace.clone(),
        }
    }
}

/// State that outlives a session: tasks keep running (and holding slots)
/// after the stream that brought them broke.
pub(crate) struct Runtime {
    config: Arc<WorkerConfig>,
    /// Every runner not yet reaped, of this session or an earlier one.
    tasks: JoinSet<Finished>,
    /// One permit per slot.
    slots: Arc<Semaphore>,
    started_tx: mpsc::UnboundedSender<Started>,
    started_rx: mpsc::UnboundedReceiver<Started>,
}

impl Worker {
    /// Starts configuring a worker that connects to `endpoint`, such as
    /// `"http://127.0.0.1:50051"`.
    pub fn builder(endpoint: impl Into<String>) -> WorkerBuilder {
        WorkerBuilder::new(Target::Endpoint(endpoint.into()))
    }

    /// Starts configuring a worker whose stream goes to the dispatch
    /// address of `endpoints` (its entry, else `CONVEYOR_DISPATCH_ADDR`,
    /// else `general`).
    pub fn builder_endpoints(
        general: impl Into<String>,
        endpoints: &crate::Endpoints,
    ) -> WorkerBuilder {
        let general = general.into();
        Self::builder(endpoints.resolve(crate::endpoints::Service::Dispatch, &general))
    }

    /// Starts configuring a worker that uses an existing channel.
    pub fn from_channel(channel: Channel) -> WorkerBuilder {
        WorkerBuilder::new(Target::Channel(channel))
    }

    /// The id this worker introduces itself with.
    pub fn worker_id(&self) -> &str {
        &self.config.worker_id
    }

    /// Runs until SIGTERM or Ctrl-C, then drains: no new work, running tasks
    /// get the grace period to finish, then the stream closes. A second
    /// signal returns at once.
    pub async fn run(self) -> Result<()> {
        let mut signals = ShutdownSignals::install()?;
        let stop = CancellationToken::new();
        let worker = self.run_until(stop.clone().cancelled_owned());
        tokio::pin!(worker);
        tokio::select! {
            result = &mut worker => return result,
            () = signals.recv() => {}
        }
        tracing::info!("shutdown signal received, draining (signal again to exit at once)");
        stop.cancel();
        tokio::select! {
            result = &mut worker => result,
            () = signals.recv() => {
                tracing::warn!("second shutdown signal, exiting at once");
                Ok(())
            }
        }
    }

    /// Runs until `shutdown` completes, then drains as [`run`](Self::run)
    /// does. Returns an error only for failures that retrying cannot fix
    /// (a refused Hello, a server that breaks the protocol).
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let stop = CancellationToken::new();
        let serve = self.serve(stop.clone());
        tokio::pin!(serve);
        tokio::select! {
            result = &mut serve => return result,
            () = shutdown => stop.cancel(),
        }
        serve.await
    }

    /// The reconnect loop: one session after another until stopped.
    async fn serve(self, stop: CancellationToken) -> Result<()> {
        let mut channel = match &self.target {
            Target::Channel(channel) => channel.clone(),
            // Lazy: an unreachable dispatcher then fails the first session,
            // which the backoff below retries, instead of failing `run`.
            // Several comma-separated addresses: sessions go to the ones
            // that answer (failover).
            Target::Endpoint(endpoint) => crate::client::lazy_channel(endpoint, self.tls.as_ref())?,
        };
        let (started_tx, started_rx) = mpsc::unbounded_channel();
        let mut runtime = Runtime {
            slots: Arc::new(Semaphore::new(self.config.concurrency)),
            config: self.config,
            tasks: JoinSet::new(),
            started_tx,
            started_rx,
        };
        let mut backoff = Backoff::new(runtime.config.min_backoff, runtime.config.max_backoff);
        let mut epoch = 0u64;
        let result = loop {
            if stop.is_cancelled() {
                break Ok(());
            }
            epoch += 1;
            let delay = match session::run(&mut runtime, channel.clone(), epoch, &stop).await {
                SessionEnd::Stopped => break Ok(()),
                SessionEnd::Drained => {
                    backoff.reset();
                    // A new stream on the old connection would return to the
                    // same dispatcher replica: load balancers balance
                    // connections. A channel the caller gave is theirs to
                    // keep.
                    if let Target::Endpoint(endpoint) = &self.target {
                        channel = crate::client::lazy_channel(endpoint, self.tls.as_ref())?;
                        tracing::info!("session drained, reconnecting on a new connection");
                    } else {
                        tracing::info!("session drained, reconnecting");
                    }
                    backoff.next_delay()
                }
                SessionEnd::Broken { error, .. } if is_fatal(&error) => break Err(error),
                SessionEnd::Broken { error, welcomed } => {
                    if welcomed {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    let delay_ms = delay.as_millis() as u64;
                    if welcomed {
                        tracing::warn!(%error, delay_ms, "worker stream lost, reconnecting");
                    } else {
                        tracing::warn!(%error, delay_ms, "cannot open a worker session, retrying");
                    }
                    delay
                }
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => break Ok(()),
            }
        };
        // Whatever still runs was abandoned or outlived the grace period.
        runtime.tasks.shutdown().await;
        result
    }
}

/// Configures a [`Worker`].
#[must_use = "a WorkerBuilder does nothing until built and run"]
pub struct WorkerBuilder {
    target: Target,
    worker_id: Option<String>,
    queues: Vec<String>,
    concurrency: usize,
    heartbeat_override: Option<Duration>,
    grace_period: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
    handlers: HashMap<String, BoxedHandler>,
    token: Option<String>,
    namespace: String,
    tls: Option<crate::Tls>,
}

impl WorkerBuilder {
    fn new(target: Target) -> WorkerBuilder {
        WorkerBuilder {
            target,
            worker_id: None,
            queues: Vec::new(),
            concurrency: 1,
            heartbeat_override: None,
            grace_period: DEFAULT_GRACE_PERIOD,
            min_backoff: DEFAULT_MIN_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            handlers: HashMap::new(),
            token: None,
            namespace: std::env::var("CONVEYOR_NAMESPACE").unwrap_or_default(),
            tls: None,
        }
    }

    /// TLS settings in code instead of the `CONVEYOR_TLS_*` environment
    /// variables (see [`Tls`](crate::Tls)); for a worker given an address
    /// (a channel passed in carries its own).
    pub fn tls(mut self, tls: crate::Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sends `authorization: Bearer <token>` when opening the worker stream,
    /// for a server started with `--auth-token`. [`build`](Self::build)
    /// fails when the token is not visible ASCII.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Consumes the queues of `namespace`. Default: the `CONVEYOR_NAMESPACE`
    /// environment variable, else `default`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The worker's id, 1 to 200 characters. Default: `hostname-pid`.
    pub fn worker_id(mut self, worker_id: impl Into<String>) -> Self {
        self.worker_id = Some(worker_id.into());
        self
    }

    /// The queues to consume, replacing any set before. Default: `["default"]`.
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues = queues.into_iter().map(Into::into).collect();
        self
    }

    /// Tasks run at once (slots), 1 to 2^20. Default: 1.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Heartbeat this often instead of at the interval Welcome names.
    pub fn heartbeat_override(mut self, interval: Option<Duration>) -> Self {
        self.heartbeat_override = interval;
        self
    }

    /// Time running tasks get to finish on shutdown. Default: 30 s.
    pub fn grace_period(mut self, grace_period: Duration) -> Self {
        self.grace_period = grace_period;
        self
    }

    /// Reconnect delays: from `min`, doubling, up to `max`, with jitter.
    /// Default: 100 ms to 5 s.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min;
        self.max_backoff = max;
        self
    }

    /// Registers `handler` for tasks named `name`, replacing any earlier one.
    /// The handler is called once per attempt, on a task of its own.
    pub fn register<F, Fut>(mut self, name: impl Into<String>, handler: F) -> Self
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.handlers.insert(name.into(), box_handler(handler));
        self
    }

    /// Builds the worker and runs it as [`Worker::run`] does.
    pub async fn run(self) -> Result<()> {
        self.build()?.run().await
    }

    /// Builds the worker and runs it as [`Worker::run_until`] does.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        self.build()?.run_until(shutdown).await
    }

    /// Checks the settings and builds the worker.
    pub fn build(self) -> Result<Worker> {
        if let Target::Endpoint(endpoint) = &self.target {
            crate::client::endpoints_with(endpoint, self.tls.as_ref())?;
        }
        let hostname = hostname();
        let worker_id = self
            .worker_id
            .unwrap_or_else(|| default_worker_id(&hostname));
        let queues = if self.queues.is_empty() {
            vec!["default".to_owned()]
        } else {
            self.queues
        };
        let problem = if self.handlers.is_empty() {
            Some("register at least one handler".to_owned())
        } else if self.handlers.len() > MAX_TASK_NAMES {
            Some(format!("at most {MAX_TASK_NAMES} task names"))
        } else if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            Some(format!("concurrency must be 1 to {MAX_CONCURRENCY}"))
        } else if worker_id.is_empty() || worker_id.chars().count() > MAX_WORKER_ID_LEN {
            Some(format!(
                "worker id must be 1 to {MAX_WORKER_ID_LEN} characters"
            ))
        } else if queues.len() > MAX_QUEUES {
            Some(format!("at most {MAX_QUEUES} queues"))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(Error::Config(problem));
        }
        let authorization = self.token.as_deref().map(bearer).transpose()?;
        let config = WorkerConfig {
            worker_id,
            hostname,
            queues,
            concurrency: self.concurrency,
            heartbeat_override: self.heartbeat_override,
            grace_period: self.grace_period,
            min_backoff: self.min_backoff,
            max_backoff: self.max_backoff,
            handlers: self.handlers,
            authorization,
            namespace: self.namespace,
        };
        Ok(Worker {
            config: Arc::new(config),
            target: self.target,
            tls: self.tls,
        })
    }
}

/// SIGTERM and Ctrl-C (SIGINT), installed once so a second one is seen too.
struct ShutdownSignals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> Result<ShutdownSignals> {
        Ok(ShutdownSignals {
            #[cfg(unix)]
            terminate: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) {
        let interrupt = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        tokio::select! {
            _ = self.terminate.recv() => {}
            () = interrupt => {}
        }
        #[cfg(not(unix))]
        interrupt.await;
    }
}
