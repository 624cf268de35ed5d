// Periodic schedules (Celery beat): how a schedule is described to the
// client, and its conversion into the Schedule message SchedulingService
// stores.

import { create } from "@bufbuild/protobuf";
import {
  CatchUp,
  CronRuleSchema,
  IntervalRuleSchema,
  ScheduleSchema,
  SolarEvent,
  SolarRuleSchema,
} from "./gen/conveyor/v1/scheduling_service_pb.js";
import type { Schedule } from "./gen/conveyor/v1/scheduling_service_pb.js";
import { buildTaskSpec } from "./spec.js";
import type { SubmitOptions } from "./spec.js";
import { msToDuration, toTimestamp } from "./payload.js";

/** Solar events, as Celery's `solar` schedule names them. */
export type SolarEventName =
  | "sunrise"
  | "sunset"
  | "solar_noon"
  | "dawn_civil"
  | "dusk_civil"
  | "dawn_nautical"
  | "dusk_nautical"
  | "dawn_astronomical"
  | "dusk_astronomical";

/** When a schedule fires: exactly one of `everyMs`, `cron` or `solar`. */
export type ScheduleRule =
  | { everyMs: number; cron?: never; solar?: never }
  | { cron: string; timeZone?: string; everyMs?: never; solar?: never }
  | { solar: { event: SolarEventName; latitude: number; longitude: number }; everyMs?: never; cron?: never };

/** A schedule as `createSchedule` and `updateSchedule` take it. */
export type ScheduleDefinition = ScheduleRule & {
  /** 1..200 characters of [A-Za-z0-9_.:/-], chosen by you. */
  id: string;
  /** The task submitted at each run. */
  task: string;
  /** Its positional arguments, encoded as JSON. */
  args?: readonly unknown[];
  /** Its options (queue, priority, retries...); the scheduler sets the idempotency key. */
  options?: Omit<SubmitOptions, "idempotencyKey">;
  /** No run before this instant (Date or epoch ms). */
  startAt?: Date | number;
  /** No run after this instant. */
  endAt?: Date | number;
  /** Delays each run's task by a random amount up to this, to spread load. */
  jitterMs?: number;
  /** Runs missed while no scheduler ran: skipped (default) or run once. */
  catchUp?: "skip" | "run-once";
};

const SOLAR_EVENTS: Record<SolarEventName, SolarEvent> = {
  sunrise: SolarEvent.SUNRISE,
  sunset: SolarEvent.SUNSET,
  solar_noon: SolarEvent.SOLAR_NOON,
  dawn_civil: SolarEvent.DAWN_CIVIL,
  dusk_civil: SolarEvent.DUSK_CIVIL,
  dawn_nautical: SolarEvent.DAWN_NAUTICAL,
  dusk_nautical: SolarEvent.DUSK_NAUTICAL,
  dawn_astronomical: SolarEvent.DAWN_ASTRONOMICAL,
  dusk_astronomical: SolarEvent.DUSK_ASTRONOMICAL,
};

/** Builds the Schedule message; throws TypeError for a definition without exactly one rule. */
export function buildSchedule(definition: ScheduleDefinition): Schedule {
  const rules = [definition.everyMs, definition.cron, definition.solar].filter((rule) => rule !== undefined);
  if (rules.length !== 1) {
    throw new TypeError(
      `schedule "${definition.id}" needs exactly one rule: everyMs (an interval), cron (an expression) or solar (an event at a place)`,
    );
  }
  const schedule = create(ScheduleSchema, {
    id: definition.id,
    task: buildTaskSpec(definition.task, definition.args ?? [], definition.options ?? {}),
    catchUp: definition.catchUp === "run-once" ? CatchUp.RUN_ONCE : definition.catchUp === "skip" ? CatchUp.SKIP : CatchUp.UNSPECIFIED,
  });
  if (definition.everyMs !== undefined) {
    schedule.rule = { case: "interval", value: create(IntervalRuleSchema, { every: msToDuration(definition.everyMs) }) };
  } else if (definition.cron !== undefined) {
    schedule.rule = {
      case: "cron",
      value: create(CronRuleSchema, { expression: definition.cron, timeZone: definition.timeZone ?? "" }),
    };
  } else if (definition.solar !== undefined) {
    const event = SOLAR_EVENTS[definition.solar.event];
    if (event === undefined) {
      throw new TypeError(`unknown solar event "${definition.solar.event}": use one of ${Object.keys(SOLAR_EVENTS).join(", ")}`);
    }
    schedule.rule = {
      case: "solar",
      value: create(SolarRuleSchema, { event, latitude: definition.solar.latitude, longitude: definition.solar.longitude }),
    };
  }
  if (definition.startAt !== undefined) schedule.startAt = toTimestamp(definition.startAt);
  if (definition.endAt !== undefined) schedule.endAt = toTimestamp(definition.endAt);
  if (definition.jitterMs !== undefined) schedule.jitter = msToDuration(definition.jitterMs);
  return schedule;
}

export type { Schedule };
