"""Payloads (JSON by default), times and task specs: what turns Python values
and Celery-style options into the protobuf messages, and back."""

from __future__ import annotations

import datetime as _dt
import enum
import json
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from google.protobuf import duration_pb2, timestamp_pb2

from conveyor.errors import (
    PayloadError,
    ProtocolError,
    TaskCancelled,
    TaskExpired,
    TaskFailed,
    TaskNotSucceeded,
)
from conveyor.v1 import task_pb2

JSON_CONTENT_TYPE = "application/json"

# Largest duration protobuf allows (about 10,000 years).
_MAX_DURATION_SECONDS = 315_576_000_000


class TaskState(str, enum.Enum):
    """A task's state. A `str` enum: `state == "SUCCEEDED"` works too, and so
    do Celery's names: `state == "SUCCESS"` (see `celery`)."""

    UNSPECIFIED = "UNSPECIFIED"
    SCHEDULED = "SCHEDULED"
    QUEUED = "QUEUED"
    LEASED = "LEASED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"
    WAITING = "WAITING"

    @classmethod
    def from_proto(cls, value: int) -> TaskState:
        try:
            name = task_pb2.TaskState.Name(value)
        except ValueError:
            return cls.UNSPECIFIED
        return cls(name.removeprefix("TASK_STATE_"))

    @classmethod
    def _missing_(cls, value: object) -> TaskState | None:
        """`TaskState("SUCCESS")`: a Celery name gives its state."""
        return _FROM_CELERY.get(value) if isinstance(value, str) else None

    @property
    def terminal(self) -> bool:
        """SUCCEEDED, FAILED, CANCELLED or EXPIRED."""
        return self in _TERMINAL

    @property
    def celery(self) -> str:
        """Celery's name: PENDING (not started: SCHEDULED, QUEUED, LEASED,
        WAITING), STARTED (RUNNING), SUCCESS, FAILURE, REVOKED (CANCELLED,
        EXPIRED). `AsyncResult.celery_state` also tells RETRY (waiting for
        a retry after a failure)."""
        return _CELERY[self][0]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str) and not isinstance(other, TaskState):
            return str.__eq__(self, other) or other in _CELERY[self]
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = str.__hash__

    def __str__(self) -> str:
        return self.value


_TERMINAL = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.EXPIRED}
)
# Celery's names of each state, the first being `TaskState.celery`.
_CELERY: dict[TaskState, tuple[str, ...]] = {
    TaskState.UNSPECIFIED: ("PENDING",),
    TaskState.SCHEDULED: ("PENDING",),
    TaskState.QUEUED: ("PENDING",),
    TaskState.LEASED: ("PENDING", "RECEIVED"),
    TaskState.RUNNING: ("STARTED",),
    TaskState.SUCCEEDED: ("SUCCESS",),
    TaskState.FAILED: ("FAILURE",),
    TaskState.CANCELLED: ("REVOKED",),
    TaskState.EXPIRED: ("REVOKED",),
    TaskState.WAITING: ("PENDING",),
}
_FROM_CELERY = {
    "PENDING": TaskState.QUEUED,
    "RECEIVED": TaskState.LEASED,
    "STARTED": TaskState.RUNNING,
    "RETRY": TaskState.SCHEDULED,
    "SUCCESS": TaskState.SUCCEEDED,
    "FAILURE": TaskState.FAILED,
    "REVOKED": TaskState.CANCELLED,
}


# --- payloads --------------------------------------------------------------------


def is_json(content_type: str) -> bool:
    """True for "", "application/json" (with parameters) and "+json" types."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("", JSON_CONTENT_TYPE) or media.endswith("+json")


def encode(value: Any, what: str = "value") -> task_pb2.Payload:
    """`value` as a JSON payload. A `task_pb2.Payload` passes through as it
    is (for arguments in another content type)."""
    if isinstance(value, task_pb2.Payload):
        return value
    try:
        data = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise PayloadError(f"cannot encode {what} as JSON: {error}") from error
    return task_pb2.Payload(data=data.encode("utf-8"), content_type=JSON_CONTENT_TYPE)


def decode(payload: task_pb2.Payload, what: str = "value") -> Any:
    """The value of a JSON payload. A payload in another content type is
    returned as it is (a `task_pb2.Payload`); an empty JSON payload is None."""
    if not is_json(payload.content_type):
        return payload
    if not payload.data:
        return None
    try:
        return json.loads(payload.data)
    except (ValueError, UnicodeDecodeError) as error:
        raise PayloadError(f"cannot decode {what}: {error}") from error


# --- times -----------------------------------------------------------------------


def seconds_of(value: float | int | _dt.timedelta, what: str) -> float:
    if isinstance(value, _dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"{what} must be seconds (int or float) or a timedelta, not {value!r}")
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"{what} must be a non-negative duration, not {value!r}")
    return seconds


def to_duration(value: float | int | _dt.timedelta, what: str = "duration") -> duration_pb2.Duration:
    seconds = min(seconds_of(value, what), float(_MAX_DURATION_SECONDS))
    whole = int(seconds)
    nanos = int(round((seconds - whole) * 1e9))
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    return duration_pb2.Duration(seconds=whole, nanos=nanos)


def from_duration(duration: duration_pb2.Duration | None) -> float | None:
    """Seconds, or None for an absent, zero or negative duration."""
    if duration is None:
        return None
    seconds = duration.seconds + duration.nanos / 1e9
    return seconds if seconds > 0 else None


def epoch_of(value: _dt.datetime | float | int, what: str) -> float:
    """Seconds since the epoch of an instant: an aware datetime, a naive one
    (local time, as `datetime.timestamp` reads it) or epoch seconds."""
    if isinstance(value, _dt.datetime):
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"{what} must be a datetime or epoch seconds, not {value!r}")


def to_timestamp(epoch: float) -> timestamp_pb2.Timestamp:
    whole = math.floor(epoch)
    nanos = int(round((epoch - whole) * 1e9))
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    return timestamp_pb2.Timestamp(seconds=int(whole), nanos=nanos)


def from_timestamp(ts: timestamp_pb2.Timestamp) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=_dt.timezone.utc)


# --- task specs --------------------------------------------------------------------

# Every option `build_spec` understands (Celery's names where Celery has one).
OPTION_NAMES = frozenset(
    {
        "queue",
        "priority",
        "countdown",
        "eta",
        "expires",
        "max_retries",
        "retry_policy",
        "soft_time_limit",
        "time_limit",
        "hard_time_limit",
        "rate_limit",
        "rate_limit_key",
        "concurrency_key",
        "concurrency_limit",
        "concurrency_keys",
        "idempotency_key",
        "headers",
        "result_ttl",
    }
)

_RETRY_FIELDS = ("max_retries", "backoff_base", "backoff_factor", "backoff_max", "jitter")


def check_options(options: Mapping[str, Any]) -> None:
    unknown = sorted(set(options) - OPTION_NAMES)
    if unknown:
        raise TypeError(
            f"unknown task option(s) {', '.join(unknown)}; known: {', '.join(sorted(OPTION_NAMES))}"
        )


def retry_policy(value: Any) -> task_pb2.RetryPolicy:
    """A RetryPolicy from a message or a mapping with the keys max_retries,
    backoff_base and backoff_max (seconds or timedelta), backoff_factor and
    jitter."""
    if isinstance(value, task_pb2.RetryPolicy):
        policy = task_pb2.RetryPolicy()
        policy.CopyFrom(value)
        return policy
    if not isinstance(value, Mapping):
        raise TypeError(f"retry_policy must be a mapping or a RetryPolicy, not {value!r}")
    unknown = sorted(set(value) - set(_RETRY_FIELDS))
    if unknown:
        raise TypeError(f"unknown retry_policy key(s): {', '.join(unknown)}")
    policy = task_pb2.RetryPolicy()
    if value.get("max_retries") is not None:
        policy.max_retries = int(value["max_retries"])
    if value.get("backoff_base") is not None:
        policy.backoff_base.CopyFrom(to_duration(value["backoff_base"], "backoff_base"))
    if value.get("backoff_factor") is not None:
        policy.backoff_factor = float(value["backoff_factor"])
    if value.get("backoff_max") is not None:
        policy.backoff_max.CopyFrom(to_duration(value["backoff_max"], "backoff_max"))
    if value.get("jitter") is not None:
        policy.jitter = bool(value["jitter"])
    return policy


def rate_limit(value: Any) -> str:
    """A rate in Celery's syntax ("10/s", "100/m", "5/h"); a number, as in
    Celery, means tasks per second."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(f'rate_limit must be a str such as "10/m" or a number, not {value!r}')
    if isinstance(value, str):
        return value.strip()
    if not (value > 0 and value != float("inf")):
        raise ValueError(f"rate_limit must be positive, not {value!r}")
    return f"{value}/s"


def concurrency_keys(value: Any) -> list[task_pb2.ConcurrencyKey]:
    """The ConcurrencyKey messages of the `concurrency_keys` option: a
    mapping {key: limit} or pairs [(key, limit), ...], in order. Only the
    types are checked here; the server checks the rest (at most 8 keys with
    `concurrency_key`, each once, limit >= 1) and names the field it rejects."""
    if isinstance(value, Mapping):
        pairs: Iterable[Any] = value.items()
    elif isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(
            f'concurrency_keys must be a mapping {{"key": limit}} or (key, limit) pairs, not {value!r}'
        )
    else:
        pairs = value
    keys = []
    for pair in pairs:
        if isinstance(pair, task_pb2.ConcurrencyKey):
            key, limit = pair.key, pair.limit
        else:
            try:
                key, limit = pair
            except (TypeError, ValueError):
                raise TypeError(f"a concurrency key is a (key, limit) pair, not {pair!r}") from None
        if not isinstance(key, str):
            raise TypeError(f"a concurrency key must be a str, not {key!r}")
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"the limit of concurrency key {key!r} must be an int, not {limit!r}")
        if not 0 <= limit < 2**32:
            raise ValueError(f"the limit of concurrency key {key!r} must be 1 to {2**32 - 1}, not {limit!r}")
        keys.append(task_pb2.ConcurrencyKey(key=key, limit=limit))
    return keys


def build_spec(
    name: str,
    args: Iterable[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    **options: Any,
) -> task_pb2.TaskSpec:
    """The TaskSpec for task `name` with JSON-encoded arguments and options.

    Options (all optional, None means unset): queue, priority (0-9),
    countdown (seconds or timedelta) or eta (datetime or epoch seconds),
    expires (a datetime, or seconds/timedelta from now, as in Celery),
    max_retries, retry_policy (see `retry_policy`), soft_time_limit,
    time_limit (alias hard_time_limit), rate_limit (Celery's syntax: "10/s",
    "100/m", "5/h"; a bare number means per second) and rate_limit_key,
    concurrency_key and concurrency_limit, concurrency_keys (several keys
    needed at once, all-or-nothing: {key: limit} or [(key, limit), ...]; see
    `concurrency_keys`), idempotency_key, headers (str -> str), result_ttl.
    """
    if not isinstance(name, str):
        raise TypeError(f"task name must be a str, not {name!r}")
    if isinstance(args, (str, bytes)):
        raise TypeError("args must be a list or tuple of arguments, not a string")
    check_options(options)
    spec = task_pb2.TaskSpec(name=name)
    for index, value in enumerate(args or ()):
        spec.args.append(encode(value, f"positional argument {index} of task {name!r}"))
    for key, value in (kwargs or {}).items():
        if not isinstance(key, str):
            raise TypeError(f"keyword argument names must be str, not {key!r}")
        spec.kwargs[key].CopyFrom(encode(value, f"keyword argument {key!r} of task {name!r}"))
    opts = spec.options
    touched = False

    def get(key: str) -> Any:
        return options.get(key)

    if get("queue") is not None:
        opts.queue = str(get("queue"))
        touched = True
    if get("priority") is not None:
        opts.priority = int(get("priority"))
        touched = True
    if get("countdown") is not None and get("eta") is not None:
        raise ValueError("countdown and eta are exclusive: give one of them")
    if get("countdown") is not None:
        opts.countdown.CopyFrom(to_duration(get("countdown"), "countdown"))
        touched = True
    if get("eta") is not None:
        opts.eta.CopyFrom(to_timestamp(epoch_of(get("eta"), "eta")))
        touched = True
    expires = get("expires")
    if expires is not None:
        if isinstance(expires, _dt.datetime):
            at = expires.timestamp()
        else:
            at = time.time() + seconds_of(expires, "expires")
        opts.expires.CopyFrom(to_timestamp(at))
        touched = True
    if get("retry_policy") is not None:
        opts.retry.CopyFrom(retry_policy(get("retry_policy")))
        touched = True
    if get("max_retries") is not None:
        opts.retry.max_retries = int(get("max_retries"))
        touched = True
    if get("soft_time_limit") is not None:
        opts.soft_time_limit.CopyFrom(to_duration(get("soft_time_limit"), "soft_time_limit"))
        touched = True
    hard = get("time_limit") if get("time_limit") is not None else get("hard_time_limit")
    if hard is not None:
        opts.hard_time_limit.CopyFrom(to_duration(hard, "time_limit"))
        touched = True
    if get("rate_limit") is not None:
        opts.rate_limit = rate_limit(get("rate_limit"))
        touched = True
    if get("rate_limit_key") is not None:
        opts.rate_limit_key = str(get("rate_limit_key"))
        touched = True
    if get("concurrency_key") is not None:
        opts.concurrency_key = str(get("concurrency_key"))
        touched = True
    if get("concurrency_limit") is not None:
        opts.concurrency_limit = int(get("concurrency_limit"))
        touched = True
    if get("concurrency_keys") is not None:
        opts.concurrency_keys.extend(concurrency_keys(get("concurrency_keys")))
        touched = touched or len(opts.concurrency_keys) > 0
    if get("headers"):
        for key, value in dict(get("headers")).items():
            opts.headers[str(key)] = str(value)
        touched = True
    if get("result_ttl") is not None:
        opts.result_ttl.CopyFrom(to_duration(get("result_ttl"), "result_ttl"))
        touched = True
    if not touched:
        spec.ClearField("options")
    if get("idempotency_key") is not None:
        spec.idempotency_key = str(get("idempotency_key"))
    return spec


# --- progress ---------------------------------------------------------------------


class Progress(NamedTuple):
    """What a running handler last reported about itself (Celery's
    `update_state`): a custom `state` name, `percent` done, decoded `meta`,
    and when (`reported_at`, UTC)."""

    state: str
    percent: float
    meta: Any
    reported_at: _dt.datetime | None

    @classmethod
    def from_task(cls, task: task_pb2.Task) -> Progress | None:
        if not task.HasField("progress"):
            return None
        progress = task.progress
        return cls(
            progress.state,
            progress.percent,
            decode(progress.meta, "progress meta") if progress.HasField("meta") else None,
            from_timestamp(progress.reported_at) if progress.HasField("reported_at") else None,
        )


# --- outcomes --------------------------------------------------------------------


def outcome(task: task_pb2.Task) -> Any:
    """The decoded result of a terminal task, or the exception for one that
    did not succeed (raised)."""
    state = TaskState.from_proto(task.state)
    if state == TaskState.SUCCEEDED:
        if not task.HasField("result"):
            return None
        return decode(task.result, f"result of task {task.id}")
    raise unsuccessful(task)


def unsuccessful(task: task_pb2.Task) -> TaskNotSucceeded:
    """The exception for a task that ended without success."""
    state = TaskState.from_proto(task.state)
    if state == TaskState.FAILED:
        error = task.error
        return TaskFailed(
            error.type,
            error.message,
            error.traceback,
            retryable=error.retryable,
            task_id=task.id,
            state=state,
            reason=failure_reason(error.reason),
            cause_task_id=error.cause_task_id,
            workflow_id=task.workflow_id,
            node=task.workflow_node if task.workflow_id else None,
            task_name=task.name,
        )
    if state == TaskState.CANCELLED:
        return TaskCancelled(f"task {task.id} was cancelled", task_id=task.id, state=state)
    if state == TaskState.EXPIRED:
        return TaskExpired(f"task {task.id} expired before it ran", task_id=task.id, state=state)
    return TaskNotSucceeded(f"task {task.id} has not finished: it is {state}", task_id=task.id, state=state)


def failure_reason(value: int) -> str:
    """The name of a FailureReason without its prefix ("DEPENDENCY_FAILED");
    "" for UNSPECIFIED (the handler's own error) and unknown numbers."""
    if not value:
        return ""
    try:
        return task_pb2.FailureReason.Name(value).removeprefix("FAILURE_REASON_")
    except ValueError:
        return ""


def require_task(response: Any, rpc: str) -> task_pb2.Task:
    if not response.HasField("task"):
        raise ProtocolError(f"{rpc} response carries no task")
    return response.task
