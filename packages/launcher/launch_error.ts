// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The one error class of `@valise/launcher`.
 *
 * @module
 */

/**
 * Stable codes of {@linkcode LaunchError}, with the gRPC status a server should map them to.
 *
 * - `INTERPRETER_NOT_FOUND` (FAILED_PRECONDITION): the configured interpreter
 *   (`spark.sql.execution.pyspark.python`) or the default one does not exist or is not an
 *   executable file.
 * - `INTERPRETER_NOT_ALLOWED` (FAILED_PRECONDITION): an absolute interpreter path that is not on
 *   the server's allow-list.
 * - `INTERPRETER_OUTSIDE_SESSION` (FAILED_PRECONDITION): a relative interpreter path that leaves
 *   the session's directory.
 * - `INTERPRETER_FAILED` (FAILED_PRECONDITION): the interpreter exists but could not start the
 *   worker (it exited, crashed or hung before it was ready); the message holds its stderr.
 * - `SESSION_DIR_MISSING` (FAILED_PRECONDITION): the session's `root` is not a directory.
 * - `QUEUE_FULL` (RESOURCE_EXHAUSTED): the run could not start now and the wait queue is full.
 * - `SESSION_STOPPED` (ABORTED): `stopSession()` was called while the run waited to start.
 * - `CLOSED` (UNAVAILABLE): the launcher is closed.
 * - `SANDBOX_UNAVAILABLE` (thrown by the constructor): `sandbox: "bwrap"` but no `bwrap`.
 */
export type LaunchErrorCode =
  | "INTERPRETER_NOT_FOUND"
  | "INTERPRETER_NOT_ALLOWED"
  | "INTERPRETER_OUTSIDE_SESSION"
  | "INTERPRETER_FAILED"
  | "SESSION_DIR_MISSING"
  | "QUEUE_FULL"
  | "SESSION_STOPPED"
  | "CLOSED"
  | "SANDBOX_UNAVAILABLE";

/** Options of the {@linkcode LaunchError} constructor. */
export interface LaunchErrorOptions {
  /**
   * The interpreter path involved, when there is one.
   * @default {undefined}
   */
  interpreter?: string;
  /**
   * The underlying error.
   * @default {undefined}
   */
  cause?: unknown;
}

const BRAND = Symbol.for("valise.launcher.LaunchError");

/**
 * A domain failure of the launcher: the interpreter cannot be used, the limits refuse the
 * run, or the launcher or session is going away.
 *
 * @example Check the code
 * ```ts
 * import { isLaunchError, LaunchError } from "@valise/launcher";
 * import assert from "node:assert/strict";
 * const err = new LaunchError("QUEUE_FULL", "Cannot queue run: 64 runs are waiting");
 * assert.ok(isLaunchError(err));
 * assert.ok(err instanceof LaunchError);
 * assert.equal(err.code, "QUEUE_FULL");
 * ```
 */
export class LaunchError extends Error {
  override name = "LaunchError";
  /** Stable code, see {@linkcode LaunchErrorCode}. */
  readonly code: LaunchErrorCode;
  /** The interpreter path involved, when there is one. */
  readonly interpreter: string | undefined;

  /**
   * @param code Stable code.
   * @param message A `Cannot <action>: <state>` message naming the values involved.
   * @param options Interpreter and cause.
   */
  constructor(code: LaunchErrorCode, message: string, options: LaunchErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.interpreter = options.interpreter;
    Object.defineProperty(this, BRAND, { value: true });
  }

  /** Also true for errors of another copy of this package. */
  static override [Symbol.hasInstance](value: unknown): boolean {
    return isLaunchError(value);
  }
}

/**
 * Tells whether `value` is a {@linkcode LaunchError}, also one from another copy of this
 * package.
 *
 * @param value Anything thrown.
 * @returns `true` for a `LaunchError`.
 */
export function isLaunchError(value: unknown): value is LaunchError {
  return typeof value === "object" && value !== null &&
    (value as Record<symbol, unknown>)[BRAND] === true;
}
