// TLS and mTLS against real `conveyor dev` servers started with --tls-cert and
// --tls-key (and --tls-client-ca), with certificates scripts/gen-test-certs
// writes per run: a client and a worker with the CA run a task, through
// options or the CONVEYOR_TLS_* variables alone; a client trusting another CA
// is refused with an error saying what to set; an mTLS server refuses a
// client without a certificate and serves one with it; configuration errors.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { Code as ConnectCode, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { ResultsService } from "../src/gen/conveyor/v1/results_service_pb.js";
import { Client, ConveyorError, EagerClient, TLS_ENV, TaskState, Worker, parseAddresses } from "../src/index.js";
import type { LogFields, Logger, TlsOptions } from "../src/index.js";
import { Endpoints, resolveServiceAddresses, resolveTls } from "../src/transport.js";
import { exampleProducer, exampleWorker, repoRoot, runWorker, spawnNode, startServer, stopProcess, uniqueQueue, waitFor } from "../testkit/helpers.js";
import type { Server } from "../testkit/helpers.js";

let certs: string;
const cert = (name: string): string => join(certs, name);
/** A TLS server, and one that also requires client certificates signed by ca.pem (mTLS). */
let tlsServer: Server;
let mtlsServer: Server;
/** host:port of each, without a scheme. */
let tlsHost: string;
let mtlsHost: string;

before(async () => {
  certs = mkdtempSync(join(tmpdir(), "conveyor-ts-tls-"));
  const generated = spawnSync(resolve(repoRoot, "scripts", "gen-test-certs"), [certs], { encoding: "utf8" });
  assert.equal(generated.status, 0, `scripts/gen-test-certs failed: ${generated.stderr}${generated.error ?? ""}`);
  const serve = ["--tls-cert", cert("server.pem"), "--tls-key", cert("server.key")];
  [tlsServer, mtlsServer] = await Promise.all([startServer(serve), startServer([...serve, "--tls-client-ca", cert("ca.pem")])]);
  tlsHost = tlsServer.addr.replace(/^[a-z]+:\/\//, "");
  mtlsHost = mtlsServer.addr.replace(/^[a-z]+:\/\//, "");
});

after(async () => {
  await Promise.all([tlsServer?.stop(), mtlsServer?.stop()]);
  if (certs !== undefined) rmSync(certs, { recursive: true, force: true });
});

/** Sets environment variables while `body` runs (constructors read them), then restores them. */
async function withEnv<T>(vars: Record<string, string>, body: () => T | Promise<T>): Promise<T> {
  const saved = Object.fromEntries(Object.keys(vars).map((name) => [name, process.env[name]]));
  Object.assign(process.env, vars);
  try {
    return await body();
  } finally {
    for (const [name, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  }
}

/** Submits add(2, 3) through `client` to a worker (started with `tls`) at `addr`, and awaits 5. */
async function roundTrip(client: Client, addr: string | undefined, tls: TlsOptions | undefined): Promise<void> {
  const queue = uniqueQueue("tls");
  const running = runWorker(addr, { queues: [queue], ...(tls === undefined ? {} : { tls }) }, (worker) =>
    worker.register("add", (_ctx, a: number, b: number) => a + b),
  );
  try {
    const id = await client.submit("add", [2, 3], { queue });
    assert.equal(await client.result(id, { timeoutMs: 10_000 }), 5);
    assert.equal((await client.get(id)).state, TaskState.SUCCEEDED);
  } finally {
    await running.stop();
  }
}

/** A logger keeping every line, for what a worker says about failed connections. */
function capturingLogger(): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  const keep = (level: string) => (message: string, fields?: LogFields) => lines.push(`${level} ${message} ${JSON.stringify(fields ?? {})}`);
  return { lines, logger: { debug: keep("debug"), info: keep("info"), warn: keep("warn"), error: keep("error") } };
}

describe("TLS", () => {
  test("parity_tls: a client (https://) and a worker (no scheme) with tls.ca submit, run and await a task", async () => {
    const client = new Client(`https://${tlsHost}`, { tls: { ca: cert("ca.pem") } });
    try {
      await roundTrip(client, tlsHost, { ca: cert("ca.pem") });
    } finally {
      client.close();
    }
  });

  test("CONVEYOR_TLS_CA alone, with a scheme-less address, makes a client and a worker use TLS", async () => {
    await withEnv({ [TLS_ENV.ca]: cert("ca.pem") }, async () => {
      const client = new Client(tlsHost);
      try {
        await roundTrip(client, tlsHost, undefined);
      } finally {
        client.close();
      }
    });
  });

  test("the example worker and producer reach a TLS server through the environment alone", async () => {
    const queue = uniqueQueue("tls-env");
    const env = { CONVEYOR_ADDR: tlsHost, [TLS_ENV.ca]: cert("ca.pem"), CONVEYOR_QUEUE: queue };
    const worker = spawnNode(exampleWorker, { ...env, CONVEYOR_CONCURRENCY: "4" });
    try {
      const producer = spawnNode(exampleProducer, env);
      const [code] = await producer.exit;
      assert.equal(code, 0, `producer failed: ${producer.stderr()}\nworker: ${worker.stderr()}`);
      const line = JSON.parse(producer.stdout().trim()) as { add: number; lang: string };
      assert.equal(line.add, 5);
      assert.equal(line.lang, "typescript");
    } finally {
      await stopProcess(worker.child);
    }
  });

  test("the tls option wins over the environment", async () => {
    await withEnv({ [TLS_ENV.ca]: cert("other-ca.pem") }, async () => {
      const client = new Client(tlsHost, { tls: { ca: cert("ca.pem") } });
      try {
        await roundTrip(client, tlsHost, { ca: cert("ca.pem") });
      } finally {
        client.close();
      }
    });
  });

  test("a client trusting only another CA is refused, with an error saying to set tls.ca / CONVEYOR_TLS_CA", async () => {
    const client = new Client(`https://${tlsHost}`, { tls: { ca: cert("other-ca.pem") } });
    try {
      await assert.rejects(client.get("00000000-0000-7000-8000-000000000000"), (error: unknown) => {
        assert.ok(error instanceof ConveyorError, String(error));
        assert.match(error.message, /certificate is not trusted/);
        assert.match(error.message, /tls\.ca or CONVEYOR_TLS_CA/);
        return true;
      });
    } finally {
      client.close();
    }
  });

  test("https:// without a CA checks Node's roots, which do not hold the test CA", async () => {
    const client = new Client(`https://${tlsHost}`, { retry: false });
    try {
      await assert.rejects(client.get("00000000-0000-7000-8000-000000000000"), /certificate is not trusted/);
    } finally {
      client.close();
    }
  });

  test("a worker trusting another CA logs why it cannot connect, and keeps trying", async () => {
    const { logger, lines } = capturingLogger();
    const running = runWorker(tlsHost, { tls: { ca: cert("other-ca.pem") }, logger, queues: [uniqueQueue("tls-untrusted")] }, (worker) =>
      worker.register("add", () => 0),
    );
    try {
      const untrusted = (): number => lines.filter((line) => line.startsWith("warn") && /certificate is not trusted/.test(line)).length;
      await waitFor(() => untrusted() >= 2, "two warnings about the certificate (a second attempt)");
    } finally {
      await running.stop();
    }
  });

  test("the connection reopened after a drain keeps the TLS settings", async () => {
    const endpoints = new Endpoints(tlsHost, {}, (transport) => createClient(ResultsService, transport), resolveTls({ ca: cert("ca.pem") }));
    const notFound = async (): Promise<void> => {
      const endpoint = endpoints.current();
      assert.equal(endpoint.url, `https://${tlsHost}`);
      await assert.rejects(endpoint.value.getTask({ taskId: "00000000-0000-7000-8000-000000000000" }), (error: unknown) => {
        assert.equal(ConnectError.from(error).code, ConnectCode.NotFound, String(error));
        return true;
      });
    };
    try {
      await notFound();
      const first = endpoints.current();
      assert.equal(endpoints.reopen(first), true);
      assert.notEqual(endpoints.current().value, first.value, "a new connection");
      await notFound();
    } finally {
      endpoints.close();
    }
  });

  test("a plaintext client at a TLS server fails, with an error mentioning https://", async () => {
    const client = new Client(`http://${tlsHost}`, { retry: false });
    try {
      await assert.rejects(client.get("00000000-0000-7000-8000-000000000000"), (error: unknown) => {
        assert.ok(error instanceof ConveyorError, String(error));
        assert.match(error.message, /If the server serves TLS, use an https:\/\/ address/);
        return true;
      });
    } finally {
      client.close();
    }
  });

  test("a plaintext worker at a TLS server logs that a TLS server needs https://", async () => {
    const { logger, lines } = capturingLogger();
    const running = runWorker(`http://${tlsHost}`, { logger, queues: [uniqueQueue("tls-plain")] }, (worker) => worker.register("add", () => 0));
    try {
      await waitFor(() => lines.some((line) => line.startsWith("warn") && /use an https:\/\/ address/.test(line)), "a warning naming https://");
    } finally {
      await running.stop();
    }
  });
});

describe("mTLS", () => {
  test("a client without a certificate is refused, with an error saying to set tls.cert and tls.key", async () => {
    const client = new Client(mtlsHost, { tls: { ca: cert("ca.pem") }, retry: false });
    try {
      await assert.rejects(client.submit("add", [1, 2], { queue: uniqueQueue("mtls") }), (error: unknown) => {
        assert.ok(error instanceof ConveyorError, String(error));
        assert.match(error.message, /client certificate/);
        assert.match(error.message, /tls\.cert and tls\.key/);
        assert.match(error.message, /CONVEYOR_TLS_CERT and CONVEYOR_TLS_KEY/);
        return true;
      });
    } finally {
      client.close();
    }
  });

  test("parity_mtls: a client and a worker with client.pem and client.key are served", async () => {
    const tls = { ca: cert("ca.pem"), cert: cert("client.pem"), key: cert("client.key") };
    const client = new Client(`https://${mtlsHost}`, { tls });
    try {
      await roundTrip(client, mtlsHost, tls);
    } finally {
      client.close();
    }
  });

  test("the client certificate through CONVEYOR_TLS_CERT and CONVEYOR_TLS_KEY", async () => {
    const env = { [TLS_ENV.ca]: cert("ca.pem"), [TLS_ENV.cert]: cert("client.pem"), [TLS_ENV.key]: cert("client.key") };
    await withEnv(env, async () => {
      const client = new Client(mtlsHost);
      try {
        await roundTrip(client, mtlsHost, undefined);
      } finally {
        client.close();
      }
    });
  });
});

describe("TLS configuration", () => {
  test("an http:// address with a TLS option or variable is an error saying to use https://", async () => {
    const tls = { ca: cert("ca.pem") };
    assert.throws(() => new Client("http://127.0.0.1:50051", { tls }), (error: unknown) => {
      assert.ok(error instanceof TypeError);
      assert.match(error.message, /http:\/\/.*TLS settings are given/);
      assert.match(error.message, /use https:\/\/127\.0\.0\.1:50051/);
      return true;
    });
    assert.throws(() => new Worker("http://127.0.0.1:50051", { tls }), /use https:\/\//);
    assert.throws(() => new Client(["https://a:1", "http://b:2"], { tls }), /"http:\/\/b:2".*use https:\/\//);
    assert.throws(() => new Client("a:1", { tls, endpoints: { results: "http://r:1" } }), /use https:\/\/.*endpoints\.results/);
    await withEnv({ [TLS_ENV.ca]: cert("ca.pem") }, () => {
      assert.throws(() => new Client("http://127.0.0.1:50051"), /CONVEYOR_TLS_CA.*use https:\/\//);
      assert.throws(() => new Worker(undefined, { endpoints: { dispatch: "http://d:1" } }), /use https:\/\/d:1.*endpoints\.dispatch/);
    });
  });

  test("scheme-less addresses and the default address use TLS when TLS settings are given, plaintext otherwise", async () => {
    assert.equal(parseAddresses("a:1", { tls: true })[0]!.protocol, "https:");
    assert.equal(parseAddresses("a:1")[0]!.protocol, "http:");
    assert.equal(parseAddresses("https://a:1")[0]!.protocol, "https:");
    assert.equal(resolveServiceAddresses(undefined, undefined, {}, { tls: true }).submission.addresses, "https://127.0.0.1:50051");
    assert.equal(resolveServiceAddresses(undefined, undefined, {}).submission.addresses, "http://127.0.0.1:50051");
    await withEnv({ [TLS_ENV.ca]: cert("ca.pem") }, () => {
      const client = new Client();
      assert.deepEqual(client.addresses, ["127.0.0.1:50051"]);
      client.close();
      new Worker(undefined, {});
    });
    // An empty tls option asks for TLS with Node's roots.
    assert.equal(resolveTls({}, {})?.nodeOptions.ca, undefined);
    assert.equal(resolveTls(undefined, {}), undefined);
    assert.equal(resolveTls(undefined, { [TLS_ENV.ca]: "" }), undefined);
  });

  test("a certificate without its key, or a key without its certificate, is an error naming both", () => {
    for (const tls of [{ cert: cert("client.pem") }, { key: cert("client.key") }]) {
      assert.throws(() => new Client("a:1", { tls }), (error: unknown) => {
        assert.ok(error instanceof TypeError);
        assert.match(error.message, /tls\.cert and tls\.key/);
        assert.match(error.message, /CONVEYOR_TLS_CERT and CONVEYOR_TLS_KEY/);
        return true;
      });
    }
    assert.throws(() => resolveTls(undefined, { [TLS_ENV.cert]: cert("client.pem") }), /CONVEYOR_TLS_CERT=.*without the client key/);
    // Each field falls back to its variable on its own.
    assert.ok(resolveTls({ cert: cert("client.pem") }, { [TLS_ENV.key]: cert("client.key") })?.nodeOptions.key);
  });

  test("a missing file is an error naming the path and the variable", () => {
    const missing = join(certs, "nope.pem");
    assert.throws(() => new Client("a:1", { tls: { ca: missing } }), (error: unknown) => {
      assert.ok(error instanceof TypeError);
      assert.ok(error.message.includes(JSON.stringify(missing)), error.message);
      assert.match(error.message, /no such file/);
      assert.match(error.message, /CONVEYOR_TLS_CA/);
      return true;
    });
    assert.throws(() => resolveTls(undefined, { [TLS_ENV.cert]: missing, [TLS_ENV.key]: cert("client.key") }), /from CONVEYOR_TLS_CERT.*tls\.cert or CONVEYOR_TLS_CERT/);
  });

  test("a file that is not PEM, and a key of another certificate, are errors saying so", () => {
    assert.throws(() => new Client("a:1", { tls: { ca: resolve(repoRoot, "Cargo.toml") } }), /not PEM/);
    assert.throws(
      () => new Worker("a:1", { tls: { cert: cert("client.pem"), key: cert("server.key") } }),
      /key does not belong to the client certificate/,
    );
  });

  test("a custom transport ignores the TLS settings", async () => {
    await withEnv({ [TLS_ENV.ca]: join(certs, "nope.pem") }, () => {
      new Client("http://x:1", { transport: createRouterTransport(() => {}) }).close();
      new EagerClient().close();
    });
  });
});
