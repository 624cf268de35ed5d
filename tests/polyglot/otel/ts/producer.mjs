// The traced TypeScript producer of the cross-language trace test, plain ESM
// over the built TypeScript SDK (clients/typescript/dist: `npm run build`).
//
// Inside a span "checkout", submits one task CONVEYOR_TASK (default
// "otel.echo") with the argument "ping" to CONVEYOR_QUEUE at CONVEYOR_ADDR,
// waits for it (20 s at most) and prints one JSON line:
// {"task_id": ..., "trace_id": ..., "result": ...}. Tracing goes through the
// OpenTelemetry SDK and its OTLP/gRPC exporter, configured by the standard
// variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, OTEL_BSP_*);
// the Conveyor SDK adds its own spans through the OpenTelemetry API.
// Retries: CONVEYOR_MAX_RETRIES (default 2), 100 ms apart. Exits 1 on any error.

import { trace } from "@opentelemetry/api";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-grpc";
import { defaultResource, detectResources, envDetector } from "@opentelemetry/resources";
import { BatchSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { NodeTracerProvider } from "@opentelemetry/sdk-trace-node";

import { Client, TaskState, taskResult } from "../../../../clients/typescript/dist/src/index.js";

const TIMEOUT_MS = 20_000;

async function main() {
  // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (the env detector); the
  // exporter reads OTEL_EXPORTER_OTLP_ENDPOINT (http:// means plaintext).
  const provider = new NodeTracerProvider({
    resource: defaultResource().merge(detectResources({ detectors: [envDetector] })),
    spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter())],
  });
  provider.register(); // the global provider, and AsyncLocalStorage for the current span
  const tracer = trace.getTracer("polyglot.producer");
  const queue = process.env["CONVEYOR_QUEUE"] || "default";
  const name = process.env["CONVEYOR_TASK"] || "otel.echo";
  const maxRetries = Number(process.env["CONVEYOR_MAX_RETRIES"] || "2");
  const client = new Client(process.env["CONVEYOR_ADDR"] || "http://127.0.0.1:50051");
  let line;
  try {
    line = await tracer.startActiveSpan("checkout", async (span) => {
      try {
        const taskId = await client.submit(name, ["ping"], { queue, retry: { maxRetries, backoffBaseMs: 100 } });
        const task = await client.wait(taskId, { timeoutMs: TIMEOUT_MS });
        if (task.state !== TaskState.SUCCEEDED) {
          throw new Error(`task ${taskId} ended ${TaskState[task.state]}: ${task.error?.type}: ${task.error?.message}`);
        }
        return { task_id: taskId, trace_id: span.spanContext().traceId, result: taskResult(task) };
      } finally {
        span.end();
      }
    });
  } finally {
    client.close();
    await provider.shutdown(); // exports what is left
  }
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error("producer failed:", error instanceof Error ? (error.stack ?? error.message) : error);
    process.exit(1);
  },
);
