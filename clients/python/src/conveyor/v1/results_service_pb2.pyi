import datetime

from conveyor.v1 import task_pb2 as _task_pb2
from conveyor.v1 import workflow_pb2 as _workflow_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkflowView(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKFLOW_VIEW_UNSPECIFIED: _ClassVar[WorkflowView]
    WORKFLOW_VIEW_SUMMARY: _ClassVar[WorkflowView]
    WORKFLOW_VIEW_NODES: _ClassVar[WorkflowView]
    WORKFLOW_VIEW_FULL: _ClassVar[WorkflowView]

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_TASK_SUBMITTED: _ClassVar[EventKind]
    EVENT_KIND_TASK_LEASED: _ClassVar[EventKind]
    EVENT_KIND_TASK_STARTED: _ClassVar[EventKind]
    EVENT_KIND_TASK_PROGRESS: _ClassVar[EventKind]
    EVENT_KIND_TASK_RETRIED: _ClassVar[EventKind]
    EVENT_KIND_TASK_SUCCEEDED: _ClassVar[EventKind]
    EVENT_KIND_TASK_FAILED: _ClassVar[EventKind]
    EVENT_KIND_TASK_CANCELLED: _ClassVar[EventKind]
    EVENT_KIND_TASK_EXPIRED: _ClassVar[EventKind]
    EVENT_KIND_TASK_REQUEUED: _ClassVar[EventKind]
    EVENT_KIND_TASK_READY: _ClassVar[EventKind]
    EVENT_KIND_WORKER_ONLINE: _ClassVar[EventKind]
    EVENT_KIND_WORKER_OFFLINE: _ClassVar[EventKind]
    EVENT_KIND_WORKER_HEARTBEAT: _ClassVar[EventKind]

class TaskView(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_VIEW_UNSPECIFIED: _ClassVar[TaskView]
    TASK_VIEW_OUTCOME: _ClassVar[TaskView]
    TASK_VIEW_FULL: _ClassVar[TaskView]
WORKFLOW_VIEW_UNSPECIFIED: WorkflowView
WORKFLOW_VIEW_SUMMARY: WorkflowView
WORKFLOW_VIEW_NODES: WorkflowView
WORKFLOW_VIEW_FULL: WorkflowView
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_TASK_SUBMITTED: EventKind
EVENT_KIND_TASK_LEASED: EventKind
EVENT_KIND_TASK_STARTED: EventKind
EVENT_KIND_TASK_PROGRESS: EventKind
EVENT_KIND_TASK_RETRIED: EventKind
EVENT_KIND_TASK_SUCCEEDED: EventKind
EVENT_KIND_TASK_FAILED: EventKind
EVENT_KIND_TASK_CANCELLED: EventKind
EVENT_KIND_TASK_EXPIRED: EventKind
EVENT_KIND_TASK_REQUEUED: EventKind
EVENT_KIND_TASK_READY: EventKind
EVENT_KIND_WORKER_ONLINE: EventKind
EVENT_KIND_WORKER_OFFLINE: EventKind
EVENT_KIND_WORKER_HEARTBEAT: EventKind
TASK_VIEW_UNSPECIFIED: TaskView
TASK_VIEW_OUTCOME: TaskView
TASK_VIEW_FULL: TaskView

class GetWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id", "namespace", "view")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    namespace: str
    view: WorkflowView
    def __init__(self, workflow_id: _Optional[str] = ..., namespace: _Optional[str] = ..., view: _Optional[_Union[WorkflowView, str]] = ...) -> None: ...

class GetWorkflowResponse(_message.Message):
    __slots__ = ("workflow",)
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    workflow: _workflow_pb2.Workflow
    def __init__(self, workflow: _Optional[_Union[_workflow_pb2.Workflow, _Mapping]] = ...) -> None: ...

class WaitWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id", "timeout", "namespace", "view")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    timeout: _duration_pb2.Duration
    namespace: str
    view: WorkflowView
    def __init__(self, workflow_id: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., namespace: _Optional[str] = ..., view: _Optional[_Union[WorkflowView, str]] = ...) -> None: ...

class WaitWorkflowResponse(_message.Message):
    __slots__ = ("workflow",)
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    workflow: _workflow_pb2.Workflow
    def __init__(self, workflow: _Optional[_Union[_workflow_pb2.Workflow, _Mapping]] = ...) -> None: ...

class WatchWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id", "namespace", "view")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    namespace: str
    view: WorkflowView
    def __init__(self, workflow_id: _Optional[str] = ..., namespace: _Optional[str] = ..., view: _Optional[_Union[WorkflowView, str]] = ...) -> None: ...

class WatchWorkflowResponse(_message.Message):
    __slots__ = ("workflow",)
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    workflow: _workflow_pb2.Workflow
    def __init__(self, workflow: _Optional[_Union[_workflow_pb2.Workflow, _Mapping]] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("namespace", "queues", "task_names", "kinds")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    TASK_NAMES_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    queues: _containers.RepeatedScalarFieldContainer[str]
    task_names: _containers.RepeatedScalarFieldContainer[str]
    kinds: _containers.RepeatedScalarFieldContainer[EventKind]
    def __init__(self, namespace: _Optional[str] = ..., queues: _Optional[_Iterable[str]] = ..., task_names: _Optional[_Iterable[str]] = ..., kinds: _Optional[_Iterable[_Union[EventKind, str]]] = ...) -> None: ...

class WatchEventsResponse(_message.Message):
    __slots__ = ("events", "dropped")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    dropped: int
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., dropped: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("kind", "time", "namespace", "queue", "task_name", "task_id", "attempt", "worker_id", "session_id", "active", "slots")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    TASK_NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    kind: EventKind
    time: _timestamp_pb2.Timestamp
    namespace: str
    queue: str
    task_name: str
    task_id: str
    attempt: int
    worker_id: str
    session_id: str
    active: int
    slots: int
    def __init__(self, kind: _Optional[_Union[EventKind, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., namespace: _Optional[str] = ..., queue: _Optional[str] = ..., task_name: _Optional[str] = ..., task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., worker_id: _Optional[str] = ..., session_id: _Optional[str] = ..., active: _Optional[int] = ..., slots: _Optional[int] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("task_id", "namespace")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    namespace: str
    def __init__(self, task_id: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class GetTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ...) -> None: ...

class WaitTaskRequest(_message.Message):
    __slots__ = ("task_id", "timeout", "namespace", "view")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    timeout: _duration_pb2.Duration
    namespace: str
    view: TaskView
    def __init__(self, task_id: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., namespace: _Optional[str] = ..., view: _Optional[_Union[TaskView, str]] = ...) -> None: ...

class WaitTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ...) -> None: ...

class WatchTaskRequest(_message.Message):
    __slots__ = ("task_id", "namespace")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    namespace: str
    def __init__(self, task_id: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class WatchTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ...) -> None: ...

class ForgetTaskRequest(_message.Message):
    __slots__ = ("task_id", "namespace")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    namespace: str
    def __init__(self, task_id: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class ForgetTaskResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDeadLettersRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "namespace")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    namespace: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class ListDeadLettersResponse(_message.Message):
    __slots__ = ("tasks", "next_page_token")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[_task_pb2.Task]
    next_page_token: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[_task_pb2.Task, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
