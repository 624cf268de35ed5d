"""OpenTelemetry tracing against a real `conveyor dev`: the publish, process
and wait spans, the trace context stored with the task and sent as gRPC
metadata, and nothing at all without a tracer provider. Spans are recorded
with the SDK's in-memory exporter (the `test` extra installs the SDK)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import conveyor
from conveyor import _tracing
from conveyor.aio import AsyncClient
from conveyor.v1 import dispatch_service_pb2 as pb
from conveyor.v1 import task_pb2
from conveyor.worker import Handler

from conftest import CLIENT_DIR, wait_until

_exporter = InMemorySpanExporter()
_provider: TracerProvider | None = None


def _install_provider() -> None:
    """The process's tracer provider is set once; later tests reuse it."""
    global _provider
    if _provider is None:
        _provider = TracerProvider()
        _provider.add_span_processor(SimpleSpanProcessor(_exporter))
        trace.set_tracer_provider(_provider)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    _install_provider()
    _exporter.clear()
    yield _exporter
    _exporter.clear()


@pytest.fixture
def tracer() -> trace.Tracer:
    _install_provider()
    return trace.get_tracer("conveyor-tests")


def finished(
    exporter: InMemorySpanExporter,
    name: str,
    count: int = 1,
    timeout: float = 5.0,
    where: Callable[[ReadableSpan], bool] = lambda span: True,
) -> list[ReadableSpan]:
    """The first `count` ended spans called `name` (for which `where` is
    true), waiting for them."""
    found: list[ReadableSpan] = []

    def ready() -> bool:
        found[:] = [span for span in exporter.get_finished_spans() if span.name == name and where(span)]
        return len(found) >= count

    wait_until(ready, timeout, f"{count} span(s) {name!r}")
    return found[:count]


def traceparent_of(span: ReadableSpan) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


class MetadataRecorder(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Keeps the method and metadata of every call made through its channel."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()

    def _record(self, details: grpc.ClientCallDetails) -> None:
        with self._lock:
            self.calls.append((details.method, dict(details.metadata or ())))

    def intercept_unary_unary(self, continuation, client_call_details, request):
        self._record(client_call_details)
        return continuation(client_call_details, request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        self._record(client_call_details)
        return continuation(client_call_details, request)

    def of(self, method: str) -> list[dict[str, str]]:
        return [metadata for name, metadata in self.calls if name.endswith("/" + method)]


@pytest.fixture
def recorded(server: str) -> Iterator[tuple[conveyor.Client, MetadataRecorder]]:
    """A Client whose calls' metadata is recorded."""
    recorder = MetadataRecorder()
    channel = grpc.intercept_channel(grpc.insecure_channel(server.removeprefix("http://")), recorder)
    with conveyor.Client(channel=channel) as c:
        yield c, recorder
    channel.close()


def add(a, b):
    return a + b


def test_publish_span_is_the_callers_child_and_travels_with_the_task(spans, tracer, recorded, queue_name):
    client, recorder = recorded
    with tracer.start_as_current_span("caller") as caller:
        task_id = client.submit("add", [1, 2], queue=queue_name)
    (publish,) = finished(spans, f"publish {queue_name}")
    assert publish.kind == SpanKind.PRODUCER
    assert publish.parent is not None and publish.parent.span_id == caller.get_span_context().span_id
    assert publish.context.trace_id == caller.get_span_context().trace_id
    assert publish.instrumentation_scope.name == "conveyor"
    assert publish.instrumentation_scope.version == conveyor.__version__
    assert dict(publish.attributes) == {
        "messaging.system": "conveyor",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": queue_name,
        "conveyor.task.name": "add",
        "messaging.message.id": task_id,
    }
    # The stored task carries the publish span's context...
    stored = client.get(task_id).trace_context
    assert stored.traceparent == traceparent_of(publish)
    # ...and so did the SubmitTask call's metadata.
    (submitted,) = recorder.of("SubmitTask")
    assert submitted["traceparent"] == traceparent_of(publish)
    # Calls outside any span send no trace context.
    assert "traceparent" not in recorder.of("GetTask")[-1]


def test_a_trace_context_set_by_the_caller_is_kept(spans, tracer, client, queue_name):
    mine = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    spec = conveyor.build_spec("add", [1, 2], queue=queue_name)
    spec.trace_context.CopyFrom(task_pb2.TraceContext(traceparent=mine, tracestate="k=v"))
    with tracer.start_as_current_span("caller"):
        task_id = client.submit_spec(spec).task_id
    stored = client.get(task_id).trace_context
    assert (stored.traceparent, stored.tracestate) == (mine, "k=v")
    finished(spans, f"publish {queue_name}")  # the submission is traced all the same


def test_worker_process_span_continues_the_trace_and_wait_is_traced(
    spans, tracer, recorded, start_worker, queue_name
):
    client, recorder = recorded
    seen = {}

    def traced_add(a, b):
        seen["current"] = trace.get_current_span().get_span_context()
        with trace.get_tracer("handler").start_as_current_span("inside") as inside:
            seen["inside"] = inside.get_span_context()
        return a + b

    start_worker({"add": traced_add}, queue_name)
    with tracer.start_as_current_span("caller") as caller:
        task_id = client.submit("add", [2, 3], queue=queue_name)
        assert client.result(task_id, timeout=10) == 5
    trace_id = caller.get_span_context().trace_id

    (process,) = finished(spans, f"process {queue_name}")
    assert process.kind == SpanKind.CONSUMER
    assert process.context.trace_id == trace_id
    # The parent is remote: the server's deliver span, or the publish span.
    assert process.parent is not None and process.parent.is_remote
    assert process.parent.trace_id == trace_id
    assert process.status.status_code == StatusCode.UNSET
    assert dict(process.attributes) == {
        "messaging.system": "conveyor",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": queue_name,
        "messaging.message.id": task_id,
        "conveyor.task.name": "add",
        "conveyor.task.attempt": 1,
    }
    # The process span is current in the handler (a pool thread): its spans nest.
    assert seen["current"].span_id == process.context.span_id
    (inside,) = finished(spans, "inside")
    assert inside.parent is not None and inside.parent.span_id == process.context.span_id

    (wait,) = finished(spans, "wait")
    assert wait.kind == SpanKind.CLIENT
    assert wait.parent is not None and wait.parent.span_id == caller.get_span_context().span_id
    assert dict(wait.attributes) == {"messaging.system": "conveyor", "messaging.message.id": task_id}
    assert all(call["traceparent"] == traceparent_of(wait) for call in recorder.of("WaitTask"))


def test_a_failed_then_retried_task_has_two_process_spans_the_first_in_error(
    spans, tracer, client, start_worker, queue_name
):
    def flaky(ctx):
        if ctx.attempt == 1:
            raise ValueError("first attempt fails")
        return ctx.attempt

    start_worker({"flaky": Handler("flaky", flaky, bind=True)}, queue_name)
    policy = {"max_retries": 2, "backoff_base": 0.01, "backoff_max": 0.01}
    with tracer.start_as_current_span("caller") as caller:
        task_id = client.submit("flaky", queue=queue_name, retry_policy=policy)
    assert client.result(task_id, timeout=10) == 2

    first, second = sorted(
        finished(spans, f"process {queue_name}", count=2),
        key=lambda span: span.attributes["conveyor.task.attempt"],
    )
    trace_id = caller.get_span_context().trace_id
    assert first.context.trace_id == second.context.trace_id == trace_id
    assert [first.attributes["conveyor.task.attempt"], second.attributes["conveyor.task.attempt"]] == [1, 2]
    assert first.status.status_code == StatusCode.ERROR
    assert "ValueError: first attempt fails" in (first.status.description or "")
    (event,) = [event for event in first.events if event.name == "exception"]
    assert event.attributes["exception.message"] == "first attempt fails"
    assert "ValueError" in event.attributes["exception.type"]
    assert second.status.status_code == StatusCode.UNSET
    assert not [event for event in second.events if event.name == "exception"]


def test_a_worker_of_two_queues_names_the_span_after_the_tasks_queue(
    spans, tracer, client, start_worker, queue_name
):
    # Assignment.queue says which of the worker's queues a task came from.
    first, second = f"{queue_name}-a", f"{queue_name}-b"
    start_worker({"add": add}, [first, second])
    with tracer.start_as_current_span("caller") as caller:
        task_id = client.submit("add", [1, 2], queue=second)
    assert client.result(task_id, timeout=10) == 3

    (process,) = finished(spans, f"process {second}")
    assert process.context.trace_id == caller.get_span_context().trace_id
    assert process.attributes["messaging.destination.name"] == second
    assert process.attributes["messaging.message.id"] == task_id
    assert not [span for span in spans.get_finished_spans() if span.name in ("process", f"process {first}")]


def test_an_assignment_without_a_queue_falls_back_to_the_workers_queue(spans):
    # A server older than Assignment.queue leaves it empty: a worker of one
    # queue names the span after it; a worker of several cannot name it.
    assignment = pb.Assignment(task_id="t-1", name="add", attempt=1)
    with _tracing.process(assignment, "only"):
        pass
    with _tracing.process(assignment, None):
        pass
    assignment.queue = "routed"
    with _tracing.process(assignment, "only"):
        pass
    named, unnamed, routed = spans.get_finished_spans()
    assert (named.name, named.attributes["messaging.destination.name"]) == ("process only", "only")
    assert unnamed.name == "process" and "messaging.destination.name" not in unnamed.attributes
    assert (routed.name, routed.attributes["messaging.destination.name"]) == ("process routed", "routed")


def test_app_delay_apply_async_send_many_and_get(spans, tracer, server, start_worker, queue_name):
    app = conveyor.Conveyor(server)
    try:

        @app.task(name="traced.add", queue=queue_name)
        def traced_add(a, b):
            return a + b

        start_worker(app, queue_name)
        with tracer.start_as_current_span("caller") as caller:
            delayed = traced_add.delay(1, 1)
            applied = traced_add.apply_async((2, 2), countdown=0)
            many = app.send_many([traced_add.s(i, 10) for i in range(3)])
            assert delayed.get(timeout=10) == 2 and applied.get(timeout=10) == 4
            assert [result.get(timeout=10) for result in many] == [10, 11, 12]
        trace_id = caller.get_span_context().trace_id

        publishes = finished(spans, f"publish {queue_name}", count=3)
        assert all(span.context.trace_id == trace_id for span in publishes)
        (batch,) = [span for span in publishes if "messaging.batch.message_count" in span.attributes]
        assert batch.attributes["messaging.batch.message_count"] == 3
        assert "messaging.message.id" not in batch.attributes
        singles = {span.attributes["messaging.message.id"] for span in publishes if span is not batch}
        assert singles == {delayed.id, applied.id}
        # Every task of the batch carries the batch span's context.
        for result in many:
            assert app.client.get(result.id).trace_context.traceparent == traceparent_of(batch)
        processes = finished(spans, f"process {queue_name}", count=5)
        assert {span.context.trace_id for span in processes} == {trace_id}
        waits = finished(spans, "wait", count=5)
        assert {span.attributes["messaging.message.id"] for span in waits} == {r.id for r in [delayed, applied, *many]}
    finally:
        app.close()


def test_asyncio_client_and_async_handler(spans, tracer, server, start_worker, queue_name):
    seen = {}

    async def async_add(a, b):
        await asyncio.sleep(0)
        seen[conveyor.current_task().id] = trace.get_current_span().get_span_context()
        return a + b

    start_worker({"add": async_add}, queue_name)

    async def scenario():
        async with AsyncClient(server) as client:
            with tracer.start_as_current_span("caller") as caller:
                task_id = await client.submit("add", [3, 4], queue=queue_name)
                assert await client.result(task_id, timeout=10) == 7
                ids = await client.submit_many([("add", [1, 1], None, {"queue": queue_name})])
            stored = (await client.get(task_id)).trace_context.traceparent
            batch_stored = (await client.get(ids[0])).trace_context.traceparent
            return caller, task_id, stored, batch_stored

    caller, task_id, stored, batch_stored = asyncio.run(scenario())
    trace_id = caller.get_span_context().trace_id
    single, batch = finished(spans, f"publish {queue_name}", count=2)
    assert single.parent.span_id == caller.get_span_context().span_id
    assert stored == traceparent_of(single) and batch_stored == traceparent_of(batch)
    assert batch.attributes["messaging.batch.message_count"] == 1
    (wait,) = finished(spans, "wait")
    assert wait.parent.span_id == caller.get_span_context().span_id
    assert wait.attributes["messaging.message.id"] == task_id
    (process,) = finished(spans, f"process {queue_name}", where=lambda s: s.attributes["messaging.message.id"] == task_id)
    assert process.context.trace_id == trace_id
    assert seen[task_id].span_id == process.context.span_id  # current in the async handler


def test_process_pool_handler_runs_in_the_process_span(spans, tracer, client, start_worker, queue_name):
    from tracing_tasks import trace_ids

    start_worker({"trace_ids": trace_ids}, queue_name, pool="process", concurrency=1)
    with tracer.start_as_current_span("caller") as caller:
        task_id = client.submit("trace_ids", queue=queue_name)
    seen = client.result(task_id, timeout=30)
    (process,) = finished(spans, f"process {queue_name}")
    assert process.context.trace_id == caller.get_span_context().trace_id
    # The child process has no tracer provider, but the process span's
    # context is current there, so its own spans would nest under it.
    assert seen == {"trace_id": f"{process.context.trace_id:032x}", "span_id": f"{process.context.span_id:016x}"}


def test_no_valid_span_context_sets_nothing(spans, client, queue_name):
    # No span is current: nothing to inject, whatever the provider.
    spec = conveyor.build_spec("add", [1, 2], queue=queue_name)
    _tracing.stamp(spec)
    assert not spec.HasField("trace_context")
    assert _tracing.metadata((("authorization", "Bearer x"),)) == (("authorization", "Bearer x"),)
    assert _tracing.carrier() == {}


def test_without_a_tracer_provider_no_trace_context_is_sent(server, queue_name):
    # A fresh interpreter, where no tracer provider was ever set: the API
    # is a no-op, so the task and the calls carry no trace context.
    script = textwrap.dedent(
        f"""
        import grpc, conveyor
        from opentelemetry import trace

        seen = []

        class Recorder(grpc.UnaryUnaryClientInterceptor):
            def intercept_unary_unary(self, continuation, details, request):
                seen.append(dict(details.metadata or ()))
                return continuation(details, request)

        channel = grpc.intercept_channel(grpc.insecure_channel({server.removeprefix("http://")!r}), Recorder())
        client = conveyor.Client(channel=channel)
        with trace.get_tracer("caller").start_as_current_span("caller"):
            task_id = client.submit("add", [1, 2], queue={queue_name!r})
            ids = client.submit_many([("add", [1, 1], None, {{"queue": {queue_name!r}}})])
        for task in (client.get(task_id), client.get(ids[0])):
            assert not task.HasField("trace_context"), task.trace_context
        assert seen and not any("traceparent" in metadata for metadata in seen), seen
        print("ok")
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=CLIENT_DIR)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr
