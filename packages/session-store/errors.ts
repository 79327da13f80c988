// Copyright 2026 the Valise authors. Apache-2.0 license.

/**
 * The error classes the session store raises. Spark's own classes keep Spark's names (so
 * PySpark shows its usual errors); the others are Valise's, named in the same style.
 */
export type SessionErrorClass =
  | "INVALID_HANDLE.FORMAT"
  | "INVALID_HANDLE.SESSION_CLOSED"
  | "INVALID_HANDLE.SESSION_CHANGED"
  | "INVALID_HANDLE.SESSION_NOT_FOUND"
  | "ARTIFACT_ALREADY_EXISTS"
  | "INVALID_ARTIFACT_PATH"
  | "ARTIFACT_NOT_FOUND"
  | "INVALID_ARTIFACT_NAME"
  | "INVALID_ARTIFACT_STREAM"
  | "CACHE_ARTIFACT_HASH_MISMATCH"
  | "ARTIFACT_UNPACK_FAILED"
  | "BLOB_NOT_FOUND"
  | "BLOB_PROOF_REQUIRED"
  | "BLOB_PROOF_INVALID"
  | "SQL_CONF_NOT_FOUND"
  | "CANNOT_MODIFY_CONFIG"
  | "INVALID_CONF_VALUE"
  | "INVALID_CONF_VALUE.TYPE_MISMATCH"
  | "INVALID_CONF_VALUE.TIME_ZONE"
  | "QUOTA_EXCEEDED"
  | "CLUSTER_DATA_INVALID"
  | "CLUSTER_UNAVAILABLE"
  | "ENVIRONMENT_PLATFORM_MISMATCH"
  | "ENVIRONMENT_INTERPRETER_MISSING"
  | "ENVIRONMENT_PYTHON_MISMATCH"
  | "INVALID_CLONE_SESSION_REQUEST.TARGET_SESSION_ID_ALREADY_EXISTS"
  | "INVALID_CLONE_SESSION_REQUEST.TARGET_SESSION_ID_FORMAT";

const SQL_STATES: Partial<Record<SessionErrorClass, string>> = {
  "INVALID_HANDLE.FORMAT": "HY000",
  "INVALID_HANDLE.SESSION_CLOSED": "HY000",
  "INVALID_HANDLE.SESSION_CHANGED": "HY000",
  "INVALID_HANDLE.SESSION_NOT_FOUND": "HY000",
  ARTIFACT_ALREADY_EXISTS: "42713",
  INVALID_ARTIFACT_PATH: "22023",
  SQL_CONF_NOT_FOUND: "42K0I",
  CANNOT_MODIFY_CONFIG: "46110",
  INVALID_CONF_VALUE: "22022",
  "INVALID_CONF_VALUE.TYPE_MISMATCH": "22022",
  "INVALID_CONF_VALUE.TIME_ZONE": "22022",
  "INVALID_CLONE_SESSION_REQUEST.TARGET_SESSION_ID_ALREADY_EXISTS": "42K04",
  "INVALID_CLONE_SESSION_REQUEST.TARGET_SESSION_ID_FORMAT": "42K04",
};

/** Options of {@linkcode SessionError}. */
export interface SessionErrorOptions {
  /** The underlying error. */
  cause?: unknown;
  /** A finer reason, e.g. the archive package's `UnpackError` code. */
  reason?: string;
  /** The values the message names, by Spark's parameter names (sent as `messageParameters`). */
  parameters?: Record<string, string>;
}

/**
 * A failure the session store reports to clients. `errorClass` is stable and is what the
 * server puts in the `google.rpc.ErrorInfo` detail; the message names the problem and the
 * values involved and starts with the class in brackets, as Spark's messages do.
 */
export class SessionError extends Error {
  /** The error class, e.g. `ARTIFACT_ALREADY_EXISTS`. */
  readonly errorClass: SessionErrorClass;
  /** The same as {@linkcode SessionError.errorClass}: the closed code every package's error has. */
  readonly code: SessionErrorClass;
  /** Spark's SQLSTATE for the class, when Spark has one. */
  readonly sqlState: string | undefined;
  /** A finer machine-readable reason, when there is one. */
  readonly reason: string | undefined;
  /** The values the message names, by parameter name. */
  readonly parameters: Record<string, string>;
  override name = "SessionError";

  /** Creates an error of `errorClass`; `message` is prefixed with `[errorClass] `. */
  constructor(errorClass: SessionErrorClass, message: string, options: SessionErrorOptions = {}) {
    super(`[${errorClass}] ${message}`, { cause: options.cause });
    this.errorClass = errorClass;
    this.code = errorClass;
    this.sqlState = SQL_STATES[errorClass];
    this.reason = options.reason;
    this.parameters = options.parameters ?? {};
  }

  /** True for a `SessionError`, also across duplicate copies of this package. */
  static override [Symbol.hasInstance](value: unknown): boolean {
    return typeof value === "object" && value !== null &&
      (value as { name?: unknown }).name === "SessionError" &&
      typeof (value as { errorClass?: unknown }).errorClass === "string";
  }
}

/**
 * Whether `value` is a {@linkcode SessionError}, also across duplicate copies of this package.
 *
 * @param value Anything.
 * @returns `true` for a session error.
 */
export function isSessionError(value: unknown): value is SessionError {
  return value instanceof SessionError;
}
