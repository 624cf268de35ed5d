// Workflows against a real `conveyor dev` with a real TypeScript worker:
// chains, groups (ordered results), chords, nesting, link and linkError,
// dependency failures, cancel, watch, views, idempotency, validation; and
// eager mode giving the same results and node states as the server.

import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { TaskSpecSchema } from "../src/gen/conveyor/v1/task_pb.js";
import { WorkflowNodeSchema, WorkflowSpecSchema } from "../src/gen/conveyor/v1/workflow_pb.js";
import {
  Client,
  Code,
  ConveyorError,
  ConveyorTimeoutError,
  EagerClient,
  FailureReason,
  NodeInput,
  TaskFailedError,
  TaskFailure,
  TaskNotSucceededError,
  TaskState,
  WorkflowState,
  chain,
  chord,
  fromPayload,
  group,
  si,
  sig,
  starmap,
} from "../src/index.js";
import type { Canvas, TaskContext, Workflow } from "../src/index.js";
import { runWorker, startServer, uniqueQueue, waitFor } from "../testkit/helpers.js";
import type { RunningWorker, Server } from "../testkit/helpers.js";

let server: Server;
let client: Client;

before(async () => {
  server = await startServer();
  client = new Client(server.addr);
});

after(async () => {
  client?.close();
  await server?.stop();
});

/** What the handlers saw: name, arguments, workflow id. */
type Call = { name: string; args: unknown[]; workflowId: string | undefined };

/** Where handlers are registered: a Worker or an EagerClient. */
interface Registry {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  register(name: string, handler: (ctx: TaskContext, ...args: any[]) => unknown): unknown;
}

/** The test tasks, on a worker or an eager client. */
function registerAll(target: Registry, calls: Call[]): void {
  const record = (ctx: TaskContext): void => {
    calls.push({ name: ctx.name, args: [...ctx.args], workflowId: ctx.workflowId });
  };
  target.register("add", (ctx, a: number, b: number) => (record(ctx), a + b));
  target.register("mul", (ctx, a: number, b: number) => (record(ctx), a * b));
  target.register("xsum", (ctx, values: number[]) => (record(ctx), values.reduce((sum, value) => sum + value, 0)));
  target.register("echo", (ctx, ...args: unknown[]) => (record(ctx), args));
  target.register("slow", async (ctx, ms: number, value: unknown) => {
    record(ctx);
    await sleep(ms);
    return value;
  });
  target.register("fail", (ctx, ...args: unknown[]) => {
    record(ctx);
    throw new TaskFailure("ValueError", String(args.at(-1)), { retryable: false });
  });
  target.register("block", async (ctx) => {
    record(ctx);
    await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve, { once: true }));
    ctx.throwIfCancelled();
  });
}

/** `value` with task ids replaced by "ID" and tracebacks (which name files and lines) left out. */
function comparable(value: unknown): unknown {
  if (typeof value === "string") return /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(value) ? "ID" : value;
  if (Array.isArray(value)) return value.map(comparable);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).filter(([key]) => key !== "traceback").map(([key, entry]) => [key, comparable(entry)]));
  }
  return value;
}

/** A worker on a fresh queue with the test tasks, and the calls it saw. */
function startWorker(): { queue: string; worker: RunningWorker; calls: Call[] } {
  const queue = uniqueQueue("wf");
  const calls: Call[] = [];
  const worker = runWorker(server.addr, { queues: [queue], concurrency: 8 }, (w) => registerAll(w, calls));
  return { queue, worker, calls };
}

/** The nodes' task states, by name, e.g. "fail FAILED". */
function nodeStates(workflow: Workflow): string[] {
  return workflow.nodes.map((node) => `${node.task!.name} ${TaskState[node.task!.state]}`);
}

describe("workflows", () => {
  test("parity_workflows: chain | group | chord callback, results in order", async () => {
    const { queue, worker } = startWorker();
    try {
      const handle = await client.submitWorkflow<number>(chain(sig("add", [1, 2]), group(sig("add", [10]), sig("add", [20])), sig("xsum")), { queue });
      assert.equal(await handle.result({ timeoutMs: 20_000 }), 36);
      const workflow = await handle.workflow();
      assert.equal(workflow.nodes.length, 4);
      assert.deepEqual(workflow.nodes[3]!.parents, [1, 2]);
    } finally {
      await worker.stop();
    }
  });

  test("a chain passes each result on; handlers see the workflow id; nodes carry it", async () => {
    const { queue, worker, calls } = startWorker();
    try {
      const handle = await client.submitWorkflow<number>(chain(sig("add", [2, 2]), sig("add", [4]), sig("mul", [10])), { queue });
      assert.equal(await handle.result({ timeoutMs: 20_000 }), 80);
      assert.deepEqual(calls.map((call) => call.args), [[2, 2], [4, 4], [8, 10]]);
      assert.ok(calls.every((call) => call.workflowId === handle.id), JSON.stringify(calls));
      assert.equal(handle.taskIds.length, 3);
      assert.equal(await handle.outputs[0]!.result({ timeoutMs: 5000 }), 80);
      const last = await client.get(handle.taskIds[2]!);
      assert.equal(last.workflowId, handle.id);
      assert.equal(last.workflowNode, 2);
      assert.equal(last.queue, queue, "the workflow's options are every node's defaults");
      const workflow = await handle.wait({ timeoutMs: 5000 });
      assert.equal(workflow.state, WorkflowState.SUCCEEDED);
      assert.equal(workflow.name, "chain(add x2, mul)");
      assert.deepEqual(workflow.outputTaskIds, [handle.taskIds[2]]);
      assert.equal(fromPayload(workflow.result!), 80);
    } finally {
      await worker.stop();
    }
  });

  test("a group's result lists its tasks' results in declaration order, whatever order they finish in", async () => {
    const { queue, worker } = startWorker();
    try {
      const handle = await client.submitWorkflow(
        group(sig("slow", [600, "first"]), sig("slow", [300, "second"]), sig("slow", [0, "third"]), sig("add", [1, 1])),
        { queue },
      );
      assert.deepEqual(await handle.result({ timeoutMs: 20_000 }), ["first", "second", "third", 2]);
      assert.equal(handle.outputs.length, 4);
      assert.equal(handle.outputList, true);
      const finished = await Promise.all(handle.outputs.map((output) => output.wait({ timeoutMs: 5000 })));
      assert.ok(finished[2]!.finishedAt!.seconds * 1000n + BigInt(Math.floor(finished[2]!.finishedAt!.nanos / 1e6)) <=
        finished[0]!.finishedAt!.seconds * 1000n + BigInt(Math.floor(finished[0]!.finishedAt!.nanos / 1e6)), "the third finished first");
    } finally {
      await worker.stop();
    }
  });

  test("a chord's body gets the header's results as one ordered list", async () => {
    const { queue, worker, calls } = startWorker();
    try {
      const summed = await client.submitWorkflow(chord(starmap("add", [[1, 1], [2, 2], [3, 3]]), sig("xsum")), { queue });
      assert.equal(await summed.result({ timeoutMs: 20_000 }), 12);
      const ordered = await client.submitWorkflow(chord([sig("slow", [400, "a"]), sig("slow", [0, "b"])], sig("echo", ["tail"])), { queue });
      assert.deepEqual(await ordered.result({ timeoutMs: 20_000 }), [["a", "b"], "tail"]);
      const one = await client.submitWorkflow(chord([sig("add", [5, 5])], sig("echo")), { queue });
      assert.deepEqual(await one.result({ timeoutMs: 20_000 }), [[10]], "one header task still gives a list");
      assert.ok(calls.some((call) => call.name === "xsum" && JSON.stringify(call.args) === "[[2,4,6]]"));
    } finally {
      await worker.stop();
    }
  });

  test("nesting: a chord inside a chain, chains inside a group, chords of chords", async () => {
    const { queue, worker } = startWorker();
    try {
      const inChain = await client.submitWorkflow(
        chain(sig("add", [1, 1]), chord([sig("mul", [10]), sig("mul", [100])], sig("xsum")), group(si("echo", ["x"]), sig("echo"))),
        { queue },
      );
      assert.deepEqual(await inChain.result({ timeoutMs: 20_000 }), [["x"], [220]]);
      const ofChains = await client.submitWorkflow(group(chain(sig("add", [1, 2]), sig("mul", [2])), chain(sig("slow", [200, 5]), sig("add", [1]))), {
        queue,
      });
      assert.deepEqual(await ofChains.result({ timeoutMs: 20_000 }), [6, 6]);
      const ofChords = await client.submitWorkflow(
        chord([chord([sig("add", [1, 1]), sig("add", [2, 2])], sig("xsum")), chord([sig("add", [3, 3])], sig("xsum"))], sig("xsum")),
        { queue },
      );
      assert.equal(await ofChords.result({ timeoutMs: 20_000 }), 12);
      const groupsChained = await client.submitWorkflow(chain(group(sig("add", [1, 1]), sig("add", [2, 2])), group(sig("xsum"), sig("echo"))), { queue });
      assert.deepEqual(await groupsChained.result({ timeoutMs: 20_000 }), [6, [[2, 4]]]);
    } finally {
      await worker.stop();
    }
  });

  test("link gets the result; on success linkError's errback is cancelled without running", async () => {
    const { queue, worker, calls } = startWorker();
    try {
      const handle = await client.submitWorkflow(sig("add", [1, 2]).link(sig("echo", ["linked"])).linkError(sig("echo", ["errback"])), { queue });
      assert.equal(await handle.result({ timeoutMs: 20_000 }), 3, "a callback's result is not the workflow's");
      const workflow = await handle.workflow();
      assert.deepEqual(nodeStates(workflow), ["add SUCCEEDED", "echo SUCCEEDED", "echo CANCELLED"]);
      assert.deepEqual(fromPayload(workflow.nodes[1]!.task!.result!), [3, "linked"]);
      assert.ok(!calls.some((call) => call.args.includes("errback")));
    } finally {
      await worker.stop();
    }
  });

  test("a failure: linkError runs once with the failed task's id and error; dependents fail naming it; result throws it", async () => {
    const { queue, worker, calls } = startWorker();
    try {
      const handle = await client.submitWorkflow(
        chain(sig("add", [1, 1]), group(sig("fail", ["boom"]), sig("slow", [300, "late"]), sig("fail", ["bang"])), sig("xsum")).linkError(
          sig("echo", ["errback"]),
        ),
        { queue },
      );
      const failed = await handle.wait({ timeoutMs: 20_000 });
      assert.equal(failed.state, WorkflowState.FAILED);
      const first = failed.failedTaskId;
      assert.ok(first === handle.taskIds[1] || first === handle.taskIds[3], `failed_task_id ${first}`);
      await assert.rejects(handle.result({ timeoutMs: 5000 }), (error: unknown) => {
        assert.ok(error instanceof TaskFailedError, String(error));
        assert.equal(error.taskId, first);
        assert.equal(error.type, "ValueError");
        assert.ok(error.message === "boom" || error.message === "bang");
        assert.equal(error.workflowId, handle.id);
        assert.equal(error.workflowNode, handle.taskIds.indexOf(first));
        assert.equal(error.reason, FailureReason.UNSPECIFIED);
        return true;
      });
      await sleep(300); // no second errback arrives
      const errbacks = calls.filter((call) => call.args.at(-1) === "errback");
      assert.equal(errbacks.length, 1, JSON.stringify(errbacks));
      const [failedId, failure] = errbacks[0]!.args as [string, { type: string; message: string; traceback: string }];
      assert.equal(failedId, first);
      assert.equal(failure.type, "ValueError");
      assert.match(failure.traceback, /ValueError/);
      await assert.rejects(client.result(handle.taskIds[4]!, { timeoutMs: 5000 }), (error: unknown) => {
        assert.ok(error instanceof TaskFailedError);
        assert.equal(error.reason, FailureReason.DEPENDENCY_FAILED);
        assert.ok(error.causeTaskId === handle.taskIds[1] || error.causeTaskId === handle.taskIds[3], error.causeTaskId);
        return true;
      });
      const nodes = await handle.workflow();
      assert.deepEqual(nodeStates(nodes), ["add SUCCEEDED", "fail FAILED", "slow SUCCEEDED", "fail FAILED", "xsum FAILED", "echo SUCCEEDED"]);
      assert.ok(!calls.some((call) => call.name === "xsum"), "a dependent of a failed task never runs");
    } finally {
      await worker.stop();
    }
  });

  test("a node that expires fails its dependents; result throws the FAILED dependent's error, caused by the expired node", async () => {
    const { queue, worker } = startWorker();
    try {
      const handle = await client.submitWorkflow(
        chain(sig("slow", [1000, 0]), sig("add", [1], { expires: Date.now() + 300 }), sig("add", [2])),
        { queue },
      );
      const failed = await handle.wait({ timeoutMs: 20_000 });
      assert.equal(failed.state, WorkflowState.FAILED);
      assert.equal(failed.failedTaskId, handle.taskIds[1], "failed_task_id names the expired node");
      assert.deepEqual(nodeStates(await handle.workflow()), ["slow SUCCEEDED", "add EXPIRED", "add FAILED"]);
      await assert.rejects(handle.result({ timeoutMs: 5000 }), (error: unknown) => {
        assert.ok(error instanceof TaskFailedError, String(error));
        assert.equal(error.taskId, handle.taskIds[2]);
        assert.equal(error.reason, FailureReason.DEPENDENCY_FAILED);
        assert.equal(error.causeTaskId, handle.taskIds[1]);
        assert.equal(error.workflowNode, 2);
        return true;
      });
    } finally {
      await worker.stop();
    }
  });

  test("a chord with allowErrors runs its body with failed headers as error entries", async () => {
    const { queue, worker } = startWorker();
    try {
      const handle = await client.submitWorkflow(chord([sig("add", [1, 1]), sig("fail", ["nope"])], sig("echo"), { allowErrors: true }), { queue });
      assert.equal((await handle.wait({ timeoutMs: 20_000 })).state, WorkflowState.FAILED, "a failed header fails the workflow");
      assert.deepEqual(await handle.outputs[0]!.result({ timeoutMs: 5000 }), [
        [2, { error: { type: "ValueError", message: "nope", task_id: handle.taskIds[1] } }],
      ]);
    } finally {
      await worker.stop();
    }
  });

  test("cancel: no node starts afterwards, a running one is stopped; result says it did not succeed", async () => {
    const { queue, worker, calls } = startWorker();
    try {
      const handle = await client.submitWorkflow(chain(sig("block"), sig("add", [1]), group(sig("add", [2]), sig("add", [3]))), { queue });
      await waitFor(() => calls.some((call) => call.name === "block"), "the first node to run");
      const cancelled = await handle.cancel();
      assert.equal(cancelled.state, WorkflowState.CANCELLED);
      assert.equal(cancelled.cancelled, 4);
      await assert.rejects(handle.result({ timeoutMs: 10_000 }), (error: unknown) => {
        assert.ok(error instanceof TaskNotSucceededError, String(error));
        assert.equal(error.state, TaskState.CANCELLED);
        assert.equal(error.workflowId, handle.id);
        return true;
      });
      const workflow = await handle.workflow();
      assert.deepEqual(nodeStates(workflow), ["block CANCELLED", "add CANCELLED", "add CANCELLED", "add CANCELLED"]);
      assert.deepEqual(calls.map((call) => call.name), ["block"]);
      assert.equal((await handle.cancel()).cancelled, 0, "nothing left to cancel");
      // Queued, never run.
      const idle = await client.submitWorkflow(group(sig("add", [1, 1]), sig("add", [2, 2])), { queue: uniqueQueue("nobody") });
      assert.deepEqual(await idle.cancel(), { cancelled: 2, state: WorkflowState.CANCELLED });
    } finally {
      await worker.stop();
    }
  });

  test("watch yields snapshots until the workflow has finished; getWorkflow's views; waitWorkflow times out", async () => {
    const queue = uniqueQueue("wf");
    const handle = await client.submitWorkflow(chain(sig("add", [1, 1]), sig("add", [1])), { queue });
    const seen: Workflow[] = [];
    const watching = (async () => {
      for await (const workflow of handle.watch()) seen.push(workflow);
    })();
    await waitFor(() => seen.length > 0, "the first snapshot");
    assert.equal(seen[0]!.state, WorkflowState.RUNNING);
    assert.deepEqual(nodeStates(seen[0]!), ["add QUEUED", "add WAITING"]);
    await assert.rejects(handle.wait({ timeoutMs: 300 }), ConveyorTimeoutError);
    const summary = await handle.workflow({ view: "summary" });
    assert.equal(summary.nodes.length, 0);
    assert.equal(summary.nodeCount, 2);
    assert.equal((await handle.workflow()).stateCounts[TaskState.WAITING], 1);
    const full = await handle.workflow({ view: "full" });
    assert.deepEqual(full.nodes[0]!.task!.args.map((payload) => fromPayload(payload)), [1, 1]);
    const calls: Call[] = [];
    const worker = runWorker(server.addr, { queues: [queue] }, (w) => registerAll(w, calls));
    try {
      await watching;
      const last = seen.at(-1)!;
      assert.equal(last.state, WorkflowState.SUCCEEDED);
      assert.equal(fromPayload(last.result!), 3);
      assert.equal(seen.filter((workflow) => workflow.state !== WorkflowState.RUNNING).length, 1);
      assert.ok(seen.length >= 3, `${seen.length} snapshots`);
      const nodes = await handle.workflow();
      assert.deepEqual(nodes.nodes[1]!.task!.args, [], "the nodes view leaves arguments out");
    } finally {
      await worker.stop();
    }
  });

  test("per-state counts come with the nodes view; the summary reads the outputs only", async () => {
    const handle = await client.submitWorkflow(chain(sig("add", [1, 1]), sig("add", [1])), { queue: uniqueQueue("nobody") });
    const nodes = await handle.workflow({ view: "nodes" });
    assert.equal(nodes.stateCounts[TaskState.QUEUED], 1);
    assert.equal(nodes.stateCounts[TaskState.WAITING], 1);
    const summary = await handle.workflow({ view: "summary" });
    assert.deepEqual(summary.stateCounts, []);
    assert.equal(summary.nodeCount, 2);
    assert.equal(summary.nodes.length, 0);
    await handle.cancel();
  });

  test("an idempotency key returns the first workflow; a node's own queue wins over the workflow's", async () => {
    const { queue, worker } = startWorker();
    const other = uniqueQueue("wf-other");
    const otherWorker = runWorker(server.addr, { queues: [other] }, (w) => registerAll(w, []));
    try {
      const key = `wf-${Date.now()}-${Math.random()}`;
      const canvas = chain(sig("add", [1, 1]), sig("add", [1], { queue: other }));
      const first = await client.submitWorkflow(canvas, { queue, idempotencyKey: key });
      const second = await client.submitWorkflow(canvas, { queue, idempotencyKey: key });
      assert.equal(second.id, first.id);
      assert.deepEqual(second.taskIds, first.taskIds);
      assert.equal(second.duplicate, true);
      assert.equal(first.duplicate, false);
      assert.equal(await first.result({ timeoutMs: 20_000 }), 3);
      assert.equal((await client.get(first.taskIds[1]!)).queue, other);
      assert.equal((await client.get(first.taskIds[0]!)).queue, queue);
    } finally {
      await Promise.all([worker.stop(), otherWorker.stop()]);
    }
  });

  test("the server refuses malformed DAGs with INVALID_ARGUMENT naming the node; unknown ids are NOT_FOUND", async () => {
    const node = (parents: number[], input = NodeInput.UNSPECIFIED) =>
      create(WorkflowNodeSchema, { task: create(TaskSpecSchema, { name: "add" }), parents, input });
    const submit = (nodes: ReturnType<typeof node>[]) => client.submissionService.submitWorkflow({ workflow: create(WorkflowSpecSchema, { nodes }) });
    const refused = async (nodes: ReturnType<typeof node>[], field: RegExp): Promise<void> => {
      await assert.rejects(submit(nodes), (thrown: unknown) => {
        const error = ConveyorError.from(thrown);
        assert.equal(error.code, Code.InvalidArgument, error.message);
        assert.match(error.rawMessage, field);
        return true;
      });
    };
    await refused([], /workflow/);
    await refused([node([1]), node([0])], /workflow\.nodes\[\d\]/);
    await refused([node([]), node([0, 0])], /workflow\.nodes\[1\]/);
    await refused([node([]), node([]), node([0, 1], NodeInput.ONE)], /workflow\.nodes\[2\]/);
    await refused([node([7])], /workflow\.nodes\[0\]/);
    assert.throws(() => group(), /empty group/);
    const unknown = "01900000-0000-7000-8000-000000000000";
    await assert.rejects(client.getWorkflow(unknown), { code: Code.NotFound });
    await assert.rejects(client.waitWorkflow(unknown, { timeoutMs: 1000 }), { code: Code.NotFound });
    await assert.rejects(client.cancelWorkflow(unknown), { code: Code.NotFound });
  });

  test("eager mode gives the same results and node states as the server", async () => {
    const canvases: Canvas[] = [
      chain(sig("add", [2, 2]), sig("mul", [10])),
      group(sig("add", [1, 1]), chain(sig("add", [1, 2]), sig("mul", [2]))),
      chord([sig("add", [1, 1]), sig("add", [2, 2])], sig("xsum")),
      chain(sig("add", [1, 1]), chord([sig("mul", [10]), si("add", [5, 5])], sig("echo")), sig("echo", ["end"])),
      sig("add", [1, 2]).link(sig("echo")).linkError(sig("echo", ["errback"])),
      chain(sig("add", [1, 1]), group(sig("fail", ["boom"]), sig("add", [1])), sig("xsum")).linkError(sig("echo", ["errback"])),
      chord([sig("fail", ["x"]), sig("add", [1, 1])], sig("echo"), { allowErrors: true }),
    ];
    const { queue, worker } = startWorker();
    const eager = new EagerClient();
    registerAll(eager, []);
    const outcome = async (on: Client, canvas: Canvas, options: { queue?: string }) => {
      const handle = await on.submitWorkflow(canvas, options);
      const done = await handle.wait({ timeoutMs: 20_000 });
      const nodes = await handle.workflow();
      return {
        state: WorkflowState[done.state],
        result: done.result === undefined ? undefined : fromPayload(done.result),
        nodes: nodes.nodes.map((node) => ({
          state: TaskState[node.task!.state],
          // Errbacks see a traceback and task ids, which differ: compare the rest.
          result: node.task!.result === undefined ? undefined : comparable(fromPayload(node.task!.result)),
          error: node.task!.error?.type,
          reason: node.task!.error?.reason,
        })),
      };
    };
    try {
      for (const canvas of canvases) {
        const real = await outcome(client, canvas, { queue });
        const inProcess = await outcome(eager, canvas, {});
        assert.deepEqual(inProcess, real, `eager and server differ for ${canvas.describe()}`);
      }
    } finally {
      await worker.stop();
    }
  });
});
