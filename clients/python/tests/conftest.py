"""One real `conveyor dev` per test session, plus helpers to run workers in
this process (a thread) or in child processes."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import conveyor

HERE = Path(__file__).resolve().parent
CLIENT_DIR = HERE.parent
REPO_ROOT = CLIENT_DIR.parent.parent
STARTUP_TIMEOUT = 30.0


def conveyor_bin() -> str:
    path = os.environ.get("CONVEYOR_BIN") or str(REPO_ROOT / "target" / "debug" / "conveyor")
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"no conveyor binary at {path}: build it (cargo build) or set CONVEYOR_BIN", pytrace=False
        )
    return path


def read_line(stream, timeout: float) -> str:
    """The next line of `stream`, or "" when none comes within `timeout`."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        return ""


@contextlib.contextmanager
def conveyor_server(args: list[str], log_name: str) -> Iterator[str]:
    """`conveyor ARGS --listen 127.0.0.1:0` (heartbeat 200 ms, lease TTL 1 s,
    RUNNING tracked); yields its http:// address, stops it on exit. Its log
    is $CONVEYOR_TMP/LOG_NAME (the last run's)."""
    log_dir = Path(os.environ.get("CONVEYOR_TMP") or tempfile.gettempdir())
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / log_name
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                conveyor_bin(),
                *args,
                "--listen",
                "127.0.0.1:0",
                "--heartbeat-interval",
                "200ms",
                "--lease-ttl",
                "1s",
                # The tests watch every state, RUNNING included.
                "--track-started",
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            line = read_line(process.stdout, STARTUP_TIMEOUT).strip()
            if not line.startswith("listening on "):
                process.kill()
                pytest.fail(f"conveyor {args[0]} did not start (said {line!r}); log: {log_path}", pytrace=False)
            yield "http://" + line.removeprefix("listening on ")
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def dev_server(*extra: str, log_name: str = "python-client-server.log") -> Iterator[str]:
    """A `conveyor dev` on a free port with `extra` flags; yields its http:// address."""
    with conveyor_server(["dev", *extra], log_name) as address:
        yield address


@pytest.fixture(scope="session")
def server() -> Iterator[str]:
    """The address of a `conveyor dev` that lives as long as the session."""
    with dev_server() as address:
        yield address


@pytest.fixture(scope="session")
def client(server: str) -> Iterator[conveyor.Client]:
    with conveyor.Client(server) as c:
        yield c


@pytest.fixture
def queue_name() -> str:
    """A queue of this test alone, so that tests never take each other's tasks."""
    return f"py-{uuid.uuid4().hex[:12]}"


class ThreadWorker:
    """A `conveyor.Worker` running in a thread of this process."""

    def __init__(self, worker: conveyor.Worker):
        self.worker = worker
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="test-worker", daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run(install_signal_handlers=False)
        except BaseException as error:  # noqa: BLE001 - reported by stop()
            self.error = error

    def start(self) -> ThreadWorker:
        self.thread.start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self.worker.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "worker did not stop in time"
        if self.error is not None:
            raise self.error


@pytest.fixture
def start_worker(server: str) -> Iterator[Callable[..., ThreadWorker]]:
    """start_worker(app_or_handlers, queue_or_queues, **settings) -> a running
    ThreadWorker, stopped at the end of the test."""
    running: list[ThreadWorker] = []

    def start(source, queue: str | list[str], **settings) -> ThreadWorker:
        settings.setdefault("concurrency", 4)
        settings.setdefault("grace_period", 5.0)
        queues = [queue] if isinstance(queue, str) else list(queue)
        if isinstance(source, conveyor.Conveyor):
            worker = source.worker(queues=queues, **settings)
        else:
            worker = conveyor.Worker(server, tasks=source, queues=queues, **settings)
        thread_worker = ThreadWorker(worker).start()
        running.append(thread_worker)
        return thread_worker

    yield start
    for thread_worker in running:
        if thread_worker.thread.is_alive():
            thread_worker.stop()


class ProcessWorker:
    """A worker in a child process (a script run with this interpreter)."""

    def __init__(self, script: Path, env: dict[str, str]):
        self.log = tempfile.NamedTemporaryFile(prefix="conveyor-py-worker-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, str(script)],
            env={**os.environ, **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()
        os.unlink(self.log.name)


@pytest.fixture
def spawn_worker(server: str) -> Iterator[Callable[..., ProcessWorker]]:
    """spawn_worker(script, queue, worker_id=..., concurrency=...) -> ProcessWorker."""
    spawned: list[ProcessWorker] = []

    def spawn(script: Path, queue: str, *, worker_id: str | None = None, concurrency: int = 2) -> ProcessWorker:
        env = {
            "CONVEYOR_ADDR": server,
            "CONVEYOR_QUEUE": queue,
            "CONVEYOR_CONCURRENCY": str(concurrency),
        }
        if worker_id:
            env["CONVEYOR_WORKER_ID"] = worker_id
        worker = ProcessWorker(script, env)
        spawned.append(worker)
        return worker

    yield spawn
    for worker in spawned:
        worker.close()


def wait_for_state(
    client: conveyor.Client, task_id: str, states: set[str], timeout: float = 10.0
) -> conveyor.v1.task_pb2.Task:
    """Watches the task until it is in one of `states`; fails after `timeout`."""
    seen = []
    try:
        for task in client.watch(task_id, timeout=timeout):
            state = conveyor.TaskState.from_proto(task.state)
            seen.append(state.value)
            if state in states:
                return task
    except conveyor.TaskTimeout:
        pass
    raise AssertionError(f"task {task_id} never reached {sorted(states)}; saw {seen}")


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


__all__ = ["ProcessWorker", "ThreadWorker", "dev_server", "signal", "wait_for_state", "wait_until"]
