// The parity row `authorization`, against a real `conveyor dev --auth-file`:
// principals with one role each (producer, worker, reader, admin) in the
// namespace "team-a". Every call the SDK wraps is allowed or refused with a
// PermissionDeniedError exactly as the server's table of permissions says;
// nothing is allowed in "team-b"; no token, a bad token and a revoked one are
// an UnauthenticatedError; the worker stream is checked against the worker's
// namespace.

import assert from "node:assert/strict";
import { createHash, randomUUID } from "node:crypto";
import { mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  Client,
  Code,
  ConveyorError,
  PermissionDeniedError,
  UnauthenticatedError,
  Worker,
  chain,
  sig,
  silentLogger,
} from "../src/index.js";
import { runWorker, startServer, uniqueQueue, waitFor } from "../testkit/helpers.js";
import type { Server } from "../testkit/helpers.js";

const TEAM_A = "team-a";
const TEAM_B = "team-b";
const ROLES = ["producer", "worker", "reader", "admin"] as const;
type Role = (typeof ROLES)[number];
type Permission = "submit" | "cancel" | "admin" | "read" | "work";

/** What each role grants (the server's table): producer = submit + cancel + read; worker = work; reader = read; admin = all. */
const GRANTS: Record<Role, readonly Permission[]> = {
  producer: ["submit", "cancel", "read"],
  worker: ["work"],
  reader: ["read"],
  admin: ["submit", "cancel", "admin", "read", "work"],
};

/** A made-up id: calls that are allowed answer NOT_FOUND for it. */
const UNKNOWN_ID = "01900000-0000-7000-8000-000000000000";

/**
 * One token per principal, fresh each run. "leaver" (a reader) is removed
 * from the file to revoke its token; "scheduler" (a producer) is the
 * principal the server's scheduler submits schedule runs as.
 */
type Principal = Role | "leaver" | "scheduler";
const tokens: Record<Principal, string> = {
  producer: `producer-${randomUUID()}`,
  worker: `worker-${randomUUID()}`,
  reader: `reader-${randomUUID()}`,
  admin: `admin-${randomUUID()}`,
  leaver: `leaver-${randomUUID()}`,
  scheduler: `scheduler-${randomUUID()}`,
};

/** The role each principal holds in team-a. */
const ROLE_OF: Record<Principal, Role> = { producer: "producer", worker: "worker", reader: "reader", admin: "admin", leaver: "reader", scheduler: "producer" };

/** The auth file: each principal holds its role in team-a only. */
function authFile(principals: readonly Principal[]): string {
  return principals
    .map((name) => {
      const role = ROLE_OF[name];
      const hash = createHash("sha256").update(tokens[name]).digest("hex");
      return `[[principal]]\nname = "${name}"\ntoken_sha256 = ["${hash}"]\nroles = { "${TEAM_A}" = ["${role}"] }\n`;
    })
    .join("\n");
}

let dir: string;
let file: string;
let server: Server;
let admin: Client;
/** Fixtures in team-a, made by the admin: a task and a workflow that stay queued (no worker consumes their queue), a schedule. */
let taskId: string;
let workflowId: string;
const scheduleId = `auth-${process.pid}`;
const idleQueue = uniqueQueue("auth-idle");

/** Replaces the auth file in one step, as the server may read it at any moment. */
function writeAuthFile(text: string): void {
  const next = `${file}.next`;
  writeFileSync(next, text);
  renameSync(next, file);
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "conveyor-auth-"));
  file = join(dir, "auth.toml");
  writeAuthFile(authFile([...ROLES, "leaver", "scheduler"]));
  // Without --scheduler-token (or --auth-token), a server with only --auth-file
  // has its scheduler submit schedule runs with no credentials: TriggerSchedule
  // then fails UNAVAILABLE ("store unavailable: submission service: ... missing
  // authorization: Bearer <token>") and no timed run fires. The scheduler gets
  // a principal of its own, as the flag's documentation asks.
  server = await startServer(["--auth-file", file, "--metrics-listen", "off", "--scheduler-token", tokens.scheduler]);
  admin = new Client(server.addr, { token: tokens.admin, namespace: TEAM_A });
  taskId = await admin.submit("add", [1, 2], { queue: idleQueue });
  workflowId = (await admin.submitWorkflow(chain(sig("add", [1, 1]), sig("add", [2])), { queue: idleQueue })).id;
  await admin.createSchedule({ id: scheduleId, task: "add", args: [1, 1], everyMs: 3_600_000, options: { queue: idleQueue } });
});

after(async () => {
  admin?.close();
  await server?.stop();
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
});

/** A wrapped call: its name, the permission the server checks, and a call with arguments that make sense in team-a. */
interface Call {
  name: string;
  permission: Permission;
  run(client: Client, tag: string): Promise<unknown>;
}

/** Reads the first value of a stream and stops watching. */
async function first<T>(stream: AsyncGenerator<T, void, undefined>): Promise<T | undefined> {
  for await (const value of stream) return value;
  return undefined;
}

/** Every call Client wraps (the worker stream is checked apart). */
const CALLS: readonly Call[] = [
  { name: "submit", permission: "submit", run: (c) => c.submit("add", [1, 1], { queue: idleQueue }) },
  { name: "submitMany", permission: "submit", run: (c) => c.submitMany([{ name: "add", args: [1, 1], queue: idleQueue }]) },
  { name: "submitWorkflow", permission: "submit", run: (c) => c.submitWorkflow(chain(sig("add", [1, 1]), sig("add", [1])), { queue: idleQueue }) },
  { name: "cancel", permission: "cancel", run: (c) => c.cancel(UNKNOWN_ID) },
  { name: "cancelWorkflow", permission: "cancel", run: (c) => c.cancelWorkflow(UNKNOWN_ID) },
  { name: "replay", permission: "admin", run: (c) => c.replay(UNKNOWN_ID) },
  { name: "forget", permission: "admin", run: (c) => c.forget(UNKNOWN_ID) },
  { name: "pauseQueue", permission: "admin", run: (c, tag) => c.pauseQueue(`paused-${tag}`) },
  { name: "resumeQueue", permission: "admin", run: (c, tag) => c.resumeQueue(`paused-${tag}`) },
  { name: "createSchedule", permission: "admin", run: (c, tag) => c.createSchedule({ id: `created-${tag}`, task: "add", everyMs: 3_600_000 }) },
  {
    name: "updateSchedule",
    permission: "admin",
    run: (c) => c.updateSchedule({ id: scheduleId, task: "add", args: [2, 2], everyMs: 3_600_000, options: { queue: idleQueue } }),
  },
  { name: "pauseSchedule", permission: "admin", run: (c) => c.pauseSchedule(scheduleId) },
  { name: "resumeSchedule", permission: "admin", run: (c) => c.resumeSchedule(scheduleId) },
  { name: "triggerSchedule", permission: "admin", run: (c) => c.triggerSchedule(scheduleId) },
  { name: "deleteSchedule", permission: "admin", run: (c) => c.deleteSchedule(`never-created-${randomUUID()}`) },
  { name: "get", permission: "read", run: (c) => c.get(taskId) },
  { name: "wait", permission: "read", run: (c) => c.wait(taskId, { timeoutMs: 100 }) },
  { name: "result", permission: "read", run: (c) => c.result(taskId, { timeoutMs: 100 }) },
  { name: "watch", permission: "read", run: (c) => first(c.watch(taskId)) },
  { name: "listDeadLetters", permission: "read", run: (c) => c.listDeadLetters() },
  { name: "deadLetters", permission: "read", run: (c) => first(c.deadLetters()) },
  { name: "getWorkflow", permission: "read", run: (c) => c.getWorkflow(workflowId) },
  { name: "waitWorkflow", permission: "read", run: (c) => c.waitWorkflow(workflowId, { timeoutMs: 100 }) },
  { name: "workflowResult", permission: "read", run: (c) => c.workflowResult(workflowId, { timeoutMs: 100 }) },
  { name: "watchWorkflow", permission: "read", run: (c) => first(c.watchWorkflow(workflowId)) },
  { name: "listWorkers", permission: "read", run: (c) => c.listWorkers() },
  { name: "getSchedule", permission: "read", run: (c) => c.getSchedule(scheduleId) },
  { name: "listSchedules", permission: "read", run: (c) => c.listSchedules() },
  { name: "listScheduleRuns", permission: "read", run: (c) => c.listScheduleRuns(scheduleId) },
];

/** What a call ended with: "ok", or the error it threw. */
async function outcome(call: Call, client: Client, tag: string): Promise<"ok" | unknown> {
  try {
    await call.run(client, tag);
    return "ok";
  } catch (error) {
    return error;
  }
}

/** Allowed: success, or an answer about the made-up id or the wait's timeout; anything but an auth error. */
function assertAllowed(result: unknown, what: string): void {
  if (result === "ok") return;
  assert.ok(result instanceof ConveyorError, `${what}: threw ${String(result)}`);
  assert.ok(
    [Code.NotFound, Code.DeadlineExceeded].includes(result.code),
    `${what}: allowed, so success, NOT_FOUND or DEADLINE_EXCEEDED expected, got ${result.message}`,
  );
}

/** Refused: a PermissionDeniedError (not an UnauthenticatedError) with the server's message naming the principal and namespace. */
function assertDenied(result: unknown, what: string, principal: string, namespace: string): void {
  assert.ok(result instanceof PermissionDeniedError, `${what}: PermissionDeniedError expected, got ${String(result)}`);
  assert.ok(!(result instanceof UnauthenticatedError), `${what}: not an UnauthenticatedError`);
  assert.equal(result.code, Code.PermissionDenied);
  assert.equal(result.name, "PermissionDeniedError");
  // "principal 'p' may not submit in namespace 'team-b' (its roles there: none); ..." or, when no
  // namespace grants the permission, "principal 'p' may not administer in any namespace; ...".
  assert.match(result.rawMessage, new RegExp(`^principal '${principal}' may not .* in (namespace '${namespace}'|any namespace)`), `${what}: the server's message`);
  assert.equal(result.message, `PERMISSION_DENIED: ${result.rawMessage}`);
}

/** An UnauthenticatedError (not a PermissionDeniedError). */
function assertUnauthenticated(result: unknown, what: string): void {
  assert.ok(result instanceof UnauthenticatedError, `${what}: UnauthenticatedError expected, got ${String(result)}`);
  assert.ok(!(result instanceof PermissionDeniedError), `${what}: not a PermissionDeniedError`);
  assert.equal(result.code, Code.Unauthenticated);
  assert.equal(result.name, "UnauthenticatedError");
}

/** Runs a worker until its session is established (listed in its namespace) or run() fails; stops it. */
async function connectWorker(token: string | undefined, namespace: string): Promise<"ok" | unknown> {
  const workerId = `auth-${randomUUID()}`;
  const worker = new Worker(server.addr, { namespace, workerId, queues: [uniqueQueue("auth")], logger: silentLogger, reconnectMinMs: 20, ...(token === undefined ? {} : { token }) });
  worker.register("add", (_ctx, a: number, b: number) => a + b);
  const stop = new AbortController();
  let failure: unknown;
  let ended = false;
  const running = worker.run({ signal: stop.signal, handleSignals: false }).then(
    () => (ended = true),
    (error: unknown) => {
      ended = true;
      failure = error;
    },
  );
  const lister = new Client(server.addr, { token: tokens.admin, namespace: TEAM_A });
  try {
    await waitFor(
      async () => ended || (namespace === TEAM_A && (await lister.listWorkers()).some((info) => info.workerId === workerId)),
      `worker in ${namespace} to connect or be refused`,
    );
  } finally {
    stop.abort();
    await running;
    lister.close();
  }
  return failure === undefined ? "ok" : failure;
}

describe("parity: authorization", () => {
  test("parity_authorization: in its namespace each role may make exactly the calls its role grants; the rest are PermissionDeniedError", async () => {
    for (const role of ROLES) {
      const client = new Client(server.addr, { token: tokens[role], namespace: TEAM_A });
      try {
        for (const call of CALLS) {
          const what = `${role} ${call.name} in ${TEAM_A}`;
          const result = await outcome(call, client, `${role}-a`);
          if (GRANTS[role].includes(call.permission)) assertAllowed(result, what);
          else assertDenied(result, what, role, TEAM_A);
        }
      } finally {
        client.close();
      }
    }
  });

  test("parity_authorization: in a namespace where it holds no role every call of every role is PermissionDeniedError", async () => {
    for (const role of ROLES) {
      const client = new Client(server.addr, { token: tokens[role], namespace: TEAM_B });
      try {
        for (const call of CALLS) {
          assertDenied(await outcome(call, client, `${role}-b`), `${role} ${call.name} in ${TEAM_B}`, role, TEAM_B);
        }
      } finally {
        client.close();
      }
    }
  });

  test("parity_authorization: the worker stream needs the work permission in the worker's namespace", async () => {
    for (const role of ROLES) {
      const inA = await connectWorker(tokens[role], TEAM_A);
      if (GRANTS[role].includes("work")) assert.equal(inA, "ok", `${role}'s worker in ${TEAM_A}: ${String(inA)}`);
      else assertDenied(inA, `${role}'s worker in ${TEAM_A}`, role, TEAM_A);
      assertDenied(await connectWorker(tokens[role], TEAM_B), `${role}'s worker in ${TEAM_B}`, role, TEAM_B);
    }
  });

  test("parity_authorization: a worker principal's worker runs a producer's task in its namespace; in another its session is refused", async () => {
    const queue = uniqueQueue("auth-run");
    const producer = new Client(server.addr, { token: tokens.producer, namespace: TEAM_A });
    const worker = runWorker(server.addr, { token: tokens.worker, namespace: TEAM_A, queues: [queue] }, (w) =>
      w.register("add", (_ctx, a: number, b: number) => a + b),
    );
    try {
      const id = await producer.submit("add", [20, 22], { queue });
      assert.equal(await producer.result(id, { timeoutMs: 10_000 }), 42);
      assert.equal((await producer.get(id)).namespace, TEAM_A);
    } finally {
      await worker.stop();
      producer.close();
    }
    const refused = new Worker(server.addr, { token: tokens.worker, namespace: TEAM_B, queues: [queue], logger: silentLogger });
    refused.register("add", (_ctx, a: number, b: number) => a + b);
    await assert.rejects(refused.run({ handleSignals: false }), (error: unknown) => {
      assertDenied(error, `worker in ${TEAM_B}`, "worker", TEAM_B);
      return true;
    });
  });

  test("parity_authorization: no token, a bad token and a revoked token are UnauthenticatedError, for every call and the worker stream", async () => {
    const none = new Client(server.addr, { namespace: TEAM_A });
    const bad = new Client(server.addr, { token: `bad-${randomUUID()}`, namespace: TEAM_A });
    const leaver = new Client(server.addr, { token: tokens.leaver, namespace: TEAM_A });
    try {
      for (const [label, client] of [["no token", none], ["a bad token", bad]] as const) {
        for (const call of CALLS) assertUnauthenticated(await outcome(call, client, "unauth"), `${call.name} with ${label}`);
      }
      assertUnauthenticated(await connectWorker(undefined, TEAM_A), "worker with no token");
      assertUnauthenticated(await connectWorker(`bad-${randomUUID()}`, TEAM_A), "worker with a bad token");

      // The leaver reads until its principal leaves the file; the server re-reads it within about 2 s.
      assert.equal((await leaver.get(taskId)).id, taskId);
      writeAuthFile(authFile([...ROLES, "scheduler"]));
      await waitFor(
        async () => (await outcome(CALLS.find((call) => call.name === "get")!, leaver, "revoked")) instanceof UnauthenticatedError,
        "the removed principal's token to be refused",
        15_000,
      );
      for (const call of CALLS) assertUnauthenticated(await outcome(call, leaver, "revoked"), `${call.name} with a revoked token`);
      assertUnauthenticated(await connectWorker(tokens.leaver, TEAM_A), "worker with a revoked token");
      // The principals that stayed are unaffected.
      assert.equal((await admin.get(taskId)).id, taskId);
    } finally {
      none.close();
      bad.close();
      leaver.close();
    }
  });
});
