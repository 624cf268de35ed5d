// Without an OpenTelemetry SDK registered (this file registers none; node
// --test runs each file in its own process) the SDK sends no trace context:
// not in the task, not in the calls' metadata.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { trace } from "@opentelemetry/api";
import { Client } from "../src/index.js";
import { recordingTransport, startServer, uniqueQueue } from "../testkit/helpers.js";
import type { MetadataLog, Server } from "../testkit/helpers.js";

let server: Server;
let client: Client;
let calls: MetadataLog;
let closeTransport: () => void = () => {};

before(async () => {
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
});

describe("tracing without an OpenTelemetry SDK", () => {
  test("no trace context is stored with the task or sent as metadata", async () => {
    const queue = uniqueQueue("untraced");
    const [id, ids] = await trace.getTracer("caller").startActiveSpan("caller", async (span) => {
      try {
        return [await client.submit("add", [1, 2], { queue }), await client.submitMany([{ name: "add", args: [1, 1], queue }])] as const;
      } finally {
        span.end();
      }
    });
    for (const taskId of [id, ...ids]) assert.equal((await client.get(taskId)).traceContext, undefined);
    await assert.rejects(client.wait(id, { timeoutMs: 0 })); // no worker: times out at once
    assert.ok(calls.length >= 5);
    for (const call of calls) assert.equal(call.headers["traceparent"], undefined, call.method);
  });
});
