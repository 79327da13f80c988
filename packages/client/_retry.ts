// Copyright 2026 the Valise authors. Apache-2.0 license.
// The one retry rule of every call. A call that failed because of its node (unreachable, died
// mid-call, UNAVAILABLE) goes to the next endpoint (or the same one again when there is one),
// with jittered exponential backoff once no fresh endpoint is left, up to the session's attempts:
// - a call that never reached a node (connection refused, host not found) is always sent again;
// - otherwise only while sending it twice does no harm: reads, and writes whose repeat is a
//   no-op (config set, an upload of the same bytes: the cluster commits an upload only once its
//   record is written, and a re-add of the same bytes is a no-op); a call that removes something
//   is not (`idempotent: false`);
// - a streaming call only while nothing that counts was delivered to the caller (`call.seen`: a
//   run's output, an apply's batches) and its request can still be sent again (`replayable`).
// When a failure is not retried for one of these reasons, the error says which.
import type { RetryOptions, RetryReport } from "./connect_options.ts";
import { isValiseClientError, ValiseClientError } from "./error.ts";
import type { EndpointPool, Node } from "./_endpoints.ts";
import { describeFailure, type NodeFailure, nodeFailure } from "./_failure.ts";

/** What an attempt tells the retry loop about its call. */
export interface CallSeen {
  /** Set once something that must not be repeated reached the caller: it is not retried then. */
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
  /**
   * `false` for a call whose repeat is not harmless (a removal): it is sent again only when it
   * never reached a node.
   * @default {true}
   */
  idempotent?: boolean;
  /** What a seen call delivered, for the error that says why it was not retried. */
  seenWhat?: string;
}

/** A session's retry policy, from its {@linkcode RetryOptions}, over its endpoints. */
export class RetryPolicy {
  /** Attempts per call, the first included. */
  readonly maxAttempts: number;
  /** Wait before the first retry, in milliseconds. */
  readonly initialDelayMs: number;
  /** Longest wait, in milliseconds. */
  readonly maxDelayMs: number;
  /** Growth of the wait per attempt. */
  readonly multiplier: number;
  #pool: EndpointPool;
  #report: ((r: RetryReport) => void) | undefined;

  /**
   * Resolves the defaults.
   *
   * @param options The session's retry options.
   * @param pool The session's endpoints.
   * @param report Told of every retry.
   */
  constructor(
    options: RetryOptions,
    pool: EndpointPool,
    report?: (r: RetryReport) => void,
  ) {
    this.maxAttempts = Math.max(1, options.maxAttempts ?? Math.max(8, pool.nodes.length + 1));
    this.initialDelayMs = options.initialDelayMs ?? 100;
    this.maxDelayMs = options.maxDelayMs ?? 5000;
    this.multiplier = options.multiplier ?? 2;
    this.#pool = pool;
    this.#report = report;
  }

  /**
   * Runs a streaming call on the preferred endpoint, and again (on the next endpoint, if any)
   * after a failure of its node that the rule above allows. Anything else the attempt throws is
   * thrown as it is: the attempt turns failures into what the caller should see.
   *
   * @param method The RPC, for reports.
   * @param attempt One attempt of the call on an endpoint; it sets `seen` once it delivered
   *   something that must not be repeated.
   * @param when The call's signal, whether its request can be sent again, whether it is
   *   idempotent.
   * @returns What the successful attempt yields and returns.
   */
  async *stream<T, R>(
    method: string,
    attempt: (call: CallSeen, node: Node) => AsyncGenerator<T, R, undefined>,
    when: RetryWhen = {},
  ): AsyncGenerator<T, R, undefined> {
    const tried: string[] = [];
    const failed = new Set<Node>();
    let node = this.#pool.pick();
    for (let n = 1;; n++) {
      if (!tried.includes(node.label)) tried.push(node.label);
      const call: CallSeen = { seen: false };
      try {
        const r = yield* attempt(call, node);
        this.#pool.succeeded(node);
        return r;
      } catch (e) {
        if (when.signal?.aborted) throw e;
        const failure = nodeFailure(e);
        if (failure === undefined) {
          // The node answered (with an error of the call): it is alive.
          this.#pool.succeeded(node);
          throw e;
        }
        this.#pool.failed(node);
        failed.add(node);
        const refusal = this.#refusal(method, failure, call, when, n, tried);
        if (refusal !== undefined) throw explain(e, failure, node, refusal);
        // Straight on to an endpoint that has not failed lately; back to one that has only
        // after a wait, which grows with each attempt.
        const next = this.#pool.pick(failed);
        const delayMs = failed.has(next) || this.#pool.coolingDown(next) ? this.#delay(n) : 0;
        this.#report?.({
          method,
          endpoint: node.label,
          next: next.label,
          reason: failure,
          attempt: n,
          maxAttempts: this.maxAttempts,
          delayMs: Math.round(delayMs),
          error: ValiseClientError.from(e),
        });
        await sleep(delayMs, when.signal);
        node = next;
      }
    }
  }

  /**
   * Runs a call that yields nothing (a unary RPC, or steps that may be repeated as a whole) on
   * an endpoint, with its failures as {@linkcode ValiseClientError}s, retried as
   * {@linkcode RetryPolicy.stream} says.
   *
   * @param method The RPC, for reports.
   * @param fn The call, on the endpoint given.
   * @param when The call's signal and whether it is idempotent.
   * @returns What it returned.
   */
  async call<T>(method: string, fn: (node: Node) => Promise<T>, when: RetryWhen = {}): Promise<T> {
    // A call that yields nothing is a stream of no items: it goes through the one retry loop.
    // deno-lint-ignore require-yield
    const r = await this.stream<never, T>(method, async function* (_call, node) {
      try {
        return await fn(node);
      } catch (e) {
        throw isValiseClientError(e) || !isTransportError(e) ? e : ValiseClientError.from(e);
      }
    }, when).next();
    return r.value;
  }

  /** Why a failed call is not tried again, or `undefined` when it is. */
  #refusal(
    method: string,
    failure: NodeFailure,
    call: CallSeen,
    when: RetryWhen,
    n: number,
    tried: string[],
  ): string | undefined {
    const replayable = typeof when.replayable === "function"
      ? when.replayable()
      : when.replayable !== false;
    if (!replayable) {
      return "not sent again: its input is a stream the caller gave, already read, which " +
        "cannot be sent twice";
    }
    if (failure !== "unreachable") {
      if (call.seen) {
        return `not sent again: ${when.seenWhat ?? "part of its response"} had already been ` +
          "delivered, and a second attempt could repeat what the first one did (run it again " +
          "if that is safe)";
      }
      if (when.idempotent === false) {
        return `not sent again: ${method} may have been done before the node failed; check ` +
          "(e.g. list the session's artifacts) before sending it again";
      }
    }
    if (n >= this.maxAttempts) {
      return `gave up after ${n} attempt${n === 1 ? "" : "s"} on ${tried.join(", ")}`;
    }
    return undefined;
  }

  #delay(attempt: number): number {
    const base = Math.min(this.maxDelayMs, this.initialDelayMs * this.multiplier ** (attempt - 1));
    // Jitter keeps many clients of a restarted server from reconnecting in lockstep.
    return base / 2 + Math.random() * base / 2;
  }
}

/**
 * The error of a node failure that is not retried: the server's own error (UNAVAILABLE with
 * its class) keeps its class; a transport failure becomes `UNAVAILABLE` naming the endpoint. Both
 * say why the call was not sent again.
 */
function explain(e: unknown, failure: NodeFailure, node: Node, why: string): ValiseClientError {
  const err = ValiseClientError.from(e);
  const what = `node ${node.label} ${describeFailure(failure)}`;
  if (failure === "unavailable") {
    return new ValiseClientError(`${err.message} (${what}; ${why})`, {
      errorClass: err.errorClass,
      grpcCode: err.grpcCode,
      sqlState: err.sqlState,
      reason: err.reason,
      parameters: { ...err.parameters, endpoint: node.label },
      traceback: err.traceback,
      cause: err,
    });
  }
  const detail = err.message.replace(/^\[[^\]]*\]\s*/, "");
  return new ValiseClientError(`[UNAVAILABLE] The ${what} (${detail}); ${why}.`, {
    errorClass: "UNAVAILABLE",
    grpcCode: "Unavailable",
    parameters: { endpoint: node.label, failure },
    cause: err,
  });
}

/** Whether a thrown value came from the transport (to be typed), not from the caller's code. */
function isTransportError(e: unknown): boolean {
  return typeof e === "object" && e !== null && (e as { name?: unknown }).name === "ConnectError";
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  if (ms <= 0) return Promise.resolve();
  return new Promise((resolve) => {
    // Cancelling during the wait ends it: the next attempt then fails as cancelled at once.
    const done = () => {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}
