// Copyright 2026 the Valise authors. Apache-2.0 license.
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorInfoSchema } from "@valise/protocol";

/** gRPC status code names, as `Code` spells them (`"Unavailable"`, `"NotFound"`, …). */
export type GrpcCodeName = keyof typeof Code;

/**
 * The error classes the client raises itself. The server's classes (`ARTIFACT_ALREADY_EXISTS`,
 * `APPLY_FUNCTION_FAILED`, …) come from its `google.rpc.ErrorInfo`; these are the rest:
 *
 * - `CRC_MISMATCH`: the server reported a chunk's CRC failed; the artifact was not added.
 * - `INTEGRITY_ERROR`: a response belonged to another session (or server-side session).
 * - `APPLY_PROTOCOL`: an Apply call's output was not what the protocol allows.
 * - `INVALID_HANDLE.SESSION_CLOSED`: a call on a session this client closed (the server's
 *   class for a released session, raised before anything is sent).
 * - `UNAVAILABLE`, `UNAUTHENTICATED`, `PERMISSION_DENIED`, `DEADLINE_EXCEEDED`, `CANCELLED`,
 *   `UNIMPLEMENTED`: a call failed with that gRPC code and no error class of the server (a
 *   proxy, a dropped connection, a server that is not Valise). A call whose node was
 *   unreachable or died and that was not (or no longer) retried is `UNAVAILABLE`, its message
 *   naming the node and why it was not sent again.
 * - `RPC_ERROR`: any other failure without a class of the server.
 */
export type ClientErrorClass =
  | "CRC_MISMATCH"
  | "INTEGRITY_ERROR"
  | "APPLY_PROTOCOL"
  | "INVALID_HANDLE.SESSION_CLOSED"
  | "UNAVAILABLE"
  | "UNAUTHENTICATED"
  | "PERMISSION_DENIED"
  | "DEADLINE_EXCEEDED"
  | "CANCELLED"
  | "UNIMPLEMENTED"
  | "RPC_ERROR";

/** The fields of a {@linkcode ValiseClientError}. */
export interface ValiseClientErrorInit {
  /** The error class: the server's, e.g. `ARTIFACT_ALREADY_EXISTS`, or a {@linkcode ClientErrorClass}. */
  errorClass: string;
  /**
   * The gRPC code name of the failed call.
   * @default {"Unknown"}
   */
  grpcCode?: GrpcCodeName;
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
 * Every failure of a call to the server, or of a response the client does not accept. Two
 * things tell what happened: `errorClass`, the domain's error class (the server's Spark-style
 * class such as `ARTIFACT_ALREADY_EXISTS` or `INVALID_HANDLE.SESSION_CLOSED`, or one of the
 * client's own, {@linkcode ClientErrorClass}), and `grpcCode`, the transport's status
 * (`AlreadyExists`, `Unavailable`, …), how the call ended on the wire. The CLI's hints go by the
 * class; retries go by the code (`Unavailable`).
 */
export class ValiseClientError extends Error {
  /** Always `"ValiseClientError"`: what {@linkcode isValiseClientError} recognises. */
  override name = "ValiseClientError";
  /** The error class, e.g. `ARTIFACT_ALREADY_EXISTS` or `CRC_MISMATCH`. */
  readonly errorClass: string;
  /** The gRPC code name of the failed call, e.g. `AlreadyExists`. */
  readonly grpcCode: GrpcCodeName;
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
    this.grpcCode = init.grpcCode ?? "Unknown";
    this.sqlState = init.sqlState;
    this.reason = init.reason;
    this.parameters = init.parameters ?? {};
    this.traceback = init.traceback;
  }

  /** Recognises the error even across duplicate copies of this package. */
  static override [Symbol.hasInstance](value: unknown): boolean {
    return isValiseClientError(value);
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
    if (isValiseClientError(e)) return e;
    const err = ConnectError.from(e);
    const grpcCode = Code[err.code] as GrpcCodeName;
    const [info] = err.findDetails(ErrorInfoSchema);
    const md = info?.metadata ?? {};
    let parameters: Record<string, string> = {};
    try {
      if (md.messageParameters) parameters = JSON.parse(md.messageParameters);
    } catch { /* a server's malformed parameters do not hide its error */ }
    return new ValiseClientError(err.rawMessage || grpcCode, {
      errorClass: md.errorClass ?? FALLBACK_CLASSES[err.code] ?? "RPC_ERROR",
      grpcCode,
      sqlState: md.sqlState,
      reason: md["valise.reason"],
      parameters,
      cause: e,
    });
  }
}

/**
 * Whether a value is a {@linkcode ValiseClientError}, also one of another copy of this package
 * (what `instanceof ValiseClientError` checks too).
 *
 * @param value Anything, e.g. what a `catch` caught.
 * @returns `true` for a client error, with its `errorClass` and `grpcCode`.
 */
export function isValiseClientError(value: unknown): value is ValiseClientError {
  if (typeof value !== "object" || value === null) return false;
  const v = value as { name?: unknown; errorClass?: unknown; grpcCode?: unknown };
  return v.name === "ValiseClientError" && typeof v.errorClass === "string" &&
    typeof v.grpcCode === "string";
}

/** The class of a failure the server sent no class for, by its gRPC code. */
const FALLBACK_CLASSES: Partial<Record<Code, ClientErrorClass>> = {
  [Code.Unavailable]: "UNAVAILABLE",
  [Code.Unauthenticated]: "UNAUTHENTICATED",
  [Code.PermissionDenied]: "PERMISSION_DENIED",
  [Code.DeadlineExceeded]: "DEADLINE_EXCEEDED",
  [Code.Canceled]: "CANCELLED",
  [Code.Unimplemented]: "UNIMPLEMENTED",
};
