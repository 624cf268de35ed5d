// Handles on submitted work: TaskHandle for one task (a workflow's node),
// WorkflowHandle for a workflow, what `Client.submitWorkflow` returns.

import type { CallOptions, CancelWorkflowResult, Client, WaitOptions, WorkflowViewOptions } from "./client.js";
import type { Task } from "./gen/conveyor/v1/task_pb.js";
import { WorkflowState } from "./gen/conveyor/v1/workflow_pb.js";
import type { Workflow } from "./gen/conveyor/v1/workflow_pb.js";

/** True for SUCCEEDED, FAILED and CANCELLED. */
export function isWorkflowTerminal(state: WorkflowState): boolean {
  return state === WorkflowState.SUCCEEDED || state === WorkflowState.FAILED || state === WorkflowState.CANCELLED;
}

/** "WORKFLOW_STATE_FAILED" -> "FAILED". */
export function workflowStateName(state: WorkflowState): string {
  return WorkflowState[state] ?? `UNKNOWN(${state})`;
}

/** One task, by id: the client's task calls bound to it (Celery's AsyncResult). */
export class TaskHandle<T = unknown> {
  readonly client: Client;
  /** The task id. */
  readonly id: string;

  constructor(client: Client, id: string) {
    this.client = client;
    this.id = id;
  }

  /** The task's current state and outcome (`client.get`). */
  get(options: CallOptions = {}): Promise<Task> {
    return this.client.get(this.id, options);
  }

  /** Waits for a terminal state and returns the task (`client.wait`). */
  wait(options: WaitOptions = {}): Promise<Task> {
    return this.client.wait(this.id, options);
  }

  /** Waits and returns the decoded result, or throws its failure (`client.result`). */
  result(options: WaitOptions = {}): Promise<T> {
    return this.client.result<T>(this.id, options);
  }

  /** The task's state, then every change, until it ends (`client.watch`). */
  watch(options: CallOptions = {}): AsyncGenerator<Task, void, undefined> {
    return this.client.watch(this.id, options);
  }

  /** Cancels the task (`client.cancel`); true when this call cancelled it. */
  cancel(options: CallOptions = {}): Promise<boolean> {
    return this.client.cancel(this.id, options);
  }

  toString(): string {
    return this.id;
  }
}

/**
 * A submitted workflow: its id, every node's task id, a TaskHandle per
 * output (the nodes whose results are the workflow's), and the client's
 * workflow calls bound to it.
 *
 * ```ts
 * const handle = await client.submitWorkflow(chain(sig("add", [2, 2]), sig("mul", [10])));
 * console.log(await handle.result({ timeoutMs: 10_000 })); // 40
 * ```
 */
export class WorkflowHandle<T = unknown> {
  readonly client: Client;
  /** The workflow id (a UUIDv7). */
  readonly id: string;
  /** Its display name, as submitted. */
  readonly name: string;
  /** The task id of every node, in the order of the WorkflowSpec's nodes. */
  readonly taskIds: readonly string[];
  /** The output nodes (the top element's exits), in order: a chain's last task, a group's tasks. */
  readonly outputs: readonly TaskHandle[];
  /** Whether the result is the list of the outputs' results (a group) rather than the one output's. */
  readonly outputList: boolean;
  /** True when an earlier workflow with the same idempotency key was returned (its nodes' ids are then these). */
  readonly duplicate: boolean;

  constructor(
    client: Client,
    id: string,
    taskIds: readonly string[],
    outputs: readonly number[],
    options: { name?: string; outputList?: boolean; duplicate?: boolean } = {},
  ) {
    this.client = client;
    this.id = id;
    this.name = options.name ?? "";
    this.taskIds = [...taskIds];
    this.outputs = outputs.map((index) => {
      const taskId = taskIds[index];
      if (taskId === undefined) throw new RangeError(`output node ${index} is not among the workflow's ${taskIds.length} nodes`);
      return new TaskHandle(client, taskId);
    });
    this.outputList = options.outputList ?? outputs.length !== 1;
    this.duplicate = options.duplicate ?? false;
  }

  /** The handle of node `index` (in the WorkflowSpec's order). */
  node<R = unknown>(index: number): TaskHandle<R> {
    const taskId = this.taskIds[index];
    if (taskId === undefined) throw new RangeError(`the workflow has ${this.taskIds.length} nodes, not a node ${index}`);
    return new TaskHandle<R>(this.client, taskId);
  }

  /** The workflow now, every node's state and outcome included by default (GetWorkflow). */
  workflow(options: WorkflowViewOptions = {}): Promise<Workflow> {
    return this.client.getWorkflow(this.id, options);
  }

  /** Waits until every node has finished and returns the workflow, whatever its state (WaitWorkflow). */
  wait(options: WaitOptions & WorkflowViewOptions = {}): Promise<Workflow> {
    return this.client.waitWorkflow(this.id, options);
  }

  /**
   * Waits and returns the decoded result. A FAILED workflow throws the
   * TaskFailedError of the node that failed first; a CANCELLED one
   * TaskNotSucceededError; a timeout ConveyorTimeoutError.
   */
  result(options: WaitOptions = {}): Promise<T> {
    return this.client.workflowResult<T>(this.id, options);
  }

  /** The workflow, then a snapshot after each change, until it has finished (WatchWorkflow). */
  watch(options: CallOptions & WorkflowViewOptions = {}): AsyncGenerator<Workflow, void, undefined> {
    return this.client.watchWorkflow(this.id, options);
  }

  /** Cancels every unfinished node (CancelWorkflow). */
  cancel(options: CallOptions = {}): Promise<CancelWorkflowResult> {
    return this.client.cancelWorkflow(this.id, options);
  }

  toString(): string {
    return this.id;
  }
}
