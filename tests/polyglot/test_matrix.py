"""A producer in each of Rust, Python, Go and TypeScript submits `add`,
`xsum`, `lang` and a failing task to workers in each of the four (16 pairs)."""

from __future__ import annotations

import itertools
import time

import pytest

from conftest import LANGUAGES, run_producer, start_worker, stop_process


@pytest.fixture(scope="module")
def workers(programs, server):
    started = {lang: start_worker(programs, lang, server, f"lang-{lang}", f"matrix-{lang}") for lang in LANGUAGES}
    for lang in LANGUAGES:
        server.wait_for_worker(f"matrix-{lang}")
    yield started
    for process in started.values():
        stop_process(process)


@pytest.mark.parametrize("producer,worker", list(itertools.product(LANGUAGES, LANGUAGES)))
def test_producer_and_worker_agree(programs, server, workers, producer, worker):
    line = run_producer(programs, producer, server, f"lang-{worker}")
    assert line["producer"] == producer
    assert line["lang"] == worker, "the task ran on the worker of the queue it was sent to"
    assert line["add"] == 5 and isinstance(line["add"], int)
    assert line["xsum"] == 6.5
    assert line["fail"]["type"] == "ValueError"
    assert line["fail"]["message"] == f"boom from {producer}"
    assert line["fail"]["has_traceback"] is True


def test_python_worker_killed_mid_task_finishes_on_go(programs, server):
    queue = "handoff"
    python = start_worker(programs, "python", server, queue, "handoff-python")
    go = None
    try:
        server.wait_for_worker("handoff-python")
        task_id = server.cli("submit", "sleep", "--arg", "1.5", "--queue", queue).stdout.strip()
        deadline = time.monotonic() + 20
        while "handoff-python" not in server.cli("get", task_id).stdout:
            assert time.monotonic() < deadline, "the Python worker never took the task"
            time.sleep(0.02)
        python.kill()  # SIGKILL, mid-task
        python.wait()
        go = start_worker(programs, "go", server, queue, "handoff-go")
        waited = server.cli("wait", task_id, "--timeout", "30s")
        assert waited.stdout.strip() == "null"
        shown = server.cli("get", task_id).stdout
        assert "handoff-go" in shown and "attempt:   2" in shown, shown
    finally:
        stop_process(python)
        if go is not None:
            stop_process(go)
