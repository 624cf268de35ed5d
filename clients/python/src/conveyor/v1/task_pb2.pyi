import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_UNSPECIFIED: _ClassVar[TaskState]
    TASK_STATE_SCHEDULED: _ClassVar[TaskState]
    TASK_STATE_QUEUED: _ClassVar[TaskState]
    TASK_STATE_LEASED: _ClassVar[TaskState]
    TASK_STATE_RUNNING: _ClassVar[TaskState]
    TASK_STATE_SUCCEEDED: _ClassVar[TaskState]
    TASK_STATE_FAILED: _ClassVar[TaskState]
    TASK_STATE_CANCELLED: _ClassVar[TaskState]
    TASK_STATE_EXPIRED: _ClassVar[TaskState]
    TASK_STATE_WAITING: _ClassVar[TaskState]

class FailureReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_REASON_UNSPECIFIED: _ClassVar[FailureReason]
    FAILURE_REASON_RESULT_TOO_LARGE: _ClassVar[FailureReason]
    FAILURE_REASON_HARD_TIME_LIMIT: _ClassVar[FailureReason]
    FAILURE_REASON_SOFT_TIME_LIMIT: _ClassVar[FailureReason]
    FAILURE_REASON_UNKNOWN_TASK: _ClassVar[FailureReason]
    FAILURE_REASON_BAD_ARGUMENTS: _ClassVar[FailureReason]
    FAILURE_REASON_DEPENDENCY_FAILED: _ClassVar[FailureReason]
TASK_STATE_UNSPECIFIED: TaskState
TASK_STATE_SCHEDULED: TaskState
TASK_STATE_QUEUED: TaskState
TASK_STATE_LEASED: TaskState
TASK_STATE_RUNNING: TaskState
TASK_STATE_SUCCEEDED: TaskState
TASK_STATE_FAILED: TaskState
TASK_STATE_CANCELLED: TaskState
TASK_STATE_EXPIRED: TaskState
TASK_STATE_WAITING: TaskState
FAILURE_REASON_UNSPECIFIED: FailureReason
FAILURE_REASON_RESULT_TOO_LARGE: FailureReason
FAILURE_REASON_HARD_TIME_LIMIT: FailureReason
FAILURE_REASON_SOFT_TIME_LIMIT: FailureReason
FAILURE_REASON_UNKNOWN_TASK: FailureReason
FAILURE_REASON_BAD_ARGUMENTS: FailureReason
FAILURE_REASON_DEPENDENCY_FAILED: FailureReason

class Payload(_message.Message):
    __slots__ = ("data", "content_type")
    DATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    content_type: str
    def __init__(self, data: _Optional[bytes] = ..., content_type: _Optional[str] = ...) -> None: ...

class RetryPolicy(_message.Message):
    __slots__ = ("max_retries", "backoff_base", "backoff_factor", "backoff_max", "jitter")
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_BASE_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_FACTOR_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_MAX_FIELD_NUMBER: _ClassVar[int]
    JITTER_FIELD_NUMBER: _ClassVar[int]
    max_retries: int
    backoff_base: _duration_pb2.Duration
    backoff_factor: float
    backoff_max: _duration_pb2.Duration
    jitter: bool
    def __init__(self, max_retries: _Optional[int] = ..., backoff_base: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., backoff_factor: _Optional[float] = ..., backoff_max: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., jitter: _Optional[bool] = ...) -> None: ...

class TaskOptions(_message.Message):
    __slots__ = ("queue", "priority", "countdown", "eta", "expires", "retry", "soft_time_limit", "hard_time_limit", "rate_limit_key", "concurrency_key", "concurrency_limit", "result_ttl", "headers", "rate_limit", "concurrency_keys")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    COUNTDOWN_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    SOFT_TIME_LIMIT_FIELD_NUMBER: _ClassVar[int]
    HARD_TIME_LIMIT_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_KEY_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    RESULT_TTL_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_KEYS_FIELD_NUMBER: _ClassVar[int]
    queue: str
    priority: int
    countdown: _duration_pb2.Duration
    eta: _timestamp_pb2.Timestamp
    expires: _timestamp_pb2.Timestamp
    retry: RetryPolicy
    soft_time_limit: _duration_pb2.Duration
    hard_time_limit: _duration_pb2.Duration
    rate_limit_key: str
    concurrency_key: str
    concurrency_limit: int
    result_ttl: _duration_pb2.Duration
    headers: _containers.ScalarMap[str, str]
    rate_limit: str
    concurrency_keys: _containers.RepeatedCompositeFieldContainer[ConcurrencyKey]
    def __init__(self, queue: _Optional[str] = ..., priority: _Optional[int] = ..., countdown: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., eta: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., retry: _Optional[_Union[RetryPolicy, _Mapping]] = ..., soft_time_limit: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., hard_time_limit: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., rate_limit_key: _Optional[str] = ..., concurrency_key: _Optional[str] = ..., concurrency_limit: _Optional[int] = ..., result_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., headers: _Optional[_Mapping[str, str]] = ..., rate_limit: _Optional[str] = ..., concurrency_keys: _Optional[_Iterable[_Union[ConcurrencyKey, _Mapping]]] = ...) -> None: ...

class ConcurrencyKey(_message.Message):
    __slots__ = ("key", "limit")
    KEY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    key: str
    limit: int
    def __init__(self, key: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class TaskSpec(_message.Message):
    __slots__ = ("name", "args", "kwargs", "options", "idempotency_key", "trace_context")
    class KwargsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Payload
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Payload, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    KWARGS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    name: str
    args: _containers.RepeatedCompositeFieldContainer[Payload]
    kwargs: _containers.MessageMap[str, Payload]
    options: TaskOptions
    idempotency_key: str
    trace_context: TraceContext
    def __init__(self, name: _Optional[str] = ..., args: _Optional[_Iterable[_Union[Payload, _Mapping]]] = ..., kwargs: _Optional[_Mapping[str, Payload]] = ..., options: _Optional[_Union[TaskOptions, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., trace_context: _Optional[_Union[TraceContext, _Mapping]] = ...) -> None: ...

class TraceContext(_message.Message):
    __slots__ = ("traceparent", "tracestate")
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    TRACESTATE_FIELD_NUMBER: _ClassVar[int]
    traceparent: str
    tracestate: str
    def __init__(self, traceparent: _Optional[str] = ..., tracestate: _Optional[str] = ...) -> None: ...

class TaskError(_message.Message):
    __slots__ = ("type", "message", "traceback", "retryable", "retry_after", "reason", "cause_task_id")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CAUSE_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    type: str
    message: str
    traceback: str
    retryable: bool
    retry_after: _duration_pb2.Duration
    reason: FailureReason
    cause_task_id: str
    def __init__(self, type: _Optional[str] = ..., message: _Optional[str] = ..., traceback: _Optional[str] = ..., retryable: _Optional[bool] = ..., retry_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., reason: _Optional[_Union[FailureReason, str]] = ..., cause_task_id: _Optional[str] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("state", "percent", "meta", "reported_at")
    STATE_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    REPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    state: str
    percent: float
    meta: Payload
    reported_at: _timestamp_pb2.Timestamp
    def __init__(self, state: _Optional[str] = ..., percent: _Optional[float] = ..., meta: _Optional[_Union[Payload, _Mapping]] = ..., reported_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("id", "name", "args", "kwargs", "options", "state", "attempt", "failures", "created_at", "updated_at", "due_at", "finished_at", "worker_id", "result", "error", "queue", "progress", "namespace", "trace_context", "workflow_id", "workflow_node")
    class KwargsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Payload
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Payload, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    KWARGS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    DUE_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_NODE_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    args: _containers.RepeatedCompositeFieldContainer[Payload]
    kwargs: _containers.MessageMap[str, Payload]
    options: TaskOptions
    state: TaskState
    attempt: int
    failures: int
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    due_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    worker_id: str
    result: Payload
    error: TaskError
    queue: str
    progress: Progress
    namespace: str
    trace_context: TraceContext
    workflow_id: str
    workflow_node: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., args: _Optional[_Iterable[_Union[Payload, _Mapping]]] = ..., kwargs: _Optional[_Mapping[str, Payload]] = ..., options: _Optional[_Union[TaskOptions, _Mapping]] = ..., state: _Optional[_Union[TaskState, str]] = ..., attempt: _Optional[int] = ..., failures: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., due_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., worker_id: _Optional[str] = ..., result: _Optional[_Union[Payload, _Mapping]] = ..., error: _Optional[_Union[TaskError, _Mapping]] = ..., queue: _Optional[str] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., namespace: _Optional[str] = ..., trace_context: _Optional[_Union[TraceContext, _Mapping]] = ..., workflow_id: _Optional[str] = ..., workflow_node: _Optional[int] = ...) -> None: ...
