import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetSchedulerStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetSchedulerStatusResponse(_message.Message):
    __slots__ = ("scheduled_tasks", "next_due_at", "promoted_total", "reaped_total")
    SCHEDULED_TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_DUE_AT_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    REAPED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    scheduled_tasks: int
    next_due_at: _timestamp_pb2.Timestamp
    promoted_total: int
    reaped_total: int
    def __init__(self, scheduled_tasks: _Optional[int] = ..., next_due_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., promoted_total: _Optional[int] = ..., reaped_total: _Optional[int] = ...) -> None: ...
