"""`TaskContext`: one attempt of one task as its handler sees it (ids,
attempt, headers, limits, cancellation, progress, retry), and
`current_task()`, which finds it from anywhere inside a handler. Shared by
the worker, its process-pool children and eager mode."""

from __future__ import annotations

import contextvars
import datetime as _dt
from collections.abc import Callable
from typing import Any, NoReturn
import threading

from conveyor import _codec
from conveyor.errors import MaxRetriesExceededError, Retry, Terminated
from conveyor.v1 import dispatch_service_pb2 as pb
from conveyor.v1 import task_pb2

__all__ = ["Request", "TaskContext", "current_task"]

_MAX_PROGRESS_STATE = 100
_MAX_PROGRESS_META = 64 * 1024


_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "conveyor_current_task", default=None
)


def current_task() -> TaskContext | None:
    """The context of the attempt the calling handler runs (in its thread or
    its asyncio task); None outside a handler."""
    return _current.get()


class TaskContext:
    """One attempt of one task, as its handler sees it: ids, attempt number,
    headers, time limits, and its cancellation.

    Handlers get it from `conveyor.current_task()`, or as their first
    argument when registered with `bind=True`.
    """

    def __init__(self, assignment: pb.Assignment, worker_id: str = ""):
        self.assignment = assignment
        self.id: str = assignment.task_id
        self.name: str = assignment.name
        self.attempt: int = assignment.attempt
        self.max_retries: int = assignment.max_retries
        self.lease_token: int = assignment.lease_token
        self.headers: dict[str, str] = dict(assignment.headers)
        self.soft_time_limit: float | None = _codec.from_duration(
            assignment.soft_time_limit if assignment.HasField("soft_time_limit") else None
        )
        self.hard_time_limit: float | None = _codec.from_duration(
            assignment.hard_time_limit if assignment.HasField("hard_time_limit") else None
        )
        self.created_at: _dt.datetime | None = (
            _codec.from_timestamp(assignment.created_at) if assignment.HasField("created_at") else None
        )
        self.worker_id = worker_id
        # The workflow this task is a node of (Celery's `request.root_id`);
        # None for a task submitted alone.
        self.workflow_id: str | None = assignment.workflow_id or None
        # The namespace the task was submitted in ("" is "default").
        self.namespace: str = assignment.namespace
        # True when the handler runs in this process by eager mode.
        self.is_eager = False
        self._event = threading.Event()
        # Guards `_sleeping`: how many `sleep` calls wait on `_event` now.
        self._lock = threading.Lock()
        self._sleeping = 0
        self._reason: type[BaseException] = Terminated
        self._reporter: Callable[[pb.ReportProgress], bool] | None = None

    @property
    def task_id(self) -> str:
        return self.id

    @property
    def request(self) -> Request:
        """Celery's `self.request`: id, retries, args, kwargs, headers,
        hostname, is_eager, root_id (the workflow id of a workflow node; a
        bound task's context answers as both)."""
        return Request(self)

    @property
    def args(self) -> list[Any]:
        return [_codec.decode(p, f"positional argument {i}") for i, p in enumerate(self.assignment.args)]

    @property
    def kwargs(self) -> dict[str, Any]:
        return {k: _codec.decode(v, f"keyword argument {k!r}") for k, v in self.assignment.kwargs.items()}

    @property
    def hostname(self) -> str:
        return self.worker_id

    @property
    def retries(self) -> int:
        """Attempts before this one (Celery's `request.retries`)."""
        return max(0, self.attempt - 1)

    @property
    def cancelled(self) -> bool:
        """True once the attempt was cancelled or its soft time limit passed."""
        return self._event.is_set()

    def is_cancelled(self) -> bool:
        return self._event.is_set()

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Blocks until the attempt is cancelled or `timeout` passes; True
        when cancelled."""
        return self._event.wait(timeout)

    def sleep(self, seconds: float) -> None:
        """Sleeps like `time.sleep`, but raises at once when the attempt is
        cancelled (`Terminated`) or its soft time limit passes
        (`SoftTimeLimitExceeded`)."""
        with self._lock:
            self._sleeping += 1
        try:
            woken = self._event.wait(max(0.0, seconds))
        finally:
            with self._lock:
                self._sleeping -= 1
        if woken:
            raise self._reason(f"task {self.id} stopped while sleeping")

    def check(self) -> None:
        """Raises as `sleep` does when the attempt should stop."""
        if self._event.is_set():
            raise self._reason(f"task {self.id} stopped")

    def update_state(self, state: str = "PROGRESS", meta: Any = None, *, percent: float = 0.0) -> bool:
        """Reports a custom state and progress (Celery's `update_state`):
        producers see it in `AsyncResult.progress` and in watch updates.
        `meta` is any JSON value (at most 64 KiB encoded), `state` at most 100
        bytes, `percent` 0 to 100. Callable from sync and async handlers;
        best effort: False when there is no stream to send it on. Reports
        sent faster than the stream takes them are coalesced (latest wins)."""
        if len(state.encode()) > _MAX_PROGRESS_STATE:
            raise ValueError(f"progress state is over {_MAX_PROGRESS_STATE} bytes")
        if not 0.0 <= float(percent) <= 100.0:
            raise ValueError(f"percent must be 0 to 100, not {percent}")
        progress = task_pb2.Progress(state=state, percent=float(percent))
        if meta is not None:
            payload = _codec.encode(meta, "progress meta")
            if len(payload.data) > _MAX_PROGRESS_META:
                raise ValueError(f"progress meta is over {_MAX_PROGRESS_META} bytes encoded")
            progress.meta.CopyFrom(payload)
        report = pb.ReportProgress(task_id=self.id, lease_token=self.lease_token, progress=progress)
        reporter = self._reporter
        return reporter(report) if reporter is not None else False

    def report_progress(self, percent: float, state: str = "PROGRESS", meta: Any = None) -> bool:
        """`update_state` with the percentage first."""
        return self.update_state(state, meta, percent=percent)

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: Any = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> NoReturn:
        """Ends this attempt and asks for another after `countdown` seconds
        (Celery's `self.retry`), within the task's max_retries. Raises
        `conveyor.Retry`, so `raise self.retry(exc=e, countdown=30)` reads as
        in Celery. With `max_retries` and no retries left, raises `exc`
        (or `MaxRetriesExceededError`) instead. `args`, `kwargs`, `eta` and
        other Celery options are not supported: the same arguments run again."""
        if args is not None or kwargs is not None or eta is not None or options:
            raise TypeError("retry() takes exc, countdown and max_retries only: a retry reruns the same arguments")
        if max_retries is not None and self.retries >= max_retries:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(f"task {self.name}[{self.id}] gave up after {self.retries} retries")
        raise Retry(countdown=countdown, exc=exc)

    def _cancel(self, reason: type[BaseException]) -> None:
        if not self._event.is_set():
            self._reason = reason
            self._event.set()

    def _interrupt(self, reason: type[BaseException], inject: Callable[[type[BaseException]], None]) -> None:
        """Stops the attempt: a handler inside `sleep` wakes and raises
        there; any other is sent `reason` asynchronously by `inject`. Never
        both, so that the handler's cleanup is not interrupted a second time."""
        with self._lock:
            self._cancel(reason)
            if not self._sleeping:
                inject(reason)

    def __repr__(self) -> str:
        return f"<TaskContext {self.name} id={self.id} attempt={self.attempt}>"




class Request:
    """Celery's `task.request` over a `TaskContext`."""

    def __init__(self, context: TaskContext):
        self._context = context
        self.id = context.id
        self.task = context.name
        self.retries = context.retries
        self.headers = context.headers
        self.hostname = context.worker_id
        self.is_eager = context.is_eager
        # The workflow of a workflow node, else the task itself (Celery's
        # root_id: the first task of a canvas; here the workflow's id).
        self.workflow_id = context.workflow_id
        self.root_id = context.workflow_id or context.id
        self.delivery_info: dict[str, Any] = {}

    @property
    def args(self) -> list[Any]:
        return self._context.args

    @property
    def kwargs(self) -> dict[str, Any]:
        return self._context.kwargs

    def __repr__(self) -> str:
        return f"<Request {self.task}[{self.id}] retries={self.retries}>"
