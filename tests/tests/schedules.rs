//! Periodic schedules end to end: several scheduler replicas fire each run
//! exactly once, the RPCs, bad input, and catch-up after downtime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use conveyor::app::{AppConfig, Role};
use conveyor_api::pb::{self, scheduling_service_client::SchedulingServiceClient};
use conveyor_client::{TaskContext, Worker};
use conveyor_core::time::{ms_from_timestamp, now_ms, timestamp_from_ms};
use conveyor_tests::{Backend, TestCluster, eventually, violated_field};

fn interval_schedule(id: &str, every_ms: u64) -> pb::Schedule {
    pb::Schedule {
        id: id.to_string(),
        task: Some(pb::TaskSpec {
            name: "tick".into(),
            ..Default::default()
        }),
        rule: Some(pb::schedule::Rule::Interval(pb::IntervalRule {
            every: Some(conveyor_core::time::pb_duration(Duration::from_millis(
                every_ms,
            ))),
        })),
        ..Default::default()
    }
}

fn scheduling(cluster: &TestCluster) -> SchedulingServiceClient<tonic::transport::Channel> {
    SchedulingServiceClient::new(cluster.channel.clone())
}

/// A worker of `tick` tasks that records how often each task ran and when it
/// first started (Unix ms).
#[allow(clippy::type_complexity)]
fn tick_worker(
    cluster: &TestCluster,
    stop: CancellationToken,
) -> (
    Arc<Mutex<HashMap<String, u32>>>,
    Arc<Mutex<HashMap<String, i64>>>,
    tokio::task::JoinHandle<()>,
) {
    let starts = Arc::new(Mutex::new(HashMap::new()));
    let started = starts.clone();
    let executions = Arc::new(Mutex::new(HashMap::new()));
    let seen = executions.clone();
    let worker = Worker::from_channel(cluster.channel.clone())
        .worker_id("ticker")
        .concurrency(4)
        .register("tick", move |ctx: TaskContext| {
            let seen = seen.clone();
            let started = started.clone();
            async move {
                started
                    .lock()
                    .unwrap()
                    .entry(ctx.task_id().to_string())
                    .or_insert_with(now_ms);
                *seen
                    .lock()
                    .unwrap()
                    .entry(ctx.task_id().to_string())
                    .or_insert(0) += 1;
                Ok(Value::Null)
            }
        })
        .build()
        .unwrap();
    let handle = tokio::spawn(async move {
        worker.run_until(stop.cancelled_owned()).await.unwrap();
    });
    (executions, starts, handle)
}

/// Four handles on one store: the same memory store, or four connections to
/// the same Redis keys, as separate processes would have.
async fn shared_stores(backend: Backend) -> Option<Vec<Arc<dyn conveyor_store::Store>>> {
    match backend {
        Backend::Memory => {
            let store = TestCluster::store(backend).await?;
            Some(vec![store; 4])
        }
        Backend::Redis => {
            let url = conveyor_store::conformance::test_redis_url()?;
            let config = conveyor_store::conformance::test_redis_config(&url);
            let mut stores: Vec<Arc<dyn conveyor_store::Store>> = Vec::new();
            for _ in 0..4 {
                stores.push(Arc::new(
                    conveyor_store::RedisStore::connect(config.clone())
                        .await
                        .unwrap(),
                ));
            }
            Some(stores)
        }
    }
}

/// A front end (submission, results, dispatch) and three scheduling-only
/// replicas that reach it over gRPC, all on one store.
async fn replicas(backend: Backend) -> Option<(TestCluster, Vec<TestCluster>)> {
    let mut stores = shared_stores(backend).await?;
    let front = TestCluster::start_roles(
        stores.pop().unwrap(),
        &[Role::Submission, Role::Results, Role::Dispatch],
    )
    .await;
    let mut schedulers = Vec::new();
    for store in stores {
        let config = AppConfig {
            roles: vec![Role::Scheduling],
            submission_url: Some(format!("http://{}", front.addr)),
            ..TestCluster::test_config()
        };
        schedulers.push(TestCluster::start_on(store, config).await);
    }
    Some((front, schedulers))
}

/// Three schedules ticking every second, fired by three replicas for
/// `seconds`: each run creates exactly one task, none starts before its fire
/// time (a replica that read the due index before another advanced the
/// schedule once fired the next run early), every run is in the history
/// (none lost to the pause), and nothing fires after the pause.
async fn every_tick_fires_exactly_once(backend: Backend, seconds: u64) {
    let Some((front, schedulers)) = replicas(backend).await else {
        return;
    };
    let stop = CancellationToken::new();
    let (executions, starts, worker) = tick_worker(&front, stop.clone());
    let ids = ["tick-a", "tick-b", "tick-c"];
    let mut firsts = HashMap::new();
    for id in ids {
        let created = scheduling(&schedulers[0])
            .create_schedule(pb::CreateScheduleRequest {
                schedule: Some(interval_schedule(id, 1000)),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .schedule
            .unwrap();
        firsts.insert(id, ms_from_timestamp(&created.next_run_at.unwrap()));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    for id in ids {
        scheduling(&schedulers[1])
            .pause_schedule(pb::PauseScheduleRequest {
                id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let paused_at = now_ms();
    // A run claimed just before the pause settles just after it; and
    // nothing may fire once paused: wait a tick and a half, then look.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut all_runs = Vec::new();
    for id in ids {
        let runs = scheduling(&schedulers[2])
            .list_schedule_runs(pb::ListScheduleRunsRequest {
                id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .runs;
        let mut fires: Vec<i64> = runs
            .iter()
            .map(|run| ms_from_timestamp(run.fire_at.as_ref().unwrap()))
            .collect();
        fires.reverse();
        assert_eq!(
            fires.first(),
            Some(&firsts[id]),
            "{id}: the first run is the creation time"
        );
        for pair in fires.windows(2) {
            assert_eq!(
                pair[1] - pair[0],
                1000,
                "{id}: consecutive runs one tick apart: no gap, no duplicate"
            );
        }
        assert!(
            (runs.len() as i64 - seconds as i64).abs() <= 1,
            "{id}: {} runs in {seconds} s",
            runs.len()
        );
        all_runs.extend(runs);
    }
    println!(
        "{backend:?}: {} runs of 3 schedules in {seconds} s from three replicas",
        all_runs.len()
    );
    let task_ids: std::collections::HashSet<&str> =
        all_runs.iter().map(|run| run.task_id.as_str()).collect();
    assert_eq!(task_ids.len(), all_runs.len(), "one task per run");
    let all_ran = eventually(Duration::from_secs(10), || async {
        let executions = executions.lock().unwrap();
        task_ids.iter().all(|id| executions.contains_key(*id))
    })
    .await;
    assert!(all_ran, "every run's task ran");
    let starts = starts.lock().unwrap().clone();
    for run in &all_runs {
        let fire = ms_from_timestamp(run.fire_at.as_ref().unwrap());
        let started = starts[&run.task_id];
        assert!(
            started >= fire,
            "the run for {fire} started {} ms early",
            fire - started
        );
    }
    // Every task is a recorded run (none lost from the history), and no run
    // was for a time after the pause.
    assert!(
        all_runs
            .iter()
            .all(|run| ms_from_timestamp(run.fire_at.as_ref().unwrap()) <= paused_at),
        "a run fired after the pause"
    );
    let executions = executions.lock().unwrap().clone();
    assert_eq!(
        executions.len(),
        all_runs.len(),
        "every task is a recorded run; nothing fired after the pause at {paused_at}"
    );
    assert!(
        executions.values().all(|count| *count == 1),
        "each ran once"
    );
    let status = scheduling(&schedulers[0])
        .get_scheduler_status(pb::GetSchedulerStatusRequest {
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    println!(
        "{backend:?}: replica 0 submitted {} of them",
        status.schedule_runs_total
    );
    stop.cancel();
    worker.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_redis_fire_every_tick_once_for_21_seconds() {
    every_tick_fires_exactly_once(Backend::Redis, 21).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_memory_fire_every_tick_once() {
    every_tick_fires_exactly_once(Backend::Memory, 8).await;
}

async fn schedule_rpcs_and_bad_input(backend: Backend) {
    let Some(cluster) = TestCluster::start(backend).await else {
        return;
    };
    let mut client = scheduling(&cluster);
    let create = |schedule: pb::Schedule| pb::CreateScheduleRequest {
        schedule: Some(schedule),
        ..Default::default()
    };
    let mut nightly = interval_schedule("nightly", 1000);
    nightly.rule = Some(pb::schedule::Rule::Cron(pb::CronRule {
        expression: "0 3 * * *".into(),
        time_zone: "Europe/Berlin".into(),
    }));
    let stored = client
        .create_schedule(create(nightly.clone()))
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    let next = ms_from_timestamp(&stored.next_run_at.unwrap());
    assert!(next > now_ms() && next <= now_ms() + 25 * 3_600_000);
    let duplicate = client
        .create_schedule(create(nightly.clone()))
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    let listed = client
        .list_schedules(pb::ListSchedulesRequest {
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .schedules;
    assert_eq!(
        listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        vec!["nightly"]
    );
    let mut sunrise = nightly.clone();
    sunrise.rule = Some(pb::schedule::Rule::Solar(pb::SolarRule {
        event: pb::SolarEvent::Sunrise as i32,
        latitude: 52.52,
        longitude: 13.40,
    }));
    let updated = client
        .update_schedule(pb::UpdateScheduleRequest {
            schedule: Some(sunrise),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert!(matches!(updated.rule, Some(pb::schedule::Rule::Solar(_))));
    let paused = client
        .pause_schedule(pb::PauseScheduleRequest {
            id: "nightly".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        paused.schedule.as_ref().unwrap().paused && paused.schedule.unwrap().next_run_at.is_none()
    );
    let resumed = client
        .resume_schedule(pb::ResumeScheduleRequest {
            id: "nightly".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resumed.schedule.unwrap().next_run_at.is_some());
    let run = client
        .trigger_schedule(pb::TriggerScheduleRequest {
            id: "nightly".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert!(run.triggered);
    cluster
        .results()
        .get_task(pb::GetTaskRequest {
            task_id: run.task_id.clone(),
            ..Default::default()
        })
        .await
        .expect("the triggered run's task exists");
    let runs = client
        .list_schedule_runs(pb::ListScheduleRunsRequest {
            id: "nightly".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert_eq!(runs, vec![run]);
    client
        .delete_schedule(pb::DeleteScheduleRequest {
            id: "nightly".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let gone = client
        .get_schedule(pb::GetScheduleRequest {
            id: "nightly".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let gone = client
        .delete_schedule(pb::DeleteScheduleRequest {
            id: "nightly".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    // Bad input names the field and creates nothing.
    let with_rule = |rule: pb::schedule::Rule| pb::Schedule {
        rule: Some(rule),
        ..interval_schedule("bad", 1000)
    };
    let cases = vec![
        (
            with_rule(pb::schedule::Rule::Cron(pb::CronRule {
                expression: "every tuesday".into(),
                time_zone: "UTC".into(),
            })),
            "schedule.cron.expression",
        ),
        (
            with_rule(pb::schedule::Rule::Cron(pb::CronRule {
                expression: "0 * * * *".into(),
                time_zone: "Europe/Atlantis".into(),
            })),
            "schedule.cron.time_zone",
        ),
        (
            with_rule(pb::schedule::Rule::Solar(pb::SolarRule {
                event: pb::SolarEvent::Sunset as i32,
                latitude: 123.0,
                longitude: 0.0,
            })),
            "schedule.solar.latitude",
        ),
        (
            with_rule(pb::schedule::Rule::Interval(pb::IntervalRule {
                every: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 1_000_000,
                }),
            })),
            "schedule.interval.every",
        ),
        (
            // A 7th (year) field: croner would take it; the contract does not.
            with_rule(pb::schedule::Rule::Cron(pb::CronRule {
                expression: "0 0 12 * * * 2030".into(),
                time_zone: "UTC".into(),
            })),
            "schedule.cron.expression",
        ),
        (
            pb::Schedule {
                catch_up: 7,
                ..interval_schedule("bad", 1000)
            },
            "schedule.catch_up",
        ),
        (
            pb::Schedule {
                end_at: Some(prost_types::Timestamp {
                    seconds: 253_402_300_800, // 10000-01-01
                    nanos: 0,
                }),
                ..interval_schedule("bad", 1000)
            },
            "schedule.end_at",
        ),
    ];
    for (schedule, field) in cases {
        let status = client.create_schedule(create(schedule)).await.unwrap_err();
        assert_eq!(
            (status.code(), violated_field(&status).as_deref()),
            (Code::InvalidArgument, Some(field))
        );
    }
    assert!(
        client
            .list_schedules(pb::ListSchedulesRequest {
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .schedules
            .is_empty()
    );
}

async fn missed_runs_follow_the_catch_up_policy(backend: Backend) {
    let Some(store) = TestCluster::store(backend).await else {
        return;
    };
    // Downtime: both schedules were due a minute ago, with no scheduler up.
    let an_hour: i64 = 3_600_000;
    let missed_at = now_ms() - 60_000;
    for (id, policy) in [
        ("skipper", pb::CatchUp::Skip),
        ("catcher", pb::CatchUp::RunOnce),
    ] {
        let mut schedule = interval_schedule(id, an_hour as u64);
        schedule.catch_up = policy as i32;
        schedule.created_at = Some(timestamp_from_ms(missed_at));
        schedule.next_run_at = Some(timestamp_from_ms(missed_at));
        assert!(
            store
                .create_schedule(schedule, Some(missed_at))
                .await
                .unwrap()
                .is_some()
        );
    }
    let cluster = TestCluster::start_on(store.clone(), TestCluster::test_config()).await;
    let mut client = scheduling(&cluster);
    let advanced = eventually(Duration::from_secs(10), || {
        let mut client = client.clone();
        async move {
            let mut all = true;
            for id in ["skipper", "catcher"] {
                let schedule = client
                    .get_schedule(pb::GetScheduleRequest {
                        id: id.into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .schedule
                    .unwrap();
                all &= ms_from_timestamp(schedule.next_run_at.as_ref().unwrap()) > now_ms();
            }
            all
        }
    })
    .await;
    assert!(advanced, "both schedules moved past the downtime");
    let runs = |id: &'static str| {
        let mut client = client.clone();
        async move {
            client
                .list_schedule_runs(pb::ListScheduleRunsRequest {
                    id: id.into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .runs
        }
    };
    assert!(
        runs("skipper").await.is_empty(),
        "SKIP submits nothing for the missed run"
    );
    let caught = runs("catcher").await;
    assert_eq!(caught.len(), 1, "RUN_ONCE submits exactly one");
    let skipper = client
        .get_schedule(pb::GetScheduleRequest {
            id: "skipper".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert_eq!(
        ms_from_timestamp(skipper.next_run_at.as_ref().unwrap()),
        missed_at + an_hour,
        "back on its cadence"
    );
}

conveyor_tests::on_both_stores!(
    schedule_rpcs_and_bad_input,
    missed_runs_follow_the_catch_up_policy
);
