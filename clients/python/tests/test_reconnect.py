"""A worker outlives its server: the dispatcher's Drain on shutdown, then
reconnection (with backoff) to a new server on the same address."""

import logging
import subprocess
import threading

import pytest
from conftest import STARTUP_TIMEOUT, ThreadWorker, conveyor_bin, read_line, wait_until

import conveyor


def start_server(listen: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [conveyor_bin(), "dev", "--listen", listen]
        + ["--heartbeat-interval", "200ms", "--lease-ttl", "1s", "--grace", "5s", "--track-started"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = read_line(process.stdout, STARTUP_TIMEOUT).strip()
    if not line.startswith("listening on "):
        process.kill()
        pytest.fail(f"conveyor dev did not start: {line!r}")
    return process, line.removeprefix("listening on ")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()


def test_worker_drains_on_server_shutdown_and_reconnects(queue_name, caplog):
    caplog.set_level(logging.INFO, logger="conveyor.worker")
    first, listen = start_server("127.0.0.1:0")
    address = f"http://{listen}"
    release = threading.Event()
    sessions = []

    def hold(value):
        release.wait(10)
        return value

    worker = conveyor.Worker(address, tasks={"hold": hold}, queues=[queue_name], concurrency=2)
    runner = ThreadWorker(worker).start()
    second = None
    try:
        with conveyor.Client(address) as client:
            held = client.submit("hold", ["drained"], queue=queue_name)
            wait_until(lambda: client.state(held) == "RUNNING", 10, "the task to run")
            sessions.append(worker.session_id)
            # A watch open before the shutdown (its first update proves it) sees the end.
            updates = client.watch(held, timeout=20)
            assert conveyor.TaskState.from_proto(next(updates).state) == "RUNNING"
            first.terminate()  # SIGTERM: the dispatcher asks its workers to drain
            wait_until(lambda: "dispatcher asked to drain" in caplog.text, 10, "the Drain")
            release.set()  # the held task finishes during the drain
            last = list(updates)[-1]
            assert conveyor.TaskState.from_proto(last.state) == "SUCCEEDED"
            assert conveyor.decode(last.result) == "drained"
        assert first.wait(15) == 0
        wait_until(lambda: "cannot open a worker session" in caplog.text, 10, "a failed reconnect")

        second, relisten = start_server(listen)
        assert relisten == listen
        with conveyor.Client(address) as client:
            task_id = client.submit("hold", ["again"], queue=queue_name)
            assert client.result(task_id, timeout=20) == "again"
        assert worker.session_id not in sessions  # a new session
    finally:
        runner.stop()
        stop_server(first)
        if second is not None:
            stop_server(second)
