// Failover and automatic retries against real `conveyor dev` servers: a
// client and a worker given several addresses keep working when one server
// dies; safe calls are retried on UNAVAILABLE, unsafe ones are not.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Client, Code, ConveyorError, TaskState, parseAddresses } from "../src/index.js";
import { runWorker, startServer, uniqueQueue, waitFor } from "../testkit/helpers.js";
import type { Server } from "../testkit/helpers.js";

/** An address where nothing listens (port 1 refuses connections). */
const DEAD = "http://127.0.0.1:1";

let secondary: Server;
/** A client of the secondary server alone. */
let direct: Client;

before(async () => {
  secondary = await startServer();
  direct = new Client(secondary.addr);
});

after(async () => {
  direct?.close();
  await secondary?.stop();
});

describe("failover", () => {
  test("addresses: comma-separated or an array, scheme-less means http", () => {
    assert.deepEqual(
      parseAddresses("127.0.0.1:5, http://b:6 ,https://c:7").map((url) => url.href),
      ["http://127.0.0.1:5/", "http://b:6/", "https://c:7/"],
    );
    assert.deepEqual(parseAddresses(["a:1", "b:2"]).map((url) => url.host), ["a:1", "b:2"]);
    assert.throws(() => parseAddresses(""), /no Conveyor address given/);
    assert.throws(() => parseAddresses("ftp://x:1"), /scheme must be http/);
  });

  test("reads and keyed submissions fail over to the next address; the dead one is skipped afterwards", async () => {
    const client = new Client([DEAD, secondary.addr]);
    try {
      const id = await client.submit("add", [1, 2], { queue: uniqueQueue() }); // carries an automatic idempotency key
      assert.equal((await client.get(id)).state, TaskState.QUEUED);
      assert.equal(await client.cancel(id), true, "later calls go straight to the live address");
    } finally {
      client.close();
    }
  });

  test("an unsafe call is not retried: it fails UNAVAILABLE saying so, and the next call fails over", async () => {
    const client = new Client([DEAD, secondary.addr]);
    try {
      const id = await direct.submit("add", [1, 1], { queue: uniqueQueue() });
      await assert.rejects(client.cancel(id), (error: unknown) => {
        assert.ok(error instanceof ConveyorError);
        assert.equal(error.code, Code.Unavailable);
        assert.match(error.message, /not retried automatically.*then call again/);
        return true;
      });
      assert.equal(await client.cancel(id), true);
    } finally {
      client.close();
    }
  });

  test("retries are bounded: with every address down, a read fails after maxAttempts with a hint", async () => {
    const client = new Client([DEAD, "http://127.0.0.1:2"], { retry: { maxAttempts: 4, initialBackoffMs: 10, maxBackoffMs: 40 } });
    try {
      const started = Date.now();
      await assert.rejects(client.get("01900000-0000-7000-8000-000000000000"), (error: unknown) => {
        assert.ok(error instanceof ConveyorError);
        assert.equal(error.code, Code.Unavailable);
        assert.match(error.message, /after 4 attempts; is Conveyor running and reachable at 127\.0\.0\.1:1, 127\.0\.0\.1:2\?/);
        return true;
      });
      assert.ok(Date.now() - started < 5000);
    } finally {
      client.close();
    }
  });

  test("a submission without an idempotency key is not retried", async () => {
    const client = new Client([DEAD, secondary.addr], { autoIdempotencyKey: false });
    try {
      await assert.rejects(client.submit("add", [1, 1], { queue: uniqueQueue() }), { code: Code.Unavailable });
      const id = await client.submit("add", [1, 1], { queue: uniqueQueue() });
      assert.equal((await direct.get(id)).state, TaskState.QUEUED);
    } finally {
      client.close();
    }
  });

  test("a worker given two addresses moves to the second when the first server is killed", async () => {
    const doomed = await startServer();
    const queue = uniqueQueue();
    const worker = runWorker([doomed.addr, secondary.addr].join(","), { queues: [queue] }, (w) =>
      w.register("add", (_ctx, a: number, b: number) => a + b),
    );
    const onDoomed = new Client(doomed.addr);
    const onSecondary = direct;
    try {
      const first = await onDoomed.submit("add", [1, 1], { queue });
      assert.equal(await onDoomed.result(first, { timeoutMs: 10_000 }), 2, "served by the first address");
      doomed.kill();
      const second = await onSecondary.submit("add", [2, 2], { queue });
      assert.equal(await onSecondary.result(second, { timeoutMs: 15_000 }), 4, "served after failing over");
      await waitFor(async () => (await onSecondary.listWorkers()).some((info) => info.workerId === worker.worker.workerId), "the worker on the second server");
    } finally {
      onDoomed.close();
      await worker.stop();
      await doomed.stop();
    }
  });

  test("a client given two addresses keeps reading when the first server is killed", async () => {
    const doomed = await startServer();
    const client = new Client([doomed.addr, secondary.addr]);
    try {
      const before = await client.submit("add", [1, 1], { queue: uniqueQueue() });
      assert.equal((await client.get(before)).state, TaskState.QUEUED);
      doomed.kill();
      const id = await client.submit("add", [3, 3], { queue: uniqueQueue() });
      assert.equal((await client.get(id)).state, TaskState.QUEUED, "submitted and read on the second server");
      await assert.rejects(direct.get(before), { code: Code.NotFound }, "the second server has its own store");
    } finally {
      client.close();
      await doomed.stop();
    }
  });
});
