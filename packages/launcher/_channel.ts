// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * An unbounded single-consumer queue that a producer pushes into and one reader drains.
 * Boundedness comes from the caller: a run's output is capped before it is pushed.
 *
 * @module
 */

/** A single-consumer async queue. */
export class Channel<T> {
  #items: T[] = [];
  #head = 0;
  #closed = false;
  #error: { error: unknown } | undefined;
  #waiter: (() => void) | undefined;

  /**
   * Adds an item, unless the channel is closed.
   *
   * @param item The item.
   */
  push(item: T): void {
    if (this.#closed) return;
    this.#items.push(item);
    this.#wake();
  }

  /**
   * Ends the channel; the reader gets what is queued, then the end (or `error`).
   *
   * @param error Thrown to the reader after the queued items, when given.
   */
  close(error?: { error: unknown }): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#error = error;
    this.#wake();
  }

  /** Whether `close()` was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * The next item, or `undefined` at the end.
   *
   * @returns The item.
   */
  async next(): Promise<T | undefined> {
    while (true) {
      if (this.#head < this.#items.length) {
        const item = this.#items[this.#head] as T;
        // Taken items must not stay reachable until the next compaction: with streamed
        // output that would be up to 1024 chunks of bulk data.
        (this.#items as (T | undefined)[])[this.#head++] = undefined;
        if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
          this.#items = this.#items.slice(this.#head);
          this.#head = 0;
        }
        return item;
      }
      if (this.#closed) {
        if (this.#error) throw this.#error.error;
        return undefined;
      }
      await new Promise<void>((resolve) => this.#waiter = resolve);
    }
  }

  #wake(): void {
    const w = this.#waiter;
    this.#waiter = undefined;
    w?.();
  }
}
