"""The SDK against the four roles run as separate `conveyor serve` processes
on one Redis: per-service endpoints (`endpoints=`, the CONVEYOR_<SERVICE>_ADDR
variables), the UNIMPLEMENTED hint of a process that does not serve a call's
role, and one forwarding process (`--peer`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

import conveyor
import conveyor.aio
from conveyor._common import SERVICE_ENV, SERVICES, resolve_endpoints
from conftest import ThreadWorker, conveyor_server, read_line, wait_for_state, wait_until

# An address where nothing listens: a general address that per-service
# endpoints must leave unused.
DEAD = "http://127.0.0.1:1"
ENDPOINT_VARS = ("CONVEYOR_ADDR", *SERVICE_ENV.values())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """scripts/test's Redis (CONVEYOR_TEST_REDIS), or one of this module's own."""
    if os.environ.get("CONVEYOR_TEST_REDIS"):
        yield os.environ["CONVEYOR_TEST_REDIS"]
        return
    server = shutil.which("redis-server")
    if not server:
        pytest.skip("no CONVEYOR_TEST_REDIS and no redis-server on PATH: the split-role tests need a Redis")
    port = free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        def answers() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return True
            except OSError:
                return False

        wait_until(answers, 10, "redis-server to accept connections")
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait()


@dataclass
class Layout:
    redis: str
    prefix: str
    submission: str = ""
    results: str = ""
    dispatch: str = ""
    scheduling: str = ""

    @property
    def endpoints(self) -> dict[str, str]:
        return {service: getattr(self, service) for service in SERVICES}


@contextlib.contextmanager
def serve_role(layout: Layout, role: str, *extra: str) -> Iterator[str]:
    """`conveyor serve ROLE` on the layout's store; yields its http:// address."""
    args = ["serve", role, "--store", layout.redis, "--redis-prefix", layout.prefix, *extra]
    with conveyor_server(args, f"python-split-{role}.log") as address:
        yield address


@pytest.fixture
def clean_env(monkeypatch):
    """No address variable of the environment the tests run in steers them."""
    for name in ENDPOINT_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def layout(redis_url, clean_env) -> Iterator[Layout]:
    """The four roles, one process each, with no peers, on a key prefix of their own."""
    split = Layout(redis_url, f"cv-py-split-{os.getpid()}-{uuid.uuid4().hex[:10]}:")
    with contextlib.ExitStack() as stack:
        for role in ("results", "dispatch", "scheduling", "submission"):
            setattr(split, role, stack.enter_context(serve_role(split, role)))
        yield split


class Probe:
    """The tasks of a split-layout worker: `add`, and `forever`, which sleeps
    until it is revoked."""

    def __init__(self) -> None:
        self.running = threading.Event()
        self.stopped = threading.Event()

    def add(self, a, b):
        return a + b

    def forever(self):
        self.running.set()
        try:
            conveyor.current_task().sleep(60)
        finally:
            self.stopped.set()

    @property
    def tasks(self) -> dict:
        return {"add": self.add, "forever": self.forever}


def exercise(client: conveyor.Client, probe: Probe, queue: str, worker_id: str) -> None:
    """A call of each service: submit, wait for a result, watch a task,
    cancel a running one, list the workers, pause a queue, round-trip a
    schedule."""
    task_id = client.submit("add", [2, 3], queue=queue)
    assert client.result(task_id, timeout=15) == 5

    watched = client.submit("add", [20, 22], queue=queue)
    assert conveyor.TaskState.from_proto(wait_for_state(client, watched, {"SUCCEEDED"}, timeout=15).state) == "SUCCEEDED"

    running = client.submit("forever", queue=queue)
    wait_for_state(client, running, {"RUNNING"}, timeout=15)
    assert probe.running.wait(5)
    assert client.cancel(running) is True
    assert probe.stopped.wait(10), "the running handler was not revoked"
    wait_for_state(client, running, {"CANCELLED"}, timeout=10)

    assert worker_id in [w.worker_id for w in client.workers()]
    client.pause_queue(queue)
    client.resume_queue(queue)

    schedule_id = f"split-{queue}"
    client.schedules.create(schedule_id, "add", 3600, [1, 1], queue=queue)
    assert client.schedules.get(schedule_id).id == schedule_id
    client.schedules.delete(schedule_id)


def start_worker(worker: conveyor.Worker) -> ThreadWorker:
    return ThreadWorker(worker).start()


def test_parity_per_service_endpoints(layout, queue_name):
    """An app (its client and worker) and an asyncio client given one endpoint
    per service, each a different process, and a general address where
    nothing listens."""
    probe = Probe()
    with conveyor.Conveyor(DEAD, endpoints=layout.endpoints) as app:
        app.task(name="add")(probe.add)
        app.task(name="forever")(probe.forever)
        assert {s: app.client.endpoint(s) for s in SERVICES} == layout.endpoints
        worker = app.worker(queues=[queue_name], worker_id=f"py-split-{queue_name}", grace_period=5)
        assert worker.dispatch_address == layout.dispatch
        running = start_worker(worker)
        try:
            exercise(app.client, probe, queue_name, worker.worker_id)

            async def through_aio() -> None:
                async with conveyor.aio.AsyncClient(DEAD, endpoints=layout.endpoints) as aio:
                    task_id = await aio.submit("add", [4, 5], queue=queue_name)
                    assert await aio.result(task_id, timeout=15) == 9
                    states = [conveyor.TaskState.from_proto(t.state) async for t in aio.watch(task_id, timeout=10)]
                    assert states[-1] == "SUCCEEDED"

            asyncio.run(through_aio())
        finally:
            running.stop()


def test_split_roles_unimplemented_hint(layout, queue_name):
    """With only the submission process's address (no peers), calls of the
    other services fail with UNIMPLEMENTED: the server's message, then the
    address called and how to point that service elsewhere."""
    with conveyor.Client(layout.submission) as client:
        task_id = client.submit("add", [1, 2], queue=queue_name)
        with pytest.raises(conveyor.ConveyorError) as refused:
            client.get(task_id)
        error = refused.value
        assert error.code == grpc.StatusCode.UNIMPLEMENTED
        assert "does not serve the results role" in error.details  # the server's message, kept
        assert "does not serve the results role" in str(error)
        assert (
            f"(called {layout.submission}; set CONVEYOR_RESULTS_ADDR or endpoints={{'results': …}} "
            "to reach the results role elsewhere)"
        ) in str(error)
        assert (error.service, error.address) == ("results", layout.submission)

        for call, service in (
            (lambda: client.wait(task_id, timeout=2), "results"),
            (lambda: list(client.watch(task_id, timeout=2)), "results"),
            (client.workers, "dispatch"),
            (client.schedules.list, "scheduling"),
        ):
            with pytest.raises(conveyor.ConveyorError) as refused:
                call()
            assert refused.value.code == grpc.StatusCode.UNIMPLEMENTED, refused.value
            assert f"set {SERVICE_ENV[service]} or endpoints={{'{service}': …}}" in str(refused.value)

    async def through_aio() -> None:
        async with conveyor.aio.AsyncClient(layout.submission) as aio:
            with pytest.raises(conveyor.ConveyorError) as refused:
                await aio.get(task_id)
            assert refused.value.code == grpc.StatusCode.UNIMPLEMENTED
            assert f"called {layout.submission}; set CONVEYOR_RESULTS_ADDR" in str(refused.value)

    asyncio.run(through_aio())

    # A worker there is refused for good, and says where to find dispatch.
    worker = conveyor.Worker(layout.submission, tasks=Probe().tasks, queues=[queue_name], grace_period=1)
    failed = ThreadWorker(worker).start()
    failed.thread.join(15)
    assert not failed.thread.is_alive(), "a worker on a process without the dispatch role kept trying"
    assert isinstance(failed.error, conveyor.ConveyorError), failed.error
    assert failed.error.code == grpc.StatusCode.UNIMPLEMENTED
    assert "does not serve the dispatch role" in str(failed.error)
    assert f"called {layout.submission}; set CONVEYOR_DISPATCH_ADDR or endpoints={{'dispatch': …}}" in str(failed.error)


def test_split_roles_environment(layout, clean_env, queue_name):
    """The same layout through CONVEYOR_<SERVICE>_ADDR, over CONVEYOR_ADDR;
    `endpoints=` over a variable; a variable over the address argument."""
    clean_env.setenv("CONVEYOR_ADDR", DEAD)
    for service in SERVICES:
        clean_env.setenv(SERVICE_ENV[service], getattr(layout, service))
    probe = Probe()
    worker = conveyor.Worker(tasks=probe.tasks, queues=[queue_name], worker_id=f"py-env-{queue_name}", grace_period=5)
    assert worker.dispatch_address == layout.dispatch
    running = start_worker(worker)
    try:
        with conveyor.Client() as client:
            exercise(client, probe, queue_name, worker.worker_id)
    finally:
        running.stop()

    for name in ("CONVEYOR_SUBMISSION_ADDR", "CONVEYOR_DISPATCH_ADDR", "CONVEYOR_SCHEDULING_ADDR"):
        clean_env.delenv(name)
    with conveyor.Client(layout.submission) as mixed:  # results from its variable, the rest from the argument
        task_id = mixed.submit("add", [1, 1], queue=queue_name)
        assert mixed.get(task_id).id == task_id
        with pytest.raises(conveyor.ConveyorError) as refused:
            mixed.workers()
        assert refused.value.code == grpc.StatusCode.UNIMPLEMENTED

    clean_env.setenv("CONVEYOR_RESULTS_ADDR", layout.submission)
    with conveyor.Client(layout.submission, endpoints={"results": layout.results}) as explicit:
        assert explicit.get(task_id).id == task_id  # endpoints= beats the variable
    with conveyor.Client(layout.results) as by_env:
        with pytest.raises(conveyor.ConveyorError) as refused:
            by_env.get(task_id)  # the variable (the submission process) beats the argument
        assert f"called {layout.submission}" in str(refused.value)


def test_split_roles_forwarded(layout, queue_name):
    """One submission process forwarding the other roles (--peer): a client
    and a worker given only its address."""
    peers = [arg for role in ("results", "dispatch", "scheduling") for arg in ("--peer", f"{role}={getattr(layout, role)}")]
    with serve_role(layout, "submission", *peers) as front:
        probe = Probe()
        worker = conveyor.Worker(front, tasks=probe.tasks, queues=[queue_name], worker_id=f"py-fwd-{queue_name}", grace_period=5)
        running = start_worker(worker)
        try:
            with conveyor.Client(front) as client:
                exercise(client, probe, queue_name, worker.worker_id)
        finally:
            running.stop()


TASKS = '''
from conveyor import Conveyor

app = Conveyor()


@app.task(name="add")
def add(a, b):
    return a + b
'''


@pytest.mark.parametrize("form", ["env", "option"])
def test_split_roles_worker_command(layout, tmp_path, queue_name, form):
    """`conveyor-worker` reaches the dispatch process through
    CONVEYOR_DISPATCH_ADDR or `--endpoint dispatch=URL`, with the general
    address (CONVEYOR_ADDR) pointing at the submission process."""
    (tmp_path / "split_tasks.py").write_text(textwrap.dedent(TASKS))
    script = Path(sys.executable).parent / "conveyor-worker"
    env = {**os.environ, "CONVEYOR_ADDR": layout.submission}
    args = [str(script), "-A", "split_tasks:app", "-Q", queue_name, "-c", "2", "--grace-period", "2"]
    if form == "env":
        env["CONVEYOR_DISPATCH_ADDR"] = layout.dispatch
    else:
        args += ["--endpoint", f"dispatch={layout.dispatch}"]
    process = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = []
        deadline = time.monotonic() + 30
        while not any(line.startswith("    . add") for line in banner):
            line = read_line(process.stdout, max(0.1, deadline - time.monotonic()))
            assert line, f"no banner; got {banner!r}"
            banner.append(line)
        assert f"  dispatch:     {layout.dispatch}\n" in banner
        with conveyor.Client(layout.submission, endpoints={"results": layout.results}) as client:
            assert client.result(client.submit("add", [3, 4], queue=queue_name), timeout=15) == 7
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_endpoint_checks(clean_env):
    """Unknown keys are refused naming the valid ones; the precedence of
    endpoints=, CONVEYOR_<SERVICE>_ADDR, the address, CONVEYOR_ADDR and the
    default; services at one address share its channel."""
    for make in (
        lambda e: conveyor.Client(endpoints=e),
        lambda e: conveyor.Worker(endpoints=e),
        lambda e: conveyor.Conveyor(endpoints=e),
    ):
        with pytest.raises(ValueError) as refused:
            make({"result": "http://x:1"})
        assert "'result'" in str(refused.value)
        assert "'submission', 'results', 'dispatch', 'scheduling'" in str(refused.value)
    with pytest.raises(ValueError, match="submission"):
        conveyor.aio.AsyncClient(endpoints={"queue": "http://x:1"})
    with pytest.raises(ValueError, match="channel= or endpoints="):
        conveyor.Client(channel=grpc.insecure_channel("127.0.0.1:1"), endpoints={"results": "http://x:1"})

    assert resolve_endpoints(None) == dict.fromkeys(SERVICES, "http://127.0.0.1:50051")
    clean_env.setenv("CONVEYOR_ADDR", "http://env:1")
    assert resolve_endpoints(None)["dispatch"] == "http://env:1"
    assert resolve_endpoints("http://arg:1")["dispatch"] == "http://arg:1"
    clean_env.setenv("CONVEYOR_DISPATCH_ADDR", "http://d1:1,http://d2:2")
    assert resolve_endpoints("http://arg:1") == {
        "submission": "http://arg:1",
        "results": "http://arg:1",
        "dispatch": "http://d1:1,http://d2:2",
        "scheduling": "http://arg:1",
    }
    assert resolve_endpoints("http://arg:1", {"dispatch": "http://opt:1"})["dispatch"] == "http://opt:1"

    with conveyor.Client("http://a:1", endpoints={"results": ["http://r1:1", "http://r2:2"]}) as client:
        assert client.endpoint("results") == "http://r1:1"
        assert client.endpoint("dispatch") == "http://d1:1"  # from CONVEYOR_DISPATCH_ADDR
        assert client._endpoints["submission"] is client._endpoints["scheduling"]
        assert client._endpoints["submission"].channel is not client._endpoints["results"].channel
        client._endpoints["results"].fail_over()
        assert client.endpoint("results") == "http://r2:2" and client.endpoint("submission") == "http://a:1"
