//! The command line: `serve ROLE…`, `dev`, and commands for ad-hoc use
//! (`submit`, `get`, `cancel`, `workers`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use conveyor_api::pb;
use conveyor_core::time::pb_duration;

use crate::app::{self, AppConfig, Role, StoreUrl};

/// Conveyor: a distributed task queue.
#[derive(Debug, Parser)]
#[command(name = "conveyor", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log JSON lines instead of text.
    #[arg(long, global = true, env = "CONVEYOR_LOG_JSON")]
    pub log_json: bool,
    /// Threads of the async runtime (default: one per core). On a machine
    /// whose cores are shared with Redis and workers, fewer threads spare
    /// messages hops between threads: the benchmark runs with 1 on 2 cores.
    #[arg(long, global = true, env = "CONVEYOR_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve one or more roles (one per process in production).
    Serve(ServeArgs),
    /// All four roles on one port, on the embedded store unless --store says otherwise.
    Dev(ServerArgs),
    /// Submit a task; with --wait, print its result.
    Submit(SubmitArgs),
    /// Show a task.
    Get {
        /// Task id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Wait for a task to finish and print its result (exit 1 if it failed).
    Wait {
        /// Task id.
        id: String,
        /// How long to wait.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        target: Target,
    },
    /// Cancel (revoke) a task; a running one is stopped on its worker.
    Cancel {
        /// Task id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Tail task and worker events (WatchEvents), like `celery events`.
    Events(EventsArgs),
    /// List the connected workers (of every dispatch replica).
    Workers {
        #[command(flatten)]
        target: Target,
    },
    /// Show, wait for or cancel a workflow (chain, group, chord).
    #[command(subcommand)]
    Workflow(WorkflowCommand),
    /// Auth file helpers.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Dead letters: list, replay, forget.
    #[command(subcommand)]
    Dlq(crate::ops::DlqCommand),
    /// Queues of the namespace: ready tasks, pause state, consumers.
    Queues {
        #[command(flatten)]
        target: Target,
    },
    /// Stop workers leasing from a queue (submissions still queue up).
    Pause(crate::ops::QueueArgs),
    /// Let workers lease from a paused queue again.
    Resume(crate::ops::QueueArgs),
    /// Periodic schedules: list, get, create, pause, resume, trigger, delete, runs.
    #[command(subcommand)]
    Schedules(crate::ops::ScheduleCommand),
}

/// `auth` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Print the SHA-256 of a token as the auth file's `token_sha256` lists
    /// it (the token is read from standard input when not given, so that it
    /// stays out of the shell's history).
    HashToken {
        /// The token; omit it to read one line from standard input.
        token: Option<String>,
    },
    /// Check an auth file and list its principals and roles (no tokens).
    Check {
        /// The auth file.
        file: std::path::PathBuf,
    },
}

/// `workflow` subcommands.
#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Print a workflow as a tree: every task with its state and outcome.
    Get {
        /// Workflow id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Wait for a workflow to finish, then print it as `get` does (exit 1
    /// unless it succeeded).
    Wait {
        /// Workflow id.
        id: String,
        /// How long to wait.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        target: Target,
    },
    /// Cancel every unfinished task of a workflow.
    Cancel {
        /// Workflow id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

/// `events` arguments.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only these queues (repeat the flag for more).
    #[arg(long = "queue")]
    pub queues: Vec<String>,
    /// Only these task names.
    #[arg(long = "task")]
    pub tasks: Vec<String>,
    /// Only these kinds: submitted, leased, started, progress, retried,
    /// succeeded, failed, cancelled, expired, requeued, ready, worker-online,
    /// worker-offline, worker-heartbeat (comma-separated).
    #[arg(long = "kind", value_delimiter = ',')]
    pub kinds: Vec<String>,
    /// Exit after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    #[command(flatten)]
    pub target: Target,
}

/// A path from a flag or an environment variable; an empty variable
/// (`CONVEYOR_TLS_CA=`) means unset rather than an error.
#[derive(Debug, Clone)]
pub struct OptionalPath(Option<std::path::PathBuf>);

impl std::str::FromStr for OptionalPath {
    type Err = std::convert::Infallible;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self((!text.is_empty()).then(|| text.into())))
    }
}

/// The path of an optional path argument, if one was given.
fn path(value: Option<OptionalPath>) -> Option<std::path::PathBuf> {
    value.and_then(|value| value.0)
}

/// `serve` arguments.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Roles to serve.
    #[arg(required = true, value_enum)]
    pub roles: Vec<Role>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Server settings shared by `serve` and `dev`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50051", env = "CONVEYOR_LISTEN")]
    pub listen: SocketAddr,
    /// `memory` or a redis:// URL.
    #[arg(long, default_value = "memory", env = "CONVEYOR_STORE")]
    pub store: StoreUrl,
    /// Prefix of every Redis key and channel.
    #[arg(long, default_value = "cv:", env = "CONVEYOR_REDIS_PREFIX")]
    pub redis_prefix: String,
    /// Partitions per queue (Redis hash slots); raise to spread over a cluster.
    #[arg(long, default_value_t = 1, env = "CONVEYOR_PARTITIONS")]
    pub partitions: u16,
    /// Acknowledge a submission only once this many Redis replicas of its
    /// shard have it (`WAIT`); 0 acknowledges once the primary has it.
    #[arg(long, default_value_t = 0, env = "CONVEYOR_REDIS_WAIT_REPLICAS")]
    pub redis_wait_replicas: u32,
    /// How long a submission waits for those replicas before failing with
    /// UNAVAILABLE.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, env = "CONVEYOR_REDIS_WAIT_TIMEOUT")]
    pub redis_wait_timeout: Duration,
    /// For a `rediss://` store: a PEM CA to trust besides the system's.
    #[arg(long, env = "CONVEYOR_REDIS_TLS_CA")]
    pub redis_tls_ca: Option<OptionalPath>,
    /// For a `rediss://` store: a PEM client certificate (Redis
    /// `tls-auth-clients yes`), with --redis-tls-key.
    #[arg(long, env = "CONVEYOR_REDIS_TLS_CERT")]
    pub redis_tls_cert: Option<OptionalPath>,
    /// The private key of --redis-tls-cert.
    #[arg(long, env = "CONVEYOR_REDIS_TLS_KEY")]
    pub redis_tls_key: Option<OptionalPath>,
    /// Shifts this process's clock, e.g. `-30s` (tests of clock skew only:
    /// deadlines shared between replicas are compared on the store's clock).
    #[arg(long, hide = true, allow_hyphen_values = true, value_parser = parse_skew)]
    pub clock_skew: Option<i64>,
    /// How often workers heartbeat.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, env = "CONVEYOR_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Duration,
    /// How long leases outlive their last renewal.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, env = "CONVEYOR_LEASE_TTL")]
    pub lease_ttl: Duration,
    /// Drain time on shutdown.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, env = "CONVEYOR_GRACE")]
    pub grace: Duration,
    /// Where a scheduling process submits schedule runs (default: itself, when
    /// it also serves submission).
    #[arg(long, env = "CONVEYOR_SUBMISSION_URL")]
    pub submission_url: Option<String>,
    /// Where a role this process does not serve runs, as ROLE=URL
    /// (repeatable; e.g. `--peer results=http://results:50051`): calls for
    /// that role are forwarded there, so clients need this one address.
    /// Also where scheduling submits schedule runs, without --submission-url.
    #[arg(long = "peer", value_delimiter = ',', env = "CONVEYOR_PEERS")]
    pub peers: Vec<crate::forward::Peer>,
    /// TOML file of periodic schedules, created or updated at start; see the
    /// README.
    #[arg(long, env = "CONVEYOR_SCHEDULES")]
    pub schedules: Option<OptionalPath>,
    /// TOML file of options per task name (queue, retries, backoff, time
    /// limits, result TTL); see the README.
    #[arg(long, env = "CONVEYOR_TASK_DEFAULTS")]
    pub task_defaults: Option<OptionalPath>,
    /// Record when handlers start (state RUNNING), as Celery's
    /// `task_track_started`; off by default (one store write per task).
    #[arg(long, env = "CONVEYOR_TRACK_STARTED")]
    pub track_started: bool,
    /// How often a dispatch replica compares its worker sessions with the
    /// other replicas' and asks those over its share to reconnect
    /// (elsewhere, through the load balancer); `0s` turns it off.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, env = "CONVEYOR_REBALANCE_INTERVAL")]
    pub rebalance_interval: Duration,
    /// Serve TLS with this PEM certificate chain (with --tls-key); re-read
    /// when the file changes, for new connections.
    #[arg(long, env = "CONVEYOR_TLS_SERVER_CERT")]
    pub tls_cert: Option<OptionalPath>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "CONVEYOR_TLS_SERVER_KEY")]
    pub tls_key: Option<OptionalPath>,
    /// Require client certificates signed by this PEM CA (mTLS).
    #[arg(long, env = "CONVEYOR_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<OptionalPath>,
    /// CA to trust (besides the system's) for https:// peers and the
    /// submission URL.
    #[arg(long, env = "CONVEYOR_TLS_CA")]
    pub tls_ca: Option<OptionalPath>,
    /// Accepted bearer tokens (comma-separated), each an admin of every
    /// namespace; with no --auth-file and no token: no authentication.
    #[arg(
        long = "auth-token",
        value_delimiter = ',',
        env = "CONVEYOR_AUTH_TOKENS"
    )]
    pub auth_tokens: Vec<String>,
    /// Principals with roles per namespace (TOML; tokens stored as SHA-256
    /// hashes, client-certificate subjects); re-read when it changes. See
    /// docs/security.md.
    #[arg(long, env = "CONVEYOR_AUTH_FILE")]
    pub auth_file: Option<OptionalPath>,
    /// The token the scheduler presents to the submission service when a
    /// schedule fires (its principal needs `producer` in the schedules'
    /// namespaces); default: the first --auth-token.
    #[arg(long, env = "CONVEYOR_SCHEDULER_TOKEN", hide_env_values = true)]
    pub scheduler_token: Option<String>,
    /// With authentication on, gRPC reflection needs a credential too (any
    /// principal); health checks stay open.
    #[arg(long, env = "CONVEYOR_PRIVATE_REFLECTION")]
    pub private_reflection: bool,
    /// Export OpenTelemetry traces to this OTLP/gRPC collector, e.g.
    /// `http://127.0.0.1:4317` (the standard `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// works too). Off by default.
    #[arg(long, env = "CONVEYOR_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Admin HTTP listener: Prometheus metrics at `/metrics`, a plaintext
    /// probe at `/healthz`. Off by default for `serve`; `dev` listens on
    /// 127.0.0.1:9464 unless told otherwise (`off` turns it off).
    #[arg(long, env = "CONVEYOR_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

/// Where client commands connect.
#[derive(Debug, Args)]
pub struct Target {
    /// Server address.
    #[arg(long, default_value = "http://127.0.0.1:50051", env = "CONVEYOR_ADDR")]
    pub server: String,
    /// Bearer token, when the server requires one.
    #[arg(long, env = "CONVEYOR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Namespace to act in (default: `default`).
    #[arg(long, default_value = "", env = "CONVEYOR_NAMESPACE")]
    pub namespace: String,
    /// Print JSON (one document; `events`: one object per line) instead of
    /// text, for scripts.
    #[arg(long)]
    pub json: bool,
}

impl Target {
    /// A request carrying the bearer token, if one is set.
    pub(crate) fn request<T>(&self, message: T) -> anyhow::Result<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}")
                .parse()
                .context("--token contains characters not allowed in a header")?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// `submit` arguments.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Task name.
    pub name: String,
    /// A positional argument as JSON (repeatable).
    #[arg(long = "arg", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// A named argument as KEY=JSON (repeatable).
    #[arg(long = "kwarg")]
    pub kwargs: Vec<String>,
    /// Queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// Priority 0-9.
    #[arg(long)]
    pub priority: Option<u32>,
    /// Delay before the task may run, e.g. 10s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub countdown: Option<Duration>,
    /// Retries on failure.
    #[arg(long)]
    pub max_retries: Option<u32>,
    /// Idempotency key.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Wait for the outcome and print the result.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub target: Target,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args.roles, args.server, cli.log_json, false).await,
        Command::Dev(server) => serve(Role::ALL.to_vec(), server, cli.log_json, true).await,
        Command::Submit(args) => submit(args).await,
        Command::Get { id, target } => get(&id, &target).await,
        Command::Wait {
            id,
            timeout,
            target,
        } => wait(&id, timeout, &target).await,
        Command::Cancel { id, target } => cancel(&id, &target).await,
        Command::Workers { target } => workers(&target).await,
        Command::Events(args) => events(args).await,
        Command::Workflow(command) => workflow(command).await,
        Command::Auth(command) => auth(command),
        Command::Dlq(command) => crate::ops::dlq(command).await,
        Command::Queues { target } => crate::ops::queues(target).await,
        Command::Pause(args) => crate::ops::pause(args, true).await,
        Command::Resume(args) => crate::ops::pause(args, false).await,
        Command::Schedules(command) => crate::ops::schedules(command).await,
    }
}

/// Where `dev` serves metrics unless told otherwise (the port OpenTelemetry's
/// Prometheus exporters use).
pub const DEV_METRICS_LISTEN: &str = "127.0.0.1:9464";

async fn serve(
    roles: Vec<Role>,
    args: ServerArgs,
    log_json: bool,
    dev: bool,
) -> anyhow::Result<()> {
    let _telemetry = conveyor_runtime::init_telemetry(&conveyor_runtime::TelemetryConfig {
        log_json,
        otlp_endpoint: args.otlp_endpoint.clone(),
    });
    if let Some(skew_ms) = args.clock_skew {
        tracing::warn!(skew_ms, "this process's clock is skewed (--clock-skew)");
        conveyor_core::time::set_clock_skew_ms(skew_ms);
    }
    if args.store == StoreUrl::Memory && roles.len() < Role::ALL.len() {
        tracing::warn!(
            "the memory store is private to this process; split roles need --store redis://…"
        );
    }
    let mut config = AppConfig {
        roles: roles.clone(),
        ..AppConfig::default()
    };
    if let Some(path) = path(args.task_defaults.clone()) {
        config.task_defaults = crate::config::load_task_defaults(&path)?;
    }
    config.submission_url = args.submission_url.clone();
    crate::forward::check_peers(&args.peers)?;
    config.peers = args.peers.clone();
    if let Some(path) = path(args.schedules.clone()) {
        config.declared_schedules = crate::config::load_schedules(&path)?;
    }
    config.server.grace = args.grace;
    // Workers get most of the grace period to finish what they hold; the
    // rest is for their last outcomes to be recorded.
    config.dispatch.drain_grace = args.grace.mul_f64(0.8);
    config.server.auth_tokens = args.auth_tokens;
    config.server.auth_file = path(args.auth_file);
    config.server.private_reflection = args.private_reflection;
    if let Some(file) = &config.server.auth_file {
        // Checked here too, so a bad file stops the process before it binds.
        conveyor_runtime::auth::Authenticator::load(Some(file), &config.server.auth_tokens)?;
    }
    config.scheduler_token = args
        .scheduler_token
        .filter(|token| !token.is_empty())
        .or_else(|| config.server.auth_tokens.first().cloned());
    let client_ca = path(args.tls_client_ca);
    config.server.tls = match (path(args.tls_cert), path(args.tls_key)) {
        (Some(cert), Some(key)) => Some(conveyor_runtime::tls::TlsFiles {
            cert,
            key,
            client_ca,
        }),
        (None, None) if client_ca.is_some() => anyhow::bail!(
            "--tls-client-ca needs TLS on the listener: give --tls-cert and --tls-key too"
        ),
        (None, None) => None,
        _ => anyhow::bail!(
            "--tls-cert and --tls-key go together (a certificate and its private key): give both, or neither for plaintext"
        ),
    };
    crate::tls_out::configure(path(args.tls_ca), config.server.tls.clone());
    if let Some(files) = &config.server.tls {
        // Bad files stop the process here, saying which flag to fix.
        conveyor_runtime::tls::ServerTls::load(files)?;
        tracing::info!(
            cert = %files.cert.display(),
            mtls = files.client_ca.is_some(),
            "serving TLS"
        );
    }
    config.dispatch.heartbeat_interval = args.heartbeat_interval;
    config.dispatch.lease_ttl = args.lease_ttl;
    config.dispatch.track_started = args.track_started;
    config.dispatch.rebalance_interval = args.rebalance_interval;
    let store = app::open_store(
        &args.store,
        &app::StoreOptions {
            prefix: args.redis_prefix.clone(),
            partitions: args.partitions,
            wait_replicas: args.redis_wait_replicas,
            wait_timeout: args.redis_wait_timeout,
            tls: conveyor_store::RedisTls {
                ca: path(args.redis_tls_ca.clone()),
                cert: path(args.redis_tls_cert.clone()),
                key: path(args.redis_tls_key.clone()),
            },
        },
    )
    .await?;
    // Bind before anything else runs, so a taken port fails fast.
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let bound = listener.local_addr().context("reading the bound address")?;
    // One machine-readable line on stdout: scripts and tests read the port
    // from it when they ask for --listen 127.0.0.1:0.
    println!("listening on {bound}");
    let shutdown = CancellationToken::new();
    start_admin(args.metrics_listen.as_deref(), dev, shutdown.clone()).await?;
    let store = if conveyor_runtime::metrics::enabled() {
        std::sync::Arc::new(crate::metered::Metered(store))
    } else {
        store
    };
    let server = app::start(&config, store, listener, shutdown.clone());
    let store_name = match &args.store {
        StoreUrl::Memory => "memory".to_string(),
        StoreUrl::Redis(url) => url.clone(),
    };
    tracing::info!(listen = %bound, store = %store_name, ?roles, "conveyor serving");
    let mut server = std::pin::pin!(server);
    tokio::select! {
        result = &mut server => return result.context("server task")?,
        _ = conveyor_runtime::wait_for_signals(shutdown.clone()) => {}
    }
    // Drain: workers are asked to finish, open calls complete, within --grace.
    server.await.context("server task")?
}

/// Starts the admin listener (metrics and probes) if asked for; `dev` asks
/// for it at [`DEV_METRICS_LISTEN`] and carries on without it if that port is
/// taken (several dev servers on one machine).
async fn start_admin(
    listen: Option<&str>,
    dev: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (address, required) = match listen {
        Some("off") => return Ok(()),
        Some(address) => (address, true),
        None if dev => (DEV_METRICS_LISTEN, false),
        None => return Ok(()),
    };
    let address: SocketAddr = address.parse().with_context(|| {
        format!("--metrics-listen {address:?}: expected an address such as 127.0.0.1:9464, or off")
    })?;
    let listener = match TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(error) if !required => {
            tracing::warn!(%address, %error, "metrics listener not started (pass --metrics-listen to choose another address)");
            return Ok(());
        }
        Err(error) => {
            return Err(error).with_context(|| format!("binding --metrics-listen {address}"));
        }
    };
    let handle = conveyor_runtime::metrics::install()
        .map_err(|error| anyhow::anyhow!("metrics recorder: {error}"))?;
    let bound = listener
        .local_addr()
        .context("reading the metrics address")?;
    tracing::info!(metrics = %format!("http://{bound}/metrics"), health = %format!("http://{bound}/healthz"), "admin listener");
    tokio::spawn(conveyor_runtime::serve_admin(listener, handle, shutdown));
    Ok(())
}

pub(crate) async fn channel(target: &Target) -> anyhow::Result<Channel> {
    // `127.0.0.1:50051` means `http://127.0.0.1:50051` (`https://` with
    // CONVEYOR_TLS_CA or a client certificate set).
    crate::tls_out::client_endpoint(&target.server)?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", target.server))
}

fn json_payload(text: &str, what: &str) -> anyhow::Result<pb::Payload> {
    serde_json::from_str::<serde_json::Value>(text)
        .with_context(|| format!("{what}: {text:?} is not JSON"))?;
    Ok(pb::Payload {
        data: text.as_bytes().to_vec(),
        content_type: "application/json".into(),
    })
}

async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let mut spec = pb::TaskSpec {
        name: args.name.clone(),
        idempotency_key: args.idempotency_key.clone().unwrap_or_default(),
        ..Default::default()
    };
    for arg in &args.args {
        spec.args.push(json_payload(arg, "--arg")?);
    }
    for kwarg in &args.kwargs {
        let Some((key, value)) = kwarg.split_once('=') else {
            bail!("--kwarg {kwarg:?}: expected KEY=JSON");
        };
        spec.kwargs
            .insert(key.to_string(), json_payload(value, "--kwarg")?);
    }
    spec.options = Some(pb::TaskOptions {
        queue: args.queue.clone().unwrap_or_default(),
        priority: args.priority.unwrap_or_default(),
        countdown: args.countdown.map(pb_duration),
        retry: args.max_retries.map(|max_retries| pb::RetryPolicy {
            max_retries,
            ..Default::default()
        }),
        ..Default::default()
    });
    let channel = channel(&args.target).await?;
    let mut submission =
        pb::submission_service_client::SubmissionServiceClient::new(channel.clone());
    let response = submission
        .submit_task(args.target.request(pb::SubmitTaskRequest {
            task: Some(spec),
            namespace: args.target.namespace.clone(),
        })?)
        .await
        .map_err(status_error)?
        .into_inner();
    if !args.wait {
        if args.target.json {
            println!(
                "{}",
                serde_json::json!({"id": response.task_id, "duplicate": response.duplicate})
            );
        } else {
            println!("{}", response.task_id);
        }
        return Ok(());
    }
    wait_on(channel, &response.task_id, args.timeout, &args.target).await
}

async fn wait(id: &str, timeout: Duration, target: &Target) -> anyhow::Result<()> {
    wait_on(channel(target).await?, id, timeout, target).await
}

async fn wait_on(
    channel: Channel,
    id: &str,
    timeout: Duration,
    target: &Target,
) -> anyhow::Result<()> {
    let mut results = pb::results_service_client::ResultsServiceClient::new(channel);
    let mut request = target.request(pb::WaitTaskRequest {
        task_id: id.to_string(),
        timeout: Some(pb_duration(timeout)),
        namespace: target.namespace.clone(),
        ..Default::default()
    })?;
    request.set_timeout(timeout + Duration::from_secs(5));
    let task = results
        .wait_task(request)
        .await
        .map_err(status_error)?
        .into_inner()
        .task
        .context("server sent no task")?;
    if target.json {
        println!("{}", crate::ops::task_json(&task));
        return match pb::TaskState::try_from(task.state) {
            Ok(pb::TaskState::Succeeded) => Ok(()),
            _ => bail!(
                "task {} ended {}",
                task.id,
                crate::ops::state_name(task.state)
            ),
        };
    }
    print_outcome(&task)
}

fn print_outcome(task: &pb::Task) -> anyhow::Result<()> {
    match pb::TaskState::try_from(task.state) {
        Ok(pb::TaskState::Succeeded) => {
            let result = task.result.clone().unwrap_or_default();
            println!("{}", String::from_utf8_lossy(&result.data));
            Ok(())
        }
        Ok(pb::TaskState::Failed) => {
            let error = task.error.clone().unwrap_or_default();
            if !error.traceback.is_empty() {
                eprintln!("{}", error.traceback);
            }
            bail!(
                "task {} failed: {}: {}",
                task.id,
                error.r#type,
                error.message
            )
        }
        other => bail!(
            "task {} ended {:?}",
            task.id,
            other.unwrap_or(pb::TaskState::Unspecified)
        ),
    }
}

pub(crate) fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

async fn get(id: &str, target: &Target) -> anyhow::Result<()> {
    let mut results = pb::results_service_client::ResultsServiceClient::new(channel(target).await?);
    let task = results
        .get_task(target.request(pb::GetTaskRequest {
            task_id: id.to_string(),
            namespace: target.namespace.clone(),
        })?)
        .await
        .map_err(status_error)?
        .into_inner()
        .task
        .context("server sent no task")?;
    if target.json {
        println!("{}", crate::ops::task_json(&task));
        return Ok(());
    }
    let state = pb::TaskState::try_from(task.state).unwrap_or(pb::TaskState::Unspecified);
    println!("id:        {}", task.id);
    println!("name:      {}", task.name);
    println!("queue:     {}", task.queue);
    println!(
        "state:     {}",
        state.as_str_name().trim_start_matches("TASK_STATE_")
    );
    println!("attempt:   {} (failures {})", task.attempt, task.failures);
    if !task.worker_id.is_empty() {
        println!("worker:    {}", task.worker_id);
    }
    if let Some(result) = &task.result {
        println!("result:    {}", String::from_utf8_lossy(&result.data));
    }
    if let Some(error) = &task.error {
        println!("error:     {}: {}", error.r#type, error.message);
    }
    Ok(())
}

async fn cancel(id: &str, target: &Target) -> anyhow::Result<()> {
    let mut submission =
        pb::submission_service_client::SubmissionServiceClient::new(channel(target).await?);
    let response = submission
        .cancel_task(target.request(pb::CancelTaskRequest {
            task_id: id.to_string(),
            namespace: target.namespace.clone(),
        })?)
        .await
        .map_err(status_error)?
        .into_inner();
    let state = pb::TaskState::try_from(response.state).unwrap_or(pb::TaskState::Unspecified);
    let state = state.as_str_name().trim_start_matches("TASK_STATE_");
    if target.json {
        println!(
            "{}",
            serde_json::json!({"id": id, "cancelled": response.cancelled, "state": state})
        );
        return Ok(());
    }
    if response.cancelled {
        println!("cancelled");
    } else {
        println!("not cancelled: task is {state}");
    }
    Ok(())
}

async fn workflow(command: WorkflowCommand) -> anyhow::Result<()> {
    match command {
        WorkflowCommand::Get { id, target } => {
            let json = target.json;
            let mut results =
                pb::results_service_client::ResultsServiceClient::new(channel(&target).await?);
            let workflow = results
                .get_workflow(target.request(pb::GetWorkflowRequest {
                    workflow_id: id,
                    namespace: target.namespace.clone(),
                    view: pb::WorkflowView::Nodes as i32,
                })?)
                .await
                .map_err(status_error)?
                .into_inner()
                .workflow
                .context("server sent no workflow")?;
            print_workflow(&workflow, json)
        }
        WorkflowCommand::Wait {
            id,
            timeout,
            target,
        } => {
            let json = target.json;
            let mut results =
                pb::results_service_client::ResultsServiceClient::new(channel(&target).await?);
            let mut request = target.request(pb::WaitWorkflowRequest {
                workflow_id: id,
                timeout: Some(conveyor_core::time::pb_duration(timeout)),
                namespace: target.namespace.clone(),
                view: pb::WorkflowView::Nodes as i32,
            })?;
            request.set_timeout(timeout + Duration::from_secs(5));
            let workflow = results
                .wait_workflow(request)
                .await
                .map_err(status_error)?
                .into_inner()
                .workflow
                .context("server sent no workflow")?;
            print_workflow(&workflow, json)?;
            if workflow.state != pb::WorkflowState::Succeeded as i32 {
                std::process::exit(1);
            }
            Ok(())
        }
        WorkflowCommand::Cancel { id, target } => {
            let mut submission = pb::submission_service_client::SubmissionServiceClient::new(
                channel(&target).await?,
            );
            let response = submission
                .cancel_workflow(target.request(pb::CancelWorkflowRequest {
                    workflow_id: id,
                    namespace: target.namespace.clone(),
                })?)
                .await
                .map_err(status_error)?
                .into_inner();
            let state = pb::WorkflowState::try_from(response.state)
                .unwrap_or(pb::WorkflowState::Unspecified);
            println!(
                "cancelled {} task(s); workflow is {}",
                response.cancelled,
                state.as_str_name().trim_start_matches("WORKFLOW_STATE_")
            );
            Ok(())
        }
    }
}

/// A workflow as a tree: each task under its last parent (a chord callback
/// under its last header task, naming the others), with state and outcome.
fn print_workflow(workflow: &pb::Workflow, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", workflow_json(workflow));
        return Ok(());
    }
    let state =
        pb::WorkflowState::try_from(workflow.state).unwrap_or(pb::WorkflowState::Unspecified);
    println!(
        "workflow {} {:?}: {} ({} tasks)",
        workflow.id,
        workflow.name,
        state.as_str_name().trim_start_matches("WORKFLOW_STATE_"),
        workflow.node_count
    );
    if let Some(result) = &workflow.result {
        println!("result: {}", String::from_utf8_lossy(&result.data));
    }
    let mut children: std::collections::BTreeMap<Option<u32>, Vec<&pb::WorkflowNodeStatus>> =
        std::collections::BTreeMap::new();
    for node in &workflow.nodes {
        children
            .entry(node.parents.iter().max().copied())
            .or_default()
            .push(node);
    }
    fn line(node: &pb::WorkflowNodeStatus) -> String {
        let task = node.task.clone().unwrap_or_default();
        let state = pb::TaskState::try_from(task.state).unwrap_or(pb::TaskState::Unspecified);
        let mut text = format!(
            "#{} {} {}",
            node.index,
            task.name,
            state.as_str_name().trim_start_matches("TASK_STATE_")
        );
        if node.parents.len() > 1 {
            let after: Vec<String> = node.parents.iter().map(|p| format!("#{p}")).collect();
            text.push_str(&format!(" (after {})", after.join(", ")));
        }
        if node.trigger == pb::NodeTrigger::OnFailure as i32 {
            text.push_str(" [on failure]");
        } else if node.trigger == pb::NodeTrigger::AllDone as i32 {
            text.push_str(" [all done]");
        }
        if let Some(result) = &task.result {
            let value = String::from_utf8_lossy(&result.data);
            let value: String = value.chars().take(80).collect();
            text.push_str(&format!(" = {value}"));
        }
        if let Some(error) = &task.error {
            text.push_str(&format!(" ! {}: {}", error.r#type, error.message));
        }
        text
    }
    fn walk(
        parent: Option<u32>,
        depth: usize,
        children: &std::collections::BTreeMap<Option<u32>, Vec<&pb::WorkflowNodeStatus>>,
    ) {
        for node in children.get(&parent).into_iter().flatten() {
            println!("{}{}", "  ".repeat(depth + 1), line(node));
            walk(Some(node.index), depth + 1, children);
        }
    }
    walk(None, 0, &children);
    Ok(())
}

/// The workflow as JSON, payloads decoded when they are JSON.
fn workflow_json(workflow: &pb::Workflow) -> serde_json::Value {
    let payload = |payload: &Option<pb::Payload>| -> serde_json::Value {
        payload
            .as_ref()
            .map(|payload| {
                serde_json::from_slice(&payload.data).unwrap_or_else(|_| {
                    serde_json::Value::String(String::from_utf8_lossy(&payload.data).into_owned())
                })
            })
            .unwrap_or(serde_json::Value::Null)
    };
    let state = |value: i32| {
        pb::TaskState::try_from(value)
            .unwrap_or(pb::TaskState::Unspecified)
            .as_str_name()
            .trim_start_matches("TASK_STATE_")
            .to_string()
    };
    serde_json::json!({
        "id": workflow.id,
        "name": workflow.name,
        "state": pb::WorkflowState::try_from(workflow.state)
            .unwrap_or(pb::WorkflowState::Unspecified)
            .as_str_name()
            .trim_start_matches("WORKFLOW_STATE_"),
        "result": payload(&workflow.result),
        "failed_task_id": workflow.failed_task_id,
        "nodes": workflow.nodes.iter().map(|node| {
            let task = node.task.clone().unwrap_or_default();
            serde_json::json!({
                "index": node.index,
                "task_id": task.id,
                "name": task.name,
                "state": state(task.state),
                "attempt": task.attempt,
                "parents": node.parents,
                "label": node.label,
                "worker_id": task.worker_id,
                "result": payload(&task.result),
                "error": task.error.as_ref().map(|error| serde_json::json!({
                    "type": error.r#type,
                    "message": error.message,
                    "cause_task_id": error.cause_task_id,
                })),
            })
        }).collect::<Vec<_>>(),
    })
}

/// The event kinds by the names `conveyor events --kind` takes.
const EVENT_KINDS: [(&str, pb::EventKind); 14] = [
    ("ready", pb::EventKind::TaskReady),
    ("submitted", pb::EventKind::TaskSubmitted),
    ("leased", pb::EventKind::TaskLeased),
    ("started", pb::EventKind::TaskStarted),
    ("progress", pb::EventKind::TaskProgress),
    ("retried", pb::EventKind::TaskRetried),
    ("succeeded", pb::EventKind::TaskSucceeded),
    ("failed", pb::EventKind::TaskFailed),
    ("cancelled", pb::EventKind::TaskCancelled),
    ("expired", pb::EventKind::TaskExpired),
    ("requeued", pb::EventKind::TaskRequeued),
    ("worker-online", pb::EventKind::WorkerOnline),
    ("worker-offline", pb::EventKind::WorkerOffline),
    ("worker-heartbeat", pb::EventKind::WorkerHeartbeat),
];

fn event_kind_name(kind: i32) -> &'static str {
    EVENT_KINDS
        .iter()
        .find(|(_, known)| *known as i32 == kind)
        .map_or("unknown", |(name, _)| name)
}

async fn events(args: EventsArgs) -> anyhow::Result<()> {
    let mut kinds = Vec::new();
    for name in &args.kinds {
        let Some((_, kind)) = EVENT_KINDS.iter().find(|(known, _)| known == name) else {
            let names: Vec<&str> = EVENT_KINDS.iter().map(|(name, _)| *name).collect();
            bail!(
                "--kind {name:?} is not an event kind; use one of {}",
                names.join(", ")
            );
        };
        kinds.push(*kind as i32);
    }
    let mut results =
        pb::results_service_client::ResultsServiceClient::new(channel(&args.target).await?);
    let request = pb::WatchEventsRequest {
        namespace: args.target.namespace.clone(),
        queues: args.queues,
        task_names: args.tasks,
        kinds,
    };
    let mut stream = results
        .watch_events(args.target.request(request)?)
        .await
        .map_err(status_error)?
        .into_inner();
    let mut seen = 0u64;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    while let Some(message) = stream.message().await.map_err(status_error)? {
        if message.dropped > 0 {
            if args.target.json {
                writeln!(out, "{}", serde_json::json!({"dropped": message.dropped}))?;
            } else {
                writeln!(
                    out,
                    "({} events dropped: this terminal reads too slowly)",
                    message.dropped
                )?;
            }
        }
        for event in message.events {
            let time = event
                .time
                .map(|time| time.seconds as f64 + f64::from(time.nanos) / 1e9)
                .unwrap_or_default();
            let kind = event_kind_name(event.kind);
            if args.target.json {
                let line = serde_json::json!({
                    "kind": kind,
                    "time": time,
                    "namespace": event.namespace,
                    "queue": event.queue,
                    "task_name": event.task_name,
                    "task_id": event.task_id,
                    "attempt": event.attempt,
                    "worker_id": event.worker_id,
                    "session_id": event.session_id,
                    "active": event.active,
                    "slots": event.slots,
                });
                writeln!(out, "{line}")?;
            } else if event.task_id.is_empty() {
                writeln!(
                    out,
                    "{time:.3} {kind:<16} worker {} (active {}, free slots {})",
                    event.worker_id, event.active, event.slots
                )?;
            } else {
                writeln!(
                    out,
                    "{time:.3} {kind:<16} {} {} queue={} attempt={}{}",
                    event.task_id,
                    event.task_name,
                    event.queue,
                    event.attempt,
                    if event.worker_id.is_empty() {
                        String::new()
                    } else {
                        format!(" worker={}", event.worker_id)
                    }
                )?;
            }
            seen += 1;
            if args.count.is_some_and(|count| seen >= count) {
                out.flush()?;
                return Ok(());
            }
        }
        out.flush()?;
    }
    Ok(())
}

async fn workers(target: &Target) -> anyhow::Result<()> {
    let mut dispatch =
        pb::dispatch_service_client::DispatchServiceClient::new(channel(target).await?);
    let workers = dispatch
        .list_workers(target.request(pb::ListWorkersRequest {
            namespace: target.namespace.clone(),
            ..Default::default()
        })?)
        .await
        .map_err(status_error)?
        .into_inner()
        .workers;
    if target.json {
        let workers: Vec<serde_json::Value> = workers
            .iter()
            .map(|worker| {
                serde_json::json!({
                    "worker_id": worker.worker_id,
                    "session_id": worker.session_id,
                    "language": worker.language,
                    "sdk_version": worker.sdk_version,
                    "hostname": worker.hostname,
                    "concurrency": worker.concurrency,
                    "active_leases": worker.active_leases,
                    "completed": worker.completed,
                    "queues": worker.queues,
                    "task_names": worker.task_names,
                    "namespace": worker.namespace,
                    "dispatcher": worker.dispatcher,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(workers));
        return Ok(());
    }
    println!(
        "{:<28} {:<8} {:>6} {:>7} {:>9}  QUEUES / TASKS",
        "WORKER", "LANG", "SLOTS", "LEASES", "DONE"
    );
    for worker in &workers {
        println!(
            "{:<28} {:<8} {:>6} {:>7} {:>9}  {} / {}",
            worker.worker_id,
            worker.language,
            worker.concurrency,
            worker.active_leases,
            worker.completed,
            worker.queues.join(","),
            worker.task_names.join(",")
        );
    }
    if workers.is_empty() {
        println!("(no workers connected)");
    }
    Ok(())
}

/// `30s`, `-30s` or `+1m`: a signed duration in ms.
fn parse_skew(text: &str) -> Result<i64, String> {
    let (sign, magnitude) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text.strip_prefix('+').unwrap_or(text)),
    };
    humantime::parse_duration(magnitude)
        .map(|duration| sign * duration.as_millis() as i64)
        .map_err(|error| format!("{error}: expected a duration such as -30s"))
}

/// `conveyor auth …`.
fn auth(command: AuthCommand) -> anyhow::Result<()> {
    match command {
        AuthCommand::HashToken { token } => {
            let token = match token {
                Some(token) => token,
                None => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .context("reading the token from standard input")?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            anyhow::ensure!(
                !token.is_empty(),
                "no token given: pass one, or pipe it on standard input"
            );
            println!("{}", conveyor_runtime::auth::hash_token(&token));
            Ok(())
        }
        AuthCommand::Check { file } => {
            let authenticator = conveyor_runtime::auth::Authenticator::load(Some(&file), &[])?;
            for line in authenticator.policy().describe() {
                println!("{line}");
            }
            Ok(())
        }
    }
}
