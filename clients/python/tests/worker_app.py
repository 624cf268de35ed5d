"""A worker process for the tests: `slow(seconds)` sleeps (stopping early
when cancelled) and reports which attempt and which worker ran it.
Env as examples/worker.py."""

import logging
import os
import sys

from conveyor import Conveyor

app = Conveyor(os.environ.get("CONVEYOR_ADDR"))


@app.task(name="slow", bind=True)
def slow(ctx, seconds):
    ctx.sleep(seconds)
    return {"attempt": ctx.attempt, "worker": ctx.worker_id}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    app.worker(
        concurrency=int(os.environ.get("CONVEYOR_CONCURRENCY") or 2),
        queues=[os.environ.get("CONVEYOR_QUEUE") or "default"],
        worker_id=os.environ.get("CONVEYOR_WORKER_ID") or None,
        grace_period=10,
    ).run()
