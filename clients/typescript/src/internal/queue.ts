// An unbounded push queue readable as an async iterable: the outbound half of
// the worker stream.

export class AsyncQueue<T> implements AsyncIterable<T> {
  #items: T[] = [];
  #waiting: ((result: IteratorResult<T, undefined>) => void) | undefined;
  #ended = false;

  /** Queues an item; ignored once the queue has ended. */
  push(item: T): boolean {
    if (this.#ended) return false;
    const waiting = this.#waiting;
    if (waiting !== undefined) {
      this.#waiting = undefined;
      waiting({ value: item, done: false });
    } else {
      this.#items.push(item);
    }
    return true;
  }

  /** Ends the iteration once the queued items have been read. */
  end(): void {
    if (this.#ended) return;
    this.#ended = true;
    const waiting = this.#waiting;
    if (waiting !== undefined && this.#items.length === 0) {
      this.#waiting = undefined;
      waiting({ value: undefined, done: true });
    }
  }

  /** Ends the queue at once, dropping what was not read. */
  #close(): void {
    this.#items = [];
    this.end();
    const waiting = this.#waiting;
    this.#waiting = undefined;
    waiting?.({ value: undefined, done: true });
  }

  get ended(): boolean {
    return this.#ended;
  }

  [Symbol.asyncIterator](): AsyncIterator<T, undefined> {
    return {
      next: () => {
        const item = this.#items.shift();
        if (item !== undefined) return Promise.resolve({ value: item, done: false });
        if (this.#ended) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => {
          this.#waiting = resolve;
        });
      },
      return: () => {
        this.#close();
        return Promise.resolve({ value: undefined, done: true });
      },
      // The consumer failed (connect calls this when the call ends in error):
      // nothing more will be read.
      throw: (error?: unknown) => {
        this.#close();
        return Promise.reject(error instanceof Error ? error : new Error(String(error)));
      },
    };
  }
}
