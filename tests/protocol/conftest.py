"""Fixtures of the protocol conformance suite: the example worker of every
SDK (built once per session, as tests/polyglot does), started against a
scripted fake dispatcher (fake_dispatcher.py)."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import pytest

from fake_dispatcher import FakeDispatcher

ROOT = pathlib.Path(__file__).resolve().parents[2]
LANGUAGES = ["rust", "python", "go", "typescript"]
# Every example worker serves these (the Rust one also `mul`).
EXAMPLE_TASKS = {"add", "xsum", "fail", "lang", "sleep"}


def _rust_worker() -> pathlib.Path:
    explicit = os.environ.get("CONVEYOR_RUST_WORKER")
    if explicit:
        path = pathlib.Path(explicit)
    else:
        conveyor = pathlib.Path(os.environ.get("CONVEYOR_BIN", ROOT / "target/debug/conveyor"))
        path = conveyor.parent / "examples/worker"
    return path


@pytest.fixture(scope="session")
def programs(tmp_path_factory) -> dict[str, list[str]]:
    """The command that starts each language's example worker."""
    go_bin = tmp_path_factory.mktemp("go-bin")
    subprocess.run(["go", "build", "-o", str(go_bin), "./cmd/..."], cwd=ROOT / "clients/go", check=True)
    subprocess.run(["npm", "run", "build"], cwd=ROOT / "clients/typescript", check=True, stdout=subprocess.DEVNULL)
    python = os.environ.get("CONVEYOR_PYTHON", sys.executable)
    return {
        "rust": [str(_rust_worker())],
        "python": [python, str(ROOT / "clients/python/examples/worker.py")],
        "go": [str(go_bin / "conveyor-example-worker")],
        "typescript": ["node", str(ROOT / "clients/typescript/dist/examples/worker.js")],
    }


class WorkerProcess:
    """One example worker process; its stderr goes to a log file that a
    failing test prints."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: pathlib.Path):
        assert pathlib.Path(command[0]).exists() or command[0] in ("node",) or pathlib.Path(command[-1]).exists(), (
            f"{command[0]} is missing: build the Rust example worker with `cargo build --examples`, or point "
            "CONVEYOR_RUST_WORKER (or CONVEYOR_BIN, beside which examples/worker is looked for) at a built one"
        )
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """Ends the process at once (teardown: shutdown is not under test)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            if self.wait(5) is None:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture
def fake():
    dispatcher = FakeDispatcher()
    yield dispatcher
    dispatcher.stop()


@pytest.fixture
def start_worker(programs, tmp_path, request):
    """start_worker(language, dispatcher, **env) -> WorkerProcess; stopped
    (SIGTERM, then SIGKILL) at teardown, its log printed when the test failed."""
    started: list[WorkerProcess] = []

    def start(language: str, dispatcher: FakeDispatcher, *, concurrency: int = 4, worker_id: str | None = None,
              queue: str = "proto-q", **extra: str) -> WorkerProcess:
        env = dict(
            os.environ,
            CONVEYOR_ADDR=dispatcher.url,
            CONVEYOR_QUEUE=queue,
            CONVEYOR_CONCURRENCY=str(concurrency),
            CONVEYOR_WORKER_ID=worker_id if worker_id is not None else f"proto-{language}",
            RUST_LOG="info",
            RUST_BACKTRACE="0",
        )
        env.update(extra)
        worker = WorkerProcess(programs[language], env, tmp_path / f"{language}-{len(started)}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for worker in started:
            sys.stderr.write(f"\n--- worker log {worker.log_path.name} ---\n{worker.log()}\n")


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
