// Copyright 2026 the Valise authors. Apache-2.0 license.

/** One failed call, as the status page shows it. */
export interface RecentError {
  /** When it failed (ms since the epoch). */
  readonly at: number;
  /** `service/Method`. */
  readonly method: string;
  /** The gRPC code's name, e.g. `InvalidArgument`. */
  readonly code: string;
  /** The server-side message (paths included: operators only), at most 500 characters. */
  readonly message: string;
}

/**
 * The most recent failed calls, newest last, in a ring of fixed size: however many calls fail,
 * memory stays bounded, and each message is cut to 500 characters.
 */
export class RecentErrors {
  #ring: RecentError[] = [];
  #next = 0;
  #total = 0;
  readonly #capacity: number;

  /**
   * @param capacity How many are kept.
   */
  constructor(capacity = 100) {
    if (!Number.isSafeInteger(capacity) || capacity < 1) {
      throw new RangeError(`Cannot keep ${capacity} recent errors: give a positive integer`);
    }
    this.#capacity = capacity;
  }

  /** How many were recorded since the start (kept or not). */
  get total(): number {
    return this.#total;
  }

  /**
   * Records a failed call.
   *
   * @param method `service/Method`.
   * @param code The gRPC code's name.
   * @param message The message.
   * @param at When (ms since the epoch).
   */
  record(method: string, code: string, message: string, at: number = Date.now()): void {
    const e: RecentError = {
      at,
      method: method.slice(0, 200),
      code,
      message: message.slice(0, 500),
    };
    if (this.#ring.length < this.#capacity) this.#ring.push(e);
    else this.#ring[this.#next] = e;
    this.#next = (this.#next + 1) % this.#capacity;
    this.#total++;
  }

  /** The kept errors, oldest first. */
  list(): RecentError[] {
    if (this.#ring.length < this.#capacity) return [...this.#ring];
    return [...this.#ring.slice(this.#next), ...this.#ring.slice(0, this.#next)];
  }
}
