"""Eager mode (Celery's `task_always_eager`): `apply_async` runs the task
here, at once, with no server, through the same handler rules as a worker
(arguments and result through JSON, bind, retries, autoretry_for), and
returns an `EagerResult`. A workflow runs here too (`run_workflow`), node by
node, with the server's rules: inputs prepended, triggers, failures failing
their dependents. For unit tests."""

from __future__ import annotations

import asyncio
import base64
import collections
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from conveyor import _codec
from conveyor._context import TaskContext
from conveyor._handler import Handler, run_sync
from conveyor.errors import TaskNotSucceeded
from conveyor.v1 import dispatch_service_pb2 as pb
from conveyor.v1 import task_pb2, workflow_pb2

__all__ = ["EagerResult", "run_eager", "run_workflow"]

# The server's default when a task sets no max_retries.
DEFAULT_MAX_RETRIES = 5


def run_eager(
    handler: Handler,
    args: Iterable[Any] | None,
    kwargs: Mapping[str, Any] | None,
    options: Mapping[str, Any],
    propagate: bool,
) -> EagerResult:
    """Runs every attempt the task would get (retry countdowns are not
    waited for) and returns the last one's result."""
    spec = _codec.build_spec(handler.name, args, kwargs, **options)
    task = task_pb2.Task(id=str(uuid.uuid4()), name=handler.name, queue=spec.options.queue, worker_id="eager")
    _attempts(handler, task, list(spec.args), spec.kwargs, spec.options)
    result = EagerResult(task)
    if propagate and task.state == task_pb2.TASK_STATE_FAILED:
        result.get()
    return result


def _attempts(
    handler: Handler,
    task: task_pb2.Task,
    args: list[task_pb2.Payload],
    kwargs: Mapping[str, task_pb2.Payload],
    opts: task_pb2.TaskOptions,
    workflow_id: str = "",
) -> None:
    """Runs the attempts of `task` (retries without their countdowns) and
    records the last one's outcome in it."""
    max_retries = opts.retry.max_retries if opts.HasField("retry") else DEFAULT_MAX_RETRIES
    attempt = 0
    while True:
        attempt += 1
        assignment = pb.Assignment(
            task_id=task.id,
            name=handler.name,
            args=args,
            kwargs=kwargs,
            attempt=attempt,
            max_retries=max_retries,
            headers=opts.headers,
            workflow_id=workflow_id,
        )
        ctx = TaskContext(assignment, "eager")
        ctx.is_eager = True
        outcome = _run(handler, ctx)
        if outcome.HasField("error") and outcome.error.retryable and attempt <= max_retries:
            continue
        break
    task.attempt = attempt
    task.failures = attempt if outcome.HasField("error") else attempt - 1
    if outcome.HasField("error"):
        task.state = task_pb2.TASK_STATE_FAILED
        task.error.CopyFrom(outcome.error)
    else:
        task.state = task_pb2.TASK_STATE_SUCCEEDED
        task.result.CopyFrom(outcome.result)


# --- workflows ---------------------------------------------------------------------------

_TERMINAL = frozenset(
    {
        task_pb2.TASK_STATE_SUCCEEDED,
        task_pb2.TASK_STATE_FAILED,
        task_pb2.TASK_STATE_CANCELLED,
        task_pb2.TASK_STATE_EXPIRED,
    }
)
_BROKEN = frozenset({task_pb2.TASK_STATE_FAILED, task_pb2.TASK_STATE_EXPIRED})
# What a LIST input holds for a parent that did not succeed (ALL_DONE).
_NOT_SUCCEEDED = {
    task_pb2.TASK_STATE_CANCELLED: ("Cancelled", "task {} was cancelled"),
    task_pb2.TASK_STATE_EXPIRED: ("Expired", "task {} expired before it ran"),
}


def _timestamp(task_time: Any) -> None:
    task_time.CopyFrom(_codec.to_timestamp(time.time()))


def _value(task: task_pb2.Task) -> Any:
    """A parent's result as it appears in a LIST input: its JSON value, or
    {"content_type", "base64"} for another content type."""
    if not task.HasField("result"):
        return None
    if _codec.is_json(task.result.content_type):
        return _codec.decode(task.result, f"result of task {task.id}")
    return {"content_type": task.result.content_type, "base64": base64.b64encode(task.result.data).decode()}


def _entry(task: task_pb2.Task) -> Any:
    """A parent's entry in a LIST input under ALL_DONE."""
    if task.state == task_pb2.TASK_STATE_SUCCEEDED:
        return _value(task)
    if task.state == task_pb2.TASK_STATE_FAILED:
        return {"error": {"type": task.error.type, "message": task.error.message, "task_id": task.id}}
    kind, message = _NOT_SUCCEEDED.get(task.state, ("Unknown", "task {} did not succeed"))
    return {"error": {"type": kind, "message": message.format(task.id), "task_id": task.id}}


def _check_parents(spec: workflow_pb2.WorkflowSpec) -> None:
    if not spec.nodes:
        raise ValueError("workflow.nodes is empty: a workflow needs at least one node")
    for index, node in enumerate(spec.nodes):
        if len(set(node.parents)) != len(node.parents):
            raise ValueError(f"workflow.nodes[{index}].parents names a node twice")
        for parent in node.parents:
            if parent >= len(spec.nodes) or parent == index:
                raise ValueError(f"workflow.nodes[{index}].parents: {parent} is not another node of the workflow")


def run_workflow(spec: workflow_pb2.WorkflowSpec, handlers: Mapping[str, Handler]) -> workflow_pb2.Workflow:
    """Runs a workflow here, node by node, and returns it finished, as
    GetWorkflow's full view reports it. The server's rules: a node runs
    once its trigger holds (ALL_SUCCEEDED: every parent succeeded, and a
    failed or expired parent fails it with DEPENDENCY_FAILED naming that
    parent, a cancelled one cancels it; ALL_DONE: every parent finished;
    ON_FAILURE: the first parent that fails, once, else it is cancelled);
    its inputs come before its own arguments (ONE: the parent's result;
    LIST: the JSON list of the parents' results; ON_FAILURE: the failed
    task's id and error). `handlers` has a Handler for every node's task."""
    _check_parents(spec)
    workflow_id = str(uuid.uuid4())
    count = len(spec.nodes)
    tasks: list[task_pb2.Task] = []
    children: list[list[int]] = [[] for _ in range(count)]
    for index, node in enumerate(spec.nodes):
        options = task_pb2.TaskOptions()
        options.CopyFrom(spec.options)
        options.MergeFrom(node.task.options)
        task = task_pb2.Task(
            id=str(uuid.uuid4()),
            name=node.task.name,
            args=node.task.args,
            kwargs=node.task.kwargs,
            options=options,
            state=task_pb2.TASK_STATE_WAITING if node.parents else task_pb2.TASK_STATE_QUEUED,
            queue=options.queue or "default",
            workflow_id=workflow_id,
            workflow_node=index,
        )
        _timestamp(task.created_at)
        _timestamp(task.updated_at)
        tasks.append(task)
        for parent in node.parents:
            children[parent].append(index)

    ready: collections.deque[int] = collections.deque(i for i, node in enumerate(spec.nodes) if not node.parents)
    failed_by: dict[int, int] = {}  # ON_FAILURE node -> the parent whose failure fired it
    failures: list[int] = []  # nodes in the order they failed

    # Nodes that reached a terminal state, whose children are yet to be told,
    # in the order they finished (so that the first failure fires errbacks).
    events: collections.deque[int] = collections.deque()

    def end(index: int, state: int, error: task_pb2.TaskError | None = None) -> None:
        task = tasks[index]
        task.state = state
        if error is not None:
            task.error.CopyFrom(error)
        _timestamp(task.finished_at)
        _timestamp(task.updated_at)
        events.append(index)

    def queue(index: int) -> None:
        tasks[index].state = task_pb2.TASK_STATE_QUEUED
        ready.append(index)

    def finished(first: int) -> None:
        """Node `first` reached a terminal state: settles what that means for
        its children, and theirs in turn."""
        events.append(first)
        while events:
            tell(events.popleft())

    def tell(index: int) -> None:
        if tasks[index].state == task_pb2.TASK_STATE_FAILED:
            failures.append(index)
        parent = tasks[index]
        for child in children[index]:
            task = tasks[child]
            if task.state != task_pb2.TASK_STATE_WAITING:
                continue
            node = spec.nodes[child]
            states = [tasks[p].state for p in node.parents]
            if node.trigger == workflow_pb2.NODE_TRIGGER_ON_FAILURE:
                if parent.state in _BROKEN:
                    failed_by[child] = index
                    queue(child)
                elif all(state in _TERMINAL for state in states):
                    end(child, task_pb2.TASK_STATE_CANCELLED)
            elif node.trigger == workflow_pb2.NODE_TRIGGER_ALL_DONE:
                if all(state in _TERMINAL for state in states):
                    queue(child)
            elif parent.state in _BROKEN:
                error = task_pb2.TaskError(
                    type="DependencyFailed",
                    message=f"did not run: the task it depends on, {parent.id}, failed",
                    reason=task_pb2.FAILURE_REASON_DEPENDENCY_FAILED,
                    cause_task_id=parent.id,
                )
                end(child, task_pb2.TASK_STATE_FAILED, error)
            elif parent.state == task_pb2.TASK_STATE_CANCELLED:
                end(child, task_pb2.TASK_STATE_CANCELLED)
            elif all(state == task_pb2.TASK_STATE_SUCCEEDED for state in states):
                queue(child)

    while ready:
        index = ready.popleft()
        node = spec.nodes[index]
        task = tasks[index]
        inputs: list[task_pb2.Payload] = []
        if node.trigger == workflow_pb2.NODE_TRIGGER_ON_FAILURE:
            cause = tasks[failed_by[index]]
            if cause.state == task_pb2.TASK_STATE_FAILED:
                error = {"type": cause.error.type, "message": cause.error.message, "traceback": cause.error.traceback}
            else:
                kind, message = _NOT_SUCCEEDED[cause.state]
                error = {"type": kind, "message": message.format(cause.id), "traceback": ""}
            inputs = [_codec.encode(cause.id), _codec.encode(error, "error")]
        elif node.parents:
            mode = node.input
            if mode == workflow_pb2.NODE_INPUT_UNSPECIFIED:
                mode = workflow_pb2.NODE_INPUT_ONE if len(node.parents) == 1 else workflow_pb2.NODE_INPUT_LIST
            if mode == workflow_pb2.NODE_INPUT_ONE:
                parent = tasks[node.parents[0]]
                inputs = [parent.result if parent.HasField("result") else _codec.encode(None)]
            elif mode == workflow_pb2.NODE_INPUT_LIST:
                entries = [_entry(tasks[p]) for p in node.parents]
                inputs = [_codec.encode(entries, f"inputs of workflow node {index}")]
        task.worker_id = "eager"
        _attempts(handlers[node.task.name], task, [*inputs, *node.task.args], node.task.kwargs, task.options, workflow_id)
        task.ClearField("args")
        task.args.extend([*inputs, *node.task.args])
        _timestamp(task.finished_at)
        _timestamp(task.updated_at)
        finished(index)

    stuck = [index for index, task in enumerate(tasks) if task.state not in _TERMINAL]
    if stuck:
        raise ValueError(f"workflow.nodes[{stuck[0]}] can never run: its parents form a cycle")
    return _report(spec, workflow_id, tasks, failures)


def _report(
    spec: workflow_pb2.WorkflowSpec, workflow_id: str, tasks: list[task_pb2.Task], failures: list[int]
) -> workflow_pb2.Workflow:
    """The finished workflow, as GetWorkflow's full view shows it."""
    workflow = workflow_pb2.Workflow(
        id=workflow_id,
        name=spec.name,
        node_count=len(tasks),
        output_task_ids=[tasks[index].id for index in spec.outputs],
        namespace="default",
    )
    for index, (node, task) in enumerate(zip(spec.nodes, tasks, strict=True)):
        workflow.nodes.append(
            workflow_pb2.WorkflowNodeStatus(
                index=index, task=task, parents=node.parents, input=node.input, trigger=node.trigger, label=node.label
            )
        )
    counts = [0] * (max(task_pb2.TaskState.values()) + 1)
    for task in tasks:
        counts[task.state] += 1
    workflow.state_counts.extend(counts)
    workflow.created_at.CopyFrom(tasks[0].created_at)
    _timestamp(workflow.finished_at)
    if failures:
        workflow.state = workflow_pb2.WORKFLOW_STATE_FAILED
        workflow.failed_task_id = tasks[failures[0]].id
        return workflow
    workflow.state = workflow_pb2.WORKFLOW_STATE_SUCCEEDED
    if spec.output_list:
        values = [_value(tasks[index]) for index in spec.outputs]
        workflow.result.CopyFrom(_codec.encode(values, f"result of workflow {workflow_id}"))
    elif spec.outputs:
        output = tasks[spec.outputs[0]]
        workflow.result.CopyFrom(output.result if output.HasField("result") else _codec.encode(None))
    return workflow


def _run(handler: Handler, ctx: TaskContext) -> pb.TaskOutcome:
    if not handler.is_async:
        return run_sync(handler, ctx)
    coroutine_fn = handler.fn

    def call_in_loop(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(coroutine_fn(*args, **kwargs))

    sync = Handler(
        handler.name,
        call_in_loop,
        bind=handler.bind,
        dont_retry_for=handler.dont_retry_for,
        autoretry_for=handler.autoretry_for,
        retry_kwargs=handler.retry_kwargs,
    )
    sync.signature = handler.signature
    return run_sync(sync, ctx)


class EagerResult:
    """The result of a task run eagerly: `AsyncResult`'s reading methods."""

    def __init__(self, task: task_pb2.Task):
        self.task = task
        self.id = task.id

    @property
    def task_id(self) -> str:
        return self.id

    @property
    def state(self) -> _codec.TaskState:
        return _codec.TaskState.from_proto(self.task.state)

    status = state

    def ready(self) -> bool:
        return True

    def successful(self) -> bool:
        return self.state == _codec.TaskState.SUCCEEDED

    def failed(self) -> bool:
        return self.state == _codec.TaskState.FAILED

    def get(self, timeout: float | None = None, propagate: bool = True) -> Any:
        try:
            return _codec.outcome(self.task)
        except TaskNotSucceeded as error:
            if propagate:
                raise
            return error

    wait = get

    @property
    def result(self) -> Any:
        return self.get(propagate=False)

    info = result

    @property
    def traceback(self) -> str | None:
        return self.task.error.traceback or None if self.task.HasField("error") else None

    def forget(self) -> None:
        pass

    def revoke(self, terminate: bool = False, signal: Any = None) -> bool:
        return False

    def __repr__(self) -> str:
        return f"<EagerResult {self.id} {self.state}>"
