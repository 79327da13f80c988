// Copyright 2026 the Valise authors. Apache-2.0 license.
// This module is browser compatible.
/**
 * Byte-level framing of Arrow IPC streams, shared by the Apply client and server: split a
 * stream into whole messages as soon as each has arrived (apache-arrow's own async reader holds
 * a batch back until the next message starts), and cut it into self-contained pieces, one per
 * record batch, that any Arrow reader opens. No Arrow library needed.
 *
 * @module
 */
import { type FrameFormat, FrameReader, FramingError } from "./framing.ts";

/** Kinds of Arrow IPC messages (`MessageHeader` of the Arrow format). */
export const IpcMessageType: { SCHEMA: 1; DICTIONARY_BATCH: 2; RECORD_BATCH: 3 } = {
  SCHEMA: 1,
  DICTIONARY_BATCH: 2,
  RECORD_BATCH: 3,
};

/** One whole message of an Arrow IPC stream: its framing, metadata and body. */
export interface IpcMessage {
  /** `MessageHeader` type: 1 schema, 2 dictionary batch, 3 record batch, … */
  type: number;
  /** The message's bytes as they were in the stream. */
  bytes: Uint8Array;
}

/**
 * The largest Arrow IPC message accepted by default (metadata and body): the server's default
 * `readMaxBytes`, so one message fits one gRPC message.
 */
export const DEFAULT_MAX_IPC_MESSAGE_BYTES: number = 64 * 1024 * 1024;

/** Options of {@linkcode ipcMessages} and {@linkcode ipcBatchStreams}. */
export interface IpcReadOptions {
  /**
   * Read the source to its end after the end-of-stream marker, without yielding more (for a
   * caller whose source carries other data after the stream).
   * @default {false}
   */
  drain?: boolean;
  /**
   * The largest message accepted (framing, metadata and body); a larger one fails with a
   * {@linkcode FramingError} `TOO_LARGE` before any of it is buffered.
   * @default {DEFAULT_MAX_IPC_MESSAGE_BYTES}
   */
  maxMessageBytes?: number;
}

function badHeader(why: string): FramingError {
  return new FramingError("BAD_HEADER", `Cannot read Arrow IPC message: ${why}`);
}

/**
 * The `header_type` and `bodyLength` of a `Message` flatbuffer, every offset checked against
 * the metadata's bounds (they come from whoever wrote the stream).
 */
function messageInfo(meta: Uint8Array): { type: number; bodyLength: number } {
  const size = meta.byteLength;
  const v = new DataView(meta.buffer, meta.byteOffset, size);
  if (size < 8) throw badHeader(`its metadata is ${size} bytes, too short for a flatbuffer`);
  const table = v.getUint32(0, true);
  if (table + 4 > size) {
    throw badHeader(`the root table at ${table} is outside the ${size}-byte metadata`);
  }
  const vtable = table - v.getInt32(table, true);
  if (vtable < 0 || vtable + 4 > size) {
    throw badHeader(`the vtable at ${vtable} is outside the ${size}-byte metadata`);
  }
  const vsize = v.getUint16(vtable, true);
  if (vsize < 4 || vtable + vsize > size) {
    throw badHeader(`the vtable of ${vsize} bytes at ${vtable} overruns the ${size}-byte metadata`);
  }
  const field = (i: number, width: number): number => {
    const at = 4 + 2 * i;
    if (at + 2 > vsize) return 0;
    const offset = v.getUint16(vtable + at, true);
    if (offset && table + offset + width > size) {
      throw badHeader(`field ${i} at ${table + offset} is outside the ${size}-byte metadata`);
    }
    return offset;
  };
  const typeAt = field(1, 1);
  const lengthAt = field(3, 8);
  const body = lengthAt ? v.getBigInt64(table + lengthAt, true) : 0n;
  if (body < 0n || body > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new FramingError(
      "BAD_LENGTH",
      `Cannot read Arrow IPC message: body length ${body} is ${
        body < 0n ? "negative" : "too large"
      }`,
    );
  }
  return { type: typeAt ? v.getUint8(table + typeAt) : 0, bodyLength: Number(body) };
}

/** The framing prefix's size and the metadata's length: `[prefix, metadata]`. */
function prefixOf(v: DataView): [number, number] | undefined {
  const first = v.getUint32(0, true);
  if (first !== 0xffffffff) return [4, first | 0];
  return v.byteLength < 8 ? undefined : [8, v.getInt32(4, true)];
}

const IPC_FORMAT: FrameFormat<IpcMessage | undefined> = {
  name: "Arrow IPC message",
  headerBytes: 4,
  measure(head) {
    const v = new DataView(head.buffer, head.byteOffset, head.byteLength);
    const p = prefixOf(v);
    if (!p) return { headerBytes: 8 };
    const [prefix, meta] = p;
    if (meta === 0) return { frameBytes: prefix };
    if (meta < 0) {
      throw new FramingError(
        "BAD_LENGTH",
        `Cannot read Arrow IPC message: metadata length ${meta}`,
      );
    }
    if (head.length < prefix + meta) return { headerBytes: prefix + meta };
    return { frameBytes: prefix + meta + messageInfo(head.subarray(prefix)).bodyLength };
  },
  decode(frame) {
    const [prefix, meta] = prefixOf(new DataView(frame.buffer, frame.byteOffset, frame.length))!;
    if (meta === 0) return undefined;
    return { type: messageInfo(frame.subarray(prefix, prefix + meta)).type, bytes: frame };
  },
  last: (m) => m === undefined,
};

/**
 * A size-capped reader of Arrow IPC messages, for callers that push bytes as they come; the
 * end-of-stream marker reads as `undefined` and ends it.
 *
 * @param options The cap.
 * @returns The reader.
 */
export function ipcMessageReader(
  options: Pick<IpcReadOptions, "maxMessageBytes"> = {},
): FrameReader<IpcMessage | undefined> {
  return new FrameReader(IPC_FORMAT, {
    maxFrameBytes: options.maxMessageBytes ?? DEFAULT_MAX_IPC_MESSAGE_BYTES,
  });
}

/**
 * Splits an Arrow IPC stream into whole messages as soon as each one has arrived. Stops at the
 * end-of-stream marker; with `drain`, keeps reading the source to its end without yielding more.
 * Every length is checked before anything is buffered: memory stays below one message of at
 * most `maxMessageBytes`.
 *
 * @param source The stream's bytes, in chunks of any size (not reused by the caller).
 * @param options `drain`, `maxMessageBytes`.
 * @returns The messages.
 * @throws {FramingError} (a `SyntaxError`) when the bytes are not an Arrow IPC stream or a
 * message is larger than `maxMessageBytes`.
 */
export async function* ipcMessages(
  source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  options: IpcReadOptions = {},
): AsyncGenerator<IpcMessage, void, undefined> {
  const reader = ipcMessageReader(options);
  for await (const chunk of source) {
    for (const m of reader.push(chunk)) if (m) yield m;
    if (reader.done && !options.drain) return;
  }
  reader.end();
}

/**
 * Cuts an Arrow IPC stream into one self-contained IPC stream per record batch (the schema and
 * the dictionaries so far, then the batch), each yielded as soon as its batch has arrived.
 *
 * @example
 * ```ts
 * import { ipcBatchStreams } from "@valise/protocol";
 * import { equal } from "node:assert/strict";
 * // An empty stream: just the end-of-stream marker.
 * const pieces = await Array.fromAsync(ipcBatchStreams([new Uint8Array([255, 255, 255, 255, 0, 0, 0, 0])]));
 * equal(pieces.length, 0);
 * ```
 *
 * @param source The stream's bytes, in chunks of any size.
 * @param options `drain`: read the source to its end.
 * @returns One IPC stream per record batch.
 * @throws {FramingError} (a `SyntaxError`) when the bytes are not Arrow IPC, a batch comes
 * before the schema, or a message (or the schema with its dictionaries) is larger than
 * `maxMessageBytes`.
 */
export async function* ipcBatchStreams(
  source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  options: IpcReadOptions = {},
): AsyncGenerator<Uint8Array, void, undefined> {
  const max = options.maxMessageBytes ?? DEFAULT_MAX_IPC_MESSAGE_BYTES;
  let prefix: Uint8Array[] = [];
  let prefixBytes = 0;
  for await (const m of ipcMessages(source, options)) {
    if (m.type === IpcMessageType.SCHEMA) {
      // Copied: a view would keep the whole chunk it came in alive for the stream's length.
      prefix = [m.bytes.slice()];
      prefixBytes = m.bytes.length;
      continue;
    }
    if (m.type !== IpcMessageType.DICTIONARY_BATCH && m.type !== IpcMessageType.RECORD_BATCH) {
      continue;
    }
    if (!prefix.length) {
      throw new FramingError("UNEXPECTED", "Cannot read Arrow IPC: a batch before the schema");
    }
    if (m.type === IpcMessageType.DICTIONARY_BATCH) {
      // Every piece repeats the dictionaries: together they get the cap of one message.
      prefixBytes += m.bytes.length;
      if (prefixBytes > max) {
        throw new FramingError(
          "TOO_LARGE",
          `Cannot read Arrow IPC: the schema and dictionaries take more than the limit of ${max} bytes`,
          { limit: max, size: prefixBytes },
        );
      }
      prefix.push(m.bytes.slice());
      continue;
    }
    const parts = [...prefix, m.bytes];
    const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let off = 0;
    for (const p of parts) {
      all.set(p, off);
      off += p.length;
    }
    yield all;
  }
}

/**
 * Opens one self-contained Arrow IPC stream and iterates its record batches: apache-arrow's
 * `RecordBatchReader` class fits, so this package needs no Arrow library.
 */
export interface IpcStreamOpener<T> {
  /** Opens the stream's bytes. */
  from(stream: Uint8Array): Iterable<T> & { open(): unknown };
}

/**
 * Reads the record batches of an Arrow IPC stream, each as soon as its message is complete.
 *
 * @example
 * ```ts ignore
 * import { type RecordBatch, RecordBatchReader } from "apache-arrow";
 * // TypeScript cannot infer the batch type through apache-arrow's overloads: name it.
 * for await (const b of ipcRecordBatches<RecordBatch>(bytes, RecordBatchReader)) console.log(b);
 * ```
 *
 * @param source The stream's bytes, in chunks of any size.
 * @param reader Opens each batch's piece: apache-arrow's `RecordBatchReader`.
 * @param options `drain`, `maxMessageBytes`.
 * @returns The batches.
 * @throws {FramingError} as {@linkcode ipcBatchStreams} does.
 */
export async function* ipcRecordBatches<T>(
  source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  reader: IpcStreamOpener<T>,
  options: IpcReadOptions = {},
): AsyncGenerator<T, void, undefined> {
  for await (const piece of ipcBatchStreams(source, options)) {
    const r = reader.from(piece);
    r.open();
    yield* r;
  }
}
