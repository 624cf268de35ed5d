"""Namespaces and authorization against a real `conveyor dev`: the parity
rows `namespace` (nothing of one namespace is visible from another) and
`authorization` (an auth file's principals, each with a role in "team-a",
allowed or refused per call as docs/security.md's table says)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

import conveyor
from conftest import ThreadWorker, dev_server, wait_until

# An id of the shape the server issues that names no task or workflow.
MADE_UP_ID = "01a2017a-0000-7000-8000-000000000000"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def not_found(call: Callable[[], Any]) -> conveyor.ConveyorError:
    with pytest.raises(conveyor.ConveyorError) as caught:
        call()
    assert caught.value.code == grpc.StatusCode.NOT_FOUND, caught.value
    assert not isinstance(caught.value, (conveyor.PermissionDenied, conveyor.Unauthenticated))
    return caught.value


def refused(worker: conveyor.Worker, timeout: float = 15.0) -> BaseException:
    """The error `worker.run()` stops with; fails if it opens a session or
    is still trying after `timeout` seconds."""
    thread_worker = ThreadWorker(worker).start()
    thread_worker.thread.join(timeout)
    if thread_worker.thread.is_alive():
        opened = worker.session_id
        thread_worker.worker.stop()
        thread_worker.thread.join(10)
        raise AssertionError(f"the worker was not refused within {timeout}s (session {opened})")
    assert thread_worker.error is not None, "the worker stopped without an error"
    return thread_worker.error


def test_namespace_defaults_to_the_environment(monkeypatch, server):
    monkeypatch.setenv("CONVEYOR_NAMESPACE", "from-env")
    with conveyor.Client(server) as client, conveyor.Client(server, namespace="") as default:
        assert client.namespace == "from-env" and client.schedules._namespace == "from-env"
        assert default.namespace == ""  # given, even empty, wins over the variable
        assert client.with_namespace("other").namespace == "other" and client.namespace == "from-env"
    assert asyncio.run(_async_namespace(server)) == ("from-env", "other")
    assert conveyor.Worker(server, tasks={"t": print})._hello().namespace == "from-env"
    app = conveyor.Conveyor(server)
    assert app.namespace == "from-env" and app.client.namespace == "from-env"
    app.task(name="t")(print)
    assert app.worker(queues=["q"])._hello().namespace == "from-env"
    assert app.worker(queues=["q"], namespace="own")._hello().namespace == "own"
    app.close()
    explicit = conveyor.Conveyor(server, namespace="team-x")
    assert explicit.client.namespace == "team-x" and explicit.AsyncResult("x").client.namespace == "team-x"
    explicit.close()
    monkeypatch.delenv("CONVEYOR_NAMESPACE")
    with conveyor.Client(server) as client:
        assert client.namespace == ""
        with pytest.raises(ValueError, match="differs"):
            conveyor.Conveyor(server, client=client, namespace="team-x")
        assert conveyor.Conveyor(server, client=client.with_namespace("team-y")).namespace == "team-y"


def test_parity_namespace(server, start_worker, queue_name):
    """A task of namespace A runs on A's worker only, even when B's worker
    has the same queue and task names; A's ids are NOT_FOUND from B; B's
    listings show B's own workers, schedules and queue pauses only."""
    ns_a, ns_b = unique("py-ns-a"), unique("py-ns-b")
    ran_in_b: list[Any] = []
    worker_b = start_worker(
        {"job": lambda tag: ran_in_b.append(tag) or f"b:{tag}"}, queue_name, namespace=ns_b, worker_id=unique("wb")
    )
    app_a = conveyor.Conveyor(server, namespace=ns_a)
    app_b = conveyor.Conveyor(server, namespace=ns_b)
    job = app_a.task(name="job")(lambda tag: f"a:{tag}")
    client_a, client_b = app_a.client, app_b.client
    try:
        wait_until(lambda: len(client_b.workers()) == 1, 10, "B's worker session")
        [listed] = client_b.workers()
        assert listed.worker_id == worker_b.worker.worker_id and listed.namespace == ns_b
        assert client_a.workers() == []

        # A's task waits in queue_name: B's worker, serving the same queue
        # and task name, takes B's task submitted after it, never A's.
        first = app_a.send_task("job", ["a-1"], queue=queue_name)
        assert first.client.namespace == ns_a
        assert app_b.send_task("job", ["b-1"], queue=queue_name).get(timeout=10) == "b:b-1"
        assert first.state == "PENDING" and client_a.get(first.id).namespace == ns_a
        assert ran_in_b == ["b-1"]

        # From B, A's task does not exist: reads, waits, handles and cancels.
        not_found(lambda: client_b.get(first.id))
        not_found(lambda: client_b.wait(first.id, timeout=2))
        not_found(lambda: list(client_b.watch(first.id, timeout=2)))
        not_found(lambda: app_b.AsyncResult(first.id).state)
        not_found(lambda: client_b.cancel(first.id))
        not_found(lambda: asyncio.run(_async_get(server, ns_b, first.id)))
        assert asyncio.run(_async_get(server, ns_a, first.id)).id == first.id

        # Schedules and queue pauses are per namespace too.
        schedule_id = unique("py-ns-schedule")
        client_a.schedules.create(schedule_id, "job", 3600, ["scheduled"], queue=unique("nobody"))
        assert schedule_id in [s.id for s in client_a.schedules.list()]
        assert schedule_id not in [s.id for s in client_b.schedules.list()]
        not_found(lambda: client_b.schedules.get(schedule_id))
        client_b.pause_queue(queue_name)  # B's queue_name, not A's

        # A's worker runs A's task.
        worker_a = start_worker(app_a, queue_name, worker_id=unique("wa"))
        assert first.get(timeout=10) == "a:a-1"
        task = client_a.get(first.id)
        assert task.worker_id == worker_a.worker.worker_id
        assert ran_in_b == ["b-1"]
        assert [w.worker_id for w in client_b.workers()] == [worker_b.worker.worker_id]
        assert [w.worker_id for w in client_a.workers()] == [worker_a.worker.worker_id]

        # Workflows: A's handle reads and cancels through A's namespace.
        group_result = conveyor.group(job.s("g1"), job.s("g2")).apply_async(queue=queue_name)
        assert group_result.get(timeout=10) == ["a:g1", "a:g2"]
        assert [r.client.namespace for r in group_result.results] == [ns_a, ns_a]
        not_found(lambda: app_b.WorkflowResult(group_result.id).state)
        later = (job.s("l1") | job.si("l2")).apply_async(queue=queue_name, countdown=60)
        not_found(lambda: client_b.cancel_workflow(later.id))
        assert later.revoke() == 2 and later.state == "CANCELLED"
        client_a.schedules.delete(schedule_id)
        client_b.resume_queue(queue_name)
        assert ran_in_b == ["b-1"]
    finally:
        app_a.close()
        app_b.close()


async def _async_namespace(server: str) -> tuple[str, str]:
    async with conveyor.aio.AsyncClient(server) as client:
        return client.namespace, client.with_namespace("other").namespace


async def _async_get(server: str, namespace: str, task_id: str):
    async with conveyor.aio.AsyncClient(server, namespace=namespace) as client:
        return await client.get(task_id)


# --- authorization ------------------------------------------------------------------

ROLES = ("producer", "worker", "reader", "admin")
# What each role may do in its namespace (docs/security.md): producer =
# submit + cancel + read; worker = the worker stream only; reader = read;
# admin = everything.
GRANTS = {
    "producer": {"submit", "cancel", "read"},
    "worker": {"work"},
    "reader": {"read"},
    "admin": {"submit", "cancel", "read", "admin", "work"},
}


def wrapped_calls(queue: str) -> list[tuple[str, str, Callable[[conveyor.Client], Any]]]:
    """(name, permission, call) of every call the SDK wraps but the worker
    session; made-up ids where a call takes one (allowed then means any
    answer but an auth error, NOT_FOUND included)."""
    nobody = f"{queue}-nobody"  # a queue no worker serves
    return [
        ("submit", "submit", lambda c: c.submit("echo", ["x"], queue=nobody)),
        ("submit_many", "submit", lambda c: c.submit_many([("echo", ["x"], {}, {"queue": nobody})] * 2)),
        ("submit_workflow", "submit", lambda c: c.submit_workflow(
            conveyor.group(conveyor.signature("echo", ["x"]), conveyor.signature("echo", ["y"])), queue=nobody)),
        ("cancel", "cancel", lambda c: c.cancel(MADE_UP_ID)),
        ("cancel_workflow", "cancel", lambda c: c.cancel_workflow(MADE_UP_ID)),
        ("get", "read", lambda c: c.get(MADE_UP_ID)),
        ("wait", "read", lambda c: c.wait(MADE_UP_ID, timeout=2)),
        ("watch", "read", lambda c: list(c.watch(MADE_UP_ID, timeout=2))),
        ("dead_letters", "read", lambda c: list(c.dead_letters())),
        ("get_workflow", "read", lambda c: c.get_workflow(MADE_UP_ID)),
        ("wait_workflow", "read", lambda c: c.wait_workflow(MADE_UP_ID, timeout=2)),
        ("watch_workflow", "read", lambda c: list(c.watch_workflow(MADE_UP_ID, timeout=2))),
        ("workers", "read", lambda c: c.workers()),
        ("schedules.get", "read", lambda c: c.schedules.get("py-no-such-schedule")),
        ("schedules.list", "read", lambda c: c.schedules.list()),
        ("schedules.runs", "read", lambda c: c.schedules.runs("py-no-such-schedule")),
        ("replay", "admin", lambda c: c.replay(MADE_UP_ID)),
        ("forget", "admin", lambda c: c.forget(MADE_UP_ID)),
        ("schedules.create", "admin", lambda c: c.schedules.create(unique("py-auth"), "echo", 3600, ["x"], queue=nobody)),
        ("schedules.update", "admin", lambda c: c.schedules.update("py-no-such-schedule", "echo", 3600, queue=nobody)),
        ("schedules.pause", "admin", lambda c: c.schedules.pause("py-no-such-schedule")),
        ("schedules.resume", "admin", lambda c: c.schedules.resume("py-no-such-schedule")),
        ("schedules.trigger", "admin", lambda c: c.schedules.trigger("py-no-such-schedule")),
        ("schedules.delete", "admin", lambda c: c.schedules.delete("py-no-such-schedule")),
        ("pause_queue", "admin", lambda c: c.pause_queue(nobody)),
        ("resume_queue", "admin", lambda c: c.resume_queue(nobody)),
    ]


def outcome(call: Callable[[], Any]) -> BaseException | None:
    """None when the call is allowed (it succeeds, or fails with an error
    that is not about auth, e.g. NOT_FOUND); else the auth error."""
    try:
        call()
    except (conveyor.PermissionDenied, conveyor.Unauthenticated) as error:
        return error
    except conveyor.ConveyorError as error:
        auth = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
        assert error.code not in auth, f"{error!r}: an auth status not raised as its own class"
    return None


def check_denied(error: BaseException | None, what: str, principal: str | None = None) -> None:
    assert isinstance(error, conveyor.PermissionDenied), f"{what}: expected PermissionDenied, got {error!r}"
    assert isinstance(error, PermissionError) and error.code == grpc.StatusCode.PERMISSION_DENIED
    assert error.details and error.details in str(error), f"{what}: the server's message is not carried: {error}"
    if principal is not None:
        assert f"'{principal}'" in error.details, f"{what}: the message does not name the principal: {error.details}"


def check_unauthenticated(error: BaseException | None, what: str) -> None:
    assert isinstance(error, conveyor.Unauthenticated), f"{what}: expected Unauthenticated, got {error!r}"
    assert not isinstance(error, conveyor.PermissionDenied)
    assert error.code == grpc.StatusCode.UNAUTHENTICATED and error.details and error.details in str(error)


def write_auth_file(path: Path, tokens: dict[str, str]) -> None:
    """Principals named by role, each holding that role in "team-a"; written
    whole, then moved into place, so that the server never reads half."""
    entries = []
    for role, token in tokens.items():
        digest = hashlib.sha256(token.encode()).hexdigest()
        entries.append(f'[[principal]]\nname = "{role}"\ntoken_sha256 = ["{digest}"]\nroles = {{ "team-a" = ["{role}"] }}\n')
    partial = path.with_suffix(".tmp")
    partial.write_text("\n".join(entries))
    os.replace(partial, path)


def session_opens(worker: conveyor.Worker, timeout: float = 10.0) -> None:
    """Runs `worker` until its first session is welcomed, then stops it."""
    thread_worker = ThreadWorker(worker).start()
    try:
        wait_until(lambda: worker.session_id is not None or not thread_worker.thread.is_alive(), timeout, "a session")
        assert worker.session_id is not None, f"the worker stopped without a session: {thread_worker.error!r}"
    finally:
        thread_worker.stop()


def test_parity_authorization(tmp_path, queue_name):
    tokens = {role: f"{role}-{uuid.uuid4().hex}" for role in ROLES}
    auth_file = tmp_path / "auth.toml"
    write_auth_file(auth_file, tokens)
    with dev_server(
        "--auth-file", str(auth_file), "--metrics-listen", "off", log_name="python-client-auth-server.log"
    ) as address:
        calls = wrapped_calls(queue_name)
        clients = {
            (role, ns): conveyor.Client(address, token=tokens[role], namespace=ns)
            for role in ROLES
            for ns in ("team-a", "team-b")
        }
        try:
            # Each role in team-a: allowed or PermissionDenied exactly per its grants;
            # in team-b, where it has no role, every call is PermissionDenied.
            for role in ROLES:
                for name, permission, call in calls:
                    error = outcome(lambda: call(clients[(role, "team-a")]))
                    if permission in GRANTS[role]:
                        assert error is None, f"{role} in team-a: {name} refused: {error!r}"
                    else:
                        check_denied(error, f"{role} in team-a: {name}", role)
                    check_denied(outcome(lambda: call(clients[(role, "team-b")])), f"{role} in team-b: {name}", role)

            # The worker session (checked against Hello.namespace).
            def worker(token: str | None, namespace: str, tasks: dict[str, Any] | None = None) -> conveyor.Worker:
                return conveyor.Worker(
                    address, tasks=tasks or {"echo": lambda x: x}, queues=[queue_name], token=token, namespace=namespace
                )

            for role in ROLES:
                if "work" in GRANTS[role]:
                    session_opens(worker(tokens[role], "team-a"))
                else:
                    check_denied(refused(worker(tokens[role], "team-a")), f"{role}'s worker in team-a", role)
                check_denied(refused(worker(tokens[role], "team-b")), f"{role}'s worker in team-b", role)
            running = ThreadWorker(worker(tokens["worker"], "team-a", {"echo": lambda x: f"echo {x}"})).start()
            try:
                producer = clients[("producer", "team-a")]
                assert producer.result(producer.submit("echo", ["hi"], queue=queue_name), timeout=10) == "echo hi"
            finally:
                running.stop()

            # No token, a token the server does not know: Unauthenticated, every call and the worker.
            for label, token in (("no token", None), ("a bad token", "not-a-token")):
                with conveyor.Client(address, token=token, namespace="team-a") as client:
                    for name, _, call in calls:
                        check_unauthenticated(outcome(lambda: call(client)), f"{label}: {name}")
                check_unauthenticated(refused(worker(token, "team-a")), f"{label}: the worker")

            # A revoked token: the reader leaves the file; once the server has
            # re-read it, the reader's token is refused and the others still work.
            write_auth_file(auth_file, {role: token for role, token in tokens.items() if role != "reader"})
            reader = clients[("reader", "team-a")]
            wait_until(
                lambda: isinstance(outcome(lambda: reader.get(MADE_UP_ID)), conveyor.Unauthenticated),
                15,
                "the server to refuse the revoked reader token",
            )
            for name, _, call in calls:
                check_unauthenticated(outcome(lambda: call(reader)), f"revoked: {name}")
            check_unauthenticated(refused(worker(tokens["reader"], "team-a")), "revoked: the worker")
            assert outcome(lambda: clients[("producer", "team-a")].get(MADE_UP_ID)) is None
            check_denied(outcome(lambda: clients[("producer", "team-a")].forget(MADE_UP_ID)), "producer forget", "producer")
        finally:
            for client in clients.values():
                client.close()
