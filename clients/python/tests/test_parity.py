"""One test per row of the SDK parity table in the root README (the
`parity_<row>` markers), each against a real `conveyor dev` except eager
mode, which runs in this process with no server."""

import socket
import threading
import time

import grpc
import pytest

import conveyor
from conftest import ThreadWorker, dev_server, wait_for_state, wait_until


@pytest.fixture
def app(server):
    with conveyor.Conveyor(server) as application:
        yield application


def test_parity_submit(client, start_worker, queue_name):
    start_worker({"add": lambda a, b: a + b}, queue_name)
    task_id = client.submit("add", [2, 3], queue=queue_name, priority=7)
    assert client.result(task_id, timeout=10) == 5
    assert client.get(task_id).options.priority == 7


def test_parity_submit_many(client, start_worker, queue_name):
    start_worker({"add": lambda a, b: a + b}, queue_name)
    ids = client.submit_many([("add", [i, i], {}, {"queue": queue_name}) for i in range(1200)])
    assert len(set(ids)) == 1200  # two SubmitTasks calls
    assert [client.result(ids[i], timeout=30) for i in (0, 599, 1199)] == [0, 1198, 2398]


def test_parity_get(client, queue_name):
    task_id = client.submit("nobody", [1], queue=queue_name)
    task = client.get(task_id)
    assert task.id == task_id and task.name == "nobody" and task.queue == queue_name
    assert conveyor.TaskState.from_proto(task.state) == "PENDING"  # QUEUED, in Celery's words
    with pytest.raises(conveyor.ConveyorError) as missing:
        client.get("01a2017a-0000-7000-8000-000000000000")
    assert missing.value.code == grpc.StatusCode.NOT_FOUND


def test_parity_wait(client, start_worker, queue_name):
    start_worker({"echo": lambda x: x}, queue_name)
    task = client.wait(client.submit("echo", ["hi"], queue=queue_name), timeout=10)
    assert conveyor.TaskState.from_proto(task.state) == "SUCCEEDED"
    with pytest.raises(conveyor.TaskTimeout):
        client.wait(client.submit("nobody", queue=queue_name), timeout=0.3)


def test_parity_watch(client, start_worker, queue_name):
    def slow():
        time.sleep(0.3)
        return "done"

    start_worker({"slow": slow}, queue_name)
    task_id = client.submit("slow", queue=queue_name)
    states = [conveyor.TaskState.from_proto(t.state).value for t in client.watch(task_id, timeout=10)]
    assert "RUNNING" in states and states[-1] == "SUCCEEDED"


def test_parity_cancel(client, queue_name):
    task_id = client.submit("nobody", queue=queue_name)
    assert client.cancel(task_id) is True
    assert client.state(task_id) == "REVOKED"
    assert client.cancel(task_id) is False


def test_parity_replay(client, start_worker, queue_name):
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise conveyor.Reject("first run fails for good")
        return len(calls)

    start_worker({"flaky": flaky}, queue_name)
    task_id = client.submit("flaky", queue=queue_name)
    with pytest.raises(conveyor.TaskFailed):
        client.result(task_id, timeout=10)
    assert client.replay(task_id) in ("QUEUED", "SCHEDULED")
    assert client.result(task_id, timeout=10) == 2


def test_parity_forget(client, start_worker, queue_name):
    start_worker({"echo": lambda x: x}, queue_name)
    task_id = client.submit("echo", [1], queue=queue_name)
    client.result(task_id, timeout=10)
    client.forget(task_id)
    with pytest.raises(conveyor.ConveyorError) as gone:
        client.get(task_id)
    assert gone.value.code == grpc.StatusCode.NOT_FOUND


def test_parity_dead_letters(client, start_worker, queue_name):
    def broken():
        raise ValueError("never works")

    start_worker({"broken": broken}, queue_name)
    task_id = client.submit("broken", queue=queue_name, max_retries=0)
    with pytest.raises(conveyor.TaskFailed):
        client.result(task_id, timeout=10)
    dead = [task for task in client.dead_letters(page_size=50) if task.id == task_id]
    assert len(dead) == 1 and dead[0].error.type == "ValueError"


def test_parity_schedules_crud(client, start_worker, queue_name):
    start_worker({"tick": lambda n: n}, queue_name)
    schedule_id = f"py-crud-{queue_name}"
    created = client.schedules.create(schedule_id, "tick", 3600, [1], queue=queue_name)
    assert created.id == schedule_id and created.interval.every.seconds == 3600
    assert client.schedules.get(schedule_id).task.name == "tick"
    assert schedule_id in [s.id for s in client.schedules.list()]
    updated = client.schedules.update(schedule_id, "tick", conveyor.crontab(minute=0, hour="*/2"), [2], queue=queue_name)
    assert updated.cron.expression == "0 */2 * * *"
    assert client.schedules.pause(schedule_id).paused is True
    assert client.schedules.resume(schedule_id).paused is False
    triggered = client.schedules.trigger(schedule_id)
    assert client.result(triggered, timeout=10) == 2
    # An interval schedule fires at its creation, so the scheduler may have
    # recorded that run before the update; the trigger is the newest run.
    runs = client.schedules.runs(schedule_id)
    assert (runs[0].task_id, runs[0].triggered) == (triggered, True)
    assert all(not run.triggered for run in runs[1:])
    assert client.schedules.ensure(schedule_id, "tick", conveyor.crontab(minute=0, hour="*/2"), [2], queue=queue_name) == "unchanged"
    client.schedules.delete(schedule_id)
    with pytest.raises(conveyor.ConveyorError) as gone:
        client.schedules.get(schedule_id)
    assert gone.value.code == grpc.StatusCode.NOT_FOUND


def test_parity_pause_queue(client, start_worker, queue_name):
    start_worker({"echo": lambda x: x}, queue_name)
    client.pause_queue(queue_name)
    task_id = client.submit("echo", ["later"], queue=queue_name)
    with pytest.raises(conveyor.TaskTimeout):
        client.wait(task_id, timeout=1.0)
    assert client.state(task_id) == "QUEUED"
    client.resume_queue(queue_name)
    assert client.result(task_id, timeout=10) == "later"


def test_parity_progress(app, client, start_worker, queue_name):
    @app.task(bind=True, queue=queue_name)
    def steps(self, n):
        for i in range(n):
            self.update_state(state="PROGRESS", meta={"done": i + 1}, percent=100.0 * (i + 1) / n)
            time.sleep(0.15)
        return n

    start_worker(app, queue_name)
    result = steps.delay(4)
    seen = []
    for task in result.watch(timeout=10):
        if task.HasField("progress") and task.progress.state == "PROGRESS":
            seen.append(conveyor.Progress.from_task(task).meta["done"])
    assert result.get(timeout=5) == 4
    assert seen and seen == sorted(seen) and seen[-1] <= 4


def test_parity_retry_delay(app, start_worker, queue_name):
    starts = []

    @app.task(bind=True, queue=queue_name, max_retries=2)
    def again(self):
        starts.append(time.monotonic())
        if self.request.retries == 0:
            raise self.retry(countdown=1.0, exc=ConnectionError("try later"))
        return self.request.retries

    start_worker(app, queue_name)
    assert again.delay().get(timeout=15) == 1
    assert starts[1] - starts[0] >= 0.95


def test_parity_soft_limit(app, start_worker, queue_name):
    @app.task(queue=queue_name, soft_time_limit=0.5)
    def sleepy():
        started = time.monotonic()
        try:
            conveyor.current_task().sleep(5)
        except conveyor.SoftTimeLimitExceeded:
            return round(time.monotonic() - started, 1)
        return None

    start_worker(app, queue_name)
    assert sleepy.delay().get(timeout=10) == 0.5


def test_parity_revoke(app, client, start_worker, queue_name):
    running, stopped = threading.Event(), threading.Event()

    @app.task(bind=True, queue=queue_name)
    def forever(self):
        try:
            running.set()
            self.sleep(30)
        finally:
            stopped.set()

    start_worker(app, queue_name)
    result = forever.delay()
    wait_for_state(client, result.id, {"RUNNING"})
    assert running.wait(5)  # RUNNING is recorded as the handler is handed to its thread
    assert result.revoke(terminate=True) is True
    assert stopped.wait(5), "the handler was not stopped"
    wait_for_state(client, result.id, {"CANCELLED"}, timeout=5)
    assert result.state == "REVOKED" and result.celery_state == "REVOKED"


def test_parity_drain(app, client, server, queue_name):
    @app.task(queue=queue_name)
    def finish():
        time.sleep(1.0)
        return "finished"

    worker = ThreadWorker(app.worker(queues=[queue_name], grace_period=10)).start()
    result = finish.delay()
    wait_for_state(client, result.id, {"RUNNING"})
    worker.stop(timeout=15)  # drains: the running task finishes first
    assert result.get(timeout=1) == "finished"


def test_parity_token(queue_name):
    with dev_server("--auth-token", "s3cret", log_name="python-client-token-server.log") as address:
        with conveyor.Client(address) as anonymous:
            with pytest.raises(conveyor.ConveyorError) as refused:
                anonymous.get("01a2017a-0000-7000-8000-000000000000")
            assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
        refused_worker = conveyor.Worker(address, tasks={"echo": lambda x: x}, queues=[queue_name])
        with pytest.raises(conveyor.ConveyorError) as worker_refused:
            refused_worker.run(install_signal_handlers=False)
        assert worker_refused.value.code == grpc.StatusCode.UNAUTHENTICATED
        worker = ThreadWorker(
            conveyor.Worker(address, tasks={"echo": lambda x: x}, queues=[queue_name], token="s3cret")
        ).start()
        try:
            with conveyor.Client(address, token="s3cret") as client:
                assert client.result(client.submit("echo", ["ok"], queue=queue_name), timeout=10) == "ok"
        finally:
            worker.stop()


def test_parity_eager_mode():
    app = conveyor.Conveyor("http://127.0.0.1:1", eager=True)  # nothing listens there
    attempts = []

    @app.task(bind=True, autoretry_for=(ConnectionError,), retry_backoff=True, max_retries=3)
    def fetch(self, x):
        attempts.append(self.request.retries)
        if self.request.retries < 2:
            raise ConnectionError("flaky")
        return {"x": x, "eager": self.request.is_eager}

    @app.task
    def boom():
        raise ValueError("no")

    result = fetch.delay(7)
    assert result.get() == {"x": 7, "eager": True} and attempts == [0, 1, 2]
    assert result.state == "SUCCESS" and result.successful()
    failed = boom.apply_async()
    assert failed.state == "FAILURE" and isinstance(failed.result, conveyor.TaskFailed)
    app.conf.task_eager_propagates = True
    with pytest.raises(conveyor.TaskFailed, match="ValueError: no"):
        boom.delay()


def test_parity_concurrency_keys(app, client, start_worker, queue_name):
    # Three tasks in a ring of keys with limit 1: each pair shares a key, so
    # no two may ever run at once, though the worker has slots for all.
    k = [f"{queue_name}:k{i}" for i in range(3)]
    needs = {"A": [(k[0], 1), (k[1], 1)], "B": [(k[1], 1), (k[2], 1)], "C": {k[2]: 1, k[0]: 1}}
    spans: dict[str, tuple[float, float]] = {}

    @app.task(queue=queue_name)
    def hold(name):
        started = time.monotonic()
        time.sleep(0.1)
        spans[name] = (started, time.monotonic())
        return name

    start_worker(app, queue_name, concurrency=4)
    results = {name: hold.apply_async([name], concurrency_keys=keys) for name, keys in needs.items()}
    assert {name: r.get(timeout=15) for name, r in results.items()} == {"A": "A", "B": "B", "C": "C"}
    ordered = sorted(spans.values())
    assert all(end <= next_start for (_, end), (next_start, _) in zip(ordered, ordered[1:])), spans
    stored = client.get(results["C"].id).options.concurrency_keys
    assert [(key.key, key.limit) for key in stored] == [(k[2], 1), (k[0], 1)]

    for bad, field in (([("a", 1), ("a", 1)], "concurrency_keys[1].key"), ({"a": 0}, "concurrency_keys[0].limit")):
        with pytest.raises(conveyor.ConveyorError) as refused:
            client.submit("hold", ["X"], queue=queue_name, concurrency_keys=bad)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert field in refused.value.details, refused.value.details


def test_failover_to_the_next_address(server, queue_name):
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    worker = ThreadWorker(
        conveyor.Worker([dead, server], tasks={"echo": lambda x: x}, queues=[queue_name], reconnect_backoff=(0.05, 0.2))
    ).start()
    try:
        with conveyor.Client(f"{dead},{server}") as client:
            task_id = client.submit("echo", ["over"], queue=queue_name)  # keyed by default: retried on the next address
            assert client.result(task_id, timeout=10) == "over"
            wait_until(lambda: worker.worker.target == server.removeprefix("http://"), 5, "the worker to fail over")
        with conveyor.Client(f"{dead},{server}") as client:
            with pytest.raises(conveyor.ConveyorError, match="not retried"):
                client.cancel(task_id)  # not safe to repeat: the first address's error is reported
    finally:
        worker.stop()


def test_parity_workflows(app, start_worker, queue_name):
    """Canvas into one workflow: chain, group, chord, link_error, cancel."""
    app.conf.task_default_queue = queue_name
    add = app.task(name="add")(lambda a, b: a + b)
    xsum = app.task(name="xsum")(lambda numbers: sum(numbers))
    fail = app.task(name="fail", dont_retry_for=(ValueError,))(lambda *args: (_ for _ in ()).throw(ValueError("boom")))
    errors = app.task(name="errors")(lambda task_id, error: error["type"])
    start_worker(app, queue_name)
    flow = add.s(1, 2) | conveyor.group(add.s(i) for i in range(10)) | xsum.s() | add.s(100)
    assert flow.delay().get(timeout=30) == 175
    assert conveyor.group(add.s(i, i) for i in range(3)).delay().get(timeout=30) == [0, 2, 4]
    assert conveyor.chord([add.s(1, 1), add.s(2, 2)], xsum.s()).delay().get(timeout=30) == 6
    failing = (add.s(1, 1) | fail.s() | add.s(1)).on_error(errors.s())
    result = failing.delay()
    with pytest.raises(conveyor.TaskFailed) as caught:
        result.get(timeout=30)
    nodes = result.workflow().nodes
    assert caught.value.task_id == nodes[1].task.id and nodes[2].task.error.cause_task_id == nodes[1].task.id
    assert conveyor.decode(nodes[3].task.result) == "ValueError"
    later = (add.s(1, 1) | add.s(1)).apply_async(countdown=60)
    assert later.revoke() == 2 and later.state == conveyor.WorkflowState.CANCELLED
