// Eager mode (parity row eager_mode): tasks run in-process at submit, with no
// server, through the same handler invocation, retries and errors.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Code, EagerClient, TaskFailedError, TaskFailure, TaskState, fromPayload } from "../src/index.js";

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
