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

/** The `header_type` and `bodyLength` of a `Message` flatbuffer. */
function messageInfo(meta: Uint8Array): { type: number; bodyLength: number } {
  const v = new DataView(meta.buffer, meta.byteOffset, meta.byteLength);
  const table = v.getUint32(0, true);
  const vtable = table - v.getInt32(table, true);
  const vsize = v.getUint16(vtable, true);
  const field = (i: number): number => {
    const at = 4 + 2 * i;
    return at + 2 <= vsize ? v.getUint16(vtable + at, true) : 0;
  };
  const typeAt = field(1);
  const lengthAt = field(3);
  return {
    type: typeAt ? v.getUint8(table + typeAt) : 0,
    bodyLength: lengthAt ? Number(v.getBigInt64(table + lengthAt, true)) : 0,
  };
}

/**
 * Splits an Arrow IPC stream into whole messages as soon as each one has arrived. Stops at the
 * end-of-stream marker; with `drain`, keeps reading the source to its end without yielding more
 * (for a caller whose source carries other data after the stream).
 *
 * @param source The stream's bytes, in chunks of any size.
 * @param options `drain`: read the source to its end.
 * @returns The messages.
 * @throws {SyntaxError} when the bytes are not an Arrow IPC stream.
 */
export async function* ipcMessages(
  source: AsyncIterable<Uint8Array>,
  options: { drain?: boolean } = {},
): AsyncGenerator<IpcMessage, void, undefined> {
  const q = new ByteQueue();
  let need = 8;
  let frame: { prefix: number; meta: number } | undefined;
  let size = 0;
  let type = 0;
  let ended = false;
  for await (const chunk of source) {
    if (ended) continue;
    q.push(chunk);
    while (q.length >= need) {
      if (!frame) {
        const head = new DataView(q.peek(8).buffer);
        const first = head.getUint32(0, true);
        const prefix = first === 0xffffffff ? 8 : 4;
        const meta = prefix === 8 ? head.getInt32(4, true) : first;
        if (meta === 0) {
          if (!options.drain) return;
          ended = true;
          break;
        }
        if (meta < 0 || meta > 1 << 30) {
          throw new SyntaxError(`Cannot read Arrow IPC: metadata length ${meta}`);
        }
        frame = { prefix, meta };
        need = prefix + meta;
        continue;
      }
      if (size === 0) {
        const meta = q.peek(frame.prefix + frame.meta).subarray(frame.prefix);
        const info = messageInfo(meta);
        type = info.type;
        size = frame.prefix + frame.meta + info.bodyLength;
        need = size;
        continue;
      }
      yield { type, bytes: q.take(size) };
      frame = undefined;
      size = 0;
      need = 8;
    }
  }
  if (!ended && (frame || q.length >= 4)) {
    throw new SyntaxError("Cannot read Arrow IPC: the stream ends inside a message");
  }
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
 * @throws {SyntaxError} when a batch comes before the schema, or the bytes are not Arrow IPC.
 */
export async function* ipcBatchStreams(
  source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  options: { drain?: boolean } = {},
): AsyncGenerator<Uint8Array, void, undefined> {
  let prefix: Uint8Array[] = [];
  const asAsync = (async function* () {
    yield* source;
  })();
  for await (const m of ipcMessages(asAsync, options)) {
    if (m.type === IpcMessageType.SCHEMA) {
      prefix = [m.bytes];
      continue;
    }
    if (m.type !== IpcMessageType.DICTIONARY_BATCH && m.type !== IpcMessageType.RECORD_BATCH) {
      continue;
    }
    if (!prefix.length) throw new SyntaxError("Cannot read Arrow IPC: a batch before the schema");
    if (m.type === IpcMessageType.DICTIONARY_BATCH) {
      prefix.push(m.bytes);
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

class ByteQueue {
  #chunks: Uint8Array[] = [];
  #head = 0;
  #length = 0;

  get length(): number {
    return this.#length;
  }

  push(chunk: Uint8Array): void {
    if (chunk.length) {
      this.#chunks.push(chunk);
      this.#length += chunk.length;
    }
  }

  /** A copy of the first `n` bytes (n <= length), left in the queue. */
  peek(n: number): Uint8Array {
    const out = new Uint8Array(n);
    let filled = 0;
    for (let i = this.#head; filled < n; i++) {
      const c = this.#chunks[i]!;
      const k = Math.min(c.length, n - filled);
      out.set(c.subarray(0, k), filled);
      filled += k;
    }
    return out;
  }

  /** The first `n` bytes (n <= length), removed from the queue. */
  take(n: number): Uint8Array {
    const first = this.#chunks[this.#head]!;
    let out: Uint8Array;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.#chunks[this.#head++] = undefined!;
      else this.#chunks[this.#head] = first.subarray(n);
    } else {
      out = new Uint8Array(n);
      let filled = 0;
      while (filled < n) {
        const c = this.#chunks[this.#head]!;
        const k = Math.min(c.length, n - filled);
        out.set(c.subarray(0, k), filled);
        filled += k;
        if (k === c.length) this.#chunks[this.#head++] = undefined!;
        else this.#chunks[this.#head] = c.subarray(k);
      }
    }
    this.#length -= n;
    if (this.#head > 64 && this.#head * 2 > this.#chunks.length) {
      this.#chunks = this.#chunks.slice(this.#head);
      this.#head = 0;
    }
    return out;
  }
}
