// Eager mode, Celery's `task_always_eager`: a Client whose tasks run
// in-process as they are submitted, with no server, through the same argument
// encoding, handler invocation, soft time limits, retries and result decoding
// as a real worker, so unit tests exercise handlers without Conveyor running.

import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createRouterTransport } from "@connectrpc/connect";
import { Client } from "./client.js";
import { AssignmentSchema } from "./gen/conveyor/v1/dispatch_service_pb.js";
import { ResultsService } from "./gen/conveyor/v1/results_service_pb.js";
import { SubmissionService } from "./gen/conveyor/v1/submission_service_pb.js";
import { ProgressSchema, TaskSchema, TaskState } from "./gen/conveyor/v1/task_pb.js";
import type { Task, TaskSpec } from "./gen/conveyor/v1/task_pb.js";
import type { TaskContext } from "./context.js";
import { silentLogger } from "./logger.js";
import type { Logger } from "./logger.js";
import { toPayload } from "./payload.js";
import { execute } from "./internal/execute.js";
import type { Handler } from "./worker.js";

/** The worker id eager tasks report. */
export const EAGER_WORKER_ID = "eager";

export interface EagerClientOptions {
  /** Where handler failures are logged. Default: nowhere. */
  logger?: Logger;
}

/**
 * A Client that runs each task in this process when it is submitted,
 * retrying at once while its policy allows (delays are skipped, as in
 * Celery's eager mode). `submit` resolves after the task has finished; get,
 * wait, result, watch, replay, forget and dead letters work on what it ran.
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
    const store = new EagerStore(handlers, options.logger ?? silentLogger);
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
      });
    });
    super("eager.invalid:1", { transport, retry: false, autoIdempotencyKey: false });
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

/** The tasks an EagerClient ran, by id, in submission order. */
class EagerStore {
  readonly #handlers: ReadonlyMap<string, Handler>;
  readonly #log: Logger;
  readonly #tasks = new Map<string, Task>();
  readonly #specs = new Map<string, TaskSpec>();
  readonly #keys = new Map<string, string>();

  constructor(handlers: ReadonlyMap<string, Handler>, log: Logger) {
    this.#handlers = handlers;
    this.#log = log;
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
