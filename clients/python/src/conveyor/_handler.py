"""`Handler`: a registered task function with how it runs (bind, pool,
retry settings), and the rules that turn one call of it into a
`TaskOutcome`. Shared by the worker's threads and event loop, the process
pool's children (a `Handler` pickles its function by reference) and eager
mode."""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import os
import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conveyor import _codec
from conveyor._context import TaskContext, _current
from conveyor.errors import PayloadError, Reject, Retry, SoftTimeLimitExceeded
from conveyor.v1 import dispatch_service_pb2 as pb
from conveyor.v1 import task_pb2

__all__ = ["POOLS", "Handler", "run_sync", "task_error"]

log = logging.getLogger("conveyor.worker")

# Where handlers run: threads of the worker process, child processes (spawn),
# or the worker's event loop (async handlers; sync ones then use threads).
POOLS = ("threads", "process", "asyncio")
# Celery's defaults: retry_backoff_max 600 s, default_retry_delay 180 s.
DEFAULT_RETRY_BACKOFF_MAX = 600.0
DEFAULT_RETRY_DELAY = 180.0


@dataclass
class Handler:
    """A registered task function and how to call it.

    `autoretry_for` (Celery's): exceptions of these types retry the task
    after a countdown (`retry_backoff`: `factor * 2**retries` seconds capped
    at `retry_backoff_max`, drawn at random below that when `retry_jitter`;
    else `retry_kwargs["countdown"]` or `default_retry_delay`); with it set,
    any other exception fails the task for good, as in Celery."""

    name: str
    fn: Callable[..., Any]
    bind: bool = False
    dont_retry_for: tuple[type[BaseException], ...] = ()
    pool: str | None = None
    autoretry_for: tuple[type[BaseException], ...] = ()
    retry_backoff: bool | float = False
    retry_backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX
    retry_jitter: bool = True
    retry_kwargs: dict[str, Any] = field(default_factory=dict)
    default_retry_delay: float = DEFAULT_RETRY_DELAY
    is_async: bool = field(init=False)
    signature: inspect.Signature | None = field(init=False)

    def __post_init__(self) -> None:
        if self.pool is not None and self.pool not in POOLS:
            raise ValueError(f"pool of task {self.name!r} must be one of {', '.join(POOLS)}, not {self.pool!r}")
        self.is_async = _is_async(self.fn)
        try:
            self.signature = inspect.signature(self.fn)
        except (TypeError, ValueError):
            self.signature = None

    def retry_countdown(self, retries: int) -> float:
        """Seconds before the retry of an `autoretry_for` exception."""
        if self.retry_backoff:
            factor = 1.0 if self.retry_backoff is True else float(self.retry_backoff)
            countdown = min(float(self.retry_backoff_max), factor * (2 ** min(retries, 62)))
            if self.retry_jitter:
                countdown = random.uniform(0.0, countdown)
            return max(0.0, countdown)
        return float(self.retry_kwargs.get("countdown", self.default_retry_delay))

    def function_ref(self) -> tuple[str, str]:
        """(module, qualified name) by which a child process imports the
        function; ValueError when it cannot be imported that way."""
        fn = self.fn
        module = getattr(fn, "__module__", None)
        qualname = getattr(fn, "__qualname__", None)
        if not module or not qualname or "<locals>" in qualname or "<lambda>" in qualname:
            raise ValueError(
                f"task {self.name!r} cannot run in the process pool: its function is not importable "
                f"by module and name ({module}.{qualname}); define it at module level or give it pool='threads'"
            )
        if resolve_function(module, qualname) is not fn:
            raise ValueError(
                f"task {self.name!r} cannot run in the process pool: {module}.{qualname} does not name "
                "its function; define it at module level under its own name or give it pool='threads'"
            )
        return module, qualname

    def __reduce__(self) -> tuple[Any, ...]:
        settings = {
            "name": self.name,
            "bind": self.bind,
            "dont_retry_for": self.dont_retry_for,
            "pool": self.pool,
            "autoretry_for": self.autoretry_for,
            "retry_backoff": self.retry_backoff,
            "retry_backoff_max": self.retry_backoff_max,
            "retry_jitter": self.retry_jitter,
            "retry_kwargs": self.retry_kwargs,
            "default_retry_delay": self.default_retry_delay,
        }
        return (_rebuild_handler, (self.function_ref(), settings))


def resolve_function(module: str, qualname: str) -> Any:
    """The function `module.qualname`; a registered `Task` there stands for
    the function it wraps."""
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    run = getattr(obj, "run", None)
    if run is not None and hasattr(obj, "apply_async"):
        return run
    return obj


def _rebuild_handler(ref: tuple[str, str], settings: dict[str, Any]) -> Handler:
    return Handler(fn=resolve_function(*ref), **settings)


def _is_async(fn: Any) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    return not inspect.isroutine(fn) and inspect.iscoroutinefunction(type(fn).__call__)


# --- outcomes -----------------------------------------------------------------------

_HERE = os.path.dirname(os.path.abspath(__file__))
_INTERNAL_FILES = {
    os.path.join(_HERE, name) for name in ("worker.py", "_threads.py", "_handler.py", "_process.py", "_eager.py")
}


def _format_traceback(exc: BaseException) -> str:
    """The exception's traceback without the worker's own leading frames."""
    tb = exc.__traceback__
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) in _INTERNAL_FILES:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


def task_error(exc: BaseException, dont_retry_for: tuple[type[BaseException], ...] = ()) -> task_pb2.TaskError:
    """The TaskError a handler's exception is reported as: its class name,
    `str(exc)`, its formatted traceback, and whether it may be retried."""
    reported: BaseException = exc
    if isinstance(exc, Retry):
        if exc.exc is not None:
            reported = exc.exc
        traced = reported if reported.__traceback__ is not None else exc
        error = task_pb2.TaskError(
            type=type(reported).__name__,
            message=str(reported),
            traceback=_format_traceback(traced),
            retryable=True,
        )
        if exc.countdown is not None:
            error.retry_after.CopyFrom(_codec.to_duration(exc.countdown, "retry countdown"))
        return error
    if isinstance(exc, Reject):
        if isinstance(exc.reason, BaseException):
            reported = exc.reason
            message = str(reported)
        else:
            message = "" if exc.reason is None else str(exc.reason)
    else:
        message = str(exc)
    retryable = not (
        isinstance(exc, Reject)
        or getattr(exc, "retryable", True) is False
        or getattr(reported, "retryable", True) is False
        or (dont_retry_for and isinstance(reported, dont_retry_for))
    )
    return task_pb2.TaskError(
        type=type(reported).__name__,
        message=message,
        traceback=_format_traceback(exc),
        retryable=retryable,
    )


def error(type_name: str, message: str, retryable: bool, tb: str = "") -> task_pb2.TaskError:
    return task_pb2.TaskError(type=type_name, message=message, traceback=tb, retryable=retryable)


def outcome_of(ctx: TaskContext, **kind: Any) -> pb.TaskOutcome:
    return pb.TaskOutcome(task_id=ctx.id, lease_token=ctx.lease_token, **kind)


def prepare(handler: Handler, ctx: TaskContext) -> tuple[list[Any], dict[str, Any]] | pb.TaskOutcome:
    """The decoded arguments of the call (the context first for a bound
    task), or the failed outcome when they do not fit the function."""
    try:
        args = ctx.args
        kwargs = ctx.kwargs
    except PayloadError as exc:
        # ArgumentError, as every SDK names an argument it cannot decode
        # (the protocol conformance suite checks it).
        return outcome_of(ctx, error=error("ArgumentError", str(exc), False))
    if handler.bind:
        args.insert(0, ctx)
    if handler.signature is not None:
        try:
            handler.signature.bind(*args, **kwargs)
        except TypeError as exc:
            message = f"{handler.name}() cannot take these arguments: {exc}"
            return outcome_of(ctx, error=error("TypeError", message, False))
    return args, kwargs


def success(handler: Handler, ctx: TaskContext, value: Any) -> pb.TaskOutcome:
    try:
        payload = _codec.encode(value, f"result of {handler.name}")
    except PayloadError as exc:
        return outcome_of(ctx, error=error("SerializationError", str(exc), False))
    return outcome_of(ctx, result=payload)


def failure(handler: Handler, ctx: TaskContext, exc: BaseException) -> pb.TaskOutcome:
    """The outcome of a handler that raised `exc`, after `autoretry_for`."""
    if handler.autoretry_for and not isinstance(exc, (Retry, Reject)):
        if isinstance(exc, handler.autoretry_for):
            exc = _autoretry(handler, ctx, exc)
        else:
            exc = Reject(exc)  # Celery fails a task for any other exception
    task_err = task_error(exc, handler.dont_retry_for)
    if isinstance(exc, SoftTimeLimitExceeded) and not task_err.message:
        task_err.message = f"soft time limit ({ctx.soft_time_limit or 0.0:g}s) exceeded"
    verb = "failed (retryable)" if task_err.retryable else "failed for good"
    log.info("task %s[%s] %s: %s: %s", ctx.name, ctx.id, verb, task_err.type, task_err.message)
    return outcome_of(ctx, error=task_err)


def _autoretry(handler: Handler, ctx: TaskContext, exc: BaseException) -> BaseException:
    max_retries = handler.retry_kwargs.get("max_retries")
    if max_retries is not None and ctx.retries >= int(max_retries):
        return Reject(exc)
    retry = Retry(countdown=handler.retry_countdown(ctx.retries), exc=exc)
    retry.__traceback__ = exc.__traceback__
    return retry


def run_sync(handler: Handler, ctx: TaskContext, around: Callable[[Callable[[], Any]], Any] | None = None) -> pb.TaskOutcome:
    """Runs a sync handler here, in this thread, and returns its outcome.
    `around(call)` wraps the call itself (the process pool arms the soft
    time limit with it)."""
    prepared = prepare(handler, ctx)
    if isinstance(prepared, pb.TaskOutcome):
        return prepared
    args, kwargs = prepared
    token = _current.set(ctx)
    try:
        if around is None:
            value = handler.fn(*args, **kwargs)
        else:
            value = around(lambda: handler.fn(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - every handler failure is reported
        return failure(handler, ctx, exc)
    finally:
        _current.reset(token)
    return success(handler, ctx, value)
