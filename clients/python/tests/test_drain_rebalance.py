"""A Drain for a rebalance: the worker's next session goes out on a new TCP
connection, even while a handler's `AsyncClient` keeps a connection open to
the same address on the worker's loop (gRPC core shares connections between
channels of the same target and arguments), so that a load balancer, which
balances connections, may place the session on another dispatcher replica."""

from __future__ import annotations

import logging
import queue
import threading
from concurrent import futures

import grpc
from conftest import ThreadWorker, wait_until
from google.protobuf import duration_pb2

import conveyor
from conveyor.aio import AsyncClient
from conveyor.v1 import dispatch_service_pb2 as pb
from conveyor.v1 import dispatch_service_pb2_grpc


class RebalancingDispatcher(dispatch_service_pb2_grpc.DispatchServiceServicer):
    """Session 1: assigns `connect`, drains (DRAIN_REASON_REBALANCE) once it
    started, ends the stream when the worker closes its half. Session 2:
    assigns `close`. Records each session's peer and the outcomes."""

    def __init__(self) -> None:
        self.peers: list[str] = []
        self.outcomes: list[tuple[str, str]] = []
        self.release = threading.Event()

    def Connect(self, request_iterator, context):  # noqa: N802 - generated name
        index = len(self.peers)
        self.peers.append(context.peer())
        requests: queue.Queue[pb.ConnectRequest | None] = queue.Queue()

        def read() -> None:
            try:
                for request in request_iterator:
                    requests.put(request)
            except Exception:  # noqa: BLE001 - the stream ended
                pass
            requests.put(None)

        threading.Thread(target=read, daemon=True).start()
        assert requests.get(timeout=10).WhichOneof("message") == "hello"
        yield pb.ConnectResponse(welcome=pb.Welcome(session_id=f"s{index}", max_credits=8))
        name = "connect" if index == 0 else "close"
        task = pb.Assignment(task_id=f"t{index}", name=name, attempt=1, lease_token=7 + index)
        yield pb.ConnectResponse(assignments=pb.Assignments(assignments=[task]))
        while (request := requests.get(timeout=10)) is not None:
            kind = request.WhichOneof("message")
            if kind == "task_started" and index == 0:
                drain = pb.Drain(grace=duration_pb2.Duration(seconds=10), reason=pb.DRAIN_REASON_REBALANCE)
                yield pb.ConnectResponse(drain=drain)
            elif kind == "report_outcomes":
                self.outcomes.extend((o.task_id, o.WhichOneof("outcome")) for o in request.report_outcomes.outcomes)
                if index > 0:
                    self.release.wait(30)
                    return
        # The worker closed its half: end the stream, as a dispatcher does.


def test_parity_reconnect_after_drain_on_a_new_connection(caplog):
    caplog.set_level(logging.INFO, logger="conveyor.worker")
    dispatcher = RebalancingDispatcher()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    dispatch_service_pb2_grpc.add_DispatchServiceServicer_to_server(dispatcher, server)
    address = f"http://127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    clients: list[AsyncClient] = []

    async def connect() -> None:
        # A client on the worker's loop, with the same channel options,
        # connected (to an RPC the fake does not serve) and left open.
        client = AsyncClient(address)
        clients.append(client)
        try:
            await client.state("00000000-0000-7000-8000-000000000001")
        except conveyor.ConveyorError:
            pass

    async def close() -> None:
        await clients[0].close()

    worker = conveyor.Worker(address, tasks={"connect": connect, "close": close}, concurrency=2)
    runner = ThreadWorker(worker).start()
    try:
        wait_until(lambda: len(dispatcher.outcomes) >= 2, 10, "the session after the drain and its task")
        assert dispatcher.outcomes == [("t0", "result"), ("t1", "result")], (
            f"the running task was not reported before the drain ended: {dispatcher.outcomes}"
        )
        first, second = dispatcher.peers
        assert first != second, f"the session after a rebalance came on the drained connection ({first})"
        assert "session drained (rebalance), reconnecting on a new connection" in caplog.text
    finally:
        dispatcher.release.set()
        runner.stop()
        server.stop(grace=0)
