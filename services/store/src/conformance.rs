//! One conformance suite for every backend. `conformance_suite!(name, factory)`
//! expands to a `#[tokio::test]` per case; the factory returns a fresh, empty
//! store (for Redis: a unique key prefix on the test server).

use std::sync::Arc;
use std::time::Duration;

use conveyor_api::pb;
use conveyor_core::validate::validate_spec;
use conveyor_core::{ConveyorError, Limits, NewTask, TaskState};

use crate::types::*;
use crate::{MemoryStore, RedisConfig, RedisStore, Store};

/// Fresh memory store.
pub async fn memory_store() -> Arc<dyn Store> {
    Arc::new(MemoryStore::new())
}

/// The test Redis URL: `CONVEYOR_TEST_REDIS`, which `scripts/test` sets. Without
/// it Redis tests fail loudly, unless `CONVEYOR_SKIP_REDIS=1` says to skip.
pub fn test_redis_url() -> Option<String> {
    match std::env::var("CONVEYOR_TEST_REDIS") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CONVEYOR_SKIP_REDIS").as_deref() == Ok("1") => None,
        _ => panic!(
            "CONVEYOR_TEST_REDIS is not set: run scripts/test, or set CONVEYOR_SKIP_REDIS=1 to skip Redis tests"
        ),
    }
}

/// A config on the test Redis with a key prefix of its own, and
/// `CONVEYOR_TEST_PARTITIONS` partitions (default 1): `scripts/test` runs the
/// platform suites at 8 as well, so that no setting but the default goes
/// untested.
pub fn test_redis_config(url: &str) -> RedisConfig {
    let mut config = RedisConfig::new(url);
    // `rediss://` test URLs: the CA and client certificate from CONVEYOR_REDIS_TLS_*.
    config.tls = crate::RedisTls::from_env();
    config.prefix = format!("test-{}:", uuid::Uuid::new_v4().simple());
    config.partitions = test_partitions();
    config
}

/// `CONVEYOR_TEST_PARTITIONS`, default 1.
pub fn test_partitions() -> u16 {
    std::env::var("CONVEYOR_TEST_PARTITIONS")
        .ok()
        .and_then(|value| value.parse().ok())
        .filter(|partitions| *partitions >= 1)
        .unwrap_or(1)
}

/// Fresh Redis store with a unique prefix, or `None` when Redis tests are skipped.
pub async fn redis_store() -> Option<Arc<dyn Store>> {
    let url = test_redis_url()?;
    // The cases drive virtual time (NOW + …): the store compares on it.
    let mut config = test_redis_config(&url);
    config.clock = crate::redis::StoreClock::Caller;
    let store = RedisStore::connect(config)
        .await
        .expect("connect to test redis");
    Some(Arc::new(store))
}

/// Runs each case against a backend factory returning `Option<Arc<dyn Store>>`
/// or `Arc<dyn Store>` (wrap the latter with `async { Some(..) }`).
#[macro_export]
macro_rules! conformance_suite {
    ($backend:ident, $factory:expr) => {
        mod $backend {
            $crate::conformance_suite!(@cases $factory;
                lease_complete_and_fencing, release_requeues_and_fences_stale_tokens,
                lease_respects_task_names, scheduled_tasks_promote_when_due, idempotency_returns_first_task,
                cancel_queued_and_scheduled_only, heartbeats_extend_and_reaper_requeues,
                retries_reschedule_with_backoff, expired_tasks_never_lease, started_marks_running_when_fenced,
                notifications_reach_waiters, wait_times_out_without_changes, batch_lease_takes_many,
                progress_is_fenced_and_visible, dead_letters_replay_and_forget, unstarted_tasks_expire_without_workers,
                eta_an_hour_ahead_runs_once_when_due, higher_priorities_lease_first, schedules_claim_by_compare_and_set,
                rate_limits_space_starts_and_park_without_loss, concurrency_permits_pass_to_waiters, paused_queues_hand_out_nothing,
                several_keys_are_taken_all_or_nothing, waiters_for_several_keys_are_not_starved,
                events_follow_every_transition, workflow_chains_and_chords_pass_results_in_order,
                workflow_failures_fail_dependents_and_fire_link_error_once,
                workflow_cancel_stops_every_node, workflow_link_error_is_skipped_and_keys_dedupe,
                replicas_announce_sessions_and_workers_until_they_lapse);
        }
    };
    (@cases $factory:expr; $($case:ident),*) => {
        $(
            #[tokio::test]
            async fn $case() {
                let Some(store) = $factory().await else {
                    eprintln!("skipped: CONVEYOR_SKIP_REDIS=1");
                    return;
                };
                $crate::conformance::$case(store).await;
            }
        )*
    };
}

const NOW: i64 = 1_800_000_000_000;

/// `ms` in the microseconds that [`Store::complete`] takes.
fn us(ms: i64) -> i64 {
    ms * 1000
}

fn json(text: &str) -> pb::Payload {
    pb::Payload {
        data: text.as_bytes().to_vec(),
        content_type: String::new(),
    }
}

fn task(name: &str, options: pb::TaskOptions, partitions: u16) -> NewTask {
    let spec = pb::TaskSpec {
        name: name.to_string(),
        args: vec![json("1"), json("2")],
        options: Some(options),
        ..Default::default()
    };
    let partition = (rand::random::<u16>()) % partitions.max(1);
    validate_spec(spec, "task", &Limits::default(), NOW, partition).expect("valid spec")
}

fn plain(store: &Arc<dyn Store>, name: &str) -> NewTask {
    task(name, pb::TaskOptions::default(), store.partitions())
}

fn lease_request(session: &str, names: &[&str], max: usize, now_ms: i64) -> LeaseRequest {
    LeaseRequest {
        session_id: session.to_string(),
        worker_id: format!("worker-{session}"),
        queue_keys: names
            .iter()
            .map(|name| QueueKey::new("default", name))
            .collect(),
        max,
        lease_deadline_ms: now_ms + 10_000,
        now_ms,
    }
}

fn success(id: conveyor_core::TaskId, session: &str, token: u64, value: &str) -> OutcomeReport {
    OutcomeReport {
        id,
        session_id: session.to_string(),
        lease_token: token,
        outcome: Outcome::Succeeded(json(value)),
    }
}

async fn state_of(store: &Arc<dyn Store>, id: conveyor_core::TaskId) -> TaskState {
    store
        .get(id, NOW)
        .await
        .unwrap()
        .expect("task exists")
        .state
}

/// Lease, complete once; a second outcome for the same lease is refused.
pub async fn lease_complete_and_fencing(store: Arc<dyn Store>) {
    let acks = store
        .enqueue(vec![plain(&store, "add")], NOW)
        .await
        .unwrap();
    let id = acks[0].id;
    assert_eq!(acks[0].state, Some(TaskState::Queued));
    let leased = store
        .lease(lease_request("s1", &["add"], 10, NOW))
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(
        (leased[0].id, leased[0].attempt, leased[0].lease_token),
        (id, 1, 1)
    );
    assert_eq!(leased[0].record.name, "add");
    assert_eq!(state_of(&store, id).await, TaskState::Leased);
    let first = store
        .complete(vec![success(id, "s1", 1, "3")], us(NOW + 1) + 250)
        .await
        .unwrap();
    assert_eq!(first, vec![OutcomeAck::Recorded(TaskState::Succeeded)]);
    let second = store
        .complete(vec![success(id, "s1", 1, "99")], us(NOW + 2))
        .await
        .unwrap();
    assert_eq!(second, vec![OutcomeAck::NotHeld]);
    let stored = store.get(id, NOW + 3).await.unwrap().unwrap();
    assert_eq!(stored.state, TaskState::Succeeded);
    assert_eq!(stored.to_pb().result.unwrap().data, b"3");
    assert_eq!(stored.worker_id, "worker-s1");
    // The finish time of a reported outcome keeps its microseconds.
    assert_eq!(stored.finished_at_ms, NOW + 1);
    let finished = stored.to_pb().finished_at.unwrap();
    assert_eq!(
        (finished.seconds, finished.nanos),
        (
            (NOW + 1) / 1000,
            ((NOW + 1) % 1000 * 1000 + 250) as i32 * 1000
        )
    );
    let missing = store
        .complete(
            vec![success(conveyor_core::TaskId::new(0), "s1", 1, "1")],
            us(NOW),
        )
        .await
        .unwrap();
    assert_eq!(missing, vec![OutcomeAck::NotFound]);
}

/// A released session's task is leased again with a new token; the old token
/// can no longer record an outcome.
pub async fn release_requeues_and_fences_stale_tokens(store: Arc<dyn Store>) {
    let id = store
        .enqueue(vec![plain(&store, "add")], NOW)
        .await
        .unwrap()[0]
        .id;
    store
        .lease(lease_request("s1", &["add"], 1, NOW))
        .await
        .unwrap();
    let requeued = store.release_session("s1", NOW + 1).await.unwrap();
    assert_eq!(requeued, vec![id]);
    assert_eq!(state_of(&store, id).await, TaskState::Queued);
    let again = store
        .lease(lease_request("s2", &["add"], 1, NOW + 2))
        .await
        .unwrap();
    assert_eq!((again[0].attempt, again[0].lease_token), (2, 2));
    let stale = store
        .complete(vec![success(id, "s1", 1, "1")], us(NOW + 3))
        .await
        .unwrap();
    assert_eq!(stale, vec![OutcomeAck::StaleLease]);
    let wrong_session = store
        .complete(vec![success(id, "s1", 2, "1")], us(NOW + 3))
        .await
        .unwrap();
    assert_eq!(wrong_session, vec![OutcomeAck::NotHeld]);
    assert_eq!(state_of(&store, id).await, TaskState::Leased);
    let good = store
        .complete(vec![success(id, "s2", 2, "3")], us(NOW + 4))
        .await
        .unwrap();
    assert_eq!(good, vec![OutcomeAck::Recorded(TaskState::Succeeded)]);
    assert!(
        store
            .release_session("s2", NOW + 5)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A worker is never handed a task name it did not register.
pub async fn lease_respects_task_names(store: Arc<dyn Store>) {
    store
        .enqueue(vec![plain(&store, "other")], NOW)
        .await
        .unwrap();
    let leased = store
        .lease(lease_request("s1", &["add"], 10, NOW))
        .await
        .unwrap();
    assert!(leased.is_empty());
    let leased = store
        .lease(lease_request("s1", &["add", "other"], 10, NOW))
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);
}

/// Countdown tasks wait in SCHEDULED until promoted at their due time.
pub async fn scheduled_tasks_promote_when_due(store: Arc<dyn Store>) {
    let options = pb::TaskOptions {
        countdown: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
        ..Default::default()
    };
    let id = store
        .enqueue(vec![task("add", options, store.partitions())], NOW)
        .await
        .unwrap()[0]
        .id;
    assert_eq!(state_of(&store, id).await, TaskState::Scheduled);
    let summary = store.scheduled_summary().await.unwrap();
    assert_eq!(
        (summary.count, summary.next_due_ms),
        (1, Some(NOW + 60_000))
    );
    let early = store.promote_due(NOW + 59_999, 100).await.unwrap();
    assert_eq!((early.promoted, early.next_due_ms), (0, Some(NOW + 60_000)));
    assert!(
        store
            .lease(lease_request("s1", &["add"], 1, NOW + 59_999))
            .await
            .unwrap()
            .is_empty()
    );
    let due = store.promote_due(NOW + 60_000, 100).await.unwrap();
    assert_eq!((due.promoted, due.next_due_ms), (1, None));
    assert_eq!(state_of(&store, id).await, TaskState::Queued);
    assert_eq!(
        store
            .lease(lease_request("s1", &["add"], 1, NOW + 60_001))
            .await
            .unwrap()
            .len(),
        1
    );
}

/// The same idempotency key returns the first task and creates nothing.
pub async fn idempotency_returns_first_task(store: Arc<dyn Store>) {
    let mut first = plain(&store, "add");
    first.idempotency_key = Some("order-42".into());
    let mut second = plain(&store, "add");
    second.idempotency_key = Some("order-42".into());
    // Placed by the store, as the submission service has it done.
    store.place(std::slice::from_mut(&mut first));
    store.place(std::slice::from_mut(&mut second));
    let acks = store.enqueue(vec![first.clone()], NOW).await.unwrap();
    let again = store.enqueue(vec![second.clone()], NOW + 1).await.unwrap();
    assert!(!acks[0].duplicate);
    assert!(again[0].duplicate);
    assert_eq!(again[0].id, acks[0].id);
    assert!(store.get(second.id, NOW).await.unwrap().is_none());
    assert_eq!(
        store
            .lease(lease_request("s1", &["add"], 10, NOW))
            .await
            .unwrap()
            .len(),
        1
    );
}

/// QUEUED and SCHEDULED tasks cancel; leased and finished ones do not.
pub async fn cancel_queued_and_scheduled_only(store: Arc<dyn Store>) {
    let queued = store
        .enqueue(vec![plain(&store, "add")], NOW)
        .await
        .unwrap()[0]
        .id;
    let options = pb::TaskOptions {
        countdown: Some(prost_types::Duration {
            seconds: 5,
            nanos: 0,
        }),
        ..Default::default()
    };
    let scheduled = store
        .enqueue(vec![task("add", options, store.partitions())], NOW)
        .await
        .unwrap()[0]
        .id;
    assert_eq!(
        store.cancel(queued, NOW).await.unwrap(),
        CancelAck::Cancelled
    );
    assert_eq!(
        store.cancel(scheduled, NOW).await.unwrap(),
        CancelAck::Cancelled
    );
    assert_eq!(state_of(&store, queued).await, TaskState::Cancelled);
    assert_eq!(store.scheduled_summary().await.unwrap().count, 0);
    assert!(
        store
            .lease(lease_request("s1", &["add"], 10, NOW))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.cancel(queued, NOW).await.unwrap(),
        CancelAck::NotCancellable(TaskState::Cancelled)
    );
    let leased = store
        .enqueue(vec![plain(&store, "add")], NOW)
        .await
        .unwrap()[0]
        .id;
    let mut session = store.events().register_session("s1");
    store
        .lease(lease_request("s1", &["add"], 1, NOW))
        .await
        .unwrap();
    assert_eq!(
        store.cancel(leased, NOW).await.unwrap(),
        CancelAck::Cancelled
    );
    let revoked = tokio::time::timeout(Duration::from_secs(2), session.revoked()).await;
    assert_eq!(
        revoked.expect("the session is told").expect("an id"),
        leased
    );
    let late = store
        .complete(vec![success(leased, "s1", 1, "1")], us(NOW))
        .await
        .unwrap();
    assert_eq!(
        late,
        vec![OutcomeAck::NotHeld],
        "a revoked task's late outcome is ignored"
    );
    assert_eq!(state_of(&store, leased).await, TaskState::Cancelled);
    assert!(store.release_session("s1", NOW).await.unwrap().is_empty());
    assert_eq!(
        store
            .cancel(conveyor_core::TaskId::new(0), NOW)
            .await
            .unwrap(),
        CancelAck::NotFound
    );
}

/// Heartbeats move the deadline; past it the reaper requeues the leases.
pub async fn heartbeats_extend_and_reaper_requeues(store: Arc<dyn Store>) {
    assert!(!store.heartbeat("s1", NOW + 1000, NOW).await.unwrap());
    let id = store
        .enqueue(vec![plain(&store, "add")], NOW)
        .await
        .unwrap()[0]
        .id;
    let mut request = lease_request("s1", &["add"], 1, NOW);
    request.lease_deadline_ms = NOW + 100;
    store.lease(request).await.unwrap();
    assert!(store.heartbeat("s1", NOW + 1000, NOW).await.unwrap());
    assert!(store.reap_expired(NOW + 500, 100).await.unwrap().is_empty());
    assert_eq!(store.reap_expired(NOW + 1500, 100).await.unwrap(), vec![id]);
    assert_eq!(state_of(&store, id).await, TaskState::Queued);
    assert!(!store.heartbeat("s1", NOW + 3000, NOW).await.unwrap());
    let again = store
        .lease(lease_request("s2", &["add"], 1, NOW + 1600))
        .await
        .unwrap();
    assert_eq!(again[0].attempt, 2);
}

/// A failure with a retry time goes back to SCHEDULED; without, to FAILED.
pub async fn retries_reschedule_with_backoff(store: Arc<dyn Store>) {
    let id = store
        .enqueue(vec![plain(&store, "add")], NOW)
        .await
        .unwrap()[0]
        .id;
    store
        .lease(lease_request("s1", &["add"], 1, NOW))
        .await
        .unwrap();
    let error = pb::TaskError {
        r#type: "ValueError".into(),
        message: "boom".into(),
        traceback: "line 1".into(),
        retryable: true,
        retry_after: None,
        reason: 0,
        cause_task_id: String::new(),
    };
    let retry = OutcomeReport {
        id,
        session_id: "s1".into(),
        lease_token: 1,
        outcome: Outcome::Failed {
            error: error.clone(),
            retry_at_ms: Some(NOW + 2000),
        },
    };
    assert_eq!(
        store.complete(vec![retry], us(NOW)).await.unwrap(),
        vec![OutcomeAck::Recorded(TaskState::Scheduled)]
    );
    let stored = store.get(id, NOW).await.unwrap().unwrap();
    assert_eq!(
        (stored.state, stored.failures, stored.due_at_ms),
        (TaskState::Scheduled, 1, NOW + 2000)
    );
    assert_eq!(store.promote_due(NOW + 2000, 10).await.unwrap().promoted, 1);
    let leased = store
        .lease(lease_request("s1", &["add"], 1, NOW + 2001))
        .await
        .unwrap();
    assert_eq!((leased[0].attempt, leased[0].failures), (2, 1));
    let fail = OutcomeReport {
        id,
        session_id: "s1".into(),
        lease_token: leased[0].lease_token,
        outcome: Outcome::Failed {
            error,
            retry_at_ms: None,
        },
    };
    assert_eq!(
        store.complete(vec![fail], us(NOW + 2002)).await.unwrap(),
        vec![OutcomeAck::Recorded(TaskState::Failed)]
    );
    let failed = store.get(id, NOW + 2003).await.unwrap().unwrap().to_pb();
    assert_eq!(failed.failures, 2);
    assert_eq!(failed.error.unwrap().message, "boom");
}

/// A task past `expires` becomes EXPIRED instead of reaching a worker.
pub async fn expired_tasks_never_lease(store: Arc<dyn Store>) {
    let options = pb::TaskOptions {
        expires: Some(conveyor_core::time::timestamp_from_ms(NOW + 10)),
        ..Default::default()
    };
    let id = store
        .enqueue(vec![task("add", options, store.partitions())], NOW)
        .await
        .unwrap()[0]
        .id;
    assert!(
        store
            .lease(lease_request("s1", &["add"], 1, NOW + 20))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(state_of(&store, id).await, TaskState::Expired);
}

/// TaskStarted marks RUNNING only with the current token and session.
pub async fn started_marks_running_when_fenced(store: Arc<dyn Store>) {
    let id = store
        .enqueue(vec![plain(&store, "add")], NOW)
        .await
        .unwrap()[0]
        .id;
    store
        .lease(lease_request("s1", &["add"], 1, NOW))
        .await
        .unwrap();
    let wrong = StartReport {
        id,
        session_id: "s1".into(),
        lease_token: 7,
    };
    store.mark_started(vec![wrong], NOW).await.unwrap();
    assert_eq!(state_of(&store, id).await, TaskState::Leased);
    let right = StartReport {
        id,
        session_id: "s1".into(),
        lease_token: 1,
    };
    store.mark_started(vec![right], NOW).await.unwrap();
    assert_eq!(state_of(&store, id).await, TaskState::Running);
    let ack = store
        .complete(vec![success(id, "s1", 1, "1")], us(NOW))
        .await
        .unwrap();
    assert_eq!(ack, vec![OutcomeAck::Recorded(TaskState::Succeeded)]);
}

/// Task waiters and queue waiters are woken by the changes they wait for.
pub async fn notifications_reach_waiters(store: Arc<dyn Store>) {
    let ready = Arc::new(crate::QueueWaiter::default());
    store
        .events()
        .register_queue_waiter(&[QueueKey::new("default", "add")], &ready);
    let id = store
        .enqueue(vec![plain(&store, "add")], NOW)
        .await
        .unwrap()[0]
        .id;
    tokio::time::timeout(Duration::from_secs(2), ready.notified())
        .await
        .expect("queue waiter woken by enqueue");
    let mut events = store.events().subscribe_task(id);
    // Stores may notify only watched tasks' changes.
    store.watch(id, NOW).await.unwrap().expect("task exists");
    store
        .lease(lease_request("s1", &["add"], 1, NOW))
        .await
        .unwrap();
    store
        .complete(vec![success(id, "s1", 1, "3")], us(NOW))
        .await
        .unwrap();
    // Woken by the lease, then by the completion (which may carry the task).
    let finished = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let Some(task) = events.changed().await {
                return task;
            }
            if store.get(id, NOW).await.unwrap().unwrap().state == TaskState::Succeeded {
                return Arc::new(store.get(id, NOW).await.unwrap().unwrap());
            }
        }
    })
    .await
    .expect("task waiter woken by completion");
    assert_eq!(finished.state, TaskState::Succeeded);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let done = crate::wait_terminal(
        store.as_ref(),
        &conveyor_core::Namespace::default(),
        id,
        deadline,
    )
    .await
    .unwrap();
    assert_eq!(done.state, TaskState::Succeeded);
}

/// A wait that times out reports DeadlineExceeded and changes nothing.
pub async fn wait_times_out_without_changes(store: Arc<dyn Store>) {
    let id = store
        .enqueue(vec![plain(&store, "add")], NOW)
        .await
        .unwrap()[0]
        .id;
    let before = store.get(id, NOW).await.unwrap().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
    let error = crate::wait_terminal(
        store.as_ref(),
        &conveyor_core::Namespace::default(),
        id,
        deadline,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, ConveyorError::DeadlineExceeded(_)),
        "{error:?}"
    );
    let after = store.get(id, NOW).await.unwrap().unwrap();
    assert_eq!(
        (before.state, before.attempt, before.updated_at_ms),
        (after.state, after.attempt, after.updated_at_ms)
    );
    let missing = crate::wait_terminal(
        store.as_ref(),
        &conveyor_core::Namespace::default(),
        conveyor_core::TaskId::new(0),
        deadline,
    )
    .await;
    assert!(matches!(missing, Err(ConveyorError::NotFound { .. })));
}

/// One lease call takes many tasks, FIFO within a queue key.
pub async fn batch_lease_takes_many(store: Arc<dyn Store>) {
    let tasks: Vec<NewTask> = (0..50).map(|_| plain(&store, "add")).collect();
    let ids: Vec<_> = store
        .enqueue(tasks, NOW)
        .await
        .unwrap()
        .into_iter()
        .map(|ack| ack.id)
        .collect();
    let leased = store
        .lease(lease_request("s1", &["add"], 20, NOW))
        .await
        .unwrap();
    assert_eq!(leased.len(), 20);
    if store.partitions() == 1 {
        let leased_ids: Vec<_> = leased.iter().map(|task| task.id).collect();
        assert_eq!(leased_ids, ids[..20].to_vec());
    }
    let rest = store
        .lease(lease_request("s2", &["add"], 100, NOW))
        .await
        .unwrap();
    assert_eq!(rest.len(), 30);
}

/// Progress is recorded only for the current lease, and shows on the task.
pub async fn progress_is_fenced_and_visible(store: Arc<dyn Store>) {
    let id = store
        .enqueue(vec![plain(&store, "add")], NOW)
        .await
        .unwrap()[0]
        .id;
    store
        .lease(lease_request("s1", &["add"], 1, NOW))
        .await
        .unwrap();
    let report = |token: u64, percent: f64| ProgressReport {
        id,
        session_id: "s1".into(),
        lease_token: token,
        progress: pb::Progress {
            state: "CRUNCHING".into(),
            percent,
            meta: Some(json("{\"rows\": 10}")),
            reported_at: None,
        },
    };
    store
        .record_progress(vec![report(9, 10.0)], NOW + 1)
        .await
        .unwrap();
    assert!(
        store
            .get(id, NOW)
            .await
            .unwrap()
            .unwrap()
            .progress
            .is_none()
    );
    store
        .record_progress(vec![report(1, 50.0)], NOW + 2)
        .await
        .unwrap();
    let shown = store
        .get(id, NOW)
        .await
        .unwrap()
        .unwrap()
        .to_pb()
        .progress
        .expect("progress");
    assert_eq!((shown.state.as_str(), shown.percent), ("CRUNCHING", 50.0));
    let reported = shown
        .reported_at
        .map(|at| conveyor_core::time::ms_from_timestamp(&at));
    assert_eq!(reported, Some(NOW + 2));
}

/// A final failure is a dead letter until replayed or forgotten.
pub async fn dead_letters_replay_and_forget(store: Arc<dyn Store>) {
    let id = store
        .enqueue(vec![plain(&store, "add")], NOW)
        .await
        .unwrap()[0]
        .id;
    assert_eq!(
        store.forget(id).await.unwrap(),
        ForgetAck::NotFinished(TaskState::Queued)
    );
    assert_eq!(
        store.replay(id, NOW).await.unwrap(),
        ReplayAck::NotFailed(TaskState::Queued)
    );
    store
        .lease(lease_request("s1", &["add"], 1, NOW))
        .await
        .unwrap();
    let error = pb::TaskError {
        r#type: "ValueError".into(),
        message: "bad".into(),
        ..Default::default()
    };
    let fail = OutcomeReport {
        id,
        session_id: "s1".into(),
        lease_token: 1,
        outcome: Outcome::Failed {
            error,
            retry_at_ms: None,
        },
    };
    store.complete(vec![fail], us(NOW + 1)).await.unwrap();
    let (dead, next) = store
        .dead_letters(DeadLetterCursor::default(), 10)
        .await
        .unwrap();
    assert_eq!(
        dead.iter().map(|task| task.id).collect::<Vec<_>>(),
        vec![id]
    );
    assert!(next.is_none());
    assert_eq!(
        store.replay(id, NOW + 2).await.unwrap(),
        ReplayAck::Replayed
    );
    assert!(
        store
            .dead_letters(DeadLetterCursor::default(), 10)
            .await
            .unwrap()
            .0
            .is_empty()
    );
    let again = store
        .lease(lease_request("s2", &["add"], 1, NOW + 3))
        .await
        .unwrap();
    assert_eq!((again[0].attempt, again[0].failures), (2, 0));
    store
        .complete(vec![success(id, "s2", 2, "7")], us(NOW + 4))
        .await
        .unwrap();
    assert_eq!(store.forget(id).await.unwrap(), ForgetAck::Forgotten);
    assert!(store.get(id, NOW + 5).await.unwrap().is_none());
    assert_eq!(store.forget(id).await.unwrap(), ForgetAck::NotFound);
    assert_eq!(store.replay(id, NOW).await.unwrap(), ReplayAck::NotFound);
}

/// A task nobody starts before `expires` becomes EXPIRED by itself.
pub async fn unstarted_tasks_expire_without_workers(store: Arc<dyn Store>) {
    let expiring = pb::TaskOptions {
        expires: Some(conveyor_core::time::timestamp_from_ms(NOW + 10)),
        ..Default::default()
    };
    let queued = store
        .enqueue(vec![task("add", expiring, store.partitions())], NOW)
        .await
        .unwrap()[0]
        .id;
    let delayed = pb::TaskOptions {
        countdown: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
        expires: Some(conveyor_core::time::timestamp_from_ms(NOW + 90_000)),
        ..Default::default()
    };
    let scheduled = store
        .enqueue(vec![task("add", delayed, store.partitions())], NOW)
        .await
        .unwrap()[0]
        .id;
    assert_eq!(store.promote_due(NOW + 5, 100).await.unwrap().expired, 0);
    assert_eq!(store.promote_due(NOW + 20, 100).await.unwrap().expired, 1);
    assert_eq!(state_of(&store, queued).await, TaskState::Expired);
    // Promoted at 60 s but never leased: it expires in its queue at 90 s.
    assert_eq!(
        store.promote_due(NOW + 60_000, 100).await.unwrap().promoted,
        1
    );
    assert_eq!(
        store.promote_due(NOW + 90_000, 100).await.unwrap().expired,
        1
    );
    assert_eq!(state_of(&store, scheduled).await, TaskState::Expired);
    assert!(
        store
            .lease(lease_request("s1", &["add"], 10, NOW + 90_001))
            .await
            .unwrap()
            .is_empty()
    );
}

/// An ETA an hour ahead: not a millisecond early, exactly once when due.
pub async fn eta_an_hour_ahead_runs_once_when_due(store: Arc<dyn Store>) {
    let hour = 3_600_000;
    let options = pb::TaskOptions {
        eta: Some(conveyor_core::time::timestamp_from_ms(NOW + hour)),
        ..Default::default()
    };
    let id = store
        .enqueue(vec![task("add", options, store.partitions())], NOW)
        .await
        .unwrap()[0]
        .id;
    for minute in [1, 30, 59] {
        let now = NOW + minute * 60_000;
        assert_eq!(store.promote_due(now, 100).await.unwrap().promoted, 0);
        assert!(
            store
                .lease(lease_request("s1", &["add"], 1, now))
                .await
                .unwrap()
                .is_empty()
        );
    }
    assert_eq!(
        store
            .promote_due(NOW + hour - 1, 100)
            .await
            .unwrap()
            .promoted,
        0
    );
    assert_eq!(
        store.promote_due(NOW + hour, 100).await.unwrap().promoted,
        1
    );
    let leased = store
        .lease(lease_request("s1", &["add"], 10, NOW + hour))
        .await
        .unwrap();
    assert_eq!(
        leased.iter().map(|task| task.id).collect::<Vec<_>>(),
        vec![id]
    );
    assert_eq!(
        store
            .promote_due(NOW + 2 * hour, 100)
            .await
            .unwrap()
            .promoted,
        0
    );
    assert!(
        store
            .lease(lease_request("s2", &["add"], 10, NOW + 2 * hour))
            .await
            .unwrap()
            .is_empty()
    );
}

/// Higher priority levels lease first; FIFO within a level; a released task
/// keeps its level.
pub async fn higher_priorities_lease_first(store: Arc<dyn Store>) {
    let mut ids_by_priority = Vec::new();
    for (index, priority) in [0u32, 5, 9, 5, 0, 9].into_iter().enumerate() {
        let options = pb::TaskOptions {
            priority,
            ..Default::default()
        };
        // One partition for a total order (partitions order only within themselves).
        let mut new = task("add", options, 1);
        new.id = conveyor_core::TaskId::new(0);
        let id = store.enqueue(vec![new], NOW + index as i64).await.unwrap()[0].id;
        ids_by_priority.push((priority, id));
    }
    let expected: Vec<_> = [2usize, 5, 1, 3, 0, 4]
        .iter()
        .map(|index| ids_by_priority[*index].1)
        .collect();
    let leased = store
        .lease(lease_request("s1", &["add"], 2, NOW + 10))
        .await
        .unwrap();
    assert_eq!(
        leased.iter().map(|task| task.id).collect::<Vec<_>>(),
        expected[..2].to_vec()
    );
    store.release_session("s1", NOW + 11).await.unwrap();
    let all = store
        .lease(lease_request("s2", &["add"], 10, NOW + 12))
        .await
        .unwrap();
    let order: Vec<_> = all.iter().map(|task| task.id).collect();
    assert_eq!(order, expected, "levels 9, 9, 5, 5, 0, 0, FIFO within each");
}

/// Schedules: create once, list, due; a run is claimed by one of two racing
/// replicas, only when due, not paused and at the version read; a claim
/// left unsettled comes back; updates are compare-and-set on the version.
pub async fn schedules_claim_by_compare_and_set(store: Arc<dyn Store>) {
    let schedule = |id: &str| pb::Schedule {
        id: id.to_string(),
        task: Some(pb::TaskSpec {
            name: "tick".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let due_ids = |due: &crate::DueSchedules| {
        due.due
            .iter()
            .map(|s| s.id.clone())
            .collect::<Vec<String>>()
    };
    assert_eq!(
        store
            .create_schedule(schedule("b"), Some(NOW + 1000))
            .await
            .unwrap(),
        Some(1)
    );
    assert_eq!(
        store
            .create_schedule(schedule("a"), Some(NOW + 5000))
            .await
            .unwrap(),
        Some(1)
    );
    assert_eq!(
        store
            .create_schedule(schedule("a"), Some(NOW))
            .await
            .unwrap(),
        None,
        "ids are unique"
    );
    let ids: Vec<String> = store
        .list_schedules()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, vec!["a", "b"]);
    assert!(due_ids(&store.due_schedules(NOW + 999, 10).await.unwrap()).is_empty());
    let due = store.due_schedules(NOW + 1000, 10).await.unwrap();
    assert_eq!(due_ids(&due), vec!["b"]);
    assert_eq!(due.due[0].version, 1);
    let mut advanced = schedule("b");
    advanced.runs = 1;
    // Not due yet on the store's clock: no claim, however the caller asks.
    assert!(
        !store
            .claim_schedule_run(
                1,
                NOW + 1000,
                advanced.clone(),
                Some(NOW + 2000),
                5000,
                NOW + 999
            )
            .await
            .unwrap(),
        "a run is never claimed before its time"
    );
    let first = store.claim_schedule_run(
        1,
        NOW + 1000,
        advanced.clone(),
        Some(NOW + 2000),
        5000,
        NOW + 1000,
    );
    let second = store.claim_schedule_run(
        1,
        NOW + 1000,
        advanced.clone(),
        Some(NOW + 2000),
        5000,
        NOW + 1000,
    );
    assert!(first.await.unwrap());
    assert!(!second.await.unwrap(), "the slower replica loses");
    // The winner's claim lapses unsettled: it comes back after its deadline.
    assert!(
        store
            .due_schedules(NOW + 1500, 10)
            .await
            .unwrap()
            .unsettled
            .is_empty()
    );
    let lapsed = store.due_schedules(NOW + 6000, 10).await.unwrap();
    assert_eq!(lapsed.unsettled, vec![("b".to_string(), NOW + 1000)]);
    let run = pb::ScheduleRun {
        fire_at: Some(conveyor_core::time::timestamp_from_ms(NOW + 1000)),
        task_id: "t1".into(),
        triggered: false,
    };
    assert!(
        store
            .settle_schedule_run("b", NOW + 1000, Some(run.clone()))
            .await
            .unwrap()
    );
    assert!(
        !store
            .settle_schedule_run("b", NOW + 1000, Some(run.clone()))
            .await
            .unwrap(),
        "a run is recorded once"
    );
    assert_eq!(store.schedule_runs("b").await.unwrap(), vec![run]);
    let stored = store.get_schedule("b").await.unwrap().unwrap();
    assert_eq!((stored.runs, stored.version), (1, 2));
    // Compare-and-set on the version: a stale writer changes nothing.
    assert_eq!(
        store
            .replace_schedule(schedule("b"), None, Some(1))
            .await
            .unwrap(),
        crate::SchedulePut::Conflict
    );
    // Paused (no next run): never due, never claimed.
    assert_eq!(
        store
            .replace_schedule(schedule("b"), None, Some(2))
            .await
            .unwrap(),
        crate::SchedulePut::Stored(3)
    );
    assert!(
        !due_ids(&store.due_schedules(NOW + 100_000, 10).await.unwrap()).contains(&"b".to_string())
    );
    assert!(
        !store
            .claim_schedule_run(
                3,
                NOW + 2000,
                advanced.clone(),
                Some(NOW + 3000),
                5000,
                NOW + 100_000
            )
            .await
            .unwrap(),
        "a paused schedule never fires"
    );
    assert_eq!(
        store
            .replace_schedule(schedule("zz"), None, None)
            .await
            .unwrap(),
        crate::SchedulePut::NotFound
    );
    assert!(store.delete_schedule("b").await.unwrap());
    assert!(!store.delete_schedule("b").await.unwrap());
    assert!(store.get_schedule("b").await.unwrap().is_none());
    assert!(store.schedule_runs("b").await.unwrap().is_empty());
}

fn limited(store: &Arc<dyn Store>, options: pb::TaskOptions) -> NewTask {
    let mut new = task("add", options, 1);
    new.id = conveyor_core::TaskId::new(0);
    let _ = store;
    new
}

/// 10/s: the first start is immediate, the rest are parked at 100 ms slots
/// (reserved), and each runs exactly when its slot is promoted.
pub async fn rate_limits_space_starts_and_park_without_loss(store: Arc<dyn Store>) {
    let options = pb::TaskOptions {
        rate_limit: "10/s".into(),
        ..Default::default()
    };
    let tasks: Vec<NewTask> = (0..4).map(|_| limited(&store, options.clone())).collect();
    let ids: Vec<_> = store
        .enqueue(tasks, NOW)
        .await
        .unwrap()
        .into_iter()
        .map(|ack| ack.id)
        .collect();
    let first = store
        .lease(lease_request("s1", &["add"], 10, NOW))
        .await
        .unwrap();
    assert_eq!(first.len(), 1, "one start per 100 ms");
    let summary = store.scheduled_summary().await.unwrap();
    assert_eq!(
        (summary.count, summary.next_due_ms),
        (3, Some(NOW + 100)),
        "the rest wait, none lost"
    );
    assert_eq!(state_of(&store, ids[3]).await, TaskState::Scheduled);
    // Each parked task comes back at its reserved slot and is admitted then.
    for (step, slot) in [(1, NOW + 100), (2, NOW + 200), (3, NOW + 300)] {
        assert_eq!(
            store.promote_due(slot - 1, 100).await.unwrap().promoted,
            0,
            "not before its slot"
        );
        assert_eq!(store.promote_due(slot, 100).await.unwrap().promoted, 1);
        let leased = store
            .lease(lease_request("s1", &["add"], 10, slot))
            .await
            .unwrap();
        assert_eq!(leased.len(), 1, "step {step}");
    }
    // Per key: another key's bucket is independent.
    let keyed = |key: &str| pb::TaskOptions {
        rate_limit: "1/m".into(),
        rate_limit_key: key.into(),
        ..Default::default()
    };
    let tasks = vec![
        limited(&store, keyed("a")),
        limited(&store, keyed("a")),
        limited(&store, keyed("b")),
    ];
    store.enqueue(tasks, NOW + 1000).await.unwrap();
    let leased = store
        .lease(lease_request("s2", &["add"], 10, NOW + 1000))
        .await
        .unwrap();
    assert_eq!(leased.len(), 2, "one for key a, one for key b");
}

/// A concurrency key admits `limit` at once; a finished one passes its
/// permit to the first waiter, as does a released session.
pub async fn concurrency_permits_pass_to_waiters(store: Arc<dyn Store>) {
    let options = pb::TaskOptions {
        concurrency_key: "customer-7".into(),
        concurrency_limit: 2,
        ..Default::default()
    };
    let tasks: Vec<NewTask> = (0..4).map(|_| limited(&store, options.clone())).collect();
    let ids: Vec<_> = store
        .enqueue(tasks, NOW)
        .await
        .unwrap()
        .into_iter()
        .map(|ack| ack.id)
        .collect();
    let held = store
        .lease(lease_request("s1", &["add"], 10, NOW))
        .await
        .unwrap();
    assert_eq!(
        held.iter().map(|task| task.id).collect::<Vec<_>>(),
        ids[..2].to_vec()
    );
    assert!(
        store
            .lease(lease_request("s2", &["add"], 10, NOW))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        state_of(&store, ids[2]).await,
        TaskState::Queued,
        "waiting, still queued"
    );
    let ready = Arc::new(crate::QueueWaiter::default());
    store
        .events()
        .register_queue_waiter(&[QueueKey::new("default", "add")], &ready);
    store
        .complete(vec![success(ids[0], "s1", 1, "1")], us(NOW))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(2), ready.notified())
        .await
        .expect("a freed permit wakes workers");
    let next = store
        .lease(lease_request("s2", &["add"], 10, NOW))
        .await
        .unwrap();
    assert_eq!(
        next.iter().map(|task| task.id).collect::<Vec<_>>(),
        vec![ids[2]]
    );
    // A released session frees its permit too; a cancelled waiter leaves.
    assert_eq!(
        store.cancel(ids[3], NOW).await.unwrap(),
        CancelAck::Cancelled
    );
    store.release_session("s1", NOW).await.unwrap();
    let again = store
        .lease(lease_request("s3", &["add"], 10, NOW))
        .await
        .unwrap();
    assert_eq!(
        again.iter().map(|task| task.id).collect::<Vec<_>>(),
        vec![ids[1]]
    );
}

/// A task needing `keys` (key, limit), in the coordination partition.
fn keyed(keys: &[(&str, u32)]) -> NewTask {
    limited_spec(pb::TaskOptions {
        concurrency_keys: keys
            .iter()
            .map(|(key, limit)| pb::ConcurrencyKey {
                key: (*key).into(),
                limit: *limit,
            })
            .collect(),
        ..Default::default()
    })
}

fn limited_spec(options: pb::TaskOptions) -> NewTask {
    let mut new = task("add", options, 1);
    new.id = conveyor_core::TaskId::new(0);
    new
}

async fn enqueue_one(store: &Arc<dyn Store>, task: NewTask) -> conveyor_core::TaskId {
    store.enqueue(vec![task], NOW).await.unwrap()[0].id
}

async fn lease_ids(store: &Arc<dyn Store>, session: &str) -> Vec<conveyor_core::TaskId> {
    store
        .lease(lease_request(session, &["add"], 10, NOW))
        .await
        .unwrap()
        .iter()
        .map(|task| task.id)
        .collect()
}

/// Several keys: a task is leased only with every permit, holds none while
/// it waits (others use them meanwhile), and gives all back together, when
/// it finishes and when its session is lost.
pub async fn several_keys_are_taken_all_or_nothing(store: Arc<dyn Store>) {
    let a = enqueue_one(&store, keyed(&[("f0", 1), ("f1", 1)])).await;
    let b = enqueue_one(&store, keyed(&[("f1", 1), ("f2", 1)])).await;
    let c = enqueue_one(&store, keyed(&[("f2", 1), ("f3", 1)])).await;
    // b needs f1, which a holds: it waits holding nothing, so c gets f2.
    assert_eq!(lease_ids(&store, "s1").await, vec![a, c]);
    assert_eq!(state_of(&store, b).await, TaskState::Queued);
    // a done: f1 is free but f2 is not; b still waits.
    store
        .complete(vec![success(a, "s1", 1, "1")], us(NOW))
        .await
        .unwrap();
    assert!(lease_ids(&store, "s1").await.is_empty(), "b needs f2 too");
    // c done: both free, b runs.
    store
        .complete(vec![success(c, "s1", 1, "1")], us(NOW))
        .await
        .unwrap();
    assert_eq!(lease_ids(&store, "s2").await, vec![b]);
    // b holds f1 and f2: tasks needing either wait. b's session is lost:
    // both permits come back, b goes back to the head of its queue and takes
    // them again; when it finishes, both waiters run.
    let d = enqueue_one(&store, keyed(&[("f1", 1)])).await;
    let e = enqueue_one(&store, keyed(&[("f2", 1), ("f3", 1)])).await;
    assert!(lease_ids(&store, "s1").await.is_empty());
    store.release_session("s2", NOW).await.unwrap();
    assert_eq!(lease_ids(&store, "s1").await, vec![b], "b first again");
    store
        .complete(vec![success(b, "s1", 2, "1")], us(NOW))
        .await
        .unwrap();
    let mut after = lease_ids(&store, "s1").await;
    after.sort();
    let mut expected = vec![d, e];
    expected.sort();
    assert_eq!(after, expected, "both keys came back together");
    // A key with room for two: two holders, the third waits.
    let wide: Vec<_> = (0..3).map(|_| keyed(&[("pool", 2), ("f9", 5)])).collect();
    let ids: Vec<_> = store
        .enqueue(wide, NOW)
        .await
        .unwrap()
        .into_iter()
        .map(|ack| ack.id)
        .collect();
    assert_eq!(lease_ids(&store, "s3").await, ids[..2].to_vec());
}

/// A task waiting for two keys is overtaken on each at most
/// `OVERTAKE_LIMIT` times by tasks needing one of them; then a permit is
/// held for it, it runs as soon as the holders finish, before younger
/// waiters; a cancelled waiter gives its reservation up.
pub async fn waiters_for_several_keys_are_not_starved(store: Arc<dyn Store>) {
    let limit = conveyor_core::concurrency::OVERTAKE_LIMIT as usize;
    let x0 = enqueue_one(&store, keyed(&[("x", 1)])).await;
    assert_eq!(lease_ids(&store, "s1").await, vec![x0]);
    let w = enqueue_one(&store, keyed(&[("x", 1), ("y", 1)])).await;
    assert!(lease_ids(&store, "s1").await.is_empty(), "x is held");
    // Tasks needing only y overtake w while x is held, up to the limit.
    let mut overtook = 0;
    let mut blocked = None;
    for _ in 0..limit + 3 {
        let y = enqueue_one(&store, keyed(&[("y", 1)])).await;
        match lease_ids(&store, "s2").await.as_slice() {
            [] => {
                blocked = Some(y);
                break;
            }
            [leased] => {
                assert_eq!(*leased, y);
                overtook += 1;
                store
                    .complete(vec![success(y, "s2", 1, "1")], us(NOW))
                    .await
                    .unwrap();
            }
            other => panic!("leased {other:?}"),
        }
    }
    assert_eq!(overtook, limit, "overtaken exactly OVERTAKE_LIMIT times");
    let blocked = blocked.expect("y is held for w after the limit");
    // A younger task waiting for x: when x0 finishes, w goes first.
    let x1 = enqueue_one(&store, keyed(&[("x", 1)])).await;
    assert!(lease_ids(&store, "s3").await.is_empty());
    store
        .complete(vec![success(x0, "s1", 1, "1")], us(NOW))
        .await
        .unwrap();
    assert_eq!(
        lease_ids(&store, "s3").await,
        vec![w],
        "the oldest waiter first"
    );
    store
        .complete(vec![success(w, "s3", 1, "1")], us(NOW))
        .await
        .unwrap();
    let mut rest = lease_ids(&store, "s3").await;
    rest.sort();
    let mut expected = vec![blocked, x1];
    expected.sort();
    assert_eq!(rest, expected, "w's keys came back to the others");
    // A reserved waiter that is cancelled leaves its permit to the others.
    let z0 = enqueue_one(&store, keyed(&[("z", 1)])).await;
    assert_eq!(lease_ids(&store, "s4").await, vec![z0]);
    let v = enqueue_one(&store, keyed(&[("z", 1), ("v", 1)])).await;
    assert!(lease_ids(&store, "s4").await.is_empty());
    let mut last = None;
    for _ in 0..limit + 1 {
        let only_v = enqueue_one(&store, keyed(&[("v", 1)])).await;
        if let [leased] = lease_ids(&store, "s5").await.as_slice() {
            store
                .complete(vec![success(*leased, "s5", 1, "1")], us(NOW))
                .await
                .unwrap();
        } else {
            last = Some(only_v);
        }
    }
    let last = last.expect("v is held for the waiter");
    assert_eq!(store.cancel(v, NOW).await.unwrap(), CancelAck::Cancelled);
    assert_eq!(
        lease_ids(&store, "s5").await,
        vec![last],
        "reservation dropped with the waiter"
    );
}

/// A paused queue hands out nothing until resumed; nothing is lost.
pub async fn paused_queues_hand_out_nothing(store: Arc<dyn Store>) {
    store
        .enqueue(vec![plain(&store, "add")], NOW)
        .await
        .unwrap();
    store.set_queue_paused("default", true).await.unwrap();
    assert!(
        store
            .lease(lease_request("s1", &["add"], 10, NOW))
            .await
            .unwrap()
            .is_empty()
    );
    store.set_queue_paused("default", false).await.unwrap();
    assert_eq!(
        store
            .lease(lease_request("s1", &["add"], 10, NOW))
            .await
            .unwrap()
            .len(),
        1
    );
}

/// The event stream: every transition of every task, in order per task,
/// the same in both stores (leases name their attempt and worker).
pub async fn events_follow_every_transition(store: Arc<dyn Store>) {
    use crate::{EventKind, StoreEvent};
    let mut stream = store.events().subscribe_events();
    store.enable_events().await.unwrap();
    let first = |acks: Vec<EnqueueAck>| acks[0].id;

    // Succeeds, with a start and progress on the way.
    let ok = first(store.enqueue(vec![plain(&store, "ev")], NOW).await.unwrap());
    store
        .lease(lease_request("s1", &["ev"], 1, NOW))
        .await
        .unwrap();
    let start = StartReport {
        id: ok,
        session_id: "s1".into(),
        lease_token: 1,
    };
    store.mark_started(vec![start], NOW + 1).await.unwrap();
    let progress = ProgressReport {
        id: ok,
        session_id: "s1".into(),
        lease_token: 1,
        progress: pb::Progress {
            state: "HALF".into(),
            percent: 50.0,
            meta: None,
            reported_at: None,
        },
    };
    store
        .record_progress(vec![progress], NOW + 2)
        .await
        .unwrap();
    store
        .complete(vec![success(ok, "s1", 1, "1")], us(NOW + 3))
        .await
        .unwrap();

    // Fails once (retried), fails for good, is replayed.
    let error = pb::TaskError {
        r#type: "ValueError".into(),
        message: "boom".into(),
        retryable: true,
        ..Default::default()
    };
    let failed = |id, token, retry_at_ms| OutcomeReport {
        id,
        session_id: "s2".into(),
        lease_token: token,
        outcome: Outcome::Failed {
            error: error.clone(),
            retry_at_ms,
        },
    };
    let flaky = first(
        store
            .enqueue(vec![plain(&store, "ev")], NOW + 4)
            .await
            .unwrap(),
    );
    store
        .lease(lease_request("s2", &["ev"], 1, NOW + 4))
        .await
        .unwrap();
    store
        .complete(vec![failed(flaky, 1, Some(NOW + 10))], us(NOW + 5))
        .await
        .unwrap();
    store.promote_due(NOW + 10, 10).await.unwrap();
    store
        .lease(lease_request("s2", &["ev"], 1, NOW + 11))
        .await
        .unwrap();
    store
        .complete(vec![failed(flaky, 2, None)], us(NOW + 12))
        .await
        .unwrap();
    assert_eq!(
        store.replay(flaky, NOW + 13).await.unwrap(),
        ReplayAck::Replayed
    );

    // Scheduled, then cancelled.
    let options = pb::TaskOptions {
        countdown: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
        ..Default::default()
    };
    let later = first(
        store
            .enqueue(
                vec![task("ev-later", options, store.partitions())],
                NOW + 14,
            )
            .await
            .unwrap(),
    );
    assert_eq!(
        store.cancel(later, NOW + 15).await.unwrap(),
        CancelAck::Cancelled
    );

    // Leased, then its session lets go: back to its queue; leased again.
    store
        .lease(lease_request("s3", &["ev"], 1, NOW + 16))
        .await
        .unwrap();
    assert_eq!(
        store.release_session("s3", NOW + 17).await.unwrap(),
        vec![flaky]
    );

    // Expires before any worker takes it.
    let options = pb::TaskOptions {
        expires: Some(conveyor_core::time::timestamp_from_ms(NOW + 20)),
        ..Default::default()
    };
    let expiring = first(
        store
            .enqueue(vec![task("ev-idle", options, store.partitions())], NOW + 18)
            .await
            .unwrap(),
    );
    assert!(
        store
            .lease(lease_request("s4", &["ev-idle"], 1, NOW + 30))
            .await
            .unwrap()
            .is_empty()
    );

    use EventKind::*;
    let expected: Vec<(conveyor_core::TaskId, Vec<EventKind>)> = vec![
        (ok, vec![Submitted, Leased, Started, Progress, Succeeded]),
        (
            flaky,
            vec![
                Submitted, Leased, Retried, Leased, Failed, Requeued, Leased, Requeued,
            ],
        ),
        (later, vec![Submitted, Cancelled]),
        (expiring, vec![Submitted, Expired]),
    ];
    let total: usize = expected.iter().map(|(_, kinds)| kinds.len()).sum();
    let mut seen: Vec<StoreEvent> = Vec::new();
    while seen.len() < total {
        let event = tokio::time::timeout(Duration::from_secs(5), stream.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {total} events arrived: {seen:#?}", seen.len()))
            .expect("event stream open");
        seen.push((*event).clone());
    }
    for (id, kinds) in &expected {
        let mine: Vec<&StoreEvent> = seen
            .iter()
            .filter(|event| event.task == Some(*id))
            .collect();
        let got: Vec<EventKind> = mine.iter().map(|event| event.kind).collect();
        assert_eq!(&got, kinds, "events of {id}");
        for event in &mine {
            assert!(event.queue_key.starts_with("default:ev"), "{event:?}");
        }
    }
    let leases: Vec<(u32, &str)> = seen
        .iter()
        .filter(|event| event.task == Some(flaky) && event.kind == Leased)
        .map(|event| (event.attempt, event.worker_id.as_str()))
        .collect();
    assert_eq!(
        leases,
        [(1, "worker-s2"), (2, "worker-s2"), (3, "worker-s3")]
    );
}

fn wf_node(name: &str, args: &[&str], parents: &[u32]) -> pb::WorkflowNode {
    pb::WorkflowNode {
        task: Some(pb::TaskSpec {
            name: name.to_string(),
            args: args.iter().map(|arg| json(arg)).collect(),
            ..Default::default()
        }),
        parents: parents.to_vec(),
        ..Default::default()
    }
}

async fn submit_wf(
    store: &Arc<dyn Store>,
    nodes: Vec<pb::WorkflowNode>,
    outputs: Vec<u32>,
    output_list: bool,
    key: &str,
) -> WorkflowAck {
    let spec = pb::WorkflowSpec {
        nodes,
        outputs,
        output_list,
        idempotency_key: key.to_string(),
        ..Default::default()
    };
    let mut workflow = conveyor_core::workflow::validate_workflow(
        spec,
        &Limits::default(),
        &conveyor_core::TaskDefaults::default(),
        NOW,
    )
    .expect("valid workflow");
    store.place_workflow(&mut workflow);
    store.submit_workflow(workflow, NOW).await.unwrap()
}

/// Leases every queued task of `names` and returns (id, token, args as text).
async fn lease_texts(
    store: &Arc<dyn Store>,
    session: &str,
    names: &[&str],
    now: i64,
) -> Vec<(
    conveyor_core::TaskId,
    u64,
    Vec<String>,
    Option<conveyor_core::TaskId>,
)> {
    store
        .lease(lease_request(session, names, 100, now))
        .await
        .unwrap()
        .into_iter()
        .map(|leased| {
            let args = leased
                .record
                .args
                .iter()
                .map(|arg| String::from_utf8_lossy(&arg.data).into_owned())
                .collect();
            (leased.id, leased.lease_token, args, leased.workflow_id)
        })
        .collect()
}

fn failure(id: conveyor_core::TaskId, session: &str, token: u64, message: &str) -> OutcomeReport {
    OutcomeReport {
        id,
        session_id: session.to_string(),
        lease_token: token,
        outcome: Outcome::Failed {
            error: pb::TaskError {
                r#type: "ValueError".into(),
                message: message.into(),
                ..Default::default()
            },
            retry_at_ms: None,
        },
    }
}

/// chain(a, b, group(c, d, e), f): each step gets the previous result
/// first; the chord callback f gets the list of c, d, e in declaration
/// order, whatever order they finished in, and is queued exactly once, by
/// the outcome that completed its inputs. A node with a countdown waits it
/// out once ready.
pub async fn workflow_chains_and_chords_pass_results_in_order(store: Arc<dyn Store>) {
    let mut delayed = wf_node("wf_g", &["0"], &[5]);
    delayed.task.as_mut().unwrap().options = Some(pb::TaskOptions {
        countdown: Some(prost_types::Duration {
            seconds: 5,
            nanos: 0,
        }),
        ..Default::default()
    });
    let ack = submit_wf(
        &store,
        vec![
            wf_node("wf_a", &["1", "2"], &[]),
            wf_node("wf_b", &["10"], &[0]),
            wf_node("wf_c", &["1"], &[1]),
            wf_node("wf_c", &["2"], &[1]),
            wf_node("wf_c", &["3"], &[1]),
            wf_node("wf_f", &[], &[2, 3, 4]),
            delayed,
        ],
        vec![6],
        false,
        "",
    )
    .await;
    let ids = ack.task_ids.clone();
    assert_eq!(ids.len(), 7);
    assert!(ids.iter().all(|id| id.partition() == ack.id.partition()));
    assert_eq!(state_of(&store, ids[0]).await, TaskState::Queued);
    for id in &ids[1..] {
        assert_eq!(state_of(&store, *id).await, TaskState::Waiting);
    }
    let head = store.get(ack.id, NOW).await.unwrap().unwrap();
    assert!(head.is_workflow);
    assert_eq!(head.state, TaskState::Waiting);
    // Nothing but the root is leasable.
    let names = ["wf_a", "wf_b", "wf_c", "wf_f", "wf_g"];
    let first = lease_texts(&store, "s1", &names, NOW).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].2, ["1", "2"]);
    assert_eq!(first[0].3, Some(ack.id), "leases name their workflow");
    store
        .complete(vec![success(ids[0], "s1", first[0].1, "3")], us(NOW + 1))
        .await
        .unwrap();
    let second = lease_texts(&store, "s1", &names, NOW + 2).await;
    assert_eq!(second.len(), 1);
    assert_eq!(
        second[0].2,
        ["3", "10"],
        "a chain step gets the result first"
    );
    store
        .complete(vec![success(ids[1], "s1", second[0].1, "13")], us(NOW + 3))
        .await
        .unwrap();
    let group = lease_texts(&store, "s1", &names, NOW + 4).await;
    assert_eq!(group.len(), 3);
    assert!(group.iter().all(|(_, _, args, _)| args[0] == "13"));
    // Finish the group backwards: the callback still gets declaration order.
    for (offset, (id, token, args, _)) in group.iter().rev().enumerate() {
        assert_eq!(state_of(&store, ids[5]).await, TaskState::Waiting);
        let value = format!("{}{}", args[0], args[1]);
        store
            .complete(
                vec![success(*id, "s1", *token, &value)],
                us(NOW + 5 + offset as i64),
            )
            .await
            .unwrap();
    }
    assert_eq!(state_of(&store, ids[5]).await, TaskState::Queued);
    let body = lease_texts(&store, "s1", &names, NOW + 10).await;
    assert_eq!(body.len(), 1, "the callback is queued exactly once");
    assert_eq!(body[0].2, ["[131,132,133]"]);
    let stored = store.get(ids[5], NOW + 10).await.unwrap().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&stored.record.args[0].data),
        "[131,132,133]",
        "reads show the effective arguments"
    );
    assert_eq!(stored.node_of, Some((ack.id, 5)));
    store
        .complete(vec![success(ids[5], "s1", body[0].1, "396")], us(NOW + 11))
        .await
        .unwrap();
    // The delayed step waits its countdown after becoming ready.
    assert_eq!(state_of(&store, ids[6]).await, TaskState::Scheduled);
    assert!(lease_texts(&store, "s1", &names, NOW + 12).await.is_empty());
    store.promote_due(NOW + 11 + 5_000, 100).await.unwrap();
    let last = lease_texts(&store, "s1", &names, NOW + 5_012).await;
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].2, ["396", "0"]);
    let workflow = store
        .get_workflow(ack.id, WorkflowNodes::All, NOW + 5_012)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(workflow.unfinished, 1);
    assert_eq!(workflow.head.state, TaskState::Waiting);
    store
        .complete(vec![success(ids[6], "s1", last[0].1, "7")], us(NOW + 5_013))
        .await
        .unwrap();
    let workflow = store
        .get_workflow(ack.id, WorkflowNodes::All, NOW + 5_014)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(workflow.head.state, TaskState::Succeeded);
    assert_eq!(workflow.unfinished, 0);
    assert_eq!(workflow.nodes.len(), 7);
    assert!(
        workflow
            .nodes
            .iter()
            .all(|(_, task)| task.state == TaskState::Succeeded)
    );
    let nodes: std::collections::HashMap<u32, &conveyor_core::StoredTask> =
        workflow.nodes.iter().map(|(i, t)| (*i, t)).collect();
    let result =
        conveyor_core::workflow::workflow_result(&workflow.graph, |i| nodes.get(&i).copied())
            .unwrap();
    assert_eq!(result.data, b"7");
}

/// a fails: b (needs a) fails without running, naming a; c (needs b) names
/// b, with a as the root cause; the link_error callback on a, b and c runs
/// once with a's id and error; an ALL_DONE node gets the failure as a list
/// entry; the workflow is FAILED with a as its first failure. A FAILED node
/// cannot be replayed.
pub async fn workflow_failures_fail_dependents_and_fire_link_error_once(store: Arc<dyn Store>) {
    let mut errback = wf_node("wf_err", &["\"extra\""], &[0, 1, 2]);
    errback.trigger = pb::NodeTrigger::OnFailure as i32;
    let mut all_done = wf_node("wf_done", &[], &[0]);
    all_done.trigger = pb::NodeTrigger::AllDone as i32;
    all_done.input = pb::NodeInput::List as i32;
    let ack = submit_wf(
        &store,
        vec![
            wf_node("wf_a", &[], &[]),
            wf_node("wf_b", &[], &[0]),
            wf_node("wf_c", &[], &[1]),
            errback,
            all_done,
        ],
        vec![2],
        false,
        "",
    )
    .await;
    let ids = ack.task_ids.clone();
    let names = ["wf_a", "wf_b", "wf_c", "wf_err", "wf_done"];
    let leased = lease_texts(&store, "s1", &names, NOW).await;
    assert_eq!(leased.len(), 1);
    store
        .complete(
            vec![failure(ids[0], "s1", leased[0].1, "bang")],
            us(NOW + 1),
        )
        .await
        .unwrap();
    let b = store.get(ids[1], NOW + 2).await.unwrap().unwrap();
    assert_eq!(b.state, TaskState::Failed);
    assert_eq!(b.attempt, 0, "a dependent that cannot run never runs");
    let error = b.to_pb().error.unwrap();
    assert_eq!(error.reason, pb::FailureReason::DependencyFailed as i32);
    assert_eq!(error.cause_task_id, ids[0].to_string());
    let c = store.get(ids[2], NOW + 2).await.unwrap().unwrap().to_pb();
    let error = c.error.unwrap();
    assert_eq!(error.cause_task_id, ids[1].to_string());
    assert!(
        error.message.contains(&ids[0].to_string()),
        "{}",
        error.message
    );
    let next = lease_texts(&store, "s1", &names, NOW + 3).await;
    assert_eq!(
        next.len(),
        2,
        "the errback and the ALL_DONE node run: {next:?}"
    );
    let errback = next.iter().find(|(id, ..)| *id == ids[3]).unwrap();
    assert_eq!(errback.2[0], format!("\"{}\"", ids[0]));
    let error: serde_json::Value = serde_json::from_str(&errback.2[1]).unwrap();
    assert_eq!(error["message"], "bang");
    assert_eq!(errback.2[2], "\"extra\"", "its own arguments follow");
    let done = next.iter().find(|(id, ..)| *id == ids[4]).unwrap();
    let list: serde_json::Value = serde_json::from_str(&done.2[0]).unwrap();
    assert_eq!(list[0]["error"]["task_id"], ids[0].to_string());
    for (id, token, ..) in &next {
        store
            .complete(vec![success(*id, "s1", *token, "null")], us(NOW + 4))
            .await
            .unwrap();
    }
    assert!(lease_texts(&store, "s1", &names, NOW + 5).await.is_empty());
    let workflow = store
        .get_workflow(ack.id, WorkflowNodes::All, NOW + 5)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(workflow.head.state, TaskState::Failed);
    assert_eq!(workflow.failed, 3);
    assert_eq!(workflow.first_failed, Some(ids[0].to_string()));
    assert_eq!(
        store.replay(ids[0], NOW + 6).await.unwrap(),
        ReplayAck::WorkflowNode
    );
    assert_eq!(
        store.cancel(ack.id, NOW + 6).await.unwrap(),
        CancelAck::IsWorkflow
    );
}

/// CancelWorkflow cancels queued, leased and waiting nodes at once (the
/// leased one's session is told); nothing leases afterwards and a late
/// outcome is refused.
pub async fn workflow_cancel_stops_every_node(store: Arc<dyn Store>) {
    let ack = submit_wf(
        &store,
        vec![
            wf_node("wf_a", &[], &[]),
            wf_node("wf_q", &[], &[]),
            wf_node("wf_b", &[], &[0]),
            wf_node("wf_c", &[], &[1, 2]),
        ],
        vec![3],
        false,
        "",
    )
    .await;
    let ids = ack.task_ids.clone();
    let leased = lease_texts(&store, "s1", &["wf_a"], NOW).await;
    assert_eq!(leased.len(), 1);
    let mut session = store.events().register_session("s1");
    let (cancelled, state) = store
        .cancel_workflow(ack.id, NOW + 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cancelled, 4);
    assert_eq!(state, TaskState::Cancelled);
    for id in &ids {
        assert_eq!(state_of(&store, *id).await, TaskState::Cancelled);
    }
    let told = tokio::time::timeout(Duration::from_secs(5), session.revoked())
        .await
        .expect("the session hears of it");
    assert_eq!(told, Some(ids[0]));
    assert!(
        lease_texts(&store, "s2", &["wf_a", "wf_q", "wf_b", "wf_c"], NOW + 2)
            .await
            .is_empty()
    );
    let late = store
        .complete(vec![success(ids[0], "s1", leased[0].1, "1")], us(NOW + 3))
        .await
        .unwrap();
    assert_eq!(late, vec![OutcomeAck::NotHeld]);
    let again = store.cancel_workflow(ack.id, NOW + 4).await.unwrap();
    assert_eq!(again, Some((0, TaskState::Cancelled)));
    assert_eq!(
        store
            .cancel_workflow(conveyor_core::TaskId::new(0), NOW)
            .await
            .unwrap(),
        None
    );
}

/// A link_error callback none of whose parents failed is CANCELLED without
/// running, and the workflow SUCCEEDED; a second submit with the same
/// idempotency key returns the first workflow and its nodes.
pub async fn workflow_link_error_is_skipped_and_keys_dedupe(store: Arc<dyn Store>) {
    let mut errback = wf_node("wf_err", &[], &[0]);
    errback.trigger = pb::NodeTrigger::OnFailure as i32;
    let nodes = vec![wf_node("wf_a", &[], &[]), errback];
    let ack = submit_wf(&store, nodes.clone(), vec![0], false, "wf-key").await;
    assert!(!ack.duplicate);
    let again = submit_wf(&store, nodes, vec![0], false, "wf-key").await;
    assert!(again.duplicate);
    assert_eq!((again.id, &again.task_ids), (ack.id, &ack.task_ids));
    let leased = lease_texts(&store, "s1", &["wf_a", "wf_err"], NOW).await;
    assert_eq!(leased.len(), 1);
    store
        .complete(
            vec![success(ack.task_ids[0], "s1", leased[0].1, "1")],
            us(NOW + 1),
        )
        .await
        .unwrap();
    assert_eq!(
        state_of(&store, ack.task_ids[1]).await,
        TaskState::Cancelled
    );
    let workflow = store
        .get_workflow(ack.id, WorkflowNodes::Outputs, NOW + 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(workflow.head.state, TaskState::Succeeded);
    assert_eq!(workflow.nodes.len(), 1, "outputs only");
    // Cancelling one task cancels its dependents, and the workflow.
    let ack = submit_wf(
        &store,
        vec![wf_node("wf_a", &[], &[]), wf_node("wf_b", &[], &[0])],
        vec![1],
        false,
        "",
    )
    .await;
    assert_eq!(
        store.cancel(ack.task_ids[0], NOW + 3).await.unwrap(),
        CancelAck::Cancelled
    );
    assert_eq!(
        state_of(&store, ack.task_ids[1]).await,
        TaskState::Cancelled
    );
    let workflow = store
        .get_workflow(ack.id, WorkflowNodes::Outputs, NOW + 4)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(workflow.head.state, TaskState::Cancelled);
}

/// Dispatcher replicas' announcements (session counts for rebalancing,
/// worker lists for ListWorkers): each lives until its time, a withdrawal
/// removes it at once, binary worker lists come back whole, and a read
/// (no replica) changes nothing.
pub async fn replicas_announce_sessions_and_workers_until_they_lapse(store: Arc<dyn Store>) {
    let (a, b) = (
        format!("replica-a-{}", uuid::Uuid::now_v7()),
        format!("replica-b-{}", uuid::Uuid::now_v7()),
    );
    let live = store
        .announce_dispatcher(&a, Some(3), 1_000, NOW)
        .await
        .unwrap();
    assert_eq!(live.get(&a), Some(&3));
    let live = store
        .announce_dispatcher(&b, Some(5), 5_000, NOW + 10)
        .await
        .unwrap();
    assert_eq!((live.get(&a), live.get(&b)), (Some(&3), Some(&5)));
    // a's record lapses at NOW + 1000.
    let live = store
        .announce_dispatcher(&b, Some(6), 5_000, NOW + 1_500)
        .await
        .unwrap();
    assert_eq!((live.get(&a), live.get(&b)), (None, Some(&6)));
    let live = store
        .announce_dispatcher(&b, None, 0, NOW + 1_600)
        .await
        .unwrap();
    assert!(!live.contains_key(&b));

    let blob_a = vec![0u8, 255, b' ', 10, 13, 0x1f, b'x'];
    let blob_b = b"12 34 not a number".to_vec();
    store
        .announce_workers(&a, Some(blob_a.clone()), 1_000, NOW)
        .await
        .unwrap();
    let live = store
        .announce_workers(&b, Some(blob_b.clone()), 5_000, NOW)
        .await
        .unwrap();
    assert_eq!(live.get(&a), Some(&blob_a));
    assert_eq!(live.get(&b), Some(&blob_b));
    let read = store
        .announce_workers("", None, 0, NOW + 500)
        .await
        .unwrap();
    assert_eq!(read, live, "a read changes nothing");
    let read = store
        .announce_workers("", None, 0, NOW + 1_500)
        .await
        .unwrap();
    assert!(
        !read.contains_key(&a) && read.get(&b) == Some(&blob_b),
        "{read:?}"
    );
    let read = store
        .announce_workers(&b, None, 0, NOW + 1_600)
        .await
        .unwrap();
    assert!(!read.contains_key(&b));
}
