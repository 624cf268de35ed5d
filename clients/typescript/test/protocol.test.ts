// The worker protocol against a scripted in-process dispatcher (connect's
// router transport): Hello, credits, outcomes, CancelAssignment, Drain,
// broken streams and fatal errors, in exactly the order the protocol fixes.
// The same dispatcher behind a real HTTP/2 server on 127.0.0.1 checks which
// connection each session comes on: after a Drain, a new one.

import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer } from "node:http2";
import type { Http2ServerRequest, Http2Session } from "node:http2";
import type { AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createContextKey, createContextValues, createRouterTransport } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import {
  AssignmentSchema,
  ConnectResponseSchema,
  DispatchService,
  DrainReason,
} from "../src/gen/conveyor/v1/dispatch_service_pb.js";
import type { ConnectRequest, ConnectResponse } from "../src/gen/conveyor/v1/dispatch_service_pb.js";
import { ConveyorError, MAX_MESSAGE_BYTES, SDK_VERSION, TaskCancelledError, Worker, fromPayload, silentLogger, toPayload } from "../src/index.js";
import type { LogFields, Logger, TaskContext } from "../src/index.js";
import { AsyncQueue } from "../src/internal/queue.js";
import { waitFor } from "../testkit/helpers.js";

type Request = ConnectRequest["message"];
type RequestValues = { [M in Request as M["case"] & string]: M["value"] };
type RequestCase = keyof RequestValues;

/** One Connect stream as the fake dispatcher sees it. */
class FakeStream {
  readonly received: Request[] = [];
  readonly #outbox = new AsyncQueue<ConnectResponse | Error>();
  #read = 0;
  closedByWorker = false;

  constructor(requests: AsyncIterable<ConnectRequest>) {
    void (async () => {
      try {
        for await (const request of requests) this.received.push(request.message);
      } catch {
        // the stream was cancelled
      }
      this.closedByWorker = true;
    })();
  }

  /** The next message other than a heartbeat, which must be of `kind`. */
  async expect<K extends RequestCase>(kind: K, timeoutMs = 5000): Promise<RequestValues[K]> {
    const message = await waitFor(() => {
      while (this.#read < this.received.length) {
        const next = this.received[this.#read++]!;
        if (next.case !== "heartbeat") return next;
      }
      return undefined;
    }, `a ${kind} message`, timeoutMs, 5);
    if (message.case !== kind) {
      assert.fail(`expected ${kind}, got ${message.case}: ${JSON.stringify(message.value, bigintSafe)}`);
    }
    return message.value as RequestValues[K];
  }

  /** Everything unread that is not a heartbeat. */
  unread(): Request[] {
    return this.received.slice(this.#read).filter((message) => message.case !== "heartbeat");
  }

  send(message: MessageInitShape<typeof ConnectResponseSchema>["message"]): void {
    this.#outbox.push(create(ConnectResponseSchema, { message }));
  }

  welcome(heartbeatMs = 50, maxFrameBytes = 8 * 1024 * 1024): void {
    this.send({
      case: "welcome",
      value: { sessionId: "fake", heartbeatInterval: ms(heartbeatMs), leaseTtl: ms(1000), maxCredits: 1024, maxFrameBytes },
    });
  }

  assign(taskId: string, name: string, args: unknown[], leaseToken: bigint, extra: Record<string, unknown> = {}): void {
    const assignment = create(AssignmentSchema, {
      taskId,
      name,
      args: args.map((arg) => toPayload(arg)),
      attempt: 1,
      leaseToken,
      ...extra,
    });
    this.send({ case: "assignments", value: { assignments: [assignment] } });
  }

  fail(error: Error): void {
    this.#outbox.push(error);
  }

  end(): void {
    this.#outbox.end();
  }

  async *responses(): AsyncGenerator<ConnectResponse> {
    for await (const item of this.#outbox) {
      if (item instanceof Error) throw item;
      yield item;
    }
  }
}

function ms(value: number) {
  const seconds = Math.floor(value / 1000);
  return create(DurationSchema, { seconds: BigInt(seconds), nanos: (value - seconds * 1000) * 1_000_000 });
}

function bigintSafe(_key: string, value: unknown): unknown {
  return typeof value === "bigint" ? value.toString() : value;
}

/** A worker wired to a fake dispatcher; `streams` fills as it connects. */
function setup(options: { concurrency?: number; gracePeriodMs?: number; logger?: Logger } = {}) {
  const streams: FakeStream[] = [];
  const transport = createRouterTransport(({ service }) => {
    service(DispatchService, {
      connect(requests) {
        const stream = new FakeStream(requests);
        streams.push(stream);
        return stream.responses();
      },
      listWorkers() {
        return {};
      },
    });
  });
  const worker = new Worker("http://fake.invalid", {
    transport,
    logger: silentLogger,
    workerId: "fake-worker-1",
    queues: ["alpha", "beta"],
    reconnectMinMs: 10,
    reconnectMaxMs: 50,
    ...options,
  });
  const controller = new AbortController();
  const stream = async (index: number): Promise<FakeStream> =>
    waitFor(() => streams[index], `connection ${index + 1}`, 5000, 5);
  const run = () => worker.run({ signal: controller.signal, handleSignals: false });
  return { worker, streams, stream, controller, run };
}

/** The HTTP/2 connection a call came on, as the server sees it. */
interface Connection {
  readonly session: Http2Session;
  /** The client's port: a new one means a new TCP connection. */
  readonly remotePort: number;
}

const connectionKey = createContextKey<Connection | undefined>(undefined, { description: "the call's HTTP/2 connection" });

/**
 * The fake dispatcher behind a real HTTP/2 (h2c) server on 127.0.0.1, as a
 * worker reaches a dispatcher through a load balancer: `connections[i]` is
 * the connection Connect stream `streams[i]` came on.
 */
async function startHttp2Dispatcher() {
  const streams: FakeStream[] = [];
  const connections: Connection[] = [];
  /** Every HTTP/2 connection the server accepted, in order. */
  const accepted: Http2Session[] = [];
  const handler = connectNodeAdapter({
    routes(router) {
      router.service(DispatchService, {
        connect(requests, context) {
          const connection = context.values.get(connectionKey);
          assert.ok(connection !== undefined);
          connections.push(connection);
          const stream = new FakeStream(requests);
          streams.push(stream);
          return stream.responses();
        },
        listWorkers() {
          return {};
        },
      });
    },
    contextValues(req) {
      const { session } = (req as Http2ServerRequest).stream;
      assert.ok(session !== undefined);
      return createContextValues().set(connectionKey, { session, remotePort: session.socket.remotePort! });
    },
  });
  const server = createServer(handler);
  server.on("session", (session: Http2Session) => accepted.push(session));
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    streams,
    connections,
    accepted,
    stream: (index: number, timeoutMs = 5000): Promise<FakeStream> =>
      waitFor(() => streams[index], `connection ${index + 1}`, timeoutMs, 5),
    async close(): Promise<void> {
      for (const stream of streams) stream.end();
      for (const session of accepted) session.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** A logger that keeps its lines. */
function recordingLogger() {
  const lines: { level: string; message: string; fields: LogFields | undefined }[] = [];
  const record = (level: string) => (message: string, fields?: LogFields) => void lines.push({ level, message, fields });
  const logger: Logger = { debug: record("debug"), info: record("info"), warn: record("warn"), error: record("error") };
  return { logger, lines };
}

describe("worker protocol", () => {
  test("Hello, Welcome, credits, TaskStarted, outcomes with the lease token, one credit per freed slot", async () => {
    const { worker, stream, controller, run } = setup({ concurrency: 3 });
    worker.register("add", (_ctx, a: number, b: number) => a + b);
    worker.register("boom", () => {
      throw new TypeError("bad");
    });
    const done = run();
    const s = await stream(0);
    const hello = await s.expect("hello");
    assert.equal(hello.workerId, "fake-worker-1");
    assert.deepEqual(hello.queues, ["alpha", "beta"]);
    assert.deepEqual(hello.taskNames, ["add", "boom"]);
    assert.equal(hello.concurrency, 3);
    assert.equal(hello.language, "typescript");
    assert.equal(hello.sdkVersion, SDK_VERSION);
    assert.ok(hello.hostname.length > 0);
    s.welcome();
    assert.equal((await s.expect("grantCredits")).credits, 3);

    s.assign("t1", "add", [2, 3], 11n);
    const started = await s.expect("taskStarted");
    assert.equal(started.taskId, "t1");
    assert.equal(started.leaseToken, 11n);
    const report = await s.expect("reportOutcomes");
    assert.equal(report.outcomes.length, 1);
    const outcome = report.outcomes[0]!;
    assert.equal(outcome.taskId, "t1");
    assert.equal(outcome.leaseToken, 11n);
    assert.equal(outcome.outcome.case, "result");
    assert.equal(fromPayload(outcome.outcome.value as never), 5);
    assert.equal((await s.expect("grantCredits")).credits, 1, "the freed slot is granted again");

    s.assign("t2", "boom", [], 12n);
    await s.expect("taskStarted");
    const failed = (await s.expect("reportOutcomes")).outcomes[0]!;
    assert.equal(failed.outcome.case, "error");
    const error = failed.outcome.value as { type: string; message: string; traceback: string; retryable: boolean };
    assert.equal(error.type, "TypeError");
    assert.equal(error.message, "bad");
    assert.match(error.traceback, /^TypeError: bad\n/);
    assert.equal(error.retryable, true);

    // Heartbeats flow at the Welcome's interval.
    await waitFor(() => s.received.filter((m) => m.case === "heartbeat").length >= 2, "two heartbeats", 2000, 10);

    controller.abort();
    await waitFor(() => s.closedByWorker, "the worker to close its half");
    s.end();
    await done;
  });

  test("progress: reports carry the lease token, a burst is coalesced to its latest, and precedes the outcome; a retry carries its delay", async () => {
    const { worker, stream, controller, run } = setup({ concurrency: 2 });
    worker.register("report", (ctx: TaskContext) => {
      for (let percent = 0; percent <= 100; percent += 10) ctx.updateState({ state: "WORKING", percent, meta: { percent } });
      return "done";
    });
    worker.register("later", (ctx: TaskContext) => {
      throw ctx.retry({ countdownMs: 1500 });
    });
    const done = run();
    const s = await stream(0);
    await s.expect("hello");
    s.welcome();
    await s.expect("grantCredits");
    s.assign("p1", "report", [], 21n);
    await s.expect("taskStarted");
    const progress = await s.expect("reportProgress");
    assert.equal(progress.taskId, "p1");
    assert.equal(progress.leaseToken, 21n);
    assert.equal(progress.progress?.state, "WORKING");
    assert.equal(progress.progress?.percent, 100, "only the latest of the burst is sent");
    assert.deepEqual(fromPayload(progress.progress!.meta!), { percent: 100 });
    assert.equal((await s.expect("reportOutcomes")).outcomes[0]!.taskId, "p1");
    await s.expect("grantCredits");

    s.assign("r1", "later", [], 22n);
    await s.expect("taskStarted");
    const retried = (await s.expect("reportOutcomes")).outcomes[0]!;
    assert.equal(retried.outcome.case, "error");
    const error = retried.outcome.value as { type: string; retryable: boolean; retryAfter?: { seconds: bigint; nanos: number } };
    assert.equal(error.type, "Retry");
    assert.equal(error.retryable, true);
    assert.deepEqual([error.retryAfter?.seconds, error.retryAfter?.nanos], [1n, 500_000_000]);

    controller.abort();
    await waitFor(() => s.closedByWorker, "the worker to close its half");
    s.end();
    await done;
  });

  test("CancelAssignment aborts the handler's signal and drops its outcome", async () => {
    const { worker, stream, controller, run } = setup({ concurrency: 2 });
    let reason: unknown;
    worker.register("wait", async (ctx: TaskContext) => {
      await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve, { once: true }));
      reason = ctx.signal.reason;
      return "finished anyway";
    });
    worker.register("quick", () => "quick");
    const done = run();
    const s = await stream(0);
    await s.expect("hello");
    s.welcome();
    await s.expect("grantCredits");
    s.assign("t1", "wait", [], 1n);
    await s.expect("taskStarted");
    s.send({ case: "cancelAssignment", value: { taskId: "t1", reason: "revoked" } });
    await waitFor(() => reason !== undefined, "the handler to see the cancellation");
    assert.ok(reason instanceof TaskCancelledError);
    assert.equal(reason.kind, "cancelled");
    assert.match(reason.message, /revoked/);
    await s.expect("grantCredits");
    s.assign("t2", "quick", [], 2n);
    await s.expect("taskStarted");
    const report = await s.expect("reportOutcomes");
    assert.deepEqual(
      report.outcomes.map((o) => o.taskId),
      ["t2"],
      "the cancelled task's outcome is never reported",
    );
    controller.abort();
    await waitFor(() => s.closedByWorker, "the worker to close its half");
    s.end();
    await done;
  });

  test("Drain: no more credits, the running task finishes and reports, the worker closes and reconnects", async () => {
    const { worker, stream, controller, run } = setup({ concurrency: 2 });
    worker.register("slow", async () => {
      await sleep(150);
      return "done";
    });
    const done = run();
    const s = await stream(0);
    await s.expect("hello");
    s.welcome(1000);
    await s.expect("grantCredits");
    s.assign("t1", "slow", [], 7n);
    await s.expect("taskStarted");
    s.send({ case: "drain", value: { grace: ms(5000) } });
    // A late assignment (already granted) is not started while draining.
    s.assign("t2", "slow", [], 8n);
    const report = await s.expect("reportOutcomes");
    assert.deepEqual(report.outcomes.map((o) => o.taskId), ["t1"]);
    await waitFor(() => s.closedByWorker, "the worker to close its half");
    assert.deepEqual(s.unread(), [], "no credits and no TaskStarted after the drain");
    s.end();
    const next = await stream(1);
    await next.expect("hello");
    next.welcome();
    assert.equal((await next.expect("grantCredits")).credits, 2);
    controller.abort();
    await waitFor(() => next.closedByWorker, "the worker to close its half");
    next.end();
    await done;
  });

  test("a broken stream abandons its tasks and reconnects with backoff", async () => {
    const { worker, stream, controller, run } = setup({ concurrency: 1 });
    let reason: unknown;
    let calls = 0;
    worker.register("hang", async (ctx: TaskContext) => {
      calls += 1;
      if (calls > 1) return "second run";
      await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve, { once: true }));
      reason = ctx.signal.reason;
      return "abandoned";
    });
    const done = run();
    const s = await stream(0);
    await s.expect("hello");
    s.welcome();
    await s.expect("grantCredits");
    s.assign("t1", "hang", [], 1n);
    await s.expect("taskStarted");
    s.fail(new ConnectError("dispatcher restarting", Code.Unavailable));
    const next = await stream(1);
    await next.expect("hello");
    assert.ok(reason instanceof TaskCancelledError);
    assert.equal(reason.kind, "stream-lost");
    next.welcome();
    assert.equal((await next.expect("grantCredits")).credits, 1);
    next.assign("t1", "hang", [], 2n);
    await next.expect("taskStarted");
    const report = await next.expect("reportOutcomes");
    assert.deepEqual(report.outcomes.map((o) => [o.taskId, o.leaseToken]), [["t1", 2n]]);
    controller.abort();
    await waitFor(() => next.closedByWorker, "the worker to close its half");
    next.end();
    await done;
  });

  test("an abandoned handler keeps its slot until it returns", async () => {
    const { worker, stream, controller, run } = setup({ concurrency: 1 });
    let release: () => void = () => {};
    worker.register("stuck", () => new Promise((resolve) => (release = () => resolve("late"))));
    const done = run();
    const s = await stream(0);
    await s.expect("hello");
    s.welcome();
    await s.expect("grantCredits");
    s.assign("t1", "stuck", [], 1n);
    await s.expect("taskStarted");
    s.fail(new ConnectError("gone", Code.Unavailable));
    const next = await stream(1);
    await next.expect("hello");
    next.welcome();
    await sleep(100);
    assert.deepEqual(next.unread(), [], "no credit while the abandoned handler holds the only slot");
    release();
    assert.equal((await next.expect("grantCredits")).credits, 1);
    assert.deepEqual(next.unread(), [], "the abandoned outcome is not reported");
    controller.abort();
    await waitFor(() => next.closedByWorker, "the worker to close its half");
    next.end();
    await done;
  });

  test("errors that reconnecting cannot fix end run(): a refused Hello, a protocol violation", async () => {
    {
      const { worker, stream, run } = setup();
      worker.register("x", () => 1);
      const done = run();
      const s = await stream(0);
      await s.expect("hello");
      s.fail(new ConnectError("bad token", Code.Unauthenticated));
      await assert.rejects(done, (error: unknown) => error instanceof ConveyorError && error.code === Code.Unauthenticated);
    }
    {
      const { worker, stream, run } = setup();
      worker.register("x", () => 1);
      const done = run();
      const s = await stream(0);
      await s.expect("hello");
      s.send({ case: "drain", value: {} });
      await assert.rejects(done, /expected Welcome as the first message/);
    }
  });

  test("a transient failure before Welcome is retried", async () => {
    const { worker, stream, controller, run } = setup();
    worker.register("x", () => 1);
    const done = run();
    const first = await stream(0);
    await first.expect("hello");
    first.fail(new ConnectError("not yet", Code.Unavailable));
    const second = await stream(1);
    await second.expect("hello");
    second.welcome();
    await second.expect("grantCredits");
    controller.abort();
    await waitFor(() => second.closedByWorker, "the worker to close its half");
    second.end();
    await done;
  });

  test("a Welcome whose maxFrameBytes exceeds the receive limit logs an error saying to upgrade the SDK", async () => {
    const logs: { level: string; message: string; fields: LogFields | undefined }[] = [];
    const record = (level: string) => (message: string, fields?: LogFields) => void logs.push({ level, message, fields });
    const logger: Logger = { debug: record("debug"), info: record("info"), warn: record("warn"), error: record("error") };
    const upgrade = () => logs.filter((entry) => entry.level === "error" && /upgrade the Conveyor TypeScript SDK/.test(entry.message));

    const { worker, stream, controller, run } = setup({ logger });
    worker.register("x", () => 1);
    const done = run();
    const first = await stream(0);
    await first.expect("hello");
    first.welcome(50, 8 * 1024 * 1024); // what the dispatcher says today: within the limit
    await first.expect("grantCredits");
    assert.deepEqual(upgrade(), []);
    first.fail(new ConnectError("gone", Code.Unavailable));
    const second = await stream(1);
    await second.expect("hello");
    second.welcome(50, 128 * 1024 * 1024);
    await second.expect("grantCredits");
    const errors = upgrade();
    assert.equal(errors.length, 1);
    assert.equal(errors[0]!.fields?.["max_frame_bytes"], 128 * 1024 * 1024);
    assert.equal(errors[0]!.fields?.["receive_limit"], MAX_MESSAGE_BYTES);
    controller.abort();
    await waitFor(() => second.closedByWorker, "the worker to close its half");
    second.end();
    await done;
  });
});

describe("worker sessions over HTTP/2", () => {
  test("parity_reconnect_after_drain: Drain (rebalance, then unspecified): the task reports, the session closes, and the next one comes promptly on a new connection; the old one is closed", async () => {
    const dispatcher = await startHttp2Dispatcher();
    const { logger, lines } = recordingLogger();
    // The default reconnect backoff and keepalive: what "promptly" means for users.
    const worker = new Worker(dispatcher.url, { logger, workerId: "h2-worker", queues: ["alpha"], concurrency: 2 });
    worker.register("slow", async () => {
      await sleep(100);
      return "done";
    });
    const controller = new AbortController();
    const done = worker.run({ signal: controller.signal, handleSignals: false });
    try {
      const s = await dispatcher.stream(0);
      await s.expect("hello");
      s.welcome(1000);
      await s.expect("grantCredits");
      s.assign("t1", "slow", [], 7n);
      await s.expect("taskStarted");
      s.send({ case: "drain", value: { grace: ms(5000), reason: DrainReason.REBALANCE } });
      const report = await s.expect("reportOutcomes");
      assert.deepEqual(report.outcomes.map((o) => [o.taskId, o.leaseToken]), [["t1", 7n]], "the running task reports on the drained session");
      await waitFor(() => s.closedByWorker, "the worker to close its half");
      assert.deepEqual(s.unread(), [], "no credits after the drain");
      assert.equal(dispatcher.streams.length, 1, "no new session before the drained one is over");
      const closedAt = Date.now();
      s.end();

      const next = await dispatcher.stream(1, 2000);
      const reconnectMs = Date.now() - closedAt;
      await next.expect("hello");
      const [first, second] = dispatcher.connections;
      assert.ok(first !== undefined && second !== undefined);
      assert.notEqual(second.session, first.session, "the next session is not a new stream on the drained connection");
      assert.notEqual(second.remotePort, first.remotePort, "it comes from another client port: a new TCP connection");
      assert.equal(dispatcher.accepted.length, 2, "exactly one new connection");
      await waitFor(() => first.session.destroyed || first.session.closed, "the worker to close the drained connection", 2000, 5);
      assert.ok(reconnectMs < 2000, `reconnected after ${reconnectMs} ms`);
      const drained = lines.filter((line) => line.message.startsWith("session drained"));
      assert.deepEqual(drained.map((line) => [line.level, line.message, line.fields?.["reason"]]), [
        ["info", "session drained (rebalance), reconnecting on a new connection", "rebalance"],
      ]);
      next.welcome(1000);
      assert.equal((await next.expect("grantCredits")).credits, 2);

      // A Drain without a reason (an older dispatcher) also moves to a new connection.
      next.send({ case: "drain", value: { grace: ms(5000) } });
      await waitFor(() => next.closedByWorker, "the worker to close its half");
      next.end();
      const third = await dispatcher.stream(2, 2000);
      await third.expect("hello");
      const thirdConnection = dispatcher.connections[2]!;
      assert.notEqual(thirdConnection.session, second.session);
      assert.notEqual(thirdConnection.remotePort, second.remotePort);
      await waitFor(() => second.session.destroyed || second.session.closed, "the worker to close the second connection", 2000, 5);
      assert.equal(lines.filter((line) => line.message === "session drained, reconnecting on a new connection").length, 1);
      third.welcome(1000);
      await third.expect("grantCredits");

      controller.abort();
      await waitFor(() => third.closedByWorker, "the worker to close its half");
      third.end();
      await done;
      assert.equal(dispatcher.accepted.length, 3, "one connection per session, none more");
    } finally {
      controller.abort();
      await done.catch(() => {});
      await dispatcher.close();
    }
  });

  test("a stream that breaks while active reconnects as before, on the same connection while it lives", async () => {
    const dispatcher = await startHttp2Dispatcher();
    const worker = new Worker(dispatcher.url, { logger: silentLogger, workerId: "h2-worker", reconnectMinMs: 10, reconnectMaxMs: 50 });
    worker.register("x", () => 1);
    const controller = new AbortController();
    const done = worker.run({ signal: controller.signal, handleSignals: false });
    try {
      const s = await dispatcher.stream(0);
      await s.expect("hello");
      s.welcome(1000);
      await s.expect("grantCredits");
      s.fail(new ConnectError("dispatcher restarting", Code.Unavailable));
      const next = await dispatcher.stream(1);
      await next.expect("hello");
      assert.equal(dispatcher.connections[1]!.session, dispatcher.connections[0]!.session);
      next.welcome(1000);
      await next.expect("grantCredits");
      controller.abort();
      await waitFor(() => next.closedByWorker, "the worker to close its half");
      next.end();
      await done;
    } finally {
      controller.abort();
      await done.catch(() => {});
      await dispatcher.close();
    }
  });
});
