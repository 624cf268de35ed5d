"""The example worker of the cross-language matrix.

Env: CONVEYOR_ADDR (default http://127.0.0.1:50051), CONVEYOR_QUEUE (default
"default"), CONVEYOR_CONCURRENCY (default 8), CONVEYOR_WORKER_ID (default
hostname-pid), CONVEYOR_TOKEN (a bearer token, for a server with
--auth-token), CONVEYOR_<SERVICE>_ADDR (one address per service). Runs until SIGTERM/SIGINT, then drains and exits 0.
"""

import asyncio
import logging
import os
import sys

from conveyor import Conveyor

# Explicit bare names: workers and producers in other languages use them
# (without `name=`, a task is named `module.function`, as in Celery).
app = Conveyor(
    os.environ.get("CONVEYOR_ADDR") or "http://127.0.0.1:50051",
    token=os.environ.get("CONVEYOR_TOKEN") or None,
)


@app.task(name="add")
def add(a, b):
    """a + b; integers stay integers."""
    return a + b


@app.task(name="xsum")
def xsum(numbers):
    """The sum of a JSON array of numbers; any float makes a float."""
    return sum(numbers)


@app.task(name="fail", dont_retry_for=(ValueError,))
def fail(message="boom"):
    """Always fails with a non-retryable ValueError."""
    raise ValueError(message)


@app.task(name="lang")
def lang():
    return "python"


@app.task(name="sleep")
async def sleep(seconds):
    """Sleeps; cancelling the task cancels the sleep."""
    await asyncio.sleep(float(seconds))
    return None


def main() -> int:
    logging.basicConfig(
        level=os.environ.get("CONVEYOR_LOG", "INFO").upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    worker = app.worker(
        concurrency=int(os.environ.get("CONVEYOR_CONCURRENCY") or 8),
        queues=[os.environ.get("CONVEYOR_QUEUE") or "default"],
        worker_id=os.environ.get("CONVEYOR_WORKER_ID") or None,
    )
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
