// Eager mode, Celery's `task_always_eager`: a Client whose tasks run
// in-process as they are submitted, with no server, through the same argument
// encoding, handler invocation, soft time limits, retries and result decoding
// as a real worker, so unit tests exercise handlers without Conveyor running.

import { randomUUID } from "node:crypto";
import { clone, create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createRouterTransport } from "@connectrpc/connect";
import { Client } from "./client.js";
import { AssignmentSchema } from "./gen/conveyor/v1/dispatch_service_pb.js";
import { ResultsService, WorkflowView } from "./gen/conveyor/v1/results_service_pb.js";
import { SubmissionService } from "./gen/conveyor/v1/submission_service_pb.js";
import { FailureReason, ProgressSchema, TaskErrorSchema, TaskSchema, TaskSpecSchema, TaskState } from "./gen/conveyor/v1/task_pb.js";
import type { Payload, Task, TaskSpec } from "./gen/conveyor/v1/task_pb.js";
import { NodeInput, NodeTrigger, WorkflowNodeStatusSchema, WorkflowSchema, WorkflowState } from "./gen/conveyor/v1/workflow_pb.js";
import type { Workflow, WorkflowSpec } from "./gen/conveyor/v1/workflow_pb.js";
import type { TaskContext } from "./context.js";
import { silentLogger } from "./logger.js";
import { DEFAULT_NAMESPACE, resolveNamespace } from "./namespace.js";
import type { Logger } from "./logger.js";
import { toPayload } from "./payload.js";
import { isTerminal } from "./spec.js";
import { inputMode, listPayload, mergeOptions, validateWorkflow } from "./internal/dag.js";
import { execute } from "./internal/execute.js";
import type { Handler } from "./worker.js";

/** The worker id eager tasks report. */
export const EAGER_WORKER_ID = "eager";

export interface EagerClientOptions {
  /** Where handler failures are logged. Default: nowhere. */
  logger?: Logger;
  /**
   * The namespace its tasks and workflows report, as a Client's `namespace`
   * option (default: $CONVEYOR_NAMESPACE, else "default"). An eager client
   * keeps one namespace: it sees only its own tasks.
   */
  namespace?: string;
}

/**
 * A Client that runs each task in this process when it is submitted,
 * retrying at once while its policy allows (delays are skipped, as in
 * Celery's eager mode). `submit` resolves after the task has finished; get,
 * wait, result, watch, replay, forget and dead letters work on what it ran.
 * `submitWorkflow` runs every node of a workflow, parents first, with the
 * server's semantics (inputs, chords, link and linkError callbacks,
 * dependency failures) and resolves once all have finished.
 * Schedules and queue pauses need a server (UNIMPLEMENTED here).
 *
 * ```ts
 * const client = new EagerClient().register("add", (ctx, a: number, b: number) => a + b);
 * const sum = await client.result(await client.submit("add", [2, 3])); // 5
 * ```
 */
export class EagerClient extends Client {
  readonly #handlers: Map<string, Handler>;

  constructor(options: EagerClientOptions = {}) {
    const handlers = new Map<string, Handler>();
    const namespace = resolveNamespace(options.namespace) || DEFAULT_NAMESPACE;
    const store = new EagerStore(handlers, options.logger ?? silentLogger, namespace);
    const transport = createRouterTransport((router) => {
      router.service(SubmissionService, {
        submitTask: async (request) => ({ taskId: await store.submit(request.task) }),
        submitTasks: async (request) => {
          const results = [];
          for (const task of request.tasks) results.push({ taskId: await store.submit(task) });
          return { results };
        },
        cancelTask: (request) => {
          const task = store.get(request.taskId);
          return { cancelled: false, state: task.state };
        },
        replayTask: async (request) => ({ state: await store.replay(request.taskId) }),
        submitWorkflow: async (request) => store.submitWorkflow(request.workflow),
        // Every node has finished by the time submitWorkflow returns: nothing is left to cancel.
        cancelWorkflow: (request) => ({ cancelled: 0, state: store.workflow(request.workflowId, WorkflowView.SUMMARY).state }),
      });
      router.service(ResultsService, {
        getTask: (request) => ({ task: store.get(request.taskId) }),
        waitTask: (request) => ({ task: store.get(request.taskId) }),
        async *watchTask(request) {
          yield { task: store.get(request.taskId) };
        },
        forgetTask: (request) => {
          store.forget(request.taskId);
          return {};
        },
        listDeadLetters: (request) => store.deadLetters(request.pageSize, request.pageToken),
        getWorkflow: (request) => ({ workflow: store.workflow(request.workflowId, request.view || WorkflowView.NODES) }),
        waitWorkflow: (request) => ({ workflow: store.workflow(request.workflowId, request.view || WorkflowView.SUMMARY) }),
        async *watchWorkflow(request) {
          yield { workflow: store.workflow(request.workflowId, request.view || WorkflowView.NODES) };
        },
      });
    });
    super("eager.invalid:1", { transport, retry: false, autoIdempotencyKey: false, namespace });
    this.#handlers = handlers;
  }

  /** Registers `handler` for tasks named `name`, as `Worker.register`. Returns this client. */
  register<A extends unknown[]>(name: string, handler: (ctx: TaskContext, ...args: A) => unknown): this {
    if (name.length === 0) throw new TypeError("task name must not be empty");
    if (typeof handler !== "function") throw new TypeError(`handler of "${name}" is not a function`);
    this.#handlers.set(name, handler as unknown as Handler);
    return this;
  }
}

/** A workflow an EagerClient ran. */
interface EagerWorkflow {
  readonly id: string;
  readonly spec: WorkflowSpec;
  readonly taskIds: readonly string[];
  readonly createdAt: Timestamp;
  finishedAt?: Timestamp;
  /** The node that failed first, "" when none did. */
  failedTaskId: string;
}

/** The tasks (and workflows) an EagerClient ran, by id, in submission order. */
class EagerStore {
  readonly #handlers: ReadonlyMap<string, Handler>;
  readonly #log: Logger;
  /** The namespace its tasks and workflows report. */
  readonly #namespace: string;
  readonly #tasks = new Map<string, Task>();
  readonly #specs = new Map<string, TaskSpec>();
  readonly #keys = new Map<string, string>();
  readonly #workflows = new Map<string, EagerWorkflow>();
  readonly #workflowKeys = new Map<string, string>();

  constructor(handlers: ReadonlyMap<string, Handler>, log: Logger, namespace: string) {
    this.#handlers = handlers;
    this.#log = log;
    this.#namespace = namespace;
  }

  async submit(spec: TaskSpec | undefined): Promise<string> {
    if (spec === undefined || spec.name === "") {
      throw new ConnectError("task.name: must be 1 to 200 characters", Code.InvalidArgument);
    }
    const known = spec.idempotencyKey === "" ? undefined : this.#keys.get(spec.idempotencyKey);
    if (known !== undefined) return known;
    const id = randomUUID();
    if (spec.idempotencyKey !== "") this.#keys.set(spec.idempotencyKey, id);
    const task = create(TaskSchema, {
      id,
      name: spec.name,
      args: spec.args,
      kwargs: spec.kwargs,
      queue: spec.options?.queue || "default",
      state: TaskState.QUEUED,
      createdAt: timestampNow(),
      namespace: this.#namespace,
    });
    if (spec.options !== undefined) task.options = spec.options;
    this.#tasks.set(id, task);
    this.#specs.set(id, spec);
    await this.#run(task, spec);
    return id;
  }

  async #run(task: Task, spec: TaskSpec): Promise<void> {
    const maxRetries = spec.options?.retry?.maxRetries ?? 0;
    for (;;) {
      task.attempt += 1;
      task.state = TaskState.RUNNING;
      task.workerId = EAGER_WORKER_ID;
      const assignment = create(AssignmentSchema, {
        taskId: task.id,
        name: task.name,
        args: spec.args,
        kwargs: spec.kwargs,
        attempt: task.attempt,
        leaseToken: BigInt(task.attempt),
        headers: spec.options?.headers ?? {},
        maxRetries,
        workflowId: task.workflowId,
      });
      if (spec.options?.softTimeLimit !== undefined) assignment.softTimeLimit = spec.options.softTimeLimit;
      if (spec.options?.hardTimeLimit !== undefined) assignment.hardTimeLimit = spec.options.hardTimeLimit;
      if (task.createdAt !== undefined) assignment.createdAt = task.createdAt;
      const outcome = await execute({ handlers: this.#handlers, log: this.#log }, assignment, new AbortController(), (update) => {
        const progress = create(ProgressSchema, { state: update.state ?? "", percent: update.percent ?? 0, reportedAt: timestampNow() });
        if (update.meta !== undefined) progress.meta = toPayload(update.meta, "progress meta");
        task.progress = progress;
      });
      task.updatedAt = timestampNow();
      if (outcome.case === "result") {
        task.state = TaskState.SUCCEEDED;
        task.result = outcome.value;
        delete task.error;
        break;
      }
      if (outcome.case !== "error") break;
      task.failures += 1;
      task.error = outcome.value;
      const retry = (outcome.value.retryable || outcome.value.retryAfter !== undefined) && task.failures <= maxRetries;
      if (!retry) {
        task.state = TaskState.FAILED;
        break;
      }
    }
    task.finishedAt = timestampNow();
  }

  /**
   * Runs a workflow: validates it as the server does, then runs its nodes,
   * each after its parents, with their inputs prepended to its arguments.
   */
  async submitWorkflow(spec: WorkflowSpec | undefined): Promise<{ workflowId: string; taskIds: string[]; duplicate: boolean }> {
    const order = validateWorkflow(spec);
    const workflowSpec = spec!;
    const known = workflowSpec.idempotencyKey === "" ? undefined : this.#workflowKeys.get(workflowSpec.idempotencyKey);
    if (known !== undefined) return { workflowId: known, taskIds: [...this.#workflows.get(known)!.taskIds], duplicate: true };
    const id = randomUUID();
    if (workflowSpec.idempotencyKey !== "") this.#workflowKeys.set(workflowSpec.idempotencyKey, id);
    const createdAt = timestampNow();
    const tasks = workflowSpec.nodes.map((node, index) => {
      const nodeSpec = node.task!;
      const options = mergeOptions(nodeSpec.options, workflowSpec.options);
      const task = create(TaskSchema, {
        id: randomUUID(),
        name: nodeSpec.name,
        args: nodeSpec.args,
        kwargs: nodeSpec.kwargs,
        queue: options?.queue || "default",
        state: node.parents.length === 0 ? TaskState.QUEUED : TaskState.WAITING,
        createdAt,
        workflowId: id,
        workflowNode: index,
        namespace: this.#namespace,
      });
      if (options !== undefined) task.options = options;
      this.#tasks.set(task.id, task);
      return task;
    });
    const workflow: EagerWorkflow = { id, spec: workflowSpec, taskIds: tasks.map((task) => task.id), createdAt, failedTaskId: "" };
    this.#workflows.set(id, workflow);
    for (const index of order) {
      await this.#runNode(workflow, tasks, index);
      if (workflow.failedTaskId === "" && tasks[index]!.state === TaskState.FAILED) workflow.failedTaskId = tasks[index]!.id;
    }
    workflow.finishedAt = timestampNow();
    return { workflowId: id, taskIds: [...workflow.taskIds], duplicate: false };
  }

  /** Runs (or settles without running) one node whose parents have all finished. */
  async #runNode(workflow: EagerWorkflow, tasks: readonly Task[], index: number): Promise<void> {
    const node = workflow.spec.nodes[index]!;
    const task = tasks[index]!;
    const parents = node.parents.map((parent) => tasks[parent]!);
    // Nodes finish in the order they run, which puts parents in the order they finished.
    const byFinish = [...node.parents].sort((a, b) => this.#finishOrder(tasks[a]!) - this.#finishOrder(tasks[b]!)).map((parent) => tasks[parent]!);
    const failed = byFinish.find((parent) => parent.state === TaskState.FAILED || parent.state === TaskState.EXPIRED);
    let inputs: Payload[];
    if (node.trigger === NodeTrigger.ON_FAILURE) {
      if (failed === undefined) return this.#settle(task, TaskState.CANCELLED);
      const error = { type: failed.error?.type ?? "", message: failed.error?.message ?? "", traceback: failed.error?.traceback ?? "" };
      inputs = [toPayload(failed.id), toPayload(error)];
    } else {
      if (node.trigger !== NodeTrigger.ALL_DONE) {
        if (failed !== undefined) {
          const error = create(TaskErrorSchema, {
            type: "DependencyFailed",
            message: `did not run: the task it depends on, ${failed.id}, ${failed.state === TaskState.EXPIRED ? "expired" : "failed"}`,
            reason: FailureReason.DEPENDENCY_FAILED,
            causeTaskId: failed.id,
          });
          return this.#settle(task, TaskState.FAILED, error);
        }
        if (parents.some((parent) => parent.state !== TaskState.SUCCEEDED)) return this.#settle(task, TaskState.CANCELLED);
      }
      const mode = inputMode(node);
      inputs = mode === NodeInput.ONE ? [parents[0]!.result ?? toPayload(null)] : mode === NodeInput.LIST ? [listPayload(parents)] : [];
    }
    const spec = clone(TaskSpecSchema, node.task!);
    spec.args = [...inputs, ...spec.args];
    if (task.options !== undefined) spec.options = task.options;
    else delete spec.options;
    task.args = spec.args;
    task.state = TaskState.QUEUED;
    this.#specs.set(task.id, spec);
    await this.#run(task, spec);
    this.#finished.set(task.id, this.#finished.size);
  }

  readonly #finished = new Map<string, number>();

  #finishOrder(task: Task): number {
    return this.#finished.get(task.id) ?? -1;
  }

  /** Ends a node without running it. */
  #settle(task: Task, state: TaskState, error?: Task["error"]): void {
    task.state = state;
    if (error !== undefined) task.error = error;
    task.updatedAt = timestampNow();
    task.finishedAt = task.updatedAt;
    this.#finished.set(task.id, this.#finished.size);
  }

  /** A workflow as the results service reports it, in `view`. */
  workflow(id: string, view: WorkflowView): Workflow {
    const workflow = this.#workflows.get(id);
    if (workflow === undefined) throw new ConnectError(`workflow ${id} not found: this eager client did not run it`, Code.NotFound);
    const tasks = workflow.taskIds.map((taskId) => this.#tasks.get(taskId));
    const stateCounts = new Array<number>(TaskState.WAITING + 1).fill(0);
    for (const task of tasks) if (task !== undefined) stateCounts[task.state] = (stateCounts[task.state] ?? 0) + 1;
    const running = tasks.some((task) => task !== undefined && !isTerminal(task.state));
    const state = running
      ? WorkflowState.RUNNING
      : workflow.failedTaskId !== ""
        ? WorkflowState.FAILED
        : WorkflowState.SUCCEEDED;
    const message = create(WorkflowSchema, {
      id,
      name: workflow.spec.name,
      state,
      stateCounts,
      nodeCount: workflow.taskIds.length,
      outputTaskIds: workflow.spec.outputs.map((output) => workflow.taskIds[output]!),
      createdAt: workflow.createdAt,
      namespace: this.#namespace,
      failedTaskId: workflow.failedTaskId,
    });
    if (workflow.finishedAt !== undefined) message.finishedAt = workflow.finishedAt;
    if (state === WorkflowState.SUCCEEDED && workflow.spec.outputs.length > 0) {
      const outputs = workflow.spec.outputs.map((output) => tasks[output]!);
      message.result = workflow.spec.outputList ? listPayload(outputs) : outputs[0]!.result ?? toPayload(null);
    }
    if (view !== WorkflowView.SUMMARY) {
      message.nodes = workflow.spec.nodes.map((node, index) => {
        const task = clone(TaskSchema, tasks[index] ?? create(TaskSchema, { id: workflow.taskIds[index]! }));
        if (view !== WorkflowView.FULL) {
          task.args = [];
          task.kwargs = {};
        }
        return create(WorkflowNodeStatusSchema, { index, task, parents: node.parents, input: node.input, trigger: node.trigger, label: node.label });
      });
    }
    return message;
  }

  get(id: string): Task {
    const task = this.#tasks.get(id);
    if (task === undefined) throw new ConnectError(`task ${id} not found: this eager client did not run it (or forgot it)`, Code.NotFound);
    return task;
  }

  async replay(id: string): Promise<TaskState> {
    const task = this.get(id);
    if (task.state !== TaskState.FAILED) {
      throw new ConnectError(`task ${id} is ${TaskState[task.state]}: only a FAILED task can be replayed`, Code.FailedPrecondition);
    }
    task.failures = 0;
    delete task.error;
    delete task.finishedAt;
    await this.#run(task, this.#specs.get(id)!);
    return task.state;
  }

  forget(id: string): void {
    this.get(id);
    this.#tasks.delete(id);
    this.#specs.delete(id);
  }

  deadLetters(pageSize: number, pageToken: string): { tasks: Task[]; nextPageToken: string } {
    const failed = [...this.#tasks.values()].filter((task) => task.state === TaskState.FAILED);
    const start = pageToken === "" ? 0 : Number(pageToken);
    const size = pageSize === 0 ? 100 : pageSize;
    const tasks = failed.slice(start, start + size);
    return { tasks, nextPageToken: start + size < failed.length ? String(start + size) : "" };
  }
}
