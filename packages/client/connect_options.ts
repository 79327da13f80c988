// Copyright 2026 the Valise authors. Apache-2.0 license.
import type { Interceptor } from "@connectrpc/connect";

/** How calls that fail with `UNAVAILABLE` are retried. */
export interface RetryOptions {
  /**
   * Attempts per call, the first included; `1` turns retries off.
   * @default {8}
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
}

/** Options of {@linkcode connect}. */
export interface ConnectOptions {
  /**
   * The connection string, when {@linkcode connect} is given only options.
   * @default {"sc://localhost:15002"}
   */
  remote?: string;
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
   * Retries of `UNAVAILABLE`.
   * @default {{}} see {@linkcode RetryOptions}
   */
  retry?: RetryOptions;
  /**
   * Connect interceptors run on every call (after the client's own headers are set).
   * @default {[]}
   */
  interceptors?: Interceptor[];
}
