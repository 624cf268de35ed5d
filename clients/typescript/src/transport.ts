// The gRPC transport every client and worker uses: connect-node speaking real
// gRPC over HTTP/2 (h2c for http:// addresses, TLS for https://), one
// connection per address, with failover between several addresses.

import type { Interceptor, Transport } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import type { Http2SessionOptions } from "@connectrpc/connect-node";

/**
 * Where Conveyor is: "http://127.0.0.1:50051", a scheme-less
 * "127.0.0.1:50051" (plaintext), several separated by commas, or an array of
 * them. With several, calls go to one and fail over to the next when it is
 * UNAVAILABLE.
 */
export type Addresses = string | readonly string[];

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
  /** Extra metadata sent on every call. */
  headers?: Record<string, string>;
  /**
   * Use this transport instead of creating one (the address is then ignored).
   * Give it `readMaxBytes` and `writeMaxBytes` of at least 64 MiB, as the
   * SDK's own transports have: a task may carry 4 MiB of arguments.
   */
  transport?: Transport;
  /** Keepalive settings of the HTTP/2 connections. */
  http2?: Http2SessionOptions;
  /**
   * Retries of calls that are safe to repeat (reads, and submissions that
   * carry an idempotency key) when Conveyor is UNAVAILABLE, failing over to
   * the next address each time. `false` disables them.
   */
  retry?: RetryPolicy | false;
}

/** Parses one address; throws TypeError, saying what is expected, when malformed. */
export function parseAddress(address: string): URL {
  const trimmed = address.trim();
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(trimmed) ? trimmed : `http://${trimmed}`;
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
  return url;
}

/** Splits and parses an address list; throws TypeError when it is empty or malformed. */
export function parseAddresses(addresses: Addresses): URL[] {
  const parts = (typeof addresses === "string" ? [addresses] : [...addresses])
    .flatMap((entry) => entry.split(","))
    .map((entry) => entry.trim())
    .filter((entry) => entry !== "");
  if (parts.length === 0) {
    throw new TypeError('no Conveyor address given: pass e.g. "http://127.0.0.1:50051" (or several, comma-separated)');
  }
  return parts.map(parseAddress);
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

/** One connection to one address. */
export function createTransport(address: URL | string, options: ConnectionOptions = {}): OwnedTransport {
  if (options.transport !== undefined) {
    return { transport: options.transport, close: () => {} };
  }
  const url = typeof address === "string" ? parseAddress(address) : address;
  const sessionManager = new Http2SessionManager(url, options.http2);
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
  readonly address: string;
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
  readonly #build: (transport: Transport) => T;
  readonly #open = new Map<number, { owned: OwnedTransport; value: T }>();
  #current = 0;

  constructor(addresses: Addresses, options: ConnectionOptions, build: (transport: Transport) => T) {
    this.#options = options;
    this.#build = build;
    this.#urls = options.transport !== undefined ? [new URL("http://in-process.invalid")] : parseAddresses(addresses);
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
      const owned = createTransport(this.#urls[index]!, this.#options);
      open = { owned, value: this.#build(owned.transport) };
      this.#open.set(index, open);
    }
    return { index, address: this.addresses[index]!, value: open.value };
  }

  /** Moves on to the next address, unless another caller already did. */
  failed(endpoint: Endpoint<T>): void {
    if (this.#current === endpoint.index) this.#current = (endpoint.index + 1) % this.#urls.length;
  }

  /** Closes every connection; a later call opens new ones. */
  close(): void {
    for (const { owned } of this.#open.values()) owned.close();
    this.#open.clear();
  }
}
