"""The worker: runs registered handlers for tasks leased through one
`DispatchService.Connect` stream (grpc.aio), reconnecting with backoff when
the stream breaks and draining on SIGTERM/SIGINT.

Async handlers run on the event loop; sync handlers run in a pool of at most
`concurrency` threads (`pool="threads"`, the default) or of `concurrency`
child processes (`pool="process"`, see `_process.py`), chosen per worker and
overridable per task. The worker grants one credit per free slot, so it
never holds more tasks than it can run.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import pickle
import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from conveyor import _codec, _tracing
from conveyor._common import (
    CHANNEL_OPTIONS,
    Security,
    call_metadata,
    closed_hint,
    parse_targets,
    receive_limit,
    resolve_endpoints,
    resolve_namespace,
)
from conveyor._context import TaskContext, _current, current_task
from conveyor._handler import POOLS, Handler, failure, prepare, success, task_error
from conveyor._handler import error as _error
from conveyor._process import ProcessPool
from conveyor._threads import DaemonThreadPool, ThreadGuard
from conveyor._version import __version__
from conveyor.errors import ConveyorError, ProtocolError, SoftTimeLimitExceeded, Terminated, error_class, tls_hint
from conveyor.v1 import dispatch_service_pb2 as pb
from conveyor.v1 import dispatch_service_pb2_grpc

__all__ = ["POOLS", "Handler", "TaskContext", "Worker", "current_task", "task_error"]

log = logging.getLogger("conveyor.worker")

DEFAULT_CONCURRENCY = 8
DEFAULT_GRACE_PERIOD = 30.0
DEFAULT_MIN_BACKOFF = 0.1
DEFAULT_MAX_BACKOFF = 5.0
LANGUAGE = "python"

_HANDSHAKE_TIMEOUT = 10.0
_CLOSE_TIMEOUT = 5.0
_DEFAULT_HEARTBEAT = 10.0
_MIN_HEARTBEAT = 0.01
_DEFAULT_MAX_CREDITS = 1024
_MAX_OUTCOMES_PER_FRAME = 1024
_MAX_CONCURRENCY = 1 << 20
# gRPC core shares subchannels (TCP connections) between channels of the same
# target and arguments through a process-wide pool: with it, a new channel
# after a Drain could ride the old connection back to the same dispatcher
# replica. Each dispatch channel keeps its connections to itself instead.
_LOCAL_SUBCHANNEL_POOL = ("grpc.use_local_subchannel_pool", 1)
_MAX_QUEUES = 64
_MAX_TASK_NAMES = 1024
# Time a revoked async handler gets to stop before it is cancelled again.
_REVOKE_GRACE = 1.0
_FATAL_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


# --- jobs ---------------------------------------------------------------------------


class _Job:
    """One running attempt."""

    def __init__(self, epoch: int, assignment: pb.Assignment, handler: Handler | None, worker_id: str):
        self.epoch = epoch
        self.task_id = assignment.task_id
        self.lease_token = assignment.lease_token
        self.context = TaskContext(assignment, worker_id)
        self.handler = handler
        self.guard = ThreadGuard()
        self.handle: asyncio.Task[pb.TaskOutcome] | None = None
        self.cancelled = False  # by the dispatcher or abandoned: drop the outcome
        self.soft_expired = False
        self.soft_timer: asyncio.TimerHandle | None = None
        self.progress: pb.ReportProgress | None = None  # latest not yet sent
        self.started = time.monotonic()
        # Set when the job runs in a child process: kills that child.
        self.kill: Callable[[], bool] | None = None
        # What the handler raised, recorded on the attempt's span.
        self.raised: BaseException | None = None

    @property
    def runs_on_loop(self) -> bool:
        return self.handler is not None and self.handler.is_async

    def cancel(self) -> None:
        """Stops the handler; its outcome will be dropped."""
        if self.cancelled:
            return
        self.cancelled = True
        if self.handle is None or self.handle.done() or self.runs_on_loop or self.kill is not None:
            self.context._cancel(Terminated)
        if self.handle is None or self.handle.done():
            return
        if self.runs_on_loop:
            self.handle.cancel("cancelled")
            handle = self.handle
            # A handler that swallows the cancellation is cancelled again.
            handle.get_loop().call_later(_REVOKE_GRACE, lambda: handle.done() or handle.cancel("cancelled"))
        elif self.kill is not None:
            self.kill()
        else:
            self.context._interrupt(Terminated, self.guard.interrupt)

    def soft_limit(self) -> None:
        if self.cancelled or self.handle is None or self.handle.done() or self.kill is not None:
            return  # a child process arms its own soft limit
        log.warning("task %s: soft time limit passed, interrupting the handler", self.task_id)
        self.soft_expired = True
        if self.runs_on_loop:
            self.context._cancel(SoftTimeLimitExceeded)
            self.handle.cancel("soft time limit exceeded")
        else:
            self.context._interrupt(SoftTimeLimitExceeded, self.guard.interrupt)


# --- sessions -----------------------------------------------------------------------


class _Backoff:
    """From `low`, doubling per failure, capped at `high`; each delay drawn
    from the upper half of that ("equal jitter")."""

    def __init__(self, low: float, high: float):
        self.low = low
        self.high = max(low, high)
        self.failures = 0

    def ceiling(self) -> float:
        return min(self.low * (2 ** min(self.failures, 31)), self.high)

    def next_delay(self) -> float:
        ceiling = self.ceiling()
        self.failures += 1
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.failures = 0


@dataclass
class _End:
    kind: str  # "stopped", "drained" or "broken"
    error: ConveyorError | None = None
    reason: int = 0  # a Drain's DrainReason (kind "drained")
    welcomed: bool = False
    abrupt: bool = False  # a second stop request: do not wait for the stream to close


class _Broken(Exception):
    def __init__(self, error: ConveyorError):
        super().__init__(str(error))
        self.error = error


def _status_error(error: BaseException, what: str) -> ConveyorError:
    if isinstance(error, ConveyorError):
        return error
    if isinstance(error, grpc.RpcError):
        return ConveyorError.from_rpc(error, what)
    return ConveyorError(f"{what}: {error!r}", code=grpc.StatusCode.UNAVAILABLE)


class _Session:
    def __init__(self, epoch: int, call: Any, max_credits: int):
        self.epoch = epoch
        self.call = call
        self.max_credits = max_credits
        self.running: dict[str, _Job] = {}
        self.outstanding = 0
        self.draining = False
        self.stopping = False
        self.deadline: float | None = None
        self.drain_reason = 0  # the dispatcher's Drain.reason, when it drained the session
        self.timers: list[asyncio.TimerHandle] = []
        self.started: list[pb.TaskStarted] = []
        self.progress: list[pb.ReportProgress] = []
        self.outcomes: list[pb.TaskOutcome] = []

    def end(self) -> _End:
        if self.stopping:
            return _End("stopped")
        return _End("drained", reason=self.drain_reason)

    async def send(self, **message: Any) -> None:
        try:
            await self.call.write(pb.ConnectRequest(**message))
        except grpc.RpcError as error:
            raise _Broken(ConveyorError.from_rpc(error, "worker stream")) from None
        except asyncio.InvalidStateError:
            raise _Broken(ConveyorError("worker stream closed", code=grpc.StatusCode.UNAVAILABLE)) from None


class Worker:
    """Runs task handlers for Conveyor.

    ```python
    worker = conveyor.Worker("http://127.0.0.1:50051", concurrency=4)

    @worker.register("add")
    def add(a, b):
        return a + b

    worker.run()          # until SIGTERM/SIGINT, then drains
    ```

    Most code gets one from `Conveyor.worker()` instead, with the app's
    tasks registered.

    `pool`: "threads" (default), "process" (sync handlers in `concurrency`
    spawned child processes; `max_tasks_per_child`, `max_memory_per_child`
    in KiB replace them) or "asyncio"; a handler's own `pool` overrides it.
    `address` may list several dispatchers (comma-separated or a list): the
    worker fails over to the next when a session cannot be had or is lost.
    `endpoints` (keys "submission", "results", "dispatch", "scheduling", as
    in `conveyor.Client`) may give the dispatch service its own address:
    the worker stream goes to the first found of `endpoints["dispatch"]`,
    `$CONVEYOR_DISPATCH_ADDR`, `address`, `$CONVEYOR_ADDR`,
    `http://127.0.0.1:50051`. The other keys are checked and kept in
    `self.endpoints` (the app passes them to its client).
    TLS (`tls_ca`, `tls_cert`, `tls_key`, their `CONVEYOR_TLS_*` variables,
    `credentials`) works as in `conveyor.Client`.
    `namespace` (default `$CONVEYOR_NAMESPACE`, else "", the server's
    "default") is the namespace whose tasks the worker runs (its
    Hello.namespace): it leases only that namespace's tasks of its queues.
    A session the server refuses (`Unauthenticated`, or `PermissionDenied`
    for a principal without the worker role in the namespace) stops
    `run()` with that error.
    `on_connect` callables run in a thread after the first session opens
    (again at the next session if one raises).
    """

    def __init__(
        self,
        address: str | Sequence[str] | None = None,
        *,
        endpoints: Mapping[str, str | Sequence[str]] | None = None,
        tasks: Mapping[str, Any] | Iterable[Any] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        queues: Iterable[str] | str | None = None,
        worker_id: str | None = None,
        token: str | None = None,
        metadata: Iterable[tuple[str, str]] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        tls_ca: str | os.PathLike[str] | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        heartbeat_interval: float | None = None,
        reconnect_backoff: tuple[float, float] = (DEFAULT_MIN_BACKOFF, DEFAULT_MAX_BACKOFF),
        pool: str = "threads",
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        channel_options: Iterable[tuple[str, Any]] = (),
        on_connect: Iterable[Callable[[], Any]] = (),
        namespace: str | None = None,
    ):
        if not 1 <= int(concurrency) <= _MAX_CONCURRENCY:
            raise ValueError(f"concurrency must be 1 to {_MAX_CONCURRENCY}, not {concurrency}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
        for what, limit in (("max_tasks_per_child", max_tasks_per_child), ("max_memory_per_child", max_memory_per_child)):
            if limit is not None and int(limit) < 1:
                raise ValueError(f"{what} must be at least 1 (or None for no limit), not {limit}")
        self.address = address
        self.namespace = resolve_namespace(namespace)
        self.endpoints = dict(endpoints or {})
        self._security = Security(credentials, tls_ca, tls_cert, tls_key)
        self._targets = parse_targets(resolve_endpoints(address, endpoints)["dispatch"], self._security.tls)
        self._target_index = 0
        self._channel_options = [*CHANNEL_OPTIONS, _LOCAL_SUBCHANNEL_POOL, *channel_options]
        self.pool = pool
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child
        self._on_connect = list(on_connect)
        self.concurrency = int(concurrency)
        if isinstance(queues, str):
            queues = [queues]
        self.queues = list(queues or ["default"])
        if len(self.queues) > _MAX_QUEUES:
            raise ValueError(f"at most {_MAX_QUEUES} queues")
        self.hostname = socket.gethostname() or "localhost"
        self.worker_id = worker_id or f"{self.hostname}-{os.getpid()}"
        if not 1 <= len(self.worker_id) <= 200:
            raise ValueError("worker_id must be 1 to 200 characters")
        self.grace_period = float(grace_period)
        self.heartbeat_interval = heartbeat_interval
        self.reconnect_backoff = reconnect_backoff
        self._metadata = call_metadata(token, metadata)
        self.handlers: dict[str, Handler] = {}
        if isinstance(tasks, Mapping):
            for name, fn in tasks.items():
                self._add(name, fn)
        elif tasks is not None:
            for task in tasks:
                self._add(task.name, task)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: asyncio.Queue[tuple[Any, ...]] | None = None
        self._stopping: asyncio.Event | None = None
        self._stop_requests = 0
        self._stop_early = False
        self._inflight: set[_Job] = set()
        self._pool: DaemonThreadPool | None = None
        self._processes: ProcessPool | None = None
        self.session_id: str | None = None

    @property
    def target(self) -> str:
        """The dispatcher address the worker uses now (it fails over to the
        next one of several when a session cannot be had)."""
        return self._targets[self._target_index].target

    @property
    def tls(self) -> str:
        """How the worker's channels are secured, e.g. "on (CA ca.pem)" or "off"."""
        return self._security.describe(self._targets)

    @property
    def dispatch_address(self) -> str:
        """The dispatch endpoint in use now, as it was given."""
        return str(self._targets[self._target_index])

    def pool_of(self, handler: Handler) -> str:
        """Where the handler runs: "asyncio" (the loop), "threads" or "process"."""
        if handler.is_async:
            return "asyncio"
        chosen = handler.pool or self.pool
        return "threads" if chosen == "asyncio" else chosen

    # --- registration ---------------------------------------------------------------

    def register(
        self,
        name: str | Callable[..., Any] | None = None,
        fn: Callable[..., Any] | None = None,
        *,
        bind: bool = False,
        dont_retry_for: Iterable[type[BaseException]] = (),
        pool: str | None = None,
    ) -> Any:
        """Registers `fn` for tasks named `name`: `worker.register("add", add)`,
        or as a decorator, `@worker.register("add")` / `@worker.register`.
        With `bind=True` the handler's first argument is its `TaskContext`;
        exceptions of the `dont_retry_for` types fail the task for good;
        `pool` overrides the worker's pool for this task."""
        if callable(name) and fn is None:
            fn, name = name, None
        if fn is None:
            return lambda f: self.register(name, f, bind=bind, dont_retry_for=dont_retry_for, pool=pool)
        self.handlers[name or fn.__name__] = Handler(
            name or fn.__name__, fn, bind=bind, dont_retry_for=tuple(dont_retry_for), pool=pool
        )
        return fn

    def _add(self, name: str, task: Any) -> None:
        if isinstance(task, Handler):
            self.handlers[name] = task
            return
        if callable(getattr(task, "handler", None)) and hasattr(task, "apply_async"):
            self.handlers[name] = task.handler()
            return
        fn = getattr(task, "run", None) if hasattr(task, "apply_async") else task
        self.handlers[name] = Handler(
            name,
            fn,
            bind=bool(getattr(task, "bind", False)),
            dont_retry_for=tuple(getattr(task, "dont_retry_for", ()) or ()),
        )

    # --- running ----------------------------------------------------------------------

    def run(self, *, install_signal_handlers: bool = True) -> None:
        """Blocks until SIGTERM or SIGINT (or `stop()`), then drains: takes no
        new work, lets running tasks finish within the grace period, closes
        the stream and returns. A second signal returns at once. Raises
        `ConveyorError` only for what retrying cannot fix (a refused Hello,
        bad credentials)."""
        asyncio.run(self.run_async(install_signal_handlers=install_signal_handlers))

    def stop(self) -> None:
        """Asks the worker to drain and stop (thread-safe). Calling it a
        second time stops at once, abandoning running tasks."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._stop_early = True
            return
        try:
            loop.call_soon_threadsafe(self._request_stop)
        except RuntimeError:  # the loop just closed
            pass

    def _request_stop(self) -> None:
        self._stop_requests += 1
        assert self._events is not None and self._stopping is not None
        if self._stop_requests == 1:
            log.info("stopping: draining (signal again to exit at once)")
            self._stopping.set()
            self._events.put_nowait(("stop",))
        else:
            log.warning("second stop request, exiting at once")
            self._events.put_nowait(("force",))

    async def run_async(self, *, install_signal_handlers: bool = False) -> None:
        """`run` as a coroutine, on the running loop."""
        if not self.handlers:
            raise ValueError("register at least one task before running the worker")
        if len(self.handlers) > _MAX_TASK_NAMES:
            raise ValueError(f"at most {_MAX_TASK_NAMES} task names")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._events = asyncio.Queue()
        self._stopping = asyncio.Event()
        self._stop_requests = 0
        self._pool = DaemonThreadPool(self.concurrency)
        self._processes = self._process_pool()
        installed: list[int] = []
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self._request_stop)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError):  # pragma: no cover - non-unix
                    pass
        if self._stop_early:
            self._stop_early = False
            self._request_stop()
        log.info(
            "worker %s starting: %s, namespace %s, queues %s, tasks %s, pool %s, concurrency %d",
            self.worker_id,
            ",".join(t.target for t in self._targets),
            repr(self.namespace or "default"),
            self.queues,
            sorted(self.handlers),
            self.pool,
            self.concurrency,
        )
        channels: dict[int, grpc.aio.Channel] = {}
        try:
            await self._serve(channels)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self._abandon_all()
            self._pool.shutdown()
            if self._processes is not None:
                self._processes.close()
            for channel in channels.values():
                await channel.close()
            self._loop = None
            log.info("worker %s stopped", self.worker_id)

    def _process_pool(self) -> ProcessPool | None:
        """The pool of child processes when any task runs in one; started
        now when it is the worker's pool, on first use otherwise."""
        in_processes = [h for h in self.handlers.values() if self.pool_of(h) == "process"]
        if not in_processes:
            return None
        for handler in in_processes:
            pickle.dumps(handler)  # ValueError now, not at the first task, if not importable
        processes = ProcessPool(
            self.concurrency,
            max_tasks_per_child=self.max_tasks_per_child,
            max_memory_per_child=self.max_memory_per_child,
            worker_id=self.worker_id,
        )
        if self.pool == "process":
            processes.start()
        return processes

    def _channel(self, channels: dict[int, grpc.aio.Channel]) -> grpc.aio.Channel:
        index = self._target_index
        if index not in channels:
            target = self._targets[index]
            credentials = self._security.for_target(target)
            if credentials is not None:
                channels[index] = grpc.aio.secure_channel(target.target, credentials, options=self._channel_options)
            else:
                channels[index] = grpc.aio.insecure_channel(target.target, options=self._channel_options)
        return channels[index]

    async def _serve(self, channels: dict[int, grpc.aio.Channel]) -> None:
        assert self._stopping is not None
        backoff = _Backoff(*self.reconnect_backoff)
        epoch = 0
        while not self._stopping.is_set():
            epoch += 1
            end = await self._session(self._channel(channels), epoch)
            if end.kind == "stopped":
                return
            if end.kind == "drained":
                # The next session goes out on a new connection, which a
                # load balancer (balancing connections, not streams) may
                # place on another replica: the drained session's channel
                # served that session alone and is closed now.
                backoff.reset()
                drained = channels.pop(self._target_index, None)
                if drained is not None:
                    await drained.close()
                log.info("session drained (%s), reconnecting on a new connection", _drain_reason(end.reason))
            else:
                error = end.error or ConveyorError("worker stream lost", code=grpc.StatusCode.UNAVAILABLE)
                error.at_endpoint("dispatch", self.dispatch_address)
                if isinstance(error, ProtocolError) or error.code in _FATAL_CODES:
                    raise error
                failed = self.target
                if not end.welcomed:
                    error.add_hint(closed_hint(error, self._targets[self._target_index], self._security))
                self._target_index = (self._target_index + 1) % len(self._targets)
                if end.welcomed:
                    backoff.reset()
                    log.warning("worker stream to %s lost (%s), reconnecting to %s", failed, error, self.target)
                else:
                    log.warning("cannot open a worker session on %s (%s), trying %s", failed, error, self.target)
                if self._target_index != 0 and not end.welcomed:
                    continue  # fail over to the next address at once; back off after a full round
            delay = backoff.next_delay()
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
                return
            except asyncio.TimeoutError:
                pass

    async def _run_on_connect(self) -> None:
        """Runs the on-connect hooks (the app's beat_schedule sync) in a
        thread; one that fails is tried again at the next session."""
        hooks, self._on_connect = self._on_connect, []
        for hook in hooks:
            try:
                await asyncio.to_thread(hook)
            except Exception as exc:  # noqa: BLE001 - logged, retried
                log.warning("%s failed (%s); retrying at the next session", getattr(hook, "__name__", hook), exc)
                self._on_connect.append(hook)

    async def _abandon_all(self) -> None:
        jobs = list(self._inflight)
        for job in jobs:
            job.cancel()
        on_loop = [job.handle for job in jobs if job.handle is not None and job.runs_on_loop]
        if on_loop:
            await asyncio.wait(on_loop, timeout=1.0)

    # --- one session ----------------------------------------------------------------------

    def _hello(self) -> pb.Hello:
        return pb.Hello(
            worker_id=self.worker_id,
            queues=self.queues,
            task_names=sorted(self.handlers),
            concurrency=min(self.concurrency, 2**32 - 1),
            language=LANGUAGE,
            sdk_version=__version__,
            hostname=self.hostname,
            namespace=self.namespace,
        )

    async def _until_stopped(self, awaitable: Any, timeout: float | None) -> tuple[bool, Any]:
        """(stopped, result) of `awaitable`, unless a stop comes first."""
        assert self._stopping is not None
        work = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            done, _ = await asyncio.wait({work, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if work in done:
            return False, work.result()
        work.cancel()
        if stop in done:
            return True, None
        raise asyncio.TimeoutError

    def _check_frame_limit(self, max_frame_bytes: int) -> None:
        """Logs an error when the dispatcher may send frames larger than this
        worker's channels receive: such a frame would break the stream."""
        limit = receive_limit(self._channel_options)
        if limit is not None and max_frame_bytes > limit:
            log.error(
                "the dispatcher sends worker frames of up to %d bytes but this worker receives at most %d: "
                "upgrade the conveyor SDK (and do not lower grpc.max_receive_message_length)",
                max_frame_bytes,
                limit,
            )

    async def _session(self, channel: grpc.aio.Channel, epoch: int) -> _End:
        stub = dispatch_service_pb2_grpc.DispatchServiceStub(channel)
        call = stub.Connect(metadata=self._metadata or None)

        async def handshake() -> Any:
            await call.write(pb.ConnectRequest(hello=self._hello()))
            return await call.read()

        try:
            stopped, first = await self._until_stopped(handshake(), _HANDSHAKE_TIMEOUT)
        except asyncio.TimeoutError:
            call.cancel()
            error = ConveyorError("no Welcome within 10s of Hello", code=grpc.StatusCode.DEADLINE_EXCEEDED)
            return _End("broken", error)
        except (grpc.RpcError, asyncio.InvalidStateError) as exc:
            call.cancel()
            return _End("broken", await _call_error(call, exc))
        if stopped:
            call.cancel()
            return _End("stopped")
        if first is grpc.aio.EOF:
            return _End("broken", await _call_error(call, None))
        if first.WhichOneof("message") != "welcome":
            call.cancel()
            return _End("broken", ProtocolError(f"expected Welcome first, got {first.WhichOneof('message')}"))
        welcome = first.welcome
        self.session_id = welcome.session_id
        interval = self.heartbeat_interval or _codec.from_duration(welcome.heartbeat_interval) or _DEFAULT_HEARTBEAT
        interval = max(interval, _MIN_HEARTBEAT)
        log.info("worker session %s established on %s (heartbeat %.3fs)", welcome.session_id, self.target, interval)
        self._check_frame_limit(welcome.max_frame_bytes)
        if self._on_connect:
            asyncio.ensure_future(self._run_on_connect())
        session = _Session(epoch, call, welcome.max_credits or _DEFAULT_MAX_CREDITS)
        reader = asyncio.ensure_future(self._read(call, epoch))
        beat = asyncio.ensure_future(self._beat(epoch, interval))
        try:
            try:
                end = await self._run_session(session)
            except _Broken as broken:
                end = _End("broken", broken.error, welcomed=True)
        finally:
            beat.cancel()
            for timer in session.timers:
                timer.cancel()
            for job in session.running.values():
                job.cancel()
            session.running.clear()
        if end.kind == "broken" or end.abrupt:
            call.cancel()
            reader.cancel()
        else:
            await self._close(call, reader)
        return end

    async def _close(self, call: Any, reader: asyncio.Future[Any]) -> None:
        """Closes our half, then waits (bounded) for the dispatcher to close
        its half, so that frames already written are delivered."""
        try:
            await call.done_writing()
            await asyncio.wait_for(asyncio.shield(reader), _CLOSE_TIMEOUT)
        except (asyncio.TimeoutError, grpc.RpcError, asyncio.InvalidStateError):
            pass
        finally:
            reader.cancel()
            call.cancel()

    async def _read(self, call: Any, epoch: int) -> None:
        assert self._events is not None
        try:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    break
                self._events.put_nowait(("msg", epoch, message))
            self._events.put_nowait(("eof", epoch, await _call_error(call, None)))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - any failure ends the stream
            self._events.put_nowait(("eof", epoch, _status_error(exc, "worker stream")))

    async def _beat(self, epoch: int, interval: float) -> None:
        assert self._events is not None
        while True:
            await asyncio.sleep(interval)
            self._events.put_nowait(("beat", epoch))

    async def _run_session(self, s: _Session) -> _End:
        assert self._events is not None and self._stopping is not None
        if self._stopping.is_set():
            self._drain(s, stopping=True, grace=self.grace_period)
        while True:
            if s.draining and not s.running:
                await self._flush(s)
                return s.end()
            await self._grant(s)
            event = await self._events.get()
            kind = event[0]
            if kind == "stop":
                if not s.stopping:
                    log.info("draining %d running task(s) before stopping", len(s.running))
                self._drain(s, stopping=True, grace=self.grace_period)
            elif kind == "force":
                return _End("stopped", abrupt=True)
            elif kind == "finished":
                self._finished(s, event[1])
            elif kind == "progress":
                job = event[1]
                report, job.progress = job.progress, None
                if report is not None and s.running.get(job.task_id) is job and not job.cancelled:
                    s.progress.append(report)
            elif event[1] != s.epoch:
                pass  # from an earlier session
            elif kind == "beat":
                await s.send(heartbeat=pb.Heartbeat())
            elif kind == "msg":
                self._handle(s, event[2])
            elif kind == "eof":
                if s.draining:
                    return s.end()  # the dispatcher closed the drained session
                ended = ConveyorError("dispatcher ended the stream", code=grpc.StatusCode.UNAVAILABLE)
                raise _Broken(event[2] or ended)
            elif kind == "deadline":
                log.warning("drain grace period over, abandoning %d task(s)", len(s.running))
                await self._flush(s)
                return s.end()
            if self._events.empty():
                await self._flush(s)

    def _drain(self, s: _Session, *, stopping: bool, grace: float) -> None:
        assert self._loop is not None and self._events is not None
        deadline = self._loop.time() + max(0.0, grace)
        s.stopping = s.stopping or stopping
        if s.draining and s.deadline is not None and s.deadline <= deadline:
            return
        s.draining = True
        s.deadline = deadline
        events = self._events
        s.timers.append(self._loop.call_at(deadline, events.put_nowait, ("deadline", s.epoch)))

    async def _grant(self, s: _Session) -> None:
        if s.draining:
            return
        free = self.concurrency - (len(self._inflight) + s.outstanding)
        credits = min(free, s.max_credits - s.outstanding)
        if credits > 0:
            s.outstanding += credits
            await s.send(grant_credits=pb.GrantCredits(credits=credits))

    def _handle(self, s: _Session, response: pb.ConnectResponse) -> None:
        kind = response.WhichOneof("message")
        if kind == "assignments":
            for assignment in response.assignments.assignments:
                s.outstanding = max(0, s.outstanding - 1)
                if s.draining:
                    # Left leased: it goes back to its queue when the stream closes.
                    continue
                self._start(s, assignment)
        elif kind == "cancel_assignment":
            cancel = response.cancel_assignment
            job = s.running.get(cancel.task_id)
            if job is not None:
                log.info("task %s cancelled by the dispatcher (%s)", cancel.task_id, cancel.reason)
                job.cancel()
        elif kind == "drain":
            grace = _codec.from_duration(response.drain.grace if response.drain.HasField("grace") else None)
            s.drain_reason = response.drain.reason
            log.info("dispatcher asked to drain (%s, %d running)", _drain_reason(s.drain_reason), len(s.running))
            self._drain(s, stopping=False, grace=self.grace_period if grace is None else grace)
        elif kind == "outcome_rejected":
            rejected = response.outcome_rejected
            log.warning(
                "outcome of task %s rejected: %s %s",
                rejected.task_id,
                _code_name(rejected.code),
                rejected.message,
            )
        elif kind == "welcome":
            log.warning("ignoring a second Welcome")

    def _start(self, s: _Session, assignment: pb.Assignment) -> None:
        assert self._loop is not None and self._events is not None
        job = _Job(s.epoch, assignment, self.handlers.get(assignment.name), self.worker_id)
        job.context._reporter = functools.partial(self._report_progress, self._loop, job)
        previous = s.running.pop(job.task_id, None)
        if previous is not None:
            previous.cancel()
        s.running[job.task_id] = job
        self._inflight.add(job)
        log.info("task %s[%s] received (attempt %d)", assignment.name, job.task_id, assignment.attempt)
        job.handle = self._loop.create_task(self._execute(job), name=f"conveyor-task-{job.task_id}")
        job.handle.add_done_callback(functools.partial(self._done, job))
        limit = job.context.soft_time_limit
        if limit is not None:
            job.soft_timer = self._loop.call_later(limit, job.soft_limit)
        s.started.append(pb.TaskStarted(task_id=job.task_id, lease_token=job.lease_token))

    def _report_progress(self, loop: asyncio.AbstractEventLoop, job: _Job, report: pb.ReportProgress) -> bool:
        """Hands a progress report to the session (from any thread)."""

        def post() -> None:
            pending = job.progress is not None
            job.progress = report
            if not pending and self._events is not None:
                self._events.put_nowait(("progress", job))

        if job.cancelled or loop.is_closed():
            return False
        try:
            loop.call_soon_threadsafe(post)
        except RuntimeError:  # the loop closed meanwhile
            return False
        return True

    def _done(self, job: _Job, _handle: asyncio.Task[Any]) -> None:
        self._inflight.discard(job)
        if job.soft_timer is not None:
            job.soft_timer.cancel()
        if self._events is not None:
            self._events.put_nowait(("finished", job))

    def _finished(self, s: _Session, job: _Job) -> None:
        if job.epoch != s.epoch or s.running.get(job.task_id) is not job:
            return
        del s.running[job.task_id]
        if job.cancelled or job.handle is None or job.handle.cancelled():
            log.debug("dropping the outcome of cancelled task %s", job.task_id)
            return
        try:
            outcome = job.handle.result()
        except BaseException as exc:  # noqa: BLE001 - a bug in the runner, not the handler
            log.exception("task runner of %s failed", job.task_id)
            outcome = pb.TaskOutcome(
                task_id=job.task_id,
                lease_token=job.lease_token,
                error=_error("WorkerError", repr(exc), True),
            )
        if outcome.HasField("result"):
            log.info("task %s[%s] succeeded in %.3fs", job.context.name, job.task_id, time.monotonic() - job.started)
        s.outcomes.append(outcome)

    async def _flush(self, s: _Session) -> None:
        if s.started:
            started, s.started = s.started, []
            for message in started:
                job = s.running.get(message.task_id)
                if job is None or not job.cancelled:
                    await s.send(task_started=message)
        if s.progress:
            reports, s.progress = s.progress, []
            for report in reports:
                await s.send(report_progress=report)
        while s.outcomes:
            frame = s.outcomes[:_MAX_OUTCOMES_PER_FRAME]
            del s.outcomes[:_MAX_OUTCOMES_PER_FRAME]
            await s.send(report_outcomes=pb.ReportOutcomes(outcomes=frame))

    # --- running a handler ---------------------------------------------------------------

    async def _execute(self, job: _Job) -> pb.TaskOutcome:
        """Runs the attempt in its `process` span, the current span while the
        handler runs; an attempt that fails marks it ERROR."""
        # The assignment names its queue; from an older server it does not,
        # and then only a worker of one queue knows it.
        fallback = self.queues[0] if len(self.queues) == 1 else None
        with _tracing.process(job.context.assignment, fallback) as span:
            outcome = await self._attempt(job)
            if outcome.HasField("error"):
                _tracing.failed(span, outcome.error, job.raised)
            return outcome

    async def _attempt(self, job: _Job) -> pb.TaskOutcome:
        handler = job.handler
        ctx = job.context
        if handler is None:
            message = f"no handler is registered for {ctx.name!r} on worker {self.worker_id}"
            return pb.TaskOutcome(task_id=job.task_id, lease_token=job.lease_token, error=_error("NotRegistered", message, True))
        started = time.monotonic()
        if self.pool_of(handler) == "process" and self._processes is not None:
            processes = self._processes
            job.kill = lambda: processes.kill(job)
            result = await processes.run(job, handler)
            log.debug("task %s (%s) ended in %.3fs", job.task_id, ctx.name, time.monotonic() - started)
            return result
        prepared = prepare(handler, ctx)
        if isinstance(prepared, pb.TaskOutcome):
            return prepared
        args, kwargs = prepared
        _current.set(ctx)
        try:
            if handler.is_async:
                value = await handler.fn(*args, **kwargs)
            else:
                ok, value = await self._run_in_thread(job, handler.fn, args, kwargs)
                if not ok:
                    raise value
        except asyncio.CancelledError:
            if job.soft_expired and not job.cancelled:
                task = asyncio.current_task()
                if task is not None and hasattr(task, "uncancel"):
                    task.uncancel()
                return failure(handler, ctx, SoftTimeLimitExceeded(f"soft time limit ({ctx.soft_time_limit or 0.0:g}s) exceeded"))
            raise
        except BaseException as exc:  # noqa: BLE001 - every handler failure is reported
            job.raised = exc
            return failure(handler, ctx, exc)
        finally:
            _current.set(None)
        log.debug("task %s (%s) succeeded in %.3fs", job.task_id, ctx.name, time.monotonic() - started)
        return success(handler, ctx, value)

    async def _run_in_thread(
        self, job: _Job, fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]
    ) -> tuple[bool, Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[bool, Any]] = loop.create_future()
        guard = job.guard
        ctx = job.context
        trace_context = _tracing.current()  # the attempt's span, current in the handler's thread too

        def call() -> tuple[bool, Any]:
            _current.set(ctx)
            with _tracing.attached(trace_context):
                try:
                    guard.enter()
                    return True, fn(*args, **kwargs)
                except BaseException as exc:  # noqa: BLE001 - reported as the outcome
                    return False, exc
                finally:
                    guard.exit()

        def work() -> None:
            try:
                try:
                    result = contextvars.Context().run(call)
                except BaseException as exc:  # noqa: BLE001 - injected after the handler returned
                    result = (False, exc)
                guard.exit()
            except BaseException as exc:  # noqa: BLE001 - same, one frame later
                result = (False, exc)
            try:
                loop.call_soon_threadsafe(_settle, future, result)
            except RuntimeError:  # the loop is closed: the worker is gone
                pass

        assert self._pool is not None
        self._pool.submit(work)
        return await future


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _drain_reason(reason: int) -> str:
    """A DrainReason for the log: "rebalance", "shutdown", "no reason given"."""
    if reason == pb.DRAIN_REASON_UNSPECIFIED:
        return "no reason given"
    try:
        return pb.DrainReason.Name(reason).removeprefix("DRAIN_REASON_").lower()
    except ValueError:  # a reason newer than this SDK
        return f"reason {reason}"


def _code_name(code: int) -> str:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status.name
    return str(code)


async def _call_error(call: Any, exc: BaseException | None) -> ConveyorError:
    """The error a finished (or failing) stream call ended with."""
    if isinstance(exc, grpc.RpcError):
        return ConveyorError.from_rpc(exc, "worker stream")
    try:
        code = await call.code()
        details = await call.details()
    except BaseException:  # noqa: BLE001
        code, details = grpc.StatusCode.UNAVAILABLE, "stream ended"
    if code == grpc.StatusCode.OK:
        code, details = grpc.StatusCode.UNAVAILABLE, "dispatcher ended the stream"
    hint = tls_hint(details or "") if code == grpc.StatusCode.UNAVAILABLE else ""
    return error_class(code)(f"worker stream: {code.name}: {details}{hint}", code=code, details=details or "")
