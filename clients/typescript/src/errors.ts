// The errors this package throws: RPC failures carry their gRPC status code,
// failed tasks carry the handler's error.

import { Code, ConnectError } from "@connectrpc/connect";
import { FailureReason, TaskState } from "./gen/conveyor/v1/task_pb.js";
import type { Task } from "./gen/conveyor/v1/task_pb.js";
import { SERVICE_ADDRESS_ENV, TLS_ENV } from "./transport.js";
import type { ServiceName } from "./transport.js";

export { Code };

/**
 * An RPC to Conveyor failed. `code` is the gRPC status code
 * (`Code.InvalidArgument`, `Code.NotFound`, ...); `codeName` its name as gRPC
 * spells it ("INVALID_ARGUMENT").
 */
export class ConveyorError extends Error {
  /** The gRPC status code. */
  readonly code: Code;
  /** The server's message, without the code prefix. */
  readonly rawMessage: string;

  constructor(code: Code, message: string, options?: { cause?: unknown }) {
    super(`${codeName(code)}: ${message}`, options);
    this.name = "ConveyorError";
    this.code = code;
    this.rawMessage = message;
  }

  /** The code's name, e.g. "NOT_FOUND". */
  get codeName(): string {
    return codeName(this.code);
  }

  /**
   * Converts anything thrown by a connect call into a ConveyorError. `call`
   * says which service the call was for and at which address: an
   * UNIMPLEMENTED answer (a process that does not serve that role) then
   * also names that address and the setting of that service's address.
   */
  static from(error: unknown, call?: CallTarget): ConveyorError {
    if (error instanceof ConveyorError) return error;
    const connect = ConnectError.from(error);
    const ErrorType = errorClass(connect.code);
    let message = connect.rawMessage;
    if (connect.code === Code.Unimplemented && call?.address !== undefined) message += ` ${roleHint(call.service, call.address)}`;
    const tls = tlsHint(error);
    if (tls !== undefined) message = `${openSslReason(message)} (${tls})`;
    return new ErrorType(connect.code, message, { cause: error });
  }
}

/**
 * The reason of an OpenSSL error line ("80...:error:0A00045C:SSL
 * routines:ssl3_read_bytes:tlsv13 alert certificate required:file:line:SSL
 * alert number 116" -> "tlsv13 alert certificate required"); other messages
 * unchanged.
 */
function openSslReason(message: string): string {
  const match = /^[0-9A-F]+:error:[0-9A-F]+:[^:]*:[^:]*:([^:]+):/.exec(message.trim());
  return match === null ? message.trim() : match[1]!.trim();
}

/** Node's codes of a server certificate the client does not trust. */
const UNTRUSTED_SERVER = new Set([
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "CERT_SIGNATURE_FAILURE",
  "CERT_UNTRUSTED",
  "CERT_REJECTED",
  "INVALID_CA",
]);

/** TLS alerts of a server that refused the client's certificate, or wanted one. */
const CLIENT_CERT_REFUSED = /^ERR_SSL_(TLSV13_ALERT_CERTIFICATE_REQUIRED|SSLV3_ALERT_BAD_CERTIFICATE|TLSV1_ALERT_UNKNOWN_CA|SSLV3_ALERT_CERTIFICATE_UNKNOWN|SSLV3_ALERT_HANDSHAKE_FAILURE|TLSV1_ALERT_ACCESS_DENIED|SSLV3_ALERT_CERTIFICATE_EXPIRED|SSLV3_ALERT_UNSUPPORTED_CERTIFICATE|TLSV1_ALERT_DECRYPT_ERROR)$/;

/**
 * What to do about a failed TLS handshake, from Node's error codes along
 * `error`'s cause chain; undefined when it is not one.
 */
export function tlsHint(error: unknown): string | undefined {
  const codes: string[] = [];
  const seen = new Set<unknown>();
  for (let current = error; current instanceof Error && !seen.has(current); current = current.cause) {
    seen.add(current);
    const code = (current as { code?: unknown }).code;
    if (typeof code === "string") codes.push(code);
  }
  const clientCert = `set tls.cert and tls.key (or ${TLS_ENV.cert} and ${TLS_ENV.key}) to a client certificate signed by the CA the server trusts for clients, and its key`;
  for (const code of codes) {
    if (UNTRUSTED_SERVER.has(code)) {
      return `TLS: the server's certificate is not trusted (${code}); set tls.ca or ${TLS_ENV.ca} to the PEM file of the CA that signed it`;
    }
    if (code === "CERT_HAS_EXPIRED" || code === "CERT_NOT_YET_VALID") {
      return `TLS: the server's certificate is not valid now (${code}); renew the server's certificate or check this machine's clock`;
    }
    if (code === "ERR_TLS_CERT_ALTNAME_INVALID") {
      return `TLS: the server's certificate does not name the host connected to (${code}); use an address with a host name or IP its certificate lists`;
    }
    if (code === "ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED") {
      return `TLS: the server requires a client certificate (mTLS) (${code}); ${clientCert}`;
    }
    if (CLIENT_CERT_REFUSED.test(code)) {
      return `TLS: the server refused the handshake, most likely this client's certificate or its absence (${code}); ${clientCert}`;
    }
    if (code === "ERR_SSL_WRONG_VERSION_NUMBER" || code === "ERR_SSL_PACKET_LENGTH_TOO_LONG") {
      return `TLS: the server does not speak TLS at this address (${code}); use an http:// address and no TLS settings for a plaintext server`;
    }
  }
  return undefined;
}

/** The service a call was for and the address it went to (undefined: a custom transport). */
export interface CallTarget {
  service: ServiceName;
  address: string | undefined;
}

/**
 * What an UNIMPLEMENTED answer adds: "(called http://127.0.0.1:50051; set
 * CONVEYOR_RESULTS_ADDR or endpoints.results to reach the results role
 * elsewhere)".
 */
export function roleHint(service: ServiceName, address: string): string {
  return `(called ${address}; set ${SERVICE_ADDRESS_ENV[service]} or endpoints.${service} to reach the ${service} role elsewhere)`;
}

/**
 * A wait ran out of time (`DEADLINE_EXCEEDED`). Its `name` is "TimeoutError",
 * as for the timeouts of the platform's own APIs.
 */
export class ConveyorTimeoutError extends ConveyorError {
  constructor(code: Code, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = "TimeoutError";
  }
}

/**
 * The server did not know who is calling (`UNAUTHENTICATED`): no token, a
 * malformed `authorization` header, or a token it does not accept (unknown,
 * or revoked by removing it from the server's auth file). Set the `token`
 * option to a token the server accepts. A worker's `run()` rejects with it.
 */
export class UnauthenticatedError extends ConveyorError {
  constructor(code: Code, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = "UnauthenticatedError";
  }
}

/**
 * The server knows the caller but its principal may not make this call in
 * this namespace (`PERMISSION_DENIED`): e.g. a `reader` that submits, or a
 * `producer` of namespace "team-a" calling in "team-b". The message is the
 * server's, naming the principal, what it may not do, in which namespace
 * (or "in any namespace") and the role that would grant it. Retrying does
 * not help: an admin has to grant the role in the server's auth file (or
 * the client has to use another namespace or token). A worker's `run()`
 * rejects with it when its principal may not work in the worker's namespace.
 */
export class PermissionDeniedError extends ConveyorError {
  constructor(code: Code, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = "PermissionDeniedError";
  }
}

/** The ConveyorError subclass for a status code. */
function errorClass(code: Code): typeof ConveyorError {
  switch (code) {
    case Code.DeadlineExceeded:
      return ConveyorTimeoutError;
    case Code.Unauthenticated:
      return UnauthenticatedError;
    case Code.PermissionDenied:
      return PermissionDeniedError;
    default:
      return ConveyorError;
  }
}

/** Where a failed task sits and why the platform failed it, beside the handler's error. */
export interface TaskFailureDetails {
  /** Set when the platform, not the handler, failed the task. */
  reason?: FailureReason;
  /** For FAILURE_REASON_DEPENDENCY_FAILED: the workflow node whose failure failed this one. */
  causeTaskId?: string;
  /** The workflow the task is a node of. */
  workflowId?: string;
  /** Its index among the workflow's nodes. */
  workflowNode?: number;
}

/**
 * The task finished FAILED. `type`, `message` and `traceback` are the
 * handler's error as its language reported it (e.g. "ValueError", "boom",
 * a Python traceback or a JS stack). For a workflow node that did not run
 * because a node it depends on failed, `reason` is
 * `FailureReason.DEPENDENCY_FAILED` and `causeTaskId` names that node. A
 * failed workflow's `result` throws this error for the node that failed
 * first (`taskId`), with `workflowId` set.
 */
export class TaskFailedError extends Error {
  /** The task's id. */
  readonly taskId: string;
  /** Error type reported by the handler, e.g. "ValueError". */
  readonly type: string;
  /** Stack trace or traceback text, possibly empty. */
  readonly traceback: string;
  /** Whether the handler marked the failure retryable. */
  readonly retryable: boolean;
  /** Why the platform failed the task; UNSPECIFIED when the handler's error did. */
  readonly reason: FailureReason;
  /** For DEPENDENCY_FAILED: the parent node whose failure failed this one (follow it for the cause). */
  readonly causeTaskId: string | undefined;
  /** The workflow the task is a node of, if any. */
  readonly workflowId: string | undefined;
  /** Its index among the workflow's nodes, if it is a node. */
  readonly workflowNode: number | undefined;

  constructor(
    taskId: string,
    type: string,
    message: string,
    traceback: string,
    retryable = false,
    details: TaskFailureDetails = {},
  ) {
    super(message);
    this.name = "TaskFailedError";
    this.taskId = taskId;
    this.type = type;
    this.traceback = traceback;
    this.retryable = retryable;
    this.reason = details.reason ?? FailureReason.UNSPECIFIED;
    this.causeTaskId = details.causeTaskId || undefined;
    this.workflowId = details.workflowId || undefined;
    this.workflowNode = this.workflowId === undefined ? undefined : details.workflowNode;
  }

  override toString(): string {
    const where = this.workflowId === undefined ? "" : ` (node ${this.workflowNode ?? "?"} of workflow ${this.workflowId})`;
    const cause = this.causeTaskId === undefined ? "" : ` (caused by task ${this.causeTaskId})`;
    return `TaskFailedError: task ${this.taskId}${where} failed: ${this.type}: ${this.message}${cause}`;
  }
}

/**
 * The task ended without a result: CANCELLED or EXPIRED. For a cancelled
 * workflow, `taskId` and `workflowId` are both the workflow's id.
 */
export class TaskNotSucceededError extends Error {
  readonly taskId: string;
  /** The terminal state it ended in. */
  readonly state: TaskState;
  /** The workflow, when it is a workflow that did not succeed. */
  readonly workflowId: string | undefined;

  constructor(taskId: string, state: TaskState, workflowId?: string) {
    const what = workflowId === undefined ? `task ${taskId}` : `workflow ${workflowId}`;
    super(`${what} did not succeed: it ended ${stateName(state)}`);
    this.name = "TaskNotSucceededError";
    this.taskId = taskId;
    this.state = state;
    this.workflowId = workflowId;
  }
}

/** A payload could not be encoded or decoded as JSON. */
export class PayloadError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "PayloadError";
  }
}

/** The error for a terminal task that did not succeed. */
export function unsuccessfulTaskError(task: Task): Error {
  if (task.state === TaskState.FAILED) {
    const error = task.error;
    return new TaskFailedError(
      task.id,
      error?.type ?? "",
      error?.message ?? "",
      error?.traceback ?? "",
      error?.retryable ?? false,
      {
        reason: error?.reason ?? FailureReason.UNSPECIFIED,
        causeTaskId: error?.causeTaskId ?? "",
        workflowId: task.workflowId,
        workflowNode: task.workflowNode,
      },
    );
  }
  return new TaskNotSucceededError(task.id, task.state);
}

/** "TASK_STATE_FAILED" -> "FAILED". */
export function stateName(state: TaskState): string {
  return TaskState[state] ?? `UNKNOWN(${state})`;
}

/** Code.NotFound -> "NOT_FOUND". */
export function codeName(code: Code): string {
  const name = Code[code];
  if (name === undefined) return `CODE_${code}`;
  return name.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}
