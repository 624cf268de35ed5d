"""`conveyor-worker` and `python -m conveyor worker`, run as a user runs
them: from a directory holding a tasks module, against a real server."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import conveyor
from conftest import read_line, wait_for_state, wait_until

TASKS = '''
import time
from conveyor import Conveyor

app = Conveyor()


@app.task
def add(x, y):
    return x + y


@app.task
def slow(seconds):
    time.sleep(seconds)
    return "finished"
'''


def worker_script() -> list[str]:
    script = Path(sys.executable).parent / "conveyor-worker"
    assert script.exists(), f"no console script at {script}: pip install -e clients/python"
    return [str(script)]


@pytest.fixture
def project(tmp_path):
    (tmp_path / "cli_tasks.py").write_text(textwrap.dedent(TASKS))
    return tmp_path


def start(command, project, server, *args, env=None):
    return subprocess.Popen(
        [*command, *args, "--server", server.removeprefix("http://")],  # a scheme-less address is accepted
        cwd=project,
        env=None if env is None else {**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_banner(process) -> str:
    lines = []
    while True:
        line = read_line(process.stdout, 30)
        assert line, f"no banner; got {lines!r}, stderr: {process.stderr.read() if process.poll() is not None else ''}"
        lines.append(line)
        if line.startswith("    . cli_tasks.slow"):
            return "".join(lines)


def test_conveyor_worker_banner_logs_and_drain_on_sigterm(project, server, client, queue_name):
    process = start(worker_script(), project, server, "-A", "cli_tasks:app", "-c", "2", "-P", "process",
                    "-Q", f"{queue_name},other-{queue_name}", "-l", "info")
    try:
        banner = read_banner(process)
        assert f"queues:       {queue_name}, other-{queue_name}" in banner
        assert "pool:         process" in banner and "concurrency:  2" in banner
        assert "    . cli_tasks.add  [process]" in banner and server.removeprefix("http://") in banner
        assert client.result(client.submit("cli_tasks.add", [2, 3], queue=queue_name), timeout=30) == 5
        task_id = client.submit("cli_tasks.slow", [1.5], queue=queue_name)
        wait_for_state(client, task_id, {"RUNNING"}, timeout=10)
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
        assert client.result(task_id, timeout=1) == "finished"  # the running task finished first
        logs = process.stderr.read()
        assert "INFO/MainProcess] task cli_tasks.add[" in logs and "succeeded in" in logs
        assert "stopping: draining" in logs
    finally:
        if process.poll() is None:
            process.kill()


def test_second_signal_stops_at_once(project, server, client, queue_name):
    process = start([sys.executable, "-m", "conveyor", "worker"], project, server, "-A", "cli_tasks", "-Q", queue_name)
    try:
        assert "pool:         threads" in read_banner(process)
        task_id = client.submit("cli_tasks.slow", [30], queue=queue_name)
        wait_for_state(client, task_id, {"RUNNING"}, timeout=10)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # the first signal is being handled: draining
        stopped_at = time.monotonic()
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
        assert time.monotonic() - stopped_at < 3.0
        assert "second stop request" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()


def test_bad_app_is_a_usage_error(project, server):
    process = start(worker_script(), project, server, "-A", "no_such_module")
    assert process.wait(30) == 64
    error = process.stderr.read()
    assert "cannot import 'no_such_module'" in error and "PYTHONPATH" in error
    empty = start(worker_script(), project, server, "-A", "cli_tasks:nothing")
    assert empty.wait(30) == 64
    assert "give -A module:attribute" in empty.stderr.read()


def test_conveyor_worker_namespace(project, server, queue_name):
    namespace = f"{queue_name}-ns"
    process = start(worker_script(), project, server, "-A", "cli_tasks:app", "-Q", queue_name,
                    "--namespace", namespace, env={"CONVEYOR_NAMESPACE": "not-this-one"})
    try:
        assert f"namespace:    {namespace}" in read_banner(process)  # the flag wins over the variable
        with conveyor.Client(server, namespace=namespace) as client, conveyor.Client(server, namespace="") as default:
            assert client.result(client.submit("cli_tasks.add", [2, 3], queue=queue_name), timeout=30) == 5
            wait_until(lambda: len(client.workers()) == 1, 10, "the worker in the namespace's listing")
            assert queue_name not in [q for worker in default.workers() for q in worker.queues]
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
        assert f"namespace '{namespace}'" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
