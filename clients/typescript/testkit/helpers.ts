// Test helpers (outside test/, which node --test runs whole): a real `conveyor dev` server per test file, in-process and
// child-process workers, and waiting for conditions with deadlines.

import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { once } from "node:events";
import { dirname, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import type { Interceptor, Transport } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import { MAX_MESSAGE_BYTES, NAMESPACE_ENV, SERVICE_ADDRESS_ENV, TLS_ENV, Worker, stderrLogger } from "../src/index.js";
import type { WorkerOptions } from "../src/index.js";

const here = dirname(fileURLToPath(import.meta.url));
/** clients/typescript (this file runs from dist/testkit). */
export const packageRoot = resolve(here, "..", "..");
/** The repository's root (scripts/ is there). */
export const repoRoot = resolve(packageRoot, "..", "..");

/** The example programs, compiled. */
export const exampleWorker = resolve(packageRoot, "dist", "examples", "worker.js");
export const exampleProducer = resolve(packageRoot, "dist", "examples", "producer.js");
export const examplePhilosophers = resolve(packageRoot, "dist", "examples", "philosophers.js");

export interface Server {
  addr: string;
  process: ChildProcess;
  stop(): Promise<void>;
  /** SIGKILL, as a crash would. */
  kill(): void;
}

/** The `conveyor` binary the tests run: $CONVEYOR_BIN, else target/debug/conveyor of this repository. */
export const conveyorBin = process.env["CONVEYOR_BIN"] || resolve(repoRoot, "target", "debug", "conveyor");

// The per-service address variables override the addresses tests give their
// clients and workers (by design); one left set in the shell that runs the
// suite would send every test's calls elsewhere. The TLS variables would make
// every client and worker use TLS, the namespace variable would move every
// test into that namespace. Tests that use them set them.
for (const name of [...Object.values(SERVICE_ADDRESS_ENV), ...Object.values(TLS_ENV), NAMESPACE_ENV]) delete process.env[name];

/** Starts `conveyor dev` on a free port (with `extraArgs`) and waits for its "listening on" line. */
export function startServer(extraArgs: readonly string[] = []): Promise<Server> {
  return startConveyor(
    ["dev", "--listen", "127.0.0.1:0", "--heartbeat-interval", "200ms", "--lease-ttl", "1s", "--track-started", ...extraArgs],
    "conveyor dev",
  );
}

/**
 * Starts `conveyor serve ROLES...` on the Redis at `redisUrl` under `prefix`,
 * on a free port, and waits for its "listening on" line. Server settings in
 * the environment (CONVEYOR_PEERS and the like) are not passed on: the
 * layout is what `extraArgs` says.
 */
export function startRoles(
  roles: readonly string[],
  redisUrl: string,
  prefix: string,
  extraArgs: readonly string[] = [],
): Promise<Server> {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) if (!key.startsWith("CONVEYOR_")) env[key] = value;
  return startConveyor(
    [
      "serve", ...roles,
      "--store", redisUrl, "--redis-prefix", prefix, "--listen", "127.0.0.1:0",
      "--heartbeat-interval", "200ms", "--lease-ttl", "1s", "--track-started", "--grace", "1s",
      ...extraArgs,
    ],
    `conveyor serve ${roles.join(" ")}`,
    env,
  );
}

/**
 * The Redis of the tests that need one: $CONVEYOR_TEST_REDIS, which
 * scripts/test sets. Without it such tests fail, saying so, unless
 * CONVEYOR_SKIP_REDIS=1 asks to skip them (then this returns undefined).
 */
export function testRedisUrl(): string | undefined {
  const url = process.env["CONVEYOR_TEST_REDIS"];
  if (url !== undefined && url !== "") return url;
  if (process.env["CONVEYOR_SKIP_REDIS"] === "1") return undefined;
  throw new Error(
    "CONVEYOR_TEST_REDIS is not set: run scripts/test, or start one (scripts/start-redis 6390) and set CONVEYOR_TEST_REDIS=redis://127.0.0.1:6390, or set CONVEYOR_SKIP_REDIS=1 to skip Redis tests",
  );
}

/** Spawns `conveyor ARGS...` and waits for its "listening on HOST:PORT" line. */
async function startConveyor(args: readonly string[], label: string, baseEnv: NodeJS.ProcessEnv = process.env): Promise<Server> {
  const child = spawn(conveyorBin, args, {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...baseEnv, RUST_LOG: process.env["RUST_LOG"] ?? "warn" },
  });
  let stderr = "";
  child.stderr!.on("data", (chunk: Buffer) => {
    stderr = (stderr + chunk.toString()).slice(-20_000);
  });
  const lines = createInterface({ input: child.stdout! });
  const addr = await new Promise<string>((resolvePromise, reject) => {
    const timer = setTimeout(() => fail(new Error(`${label} printed no 'listening on' line within 30 s`)), 30_000);
    const fail = (error: Error): void => {
      clearTimeout(timer);
      child.kill("SIGKILL");
      reject(new Error(`${error.message}\nstderr:\n${stderr}`));
    };
    child.once("error", fail);
    child.once("exit", (code, signal) => fail(new Error(`${label} exited early (code ${code}, signal ${signal})`)));
    lines.on("line", (line) => {
      const match = /^listening on (\S+:\d+)$/.exec(line.trim());
      if (match === null) return;
      clearTimeout(timer);
      child.removeAllListeners("exit");
      child.removeAllListeners("error");
      resolvePromise(`http://${match[1]}`);
    });
  });
  let stopping = false;
  child.once("exit", (code, signal) => {
    if (stopping) return;
    process.stderr.write(`${label} at ${addr} exited unexpectedly (code ${code}, signal ${signal}); its stderr:\n${stderr}\n`);
  });
  return {
    addr,
    process: child,
    stop: () => {
      stopping = true;
      return stopProcess(child);
    },
    kill: () => {
      stopping = true;
      child.kill("SIGKILL");
    },
  };
}

/** SIGTERM, then SIGKILL when the process has not exited within `graceMs`. */
export async function stopProcess(child: ChildProcess, graceMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, "exit");
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
  await exited;
  clearTimeout(timer);
}

/** Polls `condition` until it returns a truthy value, failing after `timeoutMs`. */
export async function waitFor<T>(
  condition: () => T | Promise<T>,
  what: string,
  timeoutMs = 10_000,
  intervalMs = 25,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await condition();
      if (value) return value as NonNullable<T>;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ""}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** A unique queue name, so tests sharing a server do not see each other's tasks. */
let queueCounter = 0;
export function uniqueQueue(prefix = "q"): string {
  queueCounter += 1;
  return `${prefix}-${process.pid}-${queueCounter}-${Date.now().toString(36)}`;
}

export interface RunningWorker {
  worker: Worker;
  /** Aborts run() and waits for the drain to finish. */
  stop(): Promise<void>;
  /** The promise run() returned. */
  done: Promise<void>;
}

/** Runs an in-process worker until stop(). */
export function runWorker(addr: string | undefined, options: WorkerOptions, register: (worker: Worker) => void): RunningWorker {
  const worker = new Worker(addr, { logger: stderrLogger("warn"), reconnectMinMs: 20, ...options });
  register(worker);
  const controller = new AbortController();
  const done = worker.run({ signal: controller.signal, handleSignals: false });
  return {
    worker,
    done,
    stop: async () => {
      controller.abort();
      await done;
    },
  };
}

/** Spawns a node program with extra environment; collects its output. */
export function spawnNode(
  script: string,
  env: Record<string, string>,
): { child: ChildProcess; stdout: () => string; stderr: () => string; exit: Promise<[number | null, NodeJS.Signals | null]> } {
  const child = spawn(process.execPath, [script], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, CONVEYOR_LOG_LEVEL: "warn", ...env },
  });
  let out = "";
  let err = "";
  child.stdout!.on("data", (chunk: Buffer) => (out += chunk.toString()));
  child.stderr!.on("data", (chunk: Buffer) => (err += chunk.toString()));
  const exit = once(child, "exit") as Promise<[number | null, NodeJS.Signals | null]>;
  return { child, stdout: () => out, stderr: () => err, exit };
}

/** The method name (e.g. "SubmitTask") and request metadata of every call made through a transport. */
export type MetadataLog = Array<{ method: string; headers: Record<string, string> }>;

/** A gRPC transport to `addr` that records the metadata of every call it makes; close() closes its connection. */
export function recordingTransport(addr: string): { transport: Transport; calls: MetadataLog; close(): void } {
  const calls: MetadataLog = [];
  const record: Interceptor = (next) => (request) => {
    calls.push({ method: request.method.name, headers: Object.fromEntries(request.header.entries()) });
    return next(request);
  };
  const sessionManager = new Http2SessionManager(addr);
  const transport = createGrpcTransport({
    baseUrl: addr,
    sessionManager,
    interceptors: [record],
    readMaxBytes: MAX_MESSAGE_BYTES,
    writeMaxBytes: MAX_MESSAGE_BYTES,
  });
  return { transport, calls, close: () => sessionManager.abort() };
}
