"""Large payloads against a real `conveyor dev`: batches split by bytes,
workers receiving tasks of ~4 MB, clients reading them back."""

import asyncio
import logging

from conftest import wait_until

import conveyor
from conveyor import TaskState
from conveyor._common import MAX_BATCH_BYTES, MAX_TASKS_PER_BATCH, split_batches
from conveyor.aio import AsyncClient

KB = 1024
ARG_256K = 256 * KB
# Four arguments of 900 KB: about 3.5 MB in one task.
ARG_900K = 900 * KB
# Four arguments as large as the server takes (1 MiB each with their JSON
# quotes, 4 MiB in all): the task's assignment and its GetTask answer are
# above the 4 MiB that gRPC libraries receive by default.
ARG_FULL = 1024 * KB - 6


def arg(i: int, size: int) -> str:
    """A string of `size` characters that starts with its index."""
    head = f"{i:06d}:"
    return head + "x" * (size - len(head))


def total_length(*args):
    return sum(len(a) for a in args)


def test_split_batches_by_count_and_bytes():
    small = [conveyor.build_spec("t", [i]) for i in range(2500)]
    assert [len(b) for b in split_batches(small)] == [1000, 1000, 500]
    assert [s for b in split_batches(small) for s in b] == small

    big = [conveyor.build_spec("t", [arg(i, ARG_256K)]) for i in range(130)]
    batches = list(split_batches(big))
    assert [s for b in batches for s in b] == big
    assert len(batches) == 3
    for batch in batches:
        assert len(batch) <= MAX_TASKS_PER_BATCH
        assert sum(s.ByteSize() + 6 for s in batch) <= MAX_BATCH_BYTES

    # A task above the byte limit alone still travels, in its own call.
    huge = conveyor.build_spec("t", ["y" * (MAX_BATCH_BYTES + 1)])
    assert [len(b) for b in split_batches([small[0], huge, small[1]])] == [1, 1, 1]
    assert list(split_batches([])) == []


def test_send_many_300_tasks_of_256k(server, client, queue_name):
    """The batch that once failed with RESOURCE_EXHAUSTED (75 MB in one call)."""
    idle = queue_name + "-idle"
    with conveyor.Conveyor(server) as app:
        results = app.send_many([app.signature("echo", [arg(i, ARG_256K)], queue=idle) for i in range(300)])
    ids = [r.id for r in results]
    assert len(ids) == len(set(ids)) == 300
    for i, task_id in enumerate(ids):  # each id is the task submitted at its place
        task = client.get(task_id)
        assert TaskState.from_proto(task.state) == TaskState.QUEUED
        (value,) = [conveyor.decode(a) for a in task.args]
        assert value[:7] == f"{i:06d}:" and len(value) == ARG_256K


def test_async_submit_many_splits_by_bytes(server, client, queue_name):
    idle = queue_name + "-idle"

    async def scenario():
        async with AsyncClient(server) as aclient:
            return await aclient.submit_many(
                [("echo", [arg(i, ARG_256K)], None, {"queue": idle}) for i in range(80)]
            )

    ids = asyncio.run(scenario())
    assert len(ids) == len(set(ids)) == 80
    for i in (0, 63, 64, 79):
        assert conveyor.decode(client.get(ids[i]).args[0]).startswith(f"{i:06d}:")


def test_worker_with_50_slots_runs_large_tasks(client, start_worker, queue_name, caplog):
    caplog.set_level(logging.INFO, logger="conveyor.worker")
    start_worker({"total_length": total_length}, queue_name, concurrency=50)
    ids = client.submit_many(
        [("total_length", [arg(i, ARG_256K)], None, {"queue": queue_name}) for i in range(200)]
    )
    big_args = [arg(i, ARG_900K) for i in range(4)]
    big = client.submit("total_length", big_args, queue=queue_name)
    full_args = [arg(i, ARG_FULL) for i in range(4)]
    full = client.submit("total_length", full_args, queue=queue_name)
    assert [client.result(task_id, timeout=20) for task_id in ids] == [ARG_256K] * 200

    for task_id, args in ((big, big_args), (full, full_args)):
        assert client.result(task_id, timeout=20) == 4 * len(args[0])
        # get returns the whole task; WaitTask the outcome without arguments.
        task = client.get(task_id)
        assert TaskState.from_proto(task.state) == TaskState.SUCCEEDED
        assert [conveyor.decode(a) for a in task.args] == args
        assert conveyor.decode(task.result) == 4 * len(args[0])
        waited = client.wait(task_id, timeout=5)
        assert TaskState.from_proto(waited.state) == TaskState.SUCCEEDED
        assert list(waited.args) == []
        assert conveyor.decode(waited.result) == 4 * len(args[0])
    assert "worker session" in caplog.text and "upgrade the conveyor SDK" not in caplog.text


def test_worker_logs_an_error_when_frames_exceed_its_receive_limit(start_worker, queue_name, caplog):
    caplog.set_level(logging.INFO, logger="conveyor.worker")
    start_worker(
        {"total_length": total_length},
        queue_name,
        channel_options=[("grpc.max_receive_message_length", 4 * 1024 * 1024)],
    )
    wait_until(lambda: "upgrade the conveyor SDK" in caplog.text, 10, "the receive-limit error")
    record = next(r for r in caplog.records if "upgrade the conveyor SDK" in r.getMessage())
    assert record.levelno == logging.ERROR
    assert "8388608" in record.getMessage()
