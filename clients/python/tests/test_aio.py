"""conveyor.aio.AsyncClient against a real `conveyor dev` (each test runs
its own event loop with asyncio.run; the worker runs in a thread)."""

import asyncio
import socket
import time
import uuid

import grpc
import pytest

import conveyor
from conveyor import TaskState
from conveyor.aio import AsyncClient


async def multiply(a, b):
    await asyncio.sleep(0)
    return a * b


def fail(message):
    raise conveyor.Reject(ValueError(message))


def test_submit_result_and_many(server, start_worker, queue_name):
    start_worker({"multiply": multiply, "fail": fail}, queue_name)

    async def scenario():
        async with AsyncClient(server) as client:
            task_id = await client.submit("multiply", [6, 7], queue=queue_name)
            assert await client.result(task_id, timeout=10) == 42
            assert await client.state(task_id) == TaskState.SUCCEEDED
            ids = await client.submit_many(
                [("multiply", [i, 2], None, {"queue": queue_name}) for i in range(1001)]
            )
            assert len(ids) == 1001
            values = await asyncio.gather(*(client.result(i, timeout=30) for i in ids[:50]))
            assert values == [i * 2 for i in range(50)]
            failed = await client.submit("fail", ["boom"], queue=queue_name)
            with pytest.raises(conveyor.TaskFailed) as error:
                await client.result(failed, timeout=10)
            assert (error.value.type, error.value.message) == ("ValueError", "boom")
            assert error.value.traceback and not error.value.retryable

    asyncio.run(scenario())


def test_errors_timeout_watch_and_cancel(server, start_worker, queue_name):
    async def scenario():
        async with AsyncClient(server) as client:
            with pytest.raises(conveyor.ConveyorError) as empty:
                await client.submit("", [])
            assert empty.value.code == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(conveyor.ConveyorError) as missing:
                await client.get(str(uuid.uuid4()))
            assert missing.value.code == grpc.StatusCode.NOT_FOUND

            waiting = await client.submit("multiply", [2, 2], queue=queue_name)
            started = time.monotonic()
            with pytest.raises(conveyor.TaskTimeout) as timeout:
                await client.wait(waiting, timeout=0.3)
            assert timeout.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - started < 3

            cancelled = await client.submit("multiply", [1, 1], queue=queue_name)
            assert await client.cancel(cancelled) is True
            assert await client.cancel(cancelled) is False
            with pytest.raises(conveyor.TaskCancelled):
                await client.result(cancelled, timeout=5)

            states = []
            watch = client.watch(waiting, timeout=20)
            first = await watch.__anext__()
            states.append(TaskState.from_proto(first.state))
            start_worker({"multiply": multiply}, queue_name)
            async for task in watch:
                states.append(TaskState.from_proto(task.state))
            assert states[0] == TaskState.QUEUED and states[-1] == TaskState.SUCCEEDED, states
            assert await client.result(waiting, timeout=1) == 4

    asyncio.run(scenario())


async def _failover(dead, server, queue):
    async with conveyor.aio.AsyncClient([dead, server]) as client:
        task_id = await client.submit("nobody", queue=queue)  # keyed by default: retried on the next address
        assert (await client.get(task_id)).id == task_id


def test_async_client_fails_over(server, queue_name):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    asyncio.run(_failover(dead, server, queue_name))
