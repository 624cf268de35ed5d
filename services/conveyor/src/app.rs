//! Mounts roles on a server: one role per process in production
//! (`conveyor serve dispatch`), all four in `conveyor dev` and tests.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use conveyor_core::{Limits, TaskDefaults};
use conveyor_dispatch::{DispatchConfig, Dispatcher};
use conveyor_results::Results;
use conveyor_runtime::ServerConfig;
use conveyor_scheduling::{Scheduler, SchedulerConfig, SubmissionTarget};
use conveyor_store::{MemoryStore, RedisConfig, RedisStore, Store};
use conveyor_submission::Submission;

/// A role a process can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Accepts tasks and cancellations.
    Submission,
    /// Promotes due tasks, reaps expired leases.
    Scheduling,
    /// Worker sessions.
    Dispatch,
    /// States, outcomes, waiting.
    Results,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [
        Role::Submission,
        Role::Scheduling,
        Role::Dispatch,
        Role::Results,
    ];
}

/// Which store to use: `memory`, a `redis://` URL, or a Redis Cluster's
/// `redis+cluster://host:port,host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// The embedded store (single process only).
    Memory,
    /// A Redis server or cluster.
    Redis(String),
}

impl FromStr for StoreUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "memory" {
            Ok(Self::Memory)
        } else if [
            "redis://",
            "rediss://",
            "redis+cluster://",
            "rediss+cluster://",
        ]
        .iter()
        .any(|scheme| text.starts_with(scheme))
        {
            Ok(Self::Redis(text.to_string()))
        } else {
            Err(format!(
                "{text:?}: expected `memory`, a redis:// URL, or redis+cluster://host:port,host:port for a Redis Cluster"
            ))
        }
    }
}

/// Everything a process needs besides its listener.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Roles to mount.
    pub roles: Vec<Role>,
    /// Shared server stack settings.
    pub server: ServerConfig,
    /// Dispatch session parameters.
    pub dispatch: DispatchConfig,
    /// Scheduler timing.
    pub scheduler: SchedulerConfig,
    /// Input limits.
    pub limits: Limits,
    /// Longest WaitTask.
    pub max_wait: Duration,
    /// Options per task name.
    pub task_defaults: TaskDefaults,
    /// Where the scheduler submits schedule runs; default: this process, when
    /// it serves the submission role.
    pub submission_url: Option<String>,
    /// The token the scheduler presents when it submits a schedule's run.
    pub scheduler_token: Option<String>,
    /// Schedules declared in the config file.
    pub declared_schedules: Vec<conveyor_api::pb::Schedule>,
    /// Where the roles this process does not serve run (`--peer`).
    pub peers: Vec<crate::forward::Peer>,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            roles: Role::ALL.to_vec(),
            server: ServerConfig::default(),
            dispatch: DispatchConfig::default(),
            scheduler: SchedulerConfig::default(),
            limits: Limits::default(),
            max_wait: Duration::from_secs(300),
            task_defaults: TaskDefaults::default(),
            submission_url: None,
            scheduler_token: None,
            declared_schedules: Vec::new(),
            peers: Vec::new(),
        }
    }
}

/// How to open the store (the Redis settings; memory ignores them).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Prefix of every key and channel.
    pub prefix: String,
    /// Partitions (hash slots) per queue.
    pub partitions: u16,
    /// Replicas that must have a submission before it is acknowledged.
    pub wait_replicas: u32,
    /// How long a submission waits for them.
    pub wait_timeout: Duration,
    /// TLS settings for a `rediss://` store.
    pub tls: conveyor_store::RedisTls,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            prefix: "cv:".into(),
            partitions: 1,
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
            tls: conveyor_store::RedisTls::default(),
        }
    }
}

/// Opens the store named by `url`.
pub async fn open_store(url: &StoreUrl, options: &StoreOptions) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match url {
        StoreUrl::Memory => Arc::new(MemoryStore::new()),
        StoreUrl::Redis(url) => {
            let mut config = RedisConfig::new(url.clone());
            config.prefix = options.prefix.clone();
            config.partitions = options.partitions.max(1);
            config.wait_replicas = options.wait_replicas;
            config.wait_timeout = options.wait_timeout;
            config.tls = options.tls.clone();
            let store = RedisStore::connect(config)
                .await
                .with_context(|| format!("connecting to {url}"))?;
            Arc::new(store)
        }
    })
}

/// Starts the configured roles on `listener`; the returned task ends after
/// `shutdown` once the server has drained.
pub fn start(
    config: &AppConfig,
    store: Arc<dyn Store>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> JoinHandle<anyhow::Result<()>> {
    let mut routes = Routes::builder();
    let mut names = Vec::new();
    let mut background = Vec::new();
    let mut declared: Option<Scheduler> = None;
    for role in dedup(&config.roles) {
        match role {
            Role::Submission => {
                routes.add_service(
                    Submission::new(
                        store.clone(),
                        config.limits.clone(),
                        config.task_defaults.clone(),
                    )
                    .into_server(),
                );
                names.push(conveyor_submission::SERVICE_NAME);
            }
            Role::Results => {
                routes.add_service(Results::new(store.clone(), config.max_wait).into_server());
                names.push(conveyor_results::SERVICE_NAME);
            }
            Role::Dispatch => {
                let mut dispatch = config.dispatch.clone();
                dispatch.limits = config.limits.clone();
                routes.add_service(
                    Dispatcher::new(store.clone(), dispatch, shutdown.clone()).into_server(),
                );
                names.push(conveyor_dispatch::SERVICE_NAME);
            }
            Role::Scheduling => {
                let scheduler = Scheduler::new(
                    store.clone(),
                    config.scheduler.clone(),
                    submission_target(config, &listener),
                )
                .with_declared(config.declared_schedules.clone());
                declared = Some(scheduler.clone());
                background.push(tokio::spawn(scheduler.clone().run(shutdown.clone())));
                routes.add_service(scheduler.into_server());
                names.push(conveyor_scheduling::SERVICE_NAME);
            }
        }
    }
    // The roles served elsewhere: forwarded to their peers, or answered
    // with what to do.
    let served = dedup(&config.roles);
    let mut forwarded = Vec::new();
    for role in Role::ALL.into_iter().filter(|role| !served.contains(role)) {
        let peer = config.peers.iter().find(|peer| peer.role == role);
        if let Some(peer) = peer {
            let name = crate::forward::service_name(role);
            names.push(name);
            // Health of a forwarded service is its peer's.
            if let Ok(endpoint) = crate::tls_out::endpoint(&peer.url) {
                forwarded.push((name.to_string(), endpoint));
            }
        }
        add_stand(&mut routes, role, peer.map(|peer| peer.url.as_str()));
    }
    let server_config = config.server.clone();
    let routes = routes.routes();
    tokio::spawn(async move {
        // Declared schedules exist before the first request is served.
        if let Some(scheduler) = declared {
            scheduler.apply_declared().await;
        }
        let result = conveyor_runtime::serve(
            listener,
            routes,
            &names,
            forwarded,
            conveyor_api::FILE_DESCRIPTOR_SET,
            &server_config,
            shutdown,
        )
        .await;
        for task in background {
            let _ = task.await;
        }
        result.map_err(Into::into)
    })
}

/// The scheduler's way to the submission service: the configured URL, else
/// this very process when it serves submission (still over gRPC, as any
/// producer would).
fn submission_target(config: &AppConfig, listener: &TcpListener) -> Option<SubmissionTarget> {
    let submission_peer = config
        .peers
        .iter()
        .find(|peer| peer.role == Role::Submission);
    let url = match &config.submission_url {
        Some(url) => url.clone(),
        None if submission_peer.is_some() => submission_peer.map(|peer| peer.url.clone())?,
        None if config.roles.contains(&Role::Submission) => {
            let addr = listener.local_addr().ok()?;
            format!("http://{addr}")
        }
        None => {
            tracing::warn!(
                "no --submission-url or --peer submission=URL: this scheduler cannot fire schedules"
            );
            return None;
        }
    };
    let channel = match crate::tls_out::endpoint(&url) {
        Ok(endpoint) => endpoint.connect_lazy(),
        Err(error) => {
            tracing::error!(%url, %error, "invalid submission url");
            return None;
        }
    };
    let auth_on = config.server.auth_file.is_some() || !config.server.auth_tokens.is_empty();
    if auth_on && config.scheduler_token.is_none() {
        tracing::warn!(
            "authentication is on but this scheduler has no --scheduler-token: the submission \
             service will refuse the runs of schedules; give it a token whose principal has the \
             'producer' role in the schedules' namespaces"
        );
    }
    Some(SubmissionTarget {
        channel,
        token: config.scheduler_token.clone(),
    })
}

fn add_stand(routes: &mut tonic::service::RoutesBuilder, role: Role, peer: Option<&str>) {
    use crate::forward::{
        DispatchMarker, ResultsMarker, SchedulingMarker, Stand, SubmissionMarker,
    };
    fn stand<M>(role: Role, peer: Option<&str>) -> Stand<M> {
        match peer.map(|url| Stand::forward(role, url)) {
            Some(Ok(stand)) => stand,
            Some(Err(error)) => {
                // Checked when the flags were parsed; kept as a status.
                tracing::error!(%error, ?role, "unusable peer URL");
                Stand::absent(role)
            }
            None => Stand::absent(role),
        }
    }
    match role {
        Role::Submission => routes.add_service(stand::<SubmissionMarker>(role, peer)),
        Role::Scheduling => routes.add_service(stand::<SchedulingMarker>(role, peer)),
        Role::Dispatch => routes.add_service(stand::<DispatchMarker>(role, peer)),
        Role::Results => routes.add_service(stand::<ResultsMarker>(role, peer)),
    };
}

fn dedup(roles: &[Role]) -> Vec<Role> {
    let mut unique = Vec::new();
    for role in roles {
        if !unique.contains(role) {
            unique.push(*role);
        }
    }
    unique
}
