//! Periodic schedules: validation, the CRUD RPCs, and firing. A due run is
//! submitted through SubmissionService with the idempotency key
//! `schedule:<id>:<fire ms>`, then the schedule advances by compare-and-set;
//! replicas racing on the same run create one task between them.

use conveyor_api::pb;
use conveyor_core::schedule::Rule;
use conveyor_core::time::{duration_ms, ms_from_timestamp, pb_duration, timestamp_from_ms};
use conveyor_core::validate::{check_name, validate_spec};
use conveyor_core::{ConveyorError, Limits, Result};

/// 9999-12-31T23:59:59Z, the last instant RFC 3339 (and protobuf's JSON
/// mapping of Timestamp) can write.
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// A schedule checked and normalised, with its first run.
pub(crate) struct Prepared {
    pub schedule: pb::Schedule,
    pub next_ms: Option<i64>,
}

fn anchor_ms(schedule: &pb::Schedule) -> i64 {
    schedule
        .start_at
        .as_ref()
        .or(schedule.created_at.as_ref())
        .map(ms_from_timestamp)
        .unwrap_or(0)
}

fn end_ms(schedule: &pb::Schedule) -> Option<i64> {
    schedule.end_at.as_ref().map(ms_from_timestamp)
}

/// The first run at or after `from_ms` (and after the start), within the end.
pub(crate) fn next_run_from(schedule: &pb::Schedule, rule: &Rule, from_ms: i64) -> Option<i64> {
    let start = schedule
        .start_at
        .as_ref()
        .map(ms_from_timestamp)
        .unwrap_or(i64::MIN);
    let after = from_ms.max(start).saturating_sub(1);
    rule.next_after(after, anchor_ms(schedule))
        .filter(|next| end_ms(schedule).is_none_or(|end| *next <= end))
}

/// The run after the one at `fire_ms`, or after `now_ms` when runs were missed.
pub(crate) fn next_run_after(schedule: &pb::Schedule, rule: &Rule, base_ms: i64) -> Option<i64> {
    rule.next_after(base_ms, anchor_ms(schedule))
        .filter(|next| end_ms(schedule).is_none_or(|end| *next <= end))
}

/// The stored rule of a schedule (validated at creation).
pub(crate) fn rule_of(schedule: &pb::Schedule) -> Result<Rule> {
    Rule::from_pb(schedule.rule.as_ref(), "schedule")
}

/// Checks a submitted definition, clears output fields, and computes the
/// first run. `existing` keeps creation time, counters and pause state.
pub(crate) fn prepare(
    mut schedule: pb::Schedule,
    existing: Option<&pb::Schedule>,
    limits: &Limits,
    now_ms: i64,
) -> Result<Prepared> {
    check_name("schedule.id", &schedule.id, 200, &[':', '/'])?;
    let task = schedule
        .task
        .clone()
        .ok_or_else(|| ConveyorError::invalid("schedule.task", "is required"))?;
    if !task.idempotency_key.is_empty() {
        return Err(ConveyorError::invalid(
            "schedule.task.idempotency_key",
            "must be empty: the scheduler sets one per run",
        ));
    }
    if task
        .options
        .as_ref()
        .is_some_and(|options| options.eta.is_some() || options.expires.is_some())
    {
        return Err(ConveyorError::invalid(
            "schedule.task.options",
            "eta and expires are absolute instants; a schedule's runs cannot share them",
        ));
    }
    validate_spec(task, "schedule.task", limits, now_ms, 0)?;
    let rule = rule_of(&schedule)?;
    if pb::CatchUp::try_from(schedule.catch_up).is_err() {
        return Err(ConveyorError::invalid(
            "schedule.catch_up",
            format!(
                "{} is not a CatchUp value: use CATCH_UP_SKIP (1) or CATCH_UP_RUN_ONCE (2)",
                schedule.catch_up
            ),
        ));
    }
    for (field, instant) in [
        ("schedule.start_at", &schedule.start_at),
        ("schedule.end_at", &schedule.end_at),
    ] {
        if let Some(instant) = instant
            && !((0..=MAX_TIMESTAMP_SECONDS).contains(&instant.seconds)
                && (0..1_000_000_000).contains(&instant.nanos))
        {
            return Err(ConveyorError::invalid(
                field,
                "must be a valid time from 1970-01-01 to 9999-12-31",
            ));
        }
    }
    if let (Some(start), Some(end)) = (&schedule.start_at, &schedule.end_at)
        && ms_from_timestamp(end) <= ms_from_timestamp(start)
    {
        return Err(ConveyorError::invalid(
            "schedule.end_at",
            "must be later than start_at",
        ));
    }
    if let Some(jitter) = &schedule.jitter {
        duration_ms(jitter)
            .ok_or_else(|| ConveyorError::invalid("schedule.jitter", "must be non-negative"))?;
    }
    schedule.created_at = Some(
        existing
            .and_then(|old| old.created_at)
            .unwrap_or_else(|| timestamp_from_ms(now_ms)),
    );
    schedule.paused = existing.is_some_and(|old| old.paused);
    schedule.runs = existing.map_or(0, |old| old.runs);
    schedule.last_run_at = existing.and_then(|old| old.last_run_at);
    let next_ms = if schedule.paused {
        None
    } else {
        next_run_from(&schedule, &rule, now_ms)
    };
    schedule.next_run_at = next_ms.map(timestamp_from_ms);
    Ok(Prepared { schedule, next_ms })
}

/// The task of one run: the schedule's task, its idempotency key naming the
/// run, delayed by the run's share of the jitter (deterministic per run, so
/// racing replicas submit the same thing).
pub(crate) fn run_spec(schedule: &pb::Schedule, run_key: &str) -> pb::TaskSpec {
    let mut spec = schedule.task.clone().unwrap_or_default();
    // The plain id: the run is submitted in the schedule's namespace, which
    // scopes the key.
    let id = conveyor_core::namespace::split_key(&schedule.id).1;
    spec.idempotency_key = format!("schedule:{id}:{run_key}");
    let jitter_ms = schedule.jitter.as_ref().and_then(duration_ms).unwrap_or(0);
    if jitter_ms > 0 {
        let hash = spec
            .idempotency_key
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
            });
        let delay_ms = (hash % (jitter_ms as u64 + 1)) as i64;
        let options = spec.options.get_or_insert_with(Default::default);
        let countdown_ms = options
            .countdown
            .as_ref()
            .and_then(duration_ms)
            .unwrap_or(0);
        options.countdown = Some(pb_duration(std::time::Duration::from_millis(
            (countdown_ms + delay_ms) as u64,
        )));
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(seconds: i64) -> pb::Schedule {
        pb::Schedule {
            id: "tick".into(),
            task: Some(pb::TaskSpec {
                name: "tick".into(),
                ..Default::default()
            }),
            rule: Some(pb::schedule::Rule::Interval(pb::IntervalRule {
                every: Some(prost_types::Duration { seconds, nanos: 0 }),
            })),
            ..Default::default()
        }
    }

    #[test]
    fn intervals_fire_at_creation_then_every_period() {
        let prepared = prepare(interval(10), None, &Limits::default(), 1_000_000).unwrap();
        assert_eq!(prepared.next_ms, Some(1_000_000));
        let rule = rule_of(&prepared.schedule).unwrap();
        assert_eq!(
            next_run_after(&prepared.schedule, &rule, 1_000_000),
            Some(1_010_000)
        );
    }

    #[test]
    fn start_and_end_bound_the_runs() {
        let mut schedule = interval(10);
        schedule.start_at = Some(timestamp_from_ms(2_000_000));
        schedule.end_at = Some(timestamp_from_ms(2_015_000));
        let prepared = prepare(schedule, None, &Limits::default(), 1_000_000).unwrap();
        assert_eq!(prepared.next_ms, Some(2_000_000));
        let rule = rule_of(&prepared.schedule).unwrap();
        assert_eq!(
            next_run_after(&prepared.schedule, &rule, 2_000_000),
            Some(2_010_000)
        );
        assert_eq!(next_run_after(&prepared.schedule, &rule, 2_010_000), None);
    }

    #[test]
    fn run_specs_are_keyed_and_jittered_deterministically() {
        let mut schedule = interval(10);
        schedule.jitter = Some(prost_types::Duration {
            seconds: 5,
            nanos: 0,
        });
        let first = run_spec(&schedule, "1000");
        assert_eq!(first.idempotency_key, "schedule:tick:1000");
        assert_eq!(first, run_spec(&schedule, "1000"));
        let delay = duration_ms(first.options.unwrap().countdown.as_ref().unwrap()).unwrap();
        assert!((0..=5000).contains(&delay));
    }

    #[test]
    fn bad_definitions_name_their_field() {
        let field = |schedule: pb::Schedule| match prepare(schedule, None, &Limits::default(), 0) {
            Err(ConveyorError::InvalidArgument(violation)) => violation.field,
            other => panic!("{:?}", other.map(|prepared| prepared.next_ms)),
        };
        let mut no_id = interval(10);
        no_id.id = String::new();
        assert_eq!(field(no_id), "schedule.id");
        let mut keyed = interval(10);
        keyed.task.as_mut().unwrap().idempotency_key = "k".into();
        assert_eq!(field(keyed), "schedule.task.idempotency_key");
        let mut no_rule = interval(10);
        no_rule.rule = None;
        assert_eq!(field(no_rule), "schedule.rule");
        let mut backwards = interval(10);
        backwards.start_at = Some(timestamp_from_ms(5000));
        backwards.end_at = Some(timestamp_from_ms(1000));
        assert_eq!(field(backwards), "schedule.end_at");
        let mut bad_task = interval(10);
        bad_task.task.as_mut().unwrap().name = String::new();
        assert_eq!(field(bad_task), "schedule.task.name");
    }
}
