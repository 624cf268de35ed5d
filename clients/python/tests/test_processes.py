"""Workers in their own processes: the matrix examples, a worker killed
mid-task (SIGKILL) whose task another worker runs again, and a graceful
drain on SIGTERM."""

import json
import os
import signal
import subprocess
import sys

from conftest import CLIENT_DIR, REPO_ROOT, wait_for_state, wait_until

from conveyor import TaskState

EXAMPLES = CLIENT_DIR / "examples"
WORKER_APP = CLIENT_DIR / "tests" / "worker_app.py"


def test_example_producer_and_worker(server, spawn_worker, queue_name):
    worker = spawn_worker(EXAMPLES / "worker.py", queue_name)
    producer = subprocess.run(
        [sys.executable, str(EXAMPLES / "producer.py")],
        env={**os.environ, "CONVEYOR_ADDR": server, "CONVEYOR_QUEUE": queue_name},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert producer.returncode == 0, producer.stderr
    lines = producer.stdout.strip().splitlines()
    assert len(lines) == 1, producer.stdout
    assert json.loads(lines[0]) == {
        "producer": "python",
        "add": 5,
        "xsum": 6.5,
        "lang": "python",
        "fail": {"type": "ValueError", "message": "boom from python", "has_traceback": True},
    }
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0, worker.output()


def test_example_producer_fails_without_a_server(queue_name):
    producer = subprocess.run(
        [sys.executable, str(EXAMPLES / "producer.py")],
        env={**os.environ, "CONVEYOR_ADDR": "http://127.0.0.1:1", "CONVEYOR_QUEUE": queue_name},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert producer.returncode == 1
    assert producer.stdout == "" and "UNAVAILABLE" in producer.stderr


def test_example_philosophers(server, queue_name):
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / "philosophers.py")],
        env={**os.environ, "CONVEYOR_ADDR": server, "CONVEYOR_QUEUE": queue_name},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[:5] == [f"philosopher {i} ate 5 meals" for i in range(5)], run.stdout
    most = int(lines[5].removeprefix("most eating at once: "))
    assert 1 <= most <= 2, run.stdout
    assert lines[6:] == ["fork held by two at once: never"], run.stdout


def test_killed_worker_task_runs_again_elsewhere(client, spawn_worker, queue_name):
    first = spawn_worker(WORKER_APP, queue_name, worker_id="py-doomed")
    task_id = client.submit("slow", [3], queue=queue_name)
    running = wait_for_state(client, task_id, {TaskState.RUNNING}, timeout=20)
    assert running.worker_id == "py-doomed" and running.attempt == 1
    first.signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL

    spawn_worker(WORKER_APP, queue_name, worker_id="py-rescuer")
    assert client.result(task_id, timeout=20) == {"attempt": 2, "worker": "py-rescuer"}
    task = client.get(task_id)
    assert task.attempt == 2 and task.worker_id == "py-rescuer"


def test_sigterm_drains_running_tasks(client, spawn_worker, queue_name):
    worker = spawn_worker(WORKER_APP, queue_name, worker_id="py-draining")
    running_id = client.submit("slow", [1.0], queue=queue_name)
    wait_for_state(client, running_id, {TaskState.RUNNING}, timeout=20)
    worker.signal(signal.SIGTERM)
    wait_until(lambda: "draining" in worker.output(), 10, "the worker to start draining")
    late_id = client.submit("slow", [0], queue=queue_name)

    assert worker.wait(15) == 0, worker.output()
    assert client.result(running_id, timeout=5) == {"attempt": 1, "worker": "py-draining"}
    assert client.state(late_id) == TaskState.QUEUED  # never started: left for other workers
