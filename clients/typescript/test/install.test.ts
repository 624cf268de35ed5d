// Installs this package as its users do, from clean directories, on the
// Node this suite runs on: `npm install /path/to/clients/typescript` (a fresh
// checkout: no node_modules, no dist; `prepare` builds it), and the tarball
// `npm pack` makes for the registry. Each install then imports the package
// by name and runs a task on a real `conveyor dev`.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative, sep } from "node:path";
import { after, before, describe, test } from "node:test";
import ts from "typescript";
import { packageRoot, startServer } from "../testkit/helpers.js";
import type { Server } from "../testkit/helpers.js";

const TIMEOUT_MS = 240_000;
let server: Server;
let scratch: string;

before(async () => {
  server = await startServer();
  scratch = mkdtempSync(join(tmpdir(), "conveyor-ts-install-"));
});

after(async () => {
  await server?.stop();
  if (scratch !== undefined) rmSync(scratch, { recursive: true, force: true });
});

/** The environment without what the npm running this suite set for its own package. */
function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (key.startsWith("npm_") && !/^npm_config_(registry|cache|userconfig|globalconfig|https?_proxy|proxy|noproxy|strict_ssl|cafile)$/i.test(key)) continue;
    env[key] = value;
  }
  return env;
}

function run(command: string, args: string[], cwd: string): string {
  const result = spawnSync(command, args, { cwd, env: cleanEnv(), encoding: "utf8", timeout: TIMEOUT_MS });
  assert.equal(
    result.status,
    0,
    `${command} ${args.join(" ")} in ${cwd} failed (${result.error?.message ?? `exit ${result.status}`}):\n${result.stdout}\n${result.stderr}`,
  );
  return result.stdout;
}

/** The README's ```ts blocks that are whole programs (they import the package). */
function readmePrograms(): string[] {
  const readme = readFileSync(join(packageRoot, "README.md"), "utf8");
  return [...readme.matchAll(/```ts\n([\s\S]*?)```/g)]
    .map((match) => match[1]!)
    .filter((block) => block.startsWith("import ") && block.includes('from "@conveyor/client"'));
}

/** A copy of the package as a fresh checkout has it: no node_modules, no dist. */
function freshCheckout(): string {
  const copy = join(scratch, "checkout", "clients", "typescript");
  cpSync(packageRoot, copy, {
    recursive: true,
    filter: (source) => {
      const path = relative(packageRoot, source).split(sep);
      return path[0] !== "node_modules" && path[0] !== "dist";
    },
  });
  return copy;
}

/** A new npm project with a program that uses the installed package. */
function newProject(name: string): string {
  const dir = join(scratch, name);
  mkdirSync(dir);
  writeFileSync(join(dir, "package.json"), JSON.stringify({ name, version: "1.0.0", private: true, type: "module" }));
  writeFileSync(
    join(dir, "main.js"),
    `import { Client, EagerClient, Worker, silentLogger } from "@conveyor/client";
const eager = new EagerClient().register("add", (ctx, a, b) => a + b);
console.log("eager", await eager.result(await eager.submit("add", [2, 3])));
const address = process.argv[2];
// The general addresses lead nowhere: every call goes to its service's endpoint.
const worker = new Worker("http://127.0.0.1:1", { endpoints: { dispatch: address }, queues: ["${name}"], logger: silentLogger });
worker.register("add", (ctx, a, b) => a + b);
const stop = new AbortController();
const running = worker.run({ signal: stop.signal, handleSignals: false });
const client = new Client("http://127.0.0.1:1", {
  endpoints: { submission: address, results: address, dispatch: address, scheduling: address },
  retry: false,
});
console.log("server", await client.result(await client.submit("add", [20, 22], { queue: "${name}" }), { timeoutMs: 20000 }));
client.close();
stop.abort();
await running;
`,
  );
  return dir;
}

describe("install", { timeout: TIMEOUT_MS }, () => {
  test("npm install <path to a fresh checkout> builds dist/ (prepare), then import by name works", () => {
    const checkout = freshCheckout();
    const project = newProject("path-install");
    run("npm", ["install", "--no-audit", "--no-fund", checkout], project);
    assert.ok(existsSync(join(checkout, "dist", "src", "index.js")), "prepare built dist/");
    assert.equal(run(process.execPath, ["main.js", server.addr], project), "eager 5\nserver 42\n");
    // The README's complete programs, compiled as a user's TypeScript would be, run as written.
    const programs = readmePrograms();
    assert.equal(programs.length, 3, "the README's Quick start, Workflows and Eager mode programs");
    const outputs = programs.map((source, index) => {
      const file = join(project, `readme-${index}.mjs`);
      writeFileSync(file, ts.transpileModule(source.replaceAll("http://127.0.0.1:50051", server.addr), {
        compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022 },
      }).outputText);
      return run(process.execPath, [file], project);
    });
    assert.deepEqual(outputs, [
      "4\n",
      "80\n[ 2, 9 ]\n12\nalert: RangeError: 15 is too big\nRangeError in node 1: 15 is too big\n",
      "5\nValueError\n",
    ]);
  });

  test("the tarball npm pack makes (what the registry serves) carries dist/ and installs with its dependencies", () => {
    const checkout = freshCheckout();
    const packed = JSON.parse(run("npm", ["pack", "--json", "--pack-destination", scratch], checkout)) as Array<{
      filename: string;
      files: Array<{ path: string }>;
    }>;
    const files = packed[0]!.files.map((file) => file.path);
    assert.ok(files.includes("dist/src/index.js") && files.includes("dist/src/index.d.ts"), files.join(" "));
    assert.ok(!files.some((file) => file.startsWith("dist/test") || file.startsWith("test/")), "no tests in the package");
    const project = newProject("tarball-install");
    run("npm", ["install", "--no-audit", "--no-fund", join(scratch, packed[0]!.filename)], project);
    const installed = JSON.parse(readFileSync(join(project, "node_modules", "@conveyor", "client", "package.json"), "utf8")) as {
      engines: { node: string };
    };
    assert.equal(installed.engines.node, ">=20");
    assert.equal(run(process.execPath, ["main.js", server.addr], project), "eager 5\nserver 42\n");
  });
});
