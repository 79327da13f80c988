// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import fc from "fast-check";
import { type RecordBatch, RecordBatchReader, tableFromArrays, tableToIPC } from "apache-arrow";
import {
  ipcBatchStreams,
  ipcMessageReader,
  ipcMessages,
  IpcMessageType,
  ipcRecordBatches,
} from "./arrow_ipc.ts";
import { FramingError, isFramingError } from "./framing.ts";
import { chunked } from "./testdata/chunks.ts";

async function* each(chunks: Uint8Array[]): AsyncGenerator<Uint8Array> {
  yield* chunks;
}

const table = tableFromArrays({
  n: Int32Array.from({ length: 50 }, (_, i) => i),
  s: Array.from({ length: 50 }, (_, i) => `row ${i}`),
});
// Three batches: the stream holds a schema, three record batches, the end marker.
const three = tableToIPC(
  new (table.constructor as typeof import("apache-arrow").Table)([
    ...table.slice(0, 10).batches,
    ...table.slice(10, 30).batches,
    ...table.slice(30).batches,
  ]),
  "stream",
);

Deno.test("ipcMessages() splits a stream into its messages however it is chunked", async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(fc.nat(), { maxLength: 40 }), async (cuts) => {
      const types = [];
      for await (const m of ipcMessages(each(chunked(three, cuts)))) types.push(m.type);
      // Strings from tableFromArrays are dictionary-encoded: one dictionary batch first.
      deepEqual(types, [
        IpcMessageType.SCHEMA,
        IpcMessageType.DICTIONARY_BATCH,
        IpcMessageType.RECORD_BATCH,
        IpcMessageType.RECORD_BATCH,
        IpcMessageType.RECORD_BATCH,
      ]);
    }),
    { numRuns: 200 },
  );
});

Deno.test("ipcBatchStreams() yields one readable stream per batch, rows intact", async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(fc.nat(), { maxLength: 40 }), async (cuts) => {
      const rows: number[] = [];
      for await (const piece of ipcBatchStreams(each(chunked(three, cuts)))) {
        const reader = RecordBatchReader.from(piece);
        reader.open();
        for (const b of reader) rows.push(...(b.getChild("n")!.toArray() as Int32Array));
      }
      deepEqual(rows, Array.from({ length: 50 }, (_, i) => i));
    }),
    { numRuns: 100 },
  );
});

Deno.test("ipcBatchStreams() refuses truncated and headless streams, and can drain", async () => {
  await rejects(
    Array.fromAsync(ipcBatchStreams([three.subarray(0, three.length - 20)])),
    /the stream ends inside one/,
  );
  const schemaLess = await (async () => {
    const out: Uint8Array[] = [];
    for await (const m of ipcMessages(each([three]))) {
      if (m.type !== IpcMessageType.SCHEMA) out.push(m.bytes);
    }
    return out;
  })();
  await rejects(Array.fromAsync(ipcBatchStreams(schemaLess)), /a batch before the schema/);
  // With drain, what follows the end marker is read (and ignored), not left unread.
  let pulled = 0;
  const source = (async function* () {
    yield three;
    pulled++;
    yield new Uint8Array([1, 2, 3]);
    pulled++;
  })();
  equal((await Array.fromAsync(ipcBatchStreams(source, { drain: true }))).length, 3);
  equal(pulled, 2);
});

/**
 * Where the metadata length and the `bodyLength` field of the message at `at` lie (a record
 * batch: a schema has no body, and flatbuffers omit fields that hold their default).
 */
function fieldsOf(stream: Uint8Array, at: number): { meta: number; body: number; metaLen: number } {
  const v = new DataView(stream.buffer, stream.byteOffset + at);
  const metaLen = v.getInt32(4, true);
  const table = v.getUint32(8, true);
  const vtable = table - v.getInt32(8 + table, true);
  const bodyAt = v.getUint16(8 + vtable + 4 + 2 * 3, true);
  if (!bodyAt) throw new Error(`the message at ${at} has no bodyLength field`);
  return { meta: at + 4, body: at + 8 + table + bodyAt, metaLen };
}

/** Offset of the first record batch message in `three`. */
const firstBatchAt = await (async () => {
  let at = 0;
  for await (const m of ipcMessages([three])) {
    if (m.type === IpcMessageType.RECORD_BATCH) return at;
    at += m.bytes.length;
  }
  throw new Error("no record batch");
})();

/** Reads a stream through the pushing reader, checking after each chunk what it holds. */
function readAll(chunks: Uint8Array[], max: number): number[] | FramingError {
  const r = ipcMessageReader({ maxMessageBytes: max });
  const types: number[] = [];
  try {
    for (const c of chunks) {
      for (const m of r.push(c)) if (m) types.push(m.type);
      ok(r.pending <= max, `holds ${r.pending} > ${max}`);
    }
    r.end();
    return types;
  } catch (e) {
    if (!isFramingError(e)) throw e;
    return e;
  }
}

Deno.test("ipcMessages() refuses a negative body length instead of looping (issue 10.4)", async () => {
  // The reported attack: bodyLength = -(prefix + metadata) used to make the splitter step back
  // onto the same message forever, on the server's main thread.
  const hostile = three.slice();
  const f = fieldsOf(hostile, firstBatchAt);
  new DataView(hostile.buffer).setBigInt64(f.body, BigInt(-(8 + f.metaLen)), true);
  await rejects(Array.fromAsync(ipcMessages([hostile])), (e) => {
    ok(e instanceof FramingError && e.code === "BAD_LENGTH", String(e));
    ok(e instanceof SyntaxError);
    ok(e.message.includes(String(-(8 + f.metaLen))), e.message);
    return true;
  });
});

Deno.test("ipcMessages() ends arbitrary bytes with messages or a FramingError, within the cap", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.uint8Array({ maxLength: 3000 }),
      fc.array(fc.nat(), { maxLength: 20 }),
      fc.integer({ min: 8, max: 4096 }),
      async (bytes, cuts, max) => {
        const chunks = chunked(bytes, cuts);
        const got = readAll(chunks, max);
        // The async splitter agrees with the pushing reader.
        const viaAsync = await Array.fromAsync(ipcMessages(each(chunks), { maxMessageBytes: max }))
          .then((ms) => ms.map((m) => m.type), (e) => e);
        if (Array.isArray(got)) deepEqual(viaAsync, got);
        else ok(isFramingError(viaAsync), String(viaAsync));
      },
    ),
    { numRuns: 500 },
  );
});

Deno.test("ipcMessages() checks adversarial metadata lengths, offsets and body lengths", async () => {
  const first = fieldsOf(three, firstBatchAt);
  await fc.assert(
    fc.asyncProperty(
      fc.oneof(fc.constant(undefined), fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 })),
      fc.oneof(
        fc.constant(undefined),
        fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
        fc.constantFrom(-1n, -8n, BigInt(-(8 + first.metaLen)), 2n ** 32n, 2n ** 53n),
      ),
      fc.array(fc.tuple(fc.nat(first.metaLen + 7), fc.nat(255)), { maxLength: 6 }),
      fc.array(fc.nat(), { maxLength: 10 }),
      async (metaLen, bodyLen, pokes, cuts) => {
        const s = three.slice();
        const v = new DataView(s.buffer);
        if (metaLen !== undefined) v.setInt32(first.meta, metaLen, true);
        if (bodyLen !== undefined) v.setBigInt64(first.body, bodyLen, true);
        // Random bytes inside the metadata: root table, vtable and field offsets.
        for (const [at, b] of pokes) s[firstBatchAt + 8 + at] = b;
        const got = readAll(chunked(s, cuts), 1 << 16);
        const viaAsync = await Array.fromAsync(
          ipcMessages(each(chunked(s, cuts)), { maxMessageBytes: 1 << 16 }),
        ).then((ms) => ms.map((m) => m.type), (e) => e);
        if (Array.isArray(got)) deepEqual(viaAsync, got);
        else ok(isFramingError(viaAsync), String(viaAsync));
        // A batch whose own length fields were the only change is refused for them. (With the
        // metadata length changed too, the message may read as the end-of-stream marker.)
        if (metaLen === undefined && pokes.length === 0 && bodyLen !== undefined) {
          if (bodyLen < 0n) ok(got instanceof FramingError && got.code === "BAD_LENGTH");
          if (bodyLen > 1n << 16n) ok(got instanceof FramingError);
        }
      },
    ),
    { numRuns: 500 },
  );
});

Deno.test("ipcBatchStreams() caps one message, and the schema with its dictionaries", async () => {
  await rejects(
    Array.fromAsync(ipcBatchStreams([three], { maxMessageBytes: 64 })),
    (e) => e instanceof FramingError && e.code === "TOO_LARGE" && e.limit === 64,
  );
  // Dictionaries repeat in every piece: endless ones must not pile up without bound.
  const msgs = await Array.fromAsync(ipcMessages([three]));
  const dict = msgs.find((m) => m.type === IpcMessageType.DICTIONARY_BATCH)!;
  const schema = msgs[0]!;
  const max = schema.bytes.length + 3 * dict.bytes.length;
  await rejects(
    Array.fromAsync(
      ipcBatchStreams(
        (function* () {
          yield schema.bytes;
          for (let i = 0; i < 10; i++) yield dict.bytes;
        })(),
        { maxMessageBytes: max },
      ),
    ),
    /schema and dictionaries take more than the limit/,
  );
});

Deno.test("ipcRecordBatches() opens each piece with the reader it is given", async () => {
  const rows: number[] = [];
  for await (
    const b of ipcRecordBatches<RecordBatch>(
      each(chunked(three, [7, 300, 301])),
      RecordBatchReader,
    )
  ) {
    rows.push(b.numRows);
  }
  deepEqual(rows, [10, 20, 20]);
});
