// Copyright 2026 the Valise authors. Apache-2.0 license.
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorInfoSchema } from "@valise/protocol";

/** gRPC status code names, as `Code` spells them (`"Unavailable"`, `"NotFound"`, …). */
export type GrpcCodeName = keyof typeof Code;

/** The fields of a {@linkcode ValiseClientError}. */
export interface ValiseClientErrorInit {
  /** The error class, e.g. `ARTIFACT_ALREADY_EXISTS`. */
  errorClass: string;
  /**
   * The gRPC code name.
   * @default {"Unknown"}
   */
  code?: GrpcCodeName;
  /**
   * Spark's SQLSTATE.
   * @default {undefined}
   */
  sqlState?: string | undefined;
  /**
   * A finer reason (the server's `valise.reason`).
   * @default {undefined}
   */
  reason?: string | undefined;
  /**
   * The message parameters the server sent.
   * @default {{}}
   */
  parameters?: Record<string, string>;
  /**
   * The Python traceback, when the failure was in Python (Apply's `APPLY_FUNCTION_FAILED`, …).
   * @default {undefined}
   */
  traceback?: string | undefined;
  /**
   * What caused it.
   * @default {undefined}
   */
  cause?: unknown;
}

/**
 * Every failure of a call to the server, or of a response the client does not accept.
 * `errorClass` is the server's Spark-style error class (`ARTIFACT_ALREADY_EXISTS`,
 * `INVALID_HANDLE.SESSION_CLOSED`, …) or one of the client's own: `CRC_MISMATCH`,
 * `INTEGRITY_ERROR`, `UNAVAILABLE`, `UNAUTHENTICATED`, `RPC_ERROR`.
 */
export class ValiseClientError extends Error {
  override name = "ValiseClientError";
  /** The error class, e.g. `ARTIFACT_ALREADY_EXISTS`. */
  readonly errorClass: string;
  /** The gRPC code name, e.g. `AlreadyExists`. */
  readonly code: GrpcCodeName;
  /** Spark's SQLSTATE, when the server sent one. */
  readonly sqlState: string | undefined;
  /** A finer reason, when the server sent one. */
  readonly reason: string | undefined;
  /** The message parameters the server sent. */
  readonly parameters: Record<string, string>;
  /** The Python traceback, when the failure was in Python and the server sent one. */
  readonly traceback: string | undefined;

  /**
   * Creates the error.
   *
   * @param message What went wrong.
   * @param init The error class and details.
   */
  constructor(message: string, init: ValiseClientErrorInit) {
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.errorClass = init.errorClass;
    this.code = init.code ?? "Unknown";
    this.sqlState = init.sqlState;
    this.reason = init.reason;
    this.parameters = init.parameters ?? {};
    this.traceback = init.traceback;
  }

  /** Recognises the error even across duplicate copies of this package. */
  static override [Symbol.hasInstance](value: unknown): boolean {
    return typeof value === "object" && value !== null &&
      (value as { name?: unknown }).name === "ValiseClientError" &&
      typeof (value as { errorClass?: unknown }).errorClass === "string";
  }

  /**
   * Converts anything a call threw: a `ConnectError` becomes a `ValiseClientError` built from
   * the server's `google.rpc.ErrorInfo`; a `ValiseClientError` is returned as is; anything else
   * is wrapped as `RPC_ERROR`.
   *
   * @param e What was thrown.
   * @returns The typed error.
   */
  static from(e: unknown): ValiseClientError {
    if (e instanceof ValiseClientError) return e;
    const err = ConnectError.from(e);
    const code = Code[err.code] as GrpcCodeName;
    const [info] = err.findDetails(ErrorInfoSchema);
    const md = info?.metadata ?? {};
    let parameters: Record<string, string> = {};
    try {
      if (md.messageParameters) parameters = JSON.parse(md.messageParameters);
    } catch { /* a server's malformed parameters do not hide its error */ }
    const errorClass = md.errorClass ?? fallbackClass(err.code);
    return new ValiseClientError(err.rawMessage || code, {
      errorClass,
      code,
      sqlState: md.sqlState,
      reason: md["valise.reason"],
      parameters,
      cause: e,
    });
  }
}

function fallbackClass(code: Code): string {
  switch (code) {
    case Code.Unavailable:
      return "UNAVAILABLE";
    case Code.Unauthenticated:
      return "UNAUTHENTICATED";
    case Code.PermissionDenied:
      return "PERMISSION_DENIED";
    case Code.DeadlineExceeded:
      return "DEADLINE_EXCEEDED";
    case Code.Canceled:
      return "CANCELLED";
    case Code.Unimplemented:
      return "UNIMPLEMENTED";
    default:
      return "RPC_ERROR";
  }
}
