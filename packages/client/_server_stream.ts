// Copyright 2026 the Valise authors. Apache-2.0 license.
// A server-streaming gRPC call over a session's HTTP/2 connection without Connect's transport
// pipeline: the request goes out as one write (headers, then its message with the end of the
// body), the response's envelopes are read as they arrive, each checked against a size cap before
// it is kept. What a caller sees is what Connect's gRPC transport gives: the same interceptors
// around the call, the same errors (a status in the headers or the trailers, HTTP errors, a reset
// stream, a connection that could not be made, with their Node.js causes kept for the retry
// rules). A warm run is a few milliseconds, and Connect's client cost about a millisecond of CPU
// per run here (docs/BENCHMARKS.md, "The direct path for Run").
import { constants as h2 } from "node:http2";
import type * as http2 from "node:http2";
import {
  type DescMessage,
  type DescMethodClientStreaming,
  type DescMethodServerStreaming,
  fromBinary,
  type MessageShape,
  toBinary,
} from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createContextValues,
  type Interceptor,
  type StreamRequest,
  type StreamResponse,
} from "@connectrpc/connect";
import { validateResponse, validateTrailer } from "@connectrpc/connect/protocol-grpc";
import type { Http2SessionManager } from "@connectrpc/connect-node";
import { grpcEnvelope, http2ErrorName } from "@valise/protocol";
import { CLIENT_VERSION } from "./version.ts";

/** The largest response message taken, in bytes: far above any event a server sends. */
export const MAX_RESPONSE_MESSAGE_BYTES = 64 * 2 ** 20;

/** Where and how a call goes. */
export interface StreamCallTarget {
  /** The connection's manager (one per endpoint). */
  readonly manager: Http2SessionManager;
  /** `http://host:port`. */
  readonly baseUrl: string;
  /** The session's interceptors, outermost first. */
  readonly interceptors: readonly Interceptor[];
}

/**
 * Calls a server-streaming method with one request message.
 *
 * @param target The connection, its base URL and interceptors.
 * @param method The method.
 * @param input The request.
 * @param signal Cancels the call.
 * @returns The response messages; throws (on iteration) a `ConnectError` as Connect's transport.
 */
export async function* serverStream<I extends DescMessage, O extends DescMessage>(
  target: StreamCallTarget,
  method: DescMethodServerStreaming<I, O>,
  input: MessageShape<I>,
  signal?: AbortSignal,
): AsyncGenerator<MessageShape<O>, void, undefined> {
  const controller = new AbortController();
  const onAbort = () => controller.abort(signal?.reason);
  signal?.addEventListener("abort", onAbort, { once: true });
  if (signal?.aborted) onAbort();
  const header = new Headers({
    "content-type": "application/grpc+proto",
    "user-agent": `valise-client/${CLIENT_VERSION}`,
    te: "trailers",
  });
  const req: StreamRequest<I, O> = {
    stream: true,
    service: method.parent,
    method,
    requestMethod: "POST",
    url: `${target.baseUrl}/${method.parent.typeName}/${method.name}`,
    header,
    contextValues: createContextValues(),
    signal: controller.signal,
    message: (async function* () {
      yield input;
    })(),
  };
  let next = ((r: StreamRequest<I, O>) => call(target, r)) as unknown as (
    r: StreamRequest<I, O>,
  ) => Promise<StreamResponse<I, O>>;
  for (const i of [...target.interceptors].reverse()) next = i(next as never) as never;
  try {
    if (controller.signal.aborted) throw aborted(controller.signal);
    const res = await next(req);
    yield* res.message;
  } finally {
    signal?.removeEventListener("abort", onAbort);
    // Whatever ended the iteration ends the call: a stream still open is reset (CANCEL).
    controller.abort();
  }
}

/**
 * The error of a call its signal aborted, as Connect reports it.
 *
 * @param signal The aborted signal.
 * @returns `CANCELED`, or the reason's own code.
 */
export function aborted(signal: AbortSignal): ConnectError {
  return ConnectError.from(signal.reason ?? "operation was aborted", Code.Canceled);
}

/** The HTTP/2 exchange itself: what Connect's transport and node client do for one call. */
async function call<I extends DescMessage, O extends DescMessage>(
  target: StreamCallTarget,
  req: StreamRequest<I, O>,
): Promise<StreamResponse<I, O>> {
  const method = req.method as DescMethodServerStreaming<I, O>;
  const pieces: Uint8Array[] = [];
  for await (const m of req.message) pieces.push(grpcEnvelope(toBinary(method.input, m)));
  return await exchange(
    target,
    req,
    method,
    (stream) => stream.end(pieces.length === 1 ? pieces[0] : concat(pieces)),
  );
}

/**
 * One call's HTTP/2 stream, as Connect's transport and node client run it: the stream opened
 * with the call's headers, the body written by `send`, the call's abort as a reset, the response
 * head and trailers validated as gRPC's, the messages read as they arrive.
 *
 * @param target The connection and interceptors.
 * @param req The call, as the innermost interceptor passed it on.
 * @param method The method.
 * @param send Writes the request body; may fail the call through the reader.
 * @returns The response.
 */
export async function exchange<I extends DescMessage, O extends DescMessage>(
  target: StreamCallTarget,
  req: StreamRequest<I, O>,
  method: DescMethodServerStreaming<I, O> | DescMethodClientStreaming<I, O>,
  send: (stream: http2.ClientHttp2Stream, reader: ResponseReader<O>) => void,
): Promise<StreamResponse<I, O>> {
  const url = new URL(req.url);
  let stream: http2.ClientHttp2Stream;
  try {
    stream = await target.manager.request(
      "POST",
      url.pathname + url.search,
      nodeHeaders(req.header),
      {},
    );
  } catch (e) {
    throw fromNode(e);
  }
  const reader = new ResponseReader(stream, method.output, target.manager);
  const signal = req.signal;
  const onAbort = () => {
    const reason = aborted(signal);
    reader.fail(reason);
    if (!stream.closed) {
      reset(stream, reason.code === Code.Canceled ? h2.NGHTTP2_CANCEL : h2.NGHTTP2_INTERNAL_ERROR);
    }
  };
  signal.addEventListener("abort", onAbort, { once: true });
  if (signal.aborted) onAbort();
  send(stream, reader);
  let head: { status: number; header: Headers };
  let foundStatus: boolean;
  try {
    head = await reader.head;
    const v = validateResponse(head.status, head.header);
    if (v.headerError) throw v.headerError;
    foundStatus = v.foundStatus;
  } catch (e) {
    signal.removeEventListener("abort", onAbort);
    reset(stream, h2.NGHTTP2_CANCEL);
    throw e;
  }
  return {
    stream: true,
    service: method.parent,
    method,
    header: head.header,
    trailer: reader.trailer,
    message: (async function* () {
      try {
        yield* reader.messages();
        if (!foundStatus) validateTrailer(reader.trailer, head.header);
      } finally {
        signal.removeEventListener("abort", onAbort);
      }
    })(),
  };
}

/** The response of one stream: its head, its messages as they arrive, its trailers. */
export class ResponseReader<O extends DescMessage> {
  /** Resolves with the status and headers; rejects with the call's failure before them. */
  readonly head: Promise<{ status: number; header: Headers }>;
  /** The trailers, once they arrived. */
  readonly trailer = new Headers();
  #queue: MessageShape<O>[] = [];
  #ended = false;
  #error: ConnectError | undefined;
  #wake: (() => void) | undefined;
  #stream: http2.ClientHttp2Stream;
  #schema: O;
  #decoder = new EnvelopeDecoder(MAX_RESPONSE_MESSAGE_BYTES);
  #rejectHead!: (e: unknown) => void;

  constructor(stream: http2.ClientHttp2Stream, schema: O, manager: Http2SessionManager) {
    this.#stream = stream;
    this.#schema = schema;
    this.head = new Promise((resolve, reject) => {
      this.#rejectHead = reject;
      stream.once("response", (h) => {
        resolve({ status: Number(h[":status"] ?? 0), header: webHeaders(h) });
        // The body is read once its head is known: Deno's node:http2 emits a stream's first
        // data before its 'response', and a body that is no gRPC (an HTML page) must fail as
        // what its head says, not as a forged envelope.
        stream.on("data", onData);
      });
    });
    // Nobody may be waiting for the head when the stream fails after it.
    this.head.catch(() => {});
    stream.on("trailers", (t) => webHeaders(t).forEach((v, k) => this.trailer.set(k, v)));
    const onData = (chunk: Uint8Array) => {
      manager.notifyResponseByteRead(stream);
      if (this.#error) return;
      try {
        for (const body of this.#decoder.push(chunk)) this.#queue.push(parse(this.#schema, body));
      } catch (e) {
        this.fail(ConnectError.from(e, Code.Internal));
        reset(stream, h2.NGHTTP2_CANCEL);
        return;
      }
      // The caller reads slower than the server writes: HTTP/2 flow control holds the rest.
      if (this.#queue.length > 64) stream.pause();
      this.#notify();
    };
    stream.once("end", () => {
      if (this.#decoder.pending) {
        this.fail(new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument));
      }
      this.#ended = true;
      this.#notify();
    });
    stream.on("error", (e: Error) => {
      if (stream.writableEnded && (e as { code?: string }).code === "ERR_STREAM_WRITE_AFTER_END") {
        return;
      }
      this.fail(fromNode(e));
    });
    stream.once("close", () => {
      const reset = resetError(stream.rstCode);
      if (reset) this.fail(reset);
      else if (!this.#ended) {
        this.fail(fromNode(Object.assign(new Error("Premature close"), {
          code: "ERR_STREAM_PREMATURE_CLOSE",
        })));
      }
    });
  }

  /**
   * Ends the call with an error (the first one wins).
   *
   * @param e The error.
   */
  fail(e: ConnectError): void {
    if (this.#error || this.#ended) return;
    this.#error = e;
    this.#rejectHead(e);
    this.#notify();
  }

  /** The messages, in order; then the end, or the call's error. */
  async *messages(): AsyncGenerator<MessageShape<O>, void, undefined> {
    while (true) {
      if (this.#queue.length > 0) {
        const m = this.#queue.shift()!;
        if (this.#queue.length <= 16 && this.#stream.isPaused()) this.#stream.resume();
        yield m;
        continue;
      }
      if (this.#error) throw this.#error;
      if (this.#ended) return;
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }
}

/** gRPC envelopes from bytes in any pieces; a length over the cap fails before it is kept. */
class EnvelopeDecoder {
  #max: number;
  #head = new Uint8Array(5);
  #have = 0;
  #body: Uint8Array | undefined;

  constructor(max: number) {
    this.#max = max;
  }

  /** Whether part of an envelope is held. */
  get pending(): boolean {
    return this.#have > 0 || this.#body !== undefined;
  }

  push(chunk: Uint8Array): Uint8Array[] {
    const out: Uint8Array[] = [];
    let off = 0;
    while (off < chunk.length) {
      if (this.#body === undefined) {
        const n = Math.min(5 - this.#have, chunk.length - off);
        this.#head.set(chunk.subarray(off, off + n), this.#have);
        this.#have += n;
        off += n;
        if (this.#have < 5) break;
        const view = new DataView(this.#head.buffer);
        const flags = view.getUint8(0);
        const length = view.getUint32(1);
        if (length > this.#max) {
          throw new ConnectError(
            `message size ${length} is larger than configured readMaxBytes ${this.#max}`,
            Code.ResourceExhausted,
          );
        }
        if ((flags & 0b01) !== 0) {
          throw new ConnectError(
            "received compressed envelope, but do not know how to decompress",
            Code.Internal,
          );
        }
        this.#have = 0;
        if (length === 0) {
          out.push(new Uint8Array(0));
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
        out.push(body);
        this.#body = undefined;
        this.#have = 0;
      }
    }
    return out;
  }
}

function parse<O extends DescMessage>(schema: O, body: Uint8Array): MessageShape<O> {
  try {
    return fromBinary(schema, body);
  } catch (e) {
    throw new ConnectError(
      `parse binary: ${e instanceof Error ? e.message : String(e)}`,
      Code.Internal,
    );
  }
}

/**
 * A Node.js failure as Connect's node client reports it (`connectErrorFromNodeReason`).
 *
 * @param reason The failure.
 * @returns The error, its Node.js cause kept.
 */
export function fromNode(reason: unknown): ConnectError {
  const codes: string[] = [];
  for (let e = reason, i = 0; e instanceof Error && i < 16; e = e.cause, i++) {
    const c = (e as { code?: unknown }).code;
    if (typeof c === "string") codes.push(c);
  }
  let code = Code.Internal;
  if (codes.includes("ERR_STREAM_WRITE_AFTER_END")) code = Code.Aborted;
  else if (
    codes.some((c) =>
      c === "ERR_STREAM_DESTROYED" || c === "ERR_HTTP2_INVALID_STREAM" || c === "ECONNRESET"
    )
  ) code = Code.Aborted;
  else if (codes.some((c) => ["ETIMEDOUT", "ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED"].includes(c))) {
    code = Code.Unavailable;
  }
  const ce = ConnectError.from(reason, code);
  if (ce !== reason) ce.cause = reason;
  return ce;
}

/** A reset stream as Connect's node client reports it (`connectErrorFromH2ResetCode`). */
function resetError(rstCode: number | undefined): ConnectError | undefined {
  const code: Code | undefined = ({
    1: Code.Internal,
    2: Code.Internal,
    3: Code.Internal,
    4: Code.Internal,
    6: Code.Internal,
    9: Code.Internal,
    10: Code.Internal,
    7: Code.Unavailable,
    8: Code.Canceled,
    11: Code.ResourceExhausted,
    12: Code.PermissionDenied,
    13: Code.PermissionDenied,
  } as Record<number, Code>)[rstCode ?? 0];
  if (code === undefined) return undefined;
  return new ConnectError(
    `http/2 stream closed with error code ${http2ErrorName(rstCode!)} (0x${rstCode!.toString(16)})`,
    code,
  );
}

/**
 * Resets a stream; one already closed, or whose connection is gone, is left as it is.
 *
 * @param stream The stream.
 * @param code The HTTP/2 error code.
 */
export function reset(stream: http2.ClientHttp2Stream, code: number): void {
  try {
    if (!stream.closed) stream.close(code);
  } catch { /* its connection is gone */ }
}

/**
 * Headers as node:http2 takes them.
 *
 * @param h The headers.
 * @returns One field per name.
 */
export function nodeHeaders(h: Headers): http2.OutgoingHttpHeaders {
  const out: http2.OutgoingHttpHeaders = {};
  h.forEach((v, k) => (out[k] = v));
  return out;
}

function webHeaders(h: http2.IncomingHttpHeaders): Headers {
  const out = new Headers();
  for (const [k, v] of Object.entries(h)) {
    if (k.startsWith(":") || v === undefined) continue;
    if (Array.isArray(v)) { for (const x of v) out.append(k, x); }
    else out.append(k, String(v));
  }
  return out;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) out.set(p, (o += p.length) - p.length);
  return out;
}
