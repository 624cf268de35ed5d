"""The Celery-like API and the worker's handling of handlers, errors and
time limits, against a real `conveyor dev`."""

import asyncio
import threading
import time

import grpc
import pytest

import conveyor
from conveyor import Conveyor, TaskState


@pytest.fixture
def app(server):
    with Conveyor(server) as application:
        yield application


def test_delay_get_and_states(app, start_worker, queue_name):
    @app.task(queue=queue_name)
    def add(a, b):
        return a + b

    @app.task(name="math.div", queue=queue_name)
    def divide(a, b):
        return a / b

    assert add(2, 2) == 4  # a plain call runs here
    assert add.name == "test_app.add" and divide.name == "math.div"  # module-qualified by default, as Celery
    start_worker(app, queue_name)

    result = add.delay(2, 2)
    assert isinstance(result, conveyor.AsyncResult)
    assert result.get(timeout=10) == 4
    assert result.ready() and result.successful() and not result.failed()
    assert result.state == TaskState.SUCCEEDED == "SUCCEEDED"
    assert result.result == 4 and result.traceback is None

    failed = divide.apply_async((1, 0))
    with pytest.raises(conveyor.TaskFailed) as error:
        failed.get(timeout=10)
    assert error.value.type == "ZeroDivisionError"
    assert error.value.message == "division by zero"
    assert "def divide" not in error.value.traceback  # source lines are not carried, frames are
    assert "in divide" in error.value.traceback and "ZeroDivisionError" in error.value.traceback
    assert "conveyor/worker.py" not in error.value.traceback
    assert error.value.retryable is True
    assert error.value.task_id == failed.id
    assert failed.failed() and failed.ready() and not failed.successful()
    assert isinstance(failed.result, conveyor.TaskFailed)
    assert "ZeroDivisionError" in failed.traceback
    returned = failed.get(timeout=1, propagate=False)
    assert isinstance(returned, conveyor.TaskFailed)


def test_apply_async_options_send_task_and_partials(app, start_worker, queue_name):
    @app.task(queue=queue_name)
    def concat(*parts, sep=""):
        return sep.join(parts)

    start_worker(app, queue_name)
    later = concat.apply_async(("a", "b"), {"sep": "-"}, countdown=0.2, priority=9, expires=60)
    assert later.state in ("SCHEDULED", "QUEUED", "LEASED", "RUNNING", "SUCCEEDED")
    assert later.get(timeout=10) == "a-b"
    assert later.task.options.priority == 9

    by_name = app.send_task("test_app.concat", args=["x", "y"], kwargs={"sep": "+"}, queue=queue_name)
    assert by_name.get(timeout=10) == "x+y"

    partial = concat.s("tail", sep="/")
    assert partial.delay("head").get(timeout=10) == "head/tail"  # new args go first
    results = app.send_many([concat.s(str(i)) for i in range(5)])
    assert [r.get(timeout=10) for r in results] == ["0", "1", "2", "3", "4"]
    assert app.AsyncResult(by_name.id).get(timeout=1) == "x+y"


def test_rate_limit_spaces_starts(app, start_worker, queue_name):
    starts = []

    @app.task(name=f"rated.{queue_name}", queue=queue_name, rate_limit="5/s")  # a default, as in Celery
    def rated(i):
        starts.append(time.monotonic())  # measured on the worker side
        return i

    @app.task(name=f"once.{queue_name}", queue=queue_name)
    def once():
        return "ok"

    start_worker(app, queue_name)
    results = [rated.delay(i) for i in range(3)]
    assert [r.get(timeout=15) for r in results] == [0, 1, 2]
    assert all(r.task.options.rate_limit == "5/s" for r in results)
    starts.sort()
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:])]
    # 5/s spaces the dispatches 200 ms apart; a handler thread may see its
    # start a little late, so the gaps seen here carry that jitter.
    assert len(gaps) == 2 and all(gap >= 0.15 for gap in gaps) and sum(gaps) >= 0.38, gaps

    overridden = once.apply_async(rate_limit="10/s", rate_limit_key="tenant-1")
    assert overridden.get(timeout=10) == "ok"
    assert (overridden.task.options.rate_limit, overridden.task.options.rate_limit_key) == ("10/s", "tenant-1")
    with pytest.raises(conveyor.ConveyorError) as error:
        once.apply_async(rate_limit_key="tenant-1")  # the server wants the rate with a key
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_handler_failures_and_retries(app, start_worker, queue_name):
    attempts = []

    @app.task(queue=queue_name, dont_retry_for=(ValueError,), max_retries=3)
    def picky(kind):
        attempts.append(kind)
        if kind == "value":
            raise ValueError("bad value")
        if kind == "reject":
            raise conveyor.Reject(KeyError("missing"))
        raise RuntimeError("flaky")

    @app.task(
        bind=True,
        queue=queue_name,
        retry_policy={"max_retries": 2, "backoff_base": 0.05, "backoff_max": 0.1},
    )
    def flaky(ctx, value):
        assert isinstance(ctx, conveyor.TaskContext) and conveyor.current_task() is ctx
        if ctx.attempt == 1:
            raise ConnectionError("first attempt fails")
        return {"value": value, "attempt": ctx.attempt, "retries": ctx.retries, "max_retries": ctx.max_retries}

    start_worker(app, queue_name)
    with pytest.raises(conveyor.TaskFailed) as value_error:
        picky.delay("value").get(timeout=10)
    assert (value_error.value.type, value_error.value.retryable) == ("ValueError", False)
    with pytest.raises(conveyor.TaskFailed) as rejected:
        picky.delay("reject").get(timeout=10)
    assert rejected.value.type == "KeyError" and rejected.value.retryable is False
    assert "'missing'" in rejected.value.message
    assert attempts == ["value", "reject"]  # neither was retried

    assert flaky.delay(7).get(timeout=15) == {"value": 7, "attempt": 2, "retries": 1, "max_retries": 2}

    with pytest.raises(conveyor.TaskFailed) as bad_args:
        app.send_task("test_app.flaky", args=[1, 2, 3], queue=queue_name).get(timeout=10)
    assert bad_args.value.type == "TypeError" and bad_args.value.retryable is False


def test_async_handlers_and_context(app, start_worker, queue_name):
    @app.task(queue=queue_name)
    async def slow_add(a, b):
        await asyncio.sleep(0.01)
        ctx = conveyor.current_task()
        return {"sum": a + b, "name": ctx.name, "header": ctx.headers.get("tenant")}

    @app.task(queue=queue_name)
    async def broken():
        raise LookupError("nothing here")

    start_worker(app, queue_name)
    assert slow_add.apply_async((1, 2), headers={"tenant": "acme"}).get(timeout=10) == {
        "sum": 3,
        "name": "test_app.slow_add",
        "header": "acme",
    }
    with pytest.raises(conveyor.TaskFailed) as error:
        broken.delay().get(timeout=10)
    assert error.value.type == "LookupError" and "in broken" in error.value.traceback


def test_unserialisable_result_is_reported(app, start_worker, queue_name):
    @app.task(queue=queue_name)
    def returns_a_set():
        return {1, 2}

    start_worker(app, queue_name)
    with pytest.raises(conveyor.TaskFailed) as error:
        returns_a_set.delay().get(timeout=10)
    assert error.value.type == "SerializationError" and not error.value.retryable


def test_soft_time_limit(app, start_worker, queue_name):
    @app.task(queue=queue_name, soft_time_limit=0.3)
    def busy():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # pure Python: the exception lands here
            time.sleep(0.01)
        return "not interrupted"

    @app.task(queue=queue_name, soft_time_limit=0.3)
    def cleans_up():
        try:
            conveyor.current_task().sleep(20)
        except conveyor.SoftTimeLimitExceeded:
            return "cleaned up"

    @app.task(queue=queue_name, soft_time_limit=0.3)
    async def waits():
        await asyncio.sleep(20)

    start_worker(app, queue_name)
    started = time.monotonic()
    results = [busy.delay(), cleans_up.delay(), waits.delay()]
    with pytest.raises(conveyor.TaskFailed) as sync_error:
        results[0].get(timeout=10)
    assert sync_error.value.type == "SoftTimeLimitExceeded"
    assert sync_error.value.message == "soft time limit (0.3s) exceeded"
    assert "in busy" in sync_error.value.traceback
    assert results[1].get(timeout=10) == "cleaned up"
    with pytest.raises(conveyor.TaskFailed) as async_error:
        results[2].get(timeout=10)
    assert async_error.value.type == "SoftTimeLimitExceeded"
    assert time.monotonic() - started < 8


def test_hard_time_limit_cancels_the_handler(app, start_worker, queue_name):
    stopped = {"sync": threading.Event(), "async": threading.Event()}

    @app.task(queue=queue_name, time_limit=0.5)
    def stuck_sync():
        try:
            while True:
                time.sleep(0.01)
        except conveyor.Terminated:
            stopped["sync"].set()
            raise

    @app.task(queue=queue_name, time_limit=0.5)
    async def stuck_async():
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped["async"].set()
            raise

    start_worker(app, queue_name)
    for task in (stuck_sync, stuck_async):
        result = task.delay()
        with pytest.raises(conveyor.TaskFailed) as error:
            result.get(timeout=15)
        assert error.value.type == "TimeLimitExceeded"  # as the dispatcher records it
    assert stopped["sync"].wait(5) and stopped["async"].wait(5)


def test_worker_settings_are_checked(app):
    with pytest.raises(ValueError, match="concurrency"):
        app.worker(concurrency=0)
    empty = conveyor.Worker("http://127.0.0.1:1")
    with pytest.raises(ValueError, match="register at least one task"):
        empty.run(install_signal_handlers=False)


def test_refused_hello_is_fatal(server, queue_name):
    worker = conveyor.Worker(server, tasks={"not a valid name!": lambda: None}, queues=[queue_name])
    started = time.monotonic()
    with pytest.raises(conveyor.ConveyorError) as error:
        worker.run(install_signal_handlers=False)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert time.monotonic() - started < 5
