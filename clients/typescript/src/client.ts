// Client, the producer's side: submit tasks, then read, await, watch or
// cancel them through the submission and results services.

import { create } from "@bufbuild/protobuf";
import { Code, createClient } from "@connectrpc/connect";
import type { Client as RpcClient } from "@connectrpc/connect";
import { ResultsService } from "./gen/conveyor/v1/results_service_pb.js";
import { SubmissionService } from "./gen/conveyor/v1/submission_service_pb.js";
import { RetryPolicySchema, TaskOptionsSchema, TaskSpecSchema, TaskState } from "./gen/conveyor/v1/task_pb.js";
import type { Payload, Task, TaskOptions, TaskSpec } from "./gen/conveyor/v1/task_pb.js";
import { ConveyorError, unsuccessfulTaskError } from "./errors.js";
import { fromOptionalPayload, msToDuration, toPayload, toTimestamp } from "./payload.js";
import { createTransport } from "./transport.js";
import type { ConnectionOptions } from "./transport.js";

/** Most tasks one SubmitTasks call carries (the service's limit). */
export const MAX_TASKS_PER_BATCH = 1000;

/** How much longer than the requested wait the call's deadline is. */
const WAIT_DEADLINE_MARGIN_MS = 2000;
/** A WaitTask that timed out sooner than this after it started is not repeated. */
const MIN_USEFUL_WAIT_MS = 1000;

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
  /** A second submit with the same key returns the first task's id. */
  idempotencyKey?: string;
  /** Headers passed to the worker untouched (trace context, tenant...). */
  headers?: Record<string, string>;
  /** How long the outcome is kept after the task finishes. */
  resultTtlMs?: number;
}

/** One task of a `submitMany` call. */
export interface TaskRequest extends SubmitOptions {
  name: string;
  /** Positional arguments, each encoded as JSON. */
  args?: readonly unknown[];
}

/** Per-call options. */
export interface CallOptions {
  /** Aborts the call. */
  signal?: AbortSignal;
}

/** Options of `wait` and `result`. */
export interface WaitOptions extends CallOptions {
  /** How long to wait at most; unset waits until the task ends. */
  timeoutMs?: number;
}

export interface ClientOptions extends ConnectionOptions {}

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
  const taskOptions = buildOptions(options);
  if (taskOptions !== undefined) spec.options = taskOptions;
  return spec;
}

function buildOptions(options: SubmitOptions): TaskOptions | undefined {
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

/**
 * A producer's handle on Conveyor: one HTTP/2 connection serving the
 * submission and results services, such as `conveyor dev` at
 * "http://127.0.0.1:50051".
 */
export class Client {
  readonly #submission: RpcClient<typeof SubmissionService>;
  readonly #results: RpcClient<typeof ResultsService>;
  readonly #close: () => void;

  constructor(baseUrl: string, options: ClientOptions = {}) {
    const { transport, close } = createTransport(baseUrl, options);
    this.#submission = createClient(SubmissionService, transport);
    this.#results = createClient(ResultsService, transport);
    this.#close = close;
  }

  /** The generated submission client, for calls this class does not wrap. */
  get submissionService(): RpcClient<typeof SubmissionService> {
    return this.#submission;
  }

  /** The generated results client, for calls this class does not wrap. */
  get resultsService(): RpcClient<typeof ResultsService> {
    return this.#results;
  }

  /**
   * Submits one task and returns its id (for a repeated idempotency key, the
   * id of the task first submitted with it).
   */
  async submit(
    name: string,
    args: readonly unknown[] = [],
    options: SubmitOptions & CallOptions = {},
  ): Promise<string> {
    const task = buildTaskSpec(name, args, options);
    const response = await rpc(() => this.#submission.submitTask({ task }, callOptions(options)));
    return response.taskId;
  }

  /**
   * Submits many tasks and returns their ids in order, in one SubmitTasks
   * call per 1000 tasks. Each call is all-or-nothing; when a later call fails
   * the earlier ones stay accepted.
   */
  async submitMany(tasks: readonly TaskRequest[], options: CallOptions = {}): Promise<string[]> {
    const specs = tasks.map((task) => buildTaskSpec(task.name, task.args ?? [], task));
    const ids: string[] = [];
    for (let start = 0; start < specs.length; start += MAX_TASKS_PER_BATCH) {
      const batch = specs.slice(start, start + MAX_TASKS_PER_BATCH);
      const response = await rpc(() => this.#submission.submitTasks({ tasks: batch }, callOptions(options)));
      if (response.results.length !== batch.length) {
        throw new ConveyorError(
          Code.Internal,
          `submitted ${batch.length} tasks, got ${response.results.length} results`,
        );
      }
      ids.push(...response.results.map((result) => result.taskId));
    }
    return ids;
  }

  /** The task's current state and, once finished, its outcome. */
  async get(id: string, options: CallOptions = {}): Promise<Task> {
    const response = await rpc(() => this.#results.getTask({ taskId: id }, callOptions(options)));
    return requireTask(response.task, "GetTask");
  }

  /**
   * Waits for the task to reach a terminal state and returns it, whatever
   * that state is. When `timeoutMs` passes first, throws a
   * ConveyorTimeoutError (code DEADLINE_EXCEEDED). Waits longer than the
   * server's maximum are carried out as several calls.
   */
  async wait(id: string, options: WaitOptions = {}): Promise<Task> {
    const deadline = options.timeoutMs === undefined ? undefined : Date.now() + Math.max(0, options.timeoutMs);
    for (;;) {
      const started = Date.now();
      const remaining = deadline === undefined ? undefined : Math.max(0, deadline - started);
      const request =
        remaining === undefined ? { taskId: id } : { taskId: id, timeout: msToDuration(remaining) };
      const call = callOptions(options);
      if (remaining !== undefined) call.timeoutMs = remaining + WAIT_DEADLINE_MARGIN_MS;
      try {
        const response = await rpc(() => this.#results.waitTask(request, call));
        return requireTask(response.task, "WaitTask");
      } catch (error) {
        if (error instanceof ConveyorError && shouldWaitAgain(error, started, deadline)) continue;
        throw error;
      }
    }
  }

  /**
   * Waits for the task and returns its decoded JSON result. A FAILED task
   * throws TaskFailedError (type, message, traceback); CANCELLED and EXPIRED
   * throw TaskNotSucceededError; a timeout throws ConveyorTimeoutError.
   */
  async result<T = unknown>(id: string, options: WaitOptions = {}): Promise<T> {
    const task = await this.wait(id, options);
    if (task.state !== TaskState.SUCCEEDED) throw unsuccessfulTaskError(task);
    return taskResult<T>(task);
  }

  /**
   * The task's current state, then every change; ends after a terminal
   * state. Break out of the loop (or abort `signal`) to stop watching.
   */
  async *watch(id: string, options: CallOptions = {}): AsyncGenerator<Task, void, undefined> {
    try {
      for await (const update of this.#results.watchTask({ taskId: id }, callOptions(options))) {
        yield requireTask(update.task, "WatchTask");
      }
    } catch (error) {
      throw ConveyorError.from(error);
    }
  }

  /**
   * Cancels a task that has not started. Returns true when this call
   * cancelled it, false when it was already running or finished.
   */
  async cancel(id: string, options: CallOptions = {}): Promise<boolean> {
    const response = await rpc(() => this.#submission.cancelTask({ taskId: id }, callOptions(options)));
    return response.cancelled;
  }

  /** Closes the connection; calls made afterwards open a new one. */
  close(): void {
    this.#close();
  }
}

/** Runs one call, converting its failure into a ConveyorError. */
async function rpc<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    throw ConveyorError.from(error);
  }
}

function callOptions(options: CallOptions): { signal?: AbortSignal; timeoutMs?: number } {
  return options.signal === undefined ? {} : { signal: options.signal };
}

function requireTask(task: Task | undefined, rpcName: string): Task {
  if (task === undefined) throw new ConveyorError(Code.Internal, `${rpcName} response carries no task`);
  return task;
}

/**
 * True when a WaitTask timed out at the server's cap rather than ours: time
 * remains and the call really waited.
 */
export function shouldWaitAgain(
  error: ConveyorError,
  started: number,
  deadline: number | undefined,
  now: number = Date.now(),
): boolean {
  return (
    error.code === Code.DeadlineExceeded &&
    now - started >= MIN_USEFUL_WAIT_MS &&
    (deadline === undefined || deadline - now >= MIN_USEFUL_WAIT_MS)
  );
}

export type { Payload, Task };
