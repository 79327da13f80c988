// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Riding out NATS being unavailable for a while: a JetStream member died and its streams (or
 * the cluster's metadata) elect new leaders, or the connection is re-established. Which errors
 * mean that is decided from what the NATS client throws (its error classes and JetStream's
 * error codes), not from wording alone.
 *
 * @module
 */
import { JetStreamApiError } from "@nats-io/jetstream";
import {
  AuthorizationError,
  ClosedConnectionError,
  DrainingConnectionError,
  NoRespondersError,
  PermissionViolationError,
  TimeoutError,
} from "@nats-io/transport-node";
import { SessionError } from "@valise/session-store";

/**
 * JetStream API error codes (nats-server's `errors.json`) a server answers with while a leader
 * is being elected or a member is coming back. Everything else JetStream refuses (a wrong last
 * sequence, no message found, a stream not found, bad requests, limits) is an answer that
 * waiting does not change.
 */
const TRANSIENT_API_CODES: ReadonlySet<number> = new Set([
  10007, // JetStream cluster not assigned to this server
  10008, // JetStream system temporarily unavailable (no metadata leader)
  10009, // JetStream cluster can not handle request
  10039, // JetStream not enabled for account (a member still restoring its accounts)
  10076, // JetStream not enabled (a member's JetStream starting or stopping)
  10118, // stream is offline
]);

/** Words of a transient failure in errors of other kinds (their message or name). */
const TRANSIENT_TEXT =
  /timeout|timed out|no responders|temporarily unavailable|can not handle request|stream is offline|jetstream is not enabled|disconnect|reconnect|leader/i;

/** How deep a chain of `cause`s is followed: a cycle or a hostile chain ends here. */
const MAX_CAUSES = 8;

/** How long {@linkcode riding} keeps trying by default: Raft elections take seconds. */
export const UNAVAILABLE_BUDGET_MS = 60_000;

/** Whether `e` alone says the failure is transient (`true`), is not (`false`), or neither. */
function transientOne(e: unknown): boolean | undefined {
  // Refusals, and NATS already ridden out for a whole budget (not to be ridden again).
  if (e instanceof SessionError || e instanceof UnavailableTooLong) return false;
  // The connection was closed on purpose (the node is stopping): nothing brings it back.
  if (e instanceof ClosedConnectionError || e instanceof DrainingConnectionError) return false;
  if (e instanceof AuthorizationError || e instanceof PermissionViolationError) return false;
  if (e instanceof JetStreamApiError) {
    return TRANSIENT_API_CODES.has(e.code) || e.status === 503;
  }
  // Nobody answered: a stream without a leader right now, or a member gone. The client wraps
  // this in a RequestError and then in "jetstream is not enabled" (JetStreamNotEnabled, not
  // exported): both are followed down to here through their causes.
  if (e instanceof NoRespondersError || e instanceof TimeoutError) return true;
  // A pull request's status (a consumer read): 503 no responders, 408 request timeout.
  if (e instanceof Error && e.name === "JetStreamStatusError") {
    const code = (e as { code?: unknown }).code;
    return code === 503 || code === 408;
  }
  return undefined;
}

/**
 * Whether an error is NATS being unavailable for a while (worth trying again), not a refusal,
 * bad data, or a connection this process closed. Follows `cause`s: the first error in the chain
 * that says either way decides; otherwise the words of the outermost one.
 */
export function isTransient(e: unknown): boolean {
  let cur: unknown = e;
  for (let depth = 0; depth < MAX_CAUSES && cur !== undefined && cur !== null; depth++) {
    const verdict = transientOne(cur);
    if (verdict !== undefined) return verdict;
    cur = (cur as { cause?: unknown }).cause;
  }
  if (!(e instanceof Error)) return false;
  return TRANSIENT_TEXT.test(`${e.name} ${e.message}`);
}

/** An error's message, with what the NATS client's wording hides spelled out. */
function explain(e: unknown): string {
  const text = e instanceof Error ? e.message : String(e);
  for (let cur = e, depth = 0; depth < MAX_CAUSES && cur instanceof Error; depth++) {
    // The client says "jetstream is not enabled" when a request found nobody to answer it.
    if (cur instanceof NoRespondersError) {
      return `${text}: no JetStream member answered, the stream or the cluster had no leader`;
    }
    cur = cur.cause;
  }
  return text;
}

/** The error {@linkcode riding} throws when NATS stayed unavailable for its whole budget. */
export class UnavailableTooLong extends Error {
  /** How long it tried. */
  readonly budgetMs: number;
  /** How many attempts were made. */
  readonly attempts: number;

  /** Wraps the last attempt's error. */
  constructor(budgetMs: number, attempts: number, last: unknown) {
    super(
      `NATS stayed unavailable for ${budgetMs / 1000} s (${attempts} attempts; ` +
        `last: ${explain(last)})`,
      { cause: last },
    );
    this.name = "UnavailableTooLong";
    this.budgetMs = budgetMs;
    this.attempts = attempts;
  }
}

/** Options of {@linkcode riding}. */
export interface RidingOptions {
  /**
   * How long to keep trying while NATS is unavailable.
   * @default {UNAVAILABLE_BUDGET_MS}
   */
  budgetMs?: number;
}

/**
 * Runs `fn` again while NATS is unavailable ({@linkcode isTransient}), until it succeeds, fails
 * otherwise (that error is thrown as it is), or the budget is spent ({@linkcode UnavailableTooLong}
 * with the last error as its cause). Waits grow from 100 ms to 2 s between attempts, and no
 * attempt starts past the deadline.
 */
export async function riding<T>(fn: () => Promise<T>, options: RidingOptions = {}): Promise<T> {
  const budgetMs = options.budgetMs ?? UNAVAILABLE_BUDGET_MS;
  const deadline = Date.now() + budgetMs;
  for (let attempt = 1, wait = 100;; attempt++, wait = Math.min(wait * 2, 2000)) {
    try {
      return await fn();
    } catch (e) {
      if (!isTransient(e)) throw e;
      if (Date.now() + wait > deadline) throw new UnavailableTooLong(budgetMs, attempt, e);
    }
    await new Promise((r) => setTimeout(r, wait));
  }
}
