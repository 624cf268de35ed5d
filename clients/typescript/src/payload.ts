// JSON encoding and decoding of Payloads (bytes plus a content type), and the
// conversions between milliseconds / Dates and protobuf Durations / Timestamps.

import { create } from "@bufbuild/protobuf";
import { DurationSchema, TimestampSchema } from "@bufbuild/protobuf/wkt";
import type { Duration, Timestamp } from "@bufbuild/protobuf/wkt";
import { PayloadSchema } from "./gen/conveyor/v1/task_pb.js";
import type { Payload } from "./gen/conveyor/v1/task_pb.js";
import { PayloadError } from "./errors.js";

/** Content type of every payload this SDK encodes. */
export const JSON_CONTENT_TYPE = "application/json";

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/**
 * A value that is already encoded: pass it as an argument, or return it from
 * a handler, to send its bytes untouched (any content type, or JSON text
 * written by hand, e.g. "3.0" for a float that happens to be whole).
 */
export class RawPayload {
  readonly data: Uint8Array;
  readonly contentType: string;

  constructor(data: Uint8Array | string, contentType: string = JSON_CONTENT_TYPE) {
    this.data = typeof data === "string" ? encoder.encode(data) : data;
    this.contentType = contentType;
  }

  /** JSON text sent as is. */
  static json(text: string): RawPayload {
    return new RawPayload(text, JSON_CONTENT_TYPE);
  }
}

/** True for "", "application/json", "application/json; charset=utf-8" and "+json" types. */
export function isJson(contentType: string): boolean {
  const mediaType = (contentType.split(";")[0] ?? "").trim().toLowerCase();
  return mediaType === "" || mediaType === JSON_CONTENT_TYPE || mediaType.endsWith("+json");
}

/**
 * Encodes a value as a JSON payload. `undefined` encodes as `null`; a
 * RawPayload passes through. Values JSON cannot represent (BigInt, cycles)
 * throw a PayloadError naming `what`.
 */
export function toPayload(value: unknown, what = "value"): Payload {
  if (value instanceof RawPayload) {
    return create(PayloadSchema, { data: value.data, contentType: value.contentType });
  }
  let text: string | undefined;
  try {
    text = JSON.stringify(value === undefined ? null : value);
  } catch (error) {
    throw new PayloadError(`cannot encode ${what} as JSON: ${errorText(error)}`, { cause: error });
  }
  // JSON.stringify returns undefined for functions and symbols.
  if (text === undefined) {
    throw new PayloadError(`cannot encode ${what} as JSON: ${typeof value} is not serializable`);
  }
  return create(PayloadSchema, { data: encoder.encode(text), contentType: JSON_CONTENT_TYPE });
}

/** Decodes a JSON payload. Non-JSON content types throw a PayloadError. */
export function fromPayload(payload: Payload, what = "payload"): unknown {
  if (!isJson(payload.contentType)) {
    throw new PayloadError(`cannot decode ${what}: content type "${payload.contentType}" is not JSON`);
  }
  try {
    return JSON.parse(decoder.decode(payload.data));
  } catch (error) {
    throw new PayloadError(`cannot decode ${what}: ${errorText(error)}`, { cause: error });
  }
}

/** Like fromPayload; an absent or empty JSON payload reads as null. */
export function fromOptionalPayload(payload: Payload | undefined, what = "payload"): unknown {
  if (payload === undefined || (payload.data.length === 0 && isJson(payload.contentType))) {
    return null;
  }
  return fromPayload(payload, what);
}

/** The JSON text of a payload, or undefined when it is not JSON. */
export function payloadText(payload: Payload): string | undefined {
  if (!isJson(payload.contentType)) return undefined;
  try {
    return decoder.decode(payload.data);
  } catch {
    return undefined;
  }
}

const MAX_DURATION_SECONDS = 315_576_000_000;

/** Milliseconds to a protobuf Duration (negative clamps to 0). */
export function msToDuration(ms: number): Duration {
  if (!Number.isFinite(ms)) {
    if (ms > 0) return create(DurationSchema, { seconds: BigInt(MAX_DURATION_SECONDS), nanos: 0 });
    throw new RangeError(`invalid duration: ${ms} ms`);
  }
  const clamped = Math.max(0, Math.min(ms, MAX_DURATION_SECONDS * 1000));
  const seconds = Math.floor(clamped / 1000);
  const nanos = Math.round((clamped - seconds * 1000) * 1_000_000);
  return create(DurationSchema, { seconds: BigInt(seconds), nanos: Math.min(nanos, 999_999_999) });
}

/** A protobuf Duration to milliseconds; absent, zero or negative is undefined. */
export function durationToMs(duration: Duration | undefined): number | undefined {
  if (duration === undefined) return undefined;
  const ms = Number(duration.seconds) * 1000 + duration.nanos / 1_000_000;
  return ms > 0 ? ms : undefined;
}

/** A Date or epoch milliseconds to a protobuf Timestamp. */
export function toTimestamp(at: Date | number): Timestamp {
  const ms = typeof at === "number" ? at : at.getTime();
  if (!Number.isFinite(ms)) throw new RangeError(`invalid instant: ${String(at)}`);
  const seconds = Math.floor(ms / 1000);
  const nanos = Math.round((ms - seconds * 1000) * 1_000_000);
  return create(TimestampSchema, { seconds: BigInt(seconds), nanos: Math.min(nanos, 999_999_999) });
}

/** A protobuf Timestamp to a Date; absent is undefined. */
export function fromTimestamp(timestamp: Timestamp | undefined): Date | undefined {
  if (timestamp === undefined) return undefined;
  return new Date(Number(timestamp.seconds) * 1000 + timestamp.nanos / 1_000_000);
}

export function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
