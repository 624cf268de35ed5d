// Running one attempt of a handler to its outcome: the context, the soft
// time limit, and the result or error reported. Shared by the worker and
// eager mode.

import { create } from "@bufbuild/protobuf";
import type { Assignment, TaskOutcome } from "../gen/conveyor/v1/dispatch_service_pb.js";
import { TaskErrorSchema } from "../gen/conveyor/v1/task_pb.js";
import type { TaskError } from "../gen/conveyor/v1/task_pb.js";
import { TaskCancelledError, TaskContext, TaskFailure, describeFailure } from "../context.js";
import type { ProgressUpdate } from "../context.js";
import type { Logger } from "../logger.js";
import { errorText, msToDuration, toPayload } from "../payload.js";
import type { Handler } from "../worker.js";

/** What running a handler needs: the worker's, or eager mode's. */
export interface ExecutionEnv {
  readonly handlers: ReadonlyMap<string, Handler>;
  readonly log: Logger;
}

/**
 * Runs one attempt's handler to its outcome; never throws, but tells
 * `onThrow` what was thrown (the worker records it on the attempt's span).
 * Internal (eager mode uses it too).
 */
export async function execute(
  runtime: ExecutionEnv,
  assignment: Assignment,
  controller: AbortController,
  onProgress: (update: ProgressUpdate) => void,
  onThrow?: (thrown: unknown) => void,
): Promise<TaskOutcome["outcome"]> {
  const started = Date.now();
  let softTimer: NodeJS.Timeout | undefined;
  const fields = { task_id: assignment.taskId, name: assignment.name, attempt: assignment.attempt };
  try {
    const handler = runtime.handlers.get(assignment.name);
    if (handler === undefined) {
      throw new TaskFailure("NotRegistered", `no handler is registered for "${assignment.name}"`);
    }
    const ctx = new TaskContext(assignment, controller.signal, onProgress);
    const softLimit = ctx.softTimeLimitMs;
    if (softLimit !== undefined) {
      softTimer = setTimeout(() => {
        runtime.log.warn("soft time limit passed, signalling the handler", { ...fields, limit_ms: softLimit });
        controller.abort(new TaskCancelledError("soft-time-limit", `soft time limit of ${softLimit} ms exceeded`));
      }, softLimit);
    }
    const value = await handler(ctx, ...ctx.args);
    let payload;
    try {
      payload = toPayload(value, "the handler's result");
    } catch (error) {
      throw new TaskFailure("SerializationError", errorText(error), { retryable: false, cause: error });
    }
    runtime.log.debug("task succeeded", { ...fields, elapsed_ms: Date.now() - started });
    return { case: "result", value: payload };
  } catch (thrown) {
    onThrow?.(thrown);
    return { case: "error", value: failureOutcome(runtime, thrown, controller.signal, fields) };
  } finally {
    clearTimeout(softTimer);
  }
}

/** The TaskError reported for what a handler threw. */
function failureOutcome(runtime: ExecutionEnv, thrown: unknown, signal: AbortSignal, fields: Record<string, unknown>): TaskError {
  const failure = describeFailure(thrown, signal);
  const { retryAfterMs, ...rest } = failure;
  const error = create(TaskErrorSchema, rest);
  if (retryAfterMs !== undefined) {
    error.retryAfter = msToDuration(retryAfterMs);
    error.retryable = true;
    runtime.log.info("task asked for a retry", { ...fields, retry_after_ms: retryAfterMs, message: failure.message });
  } else {
    runtime.log.info("task failed", { ...fields, error_type: failure.type, message: failure.message, retryable: failure.retryable });
  }
  return error;
}

