// Split roles against real processes: `conveyor serve results`, `dispatch`,
// `scheduling` and `submission` run as four processes on one Redis. A client
// and a worker given one endpoint per service (the `endpoints` option or the
// CONVEYOR_<SERVICE>_ADDR variables) work with them; given only the
// submission process's address (no --peer), a results call fails
// UNIMPLEMENTED saying which address it called and what to set; and a fifth
// process, a submission role with --peer for the other three, serves the
// same client and worker at one address.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import {
  Client,
  Code,
  ConveyorError,
  SERVICE_ADDRESS_ENV,
  SERVICE_NAMES,
  TaskCancelledError,
  TaskState,
  Worker,
  silentLogger,
} from "../src/index.js";
import type { ServiceName, Task, WorkerOptions } from "../src/index.js";
import { resolveServiceAddresses } from "../src/transport.js";
import { exampleProducer, exampleWorker, runWorker, spawnNode, startRoles, stopProcess, testRedisUrl, uniqueQueue, waitFor } from "../testkit/helpers.js";
import type { RunningWorker, Server } from "../testkit/helpers.js";

/** An address where nothing listens (port 1 refuses connections). */
const DEAD = "http://127.0.0.1:1";

const redis = testRedisUrl();
const skip = redis === undefined ? "CONVEYOR_SKIP_REDIS=1" : false;

/** One process per role, on one Redis prefix. */
let roles: Record<ServiceName, Server>;
/** A submission process that forwards the other roles to those processes (--peer). */
let gateway: Server;

before(async () => {
  if (redis === undefined) return;
  const prefix = `ts-split-${process.pid}-${Date.now().toString(36)}:`;
  const started = await Promise.all(SERVICE_NAMES.map((role) => startRoles([role], redis, prefix)));
  roles = Object.fromEntries(SERVICE_NAMES.map((role, index) => [role, started[index]!])) as Record<ServiceName, Server>;
  gateway = await startRoles(["submission"], redis, prefix, [
    "--peer", `results=${roles.results.addr}`,
    "--peer", `dispatch=${roles.dispatch.addr}`,
    "--peer", `scheduling=${roles.scheduling.addr}`,
  ]);
});

after(async () => {
  await Promise.all([gateway, ...Object.values(roles ?? {})].filter((server) => server !== undefined).map((server) => server.stop()));
});

/** The per-service endpoints of the four processes, for the services other than submission. */
function otherEndpoints(): { results: string; dispatch: string; scheduling: string } {
  return { results: roles.results.addr, dispatch: roles.dispatch.addr, scheduling: roles.scheduling.addr };
}

/**
 * Sets environment variables for the duration of `body`, then puts back what
 * was there.
 */
async function withEnv<T>(vars: Record<string, string | undefined>, body: () => Promise<T>): Promise<T> {
  const saved = Object.fromEntries(Object.keys(vars).map((name) => [name, process.env[name]]));
  const assign = (values: Record<string, string | undefined>): void => {
    for (const [name, value] of Object.entries(values)) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  };
  assign(vars);
  try {
    return await body();
  } finally {
    assign(saved);
  }
}

/** What a worker with the handlers of `exercise` saw. */
interface Seen {
  started: Set<string>;
  cancelled: Map<string, unknown>;
}

/** Starts a worker on `queue` with the `add` and `block` handlers of `exercise`. */
function startWorker(address: string | undefined, queue: string, options: WorkerOptions = {}): { running: RunningWorker; seen: Seen } {
  const seen: Seen = { started: new Set(), cancelled: new Map() };
  const running = runWorker(address, { queues: [queue], workerId: `split-${queue}`, ...options }, (w) => {
    w.register("add", (_ctx, a: number, b: number) => a + b);
    w.register("block", async (ctx) => {
      seen.started.add(ctx.taskId);
      await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve, { once: true }));
      seen.cancelled.set(ctx.taskId, ctx.signal.reason);
      return "stopped";
    });
  });
  return { running, seen };
}

/**
 * Submits, awaits a result, watches a task to its end, cancels a running
 * task (its handler's signal aborts), lists the worker, pauses and resumes
 * the queue and manages a schedule: every service is called.
 */
async function exercise(client: Client, running: RunningWorker, seen: Seen, queue: string): Promise<void> {
  // Submission, then results.
  const id = await client.submit("add", [2, 3], { queue });
  assert.equal(await client.result(id, { timeoutMs: 15_000 }), 5);

  // A watch (a results stream) follows a task to its end.
  const watched = await client.submit("add", [20, 22], { queue });
  const states: TaskState[] = [];
  let last: Task | undefined;
  for await (const update of client.watch(watched, { signal: AbortSignal.timeout(15_000) })) {
    states.push(update.state);
    last = update;
  }
  assert.equal(last?.state, TaskState.SUCCEEDED, `states seen: ${states.map((state) => TaskState[state]).join(", ")}`);
  assert.equal(last?.result !== undefined, true);

  // Cancel a running task: submission's CancelTask reaches the worker through dispatch.
  const blocking = await client.submit("block", [], { queue });
  await waitFor(() => seen.started.has(blocking), "the blocking task to start on the worker", 15_000);
  await waitFor(async () => (await client.get(blocking)).state === TaskState.RUNNING, "the task to be RUNNING", 15_000);
  assert.equal(await client.cancel(blocking), true);
  await waitFor(() => seen.cancelled.has(blocking), "the handler's signal to abort", 15_000);
  const reason = seen.cancelled.get(blocking);
  assert.ok(reason instanceof TaskCancelledError, `abort reason: ${String(reason)}`);
  assert.equal(reason.kind, "cancelled");
  assert.equal((await client.wait(blocking, { timeoutMs: 15_000 })).state, TaskState.CANCELLED);

  // Dispatch: the worker is listed; the queue pauses and resumes.
  const workers = await client.listWorkers();
  assert.ok(
    workers.some((info) => info.workerId === running.worker.workerId),
    `worker ${running.worker.workerId} among ${workers.map((info) => info.workerId).join(", ")}`,
  );
  await client.pauseQueue(queue);
  await client.resumeQueue(queue);

  // Scheduling.
  const scheduleId = `split-${queue}`;
  await client.createSchedule({ id: scheduleId, task: "add", args: [1, 1], everyMs: 3_600_000, options: { queue } });
  assert.equal((await client.getSchedule(scheduleId)).id, scheduleId);
  assert.ok((await client.listSchedules()).some((schedule) => schedule.id === scheduleId));
  await client.deleteSchedule(scheduleId);
  await assert.rejects(client.getSchedule(scheduleId), { code: Code.NotFound });
}

describe("split roles", { skip }, () => {
  test("parity_per_service_endpoints: the endpoints option: a client and a worker with one endpoint per service", async () => {
    const queue = uniqueQueue("split-option");
    // The general address is the submission process, which serves nothing else.
    const client = new Client(roles.submission.addr, { endpoints: otherEndpoints() });
    const { running, seen } = startWorker(roles.submission.addr, queue, { endpoints: { dispatch: roles.dispatch.addr } });
    try {
      assert.deepEqual(client.endpoints, {
        submission: [new URL(roles.submission.addr).host],
        results: [new URL(roles.results.addr).host],
        dispatch: [new URL(roles.dispatch.addr).host],
        scheduling: [new URL(roles.scheduling.addr).host],
      });
      assert.deepEqual(running.worker.addresses, [new URL(roles.dispatch.addr).host]);
      await exercise(client, running, seen, queue);
    } finally {
      client.close();
      await running.stop();
    }
  });

  test("every service at its own endpoint, none at the general address", async () => {
    const queue = uniqueQueue("split-all");
    const client = new Client(DEAD, { endpoints: { submission: roles.submission.addr, ...otherEndpoints() }, retry: false });
    const { running, seen } = startWorker(DEAD, queue, { endpoints: { dispatch: roles.dispatch.addr } });
    try {
      await exercise(client, running, seen, queue);
    } finally {
      client.close();
      await running.stop();
    }
  });

  test("without peers, the submission process answers a results call UNIMPLEMENTED, and the error says what to set", async () => {
    const client = new Client(roles.submission.addr);
    const called = roles.submission.addr;
    const expect = (service: ServiceName) => (error: unknown): boolean => {
      assert.ok(error instanceof ConveyorError, String(error));
      assert.equal(error.code, Code.Unimplemented);
      // The server's message, kept...
      assert.match(error.message, new RegExp(`^UNIMPLEMENTED: this process does not serve the ${service} role \\(conveyor\\.v1\\.`));
      assert.match(error.message, new RegExp(`--peer ${service}=URL`));
      // ...then where the call went and how to send it elsewhere.
      assert.ok(
        error.message.endsWith(
          ` (called ${called}; set ${SERVICE_ADDRESS_ENV[service]} or endpoints.${service} to reach the ${service} role elsewhere)`,
        ),
        error.message,
      );
      return true;
    };
    try {
      const id = await client.submit("add", [1, 2], { queue: uniqueQueue("split-none") });
      await assert.rejects(client.get(id), expect("results"));
      await assert.rejects(client.result(id, { timeoutMs: 1000 }), expect("results"));
      await assert.rejects((async () => {
        for await (const _ of client.watch(id)) assert.fail("the watch yielded");
      })(), expect("results"));
      await assert.rejects(client.listWorkers(), expect("dispatch"));
      await assert.rejects(client.listSchedules(), expect("scheduling"));
      assert.equal(await client.cancel(id), true, "the submission role itself answers");
      // A worker there stops with the same kind of error: reconnecting cannot fix it.
      const worker = new Worker(roles.submission.addr, { logger: silentLogger, queues: [uniqueQueue()] });
      worker.register("add", (_ctx, a: number, b: number) => a + b);
      await assert.rejects(worker.run({ handleSignals: false, signal: AbortSignal.timeout(20_000) }), expect("dispatch"));
    } finally {
      client.close();
    }
  });

  test("the environment form: CONVEYOR_<SERVICE>_ADDR, each a failover list, over CONVEYOR_ADDR", async () => {
    const queue = uniqueQueue("split-env");
    await withEnv(
      {
        CONVEYOR_ADDR: roles.submission.addr,
        // A failover list: the dead address first.
        CONVEYOR_RESULTS_ADDR: `${DEAD},${roles.results.addr}`,
        CONVEYOR_DISPATCH_ADDR: roles.dispatch.addr,
        CONVEYOR_SCHEDULING_ADDR: roles.scheduling.addr,
        CONVEYOR_SUBMISSION_ADDR: undefined,
      },
      async () => {
        const client = new Client(); // no address: CONVEYOR_ADDR, with the per-service variables over it
        const { running, seen } = startWorker(undefined, queue);
        try {
          assert.deepEqual(client.endpoints.results, ["127.0.0.1:1", new URL(roles.results.addr).host]);
          await exercise(client, running, seen, queue);
        } finally {
          client.close();
          await running.stop();
        }
      },
    );
  });

  test("precedence: the endpoints option over the variable over the general address", async () => {
    await withEnv({ CONVEYOR_RESULTS_ADDR: roles.results.addr, CONVEYOR_DISPATCH_ADDR: roles.submission.addr }, async () => {
      // The variable beats the address given: results calls reach the results process.
      const byEnv = new Client(roles.submission.addr);
      // The option beats the variable: dispatch calls reach the dispatch process, not the submission one.
      const byOption = new Client(roles.submission.addr, { endpoints: { dispatch: roles.dispatch.addr } });
      try {
        const id = await byEnv.submit("add", [1, 1], { queue: uniqueQueue("split-precedence") });
        assert.equal((await byEnv.get(id)).state, TaskState.QUEUED);
        await assert.rejects(byEnv.listWorkers(), { code: Code.Unimplemented });
        assert.ok(Array.isArray(await byOption.listWorkers()));
        assert.equal(await byEnv.cancel(id), true);
      } finally {
        byEnv.close();
        byOption.close();
      }
    });
  });

  test("programs that know nothing of split roles (the examples) run by the variables alone", async () => {
    const queue = uniqueQueue("split-examples");
    const env = {
      CONVEYOR_ADDR: roles.submission.addr,
      CONVEYOR_RESULTS_ADDR: roles.results.addr,
      CONVEYOR_DISPATCH_ADDR: roles.dispatch.addr,
      CONVEYOR_QUEUE: queue,
    };
    const worker = spawnNode(exampleWorker, { ...env, CONVEYOR_CONCURRENCY: "2" });
    try {
      const producer = spawnNode(exampleProducer, env);
      const [code] = await producer.exit;
      assert.equal(code, 0, `producer failed: ${producer.stderr()}\nworker: ${worker.stderr()}`);
      assert.deepEqual(JSON.parse(producer.stdout().trim()), {
        producer: "typescript",
        add: 5,
        xsum: 6.5,
        lang: "typescript",
        fail: { type: "ValueError", message: "boom from typescript", has_traceback: true },
      });
    } finally {
      await stopProcess(worker.child);
    }
  });

  test("one address: a submission process with --peer for the other roles serves the same client and worker", async () => {
    const queue = uniqueQueue("split-peers");
    const client = new Client(gateway.addr);
    const { running, seen } = startWorker(gateway.addr, queue);
    try {
      assert.deepEqual(new Set(Object.values(client.endpoints).map((addresses) => addresses.join(","))), new Set([new URL(gateway.addr).host]));
      await exercise(client, running, seen, queue);
    } finally {
      client.close();
      await running.stop();
    }
  });
});

describe("endpoints option and variables (no server)", () => {
  test("unknown keys throw a TypeError naming the valid ones, for the client and the worker", () => {
    const valid = /unknown service "result" in endpoints: the valid keys are submission, results, dispatch, scheduling/;
    assert.throws(() => new Client("http://127.0.0.1:1", { endpoints: { result: "http://x:1" } as never }), (error: unknown) => {
      assert.ok(error instanceof TypeError);
      assert.match(error.message, valid);
      return true;
    });
    assert.throws(() => new Worker("http://127.0.0.1:1", { endpoints: { result: "http://x:1" } as never }), TypeError);
    assert.throws(() => new Worker("http://127.0.0.1:1", { endpoints: { result: "http://x:1" } as never }), valid);
    assert.throws(() => new Client("http://127.0.0.1:1", { endpoints: "http://x:1" as never }), /endpoints must be an object/);
    assert.throws(() => new Client("http://127.0.0.1:1", { endpoints: { results: "ftp://x:1" } }), /scheme must be http.*from endpoints\.results/);
  });

  test("resolution order, per service: option, variable, general address, CONVEYOR_ADDR, default", () => {
    const env = {
      CONVEYOR_ADDR: "http://env-general:1",
      CONVEYOR_RESULTS_ADDR: "http://env-results:2",
      CONVEYOR_DISPATCH_ADDR: "http://env-dispatch:3, http://env-dispatch-b:3",
      CONVEYOR_SCHEDULING_ADDR: "",
    };
    const pick = (resolved: ReturnType<typeof resolveServiceAddresses>): Record<string, string> =>
      Object.fromEntries(SERVICE_NAMES.map((service) => [service, `${String(resolved[service].addresses)} <- ${resolved[service].source}`]));
    assert.deepEqual(pick(resolveServiceAddresses("http://given:4", { dispatch: "http://option:5" }, env)), {
      submission: "http://given:4 <- the address given",
      results: "http://env-results:2 <- CONVEYOR_RESULTS_ADDR",
      dispatch: "http://option:5 <- endpoints.dispatch",
      scheduling: "http://given:4 <- the address given",
    });
    assert.deepEqual(pick(resolveServiceAddresses(undefined, { results: "" }, env)), {
      submission: "http://env-general:1 <- CONVEYOR_ADDR",
      results: "http://env-results:2 <- CONVEYOR_RESULTS_ADDR",
      dispatch: "http://env-dispatch:3, http://env-dispatch-b:3 <- CONVEYOR_DISPATCH_ADDR",
      scheduling: "http://env-general:1 <- CONVEYOR_ADDR",
    });
    assert.deepEqual(pick(resolveServiceAddresses([], undefined, {})), {
      submission: "http://127.0.0.1:50051 <- the default",
      results: "http://127.0.0.1:50051 <- the default",
      dispatch: "http://127.0.0.1:50051 <- the default",
      scheduling: "http://127.0.0.1:50051 <- the default",
    });
    assert.throws(() => resolveServiceAddresses(undefined, undefined, { CONVEYOR_RESULTS_ADDR: "ftp://x" }), /from CONVEYOR_RESULTS_ADDR/);
  });

  test("a client's services share one connection per distinct address list", () => {
    const client = new Client("http://a:1", { endpoints: { results: ["http://b:2", "c:3"] } });
    assert.deepEqual(client.addresses, ["a:1"]);
    assert.deepEqual(client.endpoints, { submission: ["a:1"], results: ["b:2", "c:3"], dispatch: ["a:1"], scheduling: ["a:1"] });
    client.close();
  });
});
