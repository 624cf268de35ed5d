"""Revoking running tasks, progress, handler-requested retries, dead letters
with replay, and forgetting, against a real `conveyor dev`."""

import asyncio
import threading
import time

import grpc
import pytest
from conftest import wait_for_state, wait_until

import conveyor
from conveyor import Conveyor, TaskState


@pytest.fixture
def app(server):
    with Conveyor(server) as application:
        yield application


def test_cancel_revokes_running_tasks(app, client, start_worker, queue_name):
    stopped = {"sync": threading.Event(), "async": threading.Event()}

    @app.task(queue=queue_name)
    def long_sync():
        try:
            conveyor.current_task().sleep(60)
        except conveyor.Terminated:
            stopped["sync"].set()
            raise

    @app.task(queue=queue_name)
    async def long_async():
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped["async"].set()
            raise

    @app.task(queue=queue_name)
    def quick():
        return "slot free again"

    start_worker(app, queue_name, concurrency=2)
    running = [long_sync.delay(), long_async.delay()]
    for result in running:
        wait_for_state(client, result.id, {TaskState.RUNNING})
    for result in running:
        assert result.revoke() is True
        with pytest.raises(conveyor.TaskCancelled):
            result.get(timeout=10)
        assert result.state == TaskState.CANCELLED
    assert stopped["sync"].wait(5) and stopped["async"].wait(5)
    # Both slots were given back: two more tasks run at once.
    assert [r.get(timeout=10) for r in (quick.delay(), quick.delay())] == ["slot free again"] * 2


def test_progress_reaches_producers(app, client, start_worker, queue_name):
    go_on = threading.Event()

    @app.task(bind=True, queue=queue_name)
    def crunch(ctx, items):
        for done in range(1, items + 1):
            assert ctx.update_state("CRUNCHING", {"done": done}, percent=100.0 * done / items)
        go_on.wait(10)
        return items

    start_worker(app, queue_name)
    result = crunch.delay(4)
    # Polled, not watched: WatchTask skips a change stamped in the same
    # millisecond as the previous one (the server compares updated_at).
    wait_until(lambda: result.info == {"done": 4}, 10, "the last progress report")
    last = result.progress
    assert (last.state, last.percent, last.meta) == ("CRUNCHING", 100.0, {"done": 4})
    assert last.reported_at is not None
    assert result.progress.meta == {"done": 4} and result.info == {"done": 4}
    assert result.state == TaskState.RUNNING
    go_on.set()
    assert result.get(timeout=10) == 4

    with pytest.raises(ValueError):
        conveyor.TaskContext(conveyor.v1.dispatch_service_pb2.Assignment()).update_state("x" * 101)
    assert conveyor.TaskContext(conveyor.v1.dispatch_service_pb2.Assignment()).update_state("NO_STREAM") is False


def test_handler_requested_retry(app, start_worker, queue_name):
    attempts = []

    @app.task(bind=True, queue=queue_name, retry_policy={"max_retries": 2, "backoff_base": 30})
    def busy(ctx):
        attempts.append(time.monotonic())
        if ctx.attempt == 1:
            try:
                raise ConnectionResetError("upstream busy")
            except ConnectionResetError as error:
                raise ctx.retry(countdown=0.2, exc=error) from error
        return ctx.attempt

    start_worker(app, queue_name)
    result = busy.delay()
    assert result.get(timeout=10) == 2  # not after the policy's 30 s backoff
    assert 0.15 <= attempts[1] - attempts[0] < 5
    assert result.task.failures == 1


def test_dead_letters_replay_and_forget(app, client, start_worker, queue_name):
    healed = threading.Event()

    @app.task(queue=queue_name)
    def fragile(x):
        if not healed.is_set():
            raise RuntimeError("still broken")
        return x

    start_worker(app, queue_name)
    failed = fragile.delay(9)
    with pytest.raises(conveyor.TaskFailed):
        failed.get(timeout=10)
    assert failed.id in {task.id for task in client.dead_letters(page_size=1000)}
    page, _ = client.list_dead_letters(page_size=1)
    assert len(page) == 1

    healed.set()
    assert client.replay(failed.id) == TaskState.QUEUED
    assert client.result(failed.id, timeout=10) == 9
    assert failed.id not in {task.id for task in client.dead_letters()}
    with pytest.raises(conveyor.ConveyorError) as not_failed:
        client.replay(failed.id)
    assert not_failed.value.code == grpc.StatusCode.FAILED_PRECONDITION

    pending = client.submit("fragile", [1], queue=queue_name + "-idle")
    with pytest.raises(conveyor.ConveyorError) as unfinished:
        client.forget(pending)
    assert unfinished.value.code == grpc.StatusCode.FAILED_PRECONDITION
    app.AsyncResult(failed.id).forget()
    with pytest.raises(conveyor.ConveyorError) as gone:
        client.get(failed.id)
    assert gone.value.code == grpc.StatusCode.NOT_FOUND


def test_async_client_lifecycle_calls(server, client, queue_name):
    async def scenario():
        async with conveyor.aio.AsyncClient(server) as aclient:
            task_id = await aclient.submit("nothing", [], queue=queue_name)
            assert await aclient.cancel(task_id) is True
            await aclient.forget(task_id)
            with pytest.raises(conveyor.ConveyorError) as gone:
                await aclient.get(task_id)
            assert gone.value.code == grpc.StatusCode.NOT_FOUND
            page, _ = await aclient.list_dead_letters(page_size=5)
            assert len(page) <= 5
            letters = [task async for task in aclient.dead_letters()]
            assert all(TaskState.from_proto(t.state) == TaskState.FAILED for t in letters)

    asyncio.run(scenario())
