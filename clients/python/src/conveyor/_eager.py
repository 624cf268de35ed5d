"""Eager mode (Celery's `task_always_eager`): `apply_async` runs the task
here, at once, with no server, through the same handler rules as a worker
(arguments and result through JSON, bind, retries, autoretry_for), and
returns an `EagerResult`. For unit tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from conveyor import _codec
from conveyor._context import TaskContext
from conveyor._handler import Handler, run_sync
from conveyor.errors import TaskNotSucceeded
from conveyor.v1 import dispatch_service_pb2 as pb
from conveyor.v1 import task_pb2

__all__ = ["EagerResult", "run_eager"]

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
    opts = spec.options
    max_retries = opts.retry.max_retries if opts.HasField("retry") else DEFAULT_MAX_RETRIES
    task_id = str(uuid.uuid4())
    attempt = 0
    while True:
        attempt += 1
        assignment = pb.Assignment(
            task_id=task_id,
            name=handler.name,
            args=spec.args,
            kwargs=spec.kwargs,
            attempt=attempt,
            max_retries=max_retries,
            headers=opts.headers,
        )
        ctx = TaskContext(assignment, "eager")
        ctx.is_eager = True
        outcome = _run(handler, ctx)
        if outcome.HasField("error") and outcome.error.retryable and attempt <= max_retries:
            continue
        break
    task = task_pb2.Task(id=task_id, name=handler.name, attempt=attempt, queue=opts.queue, worker_id="eager")
    if outcome.HasField("error"):
        task.state = task_pb2.TASK_STATE_FAILED
        task.error.CopyFrom(outcome.error)
    else:
        task.state = task_pb2.TASK_STATE_SUCCEEDED
        task.result.CopyFrom(outcome.result)
    result = EagerResult(task)
    if propagate and task.state == task_pb2.TASK_STATE_FAILED:
        result.get()
    return result


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
