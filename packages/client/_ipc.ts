// Copyright 2026 the Valise authors. Apache-2.0 license.
// Arrow IPC streaming for Apply: the input written batch by batch (never whole in memory), the
// output read message by message so each batch is handed on as soon as its bytes are in.
// The splitter mirrors the server's (packages/server/apply_codec.ts); packages do not import
// each other's internals.
import {
  AsyncByteQueue,
  type RecordBatch,
  RecordBatchReader,
  RecordBatchStreamWriter,
  type Schema,
} from "apache-arrow";

/** Largest `arrow_ipc` request piece: well under the server's 64 MiB message limit. */
export const PIECE_BYTES = 4 << 20;

const MessageType = { SCHEMA: 1, DICTIONARY_BATCH: 2, RECORD_BATCH: 3 } as const;

interface IpcMessage {
  type: number;
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
 * Splits an Arrow IPC stream into whole messages as soon as each one has arrived (apache-arrow's
 * own async reader holds a batch back until the next message starts). Stops at the
 * end-of-stream marker, but reads the source to its end (the call's last responses follow it).
 *
 * @param source The stream's bytes, in chunks of any size.
 * @returns The messages.
 * @throws {SyntaxError} when the bytes are not an Arrow IPC stream.
 */
async function* ipcMessages(
  source: AsyncIterable<Uint8Array>,
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
 * Reads the record batches of an Arrow IPC stream, each as soon as its message is complete.
 *
 * @param source The stream's bytes, in chunks of any size.
 * @returns The batches.
 */
export async function* ipcRecordBatches(
  source: AsyncIterable<Uint8Array>,
): AsyncGenerator<RecordBatch, void, undefined> {
  let prefix: Uint8Array[] = [];
  for await (const m of ipcMessages(source)) {
    if (m.type === MessageType.SCHEMA) {
      prefix = [m.bytes];
      continue;
    }
    if (m.type === MessageType.DICTIONARY_BATCH) {
      prefix.push(m.bytes);
      continue;
    }
    if (m.type !== MessageType.RECORD_BATCH) continue;
    if (!prefix.length) throw new SyntaxError("Cannot read Arrow IPC: a batch before the schema");
    const parts = [...prefix, m.bytes];
    const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let off = 0;
    for (const p of parts) {
      all.set(p, off);
      off += p.length;
    }
    const reader = RecordBatchReader.from(all);
    reader.open();
    for (const b of reader) yield b;
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

/** Collects what the writer writes, synchronously, so each batch's bytes can be taken at once. */
class ChunkSink extends AsyncByteQueue {
  chunks: Uint8Array[] = [];
  size = 0;

  override write(value: Parameters<AsyncByteQueue["write"]>[0]): void {
    const v = value as ArrayBufferView;
    const bytes = v instanceof Uint8Array
      ? v
      : new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
    if (bytes.length === 0) return;
    this.chunks.push(bytes);
    this.size += bytes.length;
  }

  /** The bytes written since the last call, as one copy (the writer may hand out views). */
  take(): Uint8Array {
    const out = new Uint8Array(this.size);
    let off = 0;
    for (const c of this.chunks) {
      out.set(c, off);
      off += c.length;
    }
    this.chunks = [];
    this.size = 0;
    return out;
  }
}

function sameSchema(a: Schema, b: Schema): boolean {
  return a.fields.length === b.fields.length &&
    a.fields.every((f, i) => {
      const g = b.fields[i]!;
      return f.name === g.name && String(f.type) === String(g.type);
    });
}

/** Splits `bytes` into request pieces of at most {@linkcode PIECE_BYTES}. */
export function* pieces(bytes: Uint8Array): Generator<Uint8Array, void, undefined> {
  for (let off = 0; off < bytes.length; off += PIECE_BYTES) {
    yield bytes.subarray(off, off + PIECE_BYTES);
  }
}

/**
 * Writes record batches as one Arrow IPC stream, yielding each batch's bytes (in pieces) before
 * the next batch is pulled: memory holds one batch, whatever the input's length.
 *
 * @param schema The schema, when known before the first batch (an empty table still has one).
 * @param batches The batches, all of one schema.
 * @returns The stream's bytes.
 * @throws {TypeError} When a batch's schema differs from the first one.
 */
export async function* ipcStream(
  schema: Schema | undefined,
  batches: AsyncIterable<RecordBatch> | Iterable<RecordBatch>,
): AsyncGenerator<Uint8Array, void, undefined> {
  const sink = new ChunkSink();
  const writer = new RecordBatchStreamWriter();
  writer.reset(sink, schema ?? null);
  let first = schema;
  let n = 0;
  for await (const batch of batches) {
    if (!isRecordBatch(batch)) {
      throw new TypeError(`Cannot apply: input item ${n} is not an Arrow RecordBatch`);
    }
    if (first === undefined) first = batch.schema;
    else if (!sameSchema(first, batch.schema)) {
      throw new TypeError(
        `Cannot apply: input batch ${n} has schema ${batch.schema.fields.join(", ")}, ` +
          `but the first had ${first.fields.join(", ")}`,
      );
    }
    writer.write(batch);
    n++;
    yield* pieces(sink.take());
  }
  writer.finish();
  yield* pieces(sink.take());
}

/** Whether `x` looks like an apache-arrow `RecordBatch` (also from another copy of the library). */
export function isRecordBatch(x: unknown): x is RecordBatch {
  return typeof x === "object" && x !== null && "schema" in x && "numRows" in x && "data" in x;
}
