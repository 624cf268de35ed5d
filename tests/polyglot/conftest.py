"""Fixtures for the cross-language tests: a real `conveyor dev`, the example
workers and producers of every language, built once per session."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
LANGUAGES = ["rust", "python", "go", "typescript"]


def _conveyor_bin() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("CONVEYOR_BIN", ROOT / "target/debug/conveyor"))
    assert path.exists(), f"{path} is missing: run scripts/test (it builds the binaries first)"
    return path


@pytest.fixture(scope="session")
def programs(tmp_path_factory) -> dict:
    """Commands that start each language's example worker and producer."""
    go_bin = tmp_path_factory.mktemp("go-bin")
    subprocess.run(["go", "build", "-o", str(go_bin), "./cmd/..."], cwd=ROOT / "clients/go", check=True)
    subprocess.run(["npm", "run", "build"], cwd=ROOT / "clients/typescript", check=True, stdout=subprocess.DEVNULL)
    examples = _conveyor_bin().parent / "examples"
    for name in ("worker", "producer"):
        assert (examples / name).exists(), f"{examples / name} is missing: cargo build --examples"
    python = os.environ.get("CONVEYOR_PYTHON", sys.executable)
    return {
        "worker": {
            "rust": [str(examples / "worker")],
            "python": [python, str(ROOT / "clients/python/examples/worker.py")],
            "go": [str(go_bin / "conveyor-example-worker")],
            "typescript": ["node", str(ROOT / "clients/typescript/dist/examples/worker.js")],
        },
        "producer": {
            "rust": [str(examples / "producer")],
            "python": [python, str(ROOT / "clients/python/examples/producer.py")],
            "go": [str(go_bin / "conveyor-example-producer")],
            "typescript": ["node", str(ROOT / "clients/typescript/dist/examples/producer.js")],
        },
    }


class Server:
    """`conveyor dev` on a free port; extra_args go after the defaults, env
    replaces the environment (None: this process's)."""

    def __init__(self, *extra_args: str, env: dict | None = None) -> None:
        self.process = subprocess.Popen(
            [str(_conveyor_bin()), "dev", "--listen", "127.0.0.1:0", "--heartbeat-interval", "200ms", "--lease-ttl", "1s", "--track-started",
             *extra_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        line = self.process.stdout.readline().strip()
        assert line.startswith("listening on "), f"unexpected first line {line!r}"
        self.addr = line.removeprefix("listening on ")
        self.url = f"http://{self.addr}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(_conveyor_bin()), *args, "--server", self.url], capture_output=True, text=True, check=check, timeout=60
        )

    def workers(self) -> str:
        return self.cli("workers").stdout

    def wait_for_worker(self, worker_id: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if worker_id in self.workers():
                return
            time.sleep(0.05)
        raise AssertionError(f"worker {worker_id} never connected:\n{self.workers()}")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def server():
    running = Server()
    yield running
    running.stop()


def start_worker(programs: dict, language: str, server: Server, queue: str, worker_id: str) -> subprocess.Popen:
    env = dict(os.environ, CONVEYOR_ADDR=server.url, CONVEYOR_QUEUE=queue, CONVEYOR_WORKER_ID=worker_id,
               CONVEYOR_CONCURRENCY="4", RUST_LOG="warn")
    return subprocess.Popen(programs["worker"][language], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_producer(programs: dict, language: str, server: Server, queue: str) -> dict:
    env = dict(os.environ, CONVEYOR_ADDR=server.url, CONVEYOR_QUEUE=queue, RUST_LOG="warn")
    done = subprocess.run(programs["producer"][language], env=env, cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, f"{language} producer failed:\n{done.stderr}"
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1])
