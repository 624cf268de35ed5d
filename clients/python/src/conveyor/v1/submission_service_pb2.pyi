from conveyor.v1 import task_pb2 as _task_pb2
from conveyor.v1 import workflow_pb2 as _workflow_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitWorkflowRequest(_message.Message):
    __slots__ = ("workflow", "namespace")
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    workflow: _workflow_pb2.WorkflowSpec
    namespace: str
    def __init__(self, workflow: _Optional[_Union[_workflow_pb2.WorkflowSpec, _Mapping]] = ..., namespace: _Optional[str] = ...) -> None: ...

class SubmitWorkflowResponse(_message.Message):
    __slots__ = ("workflow_id", "task_ids", "duplicate")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    duplicate: bool
    def __init__(self, workflow_id: _Optional[str] = ..., task_ids: _Optional[_Iterable[str]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class CancelWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id", "namespace")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    namespace: str
    def __init__(self, workflow_id: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class CancelWorkflowResponse(_message.Message):
    __slots__ = ("cancelled", "state")
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    cancelled: int
    state: _workflow_pb2.WorkflowState
    def __init__(self, cancelled: _Optional[int] = ..., state: _Optional[_Union[_workflow_pb2.WorkflowState, str]] = ...) -> None: ...

class SubmitTaskRequest(_message.Message):
    __slots__ = ("task", "namespace")
    TASK_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.TaskSpec
    namespace: str
    def __init__(self, task: _Optional[_Union[_task_pb2.TaskSpec, _Mapping]] = ..., namespace: _Optional[str] = ...) -> None: ...

class SubmitTaskResponse(_message.Message):
    __slots__ = ("task_id", "duplicate", "state")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    duplicate: bool
    state: _task_pb2.TaskState
    def __init__(self, task_id: _Optional[str] = ..., duplicate: _Optional[bool] = ..., state: _Optional[_Union[_task_pb2.TaskState, str]] = ...) -> None: ...

class SubmitTasksRequest(_message.Message):
    __slots__ = ("tasks", "namespace")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[_task_pb2.TaskSpec]
    namespace: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[_task_pb2.TaskSpec, _Mapping]]] = ..., namespace: _Optional[str] = ...) -> None: ...

class SubmitTasksResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SubmitTaskResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[SubmitTaskResponse, _Mapping]]] = ...) -> None: ...

class CancelTaskRequest(_message.Message):
    __slots__ = ("task_id", "namespace")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    namespace: str
    def __init__(self, task_id: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class CancelTaskResponse(_message.Message):
    __slots__ = ("cancelled", "state")
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    cancelled: bool
    state: _task_pb2.TaskState
    def __init__(self, cancelled: _Optional[bool] = ..., state: _Optional[_Union[_task_pb2.TaskState, str]] = ...) -> None: ...

class ReplayTaskRequest(_message.Message):
    __slots__ = ("task_id", "namespace")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    namespace: str
    def __init__(self, task_id: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class ReplayTaskResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: _task_pb2.TaskState
    def __init__(self, state: _Optional[_Union[_task_pb2.TaskState, str]] = ...) -> None: ...
