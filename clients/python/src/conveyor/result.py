"""Handles on submitted workflows: `WorkflowResult` (a chain, a chord, a
signature with callbacks: one value) and `GroupResult` (a group: a list).
Celery's `AsyncResult`/`GroupResult` reading methods, plus the workflow's
nodes (`workflow()`) and cancellation. Handles of workflows run in eager
mode have the same methods and read the finished workflow kept here."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from conveyor import _workflow
from conveyor._workflow import WorkflowState
from conveyor.errors import TaskNotSucceeded
from conveyor.v1 import workflow_pb2

if TYPE_CHECKING:
    from conveyor._eager import EagerResult
    from conveyor.app import AsyncResult, Conveyor
    from conveyor.canvas import Canvas
    from conveyor.client import Client

__all__ = ["GroupResult", "WorkflowResult", "WorkflowState", "handle_for"]


class _Remote:
    """Reads a workflow from the server, through an app's or a client's
    `Client`."""

    def __init__(self, app: Conveyor | None, client: Client | None):
        if app is None and client is None:
            from conveyor.app import current_app  # noqa: PLC0415

            app = current_app()
        self.app = app
        self._client = client

    @property
    def client(self) -> Client:
        if self._client is not None:
            return self._client
        assert self.app is not None
        return self.app.client

    def get(self, workflow_id: str, view: str | int) -> workflow_pb2.Workflow:
        return self.client.get_workflow(workflow_id, view=view)

    def wait(self, workflow_id: str, timeout: float | None) -> workflow_pb2.Workflow:
        return self.client.wait_workflow(workflow_id, timeout)

    def watch(self, workflow_id: str, timeout: float | None, view: str | int) -> Iterator[workflow_pb2.Workflow]:
        return self.client.watch_workflow(workflow_id, timeout, view=view)

    def cancel(self, workflow_id: str) -> int:
        return self.client.cancel_workflow(workflow_id)

    def task(self, task_id: str) -> AsyncResult:
        from conveyor.app import AsyncResult  # noqa: PLC0415

        return AsyncResult(task_id, app=self.app, client=self._client)


class _Local:
    """A workflow run in eager mode: finished, kept here."""

    def __init__(self, workflow: workflow_pb2.Workflow):
        self.workflow = workflow

    def get(self, workflow_id: str, view: str | int) -> workflow_pb2.Workflow:
        copy = workflow_pb2.Workflow()
        copy.CopyFrom(self.workflow)
        if _workflow.view_of(view) == _workflow.view_of("summary"):
            copy.ClearField("nodes")
        return copy

    def wait(self, workflow_id: str, timeout: float | None) -> workflow_pb2.Workflow:
        return self.get(workflow_id, "summary")

    def watch(self, workflow_id: str, timeout: float | None, view: str | int) -> Iterator[workflow_pb2.Workflow]:
        yield self.get(workflow_id, view)

    def cancel(self, workflow_id: str) -> int:
        return 0

    def task(self, task_id: str) -> EagerResult:
        from conveyor._eager import EagerResult  # noqa: PLC0415

        for node in self.workflow.nodes:
            if node.task.id == task_id:
                return EagerResult(node.task)
        raise KeyError(f"task {task_id} is not a node of workflow {self.workflow.id}")


class WorkflowResult:
    """A handle on a submitted workflow, as Celery's `AsyncResult`: `id` (the
    workflow id), `state`, `ready()`, `successful()`, `failed()`,
    `get(timeout)`, `result`; `revoke()`/`cancel()` cancel every unfinished
    node. `workflow()` reads it with its nodes (GetWorkflow), `watch()`
    follows it. `results` are the `AsyncResult`s of its output tasks (a
    chain's last task), `nodes` those of every task, in submission order.

    `WorkflowResult(workflow_id)` attaches to a workflow submitted earlier.
    """

    def __init__(
        self,
        id: str,  # noqa: A002 - Celery's name
        *,
        app: Conveyor | None = None,
        client: Client | None = None,
        task_ids: Sequence[str] | None = None,
        output_task_ids: Sequence[str] | None = None,
        _backend: Any = None,
    ):
        self.id = id
        self._backend = _backend if _backend is not None else _Remote(app, client)
        self._task_ids = None if task_ids is None else list(task_ids)
        self._output_task_ids = None if output_task_ids is None else list(output_task_ids)
        self._final: workflow_pb2.Workflow | None = None

    @property
    def workflow_id(self) -> str:
        return self.id

    @property
    def app(self) -> Conveyor | None:
        return getattr(self._backend, "app", None)

    # --- the nodes -----------------------------------------------------------------

    def _load_ids(self) -> None:
        workflow = self._backend.get(self.id, "nodes")
        self._task_ids = [node.task.id for node in workflow.nodes]
        self._output_task_ids = list(workflow.output_task_ids)

    @property
    def task_ids(self) -> list[str]:
        """The task id of every node, in submission order."""
        if self._task_ids is None:
            self._load_ids()
        assert self._task_ids is not None
        return list(self._task_ids)

    @property
    def output_task_ids(self) -> list[str]:
        """The task ids of the outputs (the tasks whose results are the
        workflow's result), in order."""
        if self._output_task_ids is None:
            self._load_ids()
        assert self._output_task_ids is not None
        return list(self._output_task_ids)

    @property
    def nodes(self) -> list[Any]:
        """An `AsyncResult` for each node's task, in submission order."""
        return [self._backend.task(task_id) for task_id in self.task_ids]

    @property
    def results(self) -> list[Any]:
        """An `AsyncResult` for each output task, in order."""
        return [self._backend.task(task_id) for task_id in self.output_task_ids]

    @property
    def last(self) -> Any:
        """The `AsyncResult` of the last output task (a chain's last task)."""
        outputs = self.output_task_ids
        if not outputs:
            raise LookupError(f"workflow {self.id} has no output task")
        return self._backend.task(outputs[-1])

    # --- reading -------------------------------------------------------------------

    def workflow(self, view: str | int = "nodes") -> workflow_pb2.Workflow:
        """The workflow as the results service reports it now (GetWorkflow):
        "nodes" (every node's task with its state, result or error),
        "summary" (state, counts and result only) or "full" (arguments too)."""
        return self._backend.get(self.id, view)

    def watch(self, timeout: float | None = None, view: str | int = "nodes") -> Iterator[workflow_pb2.Workflow]:
        """The workflow now, then after each node that finishes or becomes
        ready, until it has finished (WatchWorkflow). `TaskTimeout` ends a
        watch still going after `timeout` seconds."""
        return self._backend.watch(self.id, timeout, view)

    def _summary(self) -> workflow_pb2.Workflow:
        if self._final is not None:
            return self._final
        workflow = self._backend.get(self.id, "summary")
        if WorkflowState.from_proto(workflow.state).terminal:
            self._final = workflow
        return workflow

    @property
    def state(self) -> WorkflowState:
        """RUNNING, SUCCEEDED, FAILED or CANCELLED; compares equal to Celery's
        names too (`r.state == "SUCCESS"`)."""
        return WorkflowState.from_proto(self._summary().state)

    status = state

    def ready(self) -> bool:
        """True once every node has finished (or the workflow was cancelled)."""
        return self.state.terminal

    def successful(self) -> bool:
        return self.state == WorkflowState.SUCCEEDED

    def failed(self) -> bool:
        return self.state == WorkflowState.FAILED

    def get(self, timeout: float | None = None, propagate: bool = True) -> Any:
        """Waits until every node has finished (WaitWorkflow) and returns the
        workflow's result: a chain's last result, a chord body's, a group's
        list in declaration order. A FAILED workflow raises `TaskFailed` for
        the node that failed it (its `type`, `message`, `traceback`, and
        `workflow_id`, `node`, `cause_task_id`, `cause`); a CANCELLED one
        `TaskCancelled`; `TaskTimeout` when `timeout` seconds pass first.
        With `propagate=False` the exception is returned instead of raised
        (timeouts still raise)."""
        if self._final is None:
            self._final = self._backend.wait(self.id, timeout)
        try:
            return self._value(self._final)
        except TaskNotSucceeded as error:
            if propagate:
                raise
            return error

    wait = get

    def _value(self, workflow: workflow_pb2.Workflow) -> Any:
        if _workflow.needs_nodes(workflow):
            return _workflow.settle(self._backend.get(self.id, "nodes"))
        return _workflow.outcome(workflow)

    @property
    def result(self) -> Any:
        """Celery's semantics, never waiting: the value once SUCCEEDED, the
        exception once FAILED or CANCELLED, None before."""
        workflow = self._summary()
        if not WorkflowState.from_proto(workflow.state).terminal:
            return None
        try:
            return self._value(workflow)
        except TaskNotSucceeded as error:
            return error

    info = result

    def revoke(self, terminate: bool = False, signal: Any = None) -> int:
        """Cancels every unfinished node at once (CancelWorkflow): none starts
        afterwards, running ones are stopped on their workers. Returns how
        many nodes this call cancelled (0 when the workflow had finished)."""
        self._final = None
        return self._backend.cancel(self.id)

    cancel = revoke

    def __eq__(self, other: object) -> bool:
        if isinstance(other, WorkflowResult):
            return self.id == other.id
        if isinstance(other, str):
            return self.id == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __str__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id}>"


class GroupResult(WorkflowResult):
    """A handle on a workflow whose result is a list (a group, or a canvas
    ending with several tasks): `results` are the `AsyncResult`s of its
    output tasks in declaration order, `get()` returns the list of their
    results. Iterating, `len()` and indexing go over `results`."""

    def __init__(self, id: str, *, chunk_sizes: Sequence[int] | None = None, **kwargs: Any):  # noqa: A002
        super().__init__(id, **kwargs)
        self.chunk_sizes = None if chunk_sizes is None else list(chunk_sizes)

    def _value(self, workflow: workflow_pb2.Workflow) -> Any:
        value = super()._value(workflow)
        if self.chunk_sizes is None or not isinstance(value, list):
            return value
        chunked, start = [], 0
        for size in self.chunk_sizes:
            chunked.append(value[start : start + size])
            start += size
        return chunked

    def join(self, timeout: float | None = None, propagate: bool = True) -> Any:
        """`get` (Celery's `join`)."""
        return self.get(timeout, propagate)

    def completed_count(self) -> int:
        """How many output tasks have SUCCEEDED."""
        return sum(1 for result in self.results if result.successful())

    def __len__(self) -> int:
        return len(self.output_task_ids)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.results)

    def __getitem__(self, index: int) -> Any:
        return self.results[index]


def handle_for(
    element: Canvas,
    workflow_id: str,
    task_ids: Sequence[str],
    spec: workflow_pb2.WorkflowSpec,
    *,
    app: Conveyor | None = None,
    client: Client | None = None,
    local: workflow_pb2.Workflow | None = None,
) -> WorkflowResult:
    """The handle of a workflow just submitted (or run eagerly: `local`)."""
    outputs = [task_ids[index] for index in spec.outputs]
    backend = _Local(local) if local is not None else None
    common: dict[str, Any] = {"app": app, "client": client, "task_ids": task_ids, "output_task_ids": outputs}
    if backend is not None:
        common["_backend"] = backend
    if spec.output_list:
        return GroupResult(workflow_id, chunk_sizes=getattr(element, "chunk_sizes", None), **common)
    return WorkflowResult(workflow_id, **common)
