// @conveyor/client: the TypeScript client and worker SDK of Conveyor.

export { Client, MAX_TASKS_PER_BATCH, buildTaskSpec, isTerminal, taskResult } from "./client.js";
export type { CallOptions, ClientOptions, RetryOptions, SubmitOptions, TaskRequest, WaitOptions } from "./client.js";
export { Worker, DEFAULT_GRACE_PERIOD_MS } from "./worker.js";
export type { Handler, RunOptions, WorkerOptions } from "./worker.js";
export { ARGUMENT_ERROR, TaskCancelledError, TaskContext, TaskFailure, describeFailure } from "./context.js";
export type { FailureFields } from "./context.js";
export {
  Code,
  ConveyorError,
  ConveyorTimeoutError,
  PayloadError,
  TaskFailedError,
  TaskNotSucceededError,
  codeName,
  stateName,
} from "./errors.js";
export { JSON_CONTENT_TYPE, RawPayload, fromPayload, isJson, toPayload } from "./payload.js";
export type { ConnectionOptions } from "./transport.js";
export { silentLogger, stderrLogger } from "./logger.js";
export type { LogFields, LogLevel, Logger } from "./logger.js";
export { SDK_VERSION } from "./version.js";
export { TaskState } from "./gen/conveyor/v1/task_pb.js";
export type { Payload, Task, TaskError, TaskOptions, TaskSpec } from "./gen/conveyor/v1/task_pb.js";
