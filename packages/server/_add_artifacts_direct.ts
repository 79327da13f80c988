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
  type HandlerContext,
  type StreamRequest,
  type StreamResponse,
} from "@connectrpc/connect";
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
import {
  callContext,
  chainInterceptors,
  copyHeaders,
  type DirectCallOptions,
  handlerContextOf,
  isPlainGrpc,
  nodeHeaders,
  setFailure,
} from "./_direct_grpc.ts";

/** The path this module serves. */
export const ADD_ARTIFACTS_PATH = "/spark.connect.SparkConnectService/AddArtifacts";

/** Bytes of messages read and not yet taken by the handler before the stream is paused. */
export const MAX_QUEUED_BYTES = 8 * 2 ** 20;

/**
 * What a queued message counts for beyond its bytes: its slot and the handler's work on it. Empty
 * messages (5 bytes on the wire each) would otherwise queue without bound while the handler
 * waits, and cost memory all the same.
 */
const MESSAGE_COST = 64;

/** The AddArtifacts handler, as Connect calls it. */
export type AddArtifactsImpl = (
  requests: AsyncIterable<AddArtifactsRequest>,
  ctx: HandlerContext,
) => Promise<AddArtifactsResponse | MessageInitShape<typeof AddArtifactsResponseSchema>>;

/** What {@linkcode directAddArtifacts} serves with. */
export interface DirectAddArtifactsOptions extends DirectCallOptions {
  /** The service's `addArtifacts`. */
  readonly addArtifacts: AddArtifactsImpl;
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
    if (!isPlainGrpc(req, ADD_ARTIFACTS_PATH, options.refuses)) return fallback(req, res);
    serve(req, res, options, chain).catch(() => {
      // Everything the client should see was answered; a write to a stream the client closed
      // has no one to tell.
    });
  };
}

type In = typeof AddArtifactsRequestSchema;
type Out = typeof AddArtifactsResponseSchema;
type Next = (req: StreamRequest<In>) => Promise<StreamResponse<In, Out>>;

/** The interceptors around the handler, composed as Connect composes them. */
function chainOf(options: DirectAddArtifactsOptions): Next {
  const method = SparkConnectService.method.addArtifacts;
  return chainInterceptors<Next>(options.interceptors, async (req) => {
    const ctx = handlerContextOf(req);
    const res = await options.addArtifacts(req.message, ctx);
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
  });
}

async function serve(
  req: http2.Http2ServerRequest,
  res: http2.Http2ServerResponse,
  options: DirectAddArtifactsOptions,
  chain: Next,
): Promise<void> {
  const method = SparkConnectService.method.addArtifacts;
  const context = callContext(req, options, SparkConnectService, method);
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
  if (error !== undefined) setFailure(context, error);
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
      this.#queued += m.length + MESSAGE_COST;
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
        this.#queued -= next.length + MESSAGE_COST;
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
