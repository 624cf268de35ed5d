"""A scripted fake dispatcher: a grpcio server implementing
`conveyor.v1.DispatchService/Connect` from the generated Python code, which
hands every worker stream to the test. The test plays the dispatcher's side
message by message (Welcome, Assignments, CancelAssignment, Drain, a reset
stream) and reads what the worker sent, each message stamped with the
monotonic time it arrived; each session records the worker's peer address,
which tells whether two sessions share a TCP connection.

Only `Connect` is served: the other RPCs of the service answer UNIMPLEMENTED,
which no worker calls.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
from google.protobuf import duration_pb2

from conveyor.v1 import dispatch_service_pb2 as pb
from conveyor.v1 import dispatch_service_pb2_grpc, task_pb2

# The longest a scripted step waits for the worker before the test fails.
STEP = 10.0


@dataclass
class Received:
    """One message from the worker (`kind` is its oneof case), or the end of
    the worker's half of the stream (`kind == "eof"`, `message` None)."""

    at: float
    kind: str
    message: object


class _End:
    """Ends the response stream: OK when `code` is None, else with a status."""

    def __init__(self, code: grpc.StatusCode | None = None, details: str = ""):
        self.code = code
        self.details = details


class Session:
    """One `Connect` stream as the test sees it."""

    def __init__(self, context: grpc.ServicerContext):
        self.opened_at = time.monotonic()
        self.context = context
        # The worker's end of the TCP connection ("ipv4:127.0.0.1:54321"):
        # two streams with the same peer share one connection.
        self.peer = context.peer()
        self.metadata = dict(context.invocation_metadata())
        self._inbox: queue.Queue[Received] = queue.Queue()
        self._outbox: queue.Queue[object] = queue.Queue()
        self.log: list[Received] = []  # everything read so far, heartbeats too
        self.closed_by_worker: float | None = None
        self.granted = 0  # credits granted on this stream, read so far

    def _take(self, item: Received) -> Received:
        self.log.append(item)
        if item.kind == "eof":
            self.closed_by_worker = item.at
        elif item.kind == "grant_credits":
            self.granted += item.message.credits
        return item

    # --- the worker's side ---------------------------------------------------------------

    def _read(self, requests) -> None:
        try:
            for request in requests:
                kind = request.WhichOneof("message") or "unknown"
                self._inbox.put(Received(time.monotonic(), kind, getattr(request, kind, None)))
        except Exception:  # noqa: BLE001 - a reset stream ends the worker's half too
            pass
        self._inbox.put(Received(time.monotonic(), "eof", None))

    def next(self, timeout: float = STEP, skip_heartbeats: bool = True) -> Received:
        """The worker's next message (heartbeats skipped unless asked); fails
        the test when none arrives within `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                item = self._inbox.get(timeout=max(0.0, remaining))
            except queue.Empty:
                raise AssertionError(
                    f"the worker sent nothing within {timeout:.1f}s; got so far: {self.kinds()}"
                ) from None
            self._take(item)
            if skip_heartbeats and item.kind == "heartbeat":
                continue
            return item

    def poll(self, timeout: float) -> Received | None:
        """The worker's next message, heartbeats included, or None when none
        arrives within `timeout` (not a failure)."""
        try:
            item = self._inbox.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        return self._take(item)

    def collect(self, seconds: float) -> list[Received]:
        """Everything the worker sends during `seconds`."""
        deadline = time.monotonic() + seconds
        got = []
        while (remaining := deadline - time.monotonic()) > 0:
            item = self.poll(remaining)
            if item is not None:
                got.append(item)
                if item.kind == "eof":
                    break
        return got

    def await_credits(self, total: int, timeout: float = STEP) -> int:
        """Reads until `total` credits in all were granted on this stream."""
        deadline = time.monotonic() + timeout
        while self.granted < total:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.granted} credits granted within {timeout:.1f}s, want {total}")
            item = self.poll(remaining)
            if item is not None and item.kind == "eof":
                raise AssertionError(f"the worker closed the stream with {self.granted} credits granted, want {total}")
        return self.granted

    def expect(self, kind: str, timeout: float = STEP) -> Received:
        item = self.next(timeout)
        assert item.kind == kind, f"expected {kind}, got {item.kind}: {item.message}"
        return item

    def until(self, predicate, timeout: float = STEP, what: str = "a message") -> Received:
        """Reads (heartbeats skipped) until `predicate(item)` holds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {what} within {timeout:.1f}s; got: {self.kinds()}")
            item = self.next(remaining)
            if predicate(item):
                return item
            if item.kind == "eof":
                raise AssertionError(f"the worker closed the stream before {what}; got: {self.kinds()}")

    def outcomes(self, count: int, timeout: float = STEP) -> dict[str, pb.TaskOutcome]:
        """Reads until `count` outcomes arrived; by task id."""
        found: dict[str, pb.TaskOutcome] = {}
        deadline = time.monotonic() + timeout
        while len(found) < count:
            item = self.until(
                lambda i: i.kind in ("report_outcomes", "eof"),
                max(0.0, deadline - time.monotonic()),
                f"{count} outcome(s)",
            )
            for outcome in item.message.outcomes:
                found[outcome.task_id] = outcome
        return found

    def kinds(self) -> list[str]:
        return [item.kind for item in self.log if item.kind != "heartbeat"]

    # --- the dispatcher's side -----------------------------------------------------------

    def send(self, **message) -> None:
        self._outbox.put(pb.ConnectResponse(**message))

    def welcome(self, heartbeat: float = 60.0, lease_ttl: float = 180.0, max_credits: int = 1024) -> pb.Hello:
        """Reads Hello, answers Welcome, returns the Hello."""
        hello = self.expect("hello").message
        self.send(
            welcome=pb.Welcome(
                session_id=f"fake-{id(self):x}",
                heartbeat_interval=duration(heartbeat),
                lease_ttl=duration(lease_ttl),
                max_credits=max_credits,
            )
        )
        return hello

    def assign(self, *assignments: pb.Assignment) -> None:
        self.send(assignments=pb.Assignments(assignments=list(assignments)))

    def cancel(self, task_id: str, reason: str = "revoked") -> None:
        self.send(cancel_assignment=pb.CancelAssignment(task_id=task_id, reason=reason))

    def drain(self, grace: float, reason: int = pb.DRAIN_REASON_UNSPECIFIED) -> None:
        """Sends Drain; `reason` is a DrainReason (pb.DRAIN_REASON_REBALANCE, ...)."""
        self.send(drain=pb.Drain(grace=duration(grace), reason=reason))

    def end(self, code: grpc.StatusCode | None = None, details: str = "") -> None:
        """Ends the stream: cleanly (OK) or with a status, as a dispatcher
        that resets the stream does."""
        self._outbox.put(_End(code, details))

    def _responses(self):
        while True:
            try:
                item = self._outbox.get(timeout=0.2)
            except queue.Empty:
                if not self.context.is_active():
                    return
                continue
            if isinstance(item, _End):
                if item.code is not None:
                    self.context.abort(item.code, item.details)
                return
            yield item


class _Servicer(dispatch_service_pb2_grpc.DispatchServiceServicer):
    def __init__(self, sessions: queue.Queue[Session]):
        self.sessions = sessions

    def Connect(self, request_iterator, context):  # noqa: N802 - generated name
        session = Session(context)
        threading.Thread(target=session._read, args=(request_iterator,), daemon=True).start()
        self.sessions.put(session)
        yield from session._responses()


class FakeDispatcher:
    """A grpcio server on a free loopback port; `url` is what workers dial."""

    def __init__(self) -> None:
        self._sessions: queue.Queue[Session] = queue.Queue()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        dispatch_service_pb2_grpc.add_DispatchServiceServicer_to_server(_Servicer(self._sessions), self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.addr = f"127.0.0.1:{port}"
        self.url = f"http://{self.addr}"

    def session(self, timeout: float = STEP) -> Session:
        """The next stream a worker opens."""
        try:
            return self._sessions.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no worker connected to {self.url} within {timeout:.1f}s") from None

    def maybe_session(self, timeout: float) -> Session | None:
        try:
            return self._sessions.get(timeout=timeout)
        except queue.Empty:
            return None

    def stop(self) -> None:
        self.server.stop(grace=0)


def duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=int(round((seconds - whole) * 1e9)))


def payload(data: bytes | str, content_type: str = "application/json") -> task_pb2.Payload:
    if isinstance(data, str):
        data = data.encode()
    return task_pb2.Payload(data=data, content_type=content_type)


_ids = iter(range(1, 1 << 30))


def assignment(
    name: str,
    args: list[task_pb2.Payload] = (),
    kwargs: dict[str, task_pb2.Payload] | None = None,
    *,
    lease_token: int | None = None,
    task_id: str | None = None,
    soft_time_limit: float | None = None,
) -> pb.Assignment:
    """An Assignment with a fresh task id and lease token unless given."""
    n = next(_ids)
    a = pb.Assignment(
        task_id=task_id or f"00000000-0000-7000-8000-{n:012x}",
        name=name,
        args=list(args),
        attempt=1,
        lease_token=lease_token if lease_token is not None else 1000 + n,
    )
    for key, value in (kwargs or {}).items():
        a.kwargs[key].CopyFrom(value)
    if soft_time_limit is not None:
        a.soft_time_limit.CopyFrom(duration(soft_time_limit))
    return a
