import datetime

from conveyor.v1 import task_pb2 as _task_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeInput(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_INPUT_UNSPECIFIED: _ClassVar[NodeInput]
    NODE_INPUT_NONE: _ClassVar[NodeInput]
    NODE_INPUT_ONE: _ClassVar[NodeInput]
    NODE_INPUT_LIST: _ClassVar[NodeInput]

class NodeTrigger(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_TRIGGER_UNSPECIFIED: _ClassVar[NodeTrigger]
    NODE_TRIGGER_ALL_SUCCEEDED: _ClassVar[NodeTrigger]
    NODE_TRIGGER_ALL_DONE: _ClassVar[NodeTrigger]
    NODE_TRIGGER_ON_FAILURE: _ClassVar[NodeTrigger]

class WorkflowState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKFLOW_STATE_UNSPECIFIED: _ClassVar[WorkflowState]
    WORKFLOW_STATE_RUNNING: _ClassVar[WorkflowState]
    WORKFLOW_STATE_SUCCEEDED: _ClassVar[WorkflowState]
    WORKFLOW_STATE_FAILED: _ClassVar[WorkflowState]
    WORKFLOW_STATE_CANCELLED: _ClassVar[WorkflowState]
NODE_INPUT_UNSPECIFIED: NodeInput
NODE_INPUT_NONE: NodeInput
NODE_INPUT_ONE: NodeInput
NODE_INPUT_LIST: NodeInput
NODE_TRIGGER_UNSPECIFIED: NodeTrigger
NODE_TRIGGER_ALL_SUCCEEDED: NodeTrigger
NODE_TRIGGER_ALL_DONE: NodeTrigger
NODE_TRIGGER_ON_FAILURE: NodeTrigger
WORKFLOW_STATE_UNSPECIFIED: WorkflowState
WORKFLOW_STATE_RUNNING: WorkflowState
WORKFLOW_STATE_SUCCEEDED: WorkflowState
WORKFLOW_STATE_FAILED: WorkflowState
WORKFLOW_STATE_CANCELLED: WorkflowState

class WorkflowSpec(_message.Message):
    __slots__ = ("nodes", "options", "name", "idempotency_key", "trace_context", "outputs", "output_list")
    NODES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_LIST_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[WorkflowNode]
    options: _task_pb2.TaskOptions
    name: str
    idempotency_key: str
    trace_context: _task_pb2.TraceContext
    outputs: _containers.RepeatedScalarFieldContainer[int]
    output_list: bool
    def __init__(self, nodes: _Optional[_Iterable[_Union[WorkflowNode, _Mapping]]] = ..., options: _Optional[_Union[_task_pb2.TaskOptions, _Mapping]] = ..., name: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., trace_context: _Optional[_Union[_task_pb2.TraceContext, _Mapping]] = ..., outputs: _Optional[_Iterable[int]] = ..., output_list: _Optional[bool] = ...) -> None: ...

class WorkflowNode(_message.Message):
    __slots__ = ("task", "parents", "input", "trigger", "label")
    TASK_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.TaskSpec
    parents: _containers.RepeatedScalarFieldContainer[int]
    input: NodeInput
    trigger: NodeTrigger
    label: str
    def __init__(self, task: _Optional[_Union[_task_pb2.TaskSpec, _Mapping]] = ..., parents: _Optional[_Iterable[int]] = ..., input: _Optional[_Union[NodeInput, str]] = ..., trigger: _Optional[_Union[NodeTrigger, str]] = ..., label: _Optional[str] = ...) -> None: ...

class Workflow(_message.Message):
    __slots__ = ("id", "name", "state", "nodes", "state_counts", "node_count", "result", "output_task_ids", "created_at", "finished_at", "namespace", "failed_task_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    STATE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    NODE_COUNT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    FAILED_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    state: WorkflowState
    nodes: _containers.RepeatedCompositeFieldContainer[WorkflowNodeStatus]
    state_counts: _containers.RepeatedScalarFieldContainer[int]
    node_count: int
    result: _task_pb2.Payload
    output_task_ids: _containers.RepeatedScalarFieldContainer[str]
    created_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    namespace: str
    failed_task_id: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[_Union[WorkflowState, str]] = ..., nodes: _Optional[_Iterable[_Union[WorkflowNodeStatus, _Mapping]]] = ..., state_counts: _Optional[_Iterable[int]] = ..., node_count: _Optional[int] = ..., result: _Optional[_Union[_task_pb2.Payload, _Mapping]] = ..., output_task_ids: _Optional[_Iterable[str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., namespace: _Optional[str] = ..., failed_task_id: _Optional[str] = ...) -> None: ...

class WorkflowNodeStatus(_message.Message):
    __slots__ = ("index", "task", "parents", "input", "trigger", "label")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    index: int
    task: _task_pb2.Task
    parents: _containers.RepeatedScalarFieldContainer[int]
    input: NodeInput
    trigger: NodeTrigger
    label: str
    def __init__(self, index: _Optional[int] = ..., task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ..., parents: _Optional[_Iterable[int]] = ..., input: _Optional[_Union[NodeInput, str]] = ..., trigger: _Optional[_Union[NodeTrigger, str]] = ..., label: _Optional[str] = ...) -> None: ...
