// Large payloads against a real `conveyor dev`: batches split by bytes, a
// worker receiving tasks of ~4 MB, clients reading them back.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { toBinary } from "@bufbuild/protobuf";
import { Client, MAX_BATCH_BYTES, MAX_TASKS_PER_BATCH, TaskState, buildTaskSpec, fromPayload } from "../src/index.js";
import { splitBatches } from "../src/client.js";
import { TaskSpecSchema } from "../src/gen/conveyor/v1/task_pb.js";
import { runWorker, startServer, uniqueQueue } from "../testkit/helpers.js";
import type { Server } from "../testkit/helpers.js";

const KB = 1024;
const ARG_256K = 256 * KB;
/** Four arguments of 900 KB: about 3.5 MB in one task. */
const ARG_900K = 900 * KB;
/**
 * Four arguments as large as the server takes (1 MiB each with their JSON
 * quotes, 4 MiB in all): the task's assignment and its GetTask answer are
 * above the 4 MiB that gRPC libraries receive by default.
 */
const ARG_FULL = 1024 * KB - 6;

/** A string of `size` characters that starts with its index. */
function arg(i: number, size: number): string {
  const head = `${String(i).padStart(6, "0")}:`;
  return head + "x".repeat(size - head.length);
}

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

describe("large payloads", () => {
  test("splitBatches: at most 1000 tasks and 16 MiB of encoded tasks per call, in order", () => {
    const small = Array.from({ length: 2500 }, (_, i) => buildTaskSpec("t", [i]));
    assert.deepEqual(splitBatches(small).map((b) => b.length), [1000, 1000, 500]);
    assert.deepEqual(splitBatches(small).flat(), small);

    const big = Array.from({ length: 130 }, (_, i) => buildTaskSpec("t", [arg(i, ARG_256K)]));
    const batches = splitBatches(big);
    assert.equal(batches.length, 3);
    assert.deepEqual(batches.flat(), big);
    for (const batch of batches) {
      assert.ok(batch.length <= MAX_TASKS_PER_BATCH);
      const bytes = batch.reduce((sum, spec) => sum + toBinary(TaskSpecSchema, spec).length + 6, 0);
      assert.ok(bytes <= MAX_BATCH_BYTES, `a batch of ${bytes} bytes`);
    }

    // A task above the byte limit alone still travels, in its own call.
    const huge = buildTaskSpec("t", ["y".repeat(MAX_BATCH_BYTES + 1)]);
    assert.deepEqual(splitBatches([small[0]!, huge, small[1]!]).map((b) => b.length), [1, 1, 1]);
    assert.deepEqual(splitBatches([]), []);
  });

  test("submitMany of 300 tasks of 256 KB: all accepted, ids distinct and in order", async () => {
    const queue = uniqueQueue("idle"); // no worker: the tasks stay queued
    const ids = await client.submitMany(Array.from({ length: 300 }, (_, i) => ({ name: "echo", args: [arg(i, ARG_256K)], queue })));
    assert.equal(ids.length, 300);
    assert.equal(new Set(ids).size, 300);
    for (const [i, id] of ids.entries()) {
      // Each id is the task submitted at its place.
      const task = await client.get(id);
      assert.equal(task.state, TaskState.QUEUED);
      const value = fromPayload(task.args[0]!) as string;
      assert.equal(value.length, ARG_256K);
      assert.equal(value.slice(0, 7), `${String(i).padStart(6, "0")}:`);
    }
  });

  test("a worker with 50 slots runs 200 tasks of 256 KB and tasks of 3.5 MB and 4 MiB; get and wait read them back", async () => {
    const queue = uniqueQueue();
    const worker = runWorker(server.addr, { queues: [queue], concurrency: 50 }, (w) => {
      w.register("total_length", (_ctx, ...args: string[]) => args.reduce((sum, s) => sum + s.length, 0));
    });
    try {
      const ids = await client.submitMany(
        Array.from({ length: 200 }, (_, i) => ({ name: "total_length", args: [arg(i, ARG_256K)], queue })),
      );
      const bigArgs = Array.from({ length: 4 }, (_, i) => arg(i, ARG_900K));
      const fullArgs = Array.from({ length: 4 }, (_, i) => arg(i, ARG_FULL));
      const big = await client.submit("total_length", bigArgs, { queue });
      const full = await client.submit("total_length", fullArgs, { queue });
      const results = await Promise.all(ids.map((id) => client.result<number>(id, { timeoutMs: 20_000 })));
      assert.deepEqual(results, Array(200).fill(ARG_256K));

      for (const [id, args] of [
        [big, bigArgs],
        [full, fullArgs],
      ] as const) {
        assert.equal(await client.result<number>(id, { timeoutMs: 20_000 }), 4 * args[0]!.length);
        const task = await client.get(id);
        assert.equal(task.state, TaskState.SUCCEEDED);
        assert.deepEqual(task.args.map((p) => fromPayload(p)), args);
        assert.equal(fromPayload(task.result!), 4 * args[0]!.length);
        // WaitTask answers with the outcome, without the arguments.
        const waited = await client.wait(id, { timeoutMs: 5000 });
        assert.equal(waited.state, TaskState.SUCCEEDED);
        assert.equal(waited.args.length, 0);
        assert.equal(fromPayload(waited.result!), 4 * args[0]!.length);
      }
    } finally {
      await worker.stop();
    }
  });
});
