// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * `SparkConnectService/AddArtifacts` over gRPC without Connect's request pipeline: Connect's node
 * adapter turns the body into an async iterable of chunks, then of envelopes, then of messages,
 * each step a promise per piece; an upload is thousands of messages, and the server took about
 * 290 MB/s from any client through it (docs/BENCHMARKS.md, "Issue 16, goals 4–5"). Here the
 * body's chunks are split into messages as they arrive, by one capped reader
 * (`GrpcEnvelopeReader`): a length over the cap is refused at its header, a message that lies in
 * one chunk is parsed from a view of it, and the upload's data fields are views of what arrived
 * (protobuf-es reads `bytes` as views), handed to the session store's write-behind as they are.
 * What waits to be handled is bounded: past a few MiB the stream is paused, and HTTP/2 flow
 * control holds the client.
 *
 * Only the plain case takes this path, as for Run (`_run_direct.ts`): `POST` of binary gRPC,
 * uncompressed, without a deadline, over HTTP/2, from a caller the request gates let through.
 * What a call passes through is the same as on Connect's path: the same interceptors (auth and
 * the user a token is bound to, metrics, the log, the recent errors, redaction, cancellation),
 * the same handler (with its idle limit), the same cap per message with Connect's errors, the
 * same headers and trailers.
 *
 * @module
 */
import { constants as http2constants } from "node:http2";
import type * as http2 from "node:http2";
import { create, fromBinary, isMessage, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type ContextValues,
  createHandlerContext,
  type HandlerContext,
  type Interceptor,
  type StreamRequest,
  type StreamResponse,
} from "@connectrpc/connect";
import { setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import {
  type AddArtifactsRequest,
  AddArtifactsRequestSchema,
  type AddArtifactsResponse,
  AddArtifactsResponseSchema,
  type EnvelopeFault,
  grpcEnvelope,
  GrpcEnvelopeReader,
  SparkConnectService,
} from "@valise/protocol";
import { REFUSED_BODY_DRAIN_BYTES } from "./_front_door.ts";
import { copyHeaders, nodeHeaders, resetError } from "./_run_direct.ts";

/** The path this module serves. */
export const ADD_ARTIFACTS_PATH = "/spark.connect.SparkConnectService/AddArtifacts";

/** Bytes of messages read and not yet taken by the handler before the stream is paused. */
export const MAX_QUEUED_BYTES = 8 * 2 ** 20;

/** Response compressions a client may ask for; none is applied (see `compressMinBytes`). */
const ACCEPTED_ENCODINGS = ["gzip", "br"];

/** The AddArtifacts handler, as Connect calls it. */
export type AddArtifactsImpl = (
  requests: AsyncIterable<AddArtifactsRequest>,
  ctx: HandlerContext,
) => Promise<AddArtifactsResponse | MessageInitShape<typeof AddArtifactsResponseSchema>>;

/** What {@linkcode directAddArtifacts} serves with. */
export interface DirectAddArtifactsOptions {
  /** The service's `addArtifacts`. */
  readonly addArtifacts: AddArtifactsImpl;
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

type Handler = (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void;

/**
 * A `node:http2` handler that serves plain gRPC calls of `SparkConnectService/AddArtifacts`
 * itself and hands everything else to `fallback`.
 *
 * @param options The handler, interceptors, cap and gates.
 * @param fallback Serves every other request.
 * @returns The handler.
 */
export function directAddArtifacts(
  options: DirectAddArtifactsOptions,
  fallback: Handler,
): Handler {
  const chain = chainOf(options);
  return (req, res) => {
    if (!isPlain(req, options.refuses)) return fallback(req, res);
    serve(req, res, options, chain).catch(() => {
      // Everything the client should see was answered; a write to a stream the client closed
      // has no one to tell.
    });
  };
}

function isPlain(
  req: http2.Http2ServerRequest,
  refuses: (authorization: string | null) => boolean,
): boolean {
  if (req.method !== "POST" || req.httpVersionMajor !== 2) return false;
  const url = req.url;
  const q = url.indexOf("?");
  if ((q < 0 ? url : url.slice(0, q)) !== ADD_ARTIFACTS_PATH) return false;
  const h = req.headers;
  const type = String(h["content-type"] ?? "").toLowerCase();
  if (type !== "application/grpc" && type !== "application/grpc+proto") return false;
  if (h["grpc-timeout"] !== undefined) return false;
  const enc = h["grpc-encoding"];
  if (enc !== undefined && enc !== "identity") return false;
  const auth = h.authorization;
  return !refuses(typeof auth === "string" ? auth : null);
}

type In = typeof AddArtifactsRequestSchema;
type Out = typeof AddArtifactsResponseSchema;
type Next = (req: StreamRequest<In>) => Promise<StreamResponse<In, Out>>;

/** The handler context of a request (kept beside it: the interceptors pass requests on). */
const contexts = new WeakMap<object, HandlerContext>();

/** The interceptors around the handler, composed as Connect composes them. */
function chainOf(options: DirectAddArtifactsOptions): Next {
  const method = SparkConnectService.method.addArtifacts;
  let next: Next = async (req) => {
    const ctx = contexts.get(req.contextValues);
    if (!ctx) throw new ConnectError("internal error: a call without its context", Code.Internal);
    // What the interceptors changed of the request is what the handler sees, as in Connect.
    const res = await options.addArtifacts(req.message, {
      ...ctx,
      requestHeader: req.header,
      signal: req.signal,
      values: req.contextValues,
    });
    const message = isMessage(res, AddArtifactsResponseSchema)
      ? res
      : create(AddArtifactsResponseSchema, res);
    return {
      stream: true,
      service: SparkConnectService,
      method,
      header: ctx.responseHeader,
      trailer: ctx.responseTrailer,
      message: (async function* () {
        yield message;
      })(),
    };
  };
  for (const i of [...options.interceptors].reverse()) next = i(next as never) as never;
  return next;
}

async function serve(
  req: http2.Http2ServerRequest,
  res: http2.Http2ServerResponse,
  options: DirectAddArtifactsOptions,
  chain: Next,
): Promise<void> {
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
    const found = accepted.split(",").map((n) => n.trim()).find((n) =>
      ACCEPTED_ENCODINGS.includes(n)
    );
    if (found) responseHeader["grpc-encoding"] = found;
  }
  const authority = req.authority ?? req.headers.host ?? "localhost";
  const method = SparkConnectService.method.addArtifacts;
  const context = createHandlerContext({
    service: SparkConnectService,
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
  const body = new RequestMessages(req, options.readMaxBytes);
  let answer: Uint8Array | undefined;
  let error: unknown;
  try {
    const response = await chain({
      stream: true,
      service: SparkConnectService,
      method,
      requestMethod: "POST",
      url: context.url,
      signal: context.signal,
      header: context.requestHeader,
      contextValues: context.values,
      message: body.messages(),
    });
    copyHeaders(response.header, context.responseHeader);
    for await (const m of response.message) {
      answer = grpcEnvelope(toBinary(AddArtifactsResponseSchema, m));
    }
    copyHeaders(response.trailer, context.responseTrailer);
  } catch (e) {
    error = e;
    answer = undefined;
  } finally {
    context.abort(error);
  }
  // A caller whose call failed before its body ended may still be sending: what it sends is
  // dropped (up to a bound), never kept.
  body.discard();
  if (res.destroyed || res.stream.closed) return;
  if (error !== undefined) {
    setTrailerStatus(
      context.responseTrailer,
      error instanceof ConnectError
        ? error
        : new ConnectError("internal error", Code.Internal, undefined, undefined, error),
    );
  }
  res.writeHead(200, nodeHeaders(context.responseHeader));
  res.addTrailers(nodeHeaders(context.responseTrailer));
  if (answer) res.end(answer);
  else res.end();
}

/**
 * The request body as messages, split and capped as they arrive. At most `MAX_QUEUED_BYTES` of
 * messages wait for the handler: past that the stream is paused (HTTP/2 flow control then holds
 * the client) until the handler has taken them. Once the call is answered, the rest of the body
 * is dropped as it arrives, and the stream is reset past a bound.
 */
class RequestMessages {
  #req: http2.Http2ServerRequest;
  #reader: GrpcEnvelopeReader;
  #queue: Uint8Array[] = [];
  #queued = 0;
  #ended = false;
  #discarding = false;
  #drained = 0;
  #wake: (() => void) | undefined;

  constructor(req: http2.Http2ServerRequest, maxBytes: number) {
    this.#req = req;
    this.#reader = new GrpcEnvelopeReader(maxBytes);
    const take = (m: Uint8Array) => {
      this.#queue.push(m);
      this.#queued += m.length;
    };
    req.on("data", (chunk: Uint8Array) => {
      if (this.#discarding || this.#reader.fault) return this.#drop(chunk.length);
      this.#reader.push(chunk, take);
      if (this.#queued > MAX_QUEUED_BYTES) req.pause();
      this.#notify();
    });
    req.once("end", () => {
      this.#reader.end();
      this.#ended = true;
      this.#notify();
    });
    // A stream closed before its end (a reset) has no more to read; the call's signal says why.
    req.once("close", () => {
      this.#ended = true;
      this.#notify();
    });
  }

  /** The messages, in order; then the end of the body, or what is wrong with it. */
  async *messages(): AsyncGenerator<AddArtifactsRequest, void, undefined> {
    while (true) {
      const next = this.#queue.shift();
      if (next !== undefined) {
        this.#queued -= next.length;
        if (this.#queued <= MAX_QUEUED_BYTES / 2 && this.#req.isPaused()) this.#req.resume();
        yield parse(next);
        continue;
      }
      const fault = this.#reader.fault;
      if (fault) throw faultError(fault);
      if (this.#ended) return;
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }

  /** Drops what is held and whatever more of the body arrives; resets the stream past a bound. */
  discard(): void {
    this.#discarding = true;
    this.#queue = [];
    this.#queued = 0;
    if (this.#req.isPaused()) this.#req.resume();
    this.#notify();
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }

  #drop(n: number): void {
    this.#drained += n;
    if (
      this.#drained > REFUSED_BODY_DRAIN_BYTES && this.#drained - n <= REFUSED_BODY_DRAIN_BYTES
    ) {
      try {
        this.#req.stream?.close(http2constants.NGHTTP2_CANCEL);
      } catch { /* already closed */ }
    }
  }
}

function parse(body: Uint8Array): AddArtifactsRequest {
  try {
    return fromBinary(AddArtifactsRequestSchema, body);
  } catch (e) {
    throw new ConnectError(
      `parse binary: ${e instanceof Error ? e.message : String(e)}`,
      Code.Internal,
    );
  }
}

/** A fault of the body as Connect's error for it. */
function faultError(fault: EnvelopeFault): ConnectError {
  switch (fault.kind) {
    case "too_large":
      return new ConnectError(
        `message size ${fault.length} is larger than configured readMaxBytes ${fault.max}`,
        Code.ResourceExhausted,
      );
    case "compressed":
      return new ConnectError(
        "received compressed envelope, but do not know how to decompress",
        Code.Internal,
      );
    case "incomplete":
      return new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument);
  }
}
