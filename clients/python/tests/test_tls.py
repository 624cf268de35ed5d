"""TLS and mTLS against a real `conveyor dev --tls-cert/--tls-key
[--tls-client-ca]`, with throwaway certificates from scripts/gen-test-certs
(made once per session): the options, the CONVEYOR_TLS_* variables, the
per-service endpoints, the worker, the async client and `conveyor-worker`."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import conveyor
from conftest import REPO_ROOT, ThreadWorker, dev_server, read_line
from conveyor import app as app_module
from conveyor.aio import AsyncClient


def add(a, b):
    return a + b


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> Path:
    """A directory of test certificates: ca.pem/key, server.pem/key,
    client.pem/key (CN=test-client), other-ca.pem (signed nothing)."""
    directory = tmp_path_factory.mktemp("certs")
    script = REPO_ROOT / "scripts" / "gen-test-certs"
    done = subprocess.run([str(script), str(directory)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{script} failed: {done.stdout}{done.stderr}"
    for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key", "other-ca.pem"):
        assert (directory / name).is_file(), f"{script} wrote no {name}"
    return directory


def host_port(address: str) -> str:
    """127.0.0.1:PORT of the address a test server reported."""
    match = re.search(r"(\d+\.\d+\.\d+\.\d+:\d+)", address)
    assert match, f"no host:port in {address!r}"
    return match.group(1)


@pytest.fixture(scope="module")
def tls_server(certs) -> Iterator[str]:
    """The https:// address of a `conveyor dev` serving TLS."""
    with dev_server(
        "--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"),
        log_name="python-tls-server.log",
    ) as address:
        yield "https://" + host_port(address)


@pytest.fixture(scope="module")
def mtls_server(certs) -> Iterator[str]:
    """The https:// address of a `conveyor dev` that requires client
    certificates signed by the test CA."""
    with dev_server(
        "--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"),
        "--tls-client-ca", str(certs / "ca.pem"),
        log_name="python-mtls-server.log",
    ) as address:
        yield "https://" + host_port(address)


@pytest.fixture
def no_tls_env(monkeypatch):
    """No CONVEYOR_TLS_* or address variables from the caller's environment
    (and the current app restored after the test)."""
    for name in ("CONVEYOR_TLS_CA", "CONVEYOR_TLS_CERT", "CONVEYOR_TLS_KEY", "CONVEYOR_ADDR",
                 "CONVEYOR_SUBMISSION_ADDR", "CONVEYOR_RESULTS_ADDR", "CONVEYOR_DISPATCH_ADDR",
                 "CONVEYOR_SCHEDULING_ADDR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(app_module, "_default_app", app_module._default_app)
    return monkeypatch


@pytest.fixture
def workers() -> Iterator[list[ThreadWorker]]:
    running: list[ThreadWorker] = []
    yield running
    for worker in running:
        if worker.thread.is_alive():
            worker.stop()


def run_worker(running: list[ThreadWorker], address: str | None, queue: str, **settings) -> ThreadWorker:
    worker = conveyor.Worker(address, tasks={"add": add}, queues=[queue], concurrency=2, grace_period=2.0, **settings)
    thread_worker = ThreadWorker(worker).start()
    running.append(thread_worker)
    return thread_worker


def client_cert(certs: Path) -> dict[str, str]:
    return {"tls_cert": str(certs / "client.pem"), "tls_key": str(certs / "client.key")}


# --- TLS ------------------------------------------------------------------------------


def test_parity_tls_client_and_worker_with_tls_ca(tls_server, certs, workers, no_tls_env):
    queue = f"tls-{uuid.uuid4().hex[:10]}"
    ca = str(certs / "ca.pem")
    run_worker(workers, tls_server, queue, tls_ca=ca)
    with conveyor.Client(tls_server, tls_ca=ca) as client:
        task_id = client.submit("add", [2, 3], queue=queue)
        assert client.result(task_id, timeout=20) == 5
        assert conveyor.TaskState.from_proto(client.get(task_id).state) == conveyor.TaskState.SUCCEEDED

    async def scenario():
        async with AsyncClient(tls_server, tls_ca=Path(ca)) as client:
            task_id = await client.submit("add", [20, 22], queue=queue)
            return await client.result(task_id, timeout=20)

    assert asyncio.run(scenario()) == 42


def test_parity_tls_env_vars_only(tls_server, certs, workers, no_tls_env):
    """CONVEYOR_TLS_CA alone: a scheme-less CONVEYOR_ADDR uses TLS, for the
    client, the worker, an app and a per-service address
    (CONVEYOR_RESULTS_ADDR, a second channel) alike."""
    queue = f"tls-env-{uuid.uuid4().hex[:10]}"
    bare = host_port(tls_server)
    no_tls_env.setenv("CONVEYOR_TLS_CA", str(certs / "ca.pem"))
    no_tls_env.setenv("CONVEYOR_ADDR", bare)
    no_tls_env.setenv("CONVEYOR_RESULTS_ADDR", "localhost:" + bare.rsplit(":", 1)[1])
    run_worker(workers, None, queue)
    with conveyor.Client() as client:
        assert client.endpoint("results").startswith("localhost:")
        task_id = client.submit("add", [4, 5], queue=queue)
        assert client.result(task_id, timeout=20) == 9

    app = conveyor.Conveyor()
    try:
        app_add = app.task(name="add", queue=queue)(add)
        assert app_add.delay(1, 1).get(timeout=20) == 2
    finally:
        app.close()


def test_tls_option_wins_over_env(tls_server, certs, no_tls_env):
    no_tls_env.setenv("CONVEYOR_TLS_CA", str(certs / "other-ca.pem"))
    with conveyor.Client(tls_server, tls_ca=str(certs / "ca.pem")) as client:
        with pytest.raises(conveyor.ConveyorError) as caught:
            client.get(str(uuid.uuid4()))
        assert caught.value.code == grpc.StatusCode.NOT_FOUND  # the call got through


# --- trust -----------------------------------------------------------------------------


def test_tls_untrusted_server_fails_with_a_clear_error(tls_server, certs, no_tls_env):
    with conveyor.Client(tls_server, tls_ca=str(certs / "other-ca.pem"), retry_attempts=2) as client:
        with pytest.raises(conveyor.ConveyorError) as caught:
            client.submit("add", [1, 2], queue="never-run")
    error = caught.value
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert "tls_ca" in str(error) and "CONVEYOR_TLS_CA" in str(error), str(error)
    assert error.address == tls_server

    # The system roots do not hold the test CA either.
    with conveyor.Client(tls_server, retry_attempts=1) as client:
        with pytest.raises(conveyor.ConveyorError) as caught:
            client.get("x")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE and "CONVEYOR_TLS_CA" in str(caught.value)


def test_tls_untrusted_worker_gets_no_session(tls_server, certs, workers, no_tls_env, caplog):
    worker = run_worker(workers, tls_server, f"tls-untrusted-{uuid.uuid4().hex[:8]}",
                        tls_ca=str(certs / "other-ca.pem"), reconnect_backoff=(0.05, 0.2))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and "cannot open a worker session" not in caplog.text:
        time.sleep(0.05)
    assert worker.worker.session_id is None
    assert "cannot open a worker session" in caplog.text and "CONVEYOR_TLS_CA" in caplog.text, caplog.text


def test_plaintext_client_of_a_tls_server_fails(tls_server, no_tls_env):
    with conveyor.Client("http://" + host_port(tls_server), retry_attempts=1, rpc_timeout=5) as client:
        with pytest.raises(conveyor.ConveyorError) as caught:
            client.get("x")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


# --- mTLS ------------------------------------------------------------------------------


def test_parity_mtls_client_certificate_required(mtls_server, certs, workers, no_tls_env):
    ca = str(certs / "ca.pem")
    with conveyor.Client(mtls_server, tls_ca=ca, retry_attempts=1) as client:
        with pytest.raises(conveyor.ConveyorError) as caught:
            client.submit("add", [1, 2], queue="never-run")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE, caught.value
    assert "tls_cert" in str(caught.value), str(caught.value)

    queue = f"mtls-{uuid.uuid4().hex[:10]}"
    refused = run_worker(workers, mtls_server, queue, tls_ca=ca, reconnect_backoff=(0.05, 0.2))
    run_worker(workers, mtls_server, queue, tls_ca=ca, **client_cert(certs))
    with conveyor.Client(mtls_server, tls_ca=ca, **client_cert(certs)) as client:
        task_id = client.submit("add", [2, 3], queue=queue)
        assert client.result(task_id, timeout=20) == 5
        ids = client.submit_many([("add", [i, i], None, {"queue": queue}) for i in range(10)])
        assert [client.result(i, timeout=20) for i in ids] == [2 * i for i in range(10)]
    assert refused.worker.session_id is None  # the worker without a certificate never got in

    async def scenario():
        async with AsyncClient(mtls_server, tls_ca=ca, **client_cert(certs)) as client:
            return await client.result(await client.submit("add", [7, 8], queue=queue), timeout=20)

    assert asyncio.run(scenario()) == 15


def test_parity_mtls_env_vars(mtls_server, certs, workers, no_tls_env):
    queue = f"mtls-env-{uuid.uuid4().hex[:10]}"
    no_tls_env.setenv("CONVEYOR_TLS_CA", str(certs / "ca.pem"))
    no_tls_env.setenv("CONVEYOR_TLS_CERT", str(certs / "client.pem"))
    no_tls_env.setenv("CONVEYOR_TLS_KEY", str(certs / "client.key"))
    run_worker(workers, mtls_server, queue)
    with conveyor.Client(host_port(mtls_server)) as client:
        assert client.result(client.submit("add", [3, 4], queue=queue), timeout=20) == 7


# --- configuration errors ---------------------------------------------------------------


def test_http_address_with_tls_is_a_configuration_error(certs, no_tls_env):
    ca = str(certs / "ca.pem")
    for make in (
        lambda: conveyor.Client("http://127.0.0.1:1", tls_ca=ca),
        lambda: conveyor.Worker("http://127.0.0.1:1", tasks={"add": add}, tls_ca=ca),
        lambda: conveyor.Client("https://127.0.0.1:1", endpoints={"results": "http://127.0.0.1:2"}, tls_ca=ca),
        lambda: conveyor.Conveyor("http://127.0.0.1:1", tls_ca=ca).client,
    ):
        with pytest.raises(conveyor.ConveyorError, match="use https://127.0.0.1:") as caught:
            make()
        assert caught.value.code is None and "tls_ca" in str(caught.value)

    async def in_loop():
        AsyncClient("http://127.0.0.1:1", tls_ca=ca)

    with pytest.raises(conveyor.ConveyorError, match="https://"):
        asyncio.run(in_loop())

    no_tls_env.setenv("CONVEYOR_TLS_CA", ca)
    with pytest.raises(conveyor.ConveyorError, match=r"CONVEYOR_TLS_CA.*use https://127\.0\.0\.1:1"):
        conveyor.Client("http://127.0.0.1:1")


def test_tls_file_errors_name_the_path_and_variable(certs, tmp_path, no_tls_env):
    missing = tmp_path / "missing.pem"
    with pytest.raises(conveyor.ConveyorError) as caught:
        conveyor.Client("https://127.0.0.1:1", tls_ca=str(missing))
    assert str(missing) in str(caught.value) and "CONVEYOR_TLS_CA" in str(caught.value)

    no_tls_env.setenv("CONVEYOR_TLS_CERT", str(missing))
    no_tls_env.setenv("CONVEYOR_TLS_KEY", str(certs / "client.key"))
    with pytest.raises(conveyor.ConveyorError) as caught:
        conveyor.Client("https://127.0.0.1:1")
    assert str(missing) in str(caught.value) and "CONVEYOR_TLS_CERT" in str(caught.value)

    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    with pytest.raises(conveyor.ConveyorError, match="not a PEM file"):
        conveyor.Client("https://127.0.0.1:1", tls_ca=not_pem)


def test_tls_cert_without_key_names_both(certs, no_tls_env):
    for settings in ({"tls_cert": str(certs / "client.pem")}, {"tls_key": str(certs / "client.key")}):
        for make in (
            lambda: conveyor.Client("https://127.0.0.1:1", **settings),
            lambda: conveyor.Worker("https://127.0.0.1:1", tasks={"add": add}, **settings),
        ):
            with pytest.raises(conveyor.ConveyorError) as caught:
                make()
            message = str(caught.value)
            assert "tls_cert" in message and "tls_key" in message, message
            assert "CONVEYOR_TLS_CERT" in message and "CONVEYOR_TLS_KEY" in message, message
    no_tls_env.setenv("CONVEYOR_TLS_KEY", str(certs / "client.key"))
    with pytest.raises(conveyor.ConveyorError, match="tls_cert and tls_key"):
        conveyor.Client("https://127.0.0.1:1")


def test_credentials_and_tls_options_exclude_each_other(certs, no_tls_env):
    with pytest.raises(conveyor.ConveyorError, match="credentials"):
        conveyor.Client("https://127.0.0.1:1", credentials=grpc.ssl_channel_credentials(),
                        tls_ca=str(certs / "ca.pem"))


# --- conveyor-worker ---------------------------------------------------------------------

CLI_TASKS = '''
from conveyor import Conveyor

app = Conveyor()


@app.task(name="tls_cli_add")
def add(x, y):
    return x + y
'''


def conveyor_worker(project: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_TLS_")}
    return subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "-A", "tls_cli_tasks", *args],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def test_parity_mtls_conveyor_worker_flags(mtls_server, certs, tmp_path, no_tls_env):
    (tmp_path / "tls_cli_tasks.py").write_text(textwrap.dedent(CLI_TASKS))
    queue = f"mtls-cli-{uuid.uuid4().hex[:10]}"
    process = conveyor_worker(
        tmp_path, "-s", mtls_server, "-Q", queue, "-c", "2",
        "--tls-ca", str(certs / "ca.pem"), "--tls-cert", str(certs / "client.pem"),
        "--tls-key", str(certs / "client.key"),
    )
    try:
        banner = []
        while not any(line.startswith("  tls:") for line in banner):
            line = read_line(process.stdout, 30)
            assert line, f"no banner; got {banner!r}"
            banner.append(line)
        assert "client certificate" in banner[-1], banner
        with conveyor.Client(mtls_server, tls_ca=str(certs / "ca.pem"), **client_cert(certs)) as client:
            assert client.result(client.submit("tls_cli_add", [2, 40], queue=queue), timeout=30) == 42
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_conveyor_worker_http_address_with_tls_flag_is_a_usage_error(certs, tmp_path, no_tls_env):
    (tmp_path / "tls_cli_tasks.py").write_text(textwrap.dedent(CLI_TASKS))
    process = conveyor_worker(tmp_path, "-s", "http://127.0.0.1:1", "--tls-ca", str(certs / "ca.pem"))
    assert process.wait(30) == 64
    error = process.stderr.read()
    assert "use https://127.0.0.1:1" in error, error

    process = conveyor_worker(tmp_path, "-s", "https://127.0.0.1:1", "--tls-cert", str(certs / "client.pem"))
    assert process.wait(30) == 64
    error = process.stderr.read()
    assert "tls_cert and tls_key" in error and "CONVEYOR_TLS_KEY" in error, error
