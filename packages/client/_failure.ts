// Copyright 2026 the Valise authors. Apache-2.0 license.
// Which failures are the node's rather than the call's: what the retry loop may take to another
// endpoint. Told apart by the Node.js error codes under the ConnectError (a refused or unresolved
// connection never reached a server; a reset, a broken pipe or a stream cut without a status may
// have) and by the gRPC status UNAVAILABLE a server (or a proxy) answered.

/**
 * How a call failed because of its node:
 * - `unreachable`: nothing reached a server (connection refused, host not resolved or not
 *   routable): any call may be sent elsewhere.
 * - `lost`: the connection broke or the stream ended without a gRPC status (the node died, was
 *   restarted, a proxy cut it): the server may have received and acted on the request.
 * - `unavailable`: a server or proxy answered with the status UNAVAILABLE.
 */
export type NodeFailure = "unreachable" | "lost" | "unavailable";

const UNREACHABLE = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EHOSTDOWN",
  "EADDRNOTAVAIL",
]);

const LOST = new Set([
  "ECONNRESET",
  "EPIPE",
  "ECONNABORTED",
  // A write the HTTP/2 session cancelled as the connection went (seen on uploads to a node
  // SIGKILLed mid-stream, as often as EPIPE and RST_STREAM CANCEL).
  "ECANCELED",
  "ETIMEDOUT",
  "ERR_STREAM_PREMATURE_CLOSE",
  "ERR_HTTP2_STREAM_ERROR",
  "ERR_HTTP2_SESSION_ERROR",
  "ERR_HTTP2_GOAWAY_SESSION",
  "ERR_HTTP2_INVALID_SESSION",
  "ERR_HTTP2_STREAM_CANCEL",
  "ERR_HTTP2_ERROR",
]);

/** The client's classes of a call that ended without the server's error class. */
const TRANSPORT_CLASSES = new Set(["UNAVAILABLE", "CANCELLED", "RPC_ERROR", "DEADLINE_EXCEEDED"]);

/**
 * Transport messages of a stream cut without a status. Deno's node:http2 reports a peer that
 * died mid-stream as an RST_STREAM with CANCEL (checked against a SIGKILLed server); a server's
 * deliberate refusals (ENHANCE_YOUR_CALM, INADEQUATE_SECURITY) are not in this list.
 */
const LOST_MESSAGE =
  /http\/2 stream closed with error code (CANCEL|INTERNAL_ERROR|REFUSED_STREAM|NO_ERROR|STREAM_CLOSED)|premature close|PING timed out|protocol error: missing (status|trailer)|socket hang up|session closed/i;

/**
 * Whether a call failed because of its node, and how.
 *
 * @param e What the call threw (a `ValiseClientError` with its causes, or anything else).
 * @returns The kind of failure, or `undefined` for a failure of the call itself (a server's
 *   answer other than UNAVAILABLE, a bad input, a cancellation by the caller's signal is checked
 *   by the caller).
 */
export function nodeFailure(e: unknown): NodeFailure | undefined {
  const top = e as { errorClass?: unknown; grpcCode?: unknown } | null;
  if (
    typeof top === "object" && top !== null && typeof top.errorClass === "string" &&
    !TRANSPORT_CLASSES.has(top.errorClass)
  ) {
    // The server's own error class: it answered, whatever its message says.
    return top.grpcCode === "Unavailable" ? "unavailable" : undefined;
  }
  const codes: string[] = [];
  const messages: string[] = [];
  let grpcUnavailable = false;
  let c: unknown = e;
  // Bounded: a cause chain that loops (or is hostile) is read eight levels deep at most.
  for (let i = 0; i < 8 && typeof c === "object" && c !== null; i++) {
    const x = c as { code?: unknown; message?: unknown; grpcCode?: unknown; cause?: unknown };
    if (typeof x.code === "string") codes.push(x.code);
    // ConnectError's Code.Unavailable is 14; a ValiseClientError names it.
    if (x.grpcCode === "Unavailable" || (i <= 1 && x.code === 14)) grpcUnavailable = true;
    if (typeof x.message === "string") messages.push(x.message);
    c = x.cause;
  }
  if (codes.some((k) => UNREACHABLE.has(k))) return "unreachable";
  if (codes.some((k) => LOST.has(k)) || messages.some((m) => LOST_MESSAGE.test(m))) return "lost";
  return grpcUnavailable ? "unavailable" : undefined;
}

/**
 * A failure in a few words, after "the node X": `is unreachable`, `died or dropped the
 * connection during the call`, `answered UNAVAILABLE`.
 *
 * @param f The failure.
 * @returns The words.
 */
export function describeFailure(f: NodeFailure): string {
  switch (f) {
    case "unreachable":
      return "is unreachable";
    case "lost":
      return "died or dropped the connection during the call";
    case "unavailable":
      return "answered UNAVAILABLE";
  }
}
