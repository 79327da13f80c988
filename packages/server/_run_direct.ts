// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * `WorkerService/Run` over gRPC without Connect's request and response pipelines: a warm run is
 * a few milliseconds, and Connect's layers of async iterables (the node adapter, envelope
 * splitting, parsing, serialising, joining, per-message writes and the trailers after them) cost
 * about as much as the run itself (docs/BENCHMARKS.md, "Warm run over RPC").
 *
 * Only the plain case takes this path: `POST` of binary gRPC (`application/grpc`,
 * `application/grpc+proto`), uncompressed, without a deadline (`grpc-timeout`), over HTTP/2, from
 * a caller the request gates let through. Anything else — the Connect and gRPC-web protocols,
 * JSON, compressed requests, deadlines, refused tokens — goes to the Connect handler as before.
 *
 * What a call passes through is the same as on Connect's path: the same interceptors (auth and
 * the user a token is bound to, metrics, the log, the recent errors, redaction, cancellation),
 * the same handler, the same size cap per message with the same errors (`RESOURCE_EXHAUSTED`,
 * and Connect's own messages for a missing, extra or incomplete message), the same headers and
 * trailers. What differs is the writing: an event is written as soon as it is taken, and the
 * run's `exited` goes out in one write with the trailers.
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
  grpcEnvelope,
  type RunEvent,
  RunEventSchema,
  type RunRequest,
  RunRequestSchema,
  WorkerService,
} from "@valise/protocol";
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
import { REFUSED_BODY_DRAIN_BYTES } from "./_front_door.ts";

/** The path this module serves. */
export const RUN_PATH = "/valise.v1.WorkerService/Run";

/** The gRPC envelope's flag of a compressed message. */
const COMPRESSED = 0b01;

/** The Run handler, as Connect calls it. */
export type RunImpl = (
  req: RunRequest,
  ctx: HandlerContext,
) => AsyncIterable<RunEvent | MessageInitShape<typeof RunEventSchema>>;

/** What {@linkcode directRun} serves with. */
export interface DirectRunOptions extends DirectCallOptions {
  /** The service's `run`. */
  readonly run: RunImpl;
}

/**
 * A `node:http2` handler that serves plain gRPC calls of `WorkerService/Run` itself and hands
 * everything else to `fallback`.
 *
 * @param options The handler, interceptors, cap and gates.
 * @param fallback Serves every other request (Connect's node adapter).
 * @returns The handler.
 */
export function directRun(
  options: DirectRunOptions,
  fallback: (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void,
): (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void {
  const chain = chainOf(options);
  return (req, res) => {
    if (!isPlainGrpc(req, RUN_PATH, options.refuses)) return fallback(req, res);
    serve(req, res, options, chain).catch(() => {
      // Everything the client should see was answered; a write to a stream the client closed
      // has no one to tell.
    });
  };
}

type Next = (req: StreamRequest<typeof RunRequestSchema>) => Promise<
  StreamResponse<typeof RunRequestSchema, typeof RunEventSchema>
>;

/** The interceptors around the handler, composed as Connect composes them. */
function chainOf(options: DirectRunOptions): Next {
  const method = WorkerService.method.run;
  return chainInterceptors<Next>(options.interceptors, async (req) => {
    const message = await single(req.message);
    const ctx = handlerContextOf(req);
    return {
      stream: true,
      service: WorkerService,
      method,
      header: ctx.responseHeader,
      trailer: ctx.responseTrailer,
      message: normalized(options.run(message, ctx)),
    };
  });
}

/** Plain objects a handler yields become messages, as Connect's `normalizeIterable` does. */
async function* normalized(
  events: AsyncIterable<RunEvent | MessageInitShape<typeof RunEventSchema>>,
): AsyncGenerator<RunEvent, void, undefined> {
  for await (const e of events) yield isMessage(e, RunEventSchema) ? e : create(RunEventSchema, e);
}

async function single(messages: AsyncIterable<RunRequest>): Promise<RunRequest> {
  const it = messages[Symbol.asyncIterator]();
  const first = await it.next();
  if (first.done === true) {
    throw new ConnectError(
      "protocol error: missing input message for server-streaming method",
      Code.Unimplemented,
    );
  }
  const second = await it.next();
  if (second.done !== true) {
    throw new ConnectError(
      "protocol error: received extra input message for server-streaming method",
      Code.Unimplemented,
    );
  }
  return first.value;
}

async function serve(
  req: http2.Http2ServerRequest,
  res: http2.Http2ServerResponse,
  options: DirectRunOptions,
  chain: Next,
): Promise<void> {
  const context = callContext(req, options, WorkerService, WorkerService.method.run);
  const body = new BodyReader(req, options.readMaxBytes);
  const socket = corkable(res);
  let it: AsyncIterator<RunEvent> | undefined;
  let error: unknown;
  let held: Uint8Array | undefined;
  let sentHeaders = false;
  let writeFailed = false;
  try {
    const response = await chain({
      stream: true,
      service: WorkerService,
      method: WorkerService.method.run,
      requestMethod: "POST",
      url: context.url,
      signal: context.signal,
      header: context.requestHeader,
      contextValues: context.values,
      message: body.messages(),
    });
    copyHeaders(response.header, context.responseHeader);
    it = response.message[Symbol.asyncIterator]();
    for (let r = await it.next(); r.done !== true; r = await it.next()) {
      const chunks = held ? [held] : [];
      held = undefined;
      const bytes = grpcEnvelope(toBinary(RunEventSchema, r.value));
      // The run's last event goes out with the trailers: nothing but the end of the handler
      // (microtasks) comes after it.
      if (r.value.event.case === "exited") held = bytes;
      else chunks.push(bytes);
      // A client that went away fails the write of what it would have been sent, as on Connect's
      // path, held or not.
      const gone = res.destroyed || res.stream.closed;
      if (chunks.length === 0 && !gone) continue;
      const first: boolean = !sentHeaders && !gone;
      sentHeaders ||= first;
      // The headers and the first event in one packet.
      if (first) socket?.cork();
      try {
        if (gone) throw new ConnectError("stream closed", Code.Canceled);
        if (first) res.writeHead(200, nodeHeaders(context.responseHeader));
        for (const c of chunks) await write(res, c);
      } catch (e) {
        // As Connect's node adapter does: the write's failure goes into the handler (which ends
        // the run), and through the interceptors, which log and count the call as it ended.
        writeFailed = true;
        context.abort(e);
        await it.throw?.(e).catch(() => {});
        throw e;
      } finally {
        if (first) process.nextTick(() => socket?.uncork());
      }
    }
    copyHeaders(response.trailer, context.responseTrailer);
  } catch (e) {
    error = e;
  } finally {
    context.abort(error);
    if (!writeFailed) it?.return?.().catch(() => {});
  }
  if (res.destroyed || res.stream.closed) return;
  if (error !== undefined) setFailure(context, error);
  // The last event and the trailers in one packet: node:http2 sends trailers an event-loop turn
  // after the data ends ('wantTrailers', then an immediate), so the socket stays corked until
  // that turn has run.
  if (socket) {
    socket.cork();
    let corked = true;
    // Whatever happens to the stream, the connection is not left corked.
    const guard = setTimeout(() => uncork(), 50);
    const uncork = () => {
      if (!corked) return;
      corked = false;
      clearTimeout(guard);
      socket.uncork();
    };
    res.stream.once("wantTrailers", () => setImmediate(uncork));
    res.stream.once("close", uncork);
  }
  if (!sentHeaders) res.writeHead(200, nodeHeaders(context.responseHeader));
  res.addTrailers(nodeHeaders(context.responseTrailer));
  if (held) res.end(held);
  else res.end();
  // A caller whose request was refused before its end may still be sending: what it sends is
  // dropped (up to a bound), never buffered.
  body.discard();
}

/** What of the connection's socket batches writes, when node:http2 exposes it. */
interface Corkable {
  cork(): void;
  uncork(): void;
}

function corkable(res: http2.Http2ServerResponse): Corkable | undefined {
  let s: Corkable;
  try {
    const socket = (res.stream.session as unknown as { socket?: Partial<Corkable> } | undefined)
      ?.socket;
    if (typeof socket?.cork !== "function" || typeof socket.uncork !== "function") return undefined;
    s = socket as Corkable;
    // Probed once: a proxy that refuses it (Node's http2 socket proxy may) means no batching.
    s.cork();
    s.uncork();
  } catch {
    return undefined;
  }
  // Deno's socket proxy throws once the connection is gone; there is nothing to batch then, and a
  // throw from a timer or an event would take the server down.
  return {
    cork() {
      try {
        s.cork();
      } catch { /* the connection is gone */ }
    },
    uncork() {
      try {
        s.uncork();
      } catch { /* the connection is gone */ }
    },
  };
}

/** Writes a chunk, waiting for the stream to drain when HTTP/2 flow control holds it. */
function write(res: http2.Http2ServerResponse, chunk: Uint8Array): Promise<void> {
  if (res.destroyed) return Promise.reject(new ConnectError("stream closed", Code.Canceled));
  if (res.write(chunk)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const done = () => {
      res.off("drain", done);
      res.off("close", closed);
      resolve();
    };
    const closed = () => {
      res.off("drain", done);
      res.off("close", closed);
      reject(new ConnectError("stream closed", Code.Canceled));
    };
    res.on("drain", done);
    res.on("close", closed);
  });
}

/**
 * The request body as gRPC envelopes: each length is checked against the cap before a byte of
 * its message is kept, at most one message is held, and a second one fails as soon as its
 * header arrives. Once the call is answered, the rest of the body is dropped as it arrives.
 */
class BodyReader {
  #req: http2.Http2ServerRequest;
  #reader: EnvelopeReader;
  #settled: Promise<void>;
  #discarding = false;
  #drained = 0;

  constructor(req: http2.Http2ServerRequest, maxBytes: number) {
    this.#req = req;
    this.#reader = new EnvelopeReader(maxBytes);
    this.#settled = new Promise<void>((resolve) => {
      const onData = (chunk: Uint8Array) => {
        if (this.#discarding || this.#reader.failed) return this.#drop(chunk.length);
        this.#reader.push(chunk);
        if (this.#reader.failed) resolve();
      };
      req.on("data", onData);
      req.once("end", () => {
        this.#reader.end();
        resolve();
      });
      // A stream closed before its end (a reset) has no more to read.
      req.once("close", () => {
        this.#reader.end();
        resolve();
      });
    });
  }

  /** The messages, once the body has ended (or failed). */
  async *messages(): AsyncGenerator<RunRequest, void, undefined> {
    await this.#settled;
    const r = this.#reader;
    if (r.error) throw r.error;
    if (r.message === undefined) return;
    let message: RunRequest;
    try {
      message = fromBinary(RunRequestSchema, r.message);
    } catch (e) {
      throw new ConnectError(
        `parse binary: ${e instanceof Error ? e.message : String(e)}`,
        Code.Internal,
      );
    }
    r.message = undefined;
    yield message;
  }

  /** Drops whatever more of the body arrives; resets the stream past a bound. */
  discard(): void {
    this.#discarding = true;
    this.#reader.message = undefined;
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

/**
 * gRPC envelopes of a server-streaming call's request: at most one message of at most
 * `maxBytes`, with Connect's errors for what is wrong.
 */
export class EnvelopeReader {
  /** The message, once whole. */
  message: Uint8Array | undefined;
  /** What is wrong with the body, once something is. */
  error: ConnectError | undefined;
  #max: number;
  #header = new Uint8Array(5);
  #have = 0;
  #body: Uint8Array | undefined;
  #count = 0;

  /**
   * @param maxBytes The largest message, in bytes.
   */
  constructor(maxBytes: number) {
    this.#max = maxBytes;
  }

  /** Whether the body is known to be refused. */
  get failed(): boolean {
    return this.error !== undefined;
  }

  /**
   * Takes the next bytes of the body; sets `error` at the first fault and ignores the rest.
   *
   * @param chunk Bytes, in order.
   */
  push(chunk: Uint8Array): void {
    let off = 0;
    while (off < chunk.length && !this.error) {
      if (this.#body === undefined) {
        const n = Math.min(5 - this.#have, chunk.length - off);
        this.#header.set(chunk.subarray(off, off + n), this.#have);
        this.#have += n;
        off += n;
        if (this.#have < 5) return;
        const view = new DataView(this.#header.buffer);
        const flags = view.getUint8(0);
        const length = view.getUint32(1);
        if (length > this.#max) {
          this.error = new ConnectError(
            `message size ${length} is larger than configured readMaxBytes ${this.#max}`,
            Code.ResourceExhausted,
          );
          return;
        }
        if (++this.#count > 1) {
          this.error = new ConnectError(
            "protocol error: received extra input message for server-streaming method",
            Code.Unimplemented,
          );
          return;
        }
        if ((flags & COMPRESSED) === COMPRESSED) {
          this.error = new ConnectError(
            "received compressed envelope, but do not know how to decompress",
            Code.Internal,
          );
          return;
        }
        this.#have = 0;
        if (length === 0) {
          this.message = new Uint8Array(0);
          continue;
        }
        this.#body = new Uint8Array(length);
      }
      const body = this.#body;
      const n = Math.min(body.length - this.#have, chunk.length - off);
      body.set(chunk.subarray(off, off + n), this.#have);
      this.#have += n;
      off += n;
      if (this.#have === body.length) {
        this.message = body;
        this.#body = undefined;
        this.#have = 0;
      }
    }
  }

  /** The body ended: a message cut short is an error. */
  end(): void {
    if (this.error) return;
    if (this.#body !== undefined || this.#have > 0) {
      this.error = new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument);
      this.message = undefined;
    }
  }
}
