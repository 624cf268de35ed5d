"""Harness of the Celery sample project: the session's `conveyor dev` (from
the parent conftest) and a `conveyor-worker -A tasks -P process` started in
this directory, as its user would start it."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import conveyor

HERE = Path(__file__).resolve().parent
# The project's modules import `tasks` as its user's do: from this directory.
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


def worker_command() -> list[str]:
    script = Path(sys.executable).parent / "conveyor-worker"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "conveyor", "worker"]


@pytest.fixture(scope="module", autouse=True)
def celery_project(server):
    """Runs the project's worker for the module and points `tasks` at the server."""
    queue = f"celery-{uuid.uuid4().hex[:10]}"
    # The worker reads these; this process imported `tasks` at collection,
    # so its app is pointed at the same server and queue here.
    env = {**os.environ, "CONVEYOR_ADDR": server, "TASKS_QUEUE": queue}
    import tasks

    tasks.app.address = server
    tasks.app.conf.task_default_queue = queue
    tasks.app.set_current()

    log = open(Path(os.environ.get("CONVEYOR_TMP") or "/tmp") / "python-celery-project-worker.log", "wb")
    worker = subprocess.Popen(
        [*worker_command(), "-A", "tasks", "-P", "process", "-c", "2", "-Q", queue, "-l", "info"],
        cwd=HERE,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield queue
    finally:
        worker.terminate()
        worker.wait(20)
        log.close()
        with conveyor.Client(server) as client:
            for schedule in client.schedules.list():
                if schedule.id.startswith("beat:") and schedule.task.options.queue == queue:
                    client.schedules.delete(schedule.id)
