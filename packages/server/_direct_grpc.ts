// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * What the direct gRPC paths (`_run_direct.ts`, `_add_artifacts_direct.ts`) share: which
 * requests they may take, the call's context as Connect's handler builds it, the interceptor
 * chain, and the headers, trailers and resets as Connect's node adapter writes and reads them.
 * One copy, so that the two paths cannot drift apart from Connect's behaviour differently.
 *
 * @module
 */
import { constants as http2constants } from "node:http2";
import type * as http2 from "node:http2";
import type { DescMethod, DescService } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type ContextValues,
  createHandlerContext,
  type HandlerContext,
  type Interceptor,
} from "@connectrpc/connect";
import { setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import { http2ErrorName } from "@valise/protocol";

/** Response compressions a client may ask for; none is applied (see `compressMinBytes`). */
const ACCEPTED_ENCODINGS = ["gzip", "br"];

/** A call's context, with the `abort` that ends its signal when the call is done. */
export type CallContext = ReturnType<typeof createHandlerContext>;

/** What every direct path serves with, besides its handler. */
export interface DirectCallOptions {
  /** The interceptors Connect's handler runs behind, outermost first. */
  readonly interceptors: readonly Interceptor[];
  /** The largest request message, in bytes. */
  readonly readMaxBytes: number;
  /** Aborted when the server shuts down: aborts the call's signal. */
  readonly shutdownSignal: AbortSignal;
  /** The call's context values, from the node request. */
  readonly contextValues: (req: http2.Http2ServerRequest) => ContextValues;
  /** Whether the request gates refuse a call with this `authorization` header. */
  readonly refuses: (authorization: string | null) => boolean;
}

/**
 * Whether a direct path may serve this request: `POST` of binary gRPC to `path` over HTTP/2,
 * uncompressed, without a deadline, from a caller the gates let through. Everything else goes to
 * Connect.
 *
 * @param req The request.
 * @param path The method's path.
 * @param refuses The request gates.
 * @returns Whether it is plain.
 */
export function isPlainGrpc(
  req: http2.Http2ServerRequest,
  path: string,
  refuses: (authorization: string | null) => boolean,
): boolean {
  if (req.method !== "POST" || req.httpVersionMajor !== 2) return false;
  const url = req.url;
  const q = url.indexOf("?");
  if ((q < 0 ? url : url.slice(0, q)) !== path) return false;
  const h = req.headers;
  const type = String(h["content-type"] ?? "").toLowerCase();
  if (type !== "application/grpc" && type !== "application/grpc+proto") return false;
  if (h["grpc-timeout"] !== undefined) return false;
  const enc = h["grpc-encoding"];
  if (enc !== undefined && enc !== "identity") return false;
  const auth = h.authorization;
  return !refuses(typeof auth === "string" ? auth : null);
}

/** The handler context of a request (kept beside it: the interceptors pass requests on). */
const contexts = new WeakMap<object, HandlerContext>();

/**
 * The context the handler sees: the call's, with what the interceptors changed of the request,
 * as in Connect.
 *
 * @param req What the innermost interceptor passed on.
 * @returns The handler's context.
 */
export function handlerContextOf(
  req: { contextValues: ContextValues; header: Headers; signal: AbortSignal },
): HandlerContext {
  const ctx = contexts.get(req.contextValues);
  if (!ctx) throw new ConnectError("internal error: a call without its context", Code.Internal);
  return { ...ctx, requestHeader: req.header, signal: req.signal, values: req.contextValues };
}

/**
 * Composes the interceptors around the innermost call, as Connect composes them.
 *
 * @param interceptors Outermost first.
 * @param inner The call of the handler.
 * @returns The chain.
 */
export function chainInterceptors<N>(interceptors: readonly Interceptor[], inner: N): N {
  let next = inner;
  for (const i of [...interceptors].reverse()) next = i(next as never) as never;
  return next;
}

/**
 * The call's context, as Connect's handler builds it from the node request: request headers,
 * the response compression the client may accept, a signal aborted by a reset (with Connect's
 * error for its code), the server's shutdown or the end of the call.
 *
 * @param req The request.
 * @param options The shutdown signal and context values.
 * @param service The service.
 * @param method The method.
 * @returns The context, registered for {@linkcode handlerContextOf}.
 */
export function callContext(
  req: http2.Http2ServerRequest,
  options: DirectCallOptions,
  service: DescService,
  method: DescMethod,
): CallContext {
  const requestAbort = new AbortController();
  req.once("close", () => {
    let e: ConnectError | undefined;
    try {
      e = resetError(req.stream.rstCode);
    } catch { /* a stream already torn down: no code to report */ }
    if (e) requestAbort.abort(e);
    else requestAbort.abort();
  });
  const header = new Headers();
  for (const [k, v] of Object.entries(req.headers)) {
    if (k.startsWith(":") || v === undefined) continue;
    if (Array.isArray(v)) { for (const x of v) header.append(k, x); }
    else header.set(k, String(v));
  }
  const responseHeader: Record<string, string> = { "content-type": "application/grpc+proto" };
  const accepted = header.get("grpc-accept-encoding");
  if (accepted) {
    const names = accepted.split(",").map((n) => n.trim());
    const found = names.find((n) => ACCEPTED_ENCODINGS.includes(n));
    if (found) responseHeader["grpc-encoding"] = found;
  }
  const authority = req.authority ?? req.headers.host ?? "localhost";
  const context = createHandlerContext({
    service,
    method,
    protocolName: "grpc",
    requestMethod: "POST",
    shutdownSignal: options.shutdownSignal,
    requestSignal: requestAbort.signal,
    requestHeader: header,
    url: `http://${authority}${req.url}`,
    responseHeader,
    responseTrailer: { "grpc-status": "0" },
    contextValues: options.contextValues(req),
  });
  contexts.set(context.values, context);
  return context;
}

/**
 * Puts a failed call's status into its trailers, as Connect does: its own error as it is,
 * anything else as an internal error.
 *
 * @param context The call.
 * @param error What the handler or the interceptors threw.
 */
export function setFailure(context: HandlerContext, error: unknown): void {
  setTrailerStatus(
    context.responseTrailer,
    error instanceof ConnectError
      ? error
      : new ConnectError("internal error", Code.Internal, undefined, undefined, error),
  );
}

/**
 * The reset of a stream as the call's abort reason, as Connect's node adapter reports it.
 *
 * @param rstCode The stream's HTTP/2 error code.
 * @returns The error, or `undefined` for a code that is no failure.
 */
export function resetError(rstCode: number | undefined): ConnectError | undefined {
  const c = http2constants;
  const name = (code: Code) =>
    new ConnectError(
      `http/2 stream closed with error code ${http2ErrorName(rstCode!)} (0x${
        rstCode!.toString(16)
      })`,
      code,
    );
  switch (rstCode) {
    case c.NGHTTP2_PROTOCOL_ERROR:
    case c.NGHTTP2_INTERNAL_ERROR:
    case c.NGHTTP2_FLOW_CONTROL_ERROR:
    case c.NGHTTP2_SETTINGS_TIMEOUT:
    case c.NGHTTP2_FRAME_SIZE_ERROR:
    case c.NGHTTP2_COMPRESSION_ERROR:
    case c.NGHTTP2_CONNECT_ERROR:
      return name(Code.Internal);
    case c.NGHTTP2_REFUSED_STREAM:
      return name(Code.Unavailable);
    case c.NGHTTP2_CANCEL:
      return name(Code.Canceled);
    case c.NGHTTP2_ENHANCE_YOUR_CALM:
      return name(Code.ResourceExhausted);
    case c.NGHTTP2_INADEQUATE_SECURITY:
    case c.NGHTTP2_HTTP_1_1_REQUIRED:
      return name(Code.PermissionDenied);
    default:
      return undefined;
  }
}

/**
 * Headers as node:http2 takes them.
 *
 * @param h The headers.
 * @returns One field per name.
 */
export function nodeHeaders(h: Headers): Record<string, string> {
  const out: Record<string, string> = {};
  h.forEach((v, k) => (out[k] = v));
  return out;
}

/**
 * Replaces the headers of `to` with those of `from`, as Connect does after a handler.
 *
 * @param from The headers the interceptors returned.
 * @param to The call's headers.
 */
export function copyHeaders(from: Headers, to: Headers): void {
  if (from === to) return;
  for (const k of [...to.keys()]) to.delete(k);
  from.forEach((v, k) => to.set(k, v));
}
