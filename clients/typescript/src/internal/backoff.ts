// The reconnect schedule: exponential backoff with jitter.

/** Delay before the first reconnect attempt. */
export const DEFAULT_MIN_BACKOFF_MS = 100;
/** Longest delay between reconnect attempts. */
export const DEFAULT_MAX_BACKOFF_MS = 5000;

/**
 * `min`, doubling per failure, capped at `max`; each actual delay is drawn
 * uniformly from the upper half of that ("equal jitter"), so restarted
 * workers spread out yet never retry in a burst.
 */
export class Backoff {
  readonly #min: number;
  readonly #max: number;
  #failures = 0;

  constructor(minMs = DEFAULT_MIN_BACKOFF_MS, maxMs = DEFAULT_MAX_BACKOFF_MS, private readonly random: () => number = Math.random) {
    this.#min = Math.max(0, minMs);
    this.#max = Math.max(this.#min, maxMs);
  }

  /** The delay before the next attempt, before jitter. */
  ceiling(): number {
    return Math.min(this.#min * 2 ** Math.min(this.#failures, 31), this.#max);
  }

  /** The jittered delay before the next attempt; advances the schedule. */
  next(): number {
    const ceiling = this.ceiling();
    this.#failures += 1;
    const half = ceiling / 2;
    return half + this.random() * (ceiling - half);
  }

  /** Starts over after a successful connection. */
  reset(): void {
    this.#failures = 0;
  }
}
