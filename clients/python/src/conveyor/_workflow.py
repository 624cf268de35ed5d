"""What the sync client, the asyncio client and eager mode share about
workflows: their states, the views of a `Workflow`, and how a finished
workflow becomes a value or an exception."""

from __future__ import annotations

import enum
from typing import Any

from conveyor import _codec
from conveyor.errors import ProtocolError, TaskCancelled, TaskFailed, TaskNotSucceeded
from conveyor.v1 import results_service_pb2, task_pb2, workflow_pb2

__all__ = ["WorkflowState", "failure", "needs_nodes", "outcome", "prepare", "require_workflow", "settle", "view_of"]


class WorkflowState(str, enum.Enum):
    """A workflow's state. A `str` enum: `state == "SUCCEEDED"` works, and so
    do Celery's names (`state == "SUCCESS"`, see `celery`)."""

    UNSPECIFIED = "UNSPECIFIED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @classmethod
    def from_proto(cls, value: int) -> WorkflowState:
        try:
            name = workflow_pb2.WorkflowState.Name(value)
        except ValueError:
            return cls.UNSPECIFIED
        return cls(name.removeprefix("WORKFLOW_STATE_"))

    @classmethod
    def _missing_(cls, value: object) -> WorkflowState | None:
        """`WorkflowState("SUCCESS")`: a Celery name gives its state."""
        return _FROM_CELERY.get(value) if isinstance(value, str) else None

    @property
    def terminal(self) -> bool:
        """SUCCEEDED, FAILED or CANCELLED: every node has finished."""
        return self in (WorkflowState.SUCCEEDED, WorkflowState.FAILED, WorkflowState.CANCELLED)

    @property
    def celery(self) -> str:
        """Celery's name: STARTED (RUNNING), SUCCESS, FAILURE, REVOKED
        (CANCELLED), PENDING (UNSPECIFIED)."""
        return _CELERY[self]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str) and not isinstance(other, WorkflowState):
            return str.__eq__(self, other) or other == _CELERY[self]
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = str.__hash__

    def __str__(self) -> str:
        return self.value


_CELERY = {
    WorkflowState.UNSPECIFIED: "PENDING",
    WorkflowState.RUNNING: "STARTED",
    WorkflowState.SUCCEEDED: "SUCCESS",
    WorkflowState.FAILED: "FAILURE",
    WorkflowState.CANCELLED: "REVOKED",
}
_FROM_CELERY = {name: state for state, name in _CELERY.items() if state != WorkflowState.UNSPECIFIED}

_VIEWS = {
    "summary": results_service_pb2.WORKFLOW_VIEW_SUMMARY,
    "nodes": results_service_pb2.WORKFLOW_VIEW_NODES,
    "full": results_service_pb2.WORKFLOW_VIEW_FULL,
}


def view_of(view: str | int) -> int:
    """The WorkflowView number of "summary" (state, counts, result),
    "nodes" (every node's task, without arguments) or "full" (arguments
    too); a WorkflowView number passes through."""
    if isinstance(view, int) and not isinstance(view, bool):
        return view
    try:
        return _VIEWS[str(view).lower()]
    except KeyError:
        raise ValueError(f"workflow view must be one of {', '.join(_VIEWS)}, not {view!r}") from None


def needs_nodes(workflow: workflow_pb2.Workflow) -> bool:
    """Whether reading `workflow`'s outcome needs its nodes: FAILED (the
    error is a node's), or SUCCEEDED with outputs but no result (an output
    node was cancelled or expired: every node finished, none FAILED)."""
    if workflow.state == workflow_pb2.WORKFLOW_STATE_FAILED:
        return True
    return workflow.state == workflow_pb2.WORKFLOW_STATE_SUCCEEDED and not workflow.HasField("result")


def settle(workflow: workflow_pb2.Workflow) -> Any:
    """The outcome of a finished workflow read with its nodes: `failure`
    for FAILED, the error of an output node that did not succeed (a
    SUCCEEDED workflow whose output was cancelled has no result), else
    `outcome`."""
    if workflow.state == workflow_pb2.WORKFLOW_STATE_FAILED:
        raise failure(workflow)
    if workflow.state == workflow_pb2.WORKFLOW_STATE_SUCCEEDED and not workflow.HasField("result"):
        by_id = {node.task.id: node for node in workflow.nodes}
        for task_id in workflow.output_task_ids:
            node = by_id.get(task_id)
            if node is not None and node.task.state != task_pb2.TASK_STATE_SUCCEEDED:
                error = _codec.unsuccessful(node.task)
                error.args = (f"workflow {workflow.id} ({workflow.name}) has no result: output {_describe(node.index, node.task)}: {error}",)
                raise error
    return outcome(workflow)


def outcome(workflow: workflow_pb2.Workflow) -> Any:
    """The decoded result of a SUCCEEDED workflow (None when it has no
    outputs); raises `TaskCancelled` for a CANCELLED one. Not for FAILED
    (see `failure`, which needs the nodes) nor RUNNING workflows."""
    state = WorkflowState.from_proto(workflow.state)
    if state == WorkflowState.SUCCEEDED:
        if not workflow.HasField("result"):
            return None
        return _codec.decode(workflow.result, f"result of workflow {workflow.id}")
    if state == WorkflowState.CANCELLED:
        raise TaskCancelled(f"workflow {workflow.id} ({workflow.name}) was cancelled", task_id=workflow.id, state=state)
    if state == WorkflowState.FAILED:
        raise TaskNotSucceeded(
            f"workflow {workflow.id} ({workflow.name}) failed; read its nodes for the error", task_id=workflow.id, state=state
        )
    raise TaskNotSucceeded(
        f"workflow {workflow.id} ({workflow.name}) has not finished: it is {state}", task_id=workflow.id, state=state
    )


def _describe(index: int, task: task_pb2.Task) -> str:
    return f"node {index} ({task.name}, task {task.id})"


def failure(workflow: workflow_pb2.Workflow) -> TaskFailed:
    """The exception for a FAILED workflow read with its nodes: the
    `TaskFailed` of the node that failed it (`Workflow.failed_task_id` when
    that node FAILED, else the first FAILED node), naming the workflow and the node, with `cause`
    following `TaskError.cause_task_id` to the node whose own error started
    it."""
    by_id = {node.task.id: node for node in workflow.nodes}
    failed = by_id.get(workflow.failed_task_id)
    # `failed_task_id` may name a node that EXPIRED: the error raised is then
    # its first FAILED dependent's, with the expired node as the cause.
    if failed is None or failed.task.state != task_pb2.TASK_STATE_FAILED:
        failed = next((n for n in workflow.nodes if n.task.state == task_pb2.TASK_STATE_FAILED), None)
    if failed is None:
        ident = workflow.failed_task_id or "none"
        return TaskFailed(
            "",
            f"workflow {workflow.id} ({workflow.name}) failed (failed task: {ident}), but no node of it is "
            "reported FAILED; read it with GetWorkflow",
            task_id=workflow.failed_task_id,
            workflow_id=workflow.id,
            state=WorkflowState.FAILED,
        )
    return _node_error(workflow, failed, by_id, seen=set(), top=True)


def _node_error(
    workflow: workflow_pb2.Workflow,
    node: workflow_pb2.WorkflowNodeStatus,
    by_id: dict[str, workflow_pb2.WorkflowNodeStatus],
    seen: set[str],
    top: bool,
) -> TaskFailed:
    task = node.task
    seen.add(task.id)
    error = task.error
    cause: TaskNotSucceeded | None = None
    parent = by_id.get(error.cause_task_id) if error.cause_task_id else None
    if parent is not None and parent.task.id not in seen:
        if parent.task.state == task_pb2.TASK_STATE_FAILED:
            cause = _node_error(workflow, parent, by_id, seen, top=False)
        elif parent.task.state in (task_pb2.TASK_STATE_EXPIRED, task_pb2.TASK_STATE_CANCELLED):
            cause = _codec.unsuccessful(parent.task)  # TaskExpired, TaskCancelled
    what = f"{error.type}: {error.message}" if error.type else error.message
    description = f"{_describe(node.index, task)} failed: {what}"
    if cause is not None:
        root = cause
        while isinstance(root, TaskFailed) and root.cause is not None:
            root = root.cause
        if isinstance(root, TaskFailed):
            root_what = f"{root.type}: {root.message}" if root.type else root.message
        else:
            root_what = str(root)
        description += f"; caused by {_describe(by_id[root.task_id].index, by_id[root.task_id].task)}: {root_what}"
    if top:
        description = f"workflow {workflow.id} ({workflow.name}) failed: {description}"
    return TaskFailed(
        error.type,
        error.message,
        error.traceback,
        retryable=error.retryable,
        task_id=task.id,
        state=_codec.TaskState.FAILED,
        reason=_codec.failure_reason(error.reason),
        cause_task_id=error.cause_task_id,
        workflow_id=workflow.id,
        node=node.index,
        task_name=task.name,
        cause=cause,
        description=description,
    )


def prepare(
    workflow: Any,
    name: str | None,
    idempotency_key: str | None,
    options: dict[str, Any],
    default_key: str,
) -> workflow_pb2.WorkflowSpec:
    """The WorkflowSpec to submit: a canvas element compiled with `name` and
    `options`, or a copy of a ready-made WorkflowSpec; `idempotency_key`
    (given, already set, else `default_key`)."""
    if isinstance(workflow, workflow_pb2.WorkflowSpec):
        if options or name is not None:
            raise TypeError(
                "a WorkflowSpec is submitted as it is: set its name and options on it, or pass a canvas element"
            )
        spec = workflow_pb2.WorkflowSpec()
        spec.CopyFrom(workflow)
    elif callable(getattr(workflow, "to_workflow", None)):
        spec = workflow.to_workflow(name=name, **options)
    else:
        raise TypeError(
            f"cannot submit {workflow!r} as a workflow: give a chain, group, chord, signature or WorkflowSpec"
        )
    if idempotency_key is not None:
        spec.idempotency_key = str(idempotency_key)
    if not spec.idempotency_key:
        spec.idempotency_key = default_key
    return spec


def check_submitted(spec: workflow_pb2.WorkflowSpec, response: Any) -> None:
    if len(response.task_ids) != len(spec.nodes):
        raise ProtocolError(
            f"submitted a workflow of {len(spec.nodes)} nodes, got {len(response.task_ids)} task ids"
        )


def require_workflow(response: Any, rpc: str) -> workflow_pb2.Workflow:
    if not response.HasField("workflow"):
        raise ProtocolError(f"{rpc} response carries no workflow")
    return response.workflow
