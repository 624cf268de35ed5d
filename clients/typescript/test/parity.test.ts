// The parity table's rows (one test each, named `parity_<row>`), against a
// real `conveyor dev`: the same feature set every SDK of Conveyor offers.

import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { after, before, describe, test } from "node:test";
import {
  Client,
  Code,
  ConveyorError,
  TaskCancelledError,
  TaskFailure,
  TaskState,
  Worker,
  fromPayload,
  isTerminal,
  silentLogger,
} from "../src/index.js";
import type { ConcurrencyKey, Task } from "../src/index.js";
import { runWorker, startServer, uniqueQueue, waitFor } from "../testkit/helpers.js";
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

/** A promise with its resolve function, to hold a handler until the test lets it go. */
function gate(): { promise: Promise<void>; open: () => void } {
  let open = (): void => {};
  const promise = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

describe("parity: client", () => {
  test("parity_submit: submit returns an id; the task is stored with its arguments and options", async () => {
    const queue = uniqueQueue();
    const id = await client.submit("add", [1, 2], { queue, priority: 3, maxRetries: 2 });
    const task = await client.get(id);
    assert.equal(task.name, "add");
    assert.equal(task.queue, queue);
    assert.equal(task.state, TaskState.QUEUED);
    assert.deepEqual(task.args.map((payload) => fromPayload(payload)), [1, 2]);
    assert.equal(task.options?.retry?.maxRetries, 2);
  });

  test("parity_submit_many: submitMany returns one id per task, in order", async () => {
    const queue = uniqueQueue();
    const ids = await client.submitMany([0, 1, 2].map((i) => ({ name: "add", args: [i, i], queue })));
    assert.equal(new Set(ids).size, 3);
    for (const [index, id] of ids.entries()) {
      assert.deepEqual(fromPayload((await client.get(id)).args[0]!), index);
    }
  });

  test("parity_get: get reads the task's state and, once finished, its result", async () => {
    const queue = uniqueQueue();
    const worker = runWorker(server.addr, { queues: [queue] }, (w) => w.register("add", (_ctx, a: number, b: number) => a + b));
    try {
      const id = await client.submit("add", [40, 2], { queue });
      const task = await waitFor(async () => {
        const current = await client.get(id);
        return current.state === TaskState.SUCCEEDED ? current : undefined;
      }, "the task to succeed");
      assert.equal(fromPayload(task.result!), 42);
      await assert.rejects(client.get("01900000-0000-7000-8000-000000000000"), { code: Code.NotFound });
    } finally {
      await worker.stop();
    }
  });

  test("parity_wait: wait returns the terminal task; result decodes it", async () => {
    const queue = uniqueQueue();
    const worker = runWorker(server.addr, { queues: [queue] }, (w) => w.register("mul", (_ctx, a: number, b: number) => a * b));
    try {
      const id = await client.submit("mul", [6, 7], { queue });
      const task = await client.wait(id, { timeoutMs: 10_000 });
      assert.equal(task.state, TaskState.SUCCEEDED);
      assert.equal(await client.result<number>(id, { timeoutMs: 10_000 }), 42);
    } finally {
      await worker.stop();
    }
  });

  test("parity_watch: watch yields the states up to the terminal one", async () => {
    const queue = uniqueQueue();
    const id = await client.submit("add", [1, 1], { queue });
    const seen: TaskState[] = [];
    const watching = (async () => {
      for await (const task of client.watch(id)) seen.push(task.state);
    })();
    await waitFor(() => seen.length > 0, "the first snapshot");
    const worker = runWorker(server.addr, { queues: [queue] }, (w) => w.register("add", (_ctx, a: number, b: number) => a + b));
    try {
      await watching;
      assert.equal(seen[0], TaskState.QUEUED);
      assert.equal(seen.at(-1), TaskState.SUCCEEDED);
    } finally {
      await worker.stop();
    }
  });

  test("parity_cancel: cancel revokes a queued task; it never runs", async () => {
    const id = await client.submit("add", [1, 1], { queue: uniqueQueue() });
    assert.equal(await client.cancel(id), true);
    assert.equal((await client.get(id)).state, TaskState.CANCELLED);
    assert.equal(await client.cancel(id), false, "a finished task is left as it is");
  });

  test("parity_replay: replay queues a FAILED task again under the same id", async () => {
    const queue = uniqueQueue();
    let calls = 0;
    const worker = runWorker(server.addr, { queues: [queue] }, (w) =>
      w.register("flaky", () => {
        calls += 1;
        if (calls === 1) throw new TaskFailure("ValueError", "first call fails", { retryable: false });
        return "second call works";
      }),
    );
    try {
      const id = await client.submit("flaky", [], { queue });
      assert.equal((await client.wait(id, { timeoutMs: 10_000 })).state, TaskState.FAILED);
      assert.equal(await client.replay(id), TaskState.QUEUED);
      assert.equal(await client.result(id, { timeoutMs: 10_000 }), "second call works");
      await assert.rejects(client.replay(id), { code: Code.FailedPrecondition });
    } finally {
      await worker.stop();
    }
  });

  test("parity_forget: forget deletes a finished task's record", async () => {
    const id = await client.submit("add", [1, 1], { queue: uniqueQueue() });
    await client.cancel(id);
    await client.forget(id);
    await assert.rejects(client.get(id), { code: Code.NotFound });
  });

  test("parity_dead_letters: a task that ends FAILED is listed among the dead letters", async () => {
    const queue = uniqueQueue();
    const worker = runWorker(server.addr, { queues: [queue] }, (w) =>
      w.register("doomed", (_ctx, n: number) => {
        throw new TaskFailure("ValueError", `doomed ${n}`, { retryable: false });
      }),
    );
    try {
      const ids = await client.submitMany([1, 2, 3].map((n) => ({ name: "doomed", args: [n], queue })));
      for (const id of ids) assert.equal((await client.wait(id, { timeoutMs: 10_000 })).state, TaskState.FAILED);
      const listed: Task[] = [];
      for await (const task of client.deadLetters({ pageSize: 2 })) if (ids.includes(task.id)) listed.push(task);
      assert.deepEqual(listed.map((task) => task.id).sort(), [...ids].sort());
      assert.ok(listed.every((task) => task.state === TaskState.FAILED && task.error?.type === "ValueError"));
      const page = await client.listDeadLetters({ pageSize: 1 });
      assert.equal(page.tasks.length, 1);
      assert.notEqual(page.nextPageToken, "");
    } finally {
      await worker.stop();
    }
  });

  test("parity_schedules_crud: create, get, list, update, pause, resume, trigger, runs, delete", async () => {
    const queue = uniqueQueue();
    const id = `ts-parity-${queue}`;
    const created = await client.createSchedule({ id, task: "tick", args: [1], everyMs: 3_600_000, options: { queue } });
    assert.equal(created.id, id);
    assert.equal(created.rule.case, "interval");
    assert.ok(created.nextRunAt !== undefined);
    await assert.rejects(client.createSchedule({ id, task: "tick", everyMs: 60_000 }), { code: Code.AlreadyExists });
    assert.equal((await client.getSchedule(id)).task?.name, "tick");
    assert.ok((await client.listSchedules()).some((schedule) => schedule.id === id));
    const updated = await client.updateSchedule({ id, task: "tock", cron: "0 3 * * *", timeZone: "Europe/Berlin", options: { queue } });
    assert.equal(updated.rule.case, "cron");
    assert.equal(updated.task?.name, "tock");
    assert.equal((await client.pauseSchedule(id)).paused, true);
    assert.equal((await client.resumeSchedule(id)).paused, false);
    const run = await client.triggerSchedule(id);
    assert.equal(run.triggered, true);
    const task = await client.get(run.taskId);
    assert.equal(task.name, "tock");
    assert.equal(task.queue, queue);
    assert.ok((await client.listScheduleRuns(id)).some((entry) => entry.taskId === run.taskId));
    await client.deleteSchedule(id);
    await assert.rejects(client.getSchedule(id), { code: Code.NotFound });
  });

  test("parity_pause_queue: a paused queue's tasks wait until it is resumed", async () => {
    const paused = uniqueQueue("paused");
    const open = uniqueQueue("open");
    await client.pauseQueue(paused);
    const worker = runWorker(server.addr, { queues: [paused, open] }, (w) => w.register("add", (_ctx, a: number, b: number) => a + b));
    try {
      const held = await client.submit("add", [1, 1], { queue: paused });
      const passing = await client.submit("add", [2, 2], { queue: open });
      // The worker is serving: the open queue's task, submitted later, finishes.
      assert.equal(await client.result(passing, { timeoutMs: 10_000 }), 4);
      assert.equal((await client.get(held)).state, TaskState.QUEUED);
      await client.resumeQueue(paused);
      assert.equal(await client.result(held, { timeoutMs: 10_000 }), 2);
    } finally {
      await worker.stop();
    }
  });
});

describe("parity: concurrency", () => {
  test("parity_concurrency_keys: tasks sharing a limit-1 key never overlap; invalid keys are INVALID_ARGUMENT", async () => {
    const queue = uniqueQueue();
    // Three tasks in a ring of keys with limit 1: each pair shares a key, so
    // no two may ever run at once, though the worker has slots for all.
    const k = [0, 1, 2].map((i) => ({ key: `${queue}:k${i}`, limit: 1 }));
    const needs: Record<string, ConcurrencyKey[]> = { A: [k[0]!, k[1]!], B: [k[1]!, k[2]!], C: [k[2]!, k[0]!] };
    const spans: Record<string, [number, number]> = {};
    const worker = runWorker(server.addr, { queues: [queue], concurrency: 4 }, (w) =>
      w.register("hold", async (_ctx, name: string) => {
        const start = performance.now();
        await sleep(100);
        spans[name] = [start, performance.now()];
        return name;
      }),
    );
    try {
      const ids = await Promise.all(
        Object.entries(needs).map(([name, concurrencyKeys]) => client.submit("hold", [name], { queue, concurrencyKeys })),
      );
      const results = await Promise.all(ids.map((id) => client.result(id, { timeoutMs: 15_000 })));
      assert.deepEqual(results, ["A", "B", "C"]);
      const ordered = Object.values(spans).sort((a, b) => a[0] - b[0]);
      for (let i = 1; i < ordered.length; i++) {
        assert.ok(ordered[i]![0] >= ordered[i - 1]![1], `tasks sharing a key overlapped: ${JSON.stringify(spans)}`);
      }
      const stored = (await client.get(ids[2]!)).options?.concurrencyKeys.map(({ key, limit }) => ({ key, limit }));
      assert.deepEqual(stored, needs["C"]);
    } finally {
      await worker.stop();
    }

    const invalid: [ConcurrencyKey[], string][] = [
      [[{ key: "a", limit: 1 }, { key: "a", limit: 1 }], "concurrency_keys[1].key"],
      [[{ key: "a", limit: 0 }], "concurrency_keys[0].limit"],
    ];
    for (const [concurrencyKeys, field] of invalid) {
      await assert.rejects(client.submit("hold", ["X"], { queue, concurrencyKeys }), (error: unknown) => {
        assert.ok(error instanceof ConveyorError);
        assert.equal(error.code, Code.InvalidArgument);
        assert.ok(error.rawMessage.includes(field), error.rawMessage);
        return true;
      });
    }
  });
});

describe("parity: worker", () => {
  test("parity_progress: ctx.updateState reaches the task's progress while it runs", async () => {
    const queue = uniqueQueue();
    const release = gate();
    const worker = runWorker(server.addr, { queues: [queue] }, (w) =>
      w.register("download", async (ctx) => {
        ctx.updateState({ state: "DOWNLOADING", percent: 50, meta: { done: 5, of: 10 } });
        await release.promise;
        return "done";
      }),
    );
    try {
      const id = await client.submit("download", [], { queue });
      const task = await waitFor(async () => {
        const current = await client.get(id);
        return current.progress?.state === "DOWNLOADING" ? current : undefined;
      }, "the progress report");
      assert.equal(task.state, TaskState.RUNNING);
      assert.equal(task.progress?.percent, 50);
      assert.deepEqual(fromPayload(task.progress!.meta!), { done: 5, of: 10 });
      assert.ok(task.progress?.reportedAt !== undefined);
      release.open();
      assert.equal(await client.result(id, { timeoutMs: 10_000 }), "done");
    } finally {
      release.open();
      await worker.stop();
    }
  });

  test("parity_retry_delay: throw ctx.retry({ countdownMs }) runs the next attempt after that delay", async () => {
    const queue = uniqueQueue();
    const starts: number[] = [];
    const worker = runWorker(server.addr, { queues: [queue] }, (w) =>
      w.register("later", (ctx) => {
        starts.push(Date.now());
        if (ctx.attempt === 1) throw ctx.retry({ countdownMs: 800, message: "not yet" });
        return ctx.attempt;
      }),
    );
    try {
      // The policy's own backoff is 10 ms: only the requested countdown explains the gap.
      const id = await client.submit("later", [], { queue, retry: { maxRetries: 2, backoffBaseMs: 10 } });
      assert.equal(await client.result(id, { timeoutMs: 10_000 }), 2);
      const gap = starts[1]! - starts[0]!;
      assert.ok(gap >= 750, `second attempt ${gap} ms after the first`);
      const task = await client.get(id);
      assert.equal(task.failures, 1);
    } finally {
      await worker.stop();
    }
  });

  test("parity_soft_limit: the soft time limit aborts ctx.signal and the task fails SoftTimeLimitExceeded", async () => {
    const queue = uniqueQueue();
    let reason: unknown;
    const worker = runWorker(server.addr, { queues: [queue] }, (w) =>
      w.register("slow", async (ctx) => {
        try {
          await sleep(30_000, undefined, { signal: ctx.signal });
        } finally {
          reason = ctx.signal.reason;
        }
      }),
    );
    try {
      const started = Date.now();
      const id = await client.submit("slow", [], { queue, softTimeLimitMs: 300 });
      const task = await client.wait(id, { timeoutMs: 10_000 });
      assert.equal(task.state, TaskState.FAILED);
      assert.equal(task.error?.type, "SoftTimeLimitExceeded");
      assert.ok(reason instanceof TaskCancelledError && reason.kind === "soft-time-limit");
      assert.ok(Date.now() - started < 5000);
    } finally {
      await worker.stop();
    }
  });

  test("parity_revoke: cancelling a running task aborts its handler's signal; it ends CANCELLED", async () => {
    const queue = uniqueQueue();
    const started = gate();
    let reason: unknown;
    const worker = runWorker(server.addr, { queues: [queue] }, (w) =>
      w.register("long", async (ctx) => {
        started.open();
        try {
          await sleep(30_000, undefined, { signal: ctx.signal });
        } finally {
          reason = ctx.signal.reason;
        }
      }),
    );
    try {
      const id = await client.submit("long", [], { queue });
      await started.promise;
      await waitFor(async () => (await client.get(id)).state === TaskState.RUNNING, "the task to run");
      assert.equal(await client.cancel(id), true);
      await waitFor(() => reason !== undefined, "the handler's signal to abort");
      assert.ok(reason instanceof TaskCancelledError && reason.kind === "cancelled", String(reason));
      assert.equal((await client.wait(id, { timeoutMs: 5000 })).state, TaskState.CANCELLED);
    } finally {
      await worker.stop();
    }
  });

  test("parity_drain: stopping the worker lets the running task finish; queued work stays queued", async () => {
    const queue = uniqueQueue();
    const started = gate();
    const worker = runWorker(server.addr, { queues: [queue], concurrency: 1 }, (w) =>
      w.register("work", async (_ctx, ms: number) => {
        started.open();
        await sleep(ms);
        return ms;
      }),
    );
    const first = await client.submit("work", [400], { queue });
    await started.promise;
    const second = await client.submit("work", [1], { queue });
    await worker.stop();
    assert.equal((await client.get(first)).state, TaskState.SUCCEEDED);
    assert.equal(await client.result(first, { timeoutMs: 1000 }), 400);
    const waiting = await client.get(second);
    assert.ok(!isTerminal(waiting.state), `second task is ${TaskState[waiting.state]}`);
    assert.equal(await client.cancel(second), true);
  });

  test("parity_namespace: a task of namespace A runs on A's worker only; B cannot see it; each namespace lists its own workers", async () => {
    const [nsA, nsB] = [uniqueQueue("ns-a"), uniqueQueue("ns-b")];
    const queue = uniqueQueue();
    const clientA = new Client(server.addr, { namespace: nsA });
    const clientB = new Client(server.addr, { namespace: nsB });
    const ranInB: string[] = [];
    // Same queue, same task name in both namespaces; each handler says where it ran.
    const workerB = runWorker(server.addr, { namespace: nsB, queues: [queue], workerId: `${nsB}-worker` }, (w) =>
      w.register("where", (ctx) => {
        ranInB.push(ctx.taskId);
        return "B";
      }),
    );
    let workerA: ReturnType<typeof runWorker> | undefined;
    try {
      assert.equal(clientA.namespace, nsA);
      assert.equal(workerB.worker.namespace, nsB);
      const idA = await clientA.submit("where", [], { queue });
      assert.equal((await clientA.get(idA)).namespace, nsA);
      // B's worker is serving (it runs B's task, submitted after A's) and never takes A's.
      const idB = await clientB.submit("where", [], { queue });
      assert.equal(await clientB.result(idB, { timeoutMs: 10_000 }), "B");
      assert.equal((await clientA.get(idA)).state, TaskState.QUEUED);
      assert.deepEqual(ranInB, [idB]);
      // A task id of A read from B is NOT_FOUND, as if it did not exist.
      await assert.rejects(clientB.get(idA), { code: Code.NotFound });
      await assert.rejects(clientA.get(idB), { code: Code.NotFound });

      workerA = runWorker(server.addr, { namespace: nsA, queues: [queue], workerId: `${nsA}-worker` }, (w) =>
        w.register("where", () => "A"),
      );
      assert.equal(await clientA.result(idA, { timeoutMs: 10_000 }), "A");
      assert.deepEqual(ranInB, [idB]);
      assert.deepEqual((await clientB.listWorkers()).map((info) => [info.workerId, info.namespace]), [[`${nsB}-worker`, nsB]]);
      assert.deepEqual((await clientA.listWorkers()).map((info) => [info.workerId, info.namespace]), [[`${nsA}-worker`, nsA]]);
    } finally {
      await workerA?.stop();
      await workerB.stop();
      clientA.close();
      clientB.close();
    }
  });

  test("parity_token: a server that requires a token accepts clients and workers that send it", async () => {
    const guarded = await startServer(["--auth-token", "s3cret"]);
    const withToken = new Client(guarded.addr, { token: "s3cret" });
    const without = new Client(guarded.addr);
    try {
      await assert.rejects(without.submit("add", [1, 1]), (error: unknown) => {
        assert.ok(error instanceof ConveyorError);
        assert.equal(error.code, Code.Unauthenticated);
        return true;
      });
      const refused = new Worker(guarded.addr, { logger: silentLogger });
      refused.register("add", (_ctx, a: number, b: number) => a + b);
      await assert.rejects(refused.run({ handleSignals: false }), { code: Code.Unauthenticated });
      const queue = uniqueQueue();
      const worker = runWorker(guarded.addr, { queues: [queue], token: "s3cret" }, (w) =>
        w.register("add", (_ctx, a: number, b: number) => a + b),
      );
      try {
        const id = await withToken.submit("add", [20, 22], { queue });
        assert.equal(await withToken.result(id, { timeoutMs: 10_000 }), 42);
      } finally {
        await worker.stop();
      }
    } finally {
      withToken.close();
      without.close();
      await guarded.stop();
    }
  });
});
