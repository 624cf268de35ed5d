// What one task is on the wire: the options a producer sets, and their
// conversion into the TaskSpec that SubmissionService and schedules carry.

import { create } from "@bufbuild/protobuf";
import {
  ConcurrencyKeySchema,
  RetryPolicySchema,
  TaskOptionsSchema,
  TaskSpecSchema,
  TaskState,
  TraceContextSchema,
} from "./gen/conveyor/v1/task_pb.js";
import type { Task, TaskOptions, TaskSpec } from "./gen/conveyor/v1/task_pb.js";
import { fromOptionalPayload, msToDuration, toPayload, toTimestamp } from "./payload.js";

/** Retry policy of a task. Unset fields take the server's defaults. */
export interface RetryOptions {
  /** Retries after the first attempt; 0 means a failure is final. */
  maxRetries?: number;
  /** Delay before the first retry (server default 1 s). */
  backoffBaseMs?: number;
  /** Multiplier per retry, >= 1 (server default 2). */
  backoffFactor?: number;
  /** Upper bound of one delay (server default 10 min). */
  backoffMaxMs?: number;
  /** Full jitter on the delays. */
  jitter?: boolean;
}

/** One concurrency key a task needs and the most tasks holding it at once (>= 1). */
export interface ConcurrencyKey {
  key: string;
  limit: number;
}

/** Options of one submitted task; every one is optional. */
export interface SubmitOptions {
  /** Named arguments, each encoded as JSON (or sent as is when a RawPayload). */
  kwargs?: Record<string, unknown>;
  /** Queue to route the task to (server default "default"). */
  queue?: string;
  /** 0 (lowest) to 9 (highest). */
  priority?: number;
  /** Run no earlier than this long after submission. Exclusive with `eta`. */
  countdownMs?: number;
  /** Run no earlier than this instant (a Date or epoch milliseconds). */
  eta?: Date | number;
  /** A task not started by this instant (Date or epoch ms) becomes EXPIRED. */
  expires?: Date | number;
  /** Retries after the first attempt, with the server's default backoff. */
  maxRetries?: number;
  /** The whole retry policy; `maxRetries` above overrides its count. */
  retry?: RetryOptions;
  /** After this long the worker signals the handler to stop. */
  softTimeLimitMs?: number;
  /** After this long the lease is revoked and the attempt fails. */
  hardTimeLimitMs?: number;
  /**
   * Most starts per time unit, Celery's syntax: "10/s", "100/m", "5/h".
   * Enforced across all workers; a task over the rate waits (SCHEDULED) for
   * its slot and is never failed or dropped.
   */
  rateLimit?: string;
  /**
   * Splits `rateLimit` by key: tasks of the same name sharing the key share
   * one bucket (without a key the whole name does). Needs `rateLimit`.
   */
  rateLimitKey?: string;
  /** Tasks sharing this key share a concurrency limit of `concurrencyLimit`. */
  concurrencyKey?: string;
  /** Most tasks with `concurrencyKey` running at once. */
  concurrencyLimit?: number;
  /**
   * Several concurrency keys the task needs at once, e.g. the two forks of a
   * dining philosopher: `[{ key: "fork:1", limit: 1 }, { key: "fork:2", limit: 1 }]`.
   * The server leases the task only when every key has a free permit, takes
   * them all together and gives them all back when the attempt ends, so tasks
   * sharing keys cannot deadlock. At most 8 keys, counting `concurrencyKey`
   * (which comes first), each named once, each limit at least 1; the server
   * rejects anything else with INVALID_ARGUMENT naming the field.
   */
  concurrencyKeys?: readonly ConcurrencyKey[];
  /** A second submit with the same key returns the first task's id. */
  idempotencyKey?: string;
  /** Headers passed to the worker untouched (trace context, tenant...). */
  headers?: Record<string, string>;
  /** How long the outcome is kept after the task finishes. */
  resultTtlMs?: number;
  /**
   * The W3C trace context the task carries to its worker. By default the
   * SDK's `publish` span's (when an OpenTelemetry SDK is registered); given
   * here, it is sent as is.
   */
  traceContext?: { traceparent: string; tracestate?: string };
}

/** One task of a `submitMany` call. */
export interface TaskRequest extends SubmitOptions {
  name: string;
  /** Positional arguments, each encoded as JSON. */
  args?: readonly unknown[];
}


/** Builds the TaskSpec of one task; throws PayloadError for unencodable arguments. */
export function buildTaskSpec(name: string, args: readonly unknown[] = [], options: SubmitOptions = {}): TaskSpec {
  const spec = create(TaskSpecSchema, {
    name,
    args: args.map((arg, index) => toPayload(arg, `positional argument ${index} of task "${name}"`)),
    idempotencyKey: options.idempotencyKey ?? "",
  });
  for (const [key, value] of Object.entries(options.kwargs ?? {})) {
    spec.kwargs[key] = toPayload(value, `named argument "${key}" of task "${name}"`);
  }
  const taskOptions = buildTaskOptions(options);
  if (taskOptions !== undefined) spec.options = taskOptions;
  if (options.traceContext !== undefined) {
    const { traceparent, tracestate = "" } = options.traceContext;
    spec.traceContext = create(TraceContextSchema, { traceparent, tracestate });
  }
  return spec;
}

/** The TaskOptions message of `options`, or undefined when none is set. */
export function buildTaskOptions(options: SubmitOptions): TaskOptions | undefined {
  const out = create(TaskOptionsSchema);
  let any = false;
  const set = <K extends keyof TaskOptions>(key: K, value: TaskOptions[K] | undefined): void => {
    if (value === undefined) return;
    out[key] = value;
    any = true;
  };
  set("queue", options.queue);
  set("priority", options.priority);
  set("countdown", options.countdownMs === undefined ? undefined : msToDuration(options.countdownMs));
  set("eta", options.eta === undefined ? undefined : toTimestamp(options.eta));
  set("expires", options.expires === undefined ? undefined : toTimestamp(options.expires));
  if (options.retry !== undefined || options.maxRetries !== undefined) {
    const retry = options.retry ?? {};
    const policy = create(RetryPolicySchema, {
      maxRetries: options.maxRetries ?? retry.maxRetries ?? 0,
      backoffFactor: retry.backoffFactor ?? 0,
      jitter: retry.jitter ?? false,
    });
    if (retry.backoffBaseMs !== undefined) policy.backoffBase = msToDuration(retry.backoffBaseMs);
    if (retry.backoffMaxMs !== undefined) policy.backoffMax = msToDuration(retry.backoffMaxMs);
    set("retry", policy);
  }
  set("softTimeLimit", options.softTimeLimitMs === undefined ? undefined : msToDuration(options.softTimeLimitMs));
  set("hardTimeLimit", options.hardTimeLimitMs === undefined ? undefined : msToDuration(options.hardTimeLimitMs));
  set("rateLimit", options.rateLimit);
  set("rateLimitKey", options.rateLimitKey);
  set("concurrencyKey", options.concurrencyKey);
  set("concurrencyLimit", options.concurrencyLimit);
  if (options.concurrencyKeys !== undefined && options.concurrencyKeys.length > 0) {
    set("concurrencyKeys", options.concurrencyKeys.map(({ key, limit }) => create(ConcurrencyKeySchema, { key, limit })));
  }
  set("resultTtl", options.resultTtlMs === undefined ? undefined : msToDuration(options.resultTtlMs));
  if (options.headers !== undefined && Object.keys(options.headers).length > 0) {
    set("headers", { ...options.headers });
  }
  return any ? out : undefined;
}

/** True for SUCCEEDED, FAILED, CANCELLED and EXPIRED. */
export function isTerminal(state: TaskState): boolean {
  return (
    state === TaskState.SUCCEEDED ||
    state === TaskState.FAILED ||
    state === TaskState.CANCELLED ||
    state === TaskState.EXPIRED
  );
}

/** Decodes the JSON result of a task (null when it returned nothing). */
export function taskResult<T = unknown>(task: Task): T {
  return fromOptionalPayload(task.result, `result of task ${task.id}`) as T;
}

