// Copyright 2026 the Valise authors. Apache-2.0 license.
// A client-streaming gRPC call over a session's HTTP/2 connection without Connect's transport
// pipeline, as `serverStream` (_server_stream.ts) does for server streaming. Connect's node client
// writes the next request message only from the previous write's callback, one message in flight
// at a time: an upload of 1 MiB messages reached about 120 MB/s on loopback, while the same bytes
// written with several messages in flight reached about twice that (docs/BENCHMARKS.md, "Issue
// 16, goals 4–5"). Here the messages are written as they come, up to a bound of bytes the stream
// has not yet taken (HTTP/2 flow control decides when it takes them); a message that comes with
// its envelope already encoded (`withEnvelope`) is written as it is, without a copy.
//
// What a caller sees is what Connect's gRPC transport and promise client give: the same
// interceptors around the call, the same errors (a status in the headers or the trailers, HTTP
// errors, a reset stream, a missing or extra response message, a failure of the request messages
// themselves), the same cap on what the server answers.
import { constants as h2 } from "node:http2";
import type * as http2 from "node:http2";
import {
  type DescMessage,
  type DescMethodClientStreaming,
  type MessageShape,
  toBinary,
} from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createContextValues,
  type StreamRequest,
  type StreamResponse,
} from "@connectrpc/connect";
import { grpcEnvelope } from "@valise/protocol";
import { aborted, exchange, fromNode, reset, type StreamCallTarget } from "./_server_stream.ts";
import { CLIENT_VERSION } from "./version.ts";

/**
 * The most request bytes written and not yet taken by the stream: enough to keep the connection
 * busy while the next message is read and encoded, and a bound on what waits in memory.
 */
export const MAX_IN_FLIGHT_BYTES = 4 * 2 ** 20;

/** A message's envelope, encoded by the caller, and how to tell it still encodes the message. */
interface Attached {
  readonly envelope: Uint8Array;
  readonly unchanged: (message: object) => boolean;
}

/** Encoded envelopes of messages, by message: written as they are when the message is sent. */
const envelopes = new WeakMap<object, Attached>();

/**
 * Attaches a message's gRPC envelope (encoded by the caller, e.g. straight from a file read) so
 * the call writes it without encoding the message again. An interceptor may change a message as
 * on Connect's path: `unchanged` is asked before the envelope is written, and a message it does
 * not vouch for is encoded again.
 *
 * @param message The message.
 * @param envelope Its envelope: flags 0, length, `toBinary` of the message.
 * @param unchanged Whether the message still has the fields the envelope was written from.
 * @returns The message.
 */
export function withEnvelope<M extends object>(
  message: M,
  envelope: Uint8Array,
  unchanged: (message: M) => boolean,
): M {
  envelopes.set(message, { envelope, unchanged: unchanged as (m: object) => boolean });
  return message;
}

/**
 * The envelope attached to a message, if it still encodes it.
 *
 * @param message The message.
 * @returns What the call writes for it as it is, or `undefined` (it is encoded then).
 */
export function envelopeOf(message: object): Uint8Array | undefined {
  const a = envelopes.get(message);
  return a?.unchanged(message) ? a.envelope : undefined;
}

/**
 * Calls a client-streaming method.
 *
 * @param target The connection, its base URL and interceptors.
 * @param method The method.
 * @param input The request messages; read as the stream takes them, closed when the call ends.
 * @param signal Cancels the call.
 * @returns The response; throws a `ConnectError` as Connect's transport and client do.
 */
export async function clientStream<I extends DescMessage, O extends DescMessage>(
  target: StreamCallTarget,
  method: DescMethodClientStreaming<I, O>,
  input: AsyncIterable<MessageShape<I>>,
  signal?: AbortSignal,
): Promise<MessageShape<O>> {
  const controller = new AbortController();
  const onAbort = () => controller.abort(signal?.reason);
  signal?.addEventListener("abort", onAbort, { once: true });
  if (signal?.aborted) onAbort();
  const req: StreamRequest<I, O> = {
    stream: true,
    service: method.parent,
    method,
    requestMethod: "POST",
    url: `${target.baseUrl}/${method.parent.typeName}/${method.name}`,
    header: new Headers({
      "content-type": "application/grpc+proto",
      "user-agent": `valise-client/${CLIENT_VERSION}`,
      te: "trailers",
    }),
    contextValues: createContextValues(),
    signal: controller.signal,
    message: input,
  };
  const writers: Promise<void>[] = [];
  let next = ((r: StreamRequest<I, O>) => call(target, r, writers)) as unknown as (
    r: StreamRequest<I, O>,
  ) => Promise<StreamResponse<I, O>>;
  for (const i of [...target.interceptors].reverse()) next = i(next as never) as never;
  try {
    if (controller.signal.aborted) throw aborted(controller.signal);
    const res = await next(req);
    let single: MessageShape<O> | undefined;
    let count = 0;
    for await (const m of res.message) {
      single = m;
      count++;
    }
    if (single === undefined) {
      throw new ConnectError("protocol error: missing response message", Code.Unimplemented);
    }
    if (count > 1) {
      throw new ConnectError(
        "protocol error: received extra messages for client streaming method",
        Code.Unimplemented,
      );
    }
    return single;
  } finally {
    signal?.removeEventListener("abort", onAbort);
    // Whatever ended the call ends the stream (a reset if still open), and the call returns only
    // once its request messages are closed: a file they read is closed by then.
    controller.abort();
    await Promise.all(writers);
  }
}

/** The HTTP/2 exchange: the request messages written as they come, the answer read beside. */
function call<I extends DescMessage, O extends DescMessage>(
  target: StreamCallTarget,
  req: StreamRequest<I, O>,
  writers: Promise<void>[],
): Promise<StreamResponse<I, O>> {
  const method = req.method as DescMethodClientStreaming<I, O>;
  return exchange(target, req, method, (stream, reader) => {
    writers.push(writeAll(stream, method.input, req.message, (e) => {
      // A failure of the messages themselves (a file that changed, could not be read) ends the
      // call with it, as Connect's client does (`connectErrorFromNodeReason`).
      reader.fail(e instanceof ConnectError ? e : fromNode(e));
      reset(stream, h2.NGHTTP2_CANCEL);
    }));
  });
}

/**
 * Writes the request messages, several in flight, then ends the body. It stops, closing the
 * messages, once the stream can take no more (answered, reset, closed); a failure of the
 * messages goes to `fail`.
 */
async function writeAll<I extends DescMessage>(
  stream: http2.ClientHttp2Stream,
  schema: I,
  messages: AsyncIterable<MessageShape<I>>,
  fail: (e: unknown) => void,
): Promise<void> {
  let inFlight = 0;
  let stopped = false;
  let wake: (() => void) | undefined;
  const notify = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  const stop = () => {
    stopped = true;
    notify();
  };
  // The server answered (a gRPC server may answer before the body ends) or the stream is gone.
  stream.once("end", stop);
  stream.once("close", stop);
  stream.once("error", stop);
  try {
    for await (const m of messages) {
      if (stopped || stream.destroyed || stream.writableEnded) break;
      const bytes = envelopeOf(m) ?? grpcEnvelope(toBinary(schema, m));
      inFlight += bytes.length;
      stream.write(bytes, (e) => {
        inFlight -= bytes.length;
        notify();
        // As Connect's node client: a write that failed fails the call, unless the server
        // answered and closed the stream before the whole body was written.
        if (e && !(stream.writableEnded && writeAfterEnd(e))) fail(e);
      });
      while (inFlight > MAX_IN_FLIGHT_BYTES && !stopped) {
        await new Promise<void>((resolve) => (wake = resolve));
      }
    }
    if (!stopped && !stream.destroyed && !stream.writableEnded) stream.end();
  } catch (e) {
    if (!stopped) fail(e);
  } finally {
    stream.off("end", stop);
    stream.off("close", stop);
    stream.off("error", stop);
  }
}

function writeAfterEnd(e: unknown): boolean {
  for (let x = e, i = 0; x instanceof Error && i < 16; x = x.cause, i++) {
    if ((x as { code?: unknown }).code === "ERR_STREAM_WRITE_AFTER_END") return true;
  }
  return false;
}
