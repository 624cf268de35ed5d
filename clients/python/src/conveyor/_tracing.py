"""OpenTelemetry tracing, through the API package only: without an OTel SDK
configured by the application every span is a no-op and nothing is sent.

Spans (messaging semantic conventions, `messaging.system = "conveyor"`):
`publish {queue}` (PRODUCER) around every submission, whose context each
TaskSpec carries in `trace_context`; `process {queue}` (CONSUMER) around each
attempt a worker runs, a child of the context the assignment carries; `wait`
(CLIENT) around waiting for a result. Every call the SDK makes while a valid
span context is current sends it as `traceparent`/`tracestate` metadata.
Always W3C Trace Context, whatever the global propagator is: the proto field
is W3C by definition."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from conveyor._version import __version__
from conveyor.v1 import task_pb2

__all__ = [
    "TRACER_NAME",
    "attached",
    "carrier",
    "current",
    "failed",
    "metadata",
    "process",
    "publish",
    "stamp",
    "waiting",
]

TRACER_NAME = "conveyor"
SYSTEM = "conveyor"
# The queue a task without one goes to (the server's default).
DEFAULT_QUEUE = "default"
# The server refuses a TraceContext whose tracestate is longer.
MAX_TRACESTATE_BYTES = 512
_HEADERS = ("traceparent", "tracestate")

_W3C = TraceContextTextMapPropagator()
# A proxy until the application sets a tracer provider, then that provider's.
_tracer = trace.get_tracer(TRACER_NAME, __version__)


def carrier(context: otel_context.Context | None = None) -> dict[str, str]:
    """`traceparent` (and `tracestate` when not empty) of the span context
    current in `context` (default: the current one); {} when it is not valid."""
    if not trace.get_current_span(context).get_span_context().is_valid:
        return {}
    headers: dict[str, str] = {}
    _W3C.inject(headers, context=context)
    return {key: value for key, value in headers.items() if value}


def metadata(base: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The call metadata `base` plus the current trace context, if valid."""
    headers = carrier()
    if not headers:
        return base
    return (*(item for item in base if item[0].lower() not in _HEADERS), *headers.items())


def stamp(spec: task_pb2.TaskSpec) -> None:
    """Gives `spec` the current trace context, unless it has one set
    explicitly or no valid span context is current."""
    if spec.HasField("trace_context"):
        return
    headers = carrier()
    if not headers:
        return
    state = headers.get("tracestate", "")
    if len(state.encode()) > MAX_TRACESTATE_BYTES:
        state = ""  # the server would refuse the task; the traceparent is what links it
    spec.trace_context.CopyFrom(task_pb2.TraceContext(traceparent=headers["traceparent"], tracestate=state))


@contextlib.contextmanager
def publish(specs: Sequence[task_pb2.TaskSpec], *, batch: bool) -> Iterator[Span]:
    """The current `publish {queue}` span of a submission of `specs` (one span
    for a batch). A batch of several queues is named `publish`, without
    `messaging.destination.name`; of several task names, without
    `conveyor.task.name`."""
    if batch:
        queues = {spec.options.queue or DEFAULT_QUEUE for spec in specs}
        names = {spec.name for spec in specs}
    else:
        queues = {specs[0].options.queue or DEFAULT_QUEUE}
        names = {specs[0].name}
    queue = next(iter(queues)) if len(queues) == 1 else None
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
    }
    if queue is not None:
        attributes["messaging.destination.name"] = queue
    if len(names) == 1:
        attributes["conveyor.task.name"] = next(iter(names))
    if batch:
        attributes["messaging.batch.message_count"] = len(specs)
    name = "publish" if queue is None else f"publish {queue}"
    with _tracer.start_as_current_span(name, kind=SpanKind.PRODUCER, attributes=attributes) as span:
        yield span


@contextlib.contextmanager
def waiting(task_id: str) -> Iterator[Span]:
    """The current `wait` span of waiting for task `task_id`."""
    attributes = {"messaging.system": SYSTEM, "messaging.message.id": task_id}
    with _tracer.start_as_current_span("wait", kind=SpanKind.CLIENT, attributes=attributes) as span:
        yield span


def _extract(context: task_pb2.TraceContext) -> otel_context.Context:
    """The context of a producer's TraceContext: a remote parent when it is a
    valid traceparent, else an empty context (so a span started in it is a
    root)."""
    empty = otel_context.Context()
    if not context.traceparent:
        return empty
    headers = {"traceparent": context.traceparent}
    if context.tracestate:
        headers["tracestate"] = context.tracestate
    return _W3C.extract(headers, context=empty)


def process(
    assignment: Any, fallback_queue: str | None
) -> contextlib.AbstractContextManager[Span]:
    """The `process {queue}` span of one attempt (made current), a child of
    the assignment's trace context. The queue is the one the assignment was
    routed to (`Assignment.queue`); a server too old to set it leaves it
    empty, and then `fallback_queue` names the span: the worker's queue when
    it consumes one, None (span `process`, no `messaging.destination.name`)
    when several."""
    queue = assignment.queue or fallback_queue
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.message.id": assignment.task_id,
        "conveyor.task.name": assignment.name,
        "conveyor.task.attempt": int(assignment.attempt),
    }
    if queue is not None:
        attributes["messaging.destination.name"] = queue
    return _tracer.start_as_current_span(
        "process" if queue is None else f"process {queue}",
        context=_extract(assignment.trace_context),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    )


def failed(span: Span, error: task_pb2.TaskError, exc: BaseException | None = None) -> None:
    """Marks the span of an attempt that ended with `error`: status ERROR and
    the exception recorded (`exc`, what the handler raised, when it was
    raised in this process; else an exception event made of `error`)."""
    if not span.is_recording():
        return
    if exc is not None:
        span.record_exception(exc)
    else:
        attributes = {"exception.type": error.type, "exception.message": error.message}
        if error.traceback:
            attributes["exception.stacktrace"] = error.traceback
        span.add_event("exception", attributes)
    span.set_status(Status(StatusCode.ERROR, f"{error.type}: {error.message}"))


def current() -> otel_context.Context:
    """The current OpenTelemetry context, to make current in another thread
    with `attached`."""
    return otel_context.get_current()


@contextlib.contextmanager
def attached(context: otel_context.Context | dict[str, str] | None) -> Iterator[None]:
    """Makes `context` current: an OpenTelemetry context (from `current` in
    another thread) or W3C headers (from `carrier` in another process)."""
    if not context:
        yield
        return
    if not isinstance(context, otel_context.Context):  # a Context is a dict too
        context = _W3C.extract(context, context=otel_context.Context())
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)
