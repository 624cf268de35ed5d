// One worker session: a DispatchService.Connect stream from Hello to its
// end (credits, assignments, progress, outcomes, heartbeats, cancellation and
// drain), and the state the worker's sessions share.

import { create } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import type { Client as RpcClient } from "@connectrpc/connect";
import {
  ConnectRequestSchema,
  DrainReason,
  GrantCreditsSchema,
  HeartbeatSchema,
  ReportOutcomesSchema,
  ReportProgressSchema,
  TaskOutcomeSchema,
  TaskStartedSchema,
} from "../gen/conveyor/v1/dispatch_service_pb.js";
import type {
  Assignment,
  ConnectRequest,
  ConnectResponse,
  DispatchService,
  Hello,
  ReportProgress,
  TaskOutcome,
  Welcome,
} from "../gen/conveyor/v1/dispatch_service_pb.js";
import { ProgressSchema } from "../gen/conveyor/v1/task_pb.js";
import { TaskCancelledError } from "../context.js";
import type { ProgressUpdate } from "../context.js";
import { ConveyorError, codeName } from "../errors.js";
import type { Logger } from "../logger.js";
import { durationToMs, toPayload } from "../payload.js";
import { MAX_MESSAGE_BYTES } from "../transport.js";
import type { Endpoint, Endpoints } from "../transport.js";
import type { Handler } from "../worker.js";
import { execute } from "./execute.js";
import { processAttempt } from "./tracing.js";
import { AsyncQueue } from "./queue.js";
import { ACTIVE, creditsToGrant, drain, endedByDispatcher } from "./state.js";
import type { Phase, SessionEnd } from "./state.js";

/** How long the dispatcher has to answer Hello with Welcome. */
const HANDSHAKE_TIMEOUT_MS = 10_000;
/** How long to wait, after closing our side, for the dispatcher to close its side. */
const CLOSE_TIMEOUT_MS = 5_000;
/** Most outcomes in one ReportOutcomes frame. */
const MAX_OUTCOMES_PER_FRAME = 1024;
/** Heartbeat interval when Welcome names none, and the shortest honoured. */
const DEFAULT_HEARTBEAT_MS = 10_000;
const MIN_HEARTBEAT_MS = 10;
/** Credit limit when Welcome names none (the protocol's own limit). */
const DEFAULT_MAX_CREDITS = 1024;

/** An error reconnecting cannot fix: the dispatcher broke the protocol. */
export class ProtocolError extends ConveyorError {
  constructor(message: string) {
    super(Code.Internal, `protocol error: ${message}`);
    this.name = "ProtocolError";
  }
}

/** State shared by the worker's sessions: handlers outlive the stream that brought their task. */
export interface Runtime {
  readonly endpoints: Endpoints<RpcClient<typeof DispatchService>>;
  readonly handlers: ReadonlyMap<string, Handler>;
  readonly log: Logger;
  readonly concurrency: number;
  readonly gracePeriodMs: number;
  readonly heartbeatOverrideMs: number | undefined;
  /**
   * The queue of the `process` span when an assignment does not name its
   * queue (a server older than `Assignment.queue`): the worker's queue when
   * it consumes one, undefined when several.
   */
  readonly spanQueue: string | undefined;
  hello(): Hello;
  /** Handlers still running, of this session or an earlier one: each holds a slot. */
  inFlight: number;
  /** The session taking work, if any. */
  current: Session | undefined;
}

/** An assignment of a session whose handler has not finished. */
interface Running {
  readonly leaseToken: bigint;
  readonly controller: AbortController;
  /** Set by CancelAssignment: the outcome will be dropped. */
  cancelled: boolean;
}

/** One worker session: a Connect stream from Hello to its end. */
export class Session {
  readonly #rt: Runtime;
  readonly #epoch: number;
  readonly #outbound = new AsyncQueue<ConnectRequest>();
  readonly #rpcAbort = new AbortController();
  readonly #running = new Map<string, Running>();
  #outstanding = 0;
  #maxCredits = DEFAULT_MAX_CREDITS;
  #phase: Phase = ACTIVE;
  #heartbeat: NodeJS.Timeout | undefined;
  #deadlineTimer: NodeJS.Timeout | undefined;
  #pending: TaskOutcome[] = [];
  /** The latest unsent progress report per task: a handler reporting in a tight loop sends one per turn. */
  readonly #pendingProgress = new Map<string, ReportProgress>();
  #scheduled = false;
  #ended = false;
  #resolveEnd: (end: SessionEnd) => void = () => {};
  /** Set while closing: called when the dispatcher has closed its half. */
  #inboundClosed: (() => void) | undefined;
  /** The reason of the latest Drain the dispatcher sent. */
  #drainReason: DrainReason | undefined;

  constructor(runtime: Runtime, epoch: number) {
    this.#rt = runtime;
    this.#epoch = epoch;
  }

  /** Connects, says Hello, awaits Welcome, then serves the stream until it ends. */
  async run(stop: AbortSignal, hardStop: AbortSignal): Promise<SessionEnd> {
    if (stop.aborted) return { kind: "stopped" };
    this.#send({ case: "hello", value: this.#rt.hello() });
    const endpoint = this.#rt.endpoints.current();
    const iterator = endpoint.value
      .connect(this.#outbound, { signal: this.#rpcAbort.signal })
      [Symbol.asyncIterator]();
    const end = await this.#serve(iterator, endpoint, stop, hardStop);
    // A dispatcher that broke the stream or refused it: the next session
    // tries the next address (when there are several).
    if (end.kind === "broken") this.#rt.endpoints.failed(endpoint);
    // A drained session is over (outcomes reported, both halves closed): the
    // next one goes to the same address over a new connection, since a load
    // balancer places connections, not streams, and a new stream on this
    // connection would land on the same dispatcher replica again.
    if (end.kind === "drained") {
      const newConnection = this.#rt.endpoints.reopen(endpoint);
      return { kind: "drained", reason: this.#drainReason, newConnection };
    }
    return end;
  }

  async #serve(
    iterator: AsyncIterator<ConnectResponse>,
    endpoint: Endpoint<unknown>,
    stop: AbortSignal,
    hardStop: AbortSignal,
  ): Promise<SessionEnd> {
    const ended = new Promise<SessionEnd>((resolve) => {
      this.#resolveEnd = resolve;
    });

    let welcome: Welcome;
    try {
      const first = await race(iterator.next(), HANDSHAKE_TIMEOUT_MS, stop);
      if (first === "stopped") {
        this.#abandon();
        return { kind: "stopped" };
      }
      if (first === "timeout") {
        this.#abandon();
        const error = new ConveyorError(Code.DeadlineExceeded, `no Welcome within ${HANDSHAKE_TIMEOUT_MS} ms of Hello`);
        return { kind: "broken", error, welcomed: false };
      }
      if (first.done === true) {
        this.#abandon();
        return { kind: "broken", error: new ConveyorError(Code.Unavailable, "stream ended before Welcome"), welcomed: false };
      }
      if (first.value.message.case !== "welcome") {
        this.#abandon();
        const error = new ProtocolError(`expected Welcome as the first message, got ${first.value.message.case ?? "nothing"}`);
        return { kind: "broken", error, welcomed: false };
      }
      welcome = first.value.message.value;
    } catch (error) {
      this.#abandon();
      return { kind: "broken", error: ConveyorError.from(error, { service: "dispatch", address: endpoint.url }), welcomed: false };
    }

    const heartbeatMs = Math.max(
      MIN_HEARTBEAT_MS,
      this.#rt.heartbeatOverrideMs ?? durationToMs(welcome.heartbeatInterval) ?? DEFAULT_HEARTBEAT_MS,
    );
    this.#maxCredits = welcome.maxCredits > 0 ? welcome.maxCredits : DEFAULT_MAX_CREDITS;
    this.#rt.log.info("worker session established", {
      address: endpoint.address,
      session_id: welcome.sessionId,
      heartbeat_ms: heartbeatMs,
      epoch: this.#epoch,
    });
    if (welcome.maxFrameBytes > MAX_MESSAGE_BYTES) {
      this.#rt.log.error("the dispatcher may send worker frames larger than this worker receives: upgrade the Conveyor TypeScript SDK", {
        max_frame_bytes: welcome.maxFrameBytes,
        receive_limit: MAX_MESSAGE_BYTES,
      });
    }
    this.#rt.current = this;
    this.#heartbeat = setInterval(() => this.#send({ case: "heartbeat", value: create(HeartbeatSchema) }), heartbeatMs);

    const onStop = (): void => {
      this.#rt.log.info("draining before shutdown", { running: this.#running.size });
      this.#drain(true, this.#rt.gracePeriodMs);
    };
    const onHardStop = (): void => void this.#finish({ kind: "stopped" }, false);
    stop.addEventListener("abort", onStop, { once: true });
    hardStop.addEventListener("abort", onHardStop, { once: true });
    void this.#read(iterator);
    if (stop.aborted) onStop();
    this.#step();
    try {
      return await ended;
    } finally {
      stop.removeEventListener("abort", onStop);
      hardStop.removeEventListener("abort", onHardStop);
    }
  }

  /** Asks for a flush of finished outcomes and a credit grant, once per turn of the event loop. */
  schedule(): void {
    if (this.#scheduled || this.#ended) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      this.#step();
    });
  }

  async #read(iterator: AsyncIterator<ConnectResponse>): Promise<void> {
    try {
      for (;;) {
        const next = await iterator.next();
        if (next.done === true) break;
        if (this.#ended) continue; // closing: drain what the dispatcher still sends
        this.#handle(next.value);
        this.#step();
      }
      if (this.#inboundClosed !== undefined) return this.#inboundClosed();
      if (this.#ended) return;
      this.#streamEnded(new ConveyorError(Code.Unavailable, "dispatcher ended the stream"));
    } catch (error) {
      if (this.#inboundClosed !== undefined) return this.#inboundClosed();
      if (this.#ended) return;
      this.#streamEnded(ConveyorError.from(error));
    }
  }

  /** Handles one dispatcher message. */
  #handle(response: ConnectResponse): void {
    const message = response.message;
    switch (message.case) {
      case "assignments":
        for (const assignment of message.value.assignments) this.#start(assignment);
        break;
      case "cancelAssignment": {
        const { taskId, reason } = message.value;
        const running = this.#running.get(taskId);
        if (running !== undefined) {
          this.#rt.log.info("task cancelled by dispatcher", { task_id: taskId, reason });
          running.cancelled = true;
          running.controller.abort(new TaskCancelledError("cancelled", `cancelled by the dispatcher: ${reason || "no reason given"}`));
        }
        break;
      }
      case "drain": {
        const graceMs = durationToMs(message.value.grace) ?? this.#rt.gracePeriodMs;
        this.#drainReason = message.value.reason;
        this.#rt.log.info("dispatcher asked to drain", {
          grace_ms: graceMs,
          reason: drainReasonName(message.value.reason),
          running: this.#running.size,
        });
        this.#drain(false, graceMs);
        break;
      }
      case "outcomeRejected": {
        const { taskId, code, message: why } = message.value;
        this.#rt.log.warn("outcome rejected by dispatcher", { task_id: taskId, code: codeName(code as Code), message: why });
        break;
      }
      case "welcome":
        this.#rt.log.warn("ignoring a second Welcome");
        break;
      default:
        this.#rt.log.debug("ignoring a message of a kind this SDK does not know");
    }
  }

  /**
   * Starts the handler of one assignment, unless draining: then the task
   * stays leased until the stream closes, which puts it back in its queue.
   */
  #start(assignment: Assignment): void {
    if (this.#outstanding === 0) {
      this.#rt.log.warn("assignment beyond the credits granted", { task_id: assignment.taskId });
    }
    this.#outstanding = Math.max(0, this.#outstanding - 1);
    if (this.#phase.kind === "draining") {
      this.#rt.log.debug("not starting an assignment while draining", { task_id: assignment.taskId });
      return;
    }
    const { taskId, leaseToken } = assignment;
    const running: Running = { leaseToken, controller: new AbortController(), cancelled: false };
    // An earlier attempt of the same task may still run here after a cancel;
    // its outcome no longer matches a lease token and is dropped.
    this.#running.get(taskId)?.controller.abort(new TaskCancelledError("cancelled", "superseded by a newer attempt"));
    this.#running.set(taskId, running);
    this.#rt.inFlight += 1;
    this.#send({ case: "taskStarted", value: create(TaskStartedSchema, { taskId, leaseToken }) });
    const onProgress = (update: ProgressUpdate): void => this.#progress(taskId, running, update);
    const attempt = processAttempt(assignment, this.#rt.spanQueue, (onThrow) =>
      execute(this.#rt, assignment, running.controller, onProgress, onThrow),
    );
    void attempt.then((outcome) => {
      this.#rt.inFlight -= 1;
      this.#finished(taskId, running, outcome);
      // The slot is free: the session taking work may grant a credit.
      this.#rt.current?.schedule();
    });
  }

  /** Sends a handler's progress report, while its attempt is still this session's. */
  #progress(taskId: string, running: Running, update: ProgressUpdate): void {
    if (this.#ended || this.#running.get(taskId) !== running || running.cancelled) return;
    const progress = create(ProgressSchema, { state: update.state ?? "", percent: update.percent ?? 0 });
    if (update.meta !== undefined) progress.meta = toPayload(update.meta, `progress meta of task ${taskId}`);
    this.#pendingProgress.set(taskId, create(ReportProgressSchema, { taskId, leaseToken: running.leaseToken, progress }));
    this.schedule();
  }

  #finished(taskId: string, running: Running, outcome: TaskOutcome["outcome"]): void {
    if (this.#ended || this.#running.get(taskId) !== running) return;
    this.#running.delete(taskId);
    if (running.cancelled) {
      this.#rt.log.debug("dropping the outcome of a cancelled task", { task_id: taskId });
      return;
    }
    this.#pending.push(create(TaskOutcomeSchema, { taskId, leaseToken: running.leaseToken, outcome }));
  }

  /** Flushes outcomes, ends a finished drain, grants the credits free slots allow. */
  #step(): void {
    if (this.#ended) return;
    this.#flush();
    if (this.#phase.kind === "draining" && this.#running.size === 0) {
      void this.#finish(endedByDispatcher(this.#phase) ?? { kind: "drained" }, true);
      return;
    }
    const credits = creditsToGrant(
      this.#rt.concurrency,
      this.#rt.inFlight,
      this.#outstanding,
      this.#maxCredits,
      this.#phase.kind === "draining",
    );
    if (credits > 0) {
      this.#outstanding += credits;
      this.#send({ case: "grantCredits", value: create(GrantCreditsSchema, { credits }) });
    }
  }

  #flush(): void {
    // Progress first: a report made just before the handler returned must not follow its outcome.
    for (const report of this.#pendingProgress.values()) this.#send({ case: "reportProgress", value: report });
    this.#pendingProgress.clear();
    while (this.#pending.length > 0) {
      const outcomes = this.#pending.splice(0, MAX_OUTCOMES_PER_FRAME);
      this.#send({ case: "reportOutcomes", value: create(ReportOutcomesSchema, { outcomes }) });
    }
  }

  #drain(stopping: boolean, graceMs: number): void {
    if (this.#ended) return;
    this.#phase = drain(this.#phase, stopping, graceMs);
    clearTimeout(this.#deadlineTimer);
    if (this.#phase.kind === "draining") {
      this.#deadlineTimer = setTimeout(() => {
        this.#rt.log.warn("drain grace period over", { abandoned: this.#running.size });
        void this.#finish(endedByDispatcher(this.#phase) ?? { kind: "drained" }, true);
      }, Math.max(0, this.#phase.deadline - Date.now()));
    }
    this.#step();
  }

  /** The end of the session when the dispatcher closed or broke the stream. */
  #streamEnded(error: ConveyorError): void {
    const end = endedByDispatcher(this.#phase);
    void this.#finish(end ?? { kind: "broken", error, welcomed: true }, false);
  }

  /**
   * Ends the session once. A graceful end reports what is pending, closes our
   * half of the stream and waits (bounded) for the dispatcher to close its
   * half, so the last frames are delivered rather than reset. Whatever still
   * runs was leased through this stream and is abandoned with it.
   */
  async #finish(end: SessionEnd, graceful: boolean): Promise<void> {
    if (this.#ended) return;
    if (graceful) this.#flush();
    this.#ended = true;
    clearInterval(this.#heartbeat);
    clearTimeout(this.#deadlineTimer);
    if (this.#rt.current === this) this.#rt.current = undefined;
    const reason =
      end.kind === "broken"
        ? new TaskCancelledError("stream-lost", "the worker stream broke; the task will run again elsewhere")
        : new TaskCancelledError("drain", "the drain grace period is over");
    for (const running of this.#running.values()) running.controller.abort(reason);
    if (graceful) {
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve) => {
        this.#inboundClosed = resolve;
        timer = setTimeout(resolve, CLOSE_TIMEOUT_MS);
        this.#outbound.end();
      });
      clearTimeout(timer);
    }
    this.#abandon();
    this.#resolveEnd(end);
  }

  /** Closes both halves of the stream at once. */
  #abandon(): void {
    this.#outbound.end();
    this.#rpcAbort.abort();
  }

  #send(message: ConnectRequest["message"]): void {
    this.#outbound.push(create(ConnectRequestSchema, { message }));
  }
}

/** "rebalance", "shutdown", "unspecified" (an older dispatcher), or the number of a reason this SDK does not know. */
export function drainReasonName(reason: DrainReason | undefined): string {
  switch (reason) {
    case DrainReason.REBALANCE:
      return "rebalance";
    case DrainReason.SHUTDOWN:
      return "shutdown";
    case DrainReason.UNSPECIFIED:
    case undefined:
      return "unspecified";
    default:
      return `reason ${reason as number}`;
  }
}

/** Waits for `promise`, `ms` milliseconds or `signal`, whichever comes first. */
async function race<T>(promise: Promise<T>, ms: number, signal: AbortSignal): Promise<T | "timeout" | "stopped"> {
  if (signal.aborted) {
    promise.catch(() => {});
    return "stopped";
  }
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const others = new Promise<"timeout" | "stopped">((resolve) => {
    timer = setTimeout(() => resolve("timeout"), ms);
    onAbort = () => resolve("stopped");
    signal.addEventListener("abort", onAbort, { once: true });
  });
  try {
    const result = await Promise.race([promise, others]);
    if (result === "timeout" || result === "stopped") promise.catch(() => {});
    return result;
  } finally {
    clearTimeout(timer);
    if (onAbort !== undefined) signal.removeEventListener("abort", onAbort);
  }
}

