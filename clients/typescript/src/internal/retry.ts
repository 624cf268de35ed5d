// Automatic retry of calls that are safe to repeat: on UNAVAILABLE, fail over
// to the next address and try again after a backoff, a bounded number of times.

import { Code } from "@connectrpc/connect";
import { ConveyorError } from "../errors.js";
import type { Endpoint, Endpoints, RetryPolicy, ServiceName } from "../transport.js";
import { Backoff } from "./backoff.js";

export const DEFAULT_MAX_ATTEMPTS = 6;
export const DEFAULT_INITIAL_BACKOFF_MS = 100;
export const DEFAULT_MAX_BACKOFF_MS = 2000;

/** The policy with its defaults filled in; `false` means one attempt. */
export function resolvePolicy(policy: RetryPolicy | false | undefined): Required<RetryPolicy> {
  if (policy === false) return { maxAttempts: 1, initialBackoffMs: 0, maxBackoffMs: 0 };
  return {
    maxAttempts: Math.max(1, Math.floor(policy?.maxAttempts ?? DEFAULT_MAX_ATTEMPTS)),
    initialBackoffMs: Math.max(0, policy?.initialBackoffMs ?? DEFAULT_INITIAL_BACKOFF_MS),
    maxBackoffMs: Math.max(0, policy?.maxBackoffMs ?? DEFAULT_MAX_BACKOFF_MS),
  };
}

/** How the message of a connection lost under a call starts. */
const LOST = "connection lost";

/** Node's codes for a connection that broke under a call (connect reports them as ABORTED). */
const BROKEN_CONNECTION = new Set(["ECONNRESET", "EPIPE", "ERR_STREAM_DESTROYED", "ERR_HTTP2_INVALID_STREAM", "ERR_HTTP2_GOAWAY_SESSION", "ERR_HTTP2_STREAM_CANCEL"]);

/** The Node error codes along an error's `cause` chain. */
function nodeCodes(error: unknown): string[] {
  const codes: string[] = [];
  const seen = new Set<unknown>();
  for (let current = error; current instanceof Error && !seen.has(current); current = current.cause) {
    seen.add(current);
    const code = (current as { code?: unknown }).code;
    if (typeof code === "string") codes.push(code);
  }
  return codes;
}

/**
 * The error as UNAVAILABLE when it means the connection is gone, else
 * undefined: UNAVAILABLE itself; CANCELED that the caller did not ask for
 * (an HTTP/2 stream reset by a server that died with the connection open);
 * ABORTED caused by a reset socket. An ABORTED status sent by the server
 * carries no socket error and is left alone.
 */
export function connectionLost(error: ConveyorError, signal?: AbortSignal): ConveyorError | undefined {
  if (error.code === Code.Unavailable) return error;
  const broken =
    (error.code === Code.Canceled && signal?.aborted !== true) ||
    (error.code === Code.Aborted && nodeCodes(error).some((code) => BROKEN_CONNECTION.has(code)));
  if (!broken) return undefined;
  return new ConveyorError(Code.Unavailable, `${LOST} (${error.rawMessage})`, { cause: error });
}

/**
 * Runs `call` on the current endpoint. An UNAVAILABLE failure always moves
 * later calls to the next address; a `safe` call is then tried again there
 * after a backoff, up to `policy.maxAttempts` attempts in all. `service`
 * names the service called, for the hint of an UNIMPLEMENTED error.
 */
export async function callWithRetry<C, T>(
  endpoints: Endpoints<C>,
  policy: Required<RetryPolicy>,
  safe: boolean,
  call: (clients: C) => Promise<T>,
  signal?: AbortSignal,
  service?: ServiceName,
): Promise<T> {
  const backoff = new Backoff(policy.initialBackoffMs, policy.maxBackoffMs);
  for (let attempt = 1; ; attempt += 1) {
    let endpoint: Endpoint<C> | undefined;
    try {
      endpoint = endpoints.current();
      return await call(endpoint.value);
    } catch (thrown) {
      const target = service === undefined || endpoint === undefined ? undefined : { service, address: endpoint.url };
      const failure = ConveyorError.from(thrown, target);
      const error = connectionLost(failure, signal);
      if (error === undefined || endpoint === undefined) throw failure;
      endpoints.failed(endpoint);
      const last = !safe || attempt >= policy.maxAttempts || signal?.aborted === true;
      if (last) throw unavailable(error, endpoints.addresses, attempt, safe, endpoint.url);
      // The first pass over the other addresses is immediate; then back off.
      if (attempt >= endpoints.size) await sleep(backoff.next(), signal);
    }
  }
}

/**
 * The final UNAVAILABLE error, saying where the calls went and what to
 * check. `url`: the address of the last attempt; a plaintext (http://) one
 * whose connection was closed under the call adds that a TLS server needs
 * https:// (a TLS server closes a plaintext connection so).
 */
export function unavailable(
  error: ConveyorError,
  addresses: readonly string[],
  attempts: number,
  safe: boolean,
  url?: string,
): ConveyorError {
  const tried = attempts > 1 ? ` after ${attempts} attempts` : "";
  const hint = safe
    ? `is Conveyor running and reachable at ${addresses.join(", ")}?`
    : `this call is not retried automatically (it may not be safe to repeat); check that Conveyor runs at ${addresses.join(", ")}, then call again`;
  const plaintext =
    url?.startsWith("http://") === true && error.rawMessage.startsWith(LOST)
      ? " If the server serves TLS, use an https:// address (and the tls option or CONVEYOR_TLS_CA for a private CA)."
      : "";
  return new ConveyorError(error.code, `${error.rawMessage}${tried}; ${hint}${plaintext}`, { cause: error });
}

/** Sleeps `ms`, or less when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted === true) return resolve();
    const done = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}
