"""A Celery user's tasks module, moved to Conveyor. Only the marked lines
changed: the imports and the app's construction. Everything else is as it
was under Celery (`celery -A tasks worker` becomes `conveyor-worker -A tasks`).
"""

import os
import time

# Celery:   from celery import Celery
#           from celery.schedules import crontab
from conveyor import Conveyor, crontab  # changed: the import

# Celery:   app = Celery("tasks", broker="redis://localhost:6379/0", backend="redis://localhost:6379/1")
app = Conveyor(os.environ.get("CONVEYOR_ADDR"), main="tasks")  # changed: the app

app.conf.task_default_queue = os.environ.get("TASKS_QUEUE", "celery")
app.conf.beat_schedule = {
    "ping-every-second": {
        "task": "tasks.ping",
        "schedule": 1.0,
        "args": ("beat",),
    },
    "cleanup-at-night": {
        "task": "tasks.cleanup",
        "schedule": crontab(hour=3, minute=30),
    },
}


class FlakyServiceError(ConnectionError):
    pass


@app.task
def add(x, y):
    return x + y


@app.task(bind=True, autoretry_for=(FlakyServiceError,), retry_backoff=True, retry_backoff_max=2, max_retries=5)
def fetch(self, url):
    """Fails twice, then succeeds: autoretry_for with retry_backoff retries it."""
    if self.request.retries < 2:
        raise FlakyServiceError(f"{url} is flaky")
    return {"url": url, "retries": self.request.retries, "id": self.request.id}


@app.task(bind=True, max_retries=1)
def strict(self, value):
    if value < 0:
        raise ValueError("negative")
    return value


@app.task
def ping(who):
    return f"pong {who}"


@app.task
def cleanup():
    return 0


@app.task
def slow(seconds):
    time.sleep(seconds)
    return seconds


@app.task(bind=True)
def progress(self, steps):
    for step in range(steps):
        self.update_state(state="PROGRESS", meta={"current": step + 1, "total": steps})
        time.sleep(0.1)
    return steps
