// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * A call the client cancelled (Ctrl-C, an aborted signal) or whose connection closed mid-call
 * fails inside the handler with whatever reading its stream ran into: "Premature close", a
 * stream that ends short of its chunks. Those are not the server's errors. The call's signal
 * says what really happened (the HTTP/2 reset), so such a failure is reported, logged and
 * counted as `CANCELED`, and one whose deadline passed as `DEADLINE_EXCEEDED`.
 *
 * @module
 */
import {
  Code,
  ConnectError,
  type ContextValues,
  createContextKey,
  type Interceptor,
} from "@connectrpc/connect";
import { observingInterceptor } from "./_interceptors.ts";

/**
 * Classifies a failed call by its signal: the client went away (`CANCELED`), its deadline passed
 * (`DEADLINE_EXCEEDED`), or neither (the error as it is). A server shutting down keeps its
 * error: the client did not cancel anything.
 *
 * @param error What the handler failed with.
 * @param signal The call's signal.
 * @param shutdown Aborted when the server shuts down.
 * @param reset Whether the client reset the call's HTTP/2 stream (see {@linkcode kPeerReset}).
 * @returns The error to report.
 */
export function classifyAborted(
  error: unknown,
  signal: AbortSignal,
  shutdown: AbortSignal,
  reset = false,
): unknown {
  if (shutdown.aborted) return error;
  // The request stream can end short of its end before the HTTP/2 reset reaches the call's
  // signal: its "Premature close", or the stream's own reset code, says the client went away.
  if (!signal.aborted && !reset && !prematureClose(error)) return error;
  const got = ConnectError.from(error);
  // A message over its size cap is the server's refusal, and refusing it is what closed the
  // stream: the client did not go away first.
  if (got.code === Code.ResourceExhausted) return error;
  const reason = signal.reason instanceof ConnectError ? signal.reason : undefined;
  // What the handler ran into, without its class: a symptom, not the cause (none when the
  // handler failed with the signal's own reason).
  const symptom = got.rawMessage === reason?.rawMessage
    ? ""
    : ` (the handler saw: ${got.rawMessage.replace(/^\[[^\]]*\]\s*/, "").slice(0, 200)})`;
  if (reason?.code === Code.DeadlineExceeded) {
    if (got.rawMessage.startsWith("[DEADLINE_EXCEEDED]")) return error;
    return new ConnectError(
      `[DEADLINE_EXCEEDED] The call's deadline passed before it completed${symptom}`,
      Code.DeadlineExceeded,
      undefined,
      undefined,
      error,
    );
  }
  if (got.rawMessage.startsWith("[CANCELLED]")) return error;
  // Which reset code a peer that went away produces depends on how it went (an abort sends
  // CANCEL; a killed process may too, or none): the message does not guess.
  const how = reason?.rawMessage.replace(/^http\/2 /, "HTTP/2 ") ?? "the stream was closed";
  const message = `[CANCELLED] The client cancelled the call, or its connection closed, before ` +
    `it completed (${how})${symptom}`;
  return new ConnectError(message, Code.Canceled, undefined, undefined, error);
}

/**
 * An interceptor that reports calls the client abandoned as `CANCELED` (see
 * {@linkcode classifyAborted}). Placed inside the metrics and log interceptors, so that they
 * count and log what really happened.
 *
 * @param shutdown Aborted when the server shuts down.
 * @returns The interceptor.
 */
export function cancelledInterceptor(shutdown: AbortSignal): Interceptor {
  return observingInterceptor({
    mapError: (e, signal, values) => classifyAborted(e, signal, shutdown, values.get(kPeerReset)()),
  });
}

/**
 * A call's probe of its HTTP/2 stream: whether the client reset it. The stream's reset code is
 * set when the reset arrives; the call's signal is aborted only on the stream's `close` event,
 * which can come after the handler already failed on the request stream the reset ended (seen
 * under load: a client's abort reported as `INVALID_ARTIFACT_STREAM`, "Missing data chunks").
 */
export const kPeerReset = createContextKey<() => boolean>(() => false, {
  description: "whether the client reset the call's HTTP/2 stream",
});

/** The node request's side of {@linkcode kPeerReset}: a reset code other than NO_ERROR. */
export function peerResetProbe(req: object): () => boolean {
  const stream = "stream" in req
    ? req.stream as { rstCode?: number; aborted?: boolean } | undefined
    : undefined;
  return () => !!stream && ((stream.rstCode ?? 0) !== 0 || stream.aborted === true);
}

/** Fills a call's context values with {@linkcode kPeerReset} for a node request. */
export function peerResetValues(values: ContextValues, req: object): ContextValues {
  return values.set(kPeerReset, peerResetProbe(req));
}

/** Whether a stream's premature close (Node's `ERR_STREAM_PREMATURE_CLOSE`) is in the chain. */
function prematureClose(error: unknown): boolean {
  for (let e = error, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    if ((e as { code?: unknown }).code === "ERR_STREAM_PREMATURE_CLOSE") return true;
    if (/\bPremature close\b/.test(e.message)) return true;
  }
  return false;
}
