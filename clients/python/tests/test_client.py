"""conveyor.Client against a real `conveyor dev`."""

import time
import uuid

import grpc
import pytest

import conveyor
from conveyor import TaskState


def add(a, b):
    return a + b


def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


def test_submit_and_result(client, start_worker, queue_name):
    start_worker({"add": add, "echo": echo}, queue_name)
    task_id = client.submit("add", [2, 3], queue=queue_name)
    uuid.UUID(task_id)  # a hyphenated UUID
    assert client.result(task_id, timeout=10) == 5
    assert isinstance(client.result(task_id, timeout=1), int)
    assert client.result(client.submit("add", [1.5, 2], queue=queue_name), timeout=10) == 3.5

    echoed = client.submit("echo", [1, "x", None, [1, 2]], {"k": {"a": True}}, queue=queue_name)
    assert client.result(echoed, timeout=10) == {"args": [1, "x", None, [1, 2]], "kwargs": {"k": {"a": True}}}

    task = client.get(task_id)
    assert task.name == "add"
    assert TaskState.from_proto(task.state) == TaskState.SUCCEEDED == "SUCCEEDED"
    assert task.attempt == 1
    assert task.queue == queue_name
    assert conveyor.decode(task.result) == 5
    assert client.state(task_id) == "SUCCEEDED"


def test_submit_many_batches_per_thousand(client, start_worker, queue_name):
    idle_queue = queue_name + "-idle"
    ids = client.submit_many(("add", [i, i], None, {"queue": idle_queue}) for i in range(1500))
    assert len(ids) == len(set(ids)) == 1500
    assert client.state(ids[0]) == TaskState.QUEUED
    assert client.state(ids[-1]) == TaskState.QUEUED

    start_worker({"add": add}, queue_name, concurrency=8)
    run_ids = client.submit_many(
        [{"name": "add", "args": [i, 1], "options": {"queue": queue_name}} for i in range(30)]
    )
    assert [client.result(task_id, timeout=20) for task_id in run_ids] == [i + 1 for i in range(30)]
    assert client.submit_many([]) == []


def test_errors_carry_grpc_codes(client):
    with pytest.raises(conveyor.ConveyorError) as empty_name:
        client.submit("", [1])
    assert empty_name.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "name" in str(empty_name.value)

    unknown = str(uuid.uuid4())
    for call in (client.get, lambda task_id: client.wait(task_id, timeout=2)):
        with pytest.raises(conveyor.ConveyorError) as not_found:
            call(unknown)
        assert not_found.value.code == grpc.StatusCode.NOT_FOUND

    with pytest.raises(conveyor.ConveyorError) as bad_priority:
        client.submit("add", [1, 2], priority=42)
    assert bad_priority.value.code == grpc.StatusCode.INVALID_ARGUMENT

    with pytest.raises(conveyor.ConveyorError) as batch:
        client.submit_many([("add", [1, 2]), ("", [])])
    assert batch.value.code == grpc.StatusCode.INVALID_ARGUMENT

    with pytest.raises(conveyor.PayloadError):
        client.submit("add", [float("nan")])
    with pytest.raises(TypeError, match="unknown task option"):
        client.submit("add", [1], queeu="typo")


def test_unreachable_server_is_unavailable():
    with conveyor.Client("http://127.0.0.1:1", rpc_timeout=5) as dead:
        with pytest.raises(conveyor.ConveyorError) as error:
            dead.submit("add", [1, 2])
    assert error.value.code == grpc.StatusCode.UNAVAILABLE


def test_wait_timeout(client, queue_name):
    task_id = client.submit("add", [1, 2], queue=queue_name)  # no worker on this queue
    started = time.monotonic()
    with pytest.raises(conveyor.TaskTimeout) as timeout:
        client.wait(task_id, timeout=0.3)
    elapsed = time.monotonic() - started
    assert timeout.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert isinstance(timeout.value, TimeoutError)
    assert 0.25 <= elapsed < 3, elapsed
    with pytest.raises(conveyor.TaskTimeout):
        client.result(task_id, timeout=0.1)
    assert client.state(task_id) == TaskState.QUEUED  # waiting changed nothing


def test_watch_follows_the_task_to_its_end(client, start_worker, queue_name):
    task_id = client.submit("add", [20, 22], queue=queue_name, countdown=0.3)
    updates = client.watch(task_id, timeout=20)
    first = next(updates)
    assert TaskState.from_proto(first.state) == TaskState.SCHEDULED
    start_worker({"add": add}, queue_name)
    states = [TaskState.from_proto(first.state)] + [TaskState.from_proto(t.state) for t in updates]
    assert states[-1] == TaskState.SUCCEEDED, states
    assert TaskState.SUCCEEDED not in states[:-1]
    assert states.index(TaskState.SCHEDULED) < len(states) - 1


def test_cancel(client, queue_name):
    task_id = client.submit("add", [1, 2], queue=queue_name)
    assert client.cancel(task_id) is True
    assert client.state(task_id) == TaskState.CANCELLED
    with pytest.raises(conveyor.TaskCancelled) as cancelled:
        client.result(task_id, timeout=5)
    assert cancelled.value.state == TaskState.CANCELLED
    assert client.cancel(task_id) is False
    with pytest.raises(conveyor.ConveyorError) as unknown:
        client.cancel(str(uuid.uuid4()))
    assert unknown.value.code == grpc.StatusCode.NOT_FOUND


def test_options_reach_the_server(client, queue_name):
    scheduled = client.submit(
        "add",
        [1, 2],
        queue=queue_name,
        countdown=60,
        priority=7,
        max_retries=3,
        expires=3600,
        headers={"traceparent": "00-abc"},
        soft_time_limit=5,
        time_limit=10,
        result_ttl=120,
    )
    task = client.get(scheduled)
    assert TaskState.from_proto(task.state) == TaskState.SCHEDULED
    assert task.options.priority == 7
    assert task.options.retry.max_retries == 3
    assert task.options.headers["traceparent"] == "00-abc"
    assert task.options.soft_time_limit.seconds == 5
    assert task.options.hard_time_limit.seconds == 10
    assert task.due_at.seconds >= int(time.time()) + 55

    key = f"key-{uuid.uuid4()}"
    first = client.submit("add", [1, 2], queue=queue_name, idempotency_key=key)
    again = client.submit("add", [3, 4], queue=queue_name, idempotency_key=key)
    assert first == again
