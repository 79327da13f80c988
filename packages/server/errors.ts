// Copyright 2026 the Valise authors. Apache-2.0 license.
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorInfoSchema } from "@valise/protocol";
import { SessionError, type SessionErrorClass } from "@valise/session-store";

/** The gRPC code for each error class: the class says what went wrong, the code how to react. */
const CODES: Record<SessionErrorClass, Code> = {
  "INVALID_HANDLE.FORMAT": Code.InvalidArgument,
  "INVALID_HANDLE.SESSION_CLOSED": Code.FailedPrecondition,
  "INVALID_HANDLE.SESSION_CHANGED": Code.FailedPrecondition,
  "INVALID_HANDLE.SESSION_NOT_FOUND": Code.NotFound,
  ARTIFACT_ALREADY_EXISTS: Code.AlreadyExists,
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
  QUOTA_EXCEEDED: Code.ResourceExhausted,
};

/** The JVM exception class PySpark maps each error to (ErrorInfo.reason). */
function exceptionClass(errorClass: string): string {
  if (errorClass === "SQL_CONF_NOT_FOUND") return "org.apache.spark.SparkNoSuchElementException";
  if (errorClass.startsWith("INVALID_HANDLE.")) return "org.apache.spark.sql.SparkSQLException";
  if (errorClass.startsWith("INVALID_")) return "org.apache.spark.SparkIllegalArgumentException";
  return "org.apache.spark.SparkRuntimeException";
}

/** A failure with an error class, as the server reports it. */
export interface ClassifiedError {
  /** The error class, e.g. `ARTIFACT_ALREADY_EXISTS`. */
  errorClass: string;
  /** The message, starting with `[errorClass]`. */
  message: string;
  /** The gRPC code. */
  code: Code;
  /** Spark's SQLSTATE, when there is one. */
  sqlState?: string | undefined;
  /** A finer reason (e.g. an unpack error code). */
  reason?: string | undefined;
  /** The message's parameters, sent as ErrorInfo `messageParameters`. */
  parameters?: Record<string, string> | undefined;
}

/**
 * Builds the `ConnectError` a client receives: the message starts with the error class in
 * brackets, as Spark's do, and a `google.rpc.ErrorInfo` detail carries `errorClass` and
 * `sqlState` the way Spark Connect sends them, so PySpark raises its usual exceptions.
 *
 * @param e The error: a {@linkcode ClassifiedError}, a `SessionError`, a `ConnectError`
 *   (returned as is), or anything else (reported as `INTERNAL`).
 * @returns The error to throw from a handler.
 */
export function toConnectError(e: unknown): ConnectError {
  if (e instanceof ConnectError) return e;
  let c: ClassifiedError;
  if (e instanceof SessionError) {
    c = {
      errorClass: e.errorClass,
      message: e.message,
      code: CODES[e.errorClass],
      sqlState: e.sqlState,
      reason: e.reason,
      parameters: e.parameters,
    };
    if (e.errorClass === "ARTIFACT_UNPACK_FAILED") c.code = unpackCode(e.reason);
  } else if (isClassified(e)) {
    c = e;
  } else {
    const msg = e instanceof Error ? e.message : String(e);
    c = { errorClass: "INTERNAL_ERROR", message: `[INTERNAL_ERROR] ${msg}`, code: Code.Internal };
  }
  const metadata: Record<string, string> = {
    errorClass: c.errorClass,
    classes: JSON.stringify([exceptionClass(c.errorClass)]),
    messageParameters: JSON.stringify(c.parameters ?? {}),
  };
  if (c.sqlState) metadata.sqlState = c.sqlState;
  if (c.reason) metadata["valise.reason"] = c.reason;
  const info = create(ErrorInfoSchema, {
    reason: exceptionClass(c.errorClass),
    domain: "org.apache.spark",
    metadata,
  });
  return new ConnectError(c.message.slice(0, 2048), c.code, undefined, [
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

function isClassified(e: unknown): e is ClassifiedError {
  return typeof e === "object" && e !== null &&
    typeof (e as ClassifiedError).errorClass === "string" &&
    typeof (e as ClassifiedError).message === "string" &&
    typeof (e as ClassifiedError).code === "number";
}
