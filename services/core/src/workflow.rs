//! Workflows: a DAG of tasks submitted in one call. SDKs compile Celery's
//! canvas (chain, group, chord, link, link_error) into nodes and edges; the
//! server knows only those. This module validates a `WorkflowSpec` and
//! defines, once for every backend, what a node receives from its parents.
//!
//! Both stores keep every node of a workflow in one partition and, in the
//! operation that records a node's outcome, settle its children: an input
//! arrives, a dependent fails or is cancelled, a link_error callback fires,
//! and a node whose inputs are complete is queued. So a chord callback is
//! queued exactly once, by the operation that records the last header
//! outcome.

use std::collections::VecDeque;

use conveyor_api::{pb, store_pb};

use crate::defaults::TaskDefaults;
use crate::error::{ConveyorError, Result};
use crate::ids::TaskId;
use crate::limits::Limits;
use crate::state::TaskState;
use crate::validate::{NewTask, validate_with_defaults};

/// Most nodes in one workflow.
pub const MAX_NODES: usize = 20_000;
/// Most edges (parent references) in one workflow.
pub const MAX_EDGES: usize = 200_000;
/// The JSON content type.
const JSON: &str = "application/json";

/// A node's input and trigger, resolved (never unspecified).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeRule {
    /// How parents' results become arguments.
    pub input: pb::NodeInput,
    /// When the node runs.
    pub trigger: pb::NodeTrigger,
}

impl NodeRule {
    /// The store code of the input (1 none, 2 one, 3 list).
    pub fn input_code(self) -> u8 {
        match self.input {
            pb::NodeInput::One => 2,
            pb::NodeInput::List => 3,
            _ => 1,
        }
    }

    /// The store code of the trigger (1 all succeeded, 2 all done, 3 on failure).
    pub fn trigger_code(self) -> u8 {
        match self.trigger {
            pb::NodeTrigger::AllDone => 2,
            pb::NodeTrigger::OnFailure => 3,
            _ => 1,
        }
    }

    /// From the store codes.
    pub fn from_codes(input: u8, trigger: u8) -> Self {
        Self {
            input: match input {
                2 => pb::NodeInput::One,
                3 => pb::NodeInput::List,
                _ => pb::NodeInput::None,
            },
            trigger: match trigger {
                2 => pb::NodeTrigger::AllDone,
                3 => pb::NodeTrigger::OnFailure,
                _ => pb::NodeTrigger::AllSucceeded,
            },
        }
    }
}

/// One node, validated.
#[derive(Debug, Clone)]
pub struct NewNode {
    /// The node's task (its id names the workflow's partition).
    pub task: NewTask,
    /// Parent indices, in input order.
    pub parents: Vec<u32>,
    /// (child index, this node's position among the child's parents).
    pub children: Vec<(u32, u32)>,
    /// Input and trigger.
    pub rule: NodeRule,
    /// For a node with parents: when it becomes ready, the delay (`+ms`,
    /// a countdown) or instant (`ms`, an ETA) it waits before its queue;
    /// `None` to be queued at once.
    pub ready_delay: Option<ReadyDelay>,
}

/// When a node that became ready enters its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyDelay {
    /// This long after it became ready (countdown).
    After(i64),
    /// At this instant, Unix ms (ETA), if later.
    At(i64),
}

impl ReadyDelay {
    /// The due instant for a node that became ready at `now_ms`.
    pub fn due(self, now_ms: i64) -> i64 {
        match self {
            ReadyDelay::After(ms) => now_ms + ms,
            ReadyDelay::At(at) => at,
        }
    }

    /// The Lua form: `+N` relative, `N` absolute.
    pub fn to_script(self) -> String {
        match self {
            ReadyDelay::After(ms) => format!("+{ms}"),
            ReadyDelay::At(at) => at.to_string(),
        }
    }
}

/// A validated workflow, ready to store.
#[derive(Debug, Clone)]
pub struct NewWorkflow {
    /// The workflow's id: its head entry, in the nodes' partition.
    pub id: TaskId,
    /// The head's record (name, namespace, creation, result TTL).
    pub head: store_pb::TaskRecord,
    /// The graph kept at rest (task ids filled in by [`NewWorkflow::assign_ids`]).
    pub graph: store_pb::WorkflowRecord,
    /// The nodes.
    pub nodes: Vec<NewNode>,
    /// Idempotency key of the workflow, if any.
    pub idempotency_key: Option<String>,
    /// How long the key is remembered, ms.
    pub idempotency_ttl_ms: i64,
    /// How long the head is kept after the workflow finished, ms.
    pub result_ttl_ms: i64,
}

impl NewWorkflow {
    /// Gives every node and the head an id in `partition`, and records the
    /// node ids in the graph.
    pub fn assign_ids(&mut self, partition: u16) {
        self.id = TaskId::new(partition);
        for (node, record) in self.nodes.iter_mut().zip(self.graph.nodes.iter_mut()) {
            node.task.id = TaskId::new(partition);
            record.task_id = node.task.id.to_string();
        }
    }

    /// Moves the workflow into `namespace`.
    pub fn in_namespace(mut self, namespace: &crate::Namespace) -> Self {
        self.nodes = self
            .nodes
            .into_iter()
            .map(|mut node| {
                node.task = node.task.in_namespace(namespace);
                node
            })
            .collect();
        self.idempotency_key = self.idempotency_key.map(|key| namespace.key(&key));
        self.head.namespace = namespace.stored().to_string();
        self
    }

    /// Whether any node needs the coordination partition (see
    /// [`crate::placement`]): the whole workflow then lives there.
    pub fn needs_coordination(&self) -> bool {
        self.idempotency_key.is_some()
            || self
                .nodes
                .iter()
                .any(|node| crate::placement::needs_coordination(&node.task))
    }
}

fn is_unset<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Fills the fields `node` leaves unset from the workflow's `defaults`.
/// Countdown and ETA apply to nodes without parents only (Celery delays
/// the first task of a chain, not every step).
fn merge_options(node: &mut pb::TaskOptions, defaults: &pb::TaskOptions, root: bool) {
    macro_rules! fill {
        ($($field:ident),*) => {$(
            if is_unset(&node.$field) {
                node.$field = defaults.$field.clone();
            }
        )*};
    }
    fill!(
        queue,
        priority,
        expires,
        retry,
        soft_time_limit,
        hard_time_limit,
        rate_limit_key,
        concurrency_key,
        concurrency_limit,
        result_ttl,
        rate_limit,
        concurrency_keys
    );
    if root && node.countdown.is_none() && node.eta.is_none() {
        node.countdown = defaults.countdown;
        node.eta = defaults.eta;
    }
    for (name, value) in &defaults.headers {
        node.headers
            .entry(name.clone())
            .or_insert_with(|| value.clone());
    }
}

/// Validates a workflow. Errors name the node (`workflow.nodes[3].parents`)
/// and nothing is stored.
pub fn validate_workflow(
    spec: pb::WorkflowSpec,
    limits: &Limits,
    defaults: &TaskDefaults,
    now_ms: i64,
) -> Result<NewWorkflow> {
    let count = spec.nodes.len();
    if count == 0 {
        return Err(ConveyorError::invalid(
            "workflow.nodes",
            "must not be empty: a workflow needs at least one task (an empty group or chain \
             has nothing to run)",
        ));
    }
    if count > MAX_NODES {
        return Err(ConveyorError::exhausted(
            "workflow.nodes",
            format!(
                "{count} nodes; the limit is {MAX_NODES} per workflow: split it, or chain workflows through a callback task"
            ),
        ));
    }
    let edges: usize = spec.nodes.iter().map(|node| node.parents.len()).sum();
    if edges > MAX_EDGES {
        return Err(ConveyorError::exhausted(
            "workflow.nodes",
            format!("{edges} edges (parent references); the limit is {MAX_EDGES}"),
        ));
    }
    if spec.name.len() > limits.max_name_len || spec.name.chars().any(char::is_control) {
        return Err(ConveyorError::invalid(
            "workflow.name",
            format!(
                "must be at most {} bytes, without control characters",
                limits.max_name_len
            ),
        ));
    }
    if spec.idempotency_key.len() > limits.max_name_len
        || spec.idempotency_key.chars().any(char::is_control)
    {
        return Err(ConveyorError::invalid(
            "workflow.idempotency_key",
            format!(
                "must be at most {} bytes, without control characters",
                limits.max_name_len
            ),
        ));
    }
    let workflow_options = spec.options.clone().unwrap_or_default();
    let mut nodes = Vec::with_capacity(count);
    let mut records = Vec::with_capacity(count);
    let mut children: Vec<Vec<(u32, u32)>> = vec![Vec::new(); count];
    for (index, node) in spec.nodes.into_iter().enumerate() {
        let prefix = format!("workflow.nodes[{index}]");
        let Some(mut task) = node.task else {
            return Err(ConveyorError::invalid(
                format!("{prefix}.task"),
                "required: every node is a task",
            ));
        };
        if !task.idempotency_key.is_empty() {
            return Err(ConveyorError::invalid(
                format!("{prefix}.task.idempotency_key"),
                "nodes cannot carry idempotency keys; set WorkflowSpec.idempotency_key instead",
            ));
        }
        if node.label.len() > limits.max_name_len || node.label.chars().any(char::is_control) {
            return Err(ConveyorError::invalid(
                format!("{prefix}.label"),
                format!(
                    "must be at most {} bytes, without control characters",
                    limits.max_name_len
                ),
            ));
        }
        let mut seen = std::collections::HashSet::with_capacity(node.parents.len());
        for (position, &parent) in node.parents.iter().enumerate() {
            let field = format!("{prefix}.parents[{position}]");
            if parent as usize >= count {
                return Err(ConveyorError::invalid(
                    field,
                    format!(
                        "node {parent} does not exist: the workflow has {count} nodes (0..{})",
                        count - 1
                    ),
                ));
            }
            if parent as usize == index {
                return Err(ConveyorError::invalid(
                    field,
                    "a node cannot depend on itself",
                ));
            }
            if !seen.insert(parent) {
                return Err(ConveyorError::invalid(
                    field,
                    format!("node {parent} is listed twice"),
                ));
            }
            children[parent as usize].push((index as u32, position as u32));
        }
        let trigger = match pb::NodeTrigger::try_from(node.trigger) {
            Ok(pb::NodeTrigger::Unspecified) => pb::NodeTrigger::AllSucceeded,
            Ok(trigger) => trigger,
            Err(_) => {
                return Err(ConveyorError::invalid(
                    format!("{prefix}.trigger"),
                    format!("unknown value {}; use a NodeTrigger", node.trigger),
                ));
            }
        };
        let input = match pb::NodeInput::try_from(node.input) {
            Err(_) => {
                return Err(ConveyorError::invalid(
                    format!("{prefix}.input"),
                    format!("unknown value {}; use a NodeInput", node.input),
                ));
            }
            Ok(_) if node.parents.is_empty() => pb::NodeInput::None,
            Ok(pb::NodeInput::Unspecified) if node.parents.len() == 1 => pb::NodeInput::One,
            Ok(pb::NodeInput::Unspecified) => pb::NodeInput::List,
            Ok(pb::NodeInput::One) if node.parents.len() != 1 => {
                return Err(ConveyorError::invalid(
                    format!("{prefix}.input"),
                    format!(
                        "NODE_INPUT_ONE needs exactly one parent, the node has {}; use NODE_INPUT_LIST",
                        node.parents.len()
                    ),
                ));
            }
            Ok(input) => input,
        };
        if trigger == pb::NodeTrigger::OnFailure && node.parents.is_empty() {
            return Err(ConveyorError::invalid(
                format!("{prefix}.trigger"),
                "NODE_TRIGGER_ON_FAILURE needs parents: the nodes whose failure it handles",
            ));
        }
        let root = node.parents.is_empty();
        let mut options = task.options.take().unwrap_or_default();
        merge_options(&mut options, &workflow_options, root);
        task.options = Some(options);
        if task.trace_context.is_none() {
            task.trace_context = spec.trace_context.clone();
        }
        let new_task =
            validate_with_defaults(task, &format!("{prefix}.task"), limits, defaults, now_ms, 0)?;
        let ready_delay = if root {
            None
        } else {
            let options = new_task.record.options.as_ref();
            match (
                options.and_then(|o| o.countdown),
                options.and_then(|o| o.eta),
            ) {
                (Some(countdown), _) => Some(ReadyDelay::After(
                    countdown.seconds * 1000 + i64::from(countdown.nanos) / 1_000_000,
                )),
                (None, Some(_)) => Some(ReadyDelay::At(new_task.due_at_ms)),
                (None, None) => None,
            }
        };
        records.push(store_pb::WorkflowNodeRecord {
            task_id: String::new(),
            parents: node.parents.clone(),
            input: input as i32,
            trigger: trigger as i32,
            label: node.label,
        });
        nodes.push(NewNode {
            task: new_task,
            parents: node.parents,
            children: Vec::new(),
            rule: NodeRule { input, trigger },
            ready_delay,
        });
    }
    for (node, children) in nodes.iter_mut().zip(children) {
        node.children = children;
    }
    check_acyclic(&nodes)?;
    for (position, &output) in spec.outputs.iter().enumerate() {
        if output as usize >= count {
            return Err(ConveyorError::invalid(
                format!("workflow.outputs[{position}]"),
                format!("node {output} does not exist: the workflow has {count} nodes"),
            ));
        }
    }
    if !spec.output_list && spec.outputs.len() > 1 {
        return Err(ConveyorError::invalid(
            "workflow.outputs",
            format!(
                "{} outputs without output_list: a single result needs exactly one output node; \
                 set output_list for a list",
                spec.outputs.len()
            ),
        ));
    }
    let result_ttl_ms = nodes
        .iter()
        .map(|node| node.task.result_ttl_ms)
        .max()
        .unwrap_or(limits.default_result_ttl_ms);
    let head = store_pb::TaskRecord {
        name: if spec.name.is_empty() {
            "workflow".to_string()
        } else {
            spec.name.clone()
        },
        created_at_ms: now_ms,
        idempotency_key: spec.idempotency_key.clone(),
        trace_context: spec.trace_context,
        ..Default::default()
    };
    Ok(NewWorkflow {
        id: TaskId::new(0),
        head,
        graph: store_pb::WorkflowRecord {
            name: spec.name,
            nodes: records,
            outputs: spec.outputs,
            output_list: spec.output_list,
        },
        nodes,
        idempotency_key: (!spec.idempotency_key.is_empty()).then_some(spec.idempotency_key),
        idempotency_ttl_ms: limits.idempotency_window_ms,
        result_ttl_ms,
    })
}

/// Kahn's algorithm: every node must be reachable in a topological order.
fn check_acyclic(nodes: &[NewNode]) -> Result<()> {
    let mut waiting: Vec<usize> = nodes.iter().map(|node| node.parents.len()).collect();
    let mut ready: VecDeque<usize> = (0..nodes.len()).filter(|&i| waiting[i] == 0).collect();
    let mut seen = 0;
    while let Some(index) = ready.pop_front() {
        seen += 1;
        for &(child, _) in &nodes[index].children {
            waiting[child as usize] -= 1;
            if waiting[child as usize] == 0 {
                ready.push_back(child as usize);
            }
        }
    }
    if seen == nodes.len() {
        return Ok(());
    }
    let stuck = waiting.iter().position(|&left| left > 0).unwrap_or(0);
    Err(ConveyorError::invalid(
        format!("workflow.nodes[{stuck}].parents"),
        "the edges form a cycle through this node: a workflow must be a DAG",
    ))
}

/// What a parent left for a child: its id, final state and outcome.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// The parent's task id.
    pub task_id: String,
    /// Its final state.
    pub state: TaskState,
    /// Its recorded outcome, if any.
    pub outcome: Option<store_pb::OutcomeRecord>,
}

impl Arrival {
    fn error(&self) -> pb::TaskError {
        match self.outcome.as_ref().and_then(|o| o.outcome.as_ref()) {
            Some(store_pb::outcome_record::Outcome::Error(error)) => error.clone(),
            _ => match self.state {
                TaskState::Cancelled => pb::TaskError {
                    r#type: "Cancelled".into(),
                    message: format!("task {} was cancelled", self.task_id),
                    ..Default::default()
                },
                TaskState::Expired => pb::TaskError {
                    r#type: "Expired".into(),
                    message: format!("task {} expired before it ran", self.task_id),
                    ..Default::default()
                },
                // A FAILED task without an error of its own never ran.
                _ => pb::TaskError {
                    r#type: "DependencyFailed".into(),
                    message: format!(
                        "task {} did not run: a task it depends on failed",
                        self.task_id
                    ),
                    reason: pb::FailureReason::DependencyFailed as i32,
                    ..Default::default()
                },
            },
        }
    }

    /// The parent's value as one JSON array element.
    fn json_element(&self) -> Vec<u8> {
        if self.state == TaskState::Succeeded
            && let Some(store_pb::outcome_record::Outcome::Result(payload)) =
                self.outcome.as_ref().and_then(|o| o.outcome.as_ref())
        {
            return json_value(payload);
        }
        let error = self.error();
        serde_json::to_vec(&serde_json::json!({
            "error": {"type": error.r#type, "message": error.message, "task_id": self.task_id}
        }))
        .unwrap_or_else(|_| b"null".to_vec())
    }
}

/// A payload as a JSON value: JSON as it is, anything else wrapped.
fn json_value(payload: &pb::Payload) -> Vec<u8> {
    if payload.content_type.is_empty() || payload.content_type == JSON {
        if payload.data.is_empty() {
            return b"null".to_vec();
        }
        return payload.data.clone();
    }
    use base64::Engine as _;
    serde_json::to_vec(&serde_json::json!({
        "content_type": payload.content_type,
        "base64": base64::engine::general_purpose::STANDARD.encode(&payload.data),
    }))
    .unwrap_or_else(|_| b"null".to_vec())
}

fn json_payload(value: &serde_json::Value) -> pb::Payload {
    pb::Payload {
        data: serde_json::to_vec(value).unwrap_or_default(),
        content_type: String::new(),
    }
}

/// The positional arguments a ready node's parents give it, prepended to
/// its own. `arrivals` are in parent order (an ON_FAILURE node gets the one
/// failure that fired it).
pub fn inputs(rule: NodeRule, arrivals: &[Arrival]) -> Vec<pb::Payload> {
    if rule.trigger == pb::NodeTrigger::OnFailure {
        let Some(failed) = arrivals.first() else {
            return Vec::new();
        };
        let error = failed.error();
        return vec![
            json_payload(&serde_json::Value::String(failed.task_id.clone())),
            json_payload(&serde_json::json!({
                "type": error.r#type,
                "message": error.message,
                "traceback": error.traceback,
            })),
        ];
    }
    match rule.input {
        pb::NodeInput::One => match arrivals.first() {
            Some(arrival) => match arrival.outcome.as_ref().and_then(|o| o.outcome.as_ref()) {
                Some(store_pb::outcome_record::Outcome::Result(payload))
                    if arrival.state == TaskState::Succeeded =>
                {
                    vec![payload.clone()]
                }
                _ => vec![pb::Payload {
                    data: arrival.json_element(),
                    content_type: String::new(),
                }],
            },
            None => Vec::new(),
        },
        pb::NodeInput::List => {
            let mut data = Vec::with_capacity(
                2 + arrivals
                    .iter()
                    .map(|a| {
                        a.outcome.as_ref().map_or(8, |o| match &o.outcome {
                            Some(store_pb::outcome_record::Outcome::Result(p)) => p.data.len() + 1,
                            _ => 64,
                        })
                    })
                    .sum::<usize>(),
            );
            data.push(b'[');
            for (index, arrival) in arrivals.iter().enumerate() {
                if index > 0 {
                    data.push(b',');
                }
                data.extend_from_slice(&arrival.json_element());
            }
            data.push(b']');
            vec![pb::Payload {
                data,
                content_type: String::new(),
            }]
        }
        _ => Vec::new(),
    }
}

/// The error of a node that did not run because `parent` failed; `root`
/// is the node whose own failure started the chain.
pub fn dependency_error(parent: &str, root: &str) -> pb::TaskError {
    let message = if parent == root {
        format!("did not run: the task it depends on, {parent}, failed (or expired)")
    } else {
        format!(
            "did not run: the task it depends on, {parent}, did not run because task {root} failed"
        )
    };
    pb::TaskError {
        r#type: "DependencyFailed".into(),
        message,
        traceback: String::new(),
        retryable: false,
        retry_after: None,
        reason: pb::FailureReason::DependencyFailed as i32,
        cause_task_id: parent.to_string(),
    }
}

/// The state of a workflow from its counters.
pub fn workflow_state(head: TaskState) -> pb::WorkflowState {
    match head {
        TaskState::Succeeded => pb::WorkflowState::Succeeded,
        TaskState::Failed => pb::WorkflowState::Failed,
        TaskState::Cancelled | TaskState::Expired => pb::WorkflowState::Cancelled,
        _ => pb::WorkflowState::Running,
    }
}

/// The workflow's result from its output nodes (`None` unless every one
/// succeeded).
pub fn workflow_result<'a>(
    graph: &store_pb::WorkflowRecord,
    node: impl Fn(u32) -> Option<&'a crate::StoredTask>,
) -> Option<pb::Payload> {
    let mut results = Vec::with_capacity(graph.outputs.len());
    for &output in &graph.outputs {
        let task = node(output)?;
        match task.outcome.as_ref().and_then(|o| o.outcome.as_ref()) {
            Some(store_pb::outcome_record::Outcome::Result(payload))
                if task.state == TaskState::Succeeded =>
            {
                results.push(payload)
            }
            _ => return None,
        }
    }
    if !graph.output_list {
        return results
            .first()
            .map(|payload| crate::task::with_content_type((*payload).clone()));
    }
    let mut data = vec![b'['];
    for (index, payload) in results.iter().enumerate() {
        if index > 0 {
            data.push(b',');
        }
        data.extend_from_slice(&json_value(payload));
    }
    data.push(b']');
    Some(pb::Payload {
        data,
        content_type: JSON.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, parents: &[u32]) -> pb::WorkflowNode {
        pb::WorkflowNode {
            task: Some(pb::TaskSpec {
                name: name.into(),
                ..Default::default()
            }),
            parents: parents.to_vec(),
            ..Default::default()
        }
    }

    fn validate(nodes: Vec<pb::WorkflowNode>) -> Result<NewWorkflow> {
        validate_workflow(
            pb::WorkflowSpec {
                nodes,
                ..Default::default()
            },
            &Limits::default(),
            &TaskDefaults::default(),
            1_000,
        )
    }

    fn field(error: ConveyorError) -> String {
        match error {
            ConveyorError::InvalidArgument(violation) => violation.field,
            ConveyorError::ResourceExhausted { field, .. } => field,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn inputs_resolve_from_parents() {
        let workflow =
            validate(vec![node("a", &[]), node("b", &[0]), node("c", &[0, 1])]).expect("valid");
        let rules: Vec<_> = workflow.nodes.iter().map(|n| n.rule.input).collect();
        assert_eq!(
            rules,
            [pb::NodeInput::None, pb::NodeInput::One, pb::NodeInput::List]
        );
        assert_eq!(workflow.nodes[0].children, [(1, 0), (2, 0)]);
        assert_eq!(workflow.nodes[1].children, [(2, 1)]);
    }

    #[test]
    fn bad_graphs_name_the_node() {
        assert_eq!(field(validate(vec![]).unwrap_err()), "workflow.nodes");
        assert_eq!(
            field(validate(vec![node("a", &[1]), node("b", &[0])]).unwrap_err()),
            "workflow.nodes[0].parents"
        );
        assert_eq!(
            field(validate(vec![node("a", &[]), node("b", &[7])]).unwrap_err()),
            "workflow.nodes[1].parents[0]"
        );
        assert_eq!(
            field(validate(vec![node("a", &[]), node("b", &[0, 0])]).unwrap_err()),
            "workflow.nodes[1].parents[1]"
        );
        assert_eq!(
            field(validate(vec![node("a", &[0])]).unwrap_err()),
            "workflow.nodes[0].parents[0]"
        );
        let mut keyed = node("a", &[]);
        keyed.task.as_mut().unwrap().idempotency_key = "k".into();
        assert_eq!(
            field(validate(vec![keyed]).unwrap_err()),
            "workflow.nodes[0].task.idempotency_key"
        );
        let mut one = node("c", &[0, 1]);
        one.input = pb::NodeInput::One as i32;
        assert_eq!(
            field(validate(vec![node("a", &[]), node("b", &[]), one]).unwrap_err()),
            "workflow.nodes[2].input"
        );
        let too_many = (0..=MAX_NODES).map(|_| node("a", &[])).collect();
        assert!(matches!(
            validate(too_many).unwrap_err(),
            ConveyorError::ResourceExhausted { .. }
        ));
    }

    #[test]
    fn list_inputs_are_json_in_parent_order() {
        let ok = |id: &str, json: &str| Arrival {
            task_id: id.into(),
            state: TaskState::Succeeded,
            outcome: Some(store_pb::OutcomeRecord {
                outcome: Some(store_pb::outcome_record::Outcome::Result(pb::Payload {
                    data: json.as_bytes().to_vec(),
                    content_type: String::new(),
                })),
            }),
        };
        let rule = NodeRule {
            input: pb::NodeInput::List,
            trigger: pb::NodeTrigger::AllDone,
        };
        let failed = Arrival {
            task_id: "t3".into(),
            state: TaskState::Failed,
            outcome: None,
        };
        let args = inputs(rule, &[ok("t1", "1"), ok("t2", "{\"a\":2}"), failed]);
        let value: serde_json::Value = serde_json::from_slice(&args[0].data).unwrap();
        assert_eq!(value[0], 1);
        assert_eq!(value[1]["a"], 2);
        assert_eq!(value[2]["error"]["task_id"], "t3");
    }
}
