"""Workflows across languages: a canvas submitted from Python whose nodes run
on the example workers of Rust, Python, Go and TypeScript, each on its own
queue; results flow between languages as JSON, and the node reports say
which worker ran each task."""

from __future__ import annotations

import pytest

import conveyor
from conveyor import TaskState, chord, group, signature
from conveyor.v1 import task_pb2

from conftest import LANGUAGES, start_worker, stop_process


def queue(lang: str) -> str:
    return f"wf-{lang}"


def worker_id(lang: str) -> str:
    return f"wf-worker-{lang}"


@pytest.fixture(scope="module")
def workers(programs, server):
    started = {lang: start_worker(programs, lang, server, queue(lang), worker_id(lang)) for lang in LANGUAGES}
    for lang in LANGUAGES:
        server.wait_for_worker(worker_id(lang))
    yield started
    for process in started.values():
        stop_process(process)


@pytest.fixture
def app(server):
    with conveyor.Conveyor(server.url) as application:
        yield application


def task(app: conveyor.Conveyor, name: str, lang: str, *args) -> conveyor.Signature:
    """Task `name` (bare, as every example worker registers it) on `lang`'s queue."""
    return signature(name, args=list(args), options={"queue": queue(lang)}, app=app)


def ran_on(node) -> str:
    """The language of the worker that ran a node."""
    for lang in LANGUAGES:
        if node.task.worker_id == worker_id(lang):
            return lang
    raise AssertionError(f"node {node.index} ({node.task.name}) ran on {node.task.worker_id!r}")


def test_chain_through_four_languages(app, workers):
    # add(1, 2) in Python -> add(3, i) x10 in Go -> xsum in TypeScript -> add(75, 100) in Rust.
    flow = (
        task(app, "add", "python", 1, 2)
        | group(task(app, "add", "go", i) for i in range(10))
        | task(app, "xsum", "typescript")
        | task(app, "add", "rust", 100)
    )
    result = flow.delay()
    value = result.get(timeout=60)
    assert value == 175 and isinstance(value, int)
    workflow = result.workflow()
    assert [TaskState.from_proto(n.task.state) for n in workflow.nodes] == [TaskState.SUCCEEDED] * 13
    assert [ran_on(n) for n in workflow.nodes] == ["python"] + ["go"] * 10 + ["typescript", "rust"]
    assert [conveyor.decode(n.task.result) for n in workflow.nodes[1:11]] == list(range(3, 13))
    assert conveyor.decode(workflow.nodes[11].task.result) == 75
    assert all(n.task.workflow_id == result.id for n in workflow.nodes)


def test_chord_header_spans_the_four_languages(app, workers):
    # The header's results come back in declaration order whoever ran them.
    names = chord([task(app, "lang", lang) for lang in LANGUAGES], task(app, "add", "python", [])).delay()
    assert names.get(timeout=60) == LANGUAGES
    numbers = chord(
        [task(app, "add", lang, i, 10 * i) for i, lang in enumerate(LANGUAGES)], task(app, "xsum", "go")
    ).delay()
    assert numbers.get(timeout=60) == sum(11 * i for i in range(4))
    workflow = numbers.workflow()
    assert [ran_on(n) for n in workflow.nodes] == [*LANGUAGES, "go"]
    # A group across languages: its list in declaration order.
    grouped = group(task(app, "lang", lang) for lang in reversed(LANGUAGES)).delay()
    assert grouped.get(timeout=60) == list(reversed(LANGUAGES))


def test_failure_in_go_fails_rust_and_calls_a_typescript_errback(app, workers):
    # fail is immutable (.si): it ignores add's result and fails with its own message.
    failing = task(app, "fail", "go", "broken in go").set(immutable=True)
    flow = task(app, "add", "python", 1, 1) | failing | task(app, "add", "rust", 1)
    flow.link_error(task(app, "lang", "typescript"))
    result = flow.delay()
    with pytest.raises(conveyor.TaskFailed) as caught:
        result.get(timeout=60)
    workflow = result.workflow("full")
    python_node, go_node, rust_node, errback = workflow.nodes
    assert (caught.value.type, caught.value.message) == ("ValueError", "broken in go")
    assert caught.value.task_id == go_node.task.id == workflow.failed_task_id and caught.value.node == 1
    assert ran_on(go_node) == "go" and TaskState.from_proto(go_node.task.state) == TaskState.FAILED
    # The Rust node never ran: its error names the Go node.
    assert TaskState.from_proto(rust_node.task.state) == TaskState.FAILED and not rust_node.task.worker_id
    assert rust_node.task.error.reason == task_pb2.FAILURE_REASON_DEPENDENCY_FAILED
    assert rust_node.task.error.cause_task_id == go_node.task.id
    # The errback ran once, in TypeScript, given the Go task's id and error first.
    assert ran_on(errback) == "typescript" and errback.task.attempt == 1
    assert conveyor.decode(errback.task.result) == "typescript"
    failed_id, error = (conveyor.decode(p) for p in errback.task.args[:2])
    assert failed_id == go_node.task.id and (error["type"], error["message"]) == ("ValueError", "broken in go")
    assert ran_on(python_node) == "python"
