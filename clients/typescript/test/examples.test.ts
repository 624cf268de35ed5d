// The example programs: those the cross-language matrix runs (the producer
// against the example worker, the worker's graceful exit on SIGTERM, this
// client against the Rust example worker) and the dining philosophers.

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { Client, RawPayload, TaskFailedError, TaskState } from "../src/index.js";
import {
  examplePhilosophers,
  exampleProducer,
  exampleWorker,
  packageRoot,
  spawnNode,
  startServer,
  stopProcess,
  uniqueQueue,
  waitFor,
} from "../testkit/helpers.js";
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

describe("examples", () => {
  test("the producer prints the matrix line for the example worker", async () => {
    const queue = uniqueQueue("matrix");
    const env = { CONVEYOR_ADDR: server.addr, CONVEYOR_QUEUE: queue };
    const worker = spawnNode(exampleWorker, { ...env, CONVEYOR_CONCURRENCY: "4", CONVEYOR_WORKER_ID: "ts-example-1" });
    try {
      const producer = spawnNode(exampleProducer, env);
      const [code] = await producer.exit;
      assert.equal(code, 0, `producer failed: ${producer.stderr()}`);
      const lines = producer.stdout().split("\n").filter((line) => line.length > 0);
      assert.equal(lines.length, 1, producer.stdout());
      assert.deepEqual(JSON.parse(lines[0]!), {
        producer: "typescript",
        add: 5,
        xsum: 6.5,
        lang: "typescript",
        fail: { type: "ValueError", message: "boom from typescript", has_traceback: true },
      });
      assert.equal(
        lines[0],
        '{"producer": "typescript", "add": 5, "xsum": 6.5, "lang": "typescript", ' +
          '"fail": {"type": "ValueError", "message": "boom from typescript", "has_traceback": true}}',
      );

      // Integers stay integers, a float makes a float, even when whole.
      const [big, whole, mixed] = await client.submitMany([
        { name: "add", args: [RawPayload.json("9007199254740993"), 1], queue },
        { name: "xsum", args: [[1.5, 1.5]], queue },
        { name: "add", args: [2, 0.5], queue },
      ]);
      const bigTask = await client.wait(big!, { timeoutMs: 10_000 });
      assert.equal(new TextDecoder().decode(bigTask.result!.data), "9007199254740994");
      const wholeTask = await client.wait(whole!, { timeoutMs: 10_000 });
      assert.equal(new TextDecoder().decode(wholeTask.result!.data), "3.0");
      assert.equal(await client.result(mixed!, { timeoutMs: 10_000 }), 2.5);
      const worker2 = await client.get(big!);
      assert.equal(worker2.workerId, "ts-example-1");
    } finally {
      await stopProcess(worker.child);
    }
    const [code, signal] = await worker.exit;
    assert.equal(signal, null);
    assert.equal(code, 0, `worker stderr: ${worker.stderr()}`);
  });

  test("the example worker drains on SIGTERM: the running sleep finishes, exit code 0", async () => {
    const queue = uniqueQueue("drain");
    const worker = spawnNode(exampleWorker, { CONVEYOR_ADDR: server.addr, CONVEYOR_QUEUE: queue });
    try {
      const id = await client.submit("sleep", [0.5], { queue });
      await waitFor(async () => (await client.get(id)).state === TaskState.RUNNING, "the sleep to start");
      worker.child.kill("SIGTERM");
      const [code, signal] = await worker.exit;
      assert.equal(signal, null);
      assert.equal(code, 0, worker.stderr());
      const task = await client.wait(id, { timeoutMs: 5000 });
      assert.equal(task.state, TaskState.SUCCEEDED);
      assert.equal(new TextDecoder().decode(task.result!.data), "null");
    } finally {
      worker.child.kill("SIGKILL");
    }
  });

  test("the dining philosophers all eat, at most two at once, no fork held by two", async () => {
    const run = spawnNode(examplePhilosophers, { CONVEYOR_ADDR: server.addr, CONVEYOR_QUEUE: uniqueQueue("philosophers") });
    const [code] = await run.exit;
    assert.equal(code, 0, `philosophers failed: ${run.stdout()}${run.stderr()}`);
    const lines = run.stdout().trim().split("\n");
    assert.deepEqual(
      lines.slice(0, 5),
      [0, 1, 2, 3, 4].map((i) => `philosopher ${i} ate 5 meals`),
    );
    const most = /^most eating at once: (\d+)$/.exec(lines[5] ?? "");
    assert.ok(most !== null && Number(most[1]) >= 1 && Number(most[1]) <= 2, run.stdout());
    assert.deepEqual(lines.slice(6), ["fork held by two at once: never"]);
  });

  const rustWorker =
    process.env["CONVEYOR_RUST_WORKER"] || resolve(packageRoot, "..", "..", "target", "debug", "examples", "worker");
  test("this client drives the Rust example worker", { skip: !existsSync(rustWorker) && "no Rust example worker built" }, async () => {
    // The Rust example consumes the "default" queue, which no other test here uses.
    const { spawn } = await import("node:child_process");
    const child = spawn(rustWorker, [], {
      stdio: ["ignore", "ignore", "pipe"],
      env: { ...process.env, CONVEYOR_ADDR: server.addr, CONVEYOR_CONCURRENCY: "2", RUST_LOG: "warn" },
    });
    try {
      const [add, xsum, fail] = await client.submitMany([
        { name: "add", args: [2, 3] },
        { name: "xsum", args: [[1, 2, 3.5]] },
        { name: "fail", args: ["boom from typescript"] },
      ]);
      assert.equal(await client.result(add!, { timeoutMs: 20_000 }), 5);
      assert.equal(await client.result(xsum!, { timeoutMs: 20_000 }), 6.5);
      await assert.rejects(client.result(fail!, { timeoutMs: 20_000 }), (error: unknown) => {
        assert.ok(error instanceof TaskFailedError);
        assert.equal(error.type, "ValueError");
        assert.equal(error.message, "boom from typescript");
        return true;
      });
    } finally {
      await stopProcess(child);
    }
  });
});
