// Copyright 2026 the Valise authors. Apache-2.0 license.
// Arrow IPC streaming for Apply: the input written batch by batch (never whole in memory). The
// output is read with `ipcRecordBatches` of @valise/protocol, shared with the server.
import {
  AsyncByteQueue,
  type RecordBatch,
  RecordBatchStreamWriter,
  type Schema,
} from "apache-arrow";

/** Largest `arrow_ipc` request piece: well under the server's 64 MiB message limit. */
export const PIECE_BYTES = 4 << 20;

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
