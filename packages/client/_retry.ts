// Copyright 2026 the Valise authors. Apache-2.0 license.
// The one retry rule of every call: try again on UNAVAILABLE while nothing of the call was seen,
// with jittered exponential backoff, up to the session's attempts.
import type { RetryOptions } from "./connect_options.ts";
import { isValiseClientError, ValiseClientError } from "./error.ts";

/** What an attempt tells the retry loop about its call. */
export interface CallSeen {
  /** Set once anything of the call arrived (a response, an event): it is not retried then. */
  seen: boolean;
}

/** What else decides whether a failed call is tried again. */
export interface RetryWhen {
  /** An aborted call is not retried. */
  signal?: AbortSignal | undefined;
  /**
   * `false` when the request cannot be sent again (a caller's iterable, read once); a function
   * is asked after the failure (a stream not read from yet can still be sent).
   */
  replayable?: boolean | (() => boolean);
}

/** A session's retry policy, from its {@linkcode RetryOptions}. */
export class RetryPolicy {
  /** Attempts per call, the first included. */
  readonly maxAttempts: number;
  /** Wait before the first retry, in milliseconds. */
  readonly initialDelayMs: number;
  /** Longest wait, in milliseconds. */
  readonly maxDelayMs: number;
  /** Growth of the wait per attempt. */
  readonly multiplier: number;

  /**
   * Resolves the defaults.
   *
   * @param options The session's retry options.
   */
  constructor(options: RetryOptions = {}) {
    this.maxAttempts = Math.max(1, options.maxAttempts ?? 8);
    this.initialDelayMs = options.initialDelayMs ?? 100;
    this.maxDelayMs = options.maxDelayMs ?? 5000;
    this.multiplier = options.multiplier ?? 2;
  }

  /**
   * Runs a streaming call, again after a failure that is a {@linkcode ValiseClientError} with
   * gRPC code `Unavailable` while the attempt saw nothing of the call, the request can be sent
   * again, the signal is not aborted and attempts remain. Anything else the attempt throws is
   * thrown as it is: the attempt turns failures into what the caller should see.
   *
   * @param attempt One attempt of the call; it sets `seen` once anything arrived.
   * @param when The call's signal and whether its request can be sent again.
   * @returns What the successful attempt yields and returns.
   */
  async *stream<T, R>(
    attempt: (call: CallSeen) => AsyncGenerator<T, R, undefined>,
    when: RetryWhen = {},
  ): AsyncGenerator<T, R, undefined> {
    for (let n = 1;; n++) {
      const call: CallSeen = { seen: false };
      try {
        return yield* attempt(call);
      } catch (e) {
        const again = isValiseClientError(e) && e.grpcCode === "Unavailable" && !call.seen &&
          replayable(when) && !when.signal?.aborted && n < this.maxAttempts;
        if (!again) throw e;
        await this.#backoff(n);
      }
    }
  }

  /**
   * Runs a call that yields nothing (a unary RPC, or steps that may be repeated as a whole),
   * with its failures as {@linkcode ValiseClientError}s, retried as {@linkcode stream} says.
   *
   * @param fn The call.
   * @returns What it returned.
   */
  async call<T>(fn: () => Promise<T>): Promise<T> {
    // A call that yields nothing is a stream of no items: it goes through the one retry loop.
    // deno-lint-ignore require-yield
    const r = await this.stream<never, T>(async function* () {
      try {
        return await fn();
      } catch (e) {
        throw ValiseClientError.from(e);
      }
    }).next();
    return r.value;
  }

  #backoff(attempt: number): Promise<void> {
    const base = Math.min(this.maxDelayMs, this.initialDelayMs * this.multiplier ** (attempt - 1));
    // Jitter keeps many clients of a restarted server from reconnecting in lockstep.
    const ms = base / 2 + Math.random() * base / 2;
    return new Promise((resolve) => setTimeout(resolve, ms));
  }
}

function replayable(when: RetryWhen): boolean {
  return typeof when.replayable === "function" ? when.replayable() : when.replayable !== false;
}
