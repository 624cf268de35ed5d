// Example producer: submits add(2, 3), xsum([1, 2, 3.5]), lang() and
// fail("boom from typescript") to CONVEYOR_QUEUE at CONVEYOR_ADDR, awaits
// each (20 s at most) and prints one JSON line with what came back. Exits 1,
// with the error on stderr, when anything unexpected happens.

import { Client, TaskFailedError } from "../src/index.js";

const TIMEOUT_MS = 20_000;

async function main(): Promise<void> {
  const addr = process.env["CONVEYOR_ADDR"] || undefined; // undefined: the SDK's default (https:// with CONVEYOR_TLS_*)
  const queue = process.env["CONVEYOR_QUEUE"] || "default";
  const client = new Client(addr);
  try {
    const options = { queue };
    const [addId, xsumId, langId, failId] = await client.submitMany([
      { name: "add", args: [2, 3], ...options },
      { name: "xsum", args: [[1, 2, 3.5]], ...options },
      { name: "lang", args: [], ...options },
      { name: "fail", args: ["boom from typescript"], ...options },
    ]);
    const add = await client.result(addId!, { timeoutMs: TIMEOUT_MS });
    const xsum = await client.result(xsumId!, { timeoutMs: TIMEOUT_MS });
    const lang = await client.result(langId!, { timeoutMs: TIMEOUT_MS });
    let fail: { type: string; message: string; has_traceback: boolean };
    try {
      const value = await client.result(failId!, { timeoutMs: TIMEOUT_MS });
      throw new Error(`fail() succeeded with ${JSON.stringify(value)}`);
    } catch (error) {
      if (!(error instanceof TaskFailedError)) throw error;
      fail = { type: error.type, message: error.message, has_traceback: error.traceback.length > 0 };
    }
    process.stdout.write(`${toJson({ producer: "typescript", add, xsum, lang, fail })}\n`);
  } finally {
    client.close();
  }
}

/** JSON with ", " and ": " separators, as Python's json.dumps writes it. */
function toJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(toJson).join(", ")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value).map(([key, item]) => `${JSON.stringify(key)}: ${toJson(item)}`);
    return `{${entries.join(", ")}}`;
  }
  return JSON.stringify(value) ?? "null";
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error("producer failed:", error instanceof Error ? (error.stack ?? error.message) : error);
    process.exit(1);
  },
);
