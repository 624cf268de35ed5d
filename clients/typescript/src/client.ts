// Client, the producer's side: submit tasks and workflows, then read, await,
// watch, cancel, replay or forget them; dead letters, schedules and queue
// pauses.

import { randomUUID } from "node:crypto";
import { toBinary } from "@bufbuild/protobuf";
import type { Duration } from "@bufbuild/protobuf/wkt";
import { Code, createClient } from "@connectrpc/connect";
import type { Client as RpcClient, Transport } from "@connectrpc/connect";
import { context } from "@opentelemetry/api";
import type { Context } from "@opentelemetry/api";
import { DispatchService } from "./gen/conveyor/v1/dispatch_service_pb.js";
import type { WorkerInfo } from "./gen/conveyor/v1/dispatch_service_pb.js";
import { ResultsService, WorkflowView } from "./gen/conveyor/v1/results_service_pb.js";
import { SchedulingService } from "./gen/conveyor/v1/scheduling_service_pb.js";
import type { Schedule, ScheduleRun } from "./gen/conveyor/v1/scheduling_service_pb.js";
import { SubmissionService } from "./gen/conveyor/v1/submission_service_pb.js";
import { TaskSpecSchema, TaskState } from "./gen/conveyor/v1/task_pb.js";
import type { Payload, Task, TaskSpec } from "./gen/conveyor/v1/task_pb.js";
import { WorkflowState } from "./gen/conveyor/v1/workflow_pb.js";
import type { Workflow } from "./gen/conveyor/v1/workflow_pb.js";
import { buildWorkflowSpec } from "./canvas.js";
import type { Canvas, WorkflowOptions } from "./canvas.js";
import { ConveyorError, TaskFailedError, TaskNotSucceededError, unsuccessfulTaskError } from "./errors.js";
import { Backoff } from "./internal/backoff.js";
import { callWithRetry, connectionLost, resolvePolicy, sleep, unavailable } from "./internal/retry.js";
import { publish, stamp, traceMetadata, waiting } from "./internal/tracing.js";
import { fromOptionalPayload, msToDuration } from "./payload.js";
import { buildSchedule } from "./schedules.js";
import type { ScheduleDefinition } from "./schedules.js";
import { DEFAULT_NAMESPACE, resolveNamespace } from "./namespace.js";
import { buildTaskSpec, isTerminal, taskResult } from "./spec.js";
import type { SubmitOptions, TaskRequest } from "./spec.js";
import {
  Endpoints,
  SERVICE_NAMES,
  checkServiceEndpoints,
  parseAddresses,
  resolveGeneralAddresses,
  resolveServiceAddresses,
  resolveTls,
} from "./transport.js";
import type { Addresses, ConnectionOptions, RetryPolicy, ServiceName } from "./transport.js";
import { WorkflowHandle, isWorkflowTerminal, workflowStateName } from "./workflow.js";

/** Most tasks one SubmitTasks call carries (the service's limit). */
export const MAX_TASKS_PER_BATCH = 1000;

/**
 * Most encoded bytes of tasks one SubmitTasks call of `submitMany` carries: a
 * larger batch is split (a server accepts messages of 64 MiB; one task holds
 * at most 4 MiB of argument payloads).
 */
export const MAX_BATCH_BYTES = 16 * 1024 * 1024;

/**
 * Cuts `specs`, in order, into runs of at most MAX_TASKS_PER_BATCH tasks and
 * MAX_BATCH_BYTES encoded bytes; a task larger than that travels alone.
 */
export function splitBatches(specs: readonly TaskSpec[]): TaskSpec[][] {
  const batches: TaskSpec[][] = [];
  let batch: TaskSpec[] = [];
  let bytes = 0;
  for (const spec of specs) {
    // The spec's own bytes plus its field tag and length prefix.
    const size = toBinary(TaskSpecSchema, spec).length + 6;
    if (batch.length > 0 && (batch.length >= MAX_TASKS_PER_BATCH || bytes + size > MAX_BATCH_BYTES)) {
      batches.push(batch);
      batch = [];
      bytes = 0;
    }
    batch.push(spec);
    bytes += size;
  }
  if (batch.length > 0) batches.push(batch);
  return batches;
}

/** How much longer than the requested wait the call's deadline is. */
const WAIT_DEADLINE_MARGIN_MS = 2000;
/** A WaitTask that timed out sooner than this after it started is not repeated. */
const MIN_USEFUL_WAIT_MS = 1000;

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

export interface ClientOptions extends ConnectionOptions {
  /**
   * Give every submitted task without an idempotency key a random one
   * (default true), so that a submission lost to a failover is retried
   * without running twice. `false` submits without a key; such submissions
   * are then not retried automatically.
   */
  autoIdempotencyKey?: boolean;
}

/** How much of a workflow a call returns. */
export interface WorkflowViewOptions {
  /**
   * "summary": state, counts and result, no nodes; "nodes": every node with
   * its state and outcome, without arguments; "full": with arguments too.
   * Default: "nodes" for getWorkflow and watchWorkflow, "summary" for
   * waitWorkflow.
   */
  view?: "summary" | "nodes" | "full";
}

/** What CancelWorkflow did. */
export interface CancelWorkflowResult {
  /** Nodes this call cancelled. */
  cancelled: number;
  /** The workflow's state after the call. */
  state: WorkflowState;
}

/** One page of dead letters. */
export interface DeadLetterPage {
  /** FAILED tasks, oldest failure first. */
  tasks: Task[];
  /** Pass to the next call to continue; empty on the last page. */
  nextPageToken: string;
}

/** What one connection serves: the generated client of each service. */
interface Services {
  submission: RpcClient<typeof SubmissionService>;
  results: RpcClient<typeof ResultsService>;
  scheduling: RpcClient<typeof SchedulingService>;
  dispatch: RpcClient<typeof DispatchService>;
}

/**
 * A producer's handle on Conveyor: submit tasks, then read, await, watch,
 * cancel, replay or forget them; list dead letters; manage schedules and
 * pause queues. Given several addresses ("http://a:50051,http://b:50051" or
 * an array), it fails over between them; calls that are safe to repeat
 * (reads, and submissions, which carry an idempotency key by default) are
 * retried on UNAVAILABLE with backoff, within `options.retry`'s bound.
 *
 * Each call goes to the address of the service that defines it: by default
 * every service is at `addresses` (else $CONVEYOR_ADDR, else
 * http://127.0.0.1:50051); `options.endpoints` and the CONVEYOR_<SERVICE>_ADDR
 * environment variables move single services elsewhere (see
 * `ConnectionOptions.endpoints`).
 */
export class Client {
  /**
   * The general addresses, in failover order: those given, else
   * $CONVEYOR_ADDR, else the default. Services with an address of their own
   * use that instead (see `endpoints`).
   */
  readonly addresses: readonly string[];
  /** The addresses each service's calls go to, in failover order. */
  readonly endpoints: Readonly<Record<ServiceName, readonly string[]>>;
  /** The connections of each service; services at the same addresses share them. */
  readonly #endpoints: Readonly<Record<ServiceName, Endpoints<Services>>>;
  /**
   * The namespace this client's calls act in: the `namespace` option, else
   * $CONVEYOR_NAMESPACE, else "default".
   */
  readonly namespace: string;
  /** The namespace as every request carries it ("" when none was given: the server's "default"). */
  readonly #namespace: string;
  readonly #retry: Required<RetryPolicy>;
  readonly #autoKey: boolean;

  /**
   * `addresses`: "http://127.0.0.1:50051", or several (comma-separated or an
   * array) to fail over between; omitted or empty, $CONVEYOR_ADDR, else
   * "http://127.0.0.1:50051". `options.endpoints` (and the
   * CONVEYOR_SUBMISSION_ADDR, CONVEYOR_RESULTS_ADDR, CONVEYOR_DISPATCH_ADDR
   * and CONVEYOR_SCHEDULING_ADDR environment variables) give single services
   * other addresses. `options.namespace` (else $CONVEYOR_NAMESPACE) is the
   * namespace every call acts in.
   */
  constructor(addresses?: Addresses, options: ClientOptions = {}) {
    this.#namespace = resolveNamespace(options.namespace);
    this.namespace = this.#namespace || DEFAULT_NAMESPACE;
    const build = (transport: Transport): Services => ({
      submission: createClient(SubmissionService, transport),
      results: createClient(ResultsService, transport),
      scheduling: createClient(SchedulingService, transport),
      dispatch: createClient(DispatchService, transport),
    });
    const perService = {} as Record<ServiceName, Endpoints<Services>>;
    if (options.transport !== undefined) {
      checkServiceEndpoints(options.endpoints);
      const only = new Endpoints(addresses ?? "", options, build);
      for (const service of SERVICE_NAMES) perService[service] = only;
      this.addresses = only.addresses;
    } else {
      const tls = resolveTls(options.tls);
      const parse = { tls: tls !== undefined };
      const resolved = resolveServiceAddresses(addresses, options.endpoints, process.env, parse);
      const shared = new Map<string, Endpoints<Services>>();
      for (const service of SERVICE_NAMES) {
        const urls = parseAddresses(resolved[service].addresses, parse).map((url) => url.href);
        const key = urls.join(",");
        let endpoints = shared.get(key);
        if (endpoints === undefined) {
          endpoints = new Endpoints(urls, options, build, tls);
          shared.set(key, endpoints);
        }
        perService[service] = endpoints;
      }
      this.addresses = parseAddresses(resolveGeneralAddresses(addresses, process.env, parse).addresses, parse).map((url) => url.host);
    }
    this.#endpoints = perService;
    this.endpoints = Object.freeze(
      Object.fromEntries(SERVICE_NAMES.map((service) => [service, perService[service].addresses])) as Record<ServiceName, readonly string[]>,
    );
    this.#retry = resolvePolicy(options.retry);
    this.#autoKey = options.autoIdempotencyKey ?? true;
  }

  /**
   * The generated submission client (of the current address), for calls
   * this class does not wrap. Their requests do not get this client's
   * namespace: set `namespace: client.namespace` in them.
   */
  get submissionService(): RpcClient<typeof SubmissionService> {
    return this.#endpoints.submission.current().value.submission;
  }

  /**
   * The generated results client (of the current address), for calls this
   * class does not wrap (e.g. `watchEvents`). Their requests do not get this
   * client's namespace: set `namespace: client.namespace` in them.
   */
  get resultsService(): RpcClient<typeof ResultsService> {
    return this.#endpoints.results.current().value.results;
  }

  /**
   * Runs one unary call of `service`, at that service's address, with
   * failover and, when `safe`, retries. The call carries the trace context
   * of `traceContext` (default: the active one).
   */
  #call<S extends ServiceName, T>(
    service: S,
    safe: boolean,
    options: CallOptions,
    call: (client: Services[S], opts: RpcCallOptions) => Promise<T>,
    timeoutMs?: number,
    traceContext?: Context,
  ): Promise<T> {
    const opts = callOptions(options, traceContext);
    if (timeoutMs !== undefined) opts.timeoutMs = timeoutMs;
    return callWithRetry(this.#endpoints[service], this.#retry, safe, (services) => call(services[service], opts), options.signal, service);
  }

  #spec(name: string, args: readonly unknown[], options: SubmitOptions): TaskSpec {
    const spec = buildTaskSpec(name, args, options);
    if (spec.idempotencyKey === "" && this.#autoKey) spec.idempotencyKey = `auto:${randomUUID()}`;
    return spec;
  }

  /**
   * Submits one task and returns its id (for a repeated idempotency key, the
   * id of the task first submitted with it). Traced as a `publish` span,
   * whose context the task carries unless `options.traceContext` is given.
   */
  async submit(
    name: string,
    args: readonly unknown[] = [],
    options: SubmitOptions & CallOptions = {},
  ): Promise<string> {
    const task = this.#spec(name, args, options);
    return publish([task], false, async (span, ctx) => {
      stamp(task, ctx);
      const safe = task.idempotencyKey !== "";
      const response = await this.#call("submission", safe, options, (s, o) => s.submitTask({ task, namespace: this.#namespace }, o), undefined, ctx);
      span.setAttribute("messaging.message.id", response.taskId);
      return response.taskId;
    });
  }

  /**
   * Submits many tasks and returns their ids in order. Every task is encoded
   * before anything is sent; they travel in SubmitTasks calls of at most
   * MAX_TASKS_PER_BATCH (1000) tasks and MAX_BATCH_BYTES (16 MiB) of encoded
   * tasks, whichever comes first. Each call is all-or-nothing; when a later
   * call fails the earlier ones stay accepted. Traced as one `publish` span,
   * whose context every task carries (unless given its own `traceContext`).
   */
  async submitMany(tasks: readonly TaskRequest[], options: CallOptions = {}): Promise<string[]> {
    const specs = tasks.map((task) => this.#spec(task.name, task.args ?? [], task));
    if (specs.length === 0) return [];
    return publish(specs, true, async (_span, ctx) => {
      for (const spec of specs) stamp(spec, ctx);
      const ids: string[] = [];
      for (const batch of splitBatches(specs)) {
        const safe = batch.every((spec) => spec.idempotencyKey !== "");
        const response = await this.#call("submission", safe, options, (s, o) => s.submitTasks({ tasks: batch, namespace: this.#namespace }, o), undefined, ctx);
        if (response.results.length !== batch.length) {
          throw new ConveyorError(
            Code.Internal,
            `submitted ${batch.length} tasks, got ${response.results.length} results; report this as a Conveyor bug`,
          );
        }
        ids.push(...response.results.map((result) => result.taskId));
      }
      return ids;
    });
  }

  /** The task's current state and, once finished, its outcome (and progress while it runs). */
  async get(id: string, options: CallOptions = {}): Promise<Task> {
    const response = await this.#call("results", true, options, (s, o) => s.getTask({ taskId: id, namespace: this.#namespace }, o));
    return requireTask(response.task, "GetTask");
  }

  /**
   * Waits for the task to reach a terminal state and returns it, whatever
   * that state is. When `timeoutMs` passes first, throws a
   * ConveyorTimeoutError (code DEADLINE_EXCEEDED). Waits longer than the
   * server's maximum are carried out as several calls. Traced as a `wait`
   * span.
   */
  wait(id: string, options: WaitOptions = {}): Promise<Task> {
    return waiting(id, (ctx) =>
      this.#waitLoop(options, async (timeout, callTimeout) => {
        const request = timeout === undefined ? { taskId: id, namespace: this.#namespace } : { taskId: id, timeout, namespace: this.#namespace };
        const response = await this.#call("results", true, options, (s, o) => s.waitTask(request, o), callTimeout, ctx);
        return requireTask(response.task, "WaitTask");
      }),
    );
  }

  /**
   * Runs a server-side wait: `call` gets the wait's timeout and the call's
   * deadline. A call that the server's cap on waits ended early is made
   * again while `options.timeoutMs` leaves time.
   */
  async #waitLoop<T>(
    options: WaitOptions,
    call: (timeout: Duration | undefined, callTimeoutMs: number | undefined) => Promise<T>,
  ): Promise<T> {
    const deadline = options.timeoutMs === undefined ? undefined : Date.now() + Math.max(0, options.timeoutMs);
    for (;;) {
      const started = Date.now();
      const remaining = deadline === undefined ? undefined : Math.max(0, deadline - started);
      const callTimeout = remaining === undefined ? undefined : remaining + WAIT_DEADLINE_MARGIN_MS;
      try {
        return await call(remaining === undefined ? undefined : msToDuration(remaining), callTimeout);
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
   * The task's current state, then every change (progress reports
   * included); ends after a terminal state. Break out of the loop (or abort
   * `signal`) to stop watching. When the connection is lost the watch is
   * opened again (on the next address), which repeats the current state.
   */
  watch(id: string, options: CallOptions = {}): AsyncGenerator<Task, void, undefined> {
    return this.#stream(
      "results",
      options,
      (results, opts) => results.watchTask({ taskId: id, namespace: this.#namespace }, opts),
      (update) => requireTask(update.task, "WatchTask"),
      (task) => isTerminal(task.state),
    );
  }

  /**
   * Reads a server stream of snapshots until `done` says one is the last,
   * opening it again (on the next address, after a backoff) when the
   * connection is lost.
   */
  async *#stream<S extends ServiceName, R, T>(
    service: S,
    options: CallOptions,
    open: (client: Services[S], opts: RpcCallOptions) => AsyncIterable<R>,
    pick: (response: R) => T,
    done: (value: T) => boolean,
  ): AsyncGenerator<T, void, undefined> {
    const traceContext = context.active();
    const backoff = new Backoff(this.#retry.initialBackoffMs, this.#retry.maxBackoffMs);
    let failures = 0;
    const endpoints = this.#endpoints[service];
    for (;;) {
      const endpoint = endpoints.current();
      try {
        for await (const response of open(endpoint.value[service], callOptions(options, traceContext))) {
          failures = 0;
          backoff.reset();
          const value = pick(response);
          yield value;
          if (done(value)) return;
        }
        return;
      } catch (thrown) {
        const failure = ConveyorError.from(thrown, { service, address: endpoint.url });
        const error = connectionLost(failure, options.signal);
        if (error === undefined) throw failure;
        endpoints.failed(endpoint);
        failures += 1;
        if (failures >= this.#retry.maxAttempts || options.signal?.aborted === true) {
          throw unavailable(error, endpoints.addresses, failures, true, endpoint.url);
        }
        await sleep(backoff.next(), options.signal);
      }
    }
  }

  /**
   * Cancels (revokes) a task: a queued or scheduled one never runs, a
   * running one is stopped on its worker (its handler's `ctx.signal`
   * aborts). Returns true when this call cancelled it, false when it had
   * already finished.
   */
  async cancel(id: string, options: CallOptions = {}): Promise<boolean> {
    const response = await this.#call("submission", false, options, (s, o) => s.cancelTask({ taskId: id, namespace: this.#namespace }, o));
    return response.cancelled;
  }

  /**
   * Queues a FAILED task (a dead letter) again under the same id, with its
   * retry count reset. FAILED_PRECONDITION for a task in another state.
   */
  async replay(id: string, options: CallOptions = {}): Promise<TaskState> {
    const response = await this.#call("submission", false, options, (s, o) => s.replayTask({ taskId: id, namespace: this.#namespace }, o));
    return response.state;
  }

  /** Deletes a finished task's record and result before its TTL; later reads are NOT_FOUND. */
  async forget(id: string, options: CallOptions = {}): Promise<void> {
    await this.#call("results", false, options, (s, o) => s.forgetTask({ taskId: id, namespace: this.#namespace }, o));
  }

  /** One page of dead letters (tasks that ended FAILED), oldest failure first. */
  async listDeadLetters(
    page: { pageSize?: number; pageToken?: string } = {},
    options: CallOptions = {},
  ): Promise<DeadLetterPage> {
    const request = { pageSize: page.pageSize ?? 0, pageToken: page.pageToken ?? "", namespace: this.#namespace };
    const response = await this.#call("results", true, options, (s, o) => s.listDeadLetters(request, o));
    return { tasks: response.tasks, nextPageToken: response.nextPageToken };
  }

  /** Every dead letter, page after page: `for await (const task of client.deadLetters()) ...`. */
  async *deadLetters(options: CallOptions & { pageSize?: number } = {}): AsyncGenerator<Task, void, undefined> {
    let pageToken = "";
    do {
      const page = await this.listDeadLetters({ pageSize: options.pageSize ?? 0, pageToken }, options);
      yield* page.tasks;
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
  }

  /**
   * Submits a workflow (a canvas: `sig`, `chain`, `group`, `chord`, with
   * `link` and `linkError` callbacks), compiled into a DAG of tasks and
   * stored in one atomic call, and returns its handle. `options` are the
   * defaults of every node's options (a node's own win), plus the
   * workflow's name and idempotency key (by default a random one, so the
   * call is retried safely, unless `autoIdempotencyKey` is false). An empty
   * chain or group throws before anything is sent. Traced as one `publish`
   * span whose context the nodes carry.
   *
   * ```ts
   * const handle = await client.submitWorkflow(chord(starmap("add", [[1, 1], [2, 2]]), sig("xsum")));
   * console.log(await handle.result()); // 6
   * ```
   */
  async submitWorkflow<T = unknown>(canvas: Canvas, options: WorkflowOptions & CallOptions = {}): Promise<WorkflowHandle<T>> {
    const workflow = buildWorkflowSpec(canvas, options);
    if (workflow.idempotencyKey === "" && this.#autoKey) workflow.idempotencyKey = `auto:${randomUUID()}`;
    const tasks = workflow.nodes.map((node) => node.task!);
    return publish(tasks, true, async (span, ctx) => {
      stamp(workflow, ctx);
      const safe = workflow.idempotencyKey !== "";
      const response = await this.#call("submission", safe, options, (s, o) => s.submitWorkflow({ workflow, namespace: this.#namespace }, o), undefined, ctx);
      if (response.taskIds.length !== workflow.nodes.length) {
        throw new ConveyorError(
          Code.Internal,
          `submitted a workflow of ${workflow.nodes.length} nodes, got ${response.taskIds.length} task ids; report this as a Conveyor bug`,
        );
      }
      span.setAttribute("conveyor.workflow.id", response.workflowId);
      return new WorkflowHandle<T>(this, response.workflowId, response.taskIds, workflow.outputs, {
        name: workflow.name,
        outputList: workflow.outputList,
        duplicate: response.duplicate,
      });
    });
  }

  /** The workflow now: state, counts, result and (by default) every node with its task (GetWorkflow). */
  async getWorkflow(id: string, options: CallOptions & WorkflowViewOptions = {}): Promise<Workflow> {
    const request = { workflowId: id, view: workflowView(options.view), namespace: this.#namespace };
    const response = await this.#call("results", true, options, (s, o) => s.getWorkflow(request, o));
    return requireWorkflow(response.workflow, "GetWorkflow");
  }

  /**
   * Waits until every node of the workflow has finished and returns it,
   * whatever its state (a summary, without nodes, by default). When
   * `timeoutMs` passes first, throws a ConveyorTimeoutError.
   */
  waitWorkflow(id: string, options: WaitOptions & WorkflowViewOptions = {}): Promise<Workflow> {
    return waiting(id, (ctx) =>
      this.#waitLoop(options, async (timeout, callTimeout) => {
        const request = { workflowId: id, view: workflowView(options.view, WorkflowView.SUMMARY), namespace: this.#namespace, ...(timeout === undefined ? {} : { timeout }) };
        const response = await this.#call("results", true, options, (s, o) => s.waitWorkflow(request, o), callTimeout, ctx);
        const workflow = requireWorkflow(response.workflow, "WaitWorkflow");
        if (!isWorkflowTerminal(workflow.state)) {
          throw new ConveyorError(
            Code.Internal,
            `WaitWorkflow returned workflow ${id} ${workflowStateName(workflow.state)}, not finished; report this as a Conveyor bug`,
          );
        }
        return workflow;
      }),
    );
  }

  /**
   * Waits for the workflow and returns its decoded result: the last task's
   * result for a chain or chord, the list of results for a group. A FAILED
   * workflow throws the TaskFailedError of the node that failed first
   * (`taskId`, its `type`, `message`, `traceback`; `workflowId`), a
   * CANCELLED one TaskNotSucceededError, a timeout ConveyorTimeoutError.
   */
  async workflowResult<T = unknown>(id: string, options: WaitOptions = {}): Promise<T> {
    const workflow = await this.waitWorkflow(id, { ...options, view: "summary" });
    if (workflow.state === WorkflowState.SUCCEEDED) {
      return fromOptionalPayload(workflow.result, `result of workflow ${id}`) as T;
    }
    if (workflow.state === WorkflowState.CANCELLED) throw new TaskNotSucceededError(id, TaskState.CANCELLED, id);
    throw await this.#workflowFailure(workflow, options);
  }

  /**
   * The error of a FAILED workflow: that of the node `failedTaskId` names
   * when it FAILED; when that node did not (it EXPIRED), or is not named,
   * that of a FAILED node: one whose `causeTaskId` is `failedTaskId` (its
   * dependent), else the first (a handler's failure first when none is
   * named), as the Go and Python SDKs do.
   */
  async #workflowFailure(workflow: Workflow, options: CallOptions): Promise<Error> {
    const failedId = workflow.failedTaskId;
    let named: Task | undefined;
    if (failedId !== "") {
      try {
        named = await this.get(failedId, options);
      } catch (error) {
        if (!(error instanceof ConveyorError) || error.code !== Code.NotFound) throw error;
      }
      if (named?.state === TaskState.FAILED) return unsuccessfulTaskError(named);
    }
    const nodes = (await this.getWorkflow(workflow.id, { ...options, view: "nodes" })).nodes;
    const failed = nodes.filter((node) => node.task?.state === TaskState.FAILED).map((node) => node.task!);
    const task =
      failedId === ""
        ? (failed.find((candidate) => candidate.error?.causeTaskId === "") ?? failed[0])
        : (failed.find((candidate) => candidate.error?.causeTaskId === failedId) ?? failed[0]);
    if (task !== undefined) return unsuccessfulTaskError(task);
    if (named !== undefined) return unsuccessfulTaskError(named);
    if (failedId === "") {
      return new TaskFailedError("", "", `workflow ${workflow.id} FAILED, but none of its nodes did`, "", false, { workflowId: workflow.id });
    }
    return new TaskFailedError(failedId, "", `workflow ${workflow.id} FAILED at task ${failedId}, whose record is gone`, "", false, {
      workflowId: workflow.id,
    });
  }

  /**
   * The workflow, then a snapshot after each node that finishes or becomes
   * ready; ends once the workflow has finished. Break out of the loop (or
   * abort `signal`) to stop watching; a lost connection is opened again.
   */
  watchWorkflow(id: string, options: CallOptions & WorkflowViewOptions = {}): AsyncGenerator<Workflow, void, undefined> {
    const request = { workflowId: id, view: workflowView(options.view), namespace: this.#namespace };
    return this.#stream(
      "results",
      options,
      (results, opts) => results.watchWorkflow(request, opts),
      (update) => requireWorkflow(update.workflow, "WatchWorkflow"),
      (workflow) => isWorkflowTerminal(workflow.state),
    );
  }

  /**
   * Cancels every unfinished node of the workflow at once: none starts
   * afterwards, running ones are stopped on their workers. Returns how many
   * nodes this call cancelled and the workflow's state.
   */
  async cancelWorkflow(id: string, options: CallOptions = {}): Promise<CancelWorkflowResult> {
    const response = await this.#call("submission", false, options, (s, o) => s.cancelWorkflow({ workflowId: id, namespace: this.#namespace }, o));
    return { cancelled: response.cancelled, state: response.state };
  }

  /** Stops handing out the queue's tasks (on every dispatcher) until resumed; submissions are still accepted. */
  async pauseQueue(queue: string, options: CallOptions = {}): Promise<void> {
    await this.#call("dispatch", true, options, (s, o) => s.pauseQueue({ queue, namespace: this.#namespace }, o));
  }

  /** Resumes a paused queue. */
  async resumeQueue(queue: string, options: CallOptions = {}): Promise<void> {
    await this.#call("dispatch", true, options, (s, o) => s.resumeQueue({ queue, namespace: this.#namespace }, o));
  }

  /** The worker sessions connected to the dispatcher this client talks to (the dispatch address). */
  async listWorkers(options: CallOptions = {}): Promise<WorkerInfo[]> {
    const response = await this.#call("dispatch", true, options, (s, o) => s.listWorkers({ namespace: this.#namespace }, o));
    return response.workers;
  }

  /** Creates a periodic schedule; ALREADY_EXISTS when its id is taken. */
  async createSchedule(definition: ScheduleDefinition, options: CallOptions = {}): Promise<Schedule> {
    const schedule = buildSchedule(definition);
    const response = await this.#call("scheduling", false, options, (s, o) => s.createSchedule({ schedule, namespace: this.#namespace }, o));
    return requireSchedule(response.schedule, "CreateSchedule");
  }

  /** A schedule, with its next and last run; NOT_FOUND for an unknown id. */
  async getSchedule(id: string, options: CallOptions = {}): Promise<Schedule> {
    const response = await this.#call("scheduling", true, options, (s, o) => s.getSchedule({ id, namespace: this.#namespace }, o));
    return requireSchedule(response.schedule, "GetSchedule");
  }

  /** Every schedule, by id. */
  async listSchedules(options: CallOptions = {}): Promise<Schedule[]> {
    const response = await this.#call("scheduling", true, options, (s, o) => s.listSchedules({ namespace: this.#namespace }, o));
    return response.schedules;
  }

  /** Replaces a schedule's task, rule and options; its next run is computed again from now. */
  async updateSchedule(definition: ScheduleDefinition, options: CallOptions = {}): Promise<Schedule> {
    const schedule = buildSchedule(definition);
    const response = await this.#call("scheduling", true, options, (s, o) => s.updateSchedule({ schedule, namespace: this.#namespace }, o));
    return requireSchedule(response.schedule, "UpdateSchedule");
  }

  /** Deletes a schedule and its run history; NOT_FOUND for an unknown id. */
  async deleteSchedule(id: string, options: CallOptions = {}): Promise<void> {
    await this.#call("scheduling", false, options, (s, o) => s.deleteSchedule({ id, namespace: this.#namespace }, o));
  }

  /** Stops a schedule from firing until resumed. */
  async pauseSchedule(id: string, options: CallOptions = {}): Promise<Schedule> {
    const response = await this.#call("scheduling", true, options, (s, o) => s.pauseSchedule({ id, namespace: this.#namespace }, o));
    return requireSchedule(response.schedule, "PauseSchedule");
  }

  /** Resumes a paused schedule from now (missed runs are not caught up). */
  async resumeSchedule(id: string, options: CallOptions = {}): Promise<Schedule> {
    const response = await this.#call("scheduling", true, options, (s, o) => s.resumeSchedule({ id, namespace: this.#namespace }, o));
    return requireSchedule(response.schedule, "ResumeSchedule");
  }

  /** Submits one run now, outside the rule, and returns it (its `taskId` among others). */
  async triggerSchedule(id: string, options: CallOptions = {}): Promise<ScheduleRun> {
    const response = await this.#call("scheduling", false, options, (s, o) => s.triggerSchedule({ id, namespace: this.#namespace }, o));
    if (response.run === undefined) throw new ConveyorError(Code.Internal, "TriggerSchedule response carries no run; report this as a Conveyor bug");
    return response.run;
  }

  /** The schedule's recent runs (the last 100), newest first. */
  async listScheduleRuns(id: string, options: CallOptions = {}): Promise<ScheduleRun[]> {
    const response = await this.#call("scheduling", true, options, (s, o) => s.listScheduleRuns({ id, namespace: this.#namespace }, o));
    return response.runs;
  }

  /** Closes the connections; calls made afterwards open new ones. */
  close(): void {
    for (const endpoints of new Set(Object.values(this.#endpoints))) endpoints.close();
  }
}

interface RpcCallOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
  headers?: Record<string, string>;
}

/** A call's options: `options.signal`, and the trace context of `traceContext` (default: the active one) as metadata. */
function callOptions(options: CallOptions, traceContext?: Context): RpcCallOptions {
  const opts: RpcCallOptions = options.signal === undefined ? {} : { signal: options.signal };
  const headers = traceMetadata(traceContext);
  if (headers !== undefined) opts.headers = headers;
  return opts;
}

function requireTask(task: Task | undefined, rpcName: string): Task {
  if (task === undefined) throw new ConveyorError(Code.Internal, `${rpcName} response carries no task; report this as a Conveyor bug`);
  return task;
}

function requireWorkflow(workflow: Workflow | undefined, rpcName: string): Workflow {
  if (workflow === undefined) throw new ConveyorError(Code.Internal, `${rpcName} response carries no workflow; report this as a Conveyor bug`);
  return workflow;
}

function workflowView(view: WorkflowViewOptions["view"], unset = WorkflowView.UNSPECIFIED): WorkflowView {
  switch (view) {
    case undefined:
      return unset;
    case "summary":
      return WorkflowView.SUMMARY;
    case "nodes":
      return WorkflowView.NODES;
    case "full":
      return WorkflowView.FULL;
    default:
      throw new RangeError(`unknown workflow view "${String(view)}": use "summary", "nodes" or "full"`);
  }
}

function requireSchedule(schedule: Schedule | undefined, rpcName: string): Schedule {
  if (schedule === undefined) {
    throw new ConveyorError(Code.Internal, `${rpcName} response carries no schedule; report this as a Conveyor bug`);
  }
  return schedule;
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

export { buildTaskSpec, isTerminal, taskResult };
export type { Payload, Task };
export type { ConcurrencyKey, RetryOptions, SubmitOptions, TaskRequest } from "./spec.js";
