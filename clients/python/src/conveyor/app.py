"""The Celery-like layer: `Conveyor` (the app), `Task` (what `@app.task`
makes) and `AsyncResult` (a handle on a submitted task). `Signature` and
the rest of the canvas are in `conveyor.canvas`, workflow handles in
`conveyor.result`."""

from __future__ import annotations

import fnmatch
import functools
import importlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from conveyor import _codec
from conveyor._common import check_endpoints, resolve_address, resolve_namespace
from conveyor._eager import EagerResult, run_eager
from conveyor.canvas import Signature, checked_options, chunks, group, starmap
from conveyor.client import Client
from conveyor.errors import TaskNotSucceeded
from conveyor.result import WorkflowResult
from conveyor.v1 import task_pb2
from conveyor.worker import DEFAULT_CONCURRENCY, Handler, Worker, current_task

__all__ = ["AsyncResult", "Config", "Conveyor", "EagerResult", "Signature", "Task", "current_app"]

log = logging.getLogger("conveyor.app")

# Task settings that shape how the worker runs the handler (not submission
# options): Celery's names.
_HANDLER_SETTINGS = (
    "pool",
    "autoretry_for",
    "retry_backoff",
    "retry_backoff_max",
    "retry_jitter",
    "retry_kwargs",
    "default_retry_delay",
)
# Celery task options accepted and ignored: Conveyor behaves this way always
# (acks_late, track_started: leases and RUNNING) or has nothing to set.
_IGNORED_SETTINGS = ("acks_late", "ignore_result", "track_started", "serializer", "typing", "reject_on_worker_lost")
_SCHEDULE_ID = re.compile(r"[^A-Za-z0-9_.:/-]")


class Config(dict):
    """`app.conf`: a dict whose keys are also attributes, as Celery's.
    Read: `beat_schedule`, `task_routes`, `task_always_eager`,
    `task_eager_propagates`, `task_default_queue`; other keys are kept."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no setting {name!r} in app.conf") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


_options = checked_options


_default_app: Conveyor | None = None


def current_app() -> Conveyor:
    """The app created last in this process (Celery's `current_app`), which
    `AsyncResult(task_id)` uses when given no app."""
    if _default_app is None:
        raise RuntimeError("no Conveyor app yet: create one (app = conveyor.Conveyor(address)) first")
    return _default_app


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

    `endpoints` gives services their own address when the roles run as
    separate processes (keys "submission", "results", "dispatch",
    "scheduling"); the app's client and workers use it, and the
    `CONVEYOR_<SERVICE>_ADDR` variables, as `conveyor.Client` does.
    `tls_ca`, `tls_cert` and `tls_key` (paths to PEM files; defaults
    `$CONVEYOR_TLS_CA`, `$CONVEYOR_TLS_CERT`, `$CONVEYOR_TLS_KEY`) secure
    the app's client and workers, as in `conveyor.Client`.
    `namespace` (default `$CONVEYOR_NAMESPACE`, else "", the server's
    "default") is the namespace of the app's client (so of every
    `AsyncResult` and workflow handle it makes) and of its workers; with
    `client=` given, the client's namespace is the app's.
    """

    def __init__(
        self,
        address: str | Sequence[str] | None = None,
        *,
        endpoints: Mapping[str, str | Sequence[str]] | None = None,
        main: str | None = None,
        token: str | None = None,
        metadata: Iterable[tuple[str, str]] | None = None,
        client: Client | None = None,
        eager: bool = False,
        tls_ca: str | os.PathLike[str] | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        namespace: str | None = None,
    ):
        if client is not None:
            if namespace is not None and resolve_namespace(namespace) != client.namespace:
                raise ValueError(
                    f"namespace {namespace!r} differs from the given client's {client.namespace!r}: "
                    "give one or the other (client.with_namespace(...) makes a client of another namespace)"
                )
            namespace = client.namespace
        self.namespace = resolve_namespace(namespace)
        self.address = resolve_address(address)
        self.endpoints = check_endpoints(endpoints)
        self.tls_ca, self.tls_cert, self.tls_key = tls_ca, tls_cert, tls_key
        self.main = main
        self._token = token
        self._metadata = tuple(metadata or ())
        self._client = client
        self._lock = threading.Lock()
        self.tasks: dict[str, Task] = {}
        self.conf = Config(
            beat_schedule={},
            task_routes={},
            task_always_eager=eager,
            task_eager_propagates=False,
            task_default_queue=None,
        )
        global _default_app
        _default_app = self

    def set_current(self) -> None:
        """Makes this the app that `AsyncResult(task_id)` uses (Celery's)."""
        global _default_app
        _default_app = self

    def config_from_object(self, source: Any) -> None:
        """Copies the lowercase settings of a module, a module name, an
        object or a mapping into `app.conf` (Celery's)."""
        if isinstance(source, str):
            source = importlib.import_module(source)
        items = source.items() if isinstance(source, Mapping) else vars(source).items()
        self.conf.update({k: v for k, v in items if not k.startswith("_") and k.islower()})

    @property
    def eager(self) -> bool:
        return bool(self.conf.get("task_always_eager"))

    # --- producer side ---------------------------------------------------------------

    @property
    def client(self) -> Client:
        """The app's `conveyor.Client`, created on first use."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = Client(
                        self.address,
                        endpoints=self.endpoints,
                        token=self._token,
                        metadata=self._metadata,
                        tls_ca=self.tls_ca,
                        tls_cert=self.tls_cert,
                        tls_key=self.tls_key,
                        namespace=self.namespace,
                    )
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
        queue="math", max_retries=3, ...)`. The name defaults to
        `module.function` as in Celery (`main` stands for `__main__`); give
        `name=` for a bare name shared with workers in other languages.
        Submission options (see `Client.submit`) become the defaults of every
        submission. Worker settings: `bind=True` passes the `TaskContext` (with
        Celery's `request`, `retry`, `update_state`) as first argument;
        `dont_retry_for` lists exception types that fail the task for good;
        `pool` ("threads", "process", "asyncio") overrides the worker's pool;
        `autoretry_for`, `retry_backoff`, `retry_backoff_max`, `retry_jitter`,
        `retry_kwargs`, `default_retry_delay` as in Celery."""
        settings = {key: options.pop(key) for key in _HANDLER_SETTINGS if key in options}
        for key in _IGNORED_SETTINGS:
            options.pop(key, None)
        if "autoretry_for" in settings:
            settings["autoretry_for"] = tuple(settings["autoretry_for"])
        retry_kwargs = settings.get("retry_kwargs") or {}
        if "max_retries" in retry_kwargs and "max_retries" not in options:
            options["max_retries"] = retry_kwargs["max_retries"]

        def decorate(function: Callable[..., Any]) -> Task:
            task = Task(
                self,
                function,
                name=name or self._default_name(function),
                bind=bind,
                dont_retry_for=tuple(dont_retry_for),
                options=_options(options),
                settings=settings,
            )
            self.tasks[task.name] = task
            return task

        if fn is not None:
            return decorate(fn)
        return decorate

    def _default_name(self, function: Callable[..., Any]) -> str:
        module = getattr(function, "__module__", None) or "__main__"
        if module == "__main__" and self.main:
            module = self.main
        return f"{module}.{function.__name__}"

    def route(self, name: str) -> dict[str, Any]:
        """The options `conf.task_routes` gives task `name` (a dict of exact
        names or glob patterns, or a callable returning options or None)."""
        routes = self.conf.get("task_routes") or {}
        found: Any = None
        if callable(routes):
            found = routes(name)
        else:
            for items in routes if isinstance(routes, (list, tuple)) else [routes]:
                if name in items:
                    found = items[name]
                    break
                for pattern, value in items.items():
                    if fnmatch.fnmatchcase(name, pattern):
                        found = value
                        break
                if found is not None:
                    break
        if found is None:
            default = self.conf.get("task_default_queue")
            return {"queue": default} if default else {}
        if isinstance(found, str):
            return {"queue": found}
        return {k: v for k, v in dict(found).items() if k in ("queue", "priority")}

    # --- beat ------------------------------------------------------------------------

    def sync_beat_schedule(self) -> dict[str, str]:
        """Creates or updates one schedule per `conf.beat_schedule` entry on
        the scheduling service (id `beat:<entry name>`); idempotent, so every
        worker and app may call it. Returns each entry's id and what was done
        ("created", "updated", "unchanged")."""
        done: dict[str, str] = {}
        for entry, spec in (self.conf.get("beat_schedule") or {}).items():
            if "task" not in spec or "schedule" not in spec:
                raise ValueError(f"beat_schedule entry {entry!r} needs 'task' and 'schedule'")
            options = {**self.route(spec["task"]), **dict(spec.get("options") or {})}
            task = self.tasks.get(spec["task"])
            if task is not None:
                options = {**task.options, **options}
            schedule_id = "beat:" + _SCHEDULE_ID.sub("_", entry)[:190]
            args, kwargs = spec.get("args") or (), spec.get("kwargs") or {}
            done[schedule_id] = self.client.schedules.ensure(
                schedule_id, spec["task"], spec["schedule"], list(args), dict(kwargs), **options
            )
            log.info("beat schedule %s: %s", schedule_id, done[schedule_id])
        return done

    def send_task(
        self,
        name: str,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Submits a task by name (it may be defined by a worker in another
        language) and returns its `AsyncResult`. `conf.task_routes` picks the
        queue when neither the call nor the task's defaults give one."""
        options = {**self.route(name), **_options(options)}
        if self.eager and name in self.tasks:
            return self.tasks[name]._apply_eager(args, kwargs, options)
        task_id = self.client.submit(name, list(args or ()), dict(kwargs or {}), **options)
        return AsyncResult(task_id, app=self)

    def send_many(self, signatures: Iterable[Signature | Any]) -> list[AsyncResult]:
        """Submits many tasks in batches (calls of at most 1000 tasks and
        16 MiB of encoded tasks, see `Client.submit_many`); returns their
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

    def WorkflowResult(self, workflow_id: str) -> WorkflowResult:  # noqa: N802 - as AsyncResult
        """A handle on a workflow submitted earlier, by its id."""
        return WorkflowResult(workflow_id, app=self)

    # --- worker side ------------------------------------------------------------------------

    def worker(
        self,
        concurrency: int = DEFAULT_CONCURRENCY,
        queues: Iterable[str] | str | None = None,
        **settings: Any,
    ) -> Worker:
        """A `Worker` that runs this app's tasks (call `.run()`). Settings:
        pool, worker_id, grace_period, heartbeat_interval, reconnect_backoff,
        max_tasks_per_child, max_memory_per_child, credentials, tls_ca,
        tls_cert, tls_key, namespace (default: the app's); see `conveyor.Worker`. A non-empty `conf.beat_schedule` is synced to the
        scheduling service when the worker connects."""
        handlers = {name: task.handler() for name, task in self.tasks.items()}
        if queues is None and self.conf.get("task_default_queue"):
            queues = [self.conf["task_default_queue"]]
        settings.setdefault("token", self._token)
        settings.setdefault("metadata", self._metadata)
        settings.setdefault("endpoints", self.endpoints)
        settings.setdefault("namespace", self.namespace)
        if settings.get("credentials") is None:
            settings.setdefault("tls_ca", self.tls_ca)
            settings.setdefault("tls_cert", self.tls_cert)
            settings.setdefault("tls_key", self.tls_key)
        if self.conf.get("beat_schedule"):
            settings["on_connect"] = [*settings.get("on_connect", ()), self.sync_beat_schedule]
        return Worker(self.address, tasks=handlers, concurrency=concurrency, queues=queues, **settings)

    def __repr__(self) -> str:
        namespace = f" namespace={self.namespace!r}" if self.namespace else ""
        return f"<Conveyor {self.address}{namespace} tasks={sorted(self.tasks)}>"


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
        settings: dict[str, Any] | None = None,
    ):
        self.app = app
        self.run = fn
        self.name = name
        self.bind = bind
        self.dont_retry_for = dont_retry_for
        self.options = dict(options or {})
        self.settings = dict(settings or {})
        self.handler()  # checks the settings now
        functools.update_wrapper(self, fn)

    @property
    def max_retries(self) -> int | None:
        return self.options.get("max_retries")

    def handler(self) -> Handler:
        """How a worker runs this task."""
        return Handler(self.name, self.run, bind=self.bind, dont_retry_for=self.dont_retry_for, **self.settings)

    def _apply_eager(self, args: Any, kwargs: Any, options: Mapping[str, Any]) -> EagerResult:
        propagate = bool(self.app.conf.get("task_eager_propagates"))
        return run_eager(self.handler(), args, kwargs, options, propagate)

    def apply(self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None, **options: Any) -> EagerResult:
        """Runs the task here and now, as eager mode does (Celery's `apply`)."""
        return self._apply_eager(args, kwargs, {**self.options, **_options(options)})

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
        arguments go first, as in Celery); in a chain, the result of the
        task before comes first."""
        return Signature(self.name, args, kwargs, dict(self.options), app=self.app)._of_task(self)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: in a chain or chord it ignores the
        results before it and runs with exactly these arguments."""
        return Signature(self.name, args, kwargs, dict(self.options), app=self.app, immutable=True)._of_task(self)

    def chunks(self, items: Iterable[Iterable[Any]], n: int) -> chunks:
        """`add.chunks(zip(xs, ys), 10)`: see `conveyor.chunks`."""
        return chunks(self, items, n)

    def starmap(self, items: Iterable[Iterable[Any]]) -> group:
        """`add.starmap(zip(xs, ys))`: see `conveyor.starmap`."""
        return starmap(self, items)

    def signature(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        immutable: bool = False,
        **options: Any,
    ) -> Signature:
        """A signature with these arguments and options (Celery's
        `task.signature(args, kwargs, **options)`)."""
        return Signature(
            self.name, args, kwargs, {**self.options, **_options(options)}, app=self.app, immutable=immutable
        )._of_task(self)

    subtask = signature

    def AsyncResult(self, task_id: str) -> AsyncResult:  # noqa: N802 - Celery's spelling
        return AsyncResult(task_id, app=self.app)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"


class AsyncResult:
    """A handle on a submitted task, as in Celery: `id`, `state`, `ready()`,
    `successful()`, `failed()`, `get(timeout)`, `result`, `traceback`."""

    def __init__(self, id: str, *, app: Conveyor | None = None, client: Client | None = None):  # noqa: A002
        if app is None and client is None:
            app = current_app()
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
        """The state now; compares equal to Celery's names too
        (`r.state == "SUCCESS"`)."""
        return _codec.TaskState.from_proto(self._fetch().state)

    status = state

    @property
    def celery_state(self) -> str:
        """Celery's name of the state: RETRY for a task waiting for another
        attempt after a failure, else `state.celery`."""
        task = self._fetch()
        state = _codec.TaskState.from_proto(task.state)
        if task.failures > 0 and state in (_codec.TaskState.SCHEDULED, _codec.TaskState.QUEUED):
            return "RETRY"
        return state.celery

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

    def revoke(self, terminate: bool = False, signal: Any = None) -> bool:
        """Cancels the task: a queued one never runs, and a running one is
        stopped on its worker whatever `terminate` says (Celery's
        `revoke(terminate=True)`; a process-pool child running it is killed).
        True when this call cancelled it, False when it had already finished."""
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
