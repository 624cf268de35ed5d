"""One trace across languages (issue 12, tracing contract): a traced producer
(Python or TypeScript, tests/polyglot/otel) submits a task inside its span
"checkout" and waits for it; a traced worker (Go, tests/polyglot/otel/goworker,
or Rust, examples/traced_worker) runs it; `conveyor dev --otlp-endpoint` adds
its server and deliver spans. Every process exports over OTLP/gRPC to a sink
in this process (otel/otlp_sink.py), and the tests check that the spans form
one trace with the contract's parent relations:

    checkout ─┬─ publish <queue> ─┬─ conveyor.v1.SubmissionService/SubmitTask   (server)
              │                   └─ deliver <queue>                            (server)
              │                        └─ process <queue>                       (worker)
              └─ wait ─── conveyor.v1.ResultsService/WaitTask                   (server)
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
import uuid

import pytest

from conftest import ROOT, Server, _conveyor_bin, stop_process

OTEL = pathlib.Path(__file__).resolve().parent / "otel"
sys.path.insert(0, str(OTEL))

from otlp_sink import Span, SpanSink  # noqa: E402 - found through the path above

SERVER_SERVICE = "conveyor"
SUBMIT_RPC = "conveyor.v1.SubmissionService/SubmitTask"
WAIT_RPC = "conveyor.v1.ResultsService/WaitTask"
SPAN_TIMEOUT = 30.0
# (producer, worker) pairs: Python → Go, TypeScript → Rust.
PAIRS = [("python", "go"), ("typescript", "rust")]


def producer_service(language: str) -> str:
    return f"polyglot-{language}-producer"


def worker_service(language: str) -> str:
    return f"polyglot-{language}-worker"


@pytest.fixture(scope="module")
def sink():
    running = SpanSink.start()
    yield running
    running.stop()


def otel_env(sink: SpanSink, service: str | None, **extra: str) -> dict:
    """This process's environment without its OTEL_* variables, exporting to
    sink every 100 ms, as service (None: the program's own default)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env.update(OTEL_EXPORTER_OTLP_ENDPOINT=sink.endpoint, OTEL_BSP_SCHEDULE_DELAY="100", RUST_LOG="warn")
    if service is not None:
        env["OTEL_SERVICE_NAME"] = service
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def traced_server(sink):
    """`conveyor dev` exporting its spans to the sink, under its default
    service name (no OTEL_SERVICE_NAME)."""
    usage = subprocess.run([str(_conveyor_bin()), "dev", "--help"], capture_output=True, text=True, timeout=30).stdout
    if "--otlp-endpoint" not in usage:
        pytest.fail(f"{_conveyor_bin()} dev has no --otlp-endpoint option: the server side of the tracing "
                    "contract (OTLP export, server and deliver spans) is missing")
    running = Server("--otlp-endpoint", sink.endpoint, env=otel_env(sink, None))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def plain_server():
    """`conveyor dev` as it is today, exporting nothing (it passes a task's
    trace context on to the worker untouched)."""
    running = Server(env={key: value for key, value in os.environ.items() if not key.startswith("OTEL_")})
    yield running
    running.stop()


@pytest.fixture(scope="module")
def otel_programs(programs, tmp_path_factory) -> dict:
    """Commands of the traced producers and workers. `programs` builds the
    TypeScript SDK (dist) that the TypeScript producer imports."""
    out = tmp_path_factory.mktemp("otel-bin")
    subprocess.run(["go", "build", "-o", str(out / "goworker"), "."], cwd=OTEL / "goworker", check=True)
    assert (OTEL / "ts/node_modules/@opentelemetry/sdk-trace-node").is_dir(), \
        "tests/polyglot/otel/ts has no node_modules: run `npm ci` there (scripts/test does)"
    python = os.environ.get("CONVEYOR_PYTHON", sys.executable)
    return {
        "producer": {
            "python": [python, str(OTEL / "producer.py")],
            "typescript": ["node", str(OTEL / "ts/producer.mjs")],
        },
        "worker": {
            "go": [str(out / "goworker")],
            "rust": [str(_conveyor_bin().parent / "examples/traced_worker")],
        },
    }


def start_traced_worker(otel_programs: dict, language: str, server: Server, sink: SpanSink, queue: str) -> subprocess.Popen:
    command = otel_programs["worker"][language]
    assert pathlib.Path(command[0]).exists(), f"{command[0]} is missing: cargo build --workspace --examples builds it"
    env = otel_env(sink, worker_service(language), CONVEYOR_ADDR=server.url, CONVEYOR_QUEUE=queue,
                   CONVEYOR_WORKER_ID=f"traced-{language}-{queue}", CONVEYOR_CONCURRENCY="2")
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while queue not in server.workers():
        assert process.poll() is None, f"the {language} traced worker exited with {process.returncode}"
        assert time.monotonic() < deadline, f"no worker of queue {queue} connected:\n{server.workers()}"
        time.sleep(0.05)
    return process


@pytest.fixture
def worker_factory(otel_programs, sink):
    started = []

    def start(language: str, server: Server, queue: str) -> subprocess.Popen:
        process = start_traced_worker(otel_programs, language, server, sink, queue)
        started.append(process)
        return process

    yield start
    for process in started:
        stop_process(process)


def run_traced_producer(otel_programs: dict, language: str, server: Server, sink: SpanSink, queue: str,
                        task: str = "otel.echo") -> dict:
    env = otel_env(sink, producer_service(language), CONVEYOR_ADDR=server.url, CONVEYOR_QUEUE=queue,
                   CONVEYOR_TASK=task)
    done = subprocess.run(otel_programs["producer"][language], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=90)
    assert done.returncode == 0, f"the {language} traced producer failed:\n{done.stderr}"
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    line = json.loads(lines[-1])
    assert len(line["trace_id"]) == 32 and line["trace_id"] != "0" * 32, line
    return line


def unique_queue(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def listing(spans: list[Span]) -> str:
    return "\n  ".join(str(span) for span in spans) or "(none)"


def wait_for_trace(sink: SpanSink, trace_id: str, wanted: dict[tuple[str, str], int]) -> list[Span]:
    """The spans of trace trace_id once it has, for each (service, name) of
    wanted, at least that many spans."""

    def complete(spans: list[Span]):
        mine = [span for span in spans if span.trace_id == trace_id]
        for (service, name), count in wanted.items():
            if sum(1 for span in mine if span.service == service and span.name == name) < count:
                return None
        return mine

    missing = ", ".join(f"{count}×{name!r} of {service}" for (service, name), count in wanted.items())
    return sink.wait_for(complete, timeout=SPAN_TIMEOUT, what=f"trace {trace_id} to hold {missing}")


def only(spans: list[Span], service: str, name: str) -> Span:
    found = [span for span in spans if span.service == service and span.name == name]
    assert len(found) == 1, f"{len(found)} spans {name!r} of {service} in the trace:\n  {listing(spans)}"
    return found[0]


def check_child(child: Span, parent: Span, trace: list[Span]) -> None:
    assert child.parent_span_id == parent.span_id, (
        f"{child.name!r} ({child.service}) should be a child of {parent.name!r} ({parent.service}):\n  {listing(trace)}")


# --- what works without the server's spans ---------------------------------------------------


@pytest.mark.parametrize("producer", ["python", "typescript"])
def test_traced_programs_export_their_spans(otel_programs, plain_server, sink, worker_factory, producer):
    """The sink receives the producer's "checkout" span and the Go worker's
    process span, each under its service name, from today's server."""
    queue = unique_queue(f"otel-export-{producer}")
    worker_factory("go", plain_server, queue)
    line = run_traced_producer(otel_programs, producer, plain_server, sink, queue)
    assert line["result"] == "ping"
    checkout = sink.wait_for(
        lambda spans: [s for s in spans if s.trace_id == line["trace_id"] and s.name == "checkout"],
        timeout=SPAN_TIMEOUT, what=f"the {producer} producer's checkout span")[0]
    assert checkout.service == producer_service(producer) and checkout.parent_span_id == ""
    assert checkout.scope == "polyglot.producer"
    process = sink.wait_for(
        lambda spans: [s for s in spans if s.attributes.get("messaging.message.id") == line["task_id"] and s.kind == "CONSUMER"],
        timeout=SPAN_TIMEOUT, what=f"the Go worker's span of task {line['task_id']}")[0]
    assert process.name == f"process {queue}" and process.kind == "CONSUMER", process
    assert process.service == worker_service("go") and process.scope == "conveyor"
    assert process.attributes["messaging.system"] == "conveyor"
    assert process.attributes["conveyor.task.name"] == "otel.echo"
    assert process.attributes["conveyor.task.attempt"] == 1
    assert process.status != "ERROR"


# --- the whole trace (needs the server's OTLP export and the Rust traced worker) -------------


@pytest.mark.parametrize("producer,worker", PAIRS, ids=[f"{p}-{w}" for p, w in PAIRS])
def test_one_trace_from_producer_through_server_to_worker(otel_programs, traced_server, sink, worker_factory,
                                                         producer, worker):
    queue = unique_queue(f"otel-{producer}-{worker}")
    worker_factory(worker, traced_server, queue)
    line = run_traced_producer(otel_programs, producer, traced_server, sink, queue)
    produced, worked = producer_service(producer), worker_service(worker)
    trace = wait_for_trace(sink, line["trace_id"], {
        (produced, "checkout"): 1,
        (produced, f"publish {queue}"): 1,
        (produced, "wait"): 1,
        (SERVER_SERVICE, SUBMIT_RPC): 1,
        (SERVER_SERVICE, f"deliver {queue}"): 1,
        (SERVER_SERVICE, WAIT_RPC): 1,
        (worked, f"process {queue}"): 1,
    })

    checkout = only(trace, produced, "checkout")
    publish = only(trace, produced, f"publish {queue}")
    submit = only(trace, SERVER_SERVICE, SUBMIT_RPC)
    deliver = only(trace, SERVER_SERVICE, f"deliver {queue}")
    process = only(trace, worked, f"process {queue}")
    waits = [span for span in trace if span.service == produced and span.name == "wait"]
    wait_rpcs = [span for span in trace if span.service == SERVER_SERVICE and span.name == WAIT_RPC]

    assert checkout.parent_span_id == "", checkout
    check_child(publish, checkout, trace)
    check_child(submit, publish, trace)
    check_child(deliver, publish, trace)
    check_child(process, deliver, trace)
    top_waits = [span for span in waits if span.parent_span_id == checkout.span_id]
    assert top_waits, f"no wait span is a child of checkout:\n  {listing(trace)}"
    wait_ids = {span.span_id for span in waits}
    for rpc in wait_rpcs:
        assert rpc.parent_span_id in wait_ids, f"a WaitTask server span is no child of a wait span:\n  {listing(trace)}"

    assert (publish.kind, process.kind, submit.kind) == ("PRODUCER", "CONSUMER", "SERVER"), listing(trace)
    assert all(span.kind == "CLIENT" for span in waits), listing(waits)
    assert all(span.kind == "SERVER" for span in wait_rpcs), listing(wait_rpcs)
    assert publish.attributes.get("messaging.message.id") == line["task_id"], publish.attributes
    assert publish.attributes.get("messaging.destination.name") == queue, publish.attributes
    assert process.attributes.get("messaging.message.id") == line["task_id"], process.attributes
    assert process.attributes.get("conveyor.task.attempt") == 1, process.attributes
    assert any(span.attributes.get("messaging.message.id") == line["task_id"] for span in top_waits), listing(waits)
    assert process.status != "ERROR", process


@pytest.mark.parametrize("producer,worker", PAIRS, ids=[f"{p}-{w}" for p, w in PAIRS])
def test_retried_task_has_two_process_spans_in_one_trace(otel_programs, traced_server, sink, worker_factory,
                                                         producer, worker):
    queue = unique_queue(f"otel-flaky-{producer}-{worker}")
    worker_factory(worker, traced_server, queue)
    line = run_traced_producer(otel_programs, producer, traced_server, sink, queue, task="otel.flaky")
    worked = worker_service(worker)
    trace = wait_for_trace(sink, line["trace_id"], {
        (worked, f"process {queue}"): 2,
        (SERVER_SERVICE, f"deliver {queue}"): 2,
    })
    processes = [span for span in trace if span.service == worked and span.name == f"process {queue}"]
    assert len(processes) == 2, f"one process span per attempt, two attempts:\n  {listing(trace)}"
    by_attempt = {span.attributes.get("conveyor.task.attempt"): span for span in processes}
    assert set(by_attempt) == {1, 2}, listing(processes)
    first, second = by_attempt[1], by_attempt[2]
    assert first.status == "ERROR" and "exception" in first.events, f"the failed attempt's span: {first} {first.events}"
    assert second.status != "ERROR", second
    delivers = {span.span_id: span for span in trace if span.service == SERVER_SERVICE and span.name == f"deliver {queue}"}
    assert first.parent_span_id in delivers and second.parent_span_id in delivers, listing(trace)
    assert first.parent_span_id != second.parent_span_id, f"each attempt is a delivery of its own:\n  {listing(trace)}"
    for span in processes:
        assert span.attributes.get("messaging.message.id") == line["task_id"], span.attributes


def test_a_schedule_run_starts_a_trace_linked_to_the_schedule(otel_programs, traced_server, sink, worker_factory):
    """A run of a schedule is the root of a trace of its own ("schedule <id>",
    from the scheduler), linked to the trace the schedule was created in; the
    run's task continues it through the server to the worker."""
    import grpc
    from conveyor.v1 import scheduling_service_pb2 as scheduling, scheduling_service_pb2_grpc as scheduling_grpc
    from conveyor.v1 import task_pb2
    from google.protobuf import duration_pb2

    queue = unique_queue("otel-schedule")
    worker_factory("go", traced_server, queue)
    creator_trace, creator_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    schedule_id = f"tick-{queue}"
    with grpc.insecure_channel(traced_server.addr) as channel:
        stub = scheduling_grpc.SchedulingServiceStub(channel)
        template = task_pb2.TaskSpec(
            name="otel.echo",
            args=[task_pb2.Payload(data=b'"tick"', content_type="application/json")],
            options=task_pb2.TaskOptions(queue=queue),
            trace_context=task_pb2.TraceContext(traceparent=f"00-{creator_trace}-{creator_span}-01"),
        )
        stub.CreateSchedule(scheduling.CreateScheduleRequest(schedule=scheduling.Schedule(
            id=schedule_id, task=template, interval=scheduling.IntervalRule(every=duration_pb2.Duration(seconds=3600)))))
        run = stub.TriggerSchedule(scheduling.TriggerScheduleRequest(id=schedule_id))
    task_id = run.run.task_id
    roots = sink.wait_for(
        lambda spans: [s for s in spans if s.name == f"schedule {schedule_id}" and s.service == SERVER_SERVICE],
        timeout=SPAN_TIMEOUT, what=f"the schedule run's span of {schedule_id}")
    root = roots[0]
    assert root.parent_span_id == "" and root.trace_id != creator_trace, root
    assert root.links == ((creator_trace, creator_span),), root.links
    spans = wait_for_trace(sink, root.trace_id, {
        (SERVER_SERVICE, SUBMIT_RPC): 1,
        (SERVER_SERVICE, f"deliver {queue}"): 1,
        (worker_service("go"), f"process {queue}"): 1,
    })
    submit = only(spans, SERVER_SERVICE, SUBMIT_RPC)
    deliver = only(spans, SERVER_SERVICE, f"deliver {queue}")
    process = only(spans, worker_service("go"), f"process {queue}")
    assert submit.parent_span_id == root.span_id, listing(spans)
    assert deliver.parent_span_id == root.span_id, listing(spans)
    assert process.parent_span_id == deliver.span_id, listing(spans)
    assert process.attributes.get("messaging.message.id") == task_id
