// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal, rejects } from "node:assert/strict";
import fc from "fast-check";
import { RecordBatchReader, tableFromArrays, tableToIPC } from "apache-arrow";
import { ipcBatchStreams, ipcMessages, IpcMessageType } from "./arrow_ipc.ts";

function chunked(bytes: Uint8Array, cuts: number[]): Uint8Array[] {
  const at = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  const out: Uint8Array[] = [];
  let prev = 0;
  for (const c of [...at, bytes.length]) {
    out.push(bytes.subarray(prev, c));
    prev = c;
  }
  return out;
}

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
    /ends inside a message/,
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
