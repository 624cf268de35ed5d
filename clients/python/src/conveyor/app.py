"""The Celery-like layer: `Conveyor` (the app), `Task` (what `@app.task`
makes), `Signature` (a task with arguments and options bound) and
`AsyncResult` (a handle on a submitted task)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from conveyor import _codec
from conveyor._common import resolve_address
from conveyor.client import Client
from conveyor.errors import TaskNotSucceeded
from conveyor.v1 import task_pb2
from conveyor.worker import DEFAULT_CONCURRENCY, Handler, Worker, current_task

__all__ = ["AsyncResult", "Conveyor", "Signature", "Task"]


def _options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Options without the unset (None) ones, checked."""
    kept = {key: value for key, value in options.items() if value is not None}
    _codec.check_options(kept)
    return kept


class Conveyor:
    """The application: a registry of tasks and a connection to Conveyor.

    ```python
    app = Conveyor("http://127.0.0.1:50051")

    @app.task
    def add(a, b):
        return a + b

    add.delay(2, 2).get(timeout=10)        # -> 4, run by a worker
    app.worker(concurrency=8).run()        # in the worker process
    ```
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        token: str | None = None,
        metadata: Iterable[tuple[str, str]] | None = None,
        client: Client | None = None,
    ):
        self.address = resolve_address(address)
        self._token = token
        self._metadata = tuple(metadata or ())
        self._client = client
        self._lock = threading.Lock()
        self.tasks: dict[str, Task] = {}

    # --- producer side ---------------------------------------------------------------

    @property
    def client(self) -> Client:
        """The app's `conveyor.Client`, created on first use."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = Client(self.address, token=self._token, metadata=self._metadata)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> Conveyor:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        bind: bool = False,
        dont_retry_for: Iterable[type[BaseException]] = (),
        **options: Any,
    ) -> Any:
        """Registers a task: `@app.task` or `@app.task(name="add",
        queue="math", max_retries=3, ...)`. The name defaults to the
        function's `__name__` (names are shared with workers in any language,
        so keep them simple). Options are the defaults of every submission
        (see `Client.submit`). `bind=True` passes the `TaskContext` as first
        argument; `dont_retry_for` lists exception types that fail the task
        for good."""

        def decorate(function: Callable[..., Any]) -> Task:
            task = Task(
                self,
                function,
                name=name or function.__name__,
                bind=bind,
                dont_retry_for=tuple(dont_retry_for),
                options=_options(options),
            )
            self.tasks[task.name] = task
            return task

        if fn is not None:
            return decorate(fn)
        return decorate

    def send_task(
        self,
        name: str,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Submits a task by name (it may be defined by a worker in another
        language) and returns its `AsyncResult`."""
        task_id = self.client.submit(name, list(args or ()), dict(kwargs or {}), **_options(options))
        return AsyncResult(task_id, app=self)

    def send_many(self, signatures: Iterable[Signature | Any]) -> list[AsyncResult]:
        """Submits many tasks in batches (one call per 1000); returns their
        results in order."""
        return [AsyncResult(task_id, app=self) for task_id in self.client.submit_many(signatures)]

    def signature(
        self,
        name: str,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        """A `Signature` for a task known by name only."""
        return Signature(name, args, kwargs, _options(options), app=self)

    def AsyncResult(self, task_id: str) -> AsyncResult:  # noqa: N802 - Celery's spelling
        return AsyncResult(task_id, app=self)

    # --- worker side ------------------------------------------------------------------------

    def worker(
        self,
        concurrency: int = DEFAULT_CONCURRENCY,
        queues: Iterable[str] | str | None = None,
        **settings: Any,
    ) -> Worker:
        """A `Worker` that runs this app's tasks (call `.run()`). Settings:
        worker_id, grace_period, heartbeat_interval, reconnect_backoff,
        credentials; see `conveyor.Worker`."""
        handlers = {
            name: Handler(name, task.run, bind=task.bind, dont_retry_for=task.dont_retry_for)
            for name, task in self.tasks.items()
        }
        settings.setdefault("token", self._token)
        settings.setdefault("metadata", self._metadata)
        return Worker(self.address, tasks=handlers, concurrency=concurrency, queues=queues, **settings)

    def __repr__(self) -> str:
        return f"<Conveyor {self.address} tasks={sorted(self.tasks)}>"


class Task:
    """A registered task. Calling it runs the function here; `delay` and
    `apply_async` submit it to run on a worker."""

    def __init__(
        self,
        app: Conveyor,
        fn: Callable[..., Any],
        *,
        name: str,
        bind: bool = False,
        dont_retry_for: tuple[type[BaseException], ...] = (),
        options: dict[str, Any] | None = None,
    ):
        self.app = app
        self.run = fn
        self.name = name
        self.bind = bind
        self.dont_retry_for = dont_retry_for
        self.options = dict(options or {})
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.bind:
            return self.run(current_task(), *args, **kwargs)
        return self.run(*args, **kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """Submits the task with these arguments and its default options."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Submits the task; `options` (queue, countdown, eta, expires,
        priority, max_retries, retry_policy, soft_time_limit, time_limit,
        idempotency_key, headers, ...) override the task's defaults."""
        merged = {**self.options, **_options(options)}
        return self.app.send_task(self.name, args, kwargs, **merged)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A partial: `add.s(2).delay(3)` submits add(3, 2) (new positional
        arguments go first, as in Celery)."""
        return Signature(self.name, args, kwargs, dict(self.options), app=self.app)

    def signature(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        return Signature(self.name, args, kwargs, {**self.options, **_options(options)}, app=self.app)

    def AsyncResult(self, task_id: str) -> AsyncResult:  # noqa: N802 - Celery's spelling
        return AsyncResult(task_id, app=self.app)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"


class Signature:
    """A task name with arguments and options bound, ready to submit (and to
    pass to `submit_many`/`send_many`)."""

    def __init__(
        self,
        name: str,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        app: Conveyor | None = None,
    ):
        self.name = name
        self.args = tuple(args or ())
        self.kwargs = dict(kwargs or {})
        self.options = _options(options or {})
        self.app = app

    def set(self, **options: Any) -> Signature:
        """A copy with these options added."""
        return Signature(self.name, self.args, self.kwargs, {**self.options, **_options(options)}, app=self.app)

    def clone(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        """A copy with `args` prepended, `kwargs` and `options` merged."""
        return Signature(
            self.name,
            (*(args or ()), *self.args),
            {**self.kwargs, **(kwargs or {})},
            {**self.options, **_options(options)},
            app=self.app,
        )

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        if self.app is None:
            raise RuntimeError(f"signature {self!r} has no app to submit through")
        full = self.clone(args, kwargs, **options)
        return self.app.send_task(full.name, full.args, full.kwargs, **full.options)

    def to_spec(self) -> task_pb2.TaskSpec:
        return _codec.build_spec(self.name, self.args, self.kwargs, **self.options)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Signature):
            return NotImplemented
        mine = (self.name, self.args, self.kwargs, self.options)
        return mine == (other.name, other.args, other.kwargs, other.options)

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.name}({', '.join(parts)})"


class AsyncResult:
    """A handle on a submitted task, as in Celery: `id`, `state`, `ready()`,
    `successful()`, `failed()`, `get(timeout)`, `result`, `traceback`."""

    def __init__(self, id: str, *, app: Conveyor | None = None, client: Client | None = None):  # noqa: A002
        if app is None and client is None:
            raise ValueError("AsyncResult needs an app or a client")
        self.id = id
        self.app = app
        self._client = client
        self._final: task_pb2.Task | None = None

    @property
    def task_id(self) -> str:
        return self.id

    @property
    def client(self) -> Client:
        if self._client is not None:
            return self._client
        assert self.app is not None
        return self.app.client

    def _fetch(self) -> task_pb2.Task:
        if self._final is not None:
            return self._final
        task = self.client.get(self.id)
        if _codec.TaskState.from_proto(task.state).terminal:
            self._final = task
        return task

    @property
    def task(self) -> task_pb2.Task:
        """The task record as the results service reports it now."""
        return self._fetch()

    @property
    def state(self) -> _codec.TaskState:
        return _codec.TaskState.from_proto(self._fetch().state)

    status = state

    def ready(self) -> bool:
        """True once the task is SUCCEEDED, FAILED, CANCELLED or EXPIRED."""
        return self.state.terminal

    def successful(self) -> bool:
        return self.state == _codec.TaskState.SUCCEEDED

    def failed(self) -> bool:
        return self.state == _codec.TaskState.FAILED

    def get(self, timeout: float | None = None, propagate: bool = True) -> Any:
        """Waits for the task and returns its result. A FAILED task raises
        `TaskFailed` (type, message, traceback), a CANCELLED or EXPIRED one
        `TaskCancelled`/`TaskExpired`, and `TaskTimeout` comes when `timeout`
        seconds pass first. With `propagate=False` the exception is returned
        instead of raised (timeouts still raise)."""
        if self._final is None:
            self._final = self.client.wait(self.id, timeout)
        try:
            return _codec.outcome(self._final)
        except TaskNotSucceeded as error:
            if propagate:
                raise
            return error

    wait = get

    @property
    def result(self) -> Any:
        """Celery's semantics, never waiting: the return value once
        SUCCEEDED, the exception (`TaskFailed`, ...) once it ended otherwise,
        and before that the `meta` of the handler's latest `update_state`
        (None if it reported none)."""
        task = self._fetch()
        state = _codec.TaskState.from_proto(task.state)
        if state == _codec.TaskState.SUCCEEDED:
            return _codec.outcome(task)
        if state.terminal:
            return _codec.unsuccessful(task)
        progress = _codec.Progress.from_task(task)
        return None if progress is None else progress.meta

    info = result

    @property
    def progress(self) -> _codec.Progress | None:
        """The latest progress the running handler reported (state, percent,
        meta, reported_at), or None."""
        return _codec.Progress.from_task(self._fetch())

    @property
    def traceback(self) -> str | None:
        task = self._fetch()
        if task.HasField("error") and task.error.traceback:
            return task.error.traceback
        return None

    def revoke(self) -> bool:
        """Cancels the task: if it runs, its worker stops it. True when this
        call cancelled it, False when it had already finished."""
        return self.client.cancel(self.id)

    cancel = revoke

    def forget(self) -> None:
        """Deletes the finished task and its outcome from the server now."""
        self.client.forget(self.id)
        self._final = None

    def watch(self, timeout: float | None = None) -> Iterator[task_pb2.Task]:
        """Every change of the task until it finishes (see `Client.watch`)."""
        return self.client.watch(self.id, timeout)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return self.id == other.id
        if isinstance(other, str):
            return self.id == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __str__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id}>"
