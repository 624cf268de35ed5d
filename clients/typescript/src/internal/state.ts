// The pure parts of a worker session: its phases and how many credits it may
// grant.

import type { DrainReason } from "../gen/conveyor/v1/dispatch_service_pb.js";

/** The phase of a session. */
export type Phase =
  | { readonly kind: "active" }
  | {
      readonly kind: "draining";
      /** Epoch milliseconds after which running tasks are abandoned. */
      readonly deadline: number;
      /** True when the drain is the worker's own shutdown: then it stops rather than reconnects. */
      readonly stopping: boolean;
    };

export const ACTIVE: Phase = { kind: "active" };

/** How a session ended. */
export type SessionEnd =
  | { readonly kind: "stopped" }
  | {
      readonly kind: "drained";
      /** Why the dispatcher drained the session (the latest Drain's reason), when the session knows. */
      readonly reason?: DrainReason;
      /**
       * Whether the next session opens a new connection (always, unless the
       * worker was given a custom transport it cannot reopen).
       */
      readonly newConnection?: boolean;
    }
  | { readonly kind: "broken"; readonly error: Error; readonly welcomed: boolean };

/**
 * Starts draining, or tightens a drain already under way: the earlier
 * deadline wins, and a local shutdown request is never forgotten.
 */
export function drain(phase: Phase, stopping: boolean, graceMs: number, now: number = Date.now()): Phase {
  const proposed = now + Math.max(0, graceMs);
  if (phase.kind === "active") return { kind: "draining", deadline: proposed, stopping };
  return {
    kind: "draining",
    deadline: Math.min(phase.deadline, proposed),
    stopping: phase.stopping || stopping,
  };
}

/** The end of a session the dispatcher closed: expected while draining, a failure (undefined) otherwise. */
export function endedByDispatcher(phase: Phase): SessionEnd | undefined {
  if (phase.kind === "active") return undefined;
  return phase.stopping ? { kind: "stopped" } : { kind: "drained" };
}

/**
 * Credits to grant now, so that running tasks plus unused credits never
 * exceed the worker's slots, nor unused credits the session's limit.
 * `inFlight` counts every handler still running, including those abandoned by
 * an earlier session, as they still hold slots.
 */
export function creditsToGrant(
  concurrency: number,
  inFlight: number,
  outstanding: number,
  maxCredits: number,
  draining: boolean,
): number {
  if (draining) return 0;
  const freeSlots = Math.max(0, concurrency - (inFlight + outstanding));
  const creditRoom = Math.max(0, maxCredits - outstanding);
  return Math.min(freeSlots, creditRoom);
}
