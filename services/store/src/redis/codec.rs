//! Decoding Redis replies and task hashes into domain types.

use prost::Message;
use redis::Value;

use conveyor_api::store_pb::{self, outcome_record};
use conveyor_core::workflow::{Arrival, NodeRule, dependency_error, inputs};
use conveyor_core::{ConveyorError, Result, StoredTask, TaskId, TaskState};

use crate::types::Outcome;

/// Redis errors are I/O: retryable `Unavailable`.
pub(crate) fn unavailable(error: redis::RedisError) -> ConveyorError {
    ConveyorError::Unavailable(format!("redis: {error}"))
}

/// The bytes of a scalar reply.
pub(crate) fn bytes_of(value: &Value) -> Vec<u8> {
    match value {
        Value::BulkString(bytes) => bytes.clone(),
        Value::SimpleString(text) => text.as_bytes().to_vec(),
        Value::Int(number) => number.to_string().into_bytes(),
        _ => Vec::new(),
    }
}

/// The integer of a scalar reply (0 when absent or not a number).
pub(crate) fn int_of(value: &Value) -> i64 {
    match value {
        Value::Int(number) => *number,
        Value::BulkString(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.parse::<f64>().ok())
            .map(|number| number as i64)
            .unwrap_or(0),
        _ => 0,
    }
}

/// Kind letter, encoded outcome record and retry time for the complete script.
pub(crate) fn encode_outcome(outcome: &Outcome) -> (&'static str, Vec<u8>, i64) {
    match outcome {
        Outcome::Succeeded(payload) => {
            let record = store_pb::OutcomeRecord {
                outcome: Some(outcome_record::Outcome::Result(payload.clone())),
            };
            ("s", record.encode_to_vec(), 0)
        }
        Outcome::Failed { error, retry_at_ms } => {
            let record = store_pb::OutcomeRecord {
                outcome: Some(outcome_record::Outcome::Error(error.clone())),
            };
            match retry_at_ms {
                Some(due) => ("r", record.encode_to_vec(), *due),
                None => ("f", record.encode_to_vec(), 0),
            }
        }
    }
}

fn number(fields: &[(String, Vec<u8>)], name: &str) -> i64 {
    fields
        .iter()
        .find(|(field, _)| field == name)
        .and_then(|(_, value)| std::str::from_utf8(value).ok()?.parse::<f64>().ok())
        .map(|value| value as i64)
        .unwrap_or(0)
}

fn text(fields: &[(String, Vec<u8>)], name: &str) -> String {
    fields
        .iter()
        .find(|(field, _)| field == name)
        .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
        .unwrap_or_default()
}

/// The inputs a ready workflow node keeps (field `wi`): per parent,
/// `<length>:<parent id><state digit><outcome record>`.
pub(crate) fn decode_arrivals(blob: &[u8]) -> std::result::Result<Vec<Arrival>, String> {
    let mut arrivals = Vec::new();
    let mut rest = blob;
    while !rest.is_empty() {
        let colon = rest
            .iter()
            .position(|byte| *byte == b':')
            .ok_or("input without a length")?;
        let length: usize = std::str::from_utf8(&rest[..colon])
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or("input length is not a number")?;
        // A corrupt length may be anything: no arithmetic may overflow
        // (found by the `stored` fuzz target).
        let end = (colon + 1)
            .checked_add(length)
            .ok_or("input length out of range")?;
        let entry = rest
            .get(colon + 1..end)
            .ok_or("input shorter than its length")?;
        rest = &rest[end..];
        if entry.len() < 37 {
            return Err("input entry too short".into());
        }
        let task_id = String::from_utf8_lossy(&entry[..36]).into_owned();
        let state = TaskState::from_i32(i32::from(entry[36]) - i32::from(b'0'))
            .ok_or("input state is not a digit")?;
        let outcome = if entry.len() > 37 {
            Some(
                store_pb::OutcomeRecord::decode(&entry[37..])
                    .map_err(|error| format!("input outcome: {error}"))?,
            )
        } else {
            None
        };
        arrivals.push(Arrival {
            task_id,
            state,
            outcome,
        });
    }
    Ok(arrivals)
}

/// Prepends a ready node's inputs to its arguments.
pub(crate) fn apply_inputs(
    id: TaskId,
    record: &mut store_pb::TaskRecord,
    rule: NodeRule,
    blob: &[u8],
) -> Result<()> {
    let arrivals = decode_arrivals(blob).map_err(|reason| ConveyorError::Corrupt {
        key: id.to_string(),
        reason: format!("workflow inputs: {reason}"),
    })?;
    let mut args = inputs(rule, &arrivals);
    if !args.is_empty() {
        args.append(&mut record.args);
        record.args = args;
    }
    Ok(())
}

/// The lease script's form of a node's inputs: trigger and input digits,
/// then the `wi` field.
pub(crate) fn apply_leased_inputs(
    id: TaskId,
    record: &mut store_pb::TaskRecord,
    encoded: &[u8],
) -> Result<()> {
    if encoded.len() < 2 {
        return Ok(());
    }
    let rule = NodeRule::from_codes(encoded[1].wrapping_sub(b'0'), encoded[0].wrapping_sub(b'0'));
    apply_inputs(id, record, rule, &encoded[2..])
}

/// A task from its hash fields.
pub(crate) fn parse_task(id: TaskId, fields: Vec<(String, Vec<u8>)>) -> Result<StoredTask> {
    let corrupt = |reason: String| ConveyorError::Corrupt {
        key: id.to_string(),
        reason,
    };
    let spec = fields
        .iter()
        .find(|(field, _)| field == "sp")
        .map(|(_, value)| value.as_slice())
        .ok_or_else(|| corrupt("missing spec".into()))?;
    let record =
        store_pb::TaskRecord::decode(spec).map_err(|error| corrupt(format!("spec: {error}")))?;
    let outcome = match fields.iter().find(|(field, _)| field == "oc") {
        Some((_, bytes)) => Some(
            store_pb::OutcomeRecord::decode(bytes.as_slice())
                .map_err(|error| corrupt(format!("outcome: {error}")))?,
        ),
        None => None,
    };
    let progress = match fields.iter().find(|(field, _)| field == "pg") {
        Some((_, bytes)) => Some(
            conveyor_api::pb::Progress::decode(bytes.as_slice())
                .map_err(|error| corrupt(format!("progress: {error}")))?,
        ),
        None => None,
    };
    let mut record = record;
    let find = |name: &str| {
        fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_slice())
    };
    if let Some(blob) = find("wi") {
        let rule = NodeRule::from_codes(number(&fields, "wm") as u8, number(&fields, "wt") as u8);
        apply_inputs(id, &mut record, rule, blob)?;
    }
    let node_of = match find("wf") {
        Some(workflow) => Some((
            TaskId::parse(&String::from_utf8_lossy(workflow), "wf")
                .map_err(|_| corrupt("workflow id is not a uuid".into()))?,
            number(&fields, "wn") as u32,
        )),
        None => None,
    };
    // A node that did not run because of a parent: its error, from the
    // parent and root cause the script kept.
    let outcome = match (outcome, find("wx")) {
        (None, Some(parent)) if number(&fields, "st") == 6 => {
            let parent = String::from_utf8_lossy(parent).into_owned();
            let root = find("wr")
                .map(|root| String::from_utf8_lossy(root).into_owned())
                .unwrap_or_else(|| parent.clone());
            Some(store_pb::OutcomeRecord {
                outcome: Some(outcome_record::Outcome::Error(dependency_error(
                    &parent, &root,
                ))),
            })
        }
        (outcome, _) => outcome,
    };
    let is_workflow = find("wnc").is_some();
    let created_at_ms = record.created_at_ms;
    let state_code = number(&fields, "st");
    let state = TaskState::from_i32(state_code as i32)
        .ok_or_else(|| corrupt(format!("state {state_code}")))?;
    let queue = text(&fields, "qk")
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string();
    Ok(StoredTask {
        id,
        record,
        state,
        attempt: number(&fields, "at") as u32,
        failures: number(&fields, "fl") as u32,
        lease_token: number(&fields, "tk") as u64,
        session_id: text(&fields, "ss"),
        worker_id: text(&fields, "wk"),
        queue,
        // Absent until they differ from creation (see the enqueue script).
        updated_at_ms: Some(number(&fields, "ua"))
            .filter(|ms| *ms > 0)
            .unwrap_or(created_at_ms),
        due_at_ms: Some(number(&fields, "du"))
            .filter(|ms| *ms > 0)
            .unwrap_or(created_at_ms),
        finished_at_ms: number(&fields, "fa"),
        // Reported outcomes store `fa` with µs as a fraction of the ms.
        finished_at_us: fields
            .iter()
            .find(|(field, _)| field == "fa")
            .and_then(|(_, value)| std::str::from_utf8(value).ok()?.parse::<f64>().ok())
            .map_or(0, |ms| (ms * 1000.0).round() as i64),
        outcome,
        progress,
        node_of,
        is_workflow,
    })
}
