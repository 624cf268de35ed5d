// The gRPC transport every client and worker uses: connect-node speaking real
// gRPC over HTTP/2 (h2c for http:// addresses, TLS for https://).

import type { Interceptor, Transport } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import type { Http2SessionOptions } from "@connectrpc/connect-node";

/** How to reach Conveyor; shared by Client and Worker. */
export interface ConnectionOptions {
  /** Bearer token sent as `authorization: Bearer <token>` on every call. */
  token?: string;
  /** Extra metadata sent on every call. */
  headers?: Record<string, string>;
  /** Use this transport instead of creating one (the address is then ignored). */
  transport?: Transport;
  /** Keepalive settings of the HTTP/2 connection. */
  http2?: Http2SessionOptions;
}

/** A transport plus the means to close the connection it owns. */
export interface OwnedTransport {
  transport: Transport;
  close(): void;
}

/** Parses a Conveyor address such as "http://127.0.0.1:50051"; throws TypeError when malformed. */
export function parseAddress(baseUrl: string): URL {
  let url: URL;
  try {
    url = new URL(baseUrl);
  } catch (error) {
    throw new TypeError(`invalid Conveyor address ${JSON.stringify(baseUrl)}: expected e.g. "http://127.0.0.1:50051"`, {
      cause: error,
    });
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new TypeError(`invalid Conveyor address ${JSON.stringify(baseUrl)}: scheme must be http or https`);
  }
  return url;
}

export function createTransport(baseUrl: string, options: ConnectionOptions = {}): OwnedTransport {
  if (options.transport !== undefined) {
    return { transport: options.transport, close: () => {} };
  }
  const url = parseAddress(baseUrl);
  const interceptors: Interceptor[] = [];
  const metadata: Record<string, string> = { ...(options.headers ?? {}) };
  if (options.token !== undefined && options.token !== "") {
    metadata["authorization"] = `Bearer ${options.token}`;
  }
  if (Object.keys(metadata).length > 0) {
    interceptors.push((next) => (request) => {
      for (const [name, value] of Object.entries(metadata)) request.header.set(name, value);
      return next(request);
    });
  }
  const sessionManager = new Http2SessionManager(url, options.http2);
  const transport = createGrpcTransport({ baseUrl: baseUrl.replace(/\/+$/, ""), sessionManager, interceptors });
  return { transport, close: () => sessionManager.abort() };
}
