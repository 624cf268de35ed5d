// What a handler sees (TaskContext: the assignment, its decoded arguments and
// its AbortSignal) and how it fails (TaskFailure, and any thrown Error).

import type { Assignment } from "./gen/conveyor/v1/dispatch_service_pb.js";
import type { Payload } from "./gen/conveyor/v1/task_pb.js";
import { PayloadError } from "./errors.js";
import { RawPayload, durationToMs, fromPayload, fromTimestamp, isJson } from "./payload.js";

/** Error type reported when an argument does not decode. */
export const ARGUMENT_ERROR = "ArgumentError";

/**
 * A failure with an explicit type, for handlers that report errors in the
 * vocabulary of other languages: `throw new TaskFailure("ValueError", "bad
 * input", { retryable: false })`. Any other thrown Error reports its `name`,
 * `message` and `stack`; set `retryable = false` on it to make it final.
 */
export class TaskFailure extends Error {
  /** The error type reported (also this error's `name`). */
  readonly type: string;
  /** Whether the task's retry policy may run it again (default true). */
  readonly retryable: boolean;

  /** Retry after this long instead of the policy's backoff (still bounded by max retries). */
  readonly retryAfterMs: number | undefined;

  constructor(
    type: string,
    message: string,
    options: { retryable?: boolean; retryAfterMs?: number; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.type = type;
    this.name = type;
    this.retryAfterMs = options.retryAfterMs;
    this.retryable = options.retryAfterMs !== undefined ? true : (options.retryable ?? true);
  }
}

/** What a handler reports about itself while it runs (Celery's `update_state`). */
export interface ProgressUpdate {
  /** A custom state name, e.g. "DOWNLOADING" (at most 100 bytes). */
  state?: string;
  /** Completion from 0 to 100. */
  percent?: number;
  /** Any details, encoded as JSON (at most 64 KiB). */
  meta?: unknown;
}

/** Options of `ctx.retry`. */
export interface RetryRequest {
  /** Run the next attempt this long from now (Celery's `countdown`); default: the policy's backoff. */
  countdownMs?: number;
  /** Why, as the reported error's message. */
  message?: string;
  /** The error that caused the retry, reported as the cause. */
  cause?: unknown;
}

/** Error type reported when a handler calls `ctx.retry` (Celery's Retry). */
export const RETRY_ERROR = "Retry";

/** Why a handler's AbortSignal fired; `signal.reason` is one of these. */
export class TaskCancelledError extends Error {
  /** "cancelled" (by the dispatcher: revoke, hard time limit, expiry), "soft-time-limit", "drain" or "stream-lost". */
  readonly kind: "cancelled" | "soft-time-limit" | "drain" | "stream-lost";

  constructor(kind: TaskCancelledError["kind"], message: string) {
    super(message);
    this.kind = kind;
    this.name = kind === "soft-time-limit" ? "SoftTimeLimitExceeded" : "TaskCancelled";
  }
}

/** One attempt of one task, as handed to its handler. */
export class TaskContext {
  /** The task id (a UUIDv7). */
  readonly taskId: string;
  /** The registered task name. */
  readonly name: string;
  /** The attempt number, 1 for the first. */
  readonly attempt: number;
  /** Retries the task's policy allows after the first attempt. */
  readonly maxRetries: number;
  /** The lease token fencing this attempt. */
  readonly leaseToken: bigint;
  /** Headers from the task's options (trace context among them). */
  readonly headers: Readonly<Record<string, string>>;
  /** Named arguments, decoded from JSON (non-JSON ones as RawPayload). */
  readonly kwargs: Readonly<Record<string, unknown>>;
  /** Positional arguments, decoded from JSON (non-JSON ones as RawPayload). */
  readonly args: readonly unknown[];
  /** Positional arguments as received. */
  readonly rawArgs: readonly Payload[];
  /** Named arguments as received. */
  readonly rawKwargs: Readonly<Record<string, Payload>>;
  /** The cooperative time limit, if any; `signal` fires when it passes. */
  readonly softTimeLimitMs: number | undefined;
  /** The hard time limit, if any (enforced by the dispatcher). */
  readonly hardTimeLimitMs: number | undefined;
  /** When the task was submitted. */
  readonly createdAt: Date | undefined;
  /**
   * The workflow this task is a node of (Celery's `request.root_id`), or
   * undefined for a task submitted on its own.
   */
  readonly workflowId: string | undefined;
  /**
   * Fires when the attempt should stop: the dispatcher cancelled it (revoke,
   * hard time limit, expiry), its soft time limit passed, the worker's drain
   * grace period ended, or the stream it came from broke. `signal.reason` is
   * a TaskCancelledError. The outcome of a cancelled or abandoned attempt is
   * not reported; that of a soft time limit is.
   */
  readonly signal: AbortSignal;

  /**
   * Decodes the assignment's arguments; a malformed JSON argument throws a
   * non-retryable TaskFailure of type ArgumentError. Public so that handlers
   * can be unit-tested without a server.
   */
  readonly #onProgress: ((update: ProgressUpdate) => void) | undefined;

  constructor(
    assignment: Assignment,
    signal: AbortSignal = new AbortController().signal,
    onProgress?: (update: ProgressUpdate) => void,
  ) {
    this.#onProgress = onProgress;
    this.taskId = assignment.taskId;
    this.name = assignment.name;
    this.attempt = assignment.attempt;
    this.maxRetries = assignment.maxRetries;
    this.leaseToken = assignment.leaseToken;
    this.headers = { ...assignment.headers };
    this.rawArgs = assignment.args;
    this.rawKwargs = assignment.kwargs;
    this.args = assignment.args.map((payload, index) => decodeArgument(payload, `positional argument ${index}`));
    const kwargs: Record<string, unknown> = {};
    for (const [key, payload] of Object.entries(assignment.kwargs)) {
      kwargs[key] = decodeArgument(payload, `named argument "${key}"`);
    }
    this.kwargs = kwargs;
    this.softTimeLimitMs = durationToMs(assignment.softTimeLimit);
    this.hardTimeLimitMs = durationToMs(assignment.hardTimeLimit);
    this.createdAt = fromTimestamp(assignment.createdAt);
    this.workflowId = assignment.workflowId === "" ? undefined : assignment.workflowId;
    this.signal = signal;
  }

  /** True once the attempt has been cancelled. */
  get cancelled(): boolean {
    return this.signal.aborted;
  }

  /** Throws the cancellation reason when the attempt has been cancelled. */
  throwIfCancelled(): void {
    this.signal.throwIfAborted();
  }

  /**
   * Reports progress (Celery's `update_state`): producers see it in
   * `client.get(id).progress` and in `client.watch(id)`. Fire and forget;
   * an update that cannot be encoded as JSON throws a PayloadError.
   */
  updateState(update: ProgressUpdate): void {
    if (update.percent !== undefined && !(update.percent >= 0 && update.percent <= 100)) {
      throw new RangeError(`progress percent must be from 0 to 100, got ${update.percent}`);
    }
    this.#onProgress?.(update);
  }

  /**
   * Ends this attempt asking for another one (Celery's `self.retry`): throw
   * what it returns, `throw ctx.retry({ countdownMs: 5000 })`. The next
   * attempt runs after `countdownMs` (default: the retry policy's backoff),
   * within the task's `maxRetries`; past them the task ends FAILED with
   * this error.
   */
  retry(request: RetryRequest = {}): TaskFailure {
    const { countdownMs, cause } = request;
    if (countdownMs !== undefined && !(countdownMs >= 0)) {
      throw new RangeError(`retry countdown must be a number of milliseconds >= 0, got ${countdownMs}`);
    }
    const message = request.message ?? (cause instanceof Error ? `${cause.name}: ${cause.message}` : "retry requested by the handler");
    return new TaskFailure(RETRY_ERROR, message, { retryAfterMs: countdownMs, retryable: true, cause });
  }
}

function decodeArgument(payload: Payload, what: string): unknown {
  if (!isJson(payload.contentType)) return new RawPayload(payload.data, payload.contentType);
  try {
    return fromPayload(payload, what);
  } catch (error) {
    const message = error instanceof PayloadError ? error.message : String(error);
    throw new TaskFailure(ARGUMENT_ERROR, message, { retryable: false, cause: error });
  }
}

/** The fields of the TaskError reported for anything a handler threw. */
export interface FailureFields {
  type: string;
  message: string;
  traceback: string;
  retryable: boolean;
  /** Set when the handler asked for a retry after a delay. */
  retryAfterMs?: number;
}

/**
 * Describes a thrown value: an Error's `name` (or TaskFailure's type), its
 * `message` and `stack`, retryable unless it says `retryable: false`. An
 * AbortError caused by the attempt's own signal reports the signal's reason
 * (e.g. SoftTimeLimitExceeded) with the AbortError's stack.
 */
export function describeFailure(thrown: unknown, signal?: AbortSignal): FailureFields {
  if (thrown instanceof Error) {
    let source: Error = thrown;
    if (thrown.name === "AbortError" && signal?.aborted === true && signal.reason instanceof Error) {
      source = signal.reason;
    }
    const retryable = (thrown as { retryable?: unknown }).retryable;
    const type =
      thrown instanceof TaskFailure ? thrown.type : source.name || source.constructor?.name || "Error";
    const fields: FailureFields = {
      type,
      message: source.message,
      traceback: thrown.stack ?? source.stack ?? "",
      retryable: retryable !== false,
    };
    if (thrown instanceof TaskFailure && thrown.retryAfterMs !== undefined) fields.retryAfterMs = thrown.retryAfterMs;
    return fields;
  }
  let message: string;
  if (typeof thrown === "string") {
    message = thrown;
  } else {
    try {
      message = JSON.stringify(thrown) ?? String(thrown);
    } catch {
      message = String(thrown);
    }
  }
  return { type: "Error", message, traceback: "", retryable: true };
}
