// What eager mode needs to run a WorkflowSpec as the server does: the
// server's validation of the DAG (with its INVALID_ARGUMENT messages), an
// order to run the nodes in, how parents' results become a node's inputs,
// and how a workflow's options fill its nodes' unset ones.

import { clone, create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { PayloadSchema, TaskOptionsSchema, TaskState } from "../gen/conveyor/v1/task_pb.js";
import type { Payload, Task, TaskOptions } from "../gen/conveyor/v1/task_pb.js";
import { NodeInput } from "../gen/conveyor/v1/workflow_pb.js";
import type { WorkflowNode, WorkflowSpec } from "../gen/conveyor/v1/workflow_pb.js";
import { JSON_CONTENT_TYPE, payloadText } from "../payload.js";

/** Most nodes in one workflow (the server's limit). */
export const MAX_WORKFLOW_NODES = 20_000;
/** Most edges in one workflow (the server's limit). */
export const MAX_WORKFLOW_EDGES = 200_000;

function invalid(message: string): ConnectError {
  return new ConnectError(message, Code.InvalidArgument);
}

/**
 * Checks a workflow as SubmitWorkflow does and returns its nodes in an
 * order where every node comes after its parents. Throws INVALID_ARGUMENT
 * naming the offending field, RESOURCE_EXHAUSTED beyond the limits.
 */
export function validateWorkflow(spec: WorkflowSpec | undefined): number[] {
  if (spec === undefined || spec.nodes.length === 0) throw invalid("workflow.nodes: a workflow needs at least one node");
  const count = spec.nodes.length;
  if (count > MAX_WORKFLOW_NODES) {
    throw new ConnectError(`workflow.nodes: ${count} nodes, more than the limit of ${MAX_WORKFLOW_NODES}`, Code.ResourceExhausted);
  }
  const edges = spec.nodes.reduce((sum, node) => sum + node.parents.length, 0);
  if (edges > MAX_WORKFLOW_EDGES) {
    throw new ConnectError(`workflow.nodes: ${edges} edges, more than the limit of ${MAX_WORKFLOW_EDGES}`, Code.ResourceExhausted);
  }
  const children: number[][] = spec.nodes.map(() => []);
  spec.nodes.forEach((node, index) => {
    const field = `workflow.nodes[${index}]`;
    const name = node.task?.name ?? "";
    if (name.length === 0 || name.length > 200) throw invalid(`${field}.task.name: must be 1 to 200 characters`);
    if (node.task!.idempotencyKey !== "") {
      throw invalid(`${field}.task.idempotency_key: a node cannot have one; set workflow.idempotency_key`);
    }
    const seen = new Set<number>();
    node.parents.forEach((parent, position) => {
      if (parent >= count) throw invalid(`${field}.parents[${position}]: ${parent} is not a node index (the workflow has ${count} nodes)`);
      if (parent === index) throw invalid(`${field}.parents[${position}]: a node cannot depend on itself`);
      if (seen.has(parent)) throw invalid(`${field}.parents[${position}]: node ${parent} is listed twice`);
      seen.add(parent);
      children[parent]!.push(index);
    });
    if (node.input === NodeInput.ONE && node.parents.length !== 1) {
      throw invalid(`${field}.input: NODE_INPUT_ONE needs exactly one parent, the node has ${node.parents.length}`);
    }
  });
  // Kahn's algorithm, smallest index first, so a workflow whose parents come first runs in its own order.
  const waiting = spec.nodes.map((node) => node.parents.length);
  const ready = waiting.flatMap((parents, index) => (parents === 0 ? [index] : []));
  const order: number[] = [];
  while (ready.length > 0) {
    ready.sort((a, b) => a - b);
    const index = ready.shift()!;
    order.push(index);
    for (const child of children[index]!) {
      waiting[child]! -= 1;
      if (waiting[child] === 0) ready.push(child);
    }
  }
  if (order.length < count) {
    const stuck = waiting.findIndex((parents) => parents > 0);
    throw invalid(`workflow.nodes[${stuck}].parents: the nodes form a cycle`);
  }
  spec.outputs.forEach((output, position) => {
    if (output >= count) throw invalid(`workflow.outputs[${position}]: ${output} is not a node index`);
  });
  if (!spec.outputList && spec.outputs.length > 1) {
    throw invalid(`workflow.outputs: ${spec.outputs.length} outputs need output_list`);
  }
  return order;
}

/**
 * A node's options with the workflow's filling what it leaves unset (zero,
 * empty); headers merged, the node's winning.
 */
export function mergeOptions(node: TaskOptions | undefined, workflow: TaskOptions | undefined): TaskOptions | undefined {
  if (workflow === undefined) return node;
  if (node === undefined) return clone(TaskOptionsSchema, workflow);
  const merged = clone(TaskOptionsSchema, node);
  const target = merged as unknown as Record<string, unknown>;
  for (const [key, value] of Object.entries(workflow)) {
    if (key === "$typeName" || key === "headers") continue;
    if (isUnset(target[key])) target[key] = value;
  }
  merged.headers = { ...workflow.headers, ...node.headers };
  return merged;
}

function isUnset(value: unknown): boolean {
  return value === undefined || value === "" || value === 0 || value === false || (Array.isArray(value) && value.length === 0);
}

/** How a node takes its parents' results: UNSPECIFIED resolved by the number of parents. */
export function inputMode(node: WorkflowNode): NodeInput {
  if (node.input !== NodeInput.UNSPECIFIED) return node.input;
  if (node.parents.length === 0) return NodeInput.NONE;
  return node.parents.length === 1 ? NodeInput.ONE : NodeInput.LIST;
}

/** The JSON text of one entry of a LIST input or a list result: the result, or a stand-in. */
export function entryText(task: Task): string {
  if (task.state !== TaskState.SUCCEEDED) {
    return JSON.stringify({ error: { type: task.error?.type ?? "", message: task.error?.message ?? "", task_id: task.id } });
  }
  const result = task.result;
  if (result === undefined) return "null";
  const text = payloadText(result);
  if (text !== undefined) return text.trim() === "" ? "null" : text;
  return JSON.stringify({ content_type: result.contentType, base64: Buffer.from(result.data).toString("base64") });
}

/** The JSON array of the tasks' entries, in order, as a payload. */
export function listPayload(tasks: readonly Task[]): Payload {
  const text = `[${tasks.map(entryText).join(",")}]`;
  return create(PayloadSchema, { data: new TextEncoder().encode(text), contentType: JSON_CONTENT_TYPE });
}
