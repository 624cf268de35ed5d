"""Pieces that need no server: specs, payloads, addresses, error reports,
the reconnect schedule and the thread guard."""

import datetime as dt
import threading
import time

import grpc
import pytest

import conveyor
from conveyor import _codec
from conveyor._common import Target, parse_address, wait_again
from conveyor._threads import ThreadGuard
from conveyor.v1 import task_pb2
from conveyor.worker import _Backoff, task_error


def test_build_spec_encodes_arguments_and_options():
    eta = dt.datetime(2030, 1, 2, 3, 4, 5, 500000, tzinfo=dt.timezone.utc)
    spec = conveyor.build_spec(
        "add",
        [2, "x", [1.5, None]],
        {"scale": {"by": 3}},
        queue="q",
        priority=7,
        eta=eta,
        expires=dt.timedelta(minutes=1),
        retry_policy={"max_retries": 1, "backoff_base": 0.25, "backoff_factor": 3, "jitter": True},
        max_retries=4,
        soft_time_limit=1.5,
        time_limit=dt.timedelta(seconds=9),
        rate_limit="10/m",
        rate_limit_key="api",
        concurrency_key="db",
        concurrency_limit=2,
        idempotency_key="k-1",
        headers={"traceparent": "00-abc"},
        result_ttl=60,
    )
    assert [a.data for a in spec.args] == [b"2", b'"x"', b"[1.5,null]"]
    assert all(a.content_type == "application/json" for a in spec.args)
    assert conveyor.decode(spec.kwargs["scale"]) == {"by": 3}
    o = spec.options
    assert (o.queue, o.priority) == ("q", 7)
    assert (o.eta.seconds, o.eta.nanos) == (int(eta.timestamp()), 500_000_000)
    assert not o.HasField("countdown")
    assert abs(o.expires.seconds - (time.time() + 60)) < 5
    assert o.retry.max_retries == 4 and o.retry.backoff_factor == 3 and o.retry.jitter
    assert (o.retry.backoff_base.seconds, o.retry.backoff_base.nanos) == (0, 250_000_000)
    assert (o.soft_time_limit.seconds, o.soft_time_limit.nanos) == (1, 500_000_000)
    assert o.hard_time_limit.seconds == 9
    assert (o.rate_limit, o.rate_limit_key, o.concurrency_key, o.concurrency_limit) == ("10/m", "api", "db", 2)
    assert conveyor.build_spec("t", rate_limit=20).options.rate_limit == "20/s"  # Celery: a number is per second
    assert dict(o.headers) == {"traceparent": "00-abc"} and o.result_ttl.seconds == 60
    assert spec.idempotency_key == "k-1"

    bare = conveyor.build_spec("t", (), None, queue=None)
    assert not bare.HasField("options") and not bare.args


def test_build_spec_refuses_bad_input():
    with pytest.raises(ValueError, match="exclusive"):
        conveyor.build_spec("t", countdown=1, eta=time.time())
    with pytest.raises(TypeError, match="unknown task option"):
        conveyor.build_spec("t", retries=3)
    with pytest.raises(conveyor.PayloadError, match="positional argument 1"):
        conveyor.build_spec("t", [1, object()])
    with pytest.raises(ValueError):
        conveyor.build_spec("t", countdown=-1)
    with pytest.raises(TypeError):
        conveyor.build_spec("t", "abc")
    with pytest.raises(ValueError, match="rate_limit"):
        conveyor.build_spec("t", rate_limit=0)


def test_build_spec_encodes_concurrency_keys():
    def keys(spec):
        return [(k.key, k.limit) for k in spec.options.concurrency_keys]

    pairs = conveyor.build_spec("t", concurrency_keys=[("fork:1", 1), ("fork:2", 2)])
    assert keys(pairs) == [("fork:1", 1), ("fork:2", 2)]
    assert keys(conveyor.build_spec("t", concurrency_keys={"fork:1": 1, "fork:2": 2})) == keys(pairs)
    legacy = conveyor.build_spec("t", concurrency_key="db", concurrency_limit=3, concurrency_keys={"x": 1})
    assert (legacy.options.concurrency_key, legacy.options.concurrency_limit, keys(legacy)) == ("db", 3, [("x", 1)])
    assert not conveyor.build_spec("t", concurrency_keys=[]).HasField("options")
    # Duplicates and a zero limit are the server's to refuse (it names the field).
    assert keys(conveyor.build_spec("t", concurrency_keys=[("a", 0), ("a", 1)])) == [("a", 0), ("a", 1)]
    with pytest.raises(TypeError, match="concurrency_keys"):
        conveyor.build_spec("t", concurrency_keys="fork:1")
    with pytest.raises(TypeError, match="pair"):
        conveyor.build_spec("t", concurrency_keys=["fork:1"])
    with pytest.raises(TypeError, match="int"):
        conveyor.build_spec("t", concurrency_keys={"fork:1": "1"})
    with pytest.raises(ValueError, match="fork:1"):
        conveyor.build_spec("t", concurrency_keys={"fork:1": -1})


def test_payloads():
    assert conveyor.decode(conveyor.encode({"a": "é"})) == {"a": "é"}
    assert conveyor.decode(task_pb2.Payload(data=b"42", content_type="")) == 42
    assert conveyor.decode(task_pb2.Payload(data=b"", content_type="application/json")) is None
    raw = task_pb2.Payload(data=b"\x01", content_type="application/octet-stream")
    assert conveyor.decode(raw) is raw and conveyor.encode(raw) is raw
    assert _codec.is_json("Application/JSON; charset=utf-8") and _codec.is_json("application/problem+json")
    with pytest.raises(conveyor.PayloadError):
        conveyor.decode(task_pb2.Payload(data=b"{", content_type="application/json"))


def test_task_states_and_outcomes():
    assert conveyor.TaskState.from_proto(task_pb2.TASK_STATE_RUNNING) == "RUNNING"
    assert conveyor.TaskState.from_proto(99) == conveyor.TaskState.UNSPECIFIED
    assert conveyor.TaskState.EXPIRED.terminal and not conveyor.TaskState.QUEUED.terminal
    failed = task_pb2.Task(
        id="t1",
        state=task_pb2.TASK_STATE_FAILED,
        error=task_pb2.TaskError(type="ValueError", message="boom", traceback="tb"),
    )
    with pytest.raises(conveyor.TaskFailed) as error:
        _codec.outcome(failed)
    assert (error.value.type, error.value.message, error.value.traceback) == ("ValueError", "boom", "tb")
    assert str(error.value) == "ValueError: boom" and error.value.code is None
    with pytest.raises(conveyor.TaskExpired):
        _codec.outcome(task_pb2.Task(state=task_pb2.TASK_STATE_EXPIRED))
    assert _codec.outcome(task_pb2.Task(state=task_pb2.TASK_STATE_SUCCEEDED)) is None


def test_addresses():
    assert parse_address("http://127.0.0.1:50051") == Target("127.0.0.1:50051", False)
    assert parse_address("https://conveyor.example.com") == Target("conveyor.example.com:443", True)
    assert parse_address("http://[::1]:7000") == Target("[::1]:7000", False)
    assert parse_address("localhost:9") == Target("localhost:9", False)
    assert parse_address("unix:///tmp/conveyor.sock").target == "unix:///tmp/conveyor.sock"


def test_wait_again_only_after_a_real_wait_with_time_left():
    late = grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_again(late, waited=300, remaining=600)
    assert wait_again(late, waited=300, remaining=None)
    assert not wait_again(late, waited=0.01, remaining=600)
    assert not wait_again(late, waited=300, remaining=0.2)
    assert not wait_again(grpc.StatusCode.UNAVAILABLE, waited=300, remaining=600)


def test_error_reports():
    def handler():
        raise KeyError("nope")

    try:
        handler()
    except KeyError as exc:
        error = task_error(exc)
    assert (error.type, error.message, error.retryable) == ("KeyError", "'nope'", True)
    assert error.traceback.startswith("Traceback") and "in handler" in error.traceback

    assert task_error(conveyor.Reject("stop")).type == "Reject"
    assert task_error(conveyor.Reject("stop")).retryable is False
    final = ValueError("x")
    final.retryable = False
    assert task_error(final).retryable is False
    assert task_error(ValueError("x"), (ValueError,)).retryable is False
    assert task_error(ValueError("x"), (KeyError,)).retryable is True


def test_backoff_doubles_from_100ms_to_5s_with_jitter():
    backoff = _Backoff(0.1, 5.0)
    ceilings = []
    for _ in range(9):
        ceiling = backoff.ceiling()
        ceilings.append(round(ceiling, 3))
        delay = backoff.next_delay()
        assert ceiling / 2 <= delay <= ceiling
    assert ceilings == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.ceiling() == 0.1


def test_thread_guard_interrupts_only_while_the_handler_runs():
    guard = ThreadGuard()
    entered = threading.Event()
    outcome = []

    def handler():
        guard.enter()
        try:
            entered.set()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                time.sleep(0.005)
            outcome.append("not interrupted")
        except conveyor.SoftTimeLimitExceeded:
            outcome.append("interrupted")
        finally:
            guard.exit()
        time.sleep(0.05)  # after exit nothing may land here
        outcome.append("after")

    thread = threading.Thread(target=handler)
    thread.start()
    assert entered.wait(5)
    guard.interrupt(conveyor.SoftTimeLimitExceeded)
    thread.join(10)
    guard.interrupt(conveyor.Terminated)  # after exit: ignored
    assert outcome == ["interrupted", "after"]

    early = ThreadGuard()
    early.interrupt(conveyor.Terminated)
    with pytest.raises(conveyor.Terminated):
        early.enter()


def test_signatures_and_app_registry():
    app = conveyor.Conveyor("http://127.0.0.1:1")

    @app.task(name="math.add", queue="math", max_retries=2)
    def add(a, b):
        return a + b

    assert app.tasks == {"math.add": add} and add(1, 2) == 3 and add.__name__ == "add"
    partial = add.s(2)
    assert partial.clone((1,)).args == (1, 2) and partial.options == {"queue": "math", "max_retries": 2}
    assert partial.set(priority=3).options["priority"] == 3
    assert repr(add.s(1, b=2)) == "math.add(1, b=2)"
    spec = partial.set(queue="other").to_spec()
    assert spec.options.queue == "other" and spec.options.retry.max_retries == 2
    with pytest.raises(TypeError):
        app.task(queu="typo")(lambda: None)
    worker = app.worker(concurrency=3, queues="math", worker_id="w-1")
    hello = worker._hello()
    assert (list(hello.task_names), list(hello.queues), hello.concurrency) == (["math.add"], ["math"], 3)
    assert (hello.worker_id, hello.language, hello.sdk_version) == ("w-1", "python", conveyor.__version__)


def test_retry_reports_a_delay():
    try:
        raise TimeoutError("slow upstream")
    except TimeoutError as error:
        retry = conveyor.Retry(countdown=1.5, exc=error)
    report = task_error(retry)
    assert (report.type, report.message, report.retryable) == ("TimeoutError", "slow upstream", True)
    assert (report.retry_after.seconds, report.retry_after.nanos) == (1, 500_000_000)
    assert "slow upstream" in report.traceback
    bare = task_error(conveyor.Retry())
    assert bare.type == "Retry" and bare.retryable and not bare.HasField("retry_after")
