"""Module-level tasks for the process-pool tests: a child process imports
them by name (`pool_tasks.burn`), as it would a user's `tasks` module."""

import os
import time

import conveyor
from conveyor import Conveyor, SoftTimeLimitExceeded

app = Conveyor(os.environ.get("CONVEYOR_ADDR"))


@app.task
def burn(seconds):
    """Pure-Python CPU work until this thread used `seconds` of CPU; returns the pid."""
    deadline = time.thread_time() + seconds
    total = 0
    while time.thread_time() < deadline:
        for i in range(10_000):
            total += i * i
    return os.getpid()


def plain_work(units):
    """A fixed amount of pure-Python CPU work (a unit is about 1 ms); returns the pid."""
    total = 0
    for _ in range(units):
        for i in range(10_000):
            total += i * i
    return os.getpid()


@app.task
def work(units):
    return plain_work(units)


@app.task
def nap(seconds):
    """time.sleep; reports when SoftTimeLimitExceeded interrupted it."""
    started = time.monotonic()
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        return {"interrupted_after": time.monotonic() - started, "pid": os.getpid()}
    return {"slept": seconds, "pid": os.getpid()}


@app.task
def pid():
    return os.getpid()


@app.task
def crash(code):
    os._exit(code)


@app.task
def hog(mebibytes):
    """Touches `mebibytes` MiB, so that the child's peak RSS grows."""
    block = bytearray(mebibytes * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return os.getpid()


@app.task(bind=True)
def report(self, steps):
    for step in range(steps):
        self.update_state(state="STEP", meta={"step": step}, percent=100.0 * (step + 1) / steps)
        time.sleep(0.2)
    return {"retries": self.request.retries, "pid": os.getpid(), "current": conveyor.current_task().id == self.request.id}


@app.task(pool="process")
def in_child():
    """Runs in a child process even on a threads worker (per-task pool)."""
    return os.getpid()


@app.task
async def on_loop():
    return os.getpid()
