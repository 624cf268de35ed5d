// Unit tests of the parts that need no server: payloads, durations, task
// specs, error descriptions, contexts, backoff, credits and drain phases.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { ConnectError, createRouterTransport } from "@connectrpc/connect";
import { AssignmentSchema, DrainReason } from "../src/gen/conveyor/v1/dispatch_service_pb.js";
import { PayloadSchema, TaskErrorSchema, TaskSchema } from "../src/gen/conveyor/v1/task_pb.js";
import { shouldWaitAgain } from "../src/client.js";
import { unsuccessfulTaskError } from "../src/errors.js";
import {
  ARGUMENT_ERROR,
  CatchUp,
  Code,
  DEFAULT_CONCURRENCY,
  RETRY_ERROR,
  SolarEvent,
  Worker,
  buildSchedule,
  ConveyorError,
  ConveyorTimeoutError,
  Client,
  DEFAULT_NAMESPACE,
  EagerClient,
  NAMESPACE_ENV,
  PayloadError,
  PermissionDeniedError,
  UnauthenticatedError,
  RawPayload,
  SDK_VERSION,
  TaskCancelledError,
  TaskContext,
  TaskFailedError,
  TaskFailure,
  TaskNotSucceededError,
  TaskState,
  buildTaskSpec,
  chain,
  sig,
  codeName,
  describeFailure,
  fromPayload,
  isJson,
  isTerminal,
  stateName,
  toPayload,
} from "../src/index.js";
import type { ProgressUpdate } from "../src/index.js";
import { Backoff } from "../src/internal/backoff.js";
import { connectionLost } from "../src/internal/retry.js";
import { AsyncQueue } from "../src/internal/queue.js";
import { drainReasonName } from "../src/internal/session.js";
import { ACTIVE, creditsToGrant, drain, endedByDispatcher } from "../src/internal/state.js";
import { durationToMs, fromOptionalPayload, fromTimestamp, msToDuration, toTimestamp } from "../src/payload.js";
import { Endpoints } from "../src/transport.js";
import { packageRoot } from "../testkit/helpers.js";

describe("payloads", () => {
  test("encode values as JSON and decode them back", () => {
    const payload = toPayload({ a: [1, 2.5, "x", null, true] });
    assert.equal(payload.contentType, "application/json");
    assert.equal(new TextDecoder().decode(payload.data), '{"a":[1,2.5,"x",null,true]}');
    assert.deepEqual(fromPayload(payload), { a: [1, 2.5, "x", null, true] });
    assert.equal(new TextDecoder().decode(toPayload(undefined).data), "null");
  });

  test("raw payloads pass through untouched", () => {
    const raw = toPayload(new RawPayload(new Uint8Array([0xff]), "application/octet-stream"));
    assert.equal(raw.contentType, "application/octet-stream");
    assert.deepEqual([...raw.data], [0xff]);
    assert.equal(new TextDecoder().decode(toPayload(RawPayload.json("3.0")).data), "3.0");
  });

  test("unencodable values and non-JSON payloads are PayloadErrors", () => {
    assert.throws(() => toPayload(10n, "argument 0"), (error: unknown) => {
      assert.ok(error instanceof PayloadError);
      assert.match(error.message, /argument 0/);
      return true;
    });
    const cyclic: Record<string, unknown> = {};
    cyclic["self"] = cyclic;
    assert.throws(() => toPayload(cyclic), PayloadError);
    assert.throws(() => toPayload(() => 1), PayloadError);
    const msgpack = create(PayloadSchema, { data: new Uint8Array([1]), contentType: "application/msgpack" });
    assert.throws(() => fromPayload(msgpack), /application\/msgpack/);
    const broken = create(PayloadSchema, { data: new TextEncoder().encode("{"), contentType: "" });
    assert.throws(() => fromPayload(broken), PayloadError);
  });

  test("recognise JSON content types; absent results read as null", () => {
    for (const type of ["", "application/json", "Application/JSON; charset=utf-8", "application/problem+json"]) {
      assert.ok(isJson(type), type);
    }
    for (const type of ["application/octet-stream", "text/plain"]) assert.ok(!isJson(type), type);
    assert.equal(fromOptionalPayload(undefined), null);
    assert.equal(fromOptionalPayload(create(PayloadSchema)), null);
  });

  test("convert durations and instants", () => {
    const duration = msToDuration(1500.5);
    assert.equal(duration.seconds, 1n);
    assert.equal(duration.nanos, 500_500_000);
    assert.equal(durationToMs(duration), 1500.5);
    assert.equal(durationToMs(undefined), undefined);
    assert.equal(durationToMs(msToDuration(0)), undefined);
    assert.equal(msToDuration(-5).seconds, 0n);
    assert.equal(msToDuration(Infinity).seconds, 315_576_000_000n);
    const at = new Date("2030-01-02T03:04:05.678Z");
    const timestamp = toTimestamp(at);
    assert.equal(timestamp.seconds, BigInt(Math.floor(at.getTime() / 1000)));
    assert.equal(timestamp.nanos, 678_000_000);
    assert.equal(fromTimestamp(timestamp)?.getTime(), at.getTime());
    assert.equal(toTimestamp(at.getTime()).seconds, timestamp.seconds);
    assert.throws(() => toTimestamp(new Date("nope")), RangeError);
  });
});

describe("task specs", () => {
  test("no options set, none sent", () => {
    const spec = buildTaskSpec("add", [2, 3]);
    assert.equal(spec.name, "add");
    assert.deepEqual(spec.args.map((arg) => fromPayload(arg)), [2, 3]);
    assert.equal(spec.options, undefined);
    assert.equal(spec.idempotencyKey, "");
  });

  test("every option maps to its field", () => {
    const eta = new Date("2031-05-06T07:08:09Z");
    const spec = buildTaskSpec("t", [], {
      kwargs: { scale: { by: 3 } },
      queue: "q",
      priority: 7,
      countdownMs: 2500,
      eta,
      expires: eta.getTime() + 1000,
      maxRetries: 4,
      retry: { maxRetries: 1, backoffBaseMs: 100, backoffFactor: 3, backoffMaxMs: 60_000, jitter: true },
      softTimeLimitMs: 5000,
      hardTimeLimitMs: 9000,
      rateLimit: "10/m",
      rateLimitKey: "api",
      concurrencyKey: "db",
      concurrencyLimit: 2,
      idempotencyKey: "k-1",
      headers: { traceparent: "00-abc" },
      resultTtlMs: 60_000,
    });
    const options = spec.options!;
    assert.deepEqual(fromPayload(spec.kwargs["scale"]!), { by: 3 });
    assert.equal(options.queue, "q");
    assert.equal(options.priority, 7);
    assert.equal(options.countdown?.seconds, 2n);
    assert.equal(options.countdown?.nanos, 500_000_000);
    assert.equal(options.eta?.seconds, BigInt(eta.getTime() / 1000));
    assert.equal(options.expires?.seconds, BigInt(eta.getTime() / 1000 + 1));
    assert.equal(options.retry?.maxRetries, 4, "maxRetries overrides the policy's count");
    assert.equal(options.retry?.backoffBase?.nanos, 100_000_000);
    assert.equal(options.retry?.backoffFactor, 3);
    assert.equal(options.retry?.backoffMax?.seconds, 60n);
    assert.equal(options.retry?.jitter, true);
    assert.equal(options.softTimeLimit?.seconds, 5n);
    assert.equal(options.hardTimeLimit?.seconds, 9n);
    assert.equal(options.rateLimit, "10/m");
    assert.equal(options.rateLimitKey, "api");
    assert.equal(options.concurrencyKey, "db");
    assert.equal(options.concurrencyLimit, 2);
    assert.equal(options.headers["traceparent"], "00-abc");
    assert.equal(options.resultTtl?.seconds, 60n);
    assert.equal(spec.idempotencyKey, "k-1");
  });

  test("concurrencyKeys map to ConcurrencyKey messages, in order, beside the one-key fields", () => {
    const spec = buildTaskSpec("t", [], {
      concurrencyKey: "db",
      concurrencyLimit: 2,
      concurrencyKeys: [
        { key: "fork:1", limit: 1 },
        { key: "fork:2", limit: 1 },
      ],
    });
    assert.deepEqual(
      spec.options?.concurrencyKeys.map(({ key, limit }) => [key, limit]),
      [
        ["fork:1", 1],
        ["fork:2", 1],
      ],
    );
    assert.equal(spec.options?.concurrencyKey, "db");
    assert.equal(buildTaskSpec("t", [], { concurrencyKeys: [] }).options, undefined);
  });

  test("an unencodable argument names its position", () => {
    assert.throws(() => buildTaskSpec("t", [1, 2n]), /positional argument 1 of task "t"/);
    assert.throws(() => buildTaskSpec("t", [], { kwargs: { bad: 1n } }), /named argument "bad" of task "t"/);
  });
});

describe("errors", () => {
  test("gRPC codes keep their names", () => {
    assert.equal(codeName(Code.InvalidArgument), "INVALID_ARGUMENT");
    assert.equal(codeName(Code.NotFound), "NOT_FOUND");
    assert.equal(codeName(Code.DeadlineExceeded), "DEADLINE_EXCEEDED");
    assert.equal(codeName(Code.Unavailable), "UNAVAILABLE");
    const error = new ConveyorError(Code.NotFound, "task x not found");
    assert.equal(error.message, "NOT_FOUND: task x not found");
    assert.equal(error.rawMessage, "task x not found");
    assert.ok(ConveyorError.from(new Error("x")) instanceof ConveyorError);
    const timeout = ConveyorError.from(new ConveyorTimeoutError(Code.DeadlineExceeded, "late"));
    assert.ok(timeout instanceof ConveyorTimeoutError);
  });

  test("UNAUTHENTICATED and PERMISSION_DENIED are distinct ConveyorErrors keeping the server's message", () => {
    const denied = ConveyorError.from(new ConnectError("principal 'api' may not submit in namespace 'billing'", Code.PermissionDenied));
    assert.ok(denied instanceof PermissionDeniedError && denied instanceof ConveyorError);
    assert.ok(!(denied instanceof UnauthenticatedError));
    assert.equal(denied.name, "PermissionDeniedError");
    assert.equal(denied.code, Code.PermissionDenied);
    assert.equal(denied.rawMessage, "principal 'api' may not submit in namespace 'billing'");
    assert.equal(denied.message, "PERMISSION_DENIED: principal 'api' may not submit in namespace 'billing'");
    const unknown = ConveyorError.from(new ConnectError("unknown token", Code.Unauthenticated));
    assert.ok(unknown instanceof UnauthenticatedError && unknown instanceof ConveyorError);
    assert.ok(!(unknown instanceof PermissionDeniedError));
    assert.equal(unknown.name, "UnauthenticatedError");
    assert.equal(unknown.rawMessage, "unknown token");
    assert.ok(!(ConveyorError.from(new ConnectError("x", Code.NotFound)) instanceof PermissionDeniedError));
  });

  test("unsuccessful tasks become TaskFailedError or TaskNotSucceededError", () => {
    const failed = create(TaskSchema, {
      id: "t1",
      state: TaskState.FAILED,
      error: create(TaskErrorSchema, { type: "ValueError", message: "boom", traceback: "tb", retryable: false }),
    });
    const error = unsuccessfulTaskError(failed);
    assert.ok(error instanceof TaskFailedError);
    assert.equal(error.type, "ValueError");
    assert.equal(error.message, "boom");
    assert.equal(error.traceback, "tb");
    assert.equal(String(error), "TaskFailedError: task t1 failed: ValueError: boom");
    const expired = unsuccessfulTaskError(create(TaskSchema, { id: "t2", state: TaskState.EXPIRED }));
    assert.ok(expired instanceof TaskNotSucceededError);
    assert.equal(expired.state, TaskState.EXPIRED);
    assert.equal(stateName(TaskState.EXPIRED), "EXPIRED");
    assert.ok(isTerminal(TaskState.EXPIRED) && !isTerminal(TaskState.RUNNING));
  });

  test("a wait is repeated only after a real wait with time left", () => {
    const capped = new ConveyorError(Code.DeadlineExceeded, "capped");
    const now = 1_000_000;
    assert.ok(shouldWaitAgain(capped, now - 300_000, now + 600_000, now));
    assert.ok(shouldWaitAgain(capped, now - 300_000, undefined, now), "no deadline: wait on");
    assert.ok(!shouldWaitAgain(capped, now, now + 600_000, now), "refused at once");
    assert.ok(!shouldWaitAgain(capped, now - 300_000, now + 10, now), "no time left");
    assert.ok(!shouldWaitAgain(new ConveyorError(Code.Unavailable, "down"), now - 300_000, undefined, now));
  });
});

describe("handler failures", () => {
  test("an Error reports its name, message and stack; retryable unless it says not", () => {
    const described = describeFailure(new RangeError("too big"));
    assert.equal(described.type, "RangeError");
    assert.equal(described.message, "too big");
    assert.match(described.traceback, /^RangeError: too big\n\s+at /);
    assert.equal(described.retryable, true);

    class ValueError extends Error {
      override name = "ValueError";
      readonly retryable = false;
    }
    const custom = describeFailure(new ValueError("nope"));
    assert.equal(custom.type, "ValueError");
    assert.equal(custom.retryable, false);
    assert.match(custom.traceback, /^ValueError: nope/);

    const failure = describeFailure(new TaskFailure("KeyError", "k", { retryable: false }));
    assert.deepEqual([failure.type, failure.message, failure.retryable], ["KeyError", "k", false]);
  });

  test("thrown non-errors are described too", () => {
    assert.deepEqual(describeFailure("plain"), { type: "Error", message: "plain", traceback: "", retryable: true });
    assert.equal(describeFailure({ code: 1 }).message, '{"code":1}');
  });

  test("an AbortError from the attempt's own signal reports the signal's reason", () => {
    const controller = new AbortController();
    controller.abort(new TaskCancelledError("soft-time-limit", "soft time limit of 5 ms exceeded"));
    const abort = new DOMException("The operation was aborted", "AbortError");
    const described = describeFailure(abort, controller.signal);
    assert.equal(described.type, "SoftTimeLimitExceeded");
    assert.equal(described.message, "soft time limit of 5 ms exceeded");
  });
});

describe("TaskContext", () => {
  const assignment = () =>
    create(AssignmentSchema, {
      taskId: "0190-id",
      name: "add",
      args: [
        toPayload(2),
        toPayload(["a", "b"]),
        create(PayloadSchema, { data: new Uint8Array([1]), contentType: "application/octet-stream" }),
      ],
      kwargs: { scale: toPayload(1.5) },
      attempt: 2,
      leaseToken: 77n,
      headers: { traceparent: "00-x" },
      softTimeLimit: msToDuration(3000),
      maxRetries: 5,
    });

  test("exposes the assignment and its decoded arguments", () => {
    const controller = new AbortController();
    const ctx = new TaskContext(assignment(), controller.signal);
    assert.equal(ctx.taskId, "0190-id");
    assert.equal(ctx.name, "add");
    assert.deepEqual([ctx.attempt, ctx.maxRetries, ctx.leaseToken], [2, 5, 77n]);
    assert.equal(ctx.headers["traceparent"], "00-x");
    assert.equal(ctx.softTimeLimitMs, 3000);
    assert.equal(ctx.hardTimeLimitMs, undefined);
    assert.deepEqual(ctx.args.slice(0, 2), [2, ["a", "b"]]);
    assert.ok(ctx.args[2] instanceof RawPayload);
    assert.deepEqual(ctx.kwargs, { scale: 1.5 });
    assert.equal(ctx.cancelled, false);
    controller.abort(new TaskCancelledError("cancelled", "revoked"));
    assert.equal(ctx.cancelled, true);
    assert.throws(() => ctx.throwIfCancelled(), TaskCancelledError);
  });

  test("a malformed JSON argument is a final ArgumentError", () => {
    const bad = assignment();
    bad.args.push(create(PayloadSchema, { data: new TextEncoder().encode("{oops"), contentType: "application/json" }));
    assert.throws(
      () => new TaskContext(bad),
      (error: unknown) => error instanceof TaskFailure && error.type === ARGUMENT_ERROR && !error.retryable,
    );
  });
});

describe("worker internals", () => {
  test("backoff doubles from 100 ms to 5 s with jitter in the upper half", () => {
    const backoff = new Backoff(100, 5000);
    const ceilings: number[] = [];
    for (let i = 0; i < 9; i++) {
      const ceiling = backoff.ceiling();
      ceilings.push(ceiling);
      const delay = backoff.next();
      assert.ok(delay >= ceiling / 2 && delay <= ceiling, `${delay} vs ${ceiling}`);
    }
    assert.deepEqual(ceilings, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    backoff.reset();
    assert.equal(backoff.ceiling(), 100);
    const delays = new Set(Array.from({ length: 20 }, () => new Backoff(1000, 1000).next()));
    assert.ok(delays.size > 1, "jitter varies");
  });

  test("credits fill free slots up to the session's limit, none while draining", () => {
    assert.equal(creditsToGrant(8, 0, 0, 1024, false), 8, "initial grant");
    assert.equal(creditsToGrant(8, 3, 5, 1024, false), 0, "all slots spoken for");
    assert.equal(creditsToGrant(8, 1, 5, 1024, false), 2, "two slots freed at once");
    assert.equal(creditsToGrant(2000, 0, 0, 1024, false), 1024, "capped by Welcome");
    assert.equal(creditsToGrant(2000, 0, 1000, 1024, false), 24);
    assert.equal(creditsToGrant(8, 10, 0, 1024, false), 0, "abandoned handlers hold slots");
    assert.equal(creditsToGrant(8, 0, 0, 1024, true), 0, "none while draining");
  });

  test("a drain keeps the earliest deadline and never forgets a stop", () => {
    const local = drain(ACTIVE, true, 30_000, 0);
    assert.deepEqual(local, { kind: "draining", deadline: 30_000, stopping: true });
    assert.deepEqual(drain(local, false, 5000, 0), { kind: "draining", deadline: 5000, stopping: true });
    const dispatcher = drain(ACTIVE, false, 5000, 0);
    assert.deepEqual(drain(dispatcher, true, 30_000, 0), { kind: "draining", deadline: 5000, stopping: true });
    assert.equal(endedByDispatcher(ACTIVE), undefined, "an unasked end is a failure");
    assert.deepEqual(endedByDispatcher(local), { kind: "stopped" });
    assert.deepEqual(endedByDispatcher(dispatcher), { kind: "drained" });
  });

  test("reopen: the next call to the address gets a new connection; a custom transport is kept", () => {
    let built = 0;
    const endpoints = new Endpoints("http://127.0.0.1:1,http://127.0.0.1:2", {}, () => ({ n: ++built }));
    const first = endpoints.current();
    assert.equal(endpoints.current().value, first.value, "one connection per address");
    assert.equal(endpoints.reopen(first), true);
    const second = endpoints.current();
    assert.equal(second.index, first.index, "same address");
    assert.notEqual(second.value, first.value, "new connection");
    endpoints.reopen(first); // stale: already reopened
    assert.equal(endpoints.current().value, second.value, "a stale reopen leaves the new connection alone");
    endpoints.close();

    const custom = new Endpoints("", { transport: createRouterTransport(() => {}) }, () => ({ n: ++built }));
    const only = custom.current();
    assert.equal(custom.reopen(only), false);
    assert.equal(custom.current().value, only.value);
  });

  test("drain reasons are named for logs", () => {
    assert.equal(drainReasonName(DrainReason.REBALANCE), "rebalance");
    assert.equal(drainReasonName(DrainReason.SHUTDOWN), "shutdown");
    assert.equal(drainReasonName(DrainReason.UNSPECIFIED), "unspecified");
    assert.equal(drainReasonName(undefined), "unspecified");
    assert.equal(drainReasonName(7 as DrainReason), "reason 7");
  });

  test("the outbound queue delivers in order, then ends", async () => {
    const queue = new AsyncQueue<number>();
    queue.push(1);
    const iterator = queue[Symbol.asyncIterator]();
    assert.deepEqual(await iterator.next(), { value: 1, done: false });
    const pending = iterator.next();
    queue.push(2);
    assert.deepEqual(await pending, { value: 2, done: false });
    queue.push(3);
    queue.end();
    assert.equal(queue.push(4), false);
    assert.deepEqual(await iterator.next(), { value: 3, done: false });
    assert.deepEqual(await iterator.next(), { value: undefined, done: true });
    const other = new AsyncQueue<number>();
    const waiting = other[Symbol.asyncIterator]().next();
    await assert.rejects(other[Symbol.asyncIterator]().throw!(new Error("stop")), /stop/);
    assert.deepEqual(await waiting, { value: undefined, done: true });
  });

  test("the SDK version is the package's", () => {
    const pkg = JSON.parse(readFileSync(resolve(packageRoot, "package.json"), "utf8")) as { version: string };
    assert.equal(SDK_VERSION, pkg.version);
  });
});

describe("retries, progress, schedules, defaults", () => {
  const assignment = () => create(AssignmentSchema, { taskId: "t", name: "n", attempt: 1, leaseToken: 1n });

  test("ctx.retry asks for a delay: a retryable Retry failure carrying retryAfterMs", () => {
    const ctx = new TaskContext(assignment());
    const failure = ctx.retry({ countdownMs: 5000, message: "later" });
    assert.ok(failure instanceof TaskFailure);
    const described = describeFailure(failure);
    assert.deepEqual(
      [described.type, described.message, described.retryable, described.retryAfterMs],
      [RETRY_ERROR, "later", true, 5000],
    );
    assert.equal(describeFailure(ctx.retry()).retryAfterMs, undefined, "no countdown: the policy's backoff");
    assert.equal(describeFailure(ctx.retry({ cause: new RangeError("flaky") })).message, "RangeError: flaky");
    assert.throws(() => ctx.retry({ countdownMs: -1 }), RangeError);
    assert.equal(new TaskFailure("X", "m", { retryable: false, retryAfterMs: 10 }).retryable, true, "a delay implies retryable");
  });

  test("ctx.updateState hands the update to the worker; percent must be 0 to 100", () => {
    const updates: ProgressUpdate[] = [];
    const ctx = new TaskContext(assignment(), undefined, (update) => updates.push(update));
    ctx.updateState({ state: "STEP", percent: 100, meta: { n: 1 } });
    assert.deepEqual(updates, [{ state: "STEP", percent: 100, meta: { n: 1 } }]);
    assert.throws(() => ctx.updateState({ percent: 101 }), /0 to 100/);
    new TaskContext(assignment()).updateState({ state: "ignored without a worker" });
  });

  test("a schedule needs exactly one rule; each rule maps to its message", () => {
    assert.throws(() => buildSchedule({ id: "s", task: "t" } as never), /exactly one rule/);
    assert.throws(() => buildSchedule({ id: "s", task: "t", everyMs: 1000, cron: "* * * * *" } as never), /exactly one rule/);
    const interval = buildSchedule({ id: "s", task: "t", args: [1], everyMs: 90_000, jitterMs: 500, catchUp: "run-once" });
    assert.equal(interval.rule.case, "interval");
    assert.equal(durationToMs(interval.rule.case === "interval" ? interval.rule.value.every : undefined), 90_000);
    assert.equal(interval.catchUp, CatchUp.RUN_ONCE);
    assert.equal(interval.task?.idempotencyKey, "", "the scheduler sets the key");
    const cron = buildSchedule({ id: "s", task: "t", cron: "0 3 * * *", timeZone: "Europe/Berlin" });
    assert.deepEqual(cron.rule.case === "cron" ? [cron.rule.value.expression, cron.rule.value.timeZone] : [], ["0 3 * * *", "Europe/Berlin"]);
    const solar = buildSchedule({ id: "s", task: "t", solar: { event: "sunset", latitude: 52.5, longitude: 13.4 } });
    assert.equal(solar.rule.case === "solar" ? solar.rule.value.event : undefined, SolarEvent.SUNSET);
  });

  test("a worker runs DEFAULT_CONCURRENCY (10) tasks at once unless told otherwise", () => {
    assert.equal(DEFAULT_CONCURRENCY, 10);
    assert.equal(new Worker("127.0.0.1:50051").concurrency, DEFAULT_CONCURRENCY);
    assert.equal(new Worker("127.0.0.1:50051", { concurrency: 3 }).concurrency, 3);
    assert.deepEqual(new Worker("a:1,b:2").addresses, ["a:1", "b:2"]);
  });

  test("a lost connection reads as UNAVAILABLE; statuses the server sent do not", () => {
    const reset = Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET" });
    const aborted = new ConveyorError(Code.Aborted, "read ECONNRESET", { cause: new Error("wrapped", { cause: reset }) });
    assert.equal(connectionLost(aborted)?.code, Code.Unavailable);
    assert.match(connectionLost(aborted)!.message, /connection lost \(read ECONNRESET\)/);
    assert.equal(connectionLost(new ConveyorError(Code.Aborted, "lease conflict")), undefined);
    assert.equal(connectionLost(new ConveyorError(Code.Canceled, "stream reset"))?.code, Code.Unavailable);
    const controller = new AbortController();
    controller.abort();
    assert.equal(connectionLost(new ConveyorError(Code.Canceled, "aborted by caller"), controller.signal), undefined);
    assert.equal(connectionLost(new ConveyorError(Code.NotFound, "no such task")), undefined);
  });

  test("engines: package.json, its dependencies and the README agree on Node 20", () => {
    const manifest = JSON.parse(readFileSync(resolve(packageRoot, "package.json"), "utf8")) as { engines: { node: string } };
    assert.equal(manifest.engines.node, ">=20");
    assert.ok(Number(process.versions.node.split(".")[0]) >= 20);
    const lock = JSON.parse(readFileSync(resolve(packageRoot, "package-lock.json"), "utf8")) as {
      packages: Record<string, { engines?: { node?: string }; dev?: boolean }>;
    };
    // Every package the SDK runs, builds or tests with accepts Node 20; the
    // one exception is the code generator, run only by scripts/generate.
    const needNewer = Object.entries(lock.packages)
      .filter(([, entry]) => /^>=\s*(2[1-9]|[3-9]\d)/.test(entry.engines?.node ?? ""))
      .map(([path]) => path);
    assert.deepEqual(needNewer, ["node_modules/@bufbuild/protoc-gen-es"]);
    const readme = readFileSync(resolve(packageRoot, "README.md"), "utf8");
    assert.match(readme, /Node 20 or newer/);
  });
});

describe("namespaces", () => {
  /** Runs `body` with $CONVEYOR_NAMESPACE set to `value` (unset for undefined), then restores it. */
  function withNamespaceEnv<T>(value: string | undefined, body: () => T): T {
    const saved = process.env[NAMESPACE_ENV];
    if (value === undefined) delete process.env[NAMESPACE_ENV];
    else process.env[NAMESPACE_ENV] = value;
    try {
      return body();
    } finally {
      if (saved === undefined) delete process.env[NAMESPACE_ENV];
      else process.env[NAMESPACE_ENV] = saved;
    }
  }

  test("the option, else $CONVEYOR_NAMESPACE (when not empty), else default; for clients and workers alike", () => {
    const addr = "http://127.0.0.1:1";
    withNamespaceEnv(undefined, () => {
      assert.equal(DEFAULT_NAMESPACE, "default");
      assert.equal(new Client(addr).namespace, "default");
      assert.equal(new Worker(addr).namespace, "default");
      assert.equal(new Client(addr, { namespace: "team-a" }).namespace, "team-a");
      assert.equal(new Worker(addr, { namespace: "team-a" }).namespace, "team-a");
    });
    withNamespaceEnv("from-env", () => {
      assert.equal(new Client(addr).namespace, "from-env");
      assert.equal(new Worker(addr).namespace, "from-env");
      assert.equal(new Client(addr, { namespace: "team-a" }).namespace, "team-a", "the option wins");
      assert.equal(new Client(addr, { namespace: "" }).namespace, "default", "an explicit \"\" is the default namespace");
    });
    withNamespaceEnv("", () => assert.equal(new Worker(addr).namespace, "default"));
  });

  test("a namespace the server would refuse throws at construction, naming where it came from", () => {
    withNamespaceEnv(undefined, () => {
      assert.throws(() => new Client("http://127.0.0.1:1", { namespace: "team a" }), /invalid namespace "team a": a namespace is 1 to 100 characters/);
      assert.throws(() => new Worker("http://127.0.0.1:1", { namespace: "x".repeat(101) }), RangeError);
      assert.equal(new Client("http://127.0.0.1:1", { namespace: "A-z_0.9" }).namespace, "A-z_0.9");
    });
    withNamespaceEnv("team/a", () => {
      assert.throws(() => new Client("http://127.0.0.1:1"), /invalid namespace "team\/a" \(from CONVEYOR_NAMESPACE\)/);
    });
  });

  test("an eager client's tasks and workflows report its namespace", async () => {
    const { plain, scoped } = withNamespaceEnv(undefined, () => ({
      plain: new EagerClient().register("add", (_ctx, a: number, b: number) => a + b),
      scoped: new EagerClient({ namespace: "team-a" }).register("add", (_ctx, a: number, b: number) => a + b),
    }));
    assert.equal(plain.namespace, "default");
    assert.equal((await plain.get(await plain.submit("add", [1, 2]))).namespace, "default");
    assert.equal(scoped.namespace, "team-a");
    assert.equal((await scoped.get(await scoped.submit("add", [1, 2]))).namespace, "team-a");
    const handle = await scoped.submitWorkflow(chain(sig("add", [1, 1]), sig("add", [1])));
    const workflow = await handle.workflow();
    assert.equal(workflow.namespace, "team-a");
    assert.deepEqual(workflow.nodes.map((node) => node.task?.namespace), ["team-a", "team-a"]);
  });
});
