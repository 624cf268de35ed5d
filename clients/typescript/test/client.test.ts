// Client against a real `conveyor dev`: submit, submit many, get, wait,
// result, watch, cancel, and the gRPC codes of its errors.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import {
  Client,
  Code,
  ConveyorError,
  ConveyorTimeoutError,
  TaskFailedError,
  TaskNotSucceededError,
  TaskState,
  fromPayload,
  isTerminal,
} from "../src/index.js";
import type { Task } from "../src/index.js";
import { runWorker, startServer, uniqueQueue } from "../testkit/helpers.js";
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

describe("Client", () => {
  test("submits a task with arguments and options, and reads it back", async () => {
    const queue = uniqueQueue();
    const id = await client.submit("add", [2, { x: [1, "y"] }], {
      queue,
      priority: 7,
      maxRetries: 3,
      headers: { traceparent: "00-abc" },
      kwargs: { scale: 1.5 },
    });
    assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    const task = await client.get(id);
    assert.equal(task.id, id);
    assert.equal(task.name, "add");
    assert.equal(task.state, TaskState.QUEUED);
    assert.equal(task.queue, queue);
    assert.deepEqual(
      task.args.map((payload) => fromPayload(payload)),
      [2, { x: [1, "y"] }],
    );
    assert.equal(task.args[0]!.contentType, "application/json");
    assert.equal(fromPayload(task.kwargs["scale"]!), 1.5);
    assert.equal(task.options?.priority, 7);
    assert.equal(task.options?.retry?.maxRetries, 3);
    assert.equal(task.options?.headers["traceparent"], "00-abc");
  });

  test("a countdown makes the task SCHEDULED", async () => {
    const id = await client.submit("add", [1, 1], { queue: uniqueQueue(), countdownMs: 60_000 });
    const task = await client.get(id);
    assert.equal(task.state, TaskState.SCHEDULED);
    assert.ok(task.dueAt !== undefined);
  });

  test("an idempotency key returns the first task's id", async () => {
    const key = `idem-${Date.now()}-${Math.random()}`;
    const queue = uniqueQueue();
    const first = await client.submit("add", [1, 2], { queue, idempotencyKey: key });
    const second = await client.submit("add", [1, 2], { queue, idempotencyKey: key });
    assert.equal(second, first);
  });

  test("submitMany sends 1000 tasks per call and returns every id in order", async () => {
    const queue = uniqueQueue();
    const tasks = Array.from({ length: 2100 }, (_, index) => ({ name: "add", args: [index, 1], queue }));
    const ids = await client.submitMany(tasks);
    assert.equal(ids.length, 2100);
    assert.equal(new Set(ids).size, 2100);
    for (const index of [0, 999, 1000, 2099]) {
      const task = await client.get(ids[index]!);
      assert.deepEqual(fromPayload(task.args[0]!), index);
    }
    assert.deepEqual(await client.submitMany([]), []);
  });

  test("an empty task name is INVALID_ARGUMENT", async () => {
    await assert.rejects(client.submit("", [1]), (error: unknown) => {
      assert.ok(error instanceof ConveyorError);
      assert.equal(error.code, Code.InvalidArgument);
      assert.equal(error.codeName, "INVALID_ARGUMENT");
      assert.match(error.message, /name/);
      return true;
    });
    await assert.rejects(client.submitMany([{ name: "ok" }, { name: "" }]), {
      name: "ConveyorError",
      code: Code.InvalidArgument,
    });
  });

  test("an unknown id is NOT_FOUND for get, wait, watch and cancel", async () => {
    const unknown = "01900000-0000-7000-8000-000000000000";
    const isNotFound = (error: unknown): boolean => error instanceof ConveyorError && error.code === Code.NotFound;
    await assert.rejects(client.get(unknown), isNotFound);
    await assert.rejects(client.wait(unknown, { timeoutMs: 2000 }), isNotFound);
    await assert.rejects(async () => {
      for await (const _ of client.watch(unknown)) {
        // nothing
      }
    }, isNotFound);
    await assert.rejects(client.cancel(unknown), isNotFound);
  });

  test("wait times out with DEADLINE_EXCEEDED as a ConveyorTimeoutError", async () => {
    const id = await client.submit("nobody-runs-this", [], { queue: uniqueQueue() });
    const started = Date.now();
    await assert.rejects(client.wait(id, { timeoutMs: 300 }), (error: unknown) => {
      assert.ok(error instanceof ConveyorTimeoutError);
      assert.ok(error instanceof ConveyorError);
      assert.equal(error.code, Code.DeadlineExceeded);
      assert.equal(error.name, "TimeoutError");
      return true;
    });
    const elapsed = Date.now() - started;
    assert.ok(elapsed >= 250 && elapsed < 5000, `waited ${elapsed} ms`);
    await assert.rejects(client.result(id, { timeoutMs: 100 }), ConveyorTimeoutError);
  });

  test("cancel cancels a queued task once; result then says it did not succeed", async () => {
    const id = await client.submit("nobody-runs-this", [], { queue: uniqueQueue() });
    assert.equal(await client.cancel(id), true);
    assert.equal(await client.cancel(id), false);
    const task = await client.get(id);
    assert.equal(task.state, TaskState.CANCELLED);
    assert.ok(isTerminal(task.state));
    await assert.rejects(client.result(id, { timeoutMs: 2000 }), (error: unknown) => {
      assert.ok(error instanceof TaskNotSucceededError);
      assert.equal(error.state, TaskState.CANCELLED);
      return true;
    });
  });

  test("watch streams the states up to the terminal one, and result decodes it", async () => {
    const queue = uniqueQueue();
    const id = await client.submit("add", [20, 22], { queue });
    const seen: Task[] = [];
    const watching = (async () => {
      for await (const task of client.watch(id)) seen.push(task);
    })();
    const worker = runWorker(server.addr, { queues: [queue] }, (w) => w.register("add", (_ctx, a: number, b: number) => a + b));
    try {
      await watching;
      const states = seen.map((task) => task.state);
      assert.equal(states[0], TaskState.QUEUED, `states ${states.join(",")}`);
      assert.equal(states.at(-1), TaskState.SUCCEEDED);
      assert.equal(states.filter((state) => isTerminal(state)).length, 1);
      assert.equal(await client.result<number>(id, { timeoutMs: 5000 }), 42);
      const done = await client.wait(id, { timeoutMs: 5000 });
      assert.equal(done.state, TaskState.SUCCEEDED);
      assert.equal(done.attempt, 1);
    } finally {
      await worker.stop();
    }
  });

  test("result of a failed task is a TaskFailedError with the handler's error", async () => {
    const queue = uniqueQueue();
    const worker = runWorker(server.addr, { queues: [queue] }, (w) =>
      w.register("explode", () => {
        throw new RangeError("out of range");
      }),
    );
    try {
      const id = await client.submit("explode", [], { queue });
      await assert.rejects(client.result(id, { timeoutMs: 10_000 }), (error: unknown) => {
        assert.ok(error instanceof TaskFailedError);
        assert.equal(error.taskId, id);
        assert.equal(error.type, "RangeError");
        assert.equal(error.message, "out of range");
        assert.match(error.traceback, /RangeError: out of range\n\s+at /);
        assert.equal(String(error), `TaskFailedError: task ${id} failed: RangeError: out of range`);
        return true;
      });
    } finally {
      await worker.stop();
    }
  });

  test("an aborted call rejects with CANCELED", async () => {
    const id = await client.submit("nobody-runs-this", [], { queue: uniqueQueue() });
    const controller = new AbortController();
    const waiting = client.wait(id, { timeoutMs: 10_000, signal: controller.signal });
    setTimeout(() => controller.abort(), 50);
    await assert.rejects(waiting, { code: Code.Canceled });
  });

  test("a server that is not there is UNAVAILABLE", async () => {
    const nowhere = new Client("http://127.0.0.1:1");
    try {
      await assert.rejects(nowhere.get("01900000-0000-7000-8000-000000000000"), { code: Code.Unavailable });
    } finally {
      nowhere.close();
    }
  });
});
