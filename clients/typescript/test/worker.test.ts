// Worker against a real `conveyor dev`: results and error details, retries,
// context, soft time limits, concurrency, a SIGKILLed worker's task running
// again elsewhere, and graceful drain.

import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { after, before, describe, test } from "node:test";
import {
  Client,
  Code,
  RawPayload,
  TaskCancelledError,
  TaskFailedError,
  TaskFailure,
  TaskState,
  Worker,
  silentLogger,
} from "../src/index.js";
import type { TaskContext } from "../src/index.js";
import { exampleWorker, runWorker, spawnNode, startServer, uniqueQueue, waitFor } from "../testkit/helpers.js";
import type { Server } from "../testkit/helpers.js";

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

describe("Worker", () => {
  test("runs add and fail: results, error type, message, traceback, no retry of a final failure", async () => {
    const queue = uniqueQueue();
    const worker = runWorker(server.addr, { queues: [queue], concurrency: 4 }, (w) => {
      w.register("add", async (_ctx, a: number, b: number) => a + b);
      w.register("fail", (_ctx, message: string) => {
        throw new TaskFailure("ValueError", message, { retryable: false });
      });
    });
    try {
      const [addId, failId] = await client.submitMany([
        { name: "add", args: [2, 2], queue },
        { name: "fail", args: ["boom"], queue, maxRetries: 3, retry: { backoffBaseMs: 10 } },
      ]);
      assert.equal(await client.result<number>(addId!, { timeoutMs: 10_000 }), 4);
      const error = await client.result(failId!, { timeoutMs: 10_000 }).then(
        () => assert.fail("fail() succeeded"),
        (thrown: unknown) => thrown,
      );
      assert.ok(error instanceof TaskFailedError);
      assert.equal(error.type, "ValueError");
      assert.equal(error.message, "boom");
      assert.equal(error.retryable, false);
      assert.match(error.traceback, /^ValueError: boom\n\s+at /);
      const task = await client.get(failId!);
      assert.equal(task.state, TaskState.FAILED);
      assert.equal(task.attempt, 1, "a non-retryable failure is final");
      assert.equal(task.workerId, worker.worker.workerId);
    } finally {
      await worker.stop();
    }
  });

  test("rateLimit spaces the starts of a task name across the worker", async () => {
    const queue = uniqueQueue();
    const name = `rated.${queue}`; // its own bucket on the shared server
    const starts: number[] = []; // measured on the worker side
    const worker = runWorker(server.addr, { queues: [queue], concurrency: 4 }, (w) =>
      w.register(name, (_ctx, i: number) => {
        starts.push(performance.now());
        return i;
      }),
    );
    try {
      const ids = await Promise.all([0, 1, 2].map((i) => client.submit(name, [i], { queue, rateLimit: "5/s" })));
      for (const [i, id] of ids.entries()) {
        assert.equal(await client.result<number>(id, { timeoutMs: 15_000 }), i);
        assert.equal((await client.get(id)).options?.rateLimit, "5/s");
      }
      starts.sort((a, b) => a - b);
      assert.equal(starts.length, 3);
      for (let i = 1; i < starts.length; i++) {
        assert.ok(starts[i]! - starts[i - 1]! >= 180, `starts ${starts.map((s) => s.toFixed(0)).join(", ")}`);
      }
      await assert.rejects(client.submit(name, [9], { queue, rateLimitKey: "tenant-1" }), {
        code: Code.InvalidArgument,
      });
    } finally {
      await worker.stop();
    }
  });

  test("a retryable error runs again under the retry policy", async () => {
    const queue = uniqueQueue();
    const worker = runWorker(server.addr, { queues: [queue] }, (w) =>
      w.register("flaky", (ctx) => {
        if (ctx.attempt < 2) throw new Error(`attempt ${ctx.attempt} fails`);
        return { attempt: ctx.attempt };
      }),
    );
    try {
      const id = await client.submit("flaky", [], { queue, retry: { maxRetries: 2, backoffBaseMs: 10 } });
      assert.deepEqual(await client.result(id, { timeoutMs: 10_000 }), { attempt: 2 });
      const task = await client.get(id);
      assert.equal(task.failures, 1);
    } finally {
      await worker.stop();
    }
  });

  test("the context carries id, attempt, headers, kwargs; raw payloads pass through", async () => {
    const queue = uniqueQueue();
    const seen: TaskContext[] = [];
    const worker = runWorker(server.addr, { queues: [queue] }, (w) =>
      w.register("inspect", (ctx, first: unknown, second: unknown) => {
        seen.push(ctx);
        assert.ok(second instanceof RawPayload);
        return { first, kwargs: ctx.kwargs, raw: new TextDecoder().decode(second.data), type: second.contentType };
      }).register("raw", () => new RawPayload(new Uint8Array([1, 2, 3]), "application/octet-stream")),
    );
    try {
      const id = await client.submit("inspect", [[1, 2], new RawPayload("hello", "text/plain")], {
        queue,
        headers: { traceparent: "00-trace" },
        kwargs: { scale: 3, label: "x" },
        maxRetries: 4,
        softTimeLimitMs: 60_000,
      });
      assert.deepEqual(await client.result(id, { timeoutMs: 10_000 }), {
        first: [1, 2],
        kwargs: { scale: 3, label: "x" },
        raw: "hello",
        type: "text/plain",
      });
      const ctx = seen[0]!;
      assert.equal(ctx.taskId, id);
      assert.equal(ctx.name, "inspect");
      assert.equal(ctx.attempt, 1);
      assert.equal(ctx.maxRetries, 4);
      assert.equal(ctx.headers["traceparent"], "00-trace");
      assert.equal(ctx.softTimeLimitMs, 60_000);
      assert.ok(ctx.createdAt instanceof Date);
      assert.equal(ctx.signal.aborted, false);

      const rawId = await client.submit("raw", [], { queue });
      const task = await client.wait(rawId, { timeoutMs: 10_000 });
      assert.equal(task.state, TaskState.SUCCEEDED);
      assert.equal(task.result?.contentType, "application/octet-stream");
      assert.deepEqual([...(task.result?.data ?? [])], [1, 2, 3]);
    } finally {
      await worker.stop();
    }
  });

  test("the soft time limit aborts the handler's signal", async () => {
    const queue = uniqueQueue();
    const worker = runWorker(server.addr, { queues: [queue] }, (w) =>
      w.register("stubborn", async (ctx) => {
        await sleep(30_000, undefined, { signal: ctx.signal });
        return "finished";
      }),
    );
    try {
      const started = Date.now();
      const id = await client.submit("stubborn", [], { queue, softTimeLimitMs: 200 });
      const error = await client.result(id, { timeoutMs: 10_000 }).then(
        () => assert.fail("the handler finished"),
        (thrown: unknown) => thrown,
      );
      assert.ok(error instanceof TaskFailedError);
      assert.equal(error.type, "SoftTimeLimitExceeded");
      assert.match(error.message, /soft time limit of 200 ms/);
      assert.ok(Date.now() - started < 5000);
    } finally {
      await worker.stop();
    }
  });

  test("never runs more handlers at once than its concurrency", async () => {
    const queue = uniqueQueue();
    let running = 0;
    let peak = 0;
    const worker = runWorker(server.addr, { queues: [queue], concurrency: 2 }, (w) =>
      w.register("busy", async (_ctx, index: number) => {
        running += 1;
        peak = Math.max(peak, running);
        await sleep(80);
        running -= 1;
        return index;
      }),
    );
    try {
      const ids = await client.submitMany(Array.from({ length: 8 }, (_, index) => ({ name: "busy", args: [index], queue })));
      const results = await Promise.all(ids.map((id) => client.result<number>(id, { timeoutMs: 15_000 })));
      assert.deepEqual(results, [0, 1, 2, 3, 4, 5, 6, 7]);
      assert.equal(peak, 2);
    } finally {
      await worker.stop();
    }
  });

  test("a task whose worker is SIGKILLed runs again on another worker (attempt 2)", async () => {
    const queue = uniqueQueue();
    const doomed = spawnNode(exampleWorker, { CONVEYOR_ADDR: server.addr, CONVEYOR_QUEUE: queue, CONVEYOR_CONCURRENCY: "1" });
    let survivor: ReturnType<typeof runWorker> | undefined;
    try {
      const id = await client.submit("sleep", [60], { queue });
      await waitFor(async () => (await client.get(id)).state === TaskState.RUNNING, "the child worker to start the task");
      doomed.child.kill("SIGKILL");
      await doomed.exit;
      survivor = runWorker(server.addr, { queues: [queue] }, (w) => w.register("sleep", (ctx) => ({ attempt: ctx.attempt })));
      assert.deepEqual(await client.result(id, { timeoutMs: 15_000 }), { attempt: 2 });
      const task = await client.get(id);
      assert.equal(task.attempt, 2);
      assert.equal(task.failures, 0, "requeueing is not a failure");
    } finally {
      doomed.child.kill("SIGKILL");
      await survivor?.stop();
    }
  });

  test("aborting run() drains: running tasks finish and report, no new work is taken", async () => {
    const queue = uniqueQueue();
    let started = 0;
    const worker = runWorker(server.addr, { queues: [queue], concurrency: 1 }, (w) =>
      w.register("slow", async (ctx, value: string) => {
        started += 1;
        await sleep(400);
        return { value, aborted: ctx.signal.aborted };
      }),
    );
    const first = await client.submit("slow", ["first"], { queue });
    await waitFor(async () => (await client.get(first)).state === TaskState.RUNNING, "the task to start");
    const second = await client.submit("slow", ["second"], { queue });
    const stopping = worker.stop();
    await stopping;
    assert.deepEqual(await client.result(first, { timeoutMs: 5000 }), { value: "first", aborted: false });
    assert.equal(started, 1);
    const left = await client.get(second);
    assert.equal(left.state, TaskState.QUEUED, "the queued task was not taken during the drain");
    assert.equal(await client.cancel(second), true);
  });

  test("a drain whose grace period passes abandons the handler and aborts its signal", async () => {
    const queue = uniqueQueue();
    let reason: unknown;
    const worker = runWorker(server.addr, { queues: [queue], gracePeriodMs: 100 }, (w) =>
      w.register("forever", async (ctx) => {
        await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve, { once: true }));
        reason = ctx.signal.reason;
        return "too late";
      }),
    );
    const id = await client.submit("forever", [], { queue });
    await waitFor(async () => (await client.get(id)).state === TaskState.RUNNING, "the task to start");
    await worker.stop();
    assert.ok(reason instanceof TaskCancelledError);
    assert.equal(reason.kind, "drain");
    // The lease went back with the stream: the task is queued again.
    await waitFor(async () => (await client.get(id)).state === TaskState.QUEUED, "the task to be requeued");
    await client.cancel(id);
  });

  test("rejects bad configuration early", async () => {
    assert.throws(() => new Worker("not a url"), TypeError);
    assert.throws(() => new Worker("http://127.0.0.1:1", { concurrency: 0 }), RangeError);
    assert.throws(() => new Worker("http://127.0.0.1:1", { workerId: "x".repeat(201) }), RangeError);
    const worker = new Worker("http://127.0.0.1:1", { logger: silentLogger });
    await assert.rejects(worker.run({ handleSignals: false }), /register at least one handler/);
    assert.throws(() => worker.register("", () => 1), TypeError);
    assert.equal(worker.queues[0], "default");
    assert.match(worker.workerId, /-\d+$/);
  });
});
