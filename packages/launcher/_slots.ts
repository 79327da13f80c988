// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Run slots: how many runs execute at once, in all and per session, and the bounded queue of
 * runs waiting for one.
 *
 * @module
 */
import { LaunchError } from "./launch_error.ts";

interface Waiter {
  key: string;
  max: number;
  resolve: () => void;
  reject: (e: unknown) => void;
}

/** Slots for runs: `total` at once, at most `max` of one session, `maxQueue` waiting. */
export class RunSlots {
  #total: number;
  #maxQueue: number;
  #running = 0;
  #bySession = new Map<string, number>();
  #queue: Waiter[] = [];

  /**
   * @param total Runs that execute at once across all sessions.
   * @param maxQueue Runs that may wait; one more is refused with `QUEUE_FULL`.
   */
  constructor(total: number, maxQueue: number) {
    this.#total = total;
    this.#maxQueue = maxQueue;
  }

  /** Runs holding a slot. */
  get running(): number {
    return this.#running;
  }

  /** Runs waiting for a slot. */
  get queued(): number {
    return this.#queue.length;
  }

  /**
   * Runs of one session holding a slot.
   *
   * @param key The session.
   * @returns How many.
   */
  runningOf(key: string): number {
    return this.#bySession.get(key) ?? 0;
  }

  /**
   * Takes a slot for a run of session `key`, waiting in the queue if none is free.
   *
   * @param key The session.
   * @param max The most runs of that session at once.
   * @param signal Leaves the queue when aborted (rejecting with its reason).
   * @returns Resolves once the slot is taken; give it back with {@linkcode RunSlots.release}.
   */
  acquire(key: string, max: number, signal: AbortSignal | undefined): Promise<void> {
    if (this.#canRun(key, max)) {
      this.#take(key);
      return Promise.resolve();
    }
    if (this.#queue.length >= this.#maxQueue) {
      return Promise.reject(
        new LaunchError(
          "QUEUE_FULL",
          `Cannot queue run: ${this.#queue.length} runs are waiting (maxQueue ${this.#maxQueue}), ${this.#running} running`,
        ),
      );
    }
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        const i = this.#queue.indexOf(waiter);
        if (i >= 0) this.#queue.splice(i, 1);
        reject(signal?.reason);
      };
      const waiter: Waiter = {
        key,
        max,
        resolve: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        },
        reject: (e) => {
          signal?.removeEventListener("abort", onAbort);
          reject(e);
        },
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#queue.push(waiter);
    });
  }

  /**
   * Gives a slot of session `key` back, and hands free slots to waiting runs, in order.
   *
   * @param key The session.
   */
  release(key: string): void {
    this.#running--;
    const n = (this.#bySession.get(key) ?? 1) - 1;
    if (n === 0) this.#bySession.delete(key);
    else this.#bySession.set(key, n);
    for (let i = 0; i < this.#queue.length && this.#running < this.#total;) {
      const w = this.#queue[i] as Waiter;
      if (this.#canRun(w.key, w.max)) {
        this.#queue.splice(i, 1);
        this.#take(w.key);
        w.resolve();
      } else {
        i++;
      }
    }
  }

  /**
   * Fails the waiting runs that `match`es (a stopped session, a closing launcher).
   *
   * @param match Which waiters.
   * @param error The error each gets.
   */
  rejectQueued(match: (key: string) => boolean, error: () => Error): void {
    const keep: Waiter[] = [];
    for (const w of this.#queue) {
      if (match(w.key)) w.reject(error());
      else keep.push(w);
    }
    this.#queue = keep;
  }

  #canRun(key: string, max: number): boolean {
    return this.#running < this.#total && (this.#bySession.get(key) ?? 0) < max;
  }

  #take(key: string): void {
    this.#running++;
    this.#bySession.set(key, (this.#bySession.get(key) ?? 0) + 1);
  }
}
