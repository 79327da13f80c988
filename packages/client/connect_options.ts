// Copyright 2026 the Valise authors. Apache-2.0 license.
import type { Interceptor } from "@connectrpc/connect";
import type { ValiseClientError } from "./error.ts";

/**
 * How calls that fail because of their node (unreachable, died mid-call, `UNAVAILABLE`) are
 * retried, on the next endpoint when there are several (see docs/client.md, "Retries and
 * several endpoints", for which calls are sent again and when).
 */
export interface RetryOptions {
  /**
   * Attempts per call, the first included; `1` turns retries off.
   * @default {8} or one more than the endpoints, when there are more than 7
   */
  maxAttempts?: number;
  /**
   * Wait before the first retry, in milliseconds.
   * @default {100}
   */
  initialDelayMs?: number;
  /**
   * Longest wait between attempts, in milliseconds.
   * @default {5000}
   */
  maxDelayMs?: number;
  /**
   * Factor by which the wait grows.
   * @default {2}
   */
  multiplier?: number;
  /**
   * How long an endpoint that failed is passed over for the next ones, in milliseconds; twice
   * as long each time it fails again in a row (at most 32 times this), and then it is tried
   * again. With one endpoint it does not matter.
   * @default {10000}
   */
  endpointCooldownMs?: number;
}

/** A call about to be tried again, as {@linkcode ConnectOptions.onRetry} is told. */
export interface RetryReport {
  /** The RPC, e.g. `AddArtifacts`, `Run`, `Config`. */
  readonly method: string;
  /** The endpoint that failed, `host:port`. */
  readonly endpoint: string;
  /** The endpoint the call goes to next (the same one when no other is available). */
  readonly next: string;
  /**
   * What happened: `unreachable` (nothing reached the node: connection refused, host not
   * found), `lost` (the connection broke or the stream ended without a status: the node died,
   * or was cut off), `unavailable` (the node answered `UNAVAILABLE`).
   */
  readonly reason: "unreachable" | "lost" | "unavailable";
  /** The attempt that failed, 1 for the first. */
  readonly attempt: number;
  /** The most attempts the call gets. */
  readonly maxAttempts: number;
  /** The wait before the next attempt, in milliseconds (0 when going to another endpoint). */
  readonly delayMs: number;
  /** The failure. */
  readonly error: ValiseClientError;
}

/** Options of {@linkcode connect}. */
export interface ConnectOptions {
  /**
   * The connection string, when {@linkcode connect} is given only options.
   * @default {"sc://localhost:15002"}
   */
  remote?: string;
  /**
   * The endpoints, `host[:port]` each (`[::1]:15002` for IPv6), in the order they are tried;
   * they replace the connection string's host list (its parameters still apply).
   * @default {undefined} the connection string's (`sc://h1:15002,h2:15002/`)
   */
  endpoints?: string[];
  /**
   * Told of every retry before it happens: which endpoint failed, how, and where the call goes
   * next (the session also dispatches it as a `retry` event).
   * @default {undefined}
   */
  onRetry?: (report: RetryReport) => void;
  /**
   * The session id (a UUID); it wins over the connection string's `session_id`.
   * @default {undefined} the connection string's, else a new random UUID
   */
  sessionId?: string;
  /**
   * The user id, used when the connection string has no `user_id`.
   * @default {undefined} then `$USER` when readable
   */
  userId?: string;
  /**
   * A bearer token, used when the connection string has no `token`.
   * @default {undefined}
   */
  token?: string;
  /**
   * Extra request headers.
   * @default {{}}
   */
  headers?: Record<string, string>;
  /**
   * Retries of calls whose node failed.
   * @default {{}} see {@linkcode RetryOptions}
   */
  retry?: RetryOptions;
  /**
   * Connect interceptors run on every call (after the client's own headers are set).
   * @default {[]}
   */
  interceptors?: Interceptor[];
}
