"""Conveyor's Python client and worker SDK.

Celery-like: `Conveyor` (the app) with `@app.task`, `delay`/`apply_async`,
`AsyncResult` and `app.worker().run()`; underneath, `conveyor.Client`
(blocking), `conveyor.aio.AsyncClient` (asyncio) and `conveyor.Worker`
(grpc.aio). The generated protobuf and gRPC modules are in `conveyor.v1`.
"""

from conveyor import aio
from conveyor._codec import JSON_CONTENT_TYPE, Progress, TaskState, build_spec, decode, encode
from conveyor._version import __version__
from conveyor._eager import EagerResult
from conveyor.app import AsyncResult, Config, Conveyor, Signature, Task, current_app
from conveyor.client import Client
from conveyor.errors import (
    ConveyorError,
    MaxRetriesExceededError,
    PayloadError,
    ProtocolError,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    TaskCancelled,
    TaskExpired,
    TaskFailed,
    TaskNotSucceeded,
    TaskTimeout,
    Terminated,
)
from conveyor.schedules import crontab
from conveyor.worker import POOLS, TaskContext, Worker, current_task

__all__ = [
    "JSON_CONTENT_TYPE",
    "POOLS",
    "AsyncResult",
    "Client",
    "Config",
    "Conveyor",
    "ConveyorError",
    "EagerResult",
    "MaxRetriesExceededError",
    "PayloadError",
    "ProtocolError",
    "Progress",
    "Reject",
    "Retry",
    "Signature",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskCancelled",
    "TaskContext",
    "TaskExpired",
    "TaskFailed",
    "TaskNotSucceeded",
    "TaskState",
    "TaskTimeout",
    "Terminated",
    "Worker",
    "__version__",
    "aio",
    "build_spec",
    "crontab",
    "current_app",
    "current_task",
    "decode",
    "encode",
]
