// Eager mode (parity row eager_mode): tasks run in-process at submit, with no
// server, through the same handler invocation, retries and errors; workflows
// run node by node with the server's semantics.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { TaskSpecSchema } from "../src/gen/conveyor/v1/task_pb.js";
import { WorkflowNodeSchema, WorkflowSpecSchema } from "../src/gen/conveyor/v1/workflow_pb.js";
import {
  Code,
  EagerClient,
  FailureReason,
  NodeInput,
  NodeTrigger,
  TaskFailedError,
  TaskFailure,
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
import type { TaskContext } from "../src/index.js";

describe("EagerClient", () => {
  test("parity_eager_mode: submit runs the handler at once; results, retries, errors, progress, replay, forget", async () => {
    let flakyCalls = 0;
    const client = new EagerClient()
      .register("add", (_ctx, a: number, b: number) => a + b)
      .register("flaky", (ctx) => {
        flakyCalls += 1;
        if (ctx.attempt < 3) throw ctx.retry({ countdownMs: 60_000 }); // delays are skipped
        return `attempt ${ctx.attempt}`;
      })
      .register("report", (ctx, total: number) => {
        ctx.updateState({ state: "HALFWAY", percent: 50, meta: { total } });
        return total;
      })
      .register("broken", () => {
        throw new TaskFailure("ValueError", "bad input", { retryable: false });
      });
    const started = Date.now();
    const id = await client.submit("add", [2, 3]);
    assert.equal((await client.get(id)).state, TaskState.SUCCEEDED, "finished when submit resolves");
    assert.equal(await client.result<number>(id), 5);

    const flaky = await client.submit("flaky", [], { maxRetries: 5 });
    assert.equal(await client.result(flaky), "attempt 3");
    assert.equal(flakyCalls, 3);
    assert.equal((await client.get(flaky)).failures, 2);
    assert.ok(Date.now() - started < 5000, "retry delays are skipped");

    const report = await client.submit("report", [10]);
    const reported = await client.get(report);
    assert.equal(reported.progress?.state, "HALFWAY");
    assert.deepEqual(fromPayload(reported.progress!.meta!), { total: 10 });

    const broken = await client.submit("broken", [], { maxRetries: 3 });
    await assert.rejects(client.result(broken), (error: unknown) => {
      assert.ok(error instanceof TaskFailedError);
      assert.equal(error.type, "ValueError");
      assert.equal(error.message, "bad input");
      return true;
    });
    assert.equal((await client.get(broken)).attempt, 1, "a non-retryable failure is final");
    const dead = [];
    for await (const task of client.deadLetters()) dead.push(task.id);
    assert.deepEqual(dead, [broken]);
    assert.equal(await client.replay(broken), TaskState.FAILED);
    assert.equal((await client.get(broken)).attempt, 2);

    const unknown = await client.submit("nobody-registered-this");
    assert.equal((await client.get(unknown)).error?.type, "NotRegistered");

    const [a, b] = await client.submitMany([{ name: "add", args: [1, 1] }, { name: "add", args: [2, 2] }]);
    assert.deepEqual([await client.result(a!), await client.result(b!)], [2, 4]);

    await client.forget(id);
    await assert.rejects(client.get(id), { code: Code.NotFound });
    await assert.rejects(client.submit("", []), { code: Code.InvalidArgument });
  });
});

describe("EagerClient workflows", () => {
  /** A client whose handlers record the workflow id and arguments they ran with. */
  function workflowClient(): { client: EagerClient; calls: Array<{ name: string; args: unknown[]; workflowId: string | undefined }> } {
    const calls: Array<{ name: string; args: unknown[]; workflowId: string | undefined }> = [];
    const record = (ctx: TaskContext): void => {
      calls.push({ name: ctx.name, args: [...ctx.args], workflowId: ctx.workflowId });
    };
    const client = new EagerClient()
      .register("add", (ctx, a: number, b: number) => (record(ctx), a + b))
      .register("mul", (ctx, a: number, b: number) => (record(ctx), a * b))
      .register("xsum", (ctx, values: number[]) => (record(ctx), values.reduce((sum, value) => sum + value, 0)))
      .register("echo", (ctx, ...args: unknown[]) => (record(ctx), args))
      .register("fail", (ctx, ...args: unknown[]) => {
        record(ctx);
        throw new TaskFailure("ValueError", String(args.at(-1)), { retryable: false });
      });
    return { client, calls };
  }

  test("a chain passes each result on; the handler sees its workflow id; the outputs are task handles", async () => {
    const { client, calls } = workflowClient();
    const handle = await client.submitWorkflow<number>(chain(sig("add", [2, 2]), sig("add", [4]), sig("mul", [10])));
    assert.equal(await handle.result(), 80);
    assert.deepEqual(calls.map((call) => call.args), [[2, 2], [4, 4], [8, 10]]);
    assert.ok(calls.every((call) => call.workflowId === handle.id));
    assert.equal(handle.taskIds.length, 3);
    assert.deepEqual(handle.outputs.map((output) => output.id), [handle.taskIds[2]]);
    assert.equal(await handle.outputs[0]!.result(), 80);
    const last = await client.get(handle.taskIds[2]!);
    assert.equal(last.workflowId, handle.id);
    assert.equal(last.workflowNode, 2);
    assert.deepEqual(last.args.map((payload) => fromPayload(payload)), [8, 10], "a node's arguments start with its inputs");
    assert.equal(handle.name, "chain(add x2, mul)");
    assert.equal(handle.duplicate, false);
  });

  test("a group's result is the list of results in order; a chord's body gets that list", async () => {
    const { client } = workflowClient();
    const listed = await client.submitWorkflow(group(sig("add", [1, 1]), sig("mul", [3, 3]), chain(sig("add", [1, 2]), sig("mul", [2]))));
    assert.deepEqual(await listed.result(), [2, 9, 6]);
    const summed = await client.submitWorkflow(chord(starmap("add", [[1, 1], [2, 2], [3, 3]]), sig("xsum")));
    assert.equal(await summed.result(), 12);
    const nested = await client.submitWorkflow(
      chain(sig("add", [1, 1]), chord([sig("mul", [10]), sig("mul", [100])], sig("xsum")), group(si("echo", ["x"]), sig("echo"))),
    );
    assert.deepEqual(await nested.result(), [["x"], [220]]);
    const ofChords = await client.submitWorkflow(chord([chord([sig("add", [1, 1])], sig("xsum")), chord([sig("add", [2, 2])], sig("xsum"))], sig("xsum")));
    assert.equal(await ofChords.result(), 6);
  });

  test("link gets the result; linkError runs once with the failed task's id and error; dependents fail naming their cause", async () => {
    const { client, calls } = workflowClient();
    const ok = await client.submitWorkflow(sig("add", [1, 2]).link(sig("echo", ["linked"])).linkError(sig("echo", ["errback"])));
    assert.equal(await ok.result(), 3);
    assert.deepEqual(calls.map((call) => call.args), [[1, 2], [3, "linked"]]);
    const okNodes = (await ok.workflow()).nodes;
    assert.equal(okNodes[2]!.task!.state, TaskState.CANCELLED, "an errback without a failure is cancelled");
    assert.equal(okNodes[2]!.trigger, NodeTrigger.ON_FAILURE);

    calls.length = 0;
    const broken = await client.submitWorkflow(
      chain(sig("add", [1, 1]), group(sig("fail", ["boom"]), sig("fail", ["bang"])), sig("xsum")).linkError(sig("echo", ["errback"])),
    );
    const failed = broken.taskIds[1]!;
    await assert.rejects(broken.result(), (error: unknown) => {
      assert.ok(error instanceof TaskFailedError);
      assert.equal(error.taskId, failed);
      assert.equal(error.type, "ValueError");
      assert.equal(error.message, "boom");
      assert.equal(error.workflowId, broken.id);
      assert.equal(error.workflowNode, 1);
      return true;
    });
    const errbacks = calls.filter((call) => call.args.at(-1) === "errback");
    assert.equal(errbacks.length, 1, "the errback runs once");
    const [failedId, failure] = errbacks[0]!.args as [string, { type: string; message: string; traceback: string }];
    assert.equal(failedId, failed);
    assert.equal(failure.type, "ValueError");
    assert.equal(failure.message, "boom");
    assert.equal(typeof failure.traceback, "string");
    await assert.rejects(client.result(broken.taskIds[3]!), (error: unknown) => {
      assert.ok(error instanceof TaskFailedError);
      assert.equal(error.reason, FailureReason.DEPENDENCY_FAILED);
      assert.equal(error.causeTaskId, failed);
      return true;
    });
    const workflow = await broken.wait();
    assert.equal(workflow.state, WorkflowState.FAILED);
    assert.equal(workflow.failedTaskId, failed);
    assert.equal(workflow.nodes.length, 0, "wait returns a summary");
    assert.equal(workflow.stateCounts[TaskState.FAILED], 3);
    assert.deepEqual(await broken.cancel(), { cancelled: 0, state: WorkflowState.FAILED });
  });

  test("a chord with allowErrors gets failed headers as error entries", async () => {
    const { client } = workflowClient();
    const handle = await client.submitWorkflow(chord([sig("add", [1, 1]), sig("fail", ["nope"])], sig("echo"), { allowErrors: true }));
    const [entries] = (await client.result<unknown[][]>(handle.outputs[0]!.id)) as [unknown[]];
    assert.deepEqual(entries, [2, { error: { type: "ValueError", message: "nope", task_id: handle.taskIds[1] } }]);
    assert.equal((await handle.wait()).state, WorkflowState.FAILED, "a failed header still fails the workflow");
  });

  test("views, watch, idempotency and the server's validation", async () => {
    const { client } = workflowClient();
    const first = await client.submitWorkflow(group(sig("add", [1, 2]), sig("add", [3, 4])), { idempotencyKey: "wf-1" });
    const again = await client.submitWorkflow(group(sig("add", [1, 2]), sig("add", [3, 4])), { idempotencyKey: "wf-1" });
    assert.equal(again.id, first.id);
    assert.deepEqual(again.taskIds, first.taskIds);
    assert.equal(again.duplicate, true);
    const nodes = await first.workflow();
    assert.equal(nodes.state, WorkflowState.SUCCEEDED);
    assert.equal(nodes.nodeCount, 2);
    assert.deepEqual(nodes.outputTaskIds, first.taskIds);
    assert.deepEqual(nodes.nodes.map((node) => node.task!.args.length), [0, 0], "the nodes view leaves arguments out");
    const full = await first.workflow({ view: "full" });
    assert.deepEqual(full.nodes.map((node) => node.task!.args.length), [2, 2]);
    assert.equal((await first.workflow({ view: "summary" })).nodes.length, 0);
    const snapshots = [];
    for await (const snapshot of first.watch()) snapshots.push(snapshot.state);
    assert.deepEqual(snapshots, [WorkflowState.SUCCEEDED]);
    await assert.rejects(client.getWorkflow("01900000-0000-7000-8000-000000000000"), { code: Code.NotFound });

    const node = (parents: number[], input = NodeInput.UNSPECIFIED) =>
      create(WorkflowNodeSchema, { task: create(TaskSpecSchema, { name: "add" }), parents, input });
    const submit = (nodes: ReturnType<typeof node>[]) =>
      client.submissionService.submitWorkflow({ workflow: create(WorkflowSpecSchema, { nodes }) });
    await assert.rejects(submit([]), { code: Code.InvalidArgument, rawMessage: /workflow.nodes/ });
    await assert.rejects(submit([node([1]), node([0])]), { code: Code.InvalidArgument, rawMessage: /cycle/ });
    await assert.rejects(submit([node([]), node([0, 0])]), { code: Code.InvalidArgument, rawMessage: /workflow.nodes\[1\].parents\[1\]/ });
    await assert.rejects(submit([node([]), node([]), node([0, 1], NodeInput.ONE)]), { code: Code.InvalidArgument, rawMessage: /workflow.nodes\[2\].input/ });
    await assert.rejects(submit([node([5])]), { code: Code.InvalidArgument, rawMessage: /workflow.nodes\[0\].parents\[0\]/ });
  });
});
