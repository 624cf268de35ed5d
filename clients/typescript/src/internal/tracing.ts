// OpenTelemetry tracing, through @opentelemetry/api only: until the
// application registers an OTel SDK every span is a no-op and nothing is sent.
//
// Spans (messaging semantic conventions, messaging.system = "conveyor"):
// `publish {queue}` (PRODUCER) around every submission, whose context each
// TaskSpec carries in `traceContext`; `process {queue}` (CONSUMER) around each
// attempt a worker runs, a child of the context the assignment carries;
// `wait` (CLIENT) around waiting for a result. Every call the SDK makes while
// a valid span context is active sends it as `traceparent`/`tracestate`
// metadata. Always W3C Trace Context, whatever the global propagator is: the
// proto field is W3C by definition (the API has no W3C propagator of its own,
// so the header is written and parsed here).

import { create } from "@bufbuild/protobuf";
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, context, createTraceState, isSpanContextValid, trace } from "@opentelemetry/api";
import type { Attributes, Context, Span, SpanContext } from "@opentelemetry/api";
import type { Assignment } from "../gen/conveyor/v1/dispatch_service_pb.js";
import { TraceContextSchema } from "../gen/conveyor/v1/task_pb.js";
import type { TaskError, TaskSpec, TraceContext } from "../gen/conveyor/v1/task_pb.js";
import { SDK_VERSION } from "../version.js";

/** The instrumentation scope of every span of the SDK. */
export const TRACER_NAME = "conveyor";
const SYSTEM = "conveyor";
/** The queue a task without one goes to (the server's default). */
const DEFAULT_QUEUE = "default";
/** The server refuses a TraceContext whose tracestate is longer. */
const MAX_TRACESTATE_BYTES = 512;
const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;

/** W3C trace headers. */
export interface TraceHeaders {
  traceparent?: string;
  tracestate?: string;
}

function tracer() {
  return trace.getTracer(TRACER_NAME, SDK_VERSION);
}

/**
 * `traceparent` (and `tracestate` when not empty) of the span context of
 * `ctx` (default: the active context); {} when there is no valid one.
 */
export function traceHeaders(ctx: Context = context.active()): TraceHeaders {
  const spanContext = trace.getSpanContext(ctx);
  if (spanContext === undefined || !isSpanContextValid(spanContext)) return {};
  const flags = (spanContext.traceFlags & 0xff).toString(16).padStart(2, "0");
  const headers: TraceHeaders = { traceparent: `00-${spanContext.traceId}-${spanContext.spanId}-${flags}` };
  const state = spanContext.traceState?.serialize() ?? "";
  if (state !== "") headers.tracestate = state;
  return headers;
}

/** The span context of W3C headers, or undefined when they hold no valid one. */
export function parseTraceHeaders(headers: TraceHeaders | undefined): SpanContext | undefined {
  const match = TRACEPARENT.exec(headers?.traceparent?.trim() ?? "");
  // Version ff is invalid; version 00 has exactly four fields.
  if (match === null || match[1] === "ff" || (match[1] === "00" && match[5] !== undefined)) return undefined;
  const spanContext: SpanContext = {
    traceId: match[2]!,
    spanId: match[3]!,
    traceFlags: parseInt(match[4]!, 16),
    isRemote: true,
  };
  const state = headers?.tracestate ?? "";
  if (state !== "") spanContext.traceState = createTraceState(state);
  return isSpanContextValid(spanContext) ? spanContext : undefined;
}

/**
 * Gives `spec` (a TaskSpec, or a WorkflowSpec whose nodes inherit it) the
 * trace context of `ctx`, unless it already has one (set by the caller) or
 * `ctx` holds no valid span context.
 */
export function stamp(spec: { traceContext?: TraceContext | undefined }, ctx: Context): void {
  if (spec.traceContext !== undefined) return;
  const headers = traceHeaders(ctx);
  if (headers.traceparent === undefined) return;
  let state = headers.tracestate ?? "";
  // The server would refuse the task; the traceparent is what links it.
  if (Buffer.byteLength(state) > MAX_TRACESTATE_BYTES) state = "";
  spec.traceContext = create(TraceContextSchema, { traceparent: headers.traceparent, tracestate: state });
}

/** Runs `run` with `span` active, then ends the span; an error thrown marks it ERROR. */
async function within<T>(span: Span, parent: Context, run: (ctx: Context) => Promise<T>): Promise<T> {
  const ctx = trace.setSpan(parent, span);
  try {
    return await context.with(ctx, () => run(ctx));
  } catch (error) {
    recordError(span, error);
    throw error;
  } finally {
    span.end();
  }
}

function recordError(span: Span, error: unknown): void {
  if (!span.isRecording()) return;
  if (error instanceof Error) {
    span.recordException(error);
    span.setStatus({ code: SpanStatusCode.ERROR, message: `${error.name}: ${error.message}` });
  } else {
    span.recordException(String(error));
    span.setStatus({ code: SpanStatusCode.ERROR, message: String(error) });
  }
}

/**
 * Runs a submission of `specs` in its `publish {queue}` span (one for a
 * batch), a child of the active context; `run` gets the span's context (to
 * stamp the specs with and to send as metadata). A batch of several queues
 * is named `publish`, without messaging.destination.name; of several task
 * names, without conveyor.task.name.
 */
export function publish<T>(
  specs: readonly TaskSpec[],
  batch: boolean,
  run: (span: Span, ctx: Context) => Promise<T>,
): Promise<T> {
  const queues = new Set(specs.map((spec) => spec.options?.queue || DEFAULT_QUEUE));
  const names = new Set(specs.map((spec) => spec.name));
  const queue = queues.size === 1 ? [...queues][0]! : undefined;
  const attributes: Attributes = {
    "messaging.system": SYSTEM,
    "messaging.operation.type": "send",
    "messaging.operation.name": "publish",
  };
  if (queue !== undefined) attributes["messaging.destination.name"] = queue;
  if (names.size === 1) attributes["conveyor.task.name"] = [...names][0]!;
  if (batch) attributes["messaging.batch.message_count"] = specs.length;
  const parent = context.active();
  const span = tracer().startSpan(queue === undefined ? "publish" : `publish ${queue}`, { kind: SpanKind.PRODUCER, attributes }, parent);
  return within(span, parent, (ctx) => run(span, ctx));
}

/** Runs a wait for task `taskId` in its `wait` span; `run` gets the span's context. */
export function waiting<T>(taskId: string, run: (ctx: Context) => Promise<T>): Promise<T> {
  const attributes: Attributes = { "messaging.system": SYSTEM, "messaging.message.id": taskId };
  const parent = context.active();
  const span = tracer().startSpan("wait", { kind: SpanKind.CLIENT, attributes }, parent);
  return within(span, parent, run);
}

/**
 * Runs one attempt in its `process {queue}` span, a child of the
 * assignment's trace context (a root span when it has none), active while
 * `run` runs. The queue is the one the assignment was routed to
 * (`assignment.queue`); a server too old to set it leaves it empty, and then
 * `fallbackQueue` names the span: the worker's queue when it consumes one,
 * undefined (span `process`, no messaging.destination.name) when several.
 * `run` resolves to the attempt's outcome, and tells `onThrow` what the
 * handler threw; an error outcome marks the span ERROR.
 */
export function processAttempt<T extends { case: string | undefined; value?: unknown }>(
  assignment: Assignment,
  fallbackQueue: string | undefined,
  run: (onThrow: (thrown: unknown) => void) => Promise<T>,
): Promise<T> {
  const queue = assignment.queue !== "" ? assignment.queue : fallbackQueue;
  const attributes: Attributes = {
    "messaging.system": SYSTEM,
    "messaging.operation.type": "process",
    "messaging.operation.name": "process",
    "messaging.message.id": assignment.taskId,
    "conveyor.task.name": assignment.name,
    "conveyor.task.attempt": assignment.attempt,
  };
  if (queue !== undefined) attributes["messaging.destination.name"] = queue;
  const remote = parseTraceHeaders(assignment.traceContext);
  const parent = remote === undefined ? ROOT_CONTEXT : trace.setSpanContext(ROOT_CONTEXT, remote);
  const span = tracer().startSpan(queue === undefined ? "process" : `process ${queue}`, { kind: SpanKind.CONSUMER, attributes }, parent);
  let thrown: unknown;
  return within(span, parent, async () => {
    const outcome = await run((error) => {
      thrown = error;
    });
    if (outcome.case === "error") failed(span, outcome.value as TaskError, thrown);
    return outcome;
  });
}

/**
 * Marks the span of an attempt that ended with `error`: status ERROR and the
 * exception recorded (what the handler threw, when it threw an Error; else
 * an exception event made of `error`).
 */
function failed(span: Span, error: TaskError, thrown: unknown): void {
  if (!span.isRecording()) return;
  if (thrown instanceof Error) {
    span.recordException(thrown);
  } else {
    const attributes: Attributes = { "exception.type": error.type, "exception.message": error.message };
    if (error.traceback !== "") attributes["exception.stacktrace"] = error.traceback;
    span.addEvent("exception", attributes);
  }
  span.setStatus({ code: SpanStatusCode.ERROR, message: `${error.type}: ${error.message}` });
}

/** The metadata of a call made in `ctx` (default: the active context). */
export function traceMetadata(ctx: Context = context.active()): Record<string, string> | undefined {
  const headers = traceHeaders(ctx);
  return headers.traceparent === undefined ? undefined : (headers as Record<string, string>);
}
