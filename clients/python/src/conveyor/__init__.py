"""Conveyor's Python client and worker SDK.

Celery-like: `Conveyor` (the app) with `@app.task`, `delay`/`apply_async`,
`AsyncResult`, the canvas (`chain`, `group`, `chord`, `link`, compiled into
server-side workflows) and `app.worker().run()`; underneath, `conveyor.Client`
(blocking), `conveyor.aio.AsyncClient` (asyncio) and `conveyor.Worker`
(grpc.aio). The generated protobuf and gRPC modules are in `conveyor.v1`.
"""

from conveyor import aio
from conveyor._codec import JSON_CONTENT_TYPE, Progress, TaskState, build_spec, decode, encode
from conveyor._version import __version__
from conveyor._eager import EagerResult
from conveyor.app import AsyncResult, Config, Conveyor, Task, current_app
from conveyor.canvas import Signature, chain, chord, chunks, group, maybe_signature, signature, starmap
from conveyor.client import Client
from conveyor.errors import (
    ConveyorError,
    MaxRetriesExceededError,
    PayloadError,
    PermissionDenied,
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
    Unauthenticated,
)
from conveyor.result import GroupResult, WorkflowResult, WorkflowState
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
    "GroupResult",
    "MaxRetriesExceededError",
    "PayloadError",
    "PermissionDenied",
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
    "Unauthenticated",
    "Worker",
    "WorkflowResult",
    "WorkflowState",
    "__version__",
    "aio",
    "build_spec",
    "chain",
    "chord",
    "chunks",
    "crontab",
    "current_app",
    "current_task",
    "decode",
    "encode",
    "group",
    "maybe_signature",
    "signature",
    "starmap",
]
