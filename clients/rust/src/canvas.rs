//! Workflows: Celery's canvas in Rust. A [`Canvas`] is a task, a chain, a
//! group or a chord, with link and link_error callbacks; it compiles
//! client-side into the DAG that `SubmitWorkflow` takes (the same DAG every
//! SDK builds for the same canvas), and the server runs it atomically.
//!
//! ```
//! use conveyor_client::{TaskRequest, canvas::{chain, chord, group}};
//!
//! // add(1, 2) | group(add(_, i) for i in 0..3) | xsum
//! let workflow = chain([
//!     TaskRequest::new("add").arg(1).arg(2).into(),
//!     group((0..3).map(|i| TaskRequest::new("add").arg(i))),
//!     TaskRequest::new("xsum").into(),
//! ]);
//! let spec = workflow.compile().unwrap();
//! assert_eq!(spec.nodes.len(), 5);
//! assert_eq!(spec.nodes[4].parents, [1, 2, 3]);
//! ```

use conveyor_api::pb;

use crate::error::{Error, Result};
use crate::task::TaskRequest;

/// Most nodes in one workflow (the server's limit).
pub const MAX_NODES: usize = 20_000;

/// A canvas element: a task, a chain, a group or a chord, with callbacks.
#[derive(Debug, Clone)]
#[must_use = "a canvas does nothing until it is submitted"]
pub struct Canvas {
    kind: Kind,
    links: Vec<Canvas>,
    error_links: Vec<Canvas>,
}

#[derive(Debug, Clone)]
enum Kind {
    Task {
        request: Box<TaskRequest>,
        immutable: bool,
    },
    Chain(Vec<Canvas>),
    Group(Vec<Canvas>),
    Chord {
        header: Vec<Canvas>,
        body: Box<Canvas>,
        allow_errors: bool,
    },
}

impl From<TaskRequest> for Canvas {
    fn from(request: TaskRequest) -> Self {
        Canvas::new(Kind::Task {
            request: Box::new(request),
            immutable: false,
        })
    }
}

/// Tasks run one after the other, each receiving the previous result as
/// its first argument (a group followed by a task becomes a chord).
pub fn chain<C: Into<Canvas>>(items: impl IntoIterator<Item = C>) -> Canvas {
    Canvas::new(Kind::Chain(items.into_iter().map(Into::into).collect()))
}

/// Elements run in parallel; the result is the list of their results in
/// declaration order.
pub fn group<C: Into<Canvas>>(items: impl IntoIterator<Item = C>) -> Canvas {
    Canvas::new(Kind::Group(items.into_iter().map(Into::into).collect()))
}

/// A group (the header) and a callback receiving the list of the header's
/// results in declaration order, queued exactly once when the last header
/// task finishes.
pub fn chord<C: Into<Canvas>>(
    header: impl IntoIterator<Item = C>,
    body: impl Into<Canvas>,
) -> Canvas {
    Canvas::new(Kind::Chord {
        header: header.into_iter().map(Into::into).collect(),
        body: Box::new(body.into()),
        allow_errors: false,
    })
}

/// One `name` task per argument list, as a group (Celery's `starmap`).
pub fn starmap<I, A>(name: &str, arguments: I) -> Canvas
where
    I: IntoIterator<Item = A>,
    A: IntoIterator<Item = serde_json::Value>,
{
    group(arguments.into_iter().map(|args| {
        args.into_iter()
            .fold(TaskRequest::new(name), |request, arg| request.arg(arg))
    }))
}

impl Canvas {
    fn new(kind: Kind) -> Self {
        Canvas {
            kind,
            links: Vec::new(),
            error_links: Vec::new(),
        }
    }

    /// A task that ignores its parents' results (Celery's `.si()`).
    pub fn immutable(request: TaskRequest) -> Canvas {
        Canvas::new(Kind::Task {
            request: Box::new(request),
            immutable: true,
        })
    }

    /// Runs `callback` with this element's result once it succeeded.
    pub fn link(mut self, callback: impl Into<Canvas>) -> Canvas {
        self.links.push(callback.into());
        self
    }

    /// Runs `errback` once, on the first failure of any task of this
    /// element, with the failed task's id and error as its first two
    /// arguments.
    pub fn link_error(mut self, errback: impl Into<Canvas>) -> Canvas {
        self.error_links.push(errback.into());
        self
    }

    /// `self` then `next`, as [`chain`].
    pub fn then(self, next: impl Into<Canvas>) -> Canvas {
        match self.kind {
            Kind::Chain(mut items) if self.links.is_empty() && self.error_links.is_empty() => {
                items.push(next.into());
                Canvas::new(Kind::Chain(items))
            }
            kind => chain([
                Canvas {
                    kind,
                    links: self.links,
                    error_links: self.error_links,
                },
                next.into(),
            ]),
        }
    }

    /// For a chord: the callback runs even when header tasks failed,
    /// receiving `{"error": {...}}` in their places.
    pub fn allow_errors(mut self) -> Canvas {
        if let Kind::Chord { allow_errors, .. } = &mut self.kind {
            *allow_errors = true;
        }
        self
    }

    /// A short display name, e.g. `chain(add, group(add x3), xsum)`.
    pub fn display_name(&self) -> String {
        fn name(canvas: &Canvas) -> String {
            match &canvas.kind {
                Kind::Task { request, .. } => request.name().to_string(),
                Kind::Chain(items) => {
                    format!(
                        "chain({})",
                        items.iter().map(name).collect::<Vec<_>>().join(", ")
                    )
                }
                Kind::Group(items) => match items.first() {
                    Some(first) if items.iter().all(|item| name(item) == name(first)) => {
                        format!("group({} x{})", name(first), items.len())
                    }
                    _ => format!(
                        "group({})",
                        items.iter().map(name).collect::<Vec<_>>().join(", ")
                    ),
                },
                Kind::Chord { header, body, .. } => {
                    format!("chord({}, {})", name(&group(header.clone())), name(body))
                }
            }
        }
        let mut text = name(self);
        if text.len() > 200 {
            let mut end = 197;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str("...");
        }
        text
    }

    /// The DAG `SubmitWorkflow` takes. Errors for an empty chain or group,
    /// an idempotency key on a task (give the workflow one instead), an
    /// argument that does not encode, or more than [`MAX_NODES`] tasks.
    pub fn compile(&self) -> Result<pb::WorkflowSpec> {
        let mut nodes = Vec::new();
        let (exits, _) = compile(self, &[], &mut nodes)?;
        if nodes.len() > MAX_NODES {
            return Err(invalid(format!(
                "the workflow has {} tasks; the limit is {MAX_NODES}",
                nodes.len()
            )));
        }
        let output_list = matches!(self.kind, Kind::Group(_)) || exits.len() > 1;
        Ok(pb::WorkflowSpec {
            nodes,
            name: self.display_name(),
            outputs: exits,
            output_list,
            ..Default::default()
        })
    }
}

fn invalid(message: String) -> Error {
    Error::Rpc(tonic::Status::invalid_argument(message))
}

fn input_for(parents: &[u32]) -> pb::NodeInput {
    match parents.len() {
        0 => pb::NodeInput::None,
        1 => pb::NodeInput::One,
        _ => pb::NodeInput::List,
    }
}

/// Appends `canvas` with `parents` and returns (its exits, every node it
/// added but its own links).
fn compile(
    canvas: &Canvas,
    parents: &[u32],
    nodes: &mut Vec<pb::WorkflowNode>,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let first = nodes.len() as u32;
    let exits = match &canvas.kind {
        Kind::Task { request, immutable } => {
            let spec = (**request).clone().into_spec()?;
            if !spec.idempotency_key.is_empty() {
                return Err(invalid(format!(
                    "task {:?} of a workflow has an idempotency key; give the workflow one instead",
                    spec.name
                )));
            }
            let input = if *immutable {
                pb::NodeInput::None
            } else {
                input_for(parents)
            };
            nodes.push(pb::WorkflowNode {
                task: Some(spec),
                parents: parents.to_vec(),
                input: input as i32,
                ..Default::default()
            });
            vec![first]
        }
        Kind::Chain(items) => {
            if items.is_empty() {
                return Err(invalid("a chain needs at least one element".into()));
            }
            let mut previous = parents.to_vec();
            for item in items {
                previous = compile(item, &previous, nodes)?.0;
            }
            previous
        }
        Kind::Group(items) => {
            if items.is_empty() {
                return Err(invalid(
                    "a group needs at least one element: an empty group has nothing to run".into(),
                ));
            }
            let mut exits = Vec::new();
            for item in items {
                exits.extend(compile(item, parents, nodes)?.0);
            }
            exits
        }
        Kind::Chord {
            header,
            body,
            allow_errors,
        } => {
            if header.is_empty() {
                return Err(invalid("a chord needs at least one header task".into()));
            }
            let mut header_exits = Vec::new();
            for item in header {
                header_exits.extend(compile(item, parents, nodes)?.0);
            }
            let body_first = nodes.len();
            let exits = compile(body, &header_exits, nodes)?.0;
            for node in &mut nodes[body_first..] {
                if node.parents == header_exits {
                    if node.input != pb::NodeInput::None as i32 {
                        node.input = pb::NodeInput::List as i32;
                    }
                    if *allow_errors {
                        node.trigger = pb::NodeTrigger::AllDone as i32;
                    }
                }
            }
            exits
        }
    };
    let own: Vec<u32> = (first..nodes.len() as u32).collect();
    for link in &canvas.links {
        compile(link, &exits, nodes)?;
    }
    for errback in &canvas.error_links {
        let start = nodes.len();
        compile(errback, &own, nodes)?;
        for node in &mut nodes[start..] {
            if node.parents == own {
                node.trigger = pb::NodeTrigger::OnFailure as i32;
                node.input = pb::NodeInput::None as i32;
            }
        }
    }
    Ok((exits, own))
}

/// A submitted workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowHandle {
    /// The workflow's id.
    pub id: String,
    /// Every node's task id, in compile order.
    pub task_ids: Vec<String>,
    /// Task ids of the outputs (a chain's last task; a group's members).
    pub output_task_ids: Vec<String>,
    /// True when an earlier workflow with the same idempotency key was
    /// returned.
    pub duplicate: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> Canvas {
        TaskRequest::new(name).into()
    }

    fn shape(spec: &pb::WorkflowSpec) -> Vec<(String, Vec<u32>, i32, i32)> {
        spec.nodes
            .iter()
            .map(|node| {
                (
                    node.task.as_ref().unwrap().name.clone(),
                    node.parents.clone(),
                    node.input,
                    node.trigger,
                )
            })
            .collect()
    }

    const NONE: i32 = pb::NodeInput::None as i32;
    const ONE: i32 = pb::NodeInput::One as i32;
    const LIST: i32 = pb::NodeInput::List as i32;

    #[test]
    fn a_chain_of_a_group_becomes_a_chord() {
        let spec = chain([t("a"), group([t("b"), t("c")]), t("d")])
            .compile()
            .unwrap();
        assert_eq!(
            shape(&spec),
            [
                ("a".into(), vec![], NONE, 0),
                ("b".into(), vec![0], ONE, 0),
                ("c".into(), vec![0], ONE, 0),
                ("d".into(), vec![1, 2], LIST, 0),
            ]
        );
        assert_eq!((spec.outputs, spec.output_list), (vec![3], false));
    }

    #[test]
    fn groups_of_chains_and_chords_of_chords() {
        let spec = group([chain([t("a"), t("b")]), chain([t("c"), t("d")])])
            .compile()
            .unwrap();
        assert_eq!((spec.outputs.clone(), spec.output_list), (vec![1, 3], true));
        let spec = chord([chord([t("a"), t("b")], t("c")), t("d")], t("e"))
            .compile()
            .unwrap();
        assert_eq!(shape(&spec)[2], ("c".into(), vec![0, 1], LIST, 0));
        assert_eq!(shape(&spec)[4], ("e".into(), vec![2, 3], LIST, 0));
        let one = chord([t("a")], t("b")).allow_errors().compile().unwrap();
        assert_eq!(
            shape(&one)[1],
            ("b".into(), vec![0], LIST, pb::NodeTrigger::AllDone as i32)
        );
    }

    #[test]
    fn links_and_error_links() {
        let spec = chain([t("a"), Canvas::immutable(TaskRequest::new("b"))])
            .link(t("ok"))
            .link_error(t("err"))
            .compile()
            .unwrap();
        assert_eq!(
            shape(&spec),
            [
                ("a".into(), vec![], NONE, 0),
                ("b".into(), vec![0], NONE, 0),
                ("ok".into(), vec![1], ONE, 0),
                (
                    "err".into(),
                    vec![0, 1],
                    NONE,
                    pb::NodeTrigger::OnFailure as i32
                ),
            ]
        );
        assert_eq!(spec.outputs, [1]);
    }

    #[test]
    fn empty_groups_and_keyed_tasks_are_refused() {
        assert!(group(Vec::<Canvas>::new()).compile().is_err());
        assert!(chain(Vec::<Canvas>::new()).compile().is_err());
        let keyed: Canvas = TaskRequest::new("a").idempotency_key("k").into();
        assert!(keyed.compile().is_err());
        let spec = starmap("add", [[1.into(), 2.into()], [3.into(), 4.into()]])
            .compile()
            .unwrap();
        assert_eq!(spec.nodes.len(), 2);
        assert_eq!(spec.name, "group(add x2)");
    }
}
