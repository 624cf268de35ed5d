// The worker: registers handlers, holds one DispatchService.Connect stream
// (reconnecting with backoff when it breaks, failing over between addresses,
// and on a new connection after the dispatcher drains it), and drains on
// shutdown. The stream itself is internal/session.ts.

import { hostname as osHostname } from "node:os";
import { create } from "@bufbuild/protobuf";
import { Code, createClient } from "@connectrpc/connect";
import { DispatchService, DrainReason, HelloSchema } from "./gen/conveyor/v1/dispatch_service_pb.js";
import type { Hello } from "./gen/conveyor/v1/dispatch_service_pb.js";
import type { TaskContext } from "./context.js";
import { ConveyorError } from "./errors.js";
import { Backoff, DEFAULT_MAX_BACKOFF_MS, DEFAULT_MIN_BACKOFF_MS } from "./internal/backoff.js";
import { ProtocolError, Session, drainReasonName } from "./internal/session.js";
import type { Runtime } from "./internal/session.js";
import { stderrLogger } from "./logger.js";
import type { Logger } from "./logger.js";
import { DEFAULT_NAMESPACE, resolveNamespace } from "./namespace.js";
import { errorText } from "./payload.js";
import { Endpoints, checkServiceEndpoints, parseAddresses, resolveServiceAddresses, resolveTls } from "./transport.js";
import type { Addresses, ConnectionOptions, ResolvedTls } from "./transport.js";
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

/** Errors that reconnecting would only repeat. */
function isFatal(error: Error): boolean {
  if (error instanceof ProtocolError) return true;
  if (!(error instanceof ConveyorError)) return false;
  return [Code.InvalidArgument, Code.Unauthenticated, Code.PermissionDenied, Code.Unimplemented].includes(error.code);
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
  /**
   * The namespace whose queues this worker consumes: the `namespace`
   * option, else $CONVEYOR_NAMESPACE, else "default".
   */
  readonly namespace: string;
  readonly concurrency: number;
  readonly hostname: string;
  /** The dispatcher addresses, in failover order. */
  readonly addresses: readonly string[];
  readonly #handlers = new Map<string, Handler>();
  readonly #options: WorkerOptions;
  /** The dispatch service's addresses, as resolved at construction. */
  readonly #addresses: Addresses;
  /** The TLS settings, files read at construction; undefined: none given. */
  readonly #tls: ResolvedTls | undefined;
  /** Every dispatch address is http:// (no custom transport). */
  readonly #plaintext: boolean;
  readonly #log: Logger;
  /** The namespace as Hello carries it ("" when none was given: the server's "default"). */
  readonly #namespace: string;
  #running = false;

  /**
   * `addresses`: "http://127.0.0.1:50051", or several (comma-separated or an
   * array) to fail over between when a dispatcher goes away; omitted or
   * empty, $CONVEYOR_ADDR, else "http://127.0.0.1:50051". A worker talks to
   * the dispatch service only: `options.endpoints.dispatch`, else
   * $CONVEYOR_DISPATCH_ADDR, overrides `addresses` (the other keys of
   * `endpoints` are accepted and unused). `options.namespace` (else
   * $CONVEYOR_NAMESPACE) is the namespace whose queues it consumes.
   */
  constructor(addresses?: Addresses, options: WorkerOptions = {}) {
    this.#namespace = resolveNamespace(options.namespace);
    this.namespace = this.#namespace || DEFAULT_NAMESPACE;
    if (options.transport !== undefined) {
      checkServiceEndpoints(options.endpoints);
      this.#addresses = addresses ?? "";
      this.#tls = undefined;
    } else {
      this.#tls = resolveTls(options.tls);
      this.#addresses = resolveServiceAddresses(addresses, options.endpoints, process.env, { tls: this.#tls !== undefined }).dispatch.addresses;
    }
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
    this.addresses = new Endpoints(this.#addresses, options, () => undefined, this.#tls).addresses;
    this.#plaintext =
      options.transport === undefined && parseAddresses(this.#addresses, { tls: this.#tls !== undefined }).every((url) => url.protocol === "http:");
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
      this.#tls,
    );
    this.#log.info("worker starting", {
      addresses: endpoints.addresses.join(","),
      worker_id: this.workerId,
      namespace: this.namespace,
      queues: this.queues.join(","),
      tasks: this.taskNames.join(","),
      concurrency: this.concurrency,
      ...(this.#tls === undefined ? {} : { tls: Object.values(this.#tls.files).join(", ") || "Node's roots" }),
    });
    const runtime: Runtime = {
      endpoints,
      handlers: this.#handlers,
      log: this.#log,
      concurrency: this.concurrency,
      gracePeriodMs: this.#options.gracePeriodMs ?? DEFAULT_GRACE_PERIOD_MS,
      heartbeatOverrideMs: this.#options.heartbeatIntervalMs,
      spanQueue: this.queues.length === 1 ? this.queues[0] : undefined,
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
      namespace: this.#namespace,
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
        // Promptly (the shortest backoff, jittered): the old session is over
        // and its connection closed, so the new one may reach another replica.
        backoff.reset();
        delay = backoff.next();
        const reason = drainReasonName(end.reason);
        const why = end.reason === undefined || end.reason === DrainReason.UNSPECIFIED ? "" : ` (${reason})`;
        const how = end.newConnection === false ? " through the transport given" : " on a new connection";
        this.#log.info(`session drained${why}, reconnecting${how}`, { reason, delay_ms: Math.round(delay) });
      } else {
        if (isFatal(end.error)) throw end.error;
        if (end.welcomed) backoff.reset();
        delay = backoff.next();
        const message = end.welcomed ? "worker stream lost, reconnecting" : "cannot open a worker session, retrying";
        // A TLS server closes a plaintext connection before any answer.
        const closed = end.error instanceof ConveyorError && [Code.Canceled, Code.Aborted].includes(end.error.code);
        const hint = !end.welcomed && this.#plaintext && closed
          ? { hint: "if the server serves TLS, use an https:// address (and the tls option or CONVEYOR_TLS_CA for a private CA)" }
          : {};
        this.#log.warn(message, { error: errorText(end.error), delay_ms: Math.round(delay), ...hint });
      }
      await sleep(delay, stop);
    }
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
