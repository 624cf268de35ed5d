// The worker: registers handlers, holds one DispatchService.Connect stream
// (reconnecting with backoff when it breaks, failing over between addresses),
// and drains on shutdown.

import { hostname as osHostname } from "node:os";
import { create } from "@bufbuild/protobuf";
import { Code, createClient } from "@connectrpc/connect";
import type { Client as RpcClient } from "@connectrpc/connect";
import {
  ConnectRequestSchema,
  DispatchService,
  GrantCreditsSchema,
  HeartbeatSchema,
  HelloSchema,
  ReportOutcomesSchema,
  ReportProgressSchema,
  TaskOutcomeSchema,
  TaskStartedSchema,
} from "./gen/conveyor/v1/dispatch_service_pb.js";
import type {
  Assignment,
  ConnectRequest,
  ConnectResponse,
  Hello,
  ReportProgress,
  TaskOutcome,
  Welcome,
} from "./gen/conveyor/v1/dispatch_service_pb.js";
import { ProgressSchema, TaskErrorSchema } from "./gen/conveyor/v1/task_pb.js";
import type { TaskError } from "./gen/conveyor/v1/task_pb.js";
import { TaskCancelledError, TaskContext, TaskFailure, describeFailure } from "./context.js";
import type { ProgressUpdate } from "./context.js";
import { ConveyorError, codeName } from "./errors.js";
import { Backoff, DEFAULT_MAX_BACKOFF_MS, DEFAULT_MIN_BACKOFF_MS } from "./internal/backoff.js";
import { AsyncQueue } from "./internal/queue.js";
import { ACTIVE, creditsToGrant, drain, endedByDispatcher } from "./internal/state.js";
import type { Phase, SessionEnd } from "./internal/state.js";
import { stderrLogger } from "./logger.js";
import type { Logger } from "./logger.js";
import { durationToMs, errorText, msToDuration, toPayload } from "./payload.js";
import { Endpoints } from "./transport.js";
import type { Addresses, ConnectionOptions, Endpoint } from "./transport.js";
import { SDK_VERSION } from "./version.js";

/** Default time running tasks get to finish once shutdown starts. */
export const DEFAULT_GRACE_PERIOD_MS = 30_000;

/**
 * Default concurrency: handlers run on Node's event loop, so a worker waiting
 * on I/O for ten tasks is as cheap as for one. CPU-bound handlers block the
 * loop whatever this is: run them in several processes (or worker threads)
 * with concurrency 1 each.
 */
export const DEFAULT_CONCURRENCY = 10;

/** Limits the dispatcher enforces on Hello, checked early for a clear error. */
const MAX_QUEUES = 64;
const MAX_TASK_NAMES = 1024;
const MAX_WORKER_ID_LENGTH = 200;
const MAX_CONCURRENCY = 1 << 20;
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

/**
 * A task handler: called once per attempt with the context and the decoded
 * positional arguments; returns (or resolves to) the JSON result. Throwing
 * reports the error's name, message and stack.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Handler<A extends unknown[] = any[]> = (ctx: TaskContext, ...args: A) => unknown;

export interface WorkerOptions extends ConnectionOptions {
  /** Queues to consume. Default ["default"]. */
  queues?: readonly string[];
  /** Tasks run at once (slots), 1 to 2^20. Default 10 (DEFAULT_CONCURRENCY). */
  concurrency?: number;
  /** The worker's id, 1 to 200 characters. Default "<hostname>-<pid>". */
  workerId?: string;
  /** Time running tasks get to finish on shutdown. Default 30 s. */
  gracePeriodMs?: number;
  /** Heartbeat this often instead of at the interval Welcome names. */
  heartbeatIntervalMs?: number;
  /** First reconnect delay (default 100 ms), doubling with jitter... */
  reconnectMinMs?: number;
  /** ...up to this (default 5 s). */
  reconnectMaxMs?: number;
  /** Where log lines go. Default: stderr, level from CONVEYOR_LOG_LEVEL or "info". */
  logger?: Logger;
}

export interface RunOptions {
  /** Aborting it starts a graceful drain; `run` resolves when it is done. */
  signal?: AbortSignal;
  /**
   * Drain on SIGTERM and SIGINT (a second signal stops at once). Default
   * true; the handlers are removed when `run` returns.
   */
  handleSignals?: boolean;
}

/** An error reconnecting cannot fix: the dispatcher broke the protocol. */
class ProtocolError extends ConveyorError {
  constructor(message: string) {
    super(Code.Internal, `protocol error: ${message}`);
    this.name = "ProtocolError";
  }
}

/** Errors that reconnecting would only repeat. */
function isFatal(error: Error): boolean {
  if (error instanceof ProtocolError) return true;
  if (!(error instanceof ConveyorError)) return false;
  return [Code.InvalidArgument, Code.Unauthenticated, Code.PermissionDenied, Code.Unimplemented].includes(error.code);
}

/** State shared by the worker's sessions: handlers outlive the stream that brought their task. */
interface Runtime {
  readonly endpoints: Endpoints<RpcClient<typeof DispatchService>>;
  readonly handlers: ReadonlyMap<string, Handler>;
  readonly log: Logger;
  readonly concurrency: number;
  readonly gracePeriodMs: number;
  readonly heartbeatOverrideMs: number | undefined;
  hello(): Hello;
  /** Handlers still running, of this session or an earlier one: each holds a slot. */
  inFlight: number;
  /** The session taking work, if any. */
  current: Session | undefined;
}

/**
 * A worker process's connection to Conveyor: register handlers, then `run`.
 *
 * ```ts
 * const worker = new Worker("http://127.0.0.1:50051", { concurrency: 4 });
 * worker.register("add", async (ctx, a: number, b: number) => a + b);
 * await worker.run(); // until SIGTERM/SIGINT, then drains
 * ```
 */
export class Worker {
  /** The id this worker introduces itself with. */
  readonly workerId: string;
  readonly queues: readonly string[];
  readonly concurrency: number;
  readonly hostname: string;
  /** The dispatcher addresses, in failover order. */
  readonly addresses: readonly string[];
  readonly #handlers = new Map<string, Handler>();
  readonly #options: WorkerOptions;
  readonly #addresses: Addresses;
  readonly #log: Logger;
  #running = false;

  /**
   * `addresses`: "http://127.0.0.1:50051", or several (comma-separated or an
   * array) to fail over between when a dispatcher goes away.
   */
  constructor(addresses: Addresses, options: WorkerOptions = {}) {
    this.#addresses = addresses;
    this.#options = options;
    this.#log = options.logger ?? stderrLogger();
    this.hostname = safeHostname();
    this.workerId = options.workerId ?? `${this.hostname}-${process.pid}`;
    this.queues = options.queues !== undefined && options.queues.length > 0 ? [...options.queues] : ["default"];
    this.concurrency = options.concurrency ?? DEFAULT_CONCURRENCY;
    const problem = !Number.isInteger(this.concurrency) || this.concurrency < 1 || this.concurrency > MAX_CONCURRENCY
      ? `concurrency must be an integer from 1 to ${MAX_CONCURRENCY}`
      : this.workerId.length === 0 || this.workerId.length > MAX_WORKER_ID_LENGTH
        ? `worker id must be 1 to ${MAX_WORKER_ID_LENGTH} characters`
        : this.queues.length > MAX_QUEUES
          ? `at most ${MAX_QUEUES} queues`
          : undefined;
    if (problem !== undefined) throw new RangeError(problem);
    // Fails early on a malformed address.
    this.addresses = new Endpoints(addresses, options, () => undefined).addresses;
  }

  /**
   * Registers `handler` for tasks named `name`, replacing any earlier one.
   * Returns the worker, for chaining.
   */
  register<A extends unknown[]>(name: string, handler: (ctx: TaskContext, ...args: A) => unknown): this {
    if (name.length === 0) throw new TypeError("task name must not be empty");
    if (typeof handler !== "function") throw new TypeError(`handler of "${name}" is not a function`);
    if (!this.#handlers.has(name) && this.#handlers.size >= MAX_TASK_NAMES) {
      throw new RangeError(`at most ${MAX_TASK_NAMES} task names`);
    }
    this.#handlers.set(name, handler as unknown as Handler);
    return this;
  }

  /** The registered task names, sorted. */
  get taskNames(): string[] {
    return [...this.#handlers.keys()].sort();
  }

  /**
   * Runs until `signal` aborts or SIGTERM/SIGINT arrives, then drains: no
   * new work, running tasks get the grace period to finish and report, then
   * the stream closes. Rejects only for failures that reconnecting cannot fix
   * (a refused Hello, a server that breaks the protocol).
   */
  async run(options: RunOptions = {}): Promise<void> {
    if (this.#handlers.size === 0) throw new Error("register at least one handler before run()");
    if (this.#running) throw new Error("this worker is already running");
    this.#running = true;
    const stop = new AbortController();
    const hardStop = new AbortController();
    const onAbort = (): void => stop.abort();
    const external = options.signal;
    external?.addEventListener("abort", onAbort, { once: true });
    if (external?.aborted === true) stop.abort();
    const onSignal = (signal: NodeJS.Signals): void => {
      if (!stop.signal.aborted) {
        this.#log.info("shutdown signal received, draining (signal again to exit at once)", { signal });
        stop.abort();
      } else if (!hardStop.signal.aborted) {
        this.#log.warn("second shutdown signal, stopping at once", { signal });
        hardStop.abort();
      }
    };
    const handleSignals = options.handleSignals ?? true;
    if (handleSignals) {
      process.on("SIGTERM", onSignal);
      process.on("SIGINT", onSignal);
    }
    const endpoints = new Endpoints(
      this.#addresses,
      {
        ...this.#options,
        // Pings find a dead connection when the dispatcher goes silent.
        http2: this.#options.http2 ?? { pingIntervalMs: 10_000, pingTimeoutMs: 10_000 },
      },
      (transport) => createClient(DispatchService, transport),
    );
    this.#log.info("worker starting", {
      addresses: endpoints.addresses.join(","),
      worker_id: this.workerId,
      queues: this.queues.join(","),
      tasks: this.taskNames.join(","),
      concurrency: this.concurrency,
    });
    const runtime: Runtime = {
      endpoints,
      handlers: this.#handlers,
      log: this.#log,
      concurrency: this.concurrency,
      gracePeriodMs: this.#options.gracePeriodMs ?? DEFAULT_GRACE_PERIOD_MS,
      heartbeatOverrideMs: this.#options.heartbeatIntervalMs,
      hello: () => this.#hello(),
      inFlight: 0,
      current: undefined,
    };
    try {
      await this.#serve(runtime, stop.signal, hardStop.signal);
    } finally {
      external?.removeEventListener("abort", onAbort);
      if (handleSignals) {
        process.off("SIGTERM", onSignal);
        process.off("SIGINT", onSignal);
      }
      endpoints.close();
      this.#running = false;
    }
  }

  #hello(): Hello {
    return create(HelloSchema, {
      workerId: this.workerId,
      queues: [...this.queues],
      taskNames: this.taskNames,
      concurrency: this.concurrency,
      language: "typescript",
      sdkVersion: SDK_VERSION,
      hostname: this.hostname,
    });
  }

  /** The reconnect loop: one session after another until stopped. */
  async #serve(runtime: Runtime, stop: AbortSignal, hardStop: AbortSignal): Promise<void> {
    const backoff = new Backoff(
      this.#options.reconnectMinMs ?? DEFAULT_MIN_BACKOFF_MS,
      this.#options.reconnectMaxMs ?? DEFAULT_MAX_BACKOFF_MS,
    );
    let epoch = 0;
    while (!stop.aborted) {
      epoch += 1;
      const end = await new Session(runtime, epoch).run(stop, hardStop);
      let delay: number;
      if (end.kind === "stopped") break;
      if (end.kind === "drained") {
        backoff.reset();
        delay = backoff.next();
        this.#log.info("session drained, reconnecting", { delay_ms: Math.round(delay) });
      } else {
        if (isFatal(end.error)) throw end.error;
        if (end.welcomed) backoff.reset();
        delay = backoff.next();
        const message = end.welcomed ? "worker stream lost, reconnecting" : "cannot open a worker session, retrying";
        this.#log.warn(message, { error: errorText(end.error), delay_ms: Math.round(delay) });
      }
      await sleep(delay, stop);
    }
  }
}

/** An assignment of a session whose handler has not finished. */
interface Running {
  readonly leaseToken: bigint;
  readonly controller: AbortController;
  /** Set by CancelAssignment: the outcome will be dropped. */
  cancelled: boolean;
}

/** One worker session: a Connect stream from Hello to its end. */
class Session {
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
      return { kind: "broken", error: ConveyorError.from(error), welcomed: false };
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
        this.#rt.log.info("dispatcher asked to drain", { grace_ms: graceMs, running: this.#running.size });
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
    void execute(this.#rt, assignment, running.controller, onProgress).then((outcome) => {
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

/** What running a handler needs: the worker's, or eager mode's. */
export interface ExecutionEnv {
  readonly handlers: ReadonlyMap<string, Handler>;
  readonly log: Logger;
}

/** Runs one attempt's handler to its outcome; never throws. Internal (eager mode uses it too). */
export async function execute(
  runtime: ExecutionEnv,
  assignment: Assignment,
  controller: AbortController,
  onProgress: (update: ProgressUpdate) => void,
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

/** Sleeps `ms`, or less when `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = (): void => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

function safeHostname(): string {
  try {
    return osHostname() || "localhost";
  } catch {
    return "localhost";
  }
}
