"""The project's `beat_schedule` is synced to the scheduling service when
its worker connects, idempotently, and its entries fire."""

import time

import tasks

import conveyor


def test_beat_schedule_synced_and_firing(server, celery_project):
    with conveyor.Client(server) as client:
        deadline = time.monotonic() + 15
        while True:
            ids = {s.id: s for s in client.schedules.list() if s.task.options.queue == celery_project}
            ping = ids.get("beat:ping-every-second")
            if ping is not None and ping.runs >= 1:
                break
            assert time.monotonic() < deadline, f"beat schedules not synced or not firing: {sorted(ids)}"
            time.sleep(0.2)
        assert ids["beat:cleanup-at-night"].cron.expression == "30 3 * * *"
        assert ping.task.name == "tasks.ping" and ping.interval.every.seconds == 1
        run = client.schedules.runs("beat:ping-every-second")[0]
        assert client.result(run.task_id, timeout=10) == "pong beat"
    # Every worker and app syncs on start: a second sync changes nothing.
    assert set(tasks.app.sync_beat_schedule().values()) == {"unchanged"}
