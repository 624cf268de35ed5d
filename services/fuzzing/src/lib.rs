//! What Conveyor's fuzz targets run (`fuzz/fuzz_targets/*.rs`, one per
//! function here) and what their proptest twins in `tests/` run on every
//! `scripts/test`: each takes arbitrary bytes, feeds them to a decoder or
//! validator of untrusted input, and checks that it answers (accepts or
//! refuses with an error) without panicking, and that what it accepts holds
//! the invariants the rest of the system relies on.
//!
//! | target | input | decoder or validator |
//! |---|---|---|
//! | `task_spec` | a `SubmitTaskRequest` / `SubmitTasksRequest` | protobuf decoding, `validate_with_defaults` |
//! | `workflow` | a `WorkflowSpec` | protobuf decoding, `validate_workflow` (DAG checks) |
//! | `schedule` | a `Schedule`, or cron/solar text | protobuf decoding, the rule parser, next-fire computation |
//! | `config` | a TOML file | task defaults, declared schedules, the auth file |
//! | `stored` | a task hash's fields, a workflow node's inputs | what the Redis store reads back |

use conveyor_api::pb;
use conveyor_core::{Limits, TaskDefaults, TaskId};
use prost::Message;

/// A fixed "now" (2026-01-01), so that runs are reproducible.
pub const NOW_MS: i64 = 1_767_225_600_000;

/// The seeds of every target: valid encodings to mutate from (the checked-in
/// corpus holds the same).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let spec = pb::TaskSpec {
        name: "add".into(),
        args: vec![pb::Payload {
            data: b"2".to_vec(),
            content_type: "application/json".into(),
        }],
        ..Default::default()
    };
    let node = |parents: Vec<u32>| pb::WorkflowNode {
        task: Some(spec.clone()),
        parents,
        ..Default::default()
    };
    let schedule = pb::Schedule {
        id: "nightly".into(),
        task: Some(spec.clone()),
        rule: Some(pb::schedule::Rule::Cron(pb::CronRule {
            expression: "0 3 * * 1-5".into(),
            time_zone: "Europe/Paris".into(),
        })),
        ..Default::default()
    };
    vec![
        (
            "task_spec",
            pb::SubmitTaskRequest {
                task: Some(spec.clone()),
                namespace: "team-a".into(),
            }
            .encode_to_vec(),
        ),
        (
            "workflow",
            pb::WorkflowSpec {
                nodes: vec![node(vec![]), node(vec![0]), node(vec![0]), node(vec![1, 2])],
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("schedule", schedule.encode_to_vec()),
        (
            "schedule",
            pb::Schedule {
                rule: Some(pb::schedule::Rule::Solar(pb::SolarRule {
                    event: pb::SolarEvent::Sunset as i32,
                    latitude: 48.85,
                    longitude: 2.35,
                })),
                ..schedule.clone()
            }
            .encode_to_vec(),
        ),
        ("schedule", b"\x01*/5 * * * *\x00UTC".to_vec()),
        (
            "config",
            b"\x00[tasks.add]\nqueue = \"math\"\npriority = 3\nmax-retries = 5\nbackoff-base = \"1s\"\n".to_vec(),
        ),
        (
            "config",
            b"\x01[schedules.nightly]\ntask = \"report\"\ncron = \"0 3 * * *\"\ntime-zone = \"Europe/Berlin\"\n\n[schedules.lights]\ntask = \"lights\"\nsolar = \"sunset\"\nlatitude = 52.52\nlongitude = 13.40\n".to_vec(),
        ),
        (
            "config",
            b"\x02[[principal]]\nname = \"a\"\ntls_subject = [\"CN=a\"]\nroles = { x = [\"reader\"] }\n"
                .to_vec(),
        ),
        ("stored", b"\x00state\x1f2\x1ename\x1fadd\x1equeue\x1fdefault".to_vec()),
        ("stored", b"\x01\x00\x00\x00\x01\x00\x00\x00\x05hello".to_vec()),
    ]
}

/// A task submission: decoded, then validated with and without defaults.
pub fn task_spec(data: &[u8]) {
    let limits = Limits::default();
    let specs = match pb::SubmitTaskRequest::decode(data) {
        Ok(request) => request.task.into_iter().collect(),
        Err(_) => match pb::SubmitTasksRequest::decode(data) {
            Ok(request) => request.tasks,
            Err(_) => return,
        },
    };
    for (index, spec) in specs.into_iter().enumerate() {
        let name = spec.name.clone();
        match conveyor_core::validate::validate_with_defaults(
            spec,
            &format!("tasks[{index}]"),
            &limits,
            &TaskDefaults::default(),
            NOW_MS,
            0,
        ) {
            Ok(task) => {
                // Accepted: a name within its limit, an encodable record.
                assert_eq!(task.record.name, name);
                assert!(!name.is_empty() && name.len() <= limits.max_name_len);
                let _ = task.record.encode_to_vec();
            }
            Err(error) => {
                // Refused: a precise status naming a field.
                let status: tonic::Status = error.into();
                assert_ne!(status.code(), tonic::Code::Internal, "{status:?}");
            }
        }
    }
}

/// A workflow: decoded, then validated as a DAG.
pub fn workflow(data: &[u8]) {
    let Ok(spec) = pb::WorkflowSpec::decode(data) else {
        return;
    };
    let nodes = spec.nodes.len();
    let limits = Limits::default();
    match conveyor_core::workflow::validate_workflow(
        spec,
        &limits,
        &TaskDefaults::default(),
        NOW_MS,
    ) {
        Ok(workflow) => {
            assert_eq!(workflow.nodes.len(), nodes, "accepted nodes");
            assert!((1..=conveyor_core::workflow::MAX_NODES).contains(&nodes));
        }
        Err(error) => {
            let status: tonic::Status = error.into();
            assert_ne!(status.code(), tonic::Code::Internal, "{status:?}");
        }
    }
}

/// A schedule's rule: a whole `Schedule`, or (first byte 1) cron text and
/// a time zone split by a NUL; an accepted rule's next firing is later than
/// the instant asked about.
pub fn schedule(data: &[u8]) {
    let rule = match data.split_first() {
        Some((1, rest)) => {
            let text = String::from_utf8_lossy(rest);
            let (expression, timezone) = text.split_once('\0').unwrap_or((&text, ""));
            Some(pb::schedule::Rule::Cron(pb::CronRule {
                expression: expression.to_string(),
                time_zone: timezone.to_string(),
            }))
        }
        _ => match pb::Schedule::decode(data) {
            Ok(schedule) => schedule.rule,
            Err(_) => return,
        },
    };
    if let Ok(rule) = conveyor_core::schedule::Rule::from_pb(rule.as_ref(), "schedule") {
        for after in [NOW_MS, NOW_MS + 86_400_000 * 400] {
            if let Some(next) = rule.next_after(after, NOW_MS) {
                assert!(
                    next > after,
                    "next firing {next} not after {after}: {rule:?}"
                );
            }
        }
    }
}

/// A configuration file: the first byte chooses task defaults (0), declared
/// schedules (1) or the auth file (2); the rest is its text.
pub fn config(data: &[u8]) {
    let Some((kind, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match kind % 3 {
        0 => {
            let _ = conveyor::config::parse_task_defaults(text, "fuzz.toml");
        }
        1 => {
            if let Ok(schedules) = conveyor::config::parse_schedules(text, "fuzz.toml") {
                for schedule in schedules {
                    let _ = conveyor_core::schedule::Rule::from_pb(schedule.rule.as_ref(), "s");
                }
            }
        }
        _ => {
            if let Ok(policy) = conveyor_runtime::auth::parse_auth_file(text, "fuzz.toml") {
                let _ = policy.describe();
            }
        }
    }
}

/// What the Redis store reads back: the first byte chooses a task hash
/// (fields `name\x1fvalue` split by `\x1e`) or a workflow node's inputs.
pub fn stored(data: &[u8]) {
    let Some((kind, rest)) = data.split_first() else {
        return;
    };
    if kind % 2 == 0 {
        let fields = rest
            .split(|byte| *byte == 0x1e)
            .filter_map(|pair| {
                let at = pair.iter().position(|byte| *byte == 0x1f)?;
                Some((
                    String::from_utf8_lossy(&pair[..at]).into_owned(),
                    pair[at + 1..].to_vec(),
                ))
            })
            .collect();
        let _ = conveyor_store::redis::decode::task(TaskId::new(0), fields);
    } else {
        let _ = conveyor_store::redis::decode::arrivals(rest);
    }
}

/// A target's entry point.
pub type Target = fn(&[u8]);

/// Every target by name, for the fuzz binaries and the twins.
pub const TARGETS: &[(&str, Target)] = &[
    ("task_spec", task_spec),
    ("workflow", workflow),
    ("schedule", schedule),
    ("config", config),
    ("stored", stored),
];
