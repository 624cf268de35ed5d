"""Periodic schedules (beat): `client.schedules` creates, reads, updates,
pauses and deletes them on the scheduling service, and `crontab` writes a
cron rule in Celery's terms. `ensure` is the idempotent create-or-update
that `app.conf.beat_schedule` is synced with."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from conveyor import _codec
from conveyor.v1 import scheduling_service_pb2 as spb

if TYPE_CHECKING:
    from conveyor.client import Client

__all__ = ["Schedules", "crontab", "schedule_rule"]


class crontab:  # noqa: N801 - Celery's spelling
    """A cron rule, as Celery's `crontab(minute, hour, day_of_week,
    day_of_month, month_of_year)`, in a time zone (IANA name; UTC if empty)."""

    def __init__(
        self,
        minute: str | int = "*",
        hour: str | int = "*",
        day_of_week: str | int = "*",
        day_of_month: str | int = "*",
        month_of_year: str | int = "*",
        *,
        time_zone: str = "",
    ):
        fields = (minute, hour, day_of_month, month_of_year, day_of_week)
        self.expression = " ".join(str(f).replace(" ", "") for f in fields)
        self.time_zone = time_zone

    def __repr__(self) -> str:
        return f"<crontab {self.expression}{' ' + self.time_zone if self.time_zone else ''}>"


def schedule_rule(rule: Any, schedule: spb.Schedule) -> None:
    """Sets the rule of `schedule`: seconds or a timedelta (an interval), a
    `crontab`, a cron expression string, or a ready-made rule message."""
    if isinstance(rule, crontab):
        schedule.cron.CopyFrom(spb.CronRule(expression=rule.expression, time_zone=rule.time_zone))
    elif isinstance(rule, str):
        schedule.cron.CopyFrom(spb.CronRule(expression=rule))
    elif isinstance(rule, (int, float, _dt.timedelta)) and not isinstance(rule, bool):
        schedule.interval.CopyFrom(spb.IntervalRule(every=_codec.to_duration(rule, "schedule interval")))
    elif isinstance(rule, spb.IntervalRule):
        schedule.interval.CopyFrom(rule)
    elif isinstance(rule, spb.CronRule):
        schedule.cron.CopyFrom(rule)
    elif isinstance(rule, spb.SolarRule):
        schedule.solar.CopyFrom(rule)
    else:
        raise TypeError(f"a schedule is seconds, a timedelta, a crontab or a cron string, not {rule!r}")


def build_schedule(
    schedule_id: str,
    name: str,
    rule: Any,
    args: Iterable[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    **options: Any,
) -> spb.Schedule:
    """A Schedule message; `options` are task options (queue, priority, ...)."""
    if options.get("idempotency_key"):
        raise ValueError("a schedule's task takes no idempotency_key: the scheduler sets one per run")
    schedule = spb.Schedule(id=schedule_id, task=_codec.build_spec(name, args, kwargs, **options))
    schedule_rule(rule, schedule)
    return schedule


_OUTPUT_ONLY = ("paused", "next_run_at", "last_run_at", "runs", "created_at", "version", "namespace")


def _definition(schedule: spb.Schedule) -> bytes:
    copy = spb.Schedule()
    copy.CopyFrom(schedule)
    for name in _OUTPUT_ONLY:
        copy.ClearField(name)
    return copy.SerializeToString(deterministic=True)


class Schedules:
    """The scheduling service's schedules of the client's namespace, through
    a `Client`."""

    def __init__(self, client: Client):
        self._client = client

    @property
    def _namespace(self) -> str:
        """The client's namespace, which every request names."""
        return self._client.namespace

    def _call(self, rpc: str, request: Any, *, safe: bool = False) -> Any:
        return self._client._call("scheduling", rpc, request, safe=safe)

    def create(self, schedule_id: str, name: str, rule: Any, args=None, kwargs=None, **options: Any) -> spb.Schedule:
        """Creates a schedule that submits task `name` per `rule`;
        ALREADY_EXISTS if the id is taken."""
        schedule = build_schedule(schedule_id, name, rule, args, kwargs, **options)
        return self._call("CreateSchedule", spb.CreateScheduleRequest(schedule=schedule, namespace=self._namespace)).schedule

    def get(self, schedule_id: str) -> spb.Schedule:
        """NOT_FOUND for an unknown id."""
        return self._call("GetSchedule", spb.GetScheduleRequest(id=schedule_id, namespace=self._namespace), safe=True).schedule

    def list(self) -> list[spb.Schedule]:
        return list(self._call("ListSchedules", spb.ListSchedulesRequest(namespace=self._namespace), safe=True).schedules)

    def update(self, schedule_id: str, name: str, rule: Any, args=None, kwargs=None, **options: Any) -> spb.Schedule:
        schedule = build_schedule(schedule_id, name, rule, args, kwargs, **options)
        return self._call("UpdateSchedule", spb.UpdateScheduleRequest(schedule=schedule, namespace=self._namespace), safe=True).schedule

    def delete(self, schedule_id: str) -> None:
        self._call("DeleteSchedule", spb.DeleteScheduleRequest(id=schedule_id, namespace=self._namespace))

    def pause(self, schedule_id: str) -> spb.Schedule:
        return self._call("PauseSchedule", spb.PauseScheduleRequest(id=schedule_id, namespace=self._namespace), safe=True).schedule

    def resume(self, schedule_id: str) -> spb.Schedule:
        return self._call("ResumeSchedule", spb.ResumeScheduleRequest(id=schedule_id, namespace=self._namespace), safe=True).schedule

    def trigger(self, schedule_id: str) -> str:
        """Runs the schedule's task now; returns the task id."""
        return self._call("TriggerSchedule", spb.TriggerScheduleRequest(id=schedule_id, namespace=self._namespace)).run.task_id

    def runs(self, schedule_id: str) -> list[spb.ScheduleRun]:
        return list(self._call("ListScheduleRuns", spb.ListScheduleRunsRequest(id=schedule_id, namespace=self._namespace), safe=True).runs)

    def ensure(self, schedule_id: str, name: str, rule: Any, args=None, kwargs=None, **options: Any) -> str:
        """Creates the schedule, or updates it if its definition differs;
        idempotent. Returns "created", "updated" or "unchanged"."""
        from conveyor.errors import ConveyorError  # noqa: PLC0415

        import grpc  # noqa: PLC0415

        wanted = build_schedule(schedule_id, name, rule, args, kwargs, **options)
        try:
            current = self.get(schedule_id)
        except ConveyorError as error:
            if error.code != grpc.StatusCode.NOT_FOUND:
                raise
            try:
                self._call("CreateSchedule", spb.CreateScheduleRequest(schedule=wanted, namespace=self._namespace))
                return "created"
            except ConveyorError as race:  # another process created it first
                if race.code != grpc.StatusCode.ALREADY_EXISTS:
                    raise
                current = self.get(schedule_id)
        stored = spb.Schedule()
        stored.CopyFrom(wanted)
        if _definition(current) == _definition(stored):
            return "unchanged"
        self._call("UpdateSchedule", spb.UpdateScheduleRequest(schedule=wanted, namespace=self._namespace), safe=True)
        return "updated"
