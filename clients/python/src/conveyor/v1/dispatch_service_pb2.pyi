import datetime

from conveyor.v1 import task_pb2 as _task_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CancelReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CANCEL_REASON_UNSPECIFIED: _ClassVar[CancelReason]
    CANCEL_REASON_REVOKED: _ClassVar[CancelReason]
    CANCEL_REASON_HARD_TIME_LIMIT: _ClassVar[CancelReason]
    CANCEL_REASON_LEASE_LOST: _ClassVar[CancelReason]
    CANCEL_REASON_EXPIRED: _ClassVar[CancelReason]

class DrainReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DRAIN_REASON_UNSPECIFIED: _ClassVar[DrainReason]
    DRAIN_REASON_SHUTDOWN: _ClassVar[DrainReason]
    DRAIN_REASON_REBALANCE: _ClassVar[DrainReason]
CANCEL_REASON_UNSPECIFIED: CancelReason
CANCEL_REASON_REVOKED: CancelReason
CANCEL_REASON_HARD_TIME_LIMIT: CancelReason
CANCEL_REASON_LEASE_LOST: CancelReason
CANCEL_REASON_EXPIRED: CancelReason
DRAIN_REASON_UNSPECIFIED: DrainReason
DRAIN_REASON_SHUTDOWN: DrainReason
DRAIN_REASON_REBALANCE: DrainReason

class PauseQueueRequest(_message.Message):
    __slots__ = ("queue", "namespace")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    queue: str
    namespace: str
    def __init__(self, queue: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class PauseQueueResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResumeQueueRequest(_message.Message):
    __slots__ = ("queue", "namespace")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    queue: str
    namespace: str
    def __init__(self, queue: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class ResumeQueueResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("hello", "grant_credits", "heartbeat", "report_outcomes", "task_started", "report_progress")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    GRANT_CREDITS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    REPORT_OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    TASK_STARTED_FIELD_NUMBER: _ClassVar[int]
    REPORT_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    grant_credits: GrantCredits
    heartbeat: Heartbeat
    report_outcomes: ReportOutcomes
    task_started: TaskStarted
    report_progress: ReportProgress
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., grant_credits: _Optional[_Union[GrantCredits, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., report_outcomes: _Optional[_Union[ReportOutcomes, _Mapping]] = ..., task_started: _Optional[_Union[TaskStarted, _Mapping]] = ..., report_progress: _Optional[_Union[ReportProgress, _Mapping]] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("welcome", "assignments", "cancel_assignment", "drain", "outcome_rejected")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_REJECTED_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    assignments: Assignments
    cancel_assignment: CancelAssignment
    drain: Drain
    outcome_rejected: OutcomeRejected
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., assignments: _Optional[_Union[Assignments, _Mapping]] = ..., cancel_assignment: _Optional[_Union[CancelAssignment, _Mapping]] = ..., drain: _Optional[_Union[Drain, _Mapping]] = ..., outcome_rejected: _Optional[_Union[OutcomeRejected, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("worker_id", "queues", "task_names", "concurrency", "language", "sdk_version", "hostname", "protocol_version", "namespace")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    TASK_NAMES_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    SDK_VERSION_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    queues: _containers.RepeatedScalarFieldContainer[str]
    task_names: _containers.RepeatedScalarFieldContainer[str]
    concurrency: int
    language: str
    sdk_version: str
    hostname: str
    protocol_version: int
    namespace: str
    def __init__(self, worker_id: _Optional[str] = ..., queues: _Optional[_Iterable[str]] = ..., task_names: _Optional[_Iterable[str]] = ..., concurrency: _Optional[int] = ..., language: _Optional[str] = ..., sdk_version: _Optional[str] = ..., hostname: _Optional[str] = ..., protocol_version: _Optional[int] = ..., namespace: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("session_id", "heartbeat_interval", "lease_ttl", "max_credits", "protocol_version", "max_frame_bytes")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_FIELD_NUMBER: _ClassVar[int]
    MAX_CREDITS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    heartbeat_interval: _duration_pb2.Duration
    lease_ttl: _duration_pb2.Duration
    max_credits: int
    protocol_version: int
    max_frame_bytes: int
    def __init__(self, session_id: _Optional[str] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., lease_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_credits: _Optional[int] = ..., protocol_version: _Optional[int] = ..., max_frame_bytes: _Optional[int] = ...) -> None: ...

class GrantCredits(_message.Message):
    __slots__ = ("credits",)
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    credits: int
    def __init__(self, credits: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReportOutcomes(_message.Message):
    __slots__ = ("outcomes",)
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[TaskOutcome]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[TaskOutcome, _Mapping]]] = ...) -> None: ...

class TaskOutcome(_message.Message):
    __slots__ = ("task_id", "lease_token", "result", "error")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    lease_token: int
    result: _task_pb2.Payload
    error: _task_pb2.TaskError
    def __init__(self, task_id: _Optional[str] = ..., lease_token: _Optional[int] = ..., result: _Optional[_Union[_task_pb2.Payload, _Mapping]] = ..., error: _Optional[_Union[_task_pb2.TaskError, _Mapping]] = ...) -> None: ...

class TaskStarted(_message.Message):
    __slots__ = ("task_id", "lease_token")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    lease_token: int
    def __init__(self, task_id: _Optional[str] = ..., lease_token: _Optional[int] = ...) -> None: ...

class ReportProgress(_message.Message):
    __slots__ = ("task_id", "lease_token", "progress")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    lease_token: int
    progress: _task_pb2.Progress
    def __init__(self, task_id: _Optional[str] = ..., lease_token: _Optional[int] = ..., progress: _Optional[_Union[_task_pb2.Progress, _Mapping]] = ...) -> None: ...

class Assignments(_message.Message):
    __slots__ = ("assignments",)
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    def __init__(self, assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("task_id", "name", "args", "kwargs", "attempt", "lease_token", "headers", "soft_time_limit", "hard_time_limit", "created_at", "max_retries", "failures", "trace_context", "namespace", "queue", "workflow_id")
    class KwargsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _task_pb2.Payload
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_task_pb2.Payload, _Mapping]] = ...) -> None: ...
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    KWARGS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    SOFT_TIME_LIMIT_FIELD_NUMBER: _ClassVar[int]
    HARD_TIME_LIMIT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    name: str
    args: _containers.RepeatedCompositeFieldContainer[_task_pb2.Payload]
    kwargs: _containers.MessageMap[str, _task_pb2.Payload]
    attempt: int
    lease_token: int
    headers: _containers.ScalarMap[str, str]
    soft_time_limit: _duration_pb2.Duration
    hard_time_limit: _duration_pb2.Duration
    created_at: _timestamp_pb2.Timestamp
    max_retries: int
    failures: int
    trace_context: _task_pb2.TraceContext
    namespace: str
    queue: str
    workflow_id: str
    def __init__(self, task_id: _Optional[str] = ..., name: _Optional[str] = ..., args: _Optional[_Iterable[_Union[_task_pb2.Payload, _Mapping]]] = ..., kwargs: _Optional[_Mapping[str, _task_pb2.Payload]] = ..., attempt: _Optional[int] = ..., lease_token: _Optional[int] = ..., headers: _Optional[_Mapping[str, str]] = ..., soft_time_limit: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., hard_time_limit: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., max_retries: _Optional[int] = ..., failures: _Optional[int] = ..., trace_context: _Optional[_Union[_task_pb2.TraceContext, _Mapping]] = ..., namespace: _Optional[str] = ..., queue: _Optional[str] = ..., workflow_id: _Optional[str] = ...) -> None: ...

class CancelAssignment(_message.Message):
    __slots__ = ("task_id", "reason", "reason_code")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REASON_CODE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    reason: str
    reason_code: CancelReason
    def __init__(self, task_id: _Optional[str] = ..., reason: _Optional[str] = ..., reason_code: _Optional[_Union[CancelReason, str]] = ...) -> None: ...

class Drain(_message.Message):
    __slots__ = ("grace", "reason")
    GRACE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    grace: _duration_pb2.Duration
    reason: DrainReason
    def __init__(self, grace: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., reason: _Optional[_Union[DrainReason, str]] = ...) -> None: ...

class OutcomeRejected(_message.Message):
    __slots__ = ("task_id", "code", "message")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    code: int
    message: str
    def __init__(self, task_id: _Optional[str] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ("namespace", "page_size", "page_token", "this_replica_only")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    THIS_REPLICA_ONLY_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    page_size: int
    page_token: str
    this_replica_only: bool
    def __init__(self, namespace: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., this_replica_only: _Optional[bool] = ...) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers", "next_page_token")
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    next_page_token: str
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("worker_id", "session_id", "queues", "task_names", "concurrency", "language", "sdk_version", "hostname", "active_leases", "credits", "connected_at", "last_seen_at", "completed", "namespace", "dispatcher")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    TASK_NAMES_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    SDK_VERSION_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_LEASES_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_AT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DISPATCHER_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    session_id: str
    queues: _containers.RepeatedScalarFieldContainer[str]
    task_names: _containers.RepeatedScalarFieldContainer[str]
    concurrency: int
    language: str
    sdk_version: str
    hostname: str
    active_leases: int
    credits: int
    connected_at: _timestamp_pb2.Timestamp
    last_seen_at: _timestamp_pb2.Timestamp
    completed: int
    namespace: str
    dispatcher: str
    def __init__(self, worker_id: _Optional[str] = ..., session_id: _Optional[str] = ..., queues: _Optional[_Iterable[str]] = ..., task_names: _Optional[_Iterable[str]] = ..., concurrency: _Optional[int] = ..., language: _Optional[str] = ..., sdk_version: _Optional[str] = ..., hostname: _Optional[str] = ..., active_leases: _Optional[int] = ..., credits: _Optional[int] = ..., connected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., completed: _Optional[int] = ..., namespace: _Optional[str] = ..., dispatcher: _Optional[str] = ...) -> None: ...

class ListQueuesRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class ListQueuesResponse(_message.Message):
    __slots__ = ("queues",)
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    queues: _containers.RepeatedCompositeFieldContainer[QueueInfo]
    def __init__(self, queues: _Optional[_Iterable[_Union[QueueInfo, _Mapping]]] = ...) -> None: ...

class QueueInfo(_message.Message):
    __slots__ = ("name", "ready", "ready_by_priority", "ready_by_task", "paused", "workers", "slots")
    class ReadyByPriorityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    class ReadyByTaskEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    READY_BY_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    READY_BY_TASK_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    ready: int
    ready_by_priority: _containers.ScalarMap[int, int]
    ready_by_task: _containers.ScalarMap[str, int]
    paused: bool
    workers: int
    slots: int
    def __init__(self, name: _Optional[str] = ..., ready: _Optional[int] = ..., ready_by_priority: _Optional[_Mapping[int, int]] = ..., ready_by_task: _Optional[_Mapping[str, int]] = ..., paused: _Optional[bool] = ..., workers: _Optional[int] = ..., slots: _Optional[int] = ...) -> None: ...
