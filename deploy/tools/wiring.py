"""The wiring checks of scripts/test-compose-topology, against the compose
topology running as local processes (the wiring.json that topology.py plan
wrote). Every client call goes to the one address clients are given, the
published submission service, except the per-dispatcher worker listings.

    python wiring.py WIRING_JSON CONVEYOR_BIN [--deadline SECONDS]

Needs the Python SDK (conveyor-client) and grpcio. Prints one line per
check and ends with `deploy wiring: N passed, N failed`; exit 1 on a failure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import grpc

from conveyor import Client
from conveyor.v1 import task_pb2

passed = 0
failed = 0


def check(what: str, fn: Callable[[], Any]) -> Any:
    global passed, failed
    try:
        detail = fn()
    except Exception as error:  # noqa: BLE001 (each check reports its own failure)
        failed += 1
        print(f"  FAIL {what}: {type(error).__name__}: {error}", flush=True)
        return None
    passed += 1
    print(f"  ok   {what}" + (f": {detail}" if isinstance(detail, str) and detail else ""), flush=True)
    return detail


def wait_for(what: str, probe: Callable[[], Any], deadline: float) -> Any:
    """Polls `probe` until it returns a true value or `deadline` passes."""
    last: Any = None
    while True:
        try:
            value = probe()
            if value:
                return value
            last = value
        except Exception as error:  # noqa: BLE001 (retried until the deadline)
            last = error
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not true by the deadline (last: {last!r})")
        time.sleep(0.1)


_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def health(addr: str, service: str = "") -> str:
    """grpc.health.v1.Health/Check with hand-encoded protobuf (field 1, a
    string), so that no health package is needed."""
    with grpc.insecure_channel(addr) as channel:
        call = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        name = service.encode()
        request = b"\x0a" + bytes([len(name)]) + name if name else b""
        response = call(request, timeout=5)
    status = response[1] if len(response) >= 2 and response[0] == 0x08 else 0
    return _STATUS.get(status, str(status))


def http_get(addr: str, path: str) -> str:
    with urllib.request.urlopen(f"http://{addr}{path}", timeout=5) as response:  # noqa: S310 (loopback)
        return response.read().decode()


def cli(bin_: str, *args: str, timeout: float = 60) -> str:
    done = subprocess.run([bin_, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`conveyor {' '.join(args)}` exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout.strip()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wiring", help="wiring.json from topology.py plan")
    parser.add_argument("conveyor_bin")
    parser.add_argument("--deadline", type=float, default=60, help="seconds for the whole run")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.deadline
    wiring = json.loads(open(args.wiring).read())
    servers = [i for i in wiring["instances"] if i["roles"]]
    entry = next(i for i in servers if i["published"])
    addr = entry["grpc"]
    url = f"http://{addr}"
    dispatchers = [i for i in servers if "dispatch" in i["roles"]]
    print(f"clients' one address: {url} ({entry['name']})", flush=True)

    # 1. Every process is up: gRPC health and the admin /healthz.
    for inst in servers:
        check(f"{inst['name']} gRPC health", lambda i=inst: _expect(health(i["grpc"]), "SERVING"))
        check(f"{inst['name']} /healthz", lambda i=inst: _expect(http_get(i["metrics"], "/healthz").strip(), "ok"))

    # 2. Both workers hold a session, each on its own dispatcher.
    def langs() -> dict[str, str]:
        seen = {}
        for inst in dispatchers:
            with Client(f"http://{inst['grpc']}") as c:
                for w in c.workers():
                    seen[w.worker_id] = w.language
        return seen if {"python", "go"} <= set(seen.values()) else {}

    workers = check(
        "python and go workers connected",
        lambda: wait_for("workers of both languages", langs, deadline),
    )

    def spread() -> str:
        for inst in dispatchers:
            with Client(f"http://{inst['grpc']}") as c:
                if not c.workers():
                    raise AssertionError(f"{inst['name']} has no worker session")
        return ""

    check("each dispatcher has its own worker", spread)

    # 3. The CLI through the one address: submit (submission), run (dispatch,
    # a worker), wait (forwarded to results).
    # The command deploy/README.md shows, on this run's port.
    check(
        f"conveyor submit add --arg 2 --arg 3 --wait --server {url}",
        lambda: _expect(cli(args.conveyor_bin, "submit", "add", "--arg", "2", "--arg", "3", "--wait", "--server", url), "5"),
    )

    with Client(url) as client:
        # 4. The task defaults file reached submission: `add` gets its retries.
        def defaults() -> str:
            task_id = client.submit("add", [20, 22])
            task = client.wait(task_id, timeout=30)
            _expect(client.result(task_id, timeout=5), 42)
            retries = task.options.retry.max_retries
            _expect(retries, 3)
            got = cli(args.conveyor_bin, "get", task_id, "--server", url)
            if "SUCCEEDED" not in got:
                raise AssertionError(f"`conveyor get` via submission: {got}")
            return f"max_retries={retries} from task-defaults.toml; `conveyor get` via submission says SUCCEEDED"

        check("task defaults applied, result via submission", defaults)

        # 5. Both languages run tasks: more sleeps than one worker has slots.
        def both_run() -> str:
            ids = client.submit_many([("sleep", [0.3]) for _ in range(24)])
            ran = {}
            for task_id in ids:
                task = client.wait(task_id, timeout=30)
                _expect(task_pb2.TaskState.Name(task.state), "TASK_STATE_SUCCEEDED")
                lang = (workers or {}).get(task.worker_id, "?")
                ran[lang] = ran.get(lang, 0) + 1
            if not {"python", "go"} <= set(ran):
                raise AssertionError(f"tasks ran on {ran}; expected both workers")
            return ", ".join(f"{k} {v}" for k, v in sorted(ran.items()))

        check("24 sleep tasks ran on both workers", both_run)

        # 6. Scheduling through submission (forwarded), and its runs back
        # through the submission peer to a worker.
        def schedules() -> str:
            ids = sorted(s.id for s in client.schedules.list())
            for wanted in ("example-add", "example-nightly-sum"):
                if wanted not in ids:
                    raise AssertionError(f"schedule {wanted} missing from ListSchedules: {ids}")
            task_id = client.schedules.trigger("example-add")
            _expect(client.result(task_id, timeout=30), 42)
            return f"ListSchedules has {ids}; TriggerSchedule example-add ran: 42"

        check("schedules file loaded; a triggered run completes", schedules)

    # 7. The one address answers health for every service: it serves or
    # forwards each (a role with no peer would be NOT_FOUND). A forwarded
    # service's health is its peer's, probed in the background (sooner while
    # the peer is not serving): SERVING once the peer has been seen up.
    for service in ("conveyor.v1.SubmissionService", "conveyor.v1.ResultsService",
                    "conveyor.v1.DispatchService", "conveyor.v1.SchedulingService"):
        check(
            f"health of {service} via submission",
            lambda s=service: wait_for(
                f"{s} SERVING via submission",
                lambda: _try(lambda: health(addr, s)) == "SERVING",
                time.monotonic() + 10,
            ),
        )

    # 8. The queue-depth gauge the KEDA trigger reads, on every dispatcher.
    for inst in dispatchers:
        check(
            f"{inst['name']} exports conveyor_queue_depth",
            lambda i=inst: _all(["conveyor_queue_depth{" in http_get(i["metrics"], "/metrics")], "gauge missing"),
        )

    print(f"deploy wiring: {passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


def _expect(got: Any, want: Any) -> str:
    if str(got) != str(want):
        raise AssertionError(f"got {got!r}, want {want!r}")
    return ""


def _all(values: list[bool], message: str) -> str:
    if not all(values):
        raise AssertionError(message)
    return ""


def _try(fn: Callable[[], Any]) -> str:
    try:
        return str(fn())
    except grpc.RpcError as error:
        return f"{error.code().name}: {error.details()}"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
