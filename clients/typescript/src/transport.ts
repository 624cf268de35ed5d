// The gRPC transport every client and worker uses: connect-node speaking real
// gRPC over HTTP/2 (h2c for http:// addresses, TLS for https://), one
// connection per address, with failover between several addresses.

import { readFileSync } from "node:fs";
import type { SecureClientSessionOptions } from "node:http2";
import { createSecureContext } from "node:tls";
import type { Interceptor, Transport } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import type { Http2SessionOptions } from "@connectrpc/connect-node";

/**
 * Where Conveyor is: "http://127.0.0.1:50051" (plaintext),
 * "https://conveyor.example:50051" (TLS), a scheme-less "127.0.0.1:50051"
 * (plaintext, or TLS when a TLS option or CONVEYOR_TLS_* variable is set),
 * several separated by commas, or an array of them. With several, calls go
 * to one and fail over to the next when it is UNAVAILABLE.
 */
export type Addresses = string | readonly string[];

/**
 * The four services of Conveyor, each named after the server role that
 * serves it: SubmissionService, ResultsService, DispatchService (workers'
 * stream, queue pauses, ListWorkers) and SchedulingService.
 */
export type ServiceName = "submission" | "results" | "dispatch" | "scheduling";

/** Every ServiceName, in a fixed order. */
export const SERVICE_NAMES: readonly ServiceName[] = Object.freeze(["submission", "results", "dispatch", "scheduling"]);

/**
 * An address (or failover list) per service, for layouts where the roles run
 * in separate processes: each one given replaces the general address for
 * that service's calls only.
 */
export type ServiceEndpoints = { readonly [S in ServiceName]?: Addresses };

/** The address used when none is given anywhere. */
export const DEFAULT_ADDRESS = "http://127.0.0.1:50051";

/** The address used when none is given anywhere and TLS settings are (the tls option or CONVEYOR_TLS_*). */
export const DEFAULT_TLS_ADDRESS = "https://127.0.0.1:50051";

/** The environment variable of the general address, used when the constructor gets none. */
export const ADDRESS_ENV = "CONVEYOR_ADDR";

/** The environment variable of each service's address; each overrides the general address for that service. */
export const SERVICE_ADDRESS_ENV: Readonly<Record<ServiceName, string>> = Object.freeze({
  submission: "CONVEYOR_SUBMISSION_ADDR",
  results: "CONVEYOR_RESULTS_ADDR",
  dispatch: "CONVEYOR_DISPATCH_ADDR",
  scheduling: "CONVEYOR_SCHEDULING_ADDR",
});

/**
 * TLS settings: paths of PEM files. Giving this option (even `{}`) makes
 * scheme-less addresses use TLS; an `http://` address with it is an error.
 */
export interface TlsOptions {
  /**
   * The CA certificate(s) to trust instead of Node's built-in roots, e.g.
   * the private CA that signed the server's certificate. Default:
   * $CONVEYOR_TLS_CA, else Node's roots.
   */
  ca?: string;
  /**
   * This client's certificate, for servers that require one (mTLS). Needs
   * `key`. Default: $CONVEYOR_TLS_CERT (with $CONVEYOR_TLS_KEY).
   */
  cert?: string;
  /** The private key of `cert` (unencrypted PEM). Default: $CONVEYOR_TLS_KEY. */
  key?: string;
}

/** The environment variables of the TLS settings, used for the fields `tls` does not set. */
export const TLS_ENV: Readonly<Record<keyof TlsOptions, string>> = Object.freeze({
  ca: "CONVEYOR_TLS_CA",
  cert: "CONVEYOR_TLS_CERT",
  key: "CONVEYOR_TLS_KEY",
});

/** Bounds the automatic retry of calls that are safe to repeat. */
export interface RetryPolicy {
  /** Attempts of one call, the first included (default 6; 1 disables retries). */
  maxAttempts?: number;
  /** Delay after the first failed attempt (default 100 ms), doubling with jitter... */
  initialBackoffMs?: number;
  /** ...up to this (default 2 s). */
  maxBackoffMs?: number;
}

/** How to reach Conveyor; shared by Client and Worker. */
export interface ConnectionOptions {
  /** Bearer token sent as `authorization: Bearer <token>` on every call. */
  token?: string;
  /**
   * The namespace every call (and a worker's session) acts in: tasks,
   * queues, workers, schedules and idempotency keys of other namespaces are
   * invisible. Default: $CONVEYOR_NAMESPACE when set and not empty, else the
   * namespace "default". 1 to 100 characters of [A-Za-z0-9_.-]; "" is
   * "default". Also applies with `transport`.
   */
  namespace?: string;
  /** Extra metadata sent on every call. */
  headers?: Record<string, string>;
  /**
   * Use this transport instead of creating one (the address is then ignored).
   * Give it `readMaxBytes` and `writeMaxBytes` of at least 64 MiB, as the
   * SDK's own transports have: a task may carry 4 MiB of arguments.
   */
  transport?: Transport;
  /**
   * Addresses of single services, e.g. `{ results: "http://results:50051" }`,
   * for servers whose roles run in separate processes without forwarding.
   * Keys: "submission", "results", "dispatch", "scheduling" (any other
   * throws TypeError). Each address of a service is chosen, first set wins:
   * this option, its environment variable (CONVEYOR_SUBMISSION_ADDR,
   * CONVEYOR_RESULTS_ADDR, CONVEYOR_DISPATCH_ADDR, CONVEYOR_SCHEDULING_ADDR),
   * the general address (the constructor's, else CONVEYOR_ADDR), then
   * "http://127.0.0.1:50051". Each may be a failover list. Ignored, as the
   * addresses are, with `transport`.
   */
  endpoints?: ServiceEndpoints;
  /** Keepalive settings of the HTTP/2 connections. */
  http2?: Http2SessionOptions;
  /**
   * TLS: `{ ca, cert, key }`, paths of PEM files (see TlsOptions). Each field
   * not given here comes from its environment variable (CONVEYOR_TLS_CA,
   * CONVEYOR_TLS_CERT, CONVEYOR_TLS_KEY); `cert` and `key` go together. TLS
   * is used for `https://` addresses, and for scheme-less ones when this
   * option or one of those variables is set; an `http://` address with TLS
   * settings throws TypeError. Without `ca`, the server's certificate is
   * checked against Node's built-in roots. Ignored with `transport`.
   */
  tls?: TlsOptions;
  /**
   * Retries of calls that are safe to repeat (reads, and submissions that
   * carry an idempotency key) when Conveyor is UNAVAILABLE, failing over to
   * the next address each time. `false` disables them.
   */
  retry?: RetryPolicy | false;
}

/** How addresses are read. */
export interface ParseAddressOptions {
  /**
   * TLS settings are given: scheme-less addresses use TLS (https), and an
   * `http://` address throws TypeError.
   */
  tls?: boolean;
}

/**
 * Parses one address; throws TypeError, saying what is expected, when
 * malformed. A scheme-less address becomes http://, or https:// with
 * `options.tls`.
 */
export function parseAddress(address: string, options: ParseAddressOptions = {}): URL {
  const trimmed = address.trim();
  const hasScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(trimmed);
  const withScheme = hasScheme ? trimmed : `${options.tls === true ? "https" : "http"}://${trimmed}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch (error) {
    throw new TypeError(
      `invalid Conveyor address ${JSON.stringify(address)}: expected e.g. "http://127.0.0.1:50051" or "127.0.0.1:50051"`,
      { cause: error },
    );
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new TypeError(
      `invalid Conveyor address ${JSON.stringify(address)}: the scheme must be http (plaintext) or https (TLS)`,
    );
  }
  if (url.hostname === "") {
    throw new TypeError(`invalid Conveyor address ${JSON.stringify(address)}: no host; expected e.g. "http://127.0.0.1:50051"`);
  }
  if (options.tls === true && url.protocol === "http:") {
    throw new TypeError(
      `Conveyor address ${JSON.stringify(address)} is plaintext (http://) but TLS settings are given (the tls option or ${TLS_ENV.ca}/${TLS_ENV.cert}/${TLS_ENV.key}): use https://${url.host} (or no scheme) to connect with TLS, or remove the TLS settings`,
    );
  }
  return url;
}

/**
 * Splits and parses an address list; throws TypeError when it is empty or
 * malformed. `options.tls`: as for parseAddress.
 */
export function parseAddresses(addresses: Addresses, options: ParseAddressOptions = {}): URL[] {
  const parts = splitAddresses(addresses);
  if (parts.length === 0) {
    throw new TypeError('no Conveyor address given: pass e.g. "http://127.0.0.1:50051" (or several, comma-separated)');
  }
  return parts.map((part) => parseAddress(part, options));
}

function splitAddresses(addresses: Addresses): string[] {
  if (typeof addresses !== "string" && !Array.isArray(addresses)) {
    throw new TypeError(`invalid Conveyor address ${String(addresses)}: expected a string or an array of strings`);
  }
  return (typeof addresses === "string" ? [addresses] : [...addresses])
    .flatMap((entry) => {
      if (typeof entry !== "string") throw new TypeError(`invalid Conveyor address ${String(entry)}: expected a string`);
      return entry.split(",");
    })
    .map((entry) => entry.trim())
    .filter((entry) => entry !== "");
}

/** Whether an address setting is given: not undefined, not empty or blank. */
function given(addresses: Addresses | undefined): addresses is Addresses {
  return addresses !== undefined && addresses !== null && splitAddresses(addresses).length > 0;
}

/** TLS settings with their files read, as the connections use them. */
export interface ResolvedTls {
  /** What http2.connect gets for https:// addresses: `ca`, `cert` and `key`, those set. */
  readonly nodeOptions: SecureClientSessionOptions;
  /** Each file used and where its path came from, e.g. { ca: "/etc/ca.pem (CONVEYOR_TLS_CA)" }. */
  readonly files: Readonly<Partial<Record<keyof TlsOptions, string>>>;
}

const TLS_FILE_WHAT: Readonly<Record<keyof TlsOptions, string>> = {
  ca: "CA certificate",
  cert: "client certificate",
  key: "client key",
};

/**
 * The TLS settings of a client or worker: each field of `tls`, else its
 * environment variable (TLS_ENV; empty values count as unset), with the PEM
 * files read and checked. Undefined when neither `tls` nor any variable is
 * set (plaintext, unless an address says https://). Throws TypeError saying
 * what to fix: a certificate without its key (or the reverse), a file that
 * cannot be read or is not PEM, a key that does not match its certificate.
 */
export function resolveTls(
  tls: TlsOptions | undefined,
  env: Readonly<Record<string, string | undefined>> = process.env,
): ResolvedTls | undefined {
  if (tls !== undefined && (tls === null || typeof tls !== "object" || Array.isArray(tls))) {
    throw new TypeError('tls must be an object such as { ca: "ca.pem", cert: "client.pem", key: "client.key" } (paths of PEM files)');
  }
  const paths: Partial<Record<keyof TlsOptions, { path: string; source: string }>> = {};
  for (const field of ["ca", "cert", "key"] as const) {
    const option = tls?.[field];
    if (option !== undefined && option !== null && typeof option !== "string") {
      throw new TypeError(`tls.${field} must be the path of a PEM file (a string), not ${typeof option}`);
    }
    const fromEnv = env[TLS_ENV[field]];
    if (option !== undefined && option !== null && option.trim() !== "") {
      paths[field] = { path: option, source: `tls.${field}` };
    } else if (fromEnv !== undefined && fromEnv.trim() !== "") {
      paths[field] = { path: fromEnv, source: TLS_ENV[field] };
    }
  }
  if (tls === undefined && Object.keys(paths).length === 0) return undefined;
  if ((paths.cert === undefined) !== (paths.key === undefined)) {
    const [have, missing] = paths.cert !== undefined ? (["cert", "key"] as const) : (["key", "cert"] as const);
    throw new TypeError(
      `TLS ${TLS_FILE_WHAT[have]} given (${paths[have]!.source}=${paths[have]!.path}) without the ${TLS_FILE_WHAT[missing]}: ` +
        `a client certificate needs its key; set both tls.cert and tls.key (or ${TLS_ENV.cert} and ${TLS_ENV.key}), or neither`,
    );
  }
  const nodeOptions: { ca?: Buffer; cert?: Buffer; key?: Buffer } = {};
  const files: Partial<Record<keyof TlsOptions, string>> = {};
  for (const field of ["ca", "cert", "key"] as const) {
    const given = paths[field];
    if (given === undefined) continue;
    nodeOptions[field] = readPem(field, given.path, given.source);
    files[field] = `${given.path} (${given.source})`;
  }
  try {
    createSecureContext(nodeOptions);
  } catch (error) {
    const used = Object.values(files).join(", ");
    const hint = /mismatch/i.test((error as Error).message)
      ? "the client key does not belong to the client certificate"
      : "check that these are PEM certificates and an unencrypted PEM private key";
    throw new TypeError(`invalid TLS settings (${used}): ${(error as Error).message}; ${hint}`, { cause: error });
  }
  return { nodeOptions, files };
}

/** Reads one PEM file of the TLS settings; throws TypeError naming the path, the setting and its variable. */
function readPem(field: keyof TlsOptions, path: string, source: string): Buffer {
  const setting = `tls.${field} or ${TLS_ENV[field]}`;
  let data: Buffer;
  try {
    data = readFileSync(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const why = code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied" : code === "EISDIR" ? "it is a directory" : (error as Error).message;
    throw new TypeError(
      `cannot read the TLS ${TLS_FILE_WHAT[field]} file ${JSON.stringify(path)} (from ${source}): ${why}; set ${setting} to the path of a readable PEM file`,
      { cause: error },
    );
  }
  if (!data.includes("-----BEGIN ")) {
    throw new TypeError(
      `the TLS ${TLS_FILE_WHAT[field]} file ${JSON.stringify(path)} (from ${source}) is not PEM (no "-----BEGIN" line); set ${setting} to a PEM file (convert DER with openssl)`,
    );
  }
  return data;
}

/** Where a service's addresses came from, and what they are. */
export interface ResolvedAddresses {
  readonly addresses: Addresses;
  /** "endpoints.results", "CONVEYOR_RESULTS_ADDR", "the address given", "CONVEYOR_ADDR" or "the default". */
  readonly source: string;
}

/**
 * The general addresses: `addresses`, else CONVEYOR_ADDR, else
 * DEFAULT_ADDRESS (DEFAULT_TLS_ADDRESS with `options.tls`). Empty values
 * count as unset.
 */
export function resolveGeneralAddresses(
  addresses: Addresses | undefined,
  env: Readonly<Record<string, string | undefined>> = process.env,
  options: ParseAddressOptions = {},
): ResolvedAddresses {
  if (given(addresses)) return { addresses, source: "the address given" };
  const fromEnv = env[ADDRESS_ENV];
  if (given(fromEnv)) return { addresses: fromEnv, source: ADDRESS_ENV };
  return { addresses: options.tls === true ? DEFAULT_TLS_ADDRESS : DEFAULT_ADDRESS, source: "the default" };
}

/**
 * Throws TypeError unless `endpoints` is undefined or an object whose keys
 * are service names.
 */
export function checkServiceEndpoints(endpoints: unknown): asserts endpoints is ServiceEndpoints | undefined {
  if (endpoints === undefined) return;
  const valid = SERVICE_NAMES.join(", ");
  if (endpoints === null || typeof endpoints !== "object" || Array.isArray(endpoints)) {
    throw new TypeError(`endpoints must be an object with the keys ${valid}, e.g. { results: "http://results:50051" }`);
  }
  for (const key of Object.keys(endpoints)) {
    if (!(SERVICE_NAMES as readonly string[]).includes(key)) {
      throw new TypeError(`unknown service ${JSON.stringify(key)} in endpoints: the valid keys are ${valid}`);
    }
  }
}

/**
 * The addresses of each service: `endpoints[service]`, else its environment
 * variable (SERVICE_ADDRESS_ENV), else `addresses`, else CONVEYOR_ADDR, else
 * DEFAULT_ADDRESS (DEFAULT_TLS_ADDRESS with `options.tls`). Empty values count as unset. Throws TypeError for an
 * unknown key of `endpoints` or a malformed address (with `tls`: an http://
 * one), naming where it came from.
 */
export function resolveServiceAddresses(
  addresses: Addresses | undefined,
  endpoints: ServiceEndpoints | undefined,
  env: Readonly<Record<string, string | undefined>> = process.env,
  options: ParseAddressOptions = {},
): Record<ServiceName, ResolvedAddresses> {
  checkServiceEndpoints(endpoints);
  const general = resolveGeneralAddresses(addresses, env, options);
  const resolved = {} as Record<ServiceName, ResolvedAddresses>;
  for (const service of SERVICE_NAMES) {
    const option = endpoints?.[service];
    const fromEnv = env[SERVICE_ADDRESS_ENV[service]];
    const choice: ResolvedAddresses = given(option)
      ? { addresses: option, source: `endpoints.${service}` }
      : given(fromEnv)
        ? { addresses: fromEnv, source: SERVICE_ADDRESS_ENV[service] }
        : general;
    try {
      parseAddresses(choice.addresses, options);
    } catch (error) {
      throw new TypeError(`${(error as Error).message} (from ${choice.source}, the ${service} address)`, { cause: error });
    }
    resolved[service] = choice;
  }
  return resolved;
}

/**
 * The send and receive limit of every call and worker stream this SDK's
 * transports make: above the largest message a server sends (a task with 4 MiB
 * of arguments, a worker frame of `Welcome.maxFrameBytes`), where gRPC
 * libraries commonly default to 4 MiB.
 */
export const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

/** A transport plus the means to close the connection it owns. */
export interface OwnedTransport {
  transport: Transport;
  close(): void;
}

function metadataInterceptor(options: ConnectionOptions): Interceptor[] {
  const metadata: Record<string, string> = { ...(options.headers ?? {}) };
  if (options.token !== undefined && options.token !== "") {
    metadata["authorization"] = `Bearer ${options.token}`;
  }
  if (Object.keys(metadata).length === 0) return [];
  return [
    (next) => (request) => {
      for (const [name, value] of Object.entries(metadata)) request.header.set(name, value);
      return next(request);
    },
  ];
}

/**
 * One connection to one address; https:// addresses connect with `tls` (the
 * resolved TLS settings), or with Node's defaults when it is undefined.
 */
export function createTransport(address: URL | string, options: ConnectionOptions = {}, tls?: ResolvedTls): OwnedTransport {
  if (options.transport !== undefined) {
    return { transport: options.transport, close: () => {} };
  }
  const url = typeof address === "string" ? parseAddress(address, { tls: tls !== undefined }) : address;
  // The session manager makes the HTTP/2 connection (createGrpcTransport's
  // nodeOptions are ignored when one is given): the TLS settings go to it.
  const sessionManager = new Http2SessionManager(url, options.http2, url.protocol === "https:" ? tls?.nodeOptions : undefined);
  const transport = createGrpcTransport({
    baseUrl: url.href.replace(/\/+$/, ""),
    sessionManager,
    interceptors: metadataInterceptor(options),
    readMaxBytes: MAX_MESSAGE_BYTES,
    writeMaxBytes: MAX_MESSAGE_BYTES,
  });
  return { transport, close: () => sessionManager.abort() };
}

/** One address of an Endpoints list, with the per-address state callers keep. */
export interface Endpoint<T> {
  readonly index: number;
  /** host:port, as `Endpoints.addresses` lists it. */
  readonly address: string;
  /** The address as a URL ("http://127.0.0.1:50051"); undefined for a custom transport. */
  readonly url: string | undefined;
  readonly value: T;
}

/**
 * The addresses of a client or worker, one lazily opened connection each,
 * and which one calls go to: the current one until it fails, then the next.
 * `build` turns a transport into what callers use (generated clients).
 */
export class Endpoints<T> {
  readonly addresses: readonly string[];
  readonly #urls: readonly URL[];
  readonly #options: ConnectionOptions;
  readonly #tls: ResolvedTls | undefined;
  readonly #build: (transport: Transport) => T;
  readonly #open = new Map<number, { owned: OwnedTransport; value: T }>();
  #current = 0;

  /**
   * `tls`: the resolved TLS settings (resolveTls of `options.tls`), which
   * every connection to an https:// address uses, reopened ones included;
   * given, scheme-less addresses use TLS and http:// ones throw TypeError.
   */
  constructor(addresses: Addresses, options: ConnectionOptions, build: (transport: Transport) => T, tls?: ResolvedTls) {
    this.#options = options;
    this.#tls = options.transport !== undefined ? undefined : tls;
    this.#build = build;
    this.#urls =
      options.transport !== undefined ? [new URL("http://in-process.invalid")] : parseAddresses(addresses, { tls: this.#tls !== undefined });
    this.addresses = options.transport !== undefined ? ["(custom transport)"] : this.#urls.map((url) => url.host);
  }

  /** How many addresses there are. */
  get size(): number {
    return this.#urls.length;
  }

  /** The endpoint calls go to now. */
  current(): Endpoint<T> {
    const index = this.#current;
    let open = this.#open.get(index);
    if (open === undefined) {
      const owned = createTransport(this.#urls[index]!, this.#options, this.#tls);
      open = { owned, value: this.#build(owned.transport) };
      this.#open.set(index, open);
    }
    const url = this.#options.transport !== undefined ? undefined : this.#urls[index]!.href.replace(/\/+$/, "");
    return { index, address: this.addresses[index]!, url, value: open.value };
  }

  /** Moves on to the next address, unless another caller already did. */
  failed(endpoint: Endpoint<T>): void {
    if (this.#current === endpoint.index) this.#current = (endpoint.index + 1) % this.#urls.length;
  }

  /**
   * Closes the connection `endpoint` was reached through, so that the next
   * call to its address opens a new one (a new HTTP/2 connection, which a
   * load balancer places anew), unless another caller already did. Returns
   * false, closing nothing, for a custom transport, which is not ours to
   * close or reopen. Call it once nothing uses the old connection: its open
   * calls are cut.
   */
  reopen(endpoint: Endpoint<T>): boolean {
    if (this.#options.transport !== undefined) return false;
    const open = this.#open.get(endpoint.index);
    if (open !== undefined && open.value === endpoint.value) {
      this.#open.delete(endpoint.index);
      open.owned.close();
    }
    return true;
  }

  /** Closes every connection; a later call opens new ones. */
  close(): void {
    for (const { owned } of this.#open.values()) owned.close();
    this.#open.clear();
  }
}
