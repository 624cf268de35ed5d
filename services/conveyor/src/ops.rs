//! The operator's commands: dead letters (`dlq list|replay|forget`), queue
//! pause and resume, and schedules (`schedules list|get|create|pause|resume|
//! trigger|delete|runs`). Every command prints text for people or, with
//! `--json`, one JSON document for scripts.

use anyhow::Context;
use clap::{Args, Subcommand};
use conveyor_api::pb;
use serde_json::{Value, json};

use crate::cli::{Target, channel, status_error};

/// `dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List tasks that failed for good (retries exhausted), oldest first.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        target: Target,
    },
    /// Queue dead letters again, from their first attempt.
    Replay {
        /// Task ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Every dead letter of the namespace (ignores ids).
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Delete dead letters (their outcome and record).
    Forget {
        /// Task ids.
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
}

/// `pause` / `resume` arguments.
#[derive(Debug, Args)]
pub struct QueueArgs {
    /// Queue name.
    pub queue: String,
    #[command(flatten)]
    pub target: Target,
}

/// `schedules` subcommands.
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// List schedules with their rule, next run and state.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Show one schedule.
    Get {
        /// Schedule id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Create a schedule (one of --every, --cron, --solar).
    Create(Box<CreateArgs>),
    /// Stop a schedule's runs until it is resumed.
    Pause {
        /// Schedule id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Let a paused schedule run again.
    Resume {
        /// Schedule id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Run a schedule's task now (its next run stays as it was).
    Trigger {
        /// Schedule id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a schedule.
    Delete {
        /// Schedule id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// A schedule's recent runs, newest first.
    Runs {
        /// Schedule id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

/// `schedules create` arguments: the fields of a `--schedules` file entry.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Schedule id.
    pub id: String,
    /// Task name to submit at each run.
    #[arg(long)]
    pub task: String,
    /// A positional argument as JSON (repeatable).
    #[arg(long = "arg", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Queue of the submitted tasks.
    #[arg(long)]
    pub queue: Option<String>,
    /// Fixed interval, e.g. `30s`, `10m`.
    #[arg(long, group = "rule")]
    pub every: Option<String>,
    /// Cron expression (5 or 6 fields).
    #[arg(long, group = "rule", allow_hyphen_values = true)]
    pub cron: Option<String>,
    /// IANA time zone of --cron (default UTC).
    #[arg(long)]
    pub time_zone: Option<String>,
    /// Solar event: sunrise, sunset, solar-noon, dawn-civil, dusk-civil, …
    #[arg(long, group = "rule")]
    pub solar: Option<String>,
    /// Latitude of --solar.
    #[arg(long, allow_hyphen_values = true)]
    pub latitude: Option<f64>,
    /// Longitude of --solar.
    #[arg(long, allow_hyphen_values = true)]
    pub longitude: Option<f64>,
    /// A random delay up to this per run.
    #[arg(long)]
    pub jitter: Option<String>,
    /// After downtime: `skip` missed runs (default) or `run-once`.
    #[arg(long)]
    pub catch_up: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

/// A payload as JSON: decoded when it is JSON, else its text.
pub fn payload_json(payload: Option<&pb::Payload>) -> Value {
    payload.map_or(Value::Null, |payload| {
        serde_json::from_slice(&payload.data)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&payload.data).into_owned()))
    })
}

/// A task state's short name (`SUCCEEDED`).
pub fn state_name(state: i32) -> &'static str {
    pb::TaskState::try_from(state)
        .unwrap_or(pb::TaskState::Unspecified)
        .as_str_name()
        .trim_start_matches("TASK_STATE_")
}

fn time_json(time: Option<&prost_types::Timestamp>) -> Value {
    time.filter(|time| time.seconds >= 0)
        .map_or(Value::Null, |time| {
            let at = std::time::UNIX_EPOCH
                + std::time::Duration::new(time.seconds as u64, time.nanos.max(0) as u32);
            Value::String(humantime::format_rfc3339_millis(at).to_string())
        })
}

/// A task as JSON, payloads decoded.
pub fn task_json(task: &pb::Task) -> Value {
    json!({
        "id": task.id,
        "name": task.name,
        "namespace": if task.namespace.is_empty() { "default" } else { &task.namespace },
        "queue": task.queue,
        "state": state_name(task.state),
        "attempt": task.attempt,
        "failures": task.failures,
        "args": task.args.iter().map(|arg| payload_json(Some(arg))).collect::<Vec<_>>(),
        "kwargs": task.kwargs.iter().map(|(key, value)| (key.clone(), payload_json(Some(value)))).collect::<serde_json::Map<_, _>>(),
        "worker_id": task.worker_id,
        "created_at": time_json(task.created_at.as_ref()),
        "finished_at": time_json(task.finished_at.as_ref()),
        "result": payload_json(task.result.as_ref()),
        "error": task.error.as_ref().map(|error| json!({
            "type": error.r#type,
            "message": error.message,
            "traceback": error.traceback,
            "cause_task_id": error.cause_task_id,
        })),
        "workflow_id": task.workflow_id,
    })
}

fn rule_text(schedule: &pb::Schedule) -> String {
    match &schedule.rule {
        Some(pb::schedule::Rule::Interval(interval)) => {
            let every = interval.every.unwrap_or_default();
            let duration =
                std::time::Duration::new(every.seconds.max(0) as u64, every.nanos.max(0) as u32);
            format!("every {}", humantime::format_duration(duration))
        }
        Some(pb::schedule::Rule::Cron(cron)) => {
            let zone = if cron.time_zone.is_empty() {
                "UTC"
            } else {
                &cron.time_zone
            };
            format!("cron {} {zone}", cron.expression)
        }
        Some(pb::schedule::Rule::Solar(solar)) => format!(
            "{} at {},{}",
            pb::SolarEvent::try_from(solar.event)
                .unwrap_or(pb::SolarEvent::Unspecified)
                .as_str_name()
                .trim_start_matches("SOLAR_EVENT_")
                .to_lowercase()
                .replace('_', "-"),
            solar.latitude,
            solar.longitude
        ),
        None => "none".into(),
    }
}

/// A schedule as JSON.
pub fn schedule_json(schedule: &pb::Schedule) -> Value {
    let task = schedule.task.clone().unwrap_or_default();
    json!({
        "id": schedule.id,
        "namespace": if schedule.namespace.is_empty() { "default" } else { &schedule.namespace },
        "task": task.name,
        "args": task.args.iter().map(|arg| payload_json(Some(arg))).collect::<Vec<_>>(),
        "rule": rule_text(schedule),
        "paused": schedule.paused,
        "next_run_at": time_json(schedule.next_run_at.as_ref()),
        "last_run_at": time_json(schedule.last_run_at.as_ref()),
        "runs": schedule.runs,
        "version": schedule.version,
    })
}

fn run_json(run: &pb::ScheduleRun) -> Value {
    json!({
        "fire_at": time_json(run.fire_at.as_ref()),
        "task_id": run.task_id,
        "triggered": run.triggered,
    })
}

fn print_json(value: &Value) {
    println!("{value}");
}

fn short_time(value: &Value) -> String {
    value
        .as_str()
        .map_or("-".to_string(), |text| text.chars().take(19).collect())
}

fn print_schedule_line(schedule: &pb::Schedule) {
    let value = schedule_json(schedule);
    println!(
        "{:<24} {:<20} {:<30} {:<8} {:<20} {}",
        schedule.id,
        value["task"].as_str().unwrap_or_default(),
        value["rule"].as_str().unwrap_or_default(),
        if schedule.paused { "paused" } else { "active" },
        short_time(&value["next_run_at"]),
        schedule.runs
    );
}

const SCHEDULE_HEADER: &str = "ID                       TASK                 RULE                           STATE    NEXT RUN (UTC)       RUNS";

/// `conveyor dlq …`.
pub async fn dlq(command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { limit, target } => {
            let json = target.json;
            let tasks = dead_letters(&target, limit as usize).await?;
            if json {
                print_json(&Value::Array(tasks.iter().map(task_json).collect()));
                return Ok(());
            }
            if tasks.is_empty() {
                println!("(no dead letters)");
                return Ok(());
            }
            println!(
                "{:<36}  {:<24} {:<12} {:>7}  ERROR",
                "ID", "TASK", "QUEUE", "ATTEMPT"
            );
            for task in &tasks {
                let error = task.error.clone().unwrap_or_default();
                println!(
                    "{:<36}  {:<24} {:<12} {:>7}  {}: {}",
                    task.id, task.name, task.queue, task.attempt, error.r#type, error.message
                );
            }
            Ok(())
        }
        DlqCommand::Replay { ids, all, target } => {
            let json = target.json;
            let ids = if all {
                dead_letters(&target, usize::MAX)
                    .await?
                    .into_iter()
                    .map(|task| task.id)
                    .collect()
            } else {
                ids
            };
            let mut submission = pb::submission_service_client::SubmissionServiceClient::new(
                channel(&target).await?,
            );
            let mut replayed = Vec::new();
            for id in &ids {
                let response = submission
                    .replay_task(target.request(pb::ReplayTaskRequest {
                        task_id: id.clone(),
                        namespace: target.namespace.clone(),
                    })?)
                    .await
                    .map_err(|status| status_error(status).context(format!("replaying {id}")))?
                    .into_inner();
                replayed.push(json!({"id": id, "state": state_name(response.state)}));
                if !json {
                    println!("{id} replayed: {}", state_name(response.state));
                }
            }
            if json {
                print_json(&Value::Array(replayed));
            }
            Ok(())
        }
        DlqCommand::Forget { ids, target } => {
            let json = target.json;
            let mut results =
                pb::results_service_client::ResultsServiceClient::new(channel(&target).await?);
            for id in &ids {
                results
                    .forget_task(target.request(pb::ForgetTaskRequest {
                        task_id: id.clone(),
                        namespace: target.namespace.clone(),
                    })?)
                    .await
                    .map_err(|status| status_error(status).context(format!("forgetting {id}")))?;
                if !json {
                    println!("{id} forgotten");
                }
            }
            if json {
                print_json(&json!({ "forgotten": ids }));
            }
            Ok(())
        }
    }
}

async fn dead_letters(target: &Target, limit: usize) -> anyhow::Result<Vec<pb::Task>> {
    let mut results = pb::results_service_client::ResultsServiceClient::new(channel(target).await?);
    let mut tasks = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = results
            .list_dead_letters(target.request(pb::ListDeadLettersRequest {
                page_size: (limit - tasks.len()).min(1000) as u32,
                page_token: page_token.clone(),
                namespace: target.namespace.clone(),
            })?)
            .await
            .map_err(status_error)?
            .into_inner();
        tasks.extend(page.tasks);
        if page.next_page_token.is_empty() || tasks.len() >= limit {
            tasks.truncate(limit);
            return Ok(tasks);
        }
        page_token = page.next_page_token;
    }
}

/// `conveyor pause QUEUE` (`paused` true) and `conveyor resume QUEUE`.
pub async fn pause(args: QueueArgs, paused: bool) -> anyhow::Result<()> {
    let mut dispatch =
        pb::dispatch_service_client::DispatchServiceClient::new(channel(&args.target).await?);
    if paused {
        dispatch
            .pause_queue(args.target.request(pb::PauseQueueRequest {
                queue: args.queue.clone(),
                namespace: args.target.namespace.clone(),
            })?)
            .await
            .map_err(status_error)?;
    } else {
        dispatch
            .resume_queue(args.target.request(pb::ResumeQueueRequest {
                queue: args.queue.clone(),
                namespace: args.target.namespace.clone(),
            })?)
            .await
            .map_err(status_error)?;
    }
    if args.target.json {
        print_json(&json!({"queue": args.queue, "paused": paused}));
    } else {
        println!(
            "queue {} {}",
            args.queue,
            if paused {
                "paused: workers lease nothing from it until it is resumed"
            } else {
                "resumed"
            }
        );
    }
    Ok(())
}

/// `conveyor schedules …`.
pub async fn schedules(command: ScheduleCommand) -> anyhow::Result<()> {
    use pb::scheduling_service_client::SchedulingServiceClient;
    match command {
        ScheduleCommand::List { target } => {
            let json = target.json;
            let mut client = SchedulingServiceClient::new(channel(&target).await?);
            let mut schedules = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = client
                    .list_schedules(target.request(pb::ListSchedulesRequest {
                        namespace: target.namespace.clone(),
                        page_size: 1000,
                        page_token: page_token.clone(),
                    })?)
                    .await
                    .map_err(status_error)?
                    .into_inner();
                schedules.extend(page.schedules);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            if json {
                print_json(&Value::Array(schedules.iter().map(schedule_json).collect()));
            } else if schedules.is_empty() {
                println!("(no schedules)");
            } else {
                println!("{SCHEDULE_HEADER}");
                schedules.iter().for_each(print_schedule_line);
            }
            Ok(())
        }
        ScheduleCommand::Get { id, target } => {
            let json = target.json;
            let mut client = SchedulingServiceClient::new(channel(&target).await?);
            let schedule = client
                .get_schedule(target.request(pb::GetScheduleRequest {
                    id,
                    namespace: target.namespace.clone(),
                })?)
                .await
                .map_err(status_error)?
                .into_inner()
                .schedule
                .context("server sent no schedule")?;
            show_schedule(&schedule, json);
            Ok(())
        }
        ScheduleCommand::Create(args) => create(*args).await,
        ScheduleCommand::Pause { id, target } => {
            let json = target.json;
            let mut client = SchedulingServiceClient::new(channel(&target).await?);
            let schedule = client
                .pause_schedule(target.request(pb::PauseScheduleRequest {
                    id,
                    namespace: target.namespace.clone(),
                    expected_version: 0,
                })?)
                .await
                .map_err(status_error)?
                .into_inner()
                .schedule
                .context("server sent no schedule")?;
            show_schedule(&schedule, json);
            Ok(())
        }
        ScheduleCommand::Resume { id, target } => {
            let json = target.json;
            let mut client = SchedulingServiceClient::new(channel(&target).await?);
            let schedule = client
                .resume_schedule(target.request(pb::ResumeScheduleRequest {
                    id,
                    namespace: target.namespace.clone(),
                    ..Default::default()
                })?)
                .await
                .map_err(status_error)?
                .into_inner()
                .schedule
                .context("server sent no schedule")?;
            show_schedule(&schedule, json);
            Ok(())
        }
        ScheduleCommand::Trigger { id, target } => {
            let json = target.json;
            let mut client = SchedulingServiceClient::new(channel(&target).await?);
            let run = client
                .trigger_schedule(target.request(pb::TriggerScheduleRequest {
                    id: id.clone(),
                    namespace: target.namespace.clone(),
                })?)
                .await
                .map_err(status_error)?
                .into_inner()
                .run
                .context("server sent no run")?;
            if json {
                print_json(&run_json(&run));
            } else {
                println!("schedule {id} triggered: task {}", run.task_id);
            }
            Ok(())
        }
        ScheduleCommand::Delete { id, target } => {
            let json = target.json;
            let mut client = SchedulingServiceClient::new(channel(&target).await?);
            client
                .delete_schedule(target.request(pb::DeleteScheduleRequest {
                    id: id.clone(),
                    namespace: target.namespace.clone(),
                })?)
                .await
                .map_err(status_error)?;
            if json {
                print_json(&json!({"deleted": id}));
            } else {
                println!("schedule {id} deleted");
            }
            Ok(())
        }
        ScheduleCommand::Runs { id, target } => {
            let json = target.json;
            let mut client = SchedulingServiceClient::new(channel(&target).await?);
            let runs = client
                .list_schedule_runs(target.request(pb::ListScheduleRunsRequest {
                    id,
                    namespace: target.namespace.clone(),
                    page_size: 100,
                    page_token: String::new(),
                })?)
                .await
                .map_err(status_error)?
                .into_inner()
                .runs;
            if json {
                print_json(&Value::Array(runs.iter().map(run_json).collect()));
            } else if runs.is_empty() {
                println!("(no runs yet)");
            } else {
                println!("{:<20} {:<36}  HOW", "FIRED (UTC)", "TASK");
                for run in &runs {
                    println!(
                        "{:<20} {:<36}  {}",
                        short_time(&time_json(run.fire_at.as_ref())),
                        run.task_id,
                        if run.triggered {
                            "triggered"
                        } else {
                            "scheduled"
                        }
                    );
                }
            }
            Ok(())
        }
    }
}

fn show_schedule(schedule: &pb::Schedule, json: bool) {
    if json {
        print_json(&schedule_json(schedule));
    } else {
        println!("{SCHEDULE_HEADER}");
        print_schedule_line(schedule);
    }
}

async fn create(args: CreateArgs) -> anyhow::Result<()> {
    // The same fields, checks and messages as a `--schedules` file entry.
    let mut entry = toml::Table::new();
    entry.insert("task".into(), args.task.clone().into());
    if !args.args.is_empty() {
        let mut values = Vec::new();
        for arg in &args.args {
            let value: Value = serde_json::from_str(arg)
                .with_context(|| format!("--arg {arg} is not JSON (quote strings: '\"text\"')"))?;
            values.push(
                toml::Value::try_from(value)
                    .with_context(|| format!("--arg {arg} has no TOML form (null?)"))?,
            );
        }
        entry.insert("args".into(), toml::Value::Array(values));
    }
    for (key, value) in [
        ("queue", &args.queue),
        ("every", &args.every),
        ("cron", &args.cron),
        ("time-zone", &args.time_zone),
        ("solar", &args.solar),
        ("jitter", &args.jitter),
        ("catch-up", &args.catch_up),
    ] {
        if let Some(value) = value {
            entry.insert(key.into(), value.clone().into());
        }
    }
    for (key, value) in [("latitude", args.latitude), ("longitude", args.longitude)] {
        if let Some(value) = value {
            entry.insert(key.into(), value.into());
        }
    }
    let mut schedules = toml::Table::new();
    schedules.insert(args.id.clone(), toml::Value::Table(entry));
    let mut file = toml::Table::new();
    file.insert("schedules".into(), toml::Value::Table(schedules));
    let text = toml::to_string(&file).context("encoding the schedule")?;
    let schedule = crate::config::parse_schedules(&text, "the command line")?
        .pop()
        .context("no schedule")?;
    let mut client =
        pb::scheduling_service_client::SchedulingServiceClient::new(channel(&args.target).await?);
    let created = client
        .create_schedule(args.target.request(pb::CreateScheduleRequest {
            schedule: Some(schedule),
            namespace: args.target.namespace.clone(),
        })?)
        .await
        .map_err(status_error)?
        .into_inner()
        .schedule
        .context("server sent no schedule")?;
    show_schedule(&created, args.target.json);
    Ok(())
}

/// `conveyor queues`: every queue of the namespace with its ready tasks,
/// pause state and consumers.
pub async fn queues(target: Target) -> anyhow::Result<()> {
    let mut dispatch =
        pb::dispatch_service_client::DispatchServiceClient::new(channel(&target).await?);
    let queues = dispatch
        .list_queues(target.request(pb::ListQueuesRequest {
            namespace: target.namespace.clone(),
        })?)
        .await
        .map_err(status_error)?
        .into_inner()
        .queues;
    if target.json {
        let queues: Vec<Value> = queues
            .iter()
            .map(|queue| {
                json!({
                    "name": queue.name,
                    "ready": queue.ready,
                    "ready_by_priority": queue.ready_by_priority.iter().map(|(level, count)| (level.to_string(), json!(count))).collect::<serde_json::Map<_, _>>(),
                    "ready_by_task": queue.ready_by_task,
                    "paused": queue.paused,
                    "workers": queue.workers,
                    "slots": queue.slots,
                })
            })
            .collect();
        print_json(&Value::Array(queues));
        return Ok(());
    }
    if queues.is_empty() {
        println!("(no queues: nothing ready, paused or consumed)");
        return Ok(());
    }
    println!(
        "{:<24} {:>8} {:<7} {:>8} {:>6}  READY BY TASK",
        "QUEUE", "READY", "STATE", "WORKERS", "SLOTS"
    );
    for queue in &queues {
        let by_task: Vec<String> = queue
            .ready_by_task
            .iter()
            .map(|(task, count)| format!("{task}={count}"))
            .collect();
        println!(
            "{:<24} {:>8} {:<7} {:>8} {:>6}  {}",
            queue.name,
            queue.ready,
            if queue.paused { "paused" } else { "active" },
            queue.workers,
            queue.slots,
            by_task.join(" ")
        );
    }
    Ok(())
}
