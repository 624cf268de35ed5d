"""Celery compatibility that needs no server: task names, state names,
app.conf and task_routes, autoretry_for's backoff, crontab, Handler
pickling for the process pool, addresses for failover."""

import pickle

import pool_tasks
import pytest

import conveyor
from conveyor._common import parse_targets
from conveyor._handler import Handler, failure, resolve_function
from conveyor.v1 import dispatch_service_pb2 as pb


def test_task_names_are_module_qualified_unless_given():
    app = conveyor.Conveyor("http://127.0.0.1:1")

    @app.task
    def add(a, b):
        return a + b

    @app.task(name="add")
    def bare(a, b):
        return a + b

    assert add.name == "test_celery_compat.add" and bare.name == "add"
    assert pool_tasks.burn.name == "pool_tasks.burn"
    main_app = conveyor.Conveyor("http://127.0.0.1:1", main="proj")
    namespace = {"__name__": "__main__"}
    exec("def job():\n    return 1\n", namespace)
    assert main_app.task(namespace["job"]).name == "proj.job"


def test_state_names_in_celery_words():
    state = conveyor.TaskState
    assert state.SUCCEEDED == "SUCCESS" and state.SUCCEEDED == "SUCCEEDED" and state.SUCCEEDED != "FAILURE"
    assert state.FAILED == "FAILURE" and state.CANCELLED == "REVOKED" and state.EXPIRED == "REVOKED"
    assert state.QUEUED == "PENDING" and state.SCHEDULED == "PENDING" and state.RUNNING == "STARTED"
    assert state("SUCCESS") is state.SUCCEEDED and state("RETRY") is state.SCHEDULED
    assert state.RUNNING.celery == "STARTED" and {state.QUEUED: 1}[state.QUEUED] == 1


def test_conf_and_routes():
    app = conveyor.Conveyor("http://127.0.0.1:1")
    app.conf.task_routes = {"billing.*": {"queue": "money", "priority": 8, "exchange": "ignored"}, "mail.send": "mail"}
    assert app.route("billing.charge") == {"queue": "money", "priority": 8}
    assert app.route("mail.send") == {"queue": "mail"}
    assert app.route("other") == {}
    app.conf.update(task_default_queue="celery")
    assert app.route("other") == {"queue": "celery"}
    app.conf.task_routes = lambda name: {"queue": name.split(".")[0]} if "." in name else None
    assert app.route("video.encode") == {"queue": "video"} and app.route("x") == {"queue": "celery"}

    class Settings:
        task_always_eager = True
        beat_schedule = {"a": {"task": "t", "schedule": 5}}
        NOT_A_SETTING = 1

    app.config_from_object(Settings)
    assert app.eager and app.conf.beat_schedule["a"]["schedule"] == 5 and "NOT_A_SETTING" not in app.conf
    with pytest.raises(AttributeError, match="no setting"):
        app.conf.broker_url


def test_autoretry_backoff_and_other_exceptions():
    def fn():
        return None

    handler = Handler("t", fn, autoretry_for=(ConnectionError,), retry_backoff=2, retry_backoff_max=10, retry_jitter=False)
    assert [handler.retry_countdown(n) for n in range(5)] == [2, 4, 8, 10, 10]
    jittered = Handler("t", fn, autoretry_for=(ConnectionError,), retry_backoff=True)
    assert all(0 <= jittered.retry_countdown(3) <= 8 for _ in range(50))
    assert Handler("t", fn, autoretry_for=(OSError,), retry_kwargs={"countdown": 7}).retry_countdown(0) == 7
    ctx = conveyor.TaskContext(pb.Assignment(task_id="x", name="t", attempt=2))
    retried = failure(handler, ctx, ConnectionError("down"))
    assert retried.error.retryable and retried.error.type == "ConnectionError"
    assert retried.error.retry_after.seconds == 4
    final = failure(handler, ctx, KeyError("not listed"))
    assert final.error.type == "KeyError" and not final.error.retryable  # as Celery: no retry


def test_retry_with_max_retries_gives_up():
    ctx = conveyor.TaskContext(pb.Assignment(task_id="x", name="t", attempt=3))
    assert ctx.request.retries == 2 and ctx.request.id == "x"
    with pytest.raises(conveyor.Retry):
        ctx.retry(countdown=1, max_retries=5)
    with pytest.raises(ValueError):
        ctx.retry(exc=ValueError("last"), max_retries=2)
    with pytest.raises(conveyor.MaxRetriesExceededError):
        ctx.retry(max_retries=2)


def test_crontab_expression():
    assert conveyor.crontab().expression == "* * * * *"
    rule = conveyor.crontab(minute=30, hour=3, day_of_week="mon-fri", time_zone="Europe/Berlin")
    assert rule.expression == "30 3 * * mon-fri" and rule.time_zone == "Europe/Berlin"


def test_handlers_pickle_by_reference():
    handler = pool_tasks.app.tasks["pool_tasks.report"].handler()
    copy = pickle.loads(pickle.dumps(handler))
    assert copy.fn is pool_tasks.report.run and copy.bind and copy.name == "pool_tasks.report"
    assert resolve_function("pool_tasks", "burn") is pool_tasks.burn.run
    with pytest.raises(ValueError, match="module level"):
        pickle.dumps(Handler("local", lambda: 1))


def test_addresses_for_failover():
    assert [t.target for t in parse_targets("http://a:1, b:2")] == ["a:1", "b:2"]
    assert [t.target for t in parse_targets(["https://a", "http://b:3"])] == ["a:443", "b:3"]
    assert [t.target for t in parse_targets("ipv4:127.0.0.1:1,127.0.0.1:2")] == ["ipv4:127.0.0.1:1", "ipv4:127.0.0.1:2"]
    with pytest.raises(ValueError, match="no address"):
        parse_targets(" , ")


def test_worker_settings_are_checked():
    with pytest.raises(ValueError, match="pool must be one of"):
        conveyor.Worker("http://127.0.0.1:1", pool="gevent")
    with pytest.raises(ValueError, match="max_tasks_per_child"):
        conveyor.Worker("http://127.0.0.1:1", max_tasks_per_child=0)
    app = conveyor.Conveyor("http://127.0.0.1:1")
    with pytest.raises(ValueError, match="pool of task"):
        app.task(pool="prefork")(lambda: 1)
