"""Celery side of the benchmark: the `add`, `sleep` and `tsum` tasks.

Broker and result backend are the same Redis as every other system
(BENCH_REDIS, default redis://127.0.0.1:6391/0). Settings are Celery's
defaults except where a comment says otherwise.
"""

import os
import time

from celery import Celery

REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6391/0")

app = Celery("benchtasks", broker=REDIS, backend=REDIS)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    # W4 only: without late acks a killed worker's tasks are simply lost;
    # with them they wait in kombu's `unacked` hash for the visibility
    # timeout (3600 s by default) before any worker may take them again.
    task_acks_late=os.environ.get("BENCH_ACKS_LATE") == "1",
    worker_hijack_root_logger=False,
)


@app.task(name="add")
def add(a, b):
    return a + b


@app.task(name="sleep", bind=True)
def sleep(self, seconds):
    # Recovery bookkeeping for W4: which attempt started when.
    client = self.backend.client
    client.rpush("bench:started", f"{self.request.id} {time.time()}")
    time.sleep(seconds)


@app.task(name="tsum", bind=True)
def tsum(self, values):
    # W5's chord callback: the sum of every header's result. How many it
    # received is recorded for the driver to check (one SET, once per chord).
    self.backend.client.set("bench:tsum:received", len(values))
    return sum(values)
