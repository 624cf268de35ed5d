// Example worker serving add, xsum, fail, lang and sleep: the TypeScript side
// of the cross-language matrix. Build with `npm run build`, then run
// `node dist/examples/worker.js`.
//
// Environment: CONVEYOR_ADDR (default http://127.0.0.1:50051), CONVEYOR_TLS_CA,
// CONVEYOR_TLS_CERT and CONVEYOR_TLS_KEY (TLS; see README), CONVEYOR_QUEUE
// (default "default"), CONVEYOR_CONCURRENCY (default 8), CONVEYOR_WORKER_ID
// (default <hostname>-<pid>), CONVEYOR_LOG_LEVEL (default info).
// Runs until SIGTERM or SIGINT, then drains and exits 0.

import { setTimeout as sleepMs } from "node:timers/promises";
import { RawPayload, TaskFailure, Worker } from "../src/index.js";
import type { TaskContext } from "../src/index.js";

/** Python's ValueError, as the matrix expects: a final (non-retryable) failure. */
class ValueError extends Error {
  override name = "ValueError";
  readonly retryable = false;
}

const addr = process.env["CONVEYOR_ADDR"] || undefined; // undefined: the SDK's default (https:// with CONVEYOR_TLS_*)
const queue = process.env["CONVEYOR_QUEUE"] || "default";
const concurrencyText = process.env["CONVEYOR_CONCURRENCY"] || "8";
const concurrency = Number(concurrencyText);
if (!Number.isInteger(concurrency) || concurrency < 1) {
  console.error(`CONVEYOR_CONCURRENCY=${JSON.stringify(concurrencyText)}: expected a positive integer`);
  process.exit(2);
}
const workerId = process.env["CONVEYOR_WORKER_ID"] || undefined;

const worker = new Worker(addr, { queues: [queue], concurrency, ...(workerId ? { workerId } : {}) });

// add(a, b): integers stay exact integers, any float makes a float.
worker.register("add", (ctx: TaskContext) => {
  const a = numberArg(ctx, 0);
  const b = numberArg(ctx, 1);
  return sum([a, b]);
});

// xsum([n, ...]): the sum of a JSON array of numbers.
worker.register("xsum", (ctx: TaskContext) => {
  const text = argText(ctx, 0);
  const parsed: unknown = JSON.parse(text);
  if (!Array.isArray(parsed) || !parsed.every((item) => typeof item === "number")) {
    throw new TaskFailure("TypeError", "xsum expects an array of numbers", { retryable: false });
  }
  // The literals, in order, tell integers from floats (JSON.parse forgets).
  const literals = text.match(/-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/g) ?? [];
  return sum(literals.map(literal));
});

// fail(message): always fails with a non-retryable ValueError.
worker.register("fail", (_ctx: TaskContext, message: unknown = "boom") => {
  throw new ValueError(typeof message === "string" ? message : JSON.stringify(message));
});

// lang(): this worker's language.
worker.register("lang", () => "typescript");

// sleep(seconds): sleeps, stops early when cancelled; returns null.
worker.register("sleep", async (ctx: TaskContext, seconds: number) => {
  if (typeof seconds !== "number" || !(seconds >= 0)) {
    throw new TaskFailure("ValueError", `sleep expects a non-negative number of seconds, got ${JSON.stringify(seconds)}`, {
      retryable: false,
    });
  }
  await sleepMs(seconds * 1000, undefined, { signal: ctx.signal });
  return null;
});

console.error(`example worker ${worker.workerId} serving ${worker.addresses.join(",")} queue=${queue} concurrency=${concurrency}`);
worker
  .run()
  .then(() => {
    console.error("example worker stopped");
    process.exit(0);
  })
  .catch((error: unknown) => {
    console.error("example worker failed:", error);
    process.exit(1);
  });

/** A JSON number literal: exact (BigInt) when integral, else a float. */
type Num = { int: bigint } | { float: number };

function literal(text: string): Num {
  return /^-?\d+$/.test(text) ? { int: BigInt(text) } : { float: Number(text) };
}

function argText(ctx: TaskContext, index: number): string {
  const payload = ctx.rawArgs[index];
  if (payload === undefined) {
    throw new TaskFailure("TypeError", `missing positional argument ${index}`, { retryable: false });
  }
  return new TextDecoder().decode(payload.data).trim();
}

function numberArg(ctx: TaskContext, index: number): Num {
  const text = argText(ctx, index);
  if (typeof JSON.parse(text) !== "number") {
    throw new TaskFailure("TypeError", `argument ${index} is not a number: ${text}`, { retryable: false });
  }
  return literal(text);
}

/** Sums exactly when every term is an integer, in floating point otherwise. */
function sum(terms: Num[]): RawPayload {
  if (terms.every((term): term is { int: bigint } => "int" in term)) {
    return RawPayload.json(terms.reduce((total, term) => total + term.int, 0n).toString());
  }
  const total = terms.reduce((acc, term) => acc + ("int" in term ? Number(term.int) : term.float), 0);
  if (!Number.isFinite(total)) {
    throw new TaskFailure("ArithmeticError", "result is not a finite number", { retryable: false });
  }
  const text = JSON.stringify(total);
  // Keep it a float on the wire: 3.0, not 3.
  return RawPayload.json(/^-?\d+$/.test(text) ? `${text}.0` : text);
}
