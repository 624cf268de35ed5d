// @conveyor/client: the TypeScript client and worker SDK of Conveyor.

export { Client, MAX_BATCH_BYTES, MAX_TASKS_PER_BATCH, buildTaskSpec, isTerminal, taskResult } from "./client.js";
export type {
  CallOptions,
  CancelWorkflowResult,
  ClientOptions,
  ConcurrencyKey,
  DeadLetterPage,
  RetryOptions,
  SubmitOptions,
  TaskRequest,
  WaitOptions,
  WorkflowViewOptions,
} from "./client.js";
export { Chain, Chord, Group, Signature, buildWorkflowSpec, chain, chord, group, isCanvas, si, sig, starmap } from "./canvas.js";
export type { Canvas, CanvasElement, ChordOptions, SignatureOptions, WorkflowOptions } from "./canvas.js";
export { TaskHandle, WorkflowHandle, isWorkflowTerminal, workflowStateName } from "./workflow.js";
export { EagerClient, EAGER_WORKER_ID } from "./eager.js";
export type { EagerClientOptions } from "./eager.js";
export { buildSchedule } from "./schedules.js";
export type { ScheduleDefinition, ScheduleRule, SolarEventName } from "./schedules.js";
export { Worker, DEFAULT_CONCURRENCY, DEFAULT_GRACE_PERIOD_MS } from "./worker.js";
export type { Handler, RunOptions, WorkerOptions } from "./worker.js";
export { ARGUMENT_ERROR, RETRY_ERROR, TaskCancelledError, TaskContext, TaskFailure, describeFailure } from "./context.js";
export type { FailureFields, ProgressUpdate, RetryRequest } from "./context.js";
export {
  Code,
  ConveyorError,
  ConveyorTimeoutError,
  PayloadError,
  PermissionDeniedError,
  TaskFailedError,
  TaskNotSucceededError,
  UnauthenticatedError,
  codeName,
  stateName,
} from "./errors.js";
export { JSON_CONTENT_TYPE, RawPayload, fromPayload, isJson, toPayload } from "./payload.js";
export { ADDRESS_ENV, DEFAULT_ADDRESS, DEFAULT_TLS_ADDRESS, MAX_MESSAGE_BYTES, SERVICE_ADDRESS_ENV, SERVICE_NAMES, TLS_ENV, parseAddresses } from "./transport.js";
export type { Addresses, ConnectionOptions, ParseAddressOptions, RetryPolicy, ServiceEndpoints, ServiceName, TlsOptions } from "./transport.js";
export { DEFAULT_NAMESPACE, NAMESPACE_ENV } from "./namespace.js";
export { silentLogger, stderrLogger } from "./logger.js";
export type { LogFields, LogLevel, Logger } from "./logger.js";
export { SDK_VERSION } from "./version.js";
export { TaskState } from "./gen/conveyor/v1/task_pb.js";
export type { TaskFailureDetails } from "./errors.js";
export { FailureReason } from "./gen/conveyor/v1/task_pb.js";
export type { Payload, Progress, Task, TaskError, TaskOptions, TaskSpec } from "./gen/conveyor/v1/task_pb.js";
export { NodeInput, NodeTrigger, WorkflowState } from "./gen/conveyor/v1/workflow_pb.js";
export type { Workflow, WorkflowNode, WorkflowNodeStatus, WorkflowSpec } from "./gen/conveyor/v1/workflow_pb.js";
export { WorkflowView } from "./gen/conveyor/v1/results_service_pb.js";
export { CatchUp, SolarEvent } from "./gen/conveyor/v1/scheduling_service_pb.js";
export type { Schedule, ScheduleRun } from "./gen/conveyor/v1/scheduling_service_pb.js";
export type { WorkerInfo } from "./gen/conveyor/v1/dispatch_service_pb.js";
