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

class SolarEvent(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOLAR_EVENT_UNSPECIFIED: _ClassVar[SolarEvent]
    SOLAR_EVENT_SUNRISE: _ClassVar[SolarEvent]
    SOLAR_EVENT_SUNSET: _ClassVar[SolarEvent]
    SOLAR_EVENT_SOLAR_NOON: _ClassVar[SolarEvent]
    SOLAR_EVENT_DAWN_CIVIL: _ClassVar[SolarEvent]
    SOLAR_EVENT_DUSK_CIVIL: _ClassVar[SolarEvent]
    SOLAR_EVENT_DAWN_NAUTICAL: _ClassVar[SolarEvent]
    SOLAR_EVENT_DUSK_NAUTICAL: _ClassVar[SolarEvent]
    SOLAR_EVENT_DAWN_ASTRONOMICAL: _ClassVar[SolarEvent]
    SOLAR_EVENT_DUSK_ASTRONOMICAL: _ClassVar[SolarEvent]

class CatchUp(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CATCH_UP_UNSPECIFIED: _ClassVar[CatchUp]
    CATCH_UP_SKIP: _ClassVar[CatchUp]
    CATCH_UP_RUN_ONCE: _ClassVar[CatchUp]
SOLAR_EVENT_UNSPECIFIED: SolarEvent
SOLAR_EVENT_SUNRISE: SolarEvent
SOLAR_EVENT_SUNSET: SolarEvent
SOLAR_EVENT_SOLAR_NOON: SolarEvent
SOLAR_EVENT_DAWN_CIVIL: SolarEvent
SOLAR_EVENT_DUSK_CIVIL: SolarEvent
SOLAR_EVENT_DAWN_NAUTICAL: SolarEvent
SOLAR_EVENT_DUSK_NAUTICAL: SolarEvent
SOLAR_EVENT_DAWN_ASTRONOMICAL: SolarEvent
SOLAR_EVENT_DUSK_ASTRONOMICAL: SolarEvent
CATCH_UP_UNSPECIFIED: CatchUp
CATCH_UP_SKIP: CatchUp
CATCH_UP_RUN_ONCE: CatchUp

class GetSchedulerStatusRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class GetSchedulerStatusResponse(_message.Message):
    __slots__ = ("scheduled_tasks", "next_due_at", "promoted_total", "reaped_total", "schedule_runs_total")
    SCHEDULED_TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_DUE_AT_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    REAPED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_RUNS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    scheduled_tasks: int
    next_due_at: _timestamp_pb2.Timestamp
    promoted_total: int
    reaped_total: int
    schedule_runs_total: int
    def __init__(self, scheduled_tasks: _Optional[int] = ..., next_due_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., promoted_total: _Optional[int] = ..., reaped_total: _Optional[int] = ..., schedule_runs_total: _Optional[int] = ...) -> None: ...

class IntervalRule(_message.Message):
    __slots__ = ("every",)
    EVERY_FIELD_NUMBER: _ClassVar[int]
    every: _duration_pb2.Duration
    def __init__(self, every: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class CronRule(_message.Message):
    __slots__ = ("expression", "time_zone")
    EXPRESSION_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    expression: str
    time_zone: str
    def __init__(self, expression: _Optional[str] = ..., time_zone: _Optional[str] = ...) -> None: ...

class SolarRule(_message.Message):
    __slots__ = ("event", "latitude", "longitude")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    event: SolarEvent
    latitude: float
    longitude: float
    def __init__(self, event: _Optional[_Union[SolarEvent, str]] = ..., latitude: _Optional[float] = ..., longitude: _Optional[float] = ...) -> None: ...

class Schedule(_message.Message):
    __slots__ = ("id", "task", "interval", "cron", "solar", "start_at", "end_at", "jitter", "catch_up", "paused", "next_run_at", "last_run_at", "runs", "created_at", "version", "namespace")
    ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    CRON_FIELD_NUMBER: _ClassVar[int]
    SOLAR_FIELD_NUMBER: _ClassVar[int]
    START_AT_FIELD_NUMBER: _ClassVar[int]
    END_AT_FIELD_NUMBER: _ClassVar[int]
    JITTER_FIELD_NUMBER: _ClassVar[int]
    CATCH_UP_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    NEXT_RUN_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_RUN_AT_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    id: str
    task: _task_pb2.TaskSpec
    interval: IntervalRule
    cron: CronRule
    solar: SolarRule
    start_at: _timestamp_pb2.Timestamp
    end_at: _timestamp_pb2.Timestamp
    jitter: _duration_pb2.Duration
    catch_up: CatchUp
    paused: bool
    next_run_at: _timestamp_pb2.Timestamp
    last_run_at: _timestamp_pb2.Timestamp
    runs: int
    created_at: _timestamp_pb2.Timestamp
    version: int
    namespace: str
    def __init__(self, id: _Optional[str] = ..., task: _Optional[_Union[_task_pb2.TaskSpec, _Mapping]] = ..., interval: _Optional[_Union[IntervalRule, _Mapping]] = ..., cron: _Optional[_Union[CronRule, _Mapping]] = ..., solar: _Optional[_Union[SolarRule, _Mapping]] = ..., start_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., jitter: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., catch_up: _Optional[_Union[CatchUp, str]] = ..., paused: _Optional[bool] = ..., next_run_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_run_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., runs: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., version: _Optional[int] = ..., namespace: _Optional[str] = ...) -> None: ...

class ScheduleRun(_message.Message):
    __slots__ = ("fire_at", "task_id", "triggered")
    FIRE_AT_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TRIGGERED_FIELD_NUMBER: _ClassVar[int]
    fire_at: _timestamp_pb2.Timestamp
    task_id: str
    triggered: bool
    def __init__(self, fire_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., task_id: _Optional[str] = ..., triggered: _Optional[bool] = ...) -> None: ...

class CreateScheduleRequest(_message.Message):
    __slots__ = ("schedule", "namespace")
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    schedule: Schedule
    namespace: str
    def __init__(self, schedule: _Optional[_Union[Schedule, _Mapping]] = ..., namespace: _Optional[str] = ...) -> None: ...

class CreateScheduleResponse(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: Schedule
    def __init__(self, schedule: _Optional[_Union[Schedule, _Mapping]] = ...) -> None: ...

class GetScheduleRequest(_message.Message):
    __slots__ = ("id", "namespace")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    id: str
    namespace: str
    def __init__(self, id: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class GetScheduleResponse(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: Schedule
    def __init__(self, schedule: _Optional[_Union[Schedule, _Mapping]] = ...) -> None: ...

class ListSchedulesRequest(_message.Message):
    __slots__ = ("namespace", "page_size", "page_token")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    page_size: int
    page_token: str
    def __init__(self, namespace: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSchedulesResponse(_message.Message):
    __slots__ = ("schedules", "next_page_token")
    SCHEDULES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    schedules: _containers.RepeatedCompositeFieldContainer[Schedule]
    next_page_token: str
    def __init__(self, schedules: _Optional[_Iterable[_Union[Schedule, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateScheduleRequest(_message.Message):
    __slots__ = ("schedule", "namespace", "expected_version")
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    schedule: Schedule
    namespace: str
    expected_version: int
    def __init__(self, schedule: _Optional[_Union[Schedule, _Mapping]] = ..., namespace: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class UpdateScheduleResponse(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: Schedule
    def __init__(self, schedule: _Optional[_Union[Schedule, _Mapping]] = ...) -> None: ...

class DeleteScheduleRequest(_message.Message):
    __slots__ = ("id", "namespace")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    id: str
    namespace: str
    def __init__(self, id: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class DeleteScheduleResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PauseScheduleRequest(_message.Message):
    __slots__ = ("id", "namespace", "expected_version")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    namespace: str
    expected_version: int
    def __init__(self, id: _Optional[str] = ..., namespace: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class PauseScheduleResponse(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: Schedule
    def __init__(self, schedule: _Optional[_Union[Schedule, _Mapping]] = ...) -> None: ...

class ResumeScheduleRequest(_message.Message):
    __slots__ = ("id", "namespace", "expected_version")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    namespace: str
    expected_version: int
    def __init__(self, id: _Optional[str] = ..., namespace: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class ResumeScheduleResponse(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: Schedule
    def __init__(self, schedule: _Optional[_Union[Schedule, _Mapping]] = ...) -> None: ...

class TriggerScheduleRequest(_message.Message):
    __slots__ = ("id", "namespace")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    id: str
    namespace: str
    def __init__(self, id: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class TriggerScheduleResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: ScheduleRun
    def __init__(self, run: _Optional[_Union[ScheduleRun, _Mapping]] = ...) -> None: ...

class ListScheduleRunsRequest(_message.Message):
    __slots__ = ("id", "namespace", "page_size", "page_token")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    id: str
    namespace: str
    page_size: int
    page_token: str
    def __init__(self, id: _Optional[str] = ..., namespace: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListScheduleRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[ScheduleRun]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[ScheduleRun, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
