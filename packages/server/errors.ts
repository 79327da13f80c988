// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The one place where a failure becomes what a client receives: every domain error (the session
 * store's, the launcher's, the server's own) has its error class and gRPC code here, and
 * {@linkcode toConnectError} is the only way handlers turn errors into responses.
 *
 * @module
 */
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { isLaunchError, type LaunchErrorCode } from "@valise/launcher";
import { ErrorInfoSchema } from "@valise/protocol";
import { isSessionError, type SessionErrorClass } from "@valise/session-store";

/**
 * The server's own error classes (the session store's and the launcher's have theirs):
 *
 * - `APPLY_*`: an Apply call failed (see `docs/apply.md` for each).
 * - `INVALID_RUN_REQUEST`: a Run or Apply request is malformed (what to run, its arguments).
 * - `RUN_MESSAGE_TOO_LARGE`: a RunInteractive message (stdin) is over the method's cap.
 * - `ARTIFACT_STREAM_IDLE`: an upload stream sent nothing for too long.
 * - `UNSUPPORTED_CONNECT_FEATURE.QUERY_EXECUTION`: a client asked to execute or analyze a plan;
 *   Valise serves sessions, artifacts, config and Python workers, not queries.
 * - `INVALID_HANDLE.OPERATION_NOT_FOUND`: a client asked about an operation the server never ran.
 * - `UNSUPPORTED_CONNECT_FEATURE.RELATION` / `.EXPRESSION` / `.DATA_TYPE`: a plan uses a part of
 *   Spark that Valise's ExecutePlan (the Python-UDF subset) does not run; the message names it.
 * - `INVALID_PLAN_INPUT`: a plan is malformed (missing input, too deep, a bad hash or schema).
 * - `PARSE_SYNTAX_ERROR`: a DDL type string does not parse.
 * - `UNRESOLVED_COLUMN.WITH_SUGGESTION`, `AMBIGUOUS_REFERENCE`: a column name resolves to no column
 *   or to several.
 * - `NULLABLE_COLUMN_OR_FIELD`: `df.to(schema)` asks a nullable column to be non-nullable.
 * - `PYTHON_EXCEPTION`: a Python UDF raised (its traceback in the message), as Spark's
 *   `PythonException`.
 * - `UDF_PYSPARK_UNAVAILABLE`, `UDF_PYSPARK_VERSION_MISMATCH`, `PYTHON_VERSION_MISMATCH`,
 *   `UDF_PYARROW_UNAVAILABLE`: the session's environment cannot run the client's plan (no
 *   pyspark, another pyspark or Python, no pyarrow).
 * - `UDF_EXECUTION_FAILED`: running a plan failed otherwise (the worker died, a limit, a type).
 * - `PIP_INVALID_REQUEST`: a requirement set or package index a session asked to install from is
 *   refused (an installer option, a path, a URL, an index the server does not offer).
 * - `PIP_INSTALL_FAILED`: the installer could not build the session's pip layer (resolution,
 *   download, a wheel missing, a time limit); the message carries the installer's own words.
 * - `PIP_NOT_INSTALLED`: an uninstall named a distribution the session's requirements do not
 *   list.
 */
export type ServerErrorCode =
  | "APPLY_INVALID_REQUEST"
  | "APPLY_INVALID_INPUT"
  | "APPLY_INPUT_NOT_FOUND"
  | "APPLY_UNSUPPORTED_TYPE"
  | "APPLY_FUNCTION_NOT_FOUND"
  | "APPLY_FUNCTION_FAILED"
  | "APPLY_OUTPUT_TYPE_MISMATCH"
  | "APPLY_PYARROW_UNAVAILABLE"
  | "APPLY_PANDAS_UNAVAILABLE"
  | "APPLY_TIMEOUT"
  | "APPLY_WORKER_FAILED"
  | "APPLY_OUTPUT_TOO_LARGE"
  | "APPLY_PROTOCOL"
  | "INVALID_RUN_REQUEST"
  | "RUN_MESSAGE_TOO_LARGE"
  | "ARTIFACT_STREAM_IDLE"
  | "UNSUPPORTED_CONNECT_FEATURE.QUERY_EXECUTION"
  | "INVALID_HANDLE.OPERATION_NOT_FOUND"
  | "UNSUPPORTED_CONNECT_FEATURE.RELATION"
  | "UNSUPPORTED_CONNECT_FEATURE.EXPRESSION"
  | "UNSUPPORTED_CONNECT_FEATURE.DATA_TYPE"
  | "INVALID_PLAN_INPUT"
  | "PARSE_SYNTAX_ERROR"
  | "UNRESOLVED_COLUMN.WITH_SUGGESTION"
  | "AMBIGUOUS_REFERENCE"
  | "NULLABLE_COLUMN_OR_FIELD"
  | "PYTHON_EXCEPTION"
  | "UDF_PYSPARK_UNAVAILABLE"
  | "UDF_PYARROW_UNAVAILABLE"
  | "UDF_PYSPARK_VERSION_MISMATCH"
  | "PYTHON_VERSION_MISMATCH"
  | "UDF_EXECUTION_FAILED"
  | "PIP_INVALID_REQUEST"
  | "PIP_INSTALL_FAILED"
  | "PIP_NOT_INSTALLED";

/** The error classes an Apply call fails with. */
export type ApplyErrorClass = Extract<ServerErrorCode, `APPLY_${string}`>;

/** The gRPC code of each of the server's error classes. */
const SERVER_CODES: Readonly<Record<ServerErrorCode, Code>> = {
  APPLY_INVALID_REQUEST: Code.InvalidArgument,
  APPLY_INVALID_INPUT: Code.InvalidArgument,
  APPLY_INPUT_NOT_FOUND: Code.NotFound,
  APPLY_UNSUPPORTED_TYPE: Code.InvalidArgument,
  APPLY_FUNCTION_NOT_FOUND: Code.InvalidArgument,
  // As gRPC servers report an exception raised by application code.
  APPLY_FUNCTION_FAILED: Code.Unknown,
  APPLY_OUTPUT_TYPE_MISMATCH: Code.InvalidArgument,
  APPLY_PYARROW_UNAVAILABLE: Code.FailedPrecondition,
  APPLY_PANDAS_UNAVAILABLE: Code.FailedPrecondition,
  APPLY_TIMEOUT: Code.DeadlineExceeded,
  APPLY_WORKER_FAILED: Code.Aborted,
  APPLY_OUTPUT_TOO_LARGE: Code.ResourceExhausted,
  APPLY_PROTOCOL: Code.Internal,
  INVALID_RUN_REQUEST: Code.InvalidArgument,
  RUN_MESSAGE_TOO_LARGE: Code.ResourceExhausted,
  ARTIFACT_STREAM_IDLE: Code.DeadlineExceeded,
  "UNSUPPORTED_CONNECT_FEATURE.QUERY_EXECUTION": Code.Unimplemented,
  "INVALID_HANDLE.OPERATION_NOT_FOUND": Code.NotFound,
  // As Spark's server reports every analysis and execution failure.
  "UNSUPPORTED_CONNECT_FEATURE.RELATION": Code.Internal,
  "UNSUPPORTED_CONNECT_FEATURE.EXPRESSION": Code.Internal,
  "UNSUPPORTED_CONNECT_FEATURE.DATA_TYPE": Code.Internal,
  INVALID_PLAN_INPUT: Code.Internal,
  PARSE_SYNTAX_ERROR: Code.Internal,
  "UNRESOLVED_COLUMN.WITH_SUGGESTION": Code.Internal,
  AMBIGUOUS_REFERENCE: Code.Internal,
  NULLABLE_COLUMN_OR_FIELD: Code.Internal,
  PYTHON_EXCEPTION: Code.Internal,
  UDF_PYSPARK_UNAVAILABLE: Code.FailedPrecondition,
  UDF_PYARROW_UNAVAILABLE: Code.FailedPrecondition,
  UDF_PYSPARK_VERSION_MISMATCH: Code.FailedPrecondition,
  PYTHON_VERSION_MISMATCH: Code.FailedPrecondition,
  UDF_EXECUTION_FAILED: Code.Internal,
  PIP_INVALID_REQUEST: Code.InvalidArgument,
  // The request was well formed; what it needs (a version, a wheel, the index) is not there.
  PIP_INSTALL_FAILED: Code.FailedPrecondition,
  PIP_NOT_INSTALLED: Code.NotFound,
};

/** The gRPC code for each session store class: the class says what went wrong, the code how to react. */
const SESSION_CODES: Readonly<Record<SessionErrorClass, Code>> = {
  "INVALID_HANDLE.FORMAT": Code.InvalidArgument,
  "INVALID_HANDLE.SESSION_CLOSED": Code.FailedPrecondition,
  "INVALID_HANDLE.SESSION_CHANGED": Code.FailedPrecondition,
  "INVALID_HANDLE.SESSION_NOT_FOUND": Code.NotFound,
  ARTIFACT_ALREADY_EXISTS: Code.AlreadyExists,
  INVALID_ARTIFACT_PATH: Code.InvalidArgument,
  ARTIFACT_NOT_FOUND: Code.NotFound,
  INVALID_ARTIFACT_NAME: Code.InvalidArgument,
  INVALID_ARTIFACT_STREAM: Code.InvalidArgument,
  CACHE_ARTIFACT_HASH_MISMATCH: Code.InvalidArgument,
  ARTIFACT_UNPACK_FAILED: Code.InvalidArgument,
  BLOB_NOT_FOUND: Code.FailedPrecondition,
  // Attaching another user's content by digest needs proof of holding it; uploading does not.
  BLOB_PROOF_REQUIRED: Code.PermissionDenied,
  BLOB_PROOF_INVALID: Code.PermissionDenied,
  SQL_CONF_NOT_FOUND: Code.NotFound,
  CANNOT_MODIFY_CONFIG: Code.FailedPrecondition,
  INVALID_CONF_VALUE: Code.InvalidArgument,
  "INVALID_CONF_VALUE.TYPE_MISMATCH": Code.InvalidArgument,
  "INVALID_CONF_VALUE.TIME_ZONE": Code.InvalidArgument,
  QUOTA_EXCEEDED: Code.ResourceExhausted,
  // Bytes or a record of the cluster's that failed verification: never used, the call fails.
  CLUSTER_DATA_INVALID: Code.DataLoss,
  CLUSTER_UNAVAILABLE: Code.Unavailable,
  // The archive is well formed; the server it was added to cannot run it (issue 18).
  ENVIRONMENT_PLATFORM_MISMATCH: Code.FailedPrecondition,
  ENVIRONMENT_INTERPRETER_MISSING: Code.FailedPrecondition,
  ENVIRONMENT_PYTHON_MISMATCH: Code.FailedPrecondition,
  "INVALID_CLONE_SESSION_REQUEST.TARGET_SESSION_ID_ALREADY_EXISTS": Code.AlreadyExists,
  "INVALID_CLONE_SESSION_REQUEST.TARGET_SESSION_ID_FORMAT": Code.InvalidArgument,
};

/** The error class and gRPC code of each launcher failure. */
const LAUNCH_CODES: Readonly<Record<LaunchErrorCode, [string, Code]>> = {
  INTERPRETER_NOT_FOUND: ["PYTHON_INTERPRETER.NOT_FOUND", Code.FailedPrecondition],
  INTERPRETER_NOT_ALLOWED: ["PYTHON_INTERPRETER.NOT_ALLOWED", Code.FailedPrecondition],
  INTERPRETER_OUTSIDE_SESSION: ["PYTHON_INTERPRETER.OUTSIDE_SESSION", Code.FailedPrecondition],
  INTERPRETER_FAILED: ["PYTHON_INTERPRETER.FAILED", Code.FailedPrecondition],
  SESSION_DIR_MISSING: ["INVALID_HANDLE.SESSION_NOT_FOUND", Code.FailedPrecondition],
  QUEUE_FULL: ["WORKER_QUEUE_FULL", Code.ResourceExhausted],
  SESSION_STOPPED: ["INVALID_HANDLE.SESSION_CLOSED", Code.Aborted],
  CLOSED: ["SERVER_SHUTTING_DOWN", Code.Unavailable],
  SANDBOX_UNAVAILABLE: ["WORKER_SANDBOX_UNAVAILABLE", Code.FailedPrecondition],
};

/** Spark's SQLSTATE of the server's classes that are Spark's too. */
const SERVER_SQL_STATES: Partial<Record<ServerErrorCode, string>> = {
  "UNSUPPORTED_CONNECT_FEATURE.QUERY_EXECUTION": "0A000",
  "INVALID_HANDLE.OPERATION_NOT_FOUND": "HY000",
  "UNSUPPORTED_CONNECT_FEATURE.RELATION": "0A000",
  "UNSUPPORTED_CONNECT_FEATURE.EXPRESSION": "0A000",
  "UNSUPPORTED_CONNECT_FEATURE.DATA_TYPE": "0A000",
  PARSE_SYNTAX_ERROR: "42601",
  "UNRESOLVED_COLUMN.WITH_SUGGESTION": "42703",
  AMBIGUOUS_REFERENCE: "42704",
  NULLABLE_COLUMN_OR_FIELD: "42000",
  PYTHON_EXCEPTION: "38000",
};

/** Options of {@linkcode ServerError}. */
export interface ServerErrorOptions {
  /**
   * A Python traceback (Apply).
   * @default {""}
   */
  traceback?: string;
  /**
   * A finer, machine-readable reason.
   * @default {undefined}
   */
  reason?: string;
  /**
   * The values the message names, by Spark's parameter names (sent as `messageParameters`).
   * @default {{}}
   */
  parameters?: Record<string, string>;
  /**
   * The underlying error.
   * @default {undefined}
   */
  cause?: unknown;
}

/**
 * A failure of the server's own (not the store's or the launcher's): its `code` is the error
 * class a client receives.
 *
 * @example
 * ```ts
 * import { isServerError, ServerError } from "@valise/server";
 * import assert from "node:assert/strict";
 * const e = new ServerError("APPLY_TIMEOUT", "the worker ran past its time limit");
 * assert.ok(isServerError(e));
 * assert.equal(e.message, "[APPLY_TIMEOUT] the worker ran past its time limit");
 * ```
 */
export class ServerError extends Error {
  override name = "ServerError";
  /** The error class. */
  readonly code: ServerErrorCode;
  /** The message without the `[CLASS]` prefix. */
  readonly detail: string;
  /** A Python traceback, when the failure was in Python. */
  readonly traceback: string;
  /** A finer reason, when there is one. */
  readonly reason: string | undefined;
  /** The values the message names, by parameter name. */
  readonly parameters: Record<string, string>;

  /**
   * Creates the error; `message` is prefixed with `[code] `.
   *
   * @param code The error class.
   * @param message What went wrong and what to do.
   * @param options Traceback, reason, cause.
   */
  constructor(code: ServerErrorCode, message: string, options: ServerErrorOptions = {}) {
    super(`[${code}] ${message}`, options.cause === undefined ? {} : { cause: options.cause });
    this.code = code;
    this.detail = message;
    this.traceback = options.traceback ?? "";
    this.reason = options.reason;
    this.parameters = options.parameters ?? {};
  }
}

/**
 * Whether `e` is a {@linkcode ServerError}, also across duplicate copies of this package.
 *
 * @param e Anything.
 * @returns `true` for a server error.
 */
export function isServerError(e: unknown): e is ServerError {
  return typeof e === "object" && e !== null && (e as Error).name === "ServerError" &&
    typeof (e as ServerError).code === "string" && (e as ServerError).code in SERVER_CODES;
}

/**
 * Whether a class names one of the server's own classes.
 *
 * @param value A string.
 * @returns `true` for a {@linkcode ServerErrorCode}.
 */
export function isServerErrorCode(value: string): value is ServerErrorCode {
  return Object.hasOwn(SERVER_CODES, value);
}

/** The JVM classes every exception class extends, as Spark lists them. */
const THROWABLE = ["java.lang.Exception", "java.lang.Throwable", "java.lang.Object"];
const RUNTIME = ["java.lang.RuntimeException", ...THROWABLE];

/**
 * The JVM exception classes of an error class, most specific first, as Spark sends them
 * (ErrorInfo `reason` is the first, metadata `classes` all): PySpark raises the Python exception
 * of the first class it knows.
 */
function exceptionClasses(errorClass: string): string[] {
  if (errorClass === "SQL_CONF_NOT_FOUND") {
    return [
      "org.apache.spark.SparkNoSuchElementException",
      "java.util.NoSuchElementException",
      ...RUNTIME,
    ];
  }
  if (
    errorClass.startsWith("INVALID_HANDLE.") ||
    errorClass.startsWith("INVALID_CLONE_SESSION_REQUEST.")
  ) {
    return ["org.apache.spark.SparkSQLException", "java.sql.SQLException", ...THROWABLE];
  }
  if (errorClass === "PYTHON_EXCEPTION") {
    // PySpark raises its PythonException for this class, as for a UDF failing on Spark.
    return ["org.apache.spark.api.python.PythonException", ...RUNTIME];
  }
  if (errorClass === "PARSE_SYNTAX_ERROR") {
    return ["org.apache.spark.sql.catalyst.parser.ParseException", ...THROWABLE];
  }
  if (
    errorClass === "CANNOT_MODIFY_CONFIG" || errorClass.startsWith("UNRESOLVED_COLUMN") ||
    errorClass === "AMBIGUOUS_REFERENCE" || errorClass === "INVALID_PLAN_INPUT" ||
    errorClass === "NULLABLE_COLUMN_OR_FIELD"
  ) {
    return ["org.apache.spark.sql.AnalysisException", ...THROWABLE];
  }
  if (errorClass.startsWith("INVALID_") && errorClass !== "INVALID_ARTIFACT_PATH") {
    return [
      "org.apache.spark.SparkIllegalArgumentException",
      "java.lang.IllegalArgumentException",
      ...RUNTIME,
    ];
  }
  if (errorClass.startsWith("UNSUPPORTED_")) {
    return [
      "org.apache.spark.SparkUnsupportedOperationException",
      "java.lang.UnsupportedOperationException",
      ...RUNTIME,
    ];
  }
  return ["org.apache.spark.SparkRuntimeException", ...RUNTIME];
}

interface Classified {
  errorClass: string;
  message: string;
  code: Code;
  sqlState?: string | undefined;
  reason?: string | undefined;
  parameters?: Record<string, string> | undefined;
}

/** Options of {@linkcode toConnectError}. */
export interface ToConnectErrorOptions {
  /**
   * The class of a `TypeError` or `RangeError`: where the request was checked by a building
   * block that throws built-ins for malformed arguments (the launcher), they are the client's
   * fault, not the server's.
   * @default {undefined} reported as INTERNAL_ERROR
   */
  badRequest?: ServerErrorCode;
}

function classify(e: unknown, options: ToConnectErrorOptions): Classified {
  if (isSessionError(e)) {
    return {
      errorClass: e.code,
      message: e.message,
      code: e.code === "ARTIFACT_UNPACK_FAILED" ? unpackCode(e.reason) : SESSION_CODES[e.code],
      sqlState: e.sqlState,
      reason: e.reason,
      parameters: e.parameters,
    };
  }
  if (isLaunchError(e)) {
    const [errorClass, code] = LAUNCH_CODES[e.code];
    return { errorClass, message: `[${errorClass}] ${e.message}`, code, reason: e.code };
  }
  if (isServerError(e)) {
    return {
      errorClass: e.code,
      message: e.message,
      code: SERVER_CODES[e.code],
      sqlState: SERVER_SQL_STATES[e.code],
      reason: e.reason,
      parameters: e.parameters,
    };
  }
  if (options.badRequest && (e instanceof TypeError || e instanceof RangeError)) {
    return classify(new ServerError(options.badRequest, e.message, { cause: e }), {});
  }
  const msg = e instanceof Error ? e.message : String(e);
  return { errorClass: "INTERNAL_ERROR", message: `[INTERNAL_ERROR] ${msg}`, code: Code.Internal };
}

/**
 * Builds the `ConnectError` a client receives: the message starts with the error class in
 * brackets, as Spark's do, and a `google.rpc.ErrorInfo` detail carries `errorClass` and
 * `sqlState` the way Spark Connect sends them, so PySpark raises its usual exceptions.
 *
 * @param e The error: a `SessionError`, a `LaunchError`, a {@linkcode ServerError}, a
 *   `ConnectError` (returned as is), or anything else (reported as `INTERNAL`).
 * @param options How to read built-in argument errors.
 * @returns The error to throw from a handler.
 */
export function toConnectError(e: unknown, options: ToConnectErrorOptions = {}): ConnectError {
  if (e instanceof ConnectError) return e;
  const c = classify(e, options);
  const metadata: Record<string, string> = {
    errorClass: c.errorClass,
    classes: JSON.stringify(exceptionClasses(c.errorClass)),
    messageParameters: JSON.stringify(c.parameters ?? {}),
  };
  if (c.sqlState) metadata.sqlState = c.sqlState;
  if (c.reason) metadata["valise.reason"] = c.reason;
  const info = create(ErrorInfoSchema, {
    reason: exceptionClasses(c.errorClass)[0]!,
    domain: "org.apache.spark",
    metadata,
  });
  // Spark ends its messages with the SQLSTATE; it survives truncation.
  const suffix = c.sqlState ? ` SQLSTATE: ${c.sqlState}` : "";
  return new ConnectError(c.message.slice(0, 2048 - suffix.length) + suffix, c.code, undefined, [
    { desc: ErrorInfoSchema, value: info },
  ], e);
}

/** The archive is at fault (INVALID_ARGUMENT) unless the unpack code says otherwise. */
function unpackCode(reason: string | undefined): Code {
  if (reason?.startsWith("QUOTA")) return Code.ResourceExhausted;
  if (reason === "POST_UNPACK") return Code.FailedPrecondition;
  if (reason === "ABORTED") return Code.Canceled;
  if (reason === "IO" || reason === "DEST_EXISTS") return Code.Internal;
  return Code.InvalidArgument;
}
