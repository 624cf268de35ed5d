// OpenTelemetry tracing against a real `conveyor dev`: the publish, process
// and wait spans, the trace context stored with the task and sent as gRPC
// metadata. Spans are recorded with the SDK's in-memory exporter (dev
// dependencies); node --test runs each file in its own process, so the
// provider registered here is this file's alone (tracing_off.test.ts has none).

import assert from "node:assert/strict";
import { after, before, beforeEach, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, TraceFlags, context, trace } from "@opentelemetry/api";
import type { Span, SpanContext } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import type { ReadableSpan } from "@opentelemetry/sdk-trace-base";
import { Client, SDK_VERSION } from "../src/index.js";
import type { TaskContext } from "../src/index.js";
import { AssignmentSchema } from "../src/gen/conveyor/v1/dispatch_service_pb.js";
import { parseTraceHeaders, processAttempt, traceHeaders } from "../src/internal/tracing.js";
import { recordingTransport, runWorker, startServer, uniqueQueue, waitFor } from "../testkit/helpers.js";
import type { MetadataLog, Server } from "../testkit/helpers.js";

const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
const contextManager = new AsyncLocalStorageContextManager().enable();
const tracer = trace.getTracer("conveyor-tests");

let server: Server;
let client: Client;
let calls: MetadataLog;
let closeTransport: () => void = () => {};

before(async () => {
  context.setGlobalContextManager(contextManager);
  trace.setGlobalTracerProvider(provider);
  server = await startServer();
  const recording = recordingTransport(server.addr);
  calls = recording.calls;
  closeTransport = recording.close;
  client = new Client(server.addr, { transport: recording.transport });
});

after(async () => {
  client?.close();
  closeTransport();
  await server?.stop();
  await provider.shutdown();
  trace.disable();
  context.disable();
});

beforeEach(() => exporter.reset());

/** Runs `fn` in an active span called "caller"; resolves to the span and what `fn` resolved to. */
async function inCaller<T>(fn: () => Promise<T>): Promise<[Span, T]> {
  return tracer.startActiveSpan("caller", async (span) => {
    try {
      return [span, await fn()] as [Span, T];
    } finally {
      span.end();
    }
  });
}

/** The first `count` ended spans called `name` (for which `where` holds), waiting for them. */
function finished(name: string, count = 1, where: (span: ReadableSpan) => boolean = () => true): Promise<ReadableSpan[]> {
  return waitFor(
    () => {
      const found = exporter.getFinishedSpans().filter((span) => span.name === name && where(span));
      return found.length >= count ? found.slice(0, count) : undefined;
    },
    `${count} span(s) "${name}"`,
    5_000,
  );
}

function traceparentOf(span: { spanContext(): SpanContext }): string {
  const { traceId, spanId, traceFlags } = span.spanContext();
  return `00-${traceId}-${spanId}-${traceFlags.toString(16).padStart(2, "0")}`;
}

function metadataOf(method: string): Array<Record<string, string>> {
  return calls.filter((call) => call.method === method).map((call) => call.headers);
}

describe("tracing", () => {
  test("the publish span is the caller's child and its context travels with the task", async () => {
    const queue = uniqueQueue("trace");
    const [caller, id] = await inCaller(() => client.submit("add", [1, 2], { queue }));
    const [publish] = await finished(`publish ${queue}`);
    assert.equal(publish!.kind, SpanKind.PRODUCER);
    assert.equal(publish!.parentSpanContext?.spanId, caller.spanContext().spanId);
    assert.equal(publish!.spanContext().traceId, caller.spanContext().traceId);
    assert.deepEqual(publish!.instrumentationScope, { name: "conveyor", version: SDK_VERSION, schemaUrl: undefined });
    assert.deepEqual(publish!.attributes, {
      "messaging.system": "conveyor",
      "messaging.operation.type": "send",
      "messaging.operation.name": "publish",
      "messaging.destination.name": queue,
      "conveyor.task.name": "add",
      "messaging.message.id": id,
    });
    const task = await client.get(id);
    assert.equal(task.traceContext?.traceparent, traceparentOf(publish!));
    const submitted = metadataOf("SubmitTask").at(-1)!;
    assert.equal(submitted["traceparent"], traceparentOf(publish!));
    // Calls made outside any span carry no trace context.
    assert.equal(metadataOf("GetTask").at(-1)!["traceparent"], undefined);
  });

  test("a trace context given by the caller is kept", async () => {
    const queue = uniqueQueue("trace");
    const mine = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const [, id] = await inCaller(() => client.submit("add", [], { queue, traceContext: { traceparent: mine, tracestate: "k=v" } }));
    const task = await client.get(id);
    assert.equal(task.traceContext?.traceparent, mine);
    assert.equal(task.traceContext?.tracestate, "k=v");
    await finished(`publish ${queue}`); // traced all the same
  });

  test("submitMany is one publish span whose context every task carries", async () => {
    const queue = uniqueQueue("trace");
    const [caller, ids] = await inCaller(() =>
      client.submitMany([
        { name: "add", args: [1, 1], queue },
        { name: "add", args: [2, 2], queue },
        { name: "mul", args: [3, 3], queue },
      ]),
    );
    const [batch] = await finished(`publish ${queue}`);
    assert.equal(batch!.parentSpanContext?.spanId, caller.spanContext().spanId);
    assert.equal(batch!.attributes["messaging.batch.message_count"], 3);
    assert.equal(batch!.attributes["conveyor.task.name"], undefined); // two names
    assert.equal(batch!.attributes["messaging.message.id"], undefined);
    for (const id of ids) assert.equal((await client.get(id)).traceContext?.traceparent, traceparentOf(batch!));
    assert.ok(metadataOf("SubmitTasks").at(-1)!["traceparent"] === traceparentOf(batch!));
  });

  test("the worker's process span continues the trace, is active in the handler, and wait is traced", async () => {
    const queue = uniqueQueue("trace");
    const seen = new Map<string, SpanContext | undefined>();
    const worker = runWorker(server.addr, { queues: [queue] }, (w) => {
      w.register("add", async (ctx: TaskContext, a: number, b: number) => {
        await new Promise((resolve) => setImmediate(resolve));
        seen.set(ctx.taskId, trace.getActiveSpan()?.spanContext());
        tracer.startSpan("inside").end();
        return a + b;
      });
    });
    try {
      const [caller, [id, sum]] = await inCaller(async () => {
        const id = await client.submit("add", [2, 3], { queue });
        return [id, await client.result<number>(id, { timeoutMs: 10_000 })] as const;
      });
      assert.equal(sum, 5);
      const traceId = caller.spanContext().traceId;
      const [process] = await finished(`process ${queue}`);
      assert.equal(process!.kind, SpanKind.CONSUMER);
      assert.equal(process!.spanContext().traceId, traceId);
      // The parent is remote: the server's deliver span, or the publish span.
      assert.equal(process!.parentSpanContext?.isRemote, true);
      assert.equal(process!.parentSpanContext?.traceId, traceId);
      assert.equal(process!.status.code, SpanStatusCode.UNSET);
      assert.deepEqual(process!.attributes, {
        "messaging.system": "conveyor",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": queue,
        "messaging.message.id": id,
        "conveyor.task.name": "add",
        "conveyor.task.attempt": 1,
      });
      assert.equal(seen.get(id)?.spanId, process!.spanContext().spanId);
      const [inside] = await finished("inside");
      assert.equal(inside!.parentSpanContext?.spanId, process!.spanContext().spanId);

      const [wait] = await finished("wait");
      assert.equal(wait!.kind, SpanKind.CLIENT);
      assert.equal(wait!.parentSpanContext?.spanId, caller.spanContext().spanId);
      assert.deepEqual(wait!.attributes, { "messaging.system": "conveyor", "messaging.message.id": id });
      const waits = metadataOf("WaitTask");
      assert.ok(waits.length > 0 && waits.every((headers) => headers["traceparent"] === traceparentOf(wait!)));
    } finally {
      await worker.stop();
    }
  });

  test("a worker of two queues names the process span after the task's queue", async () => {
    // Assignment.queue says which of the worker's queues a task came from.
    const first = uniqueQueue("trace-a");
    const second = uniqueQueue("trace-b");
    const worker = runWorker(server.addr, { queues: [first, second] }, (w) => {
      w.register("add", (_ctx: TaskContext, a: number, b: number) => a + b);
    });
    try {
      const [caller, [id, sum]] = await inCaller(async () => {
        const id = await client.submit("add", [1, 2], { queue: second });
        return [id, await client.result<number>(id, { timeoutMs: 10_000 })] as const;
      });
      assert.equal(sum, 3);
      const [process] = await finished(`process ${second}`);
      assert.equal(process!.spanContext().traceId, caller.spanContext().traceId);
      assert.equal(process!.attributes["messaging.destination.name"], second);
      assert.equal(process!.attributes["messaging.message.id"], id);
      const wrong = exporter.getFinishedSpans().filter((span) => span.name === "process" || span.name === `process ${first}`);
      assert.deepEqual(wrong, []);
    } finally {
      await worker.stop();
    }
  });

  test("an assignment without a queue (an older server) falls back to the worker's queue", async () => {
    const done = async () => ({ case: undefined });
    const assignment = create(AssignmentSchema, { taskId: "t-1", name: "add", attempt: 1 });
    await processAttempt(assignment, "only", done);
    await processAttempt(assignment, undefined, done);
    await processAttempt(create(AssignmentSchema, { taskId: "t-2", name: "add", attempt: 1, queue: "routed" }), "only", done);
    const ours = exporter.getFinishedSpans().filter((span) => ["t-1", "t-2"].includes(String(span.attributes["messaging.message.id"])));
    assert.equal(ours.length, 3);
    const [named, unnamed, routed] = ours;
    assert.equal(named!.name, "process only");
    assert.equal(named!.attributes["messaging.destination.name"], "only");
    assert.equal(unnamed!.name, "process");
    assert.equal("messaging.destination.name" in unnamed!.attributes, false);
    assert.equal(routed!.name, "process routed");
    assert.equal(routed!.attributes["messaging.destination.name"], "routed");
  });

  test("a failed then retried task has two process spans in one trace, the first in ERROR", async () => {
    const queue = uniqueQueue("trace");
    const worker = runWorker(server.addr, { queues: [queue] }, (w) => {
      w.register("flaky", (ctx: TaskContext) => {
        if (ctx.attempt === 1) throw new RangeError("first attempt fails");
        return ctx.attempt;
      });
    });
    try {
      const [caller, id] = await inCaller(() =>
        client.submit("flaky", [], { queue, retry: { maxRetries: 2, backoffBaseMs: 10, backoffMaxMs: 10 } }),
      );
      assert.equal(await client.result(id, { timeoutMs: 10_000 }), 2);
      const spans = await finished(`process ${queue}`, 2);
      const [first, second] = spans.sort(
        (a, b) => Number(a.attributes["conveyor.task.attempt"]) - Number(b.attributes["conveyor.task.attempt"]),
      );
      const traceId = caller.spanContext().traceId;
      assert.equal(first!.spanContext().traceId, traceId);
      assert.equal(second!.spanContext().traceId, traceId);
      assert.deepEqual([first!.attributes["conveyor.task.attempt"], second!.attributes["conveyor.task.attempt"]], [1, 2]);
      assert.equal(first!.status.code, SpanStatusCode.ERROR);
      assert.equal(first!.status.message, "RangeError: first attempt fails");
      const exception = first!.events.find((event) => event.name === "exception");
      assert.equal(exception?.attributes?.["exception.type"], "RangeError");
      assert.equal(exception?.attributes?.["exception.message"], "first attempt fails");
      assert.equal(second!.status.code, SpanStatusCode.UNSET);
      assert.equal(second!.events.length, 0);
    } finally {
      await worker.stop();
    }
  });

  test("W3C traceparent: written and read back, invalid ones refused", () => {
    const valid: SpanContext = {
      traceId: "4bf92f3577b34da6a3ce929d0e0e4736",
      spanId: "00f067aa0ba902b7",
      traceFlags: TraceFlags.SAMPLED,
    };
    const ctx = trace.setSpanContext(ROOT_CONTEXT, valid);
    assert.deepEqual(traceHeaders(ctx), { traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" });
    assert.deepEqual(traceHeaders(ROOT_CONTEXT), {});
    assert.deepEqual(traceHeaders(trace.setSpanContext(ROOT_CONTEXT, { ...valid, traceId: "0".repeat(32) })), {});
    const parsed = parseTraceHeaders({ traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03", tracestate: "a=1,b=2" });
    assert.equal(parsed?.traceId, valid.traceId);
    assert.equal(parsed?.spanId, valid.spanId);
    assert.equal(parsed?.traceFlags, 3);
    assert.equal(parsed?.isRemote, true);
    assert.equal(parsed?.traceState?.get("b"), "2");
    for (const bad of [
      "",
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
      "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
      "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
      "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
      "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
    ]) {
      assert.equal(parseTraceHeaders({ traceparent: bad }), undefined, bad);
    }
    // A later version may add fields.
    assert.equal(parseTraceHeaders({ traceparent: "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra" })?.spanId, valid.spanId);
  });
});
