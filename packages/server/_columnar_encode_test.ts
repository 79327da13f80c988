// Copyright 2026 the Valise authors. Apache-2.0 license.
// The encoder against IPC bytes that lie: lengths, offsets, dictionary indices and ids. Each
// lie fails with an error naming the column, at once, allocating no more than the bytes given.
import { equal, ok, throws } from "node:assert/strict";
import fc from "fast-check";
import { Field, List, Null, type RecordBatch, Table, Utf8, vectorFromArray } from "apache-arrow";
import { ipcRecordBatches } from "@valise/protocol";
import { richStream } from "./_ipc_test_util.ts";
import { ColumnarInputError, encodeColumnarBatch } from "./_columnar.ts";
import { IpcMetadataError, VerifiedReader, verifyIpcMessages } from "./_ipc_verify.ts";

/** Every batch of a stream, encoded; the total encoded bytes. */
async function encodeAll(bytes: Uint8Array, maxRows: number): Promise<number> {
  let total = 0;
  for await (
    const b of ipcRecordBatches<RecordBatch>([bytes], VerifiedReader, {
      maxMessageBytes: 1 << 20,
    })
  ) {
    for (const p of encodeColumnarBatch(b, maxRows)) total += p.length;
  }
  return total;
}

function find(hay: Uint8Array, needle: number[], from = 0): number {
  outer: for (let i = from; i <= hay.length - needle.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

const le32 = (n: number) => [n & 255, (n >> 8) & 255, (n >> 16) & 255, (n >>> 24) & 255];

Deno.test("a utf8 offset past the column's bytes is refused naming the column", async () => {
  const bytes = richStream();
  // The offsets of "hello", "world": 0, 5, 10.
  const at = find(bytes, [...le32(0), ...le32(5), ...le32(10)]);
  ok(at > 0);
  bytes.set(le32(100_000), at + 8);
  await encodeAll(bytes, 1000).then(
    () => {
      throw new Error("accepted");
    },
    (e) => {
      ok(e instanceof ColumnarInputError, String(e));
      equal(e.column, "s");
      ok(/value offsets/.test(e.message), e.message);
    },
  );
});

Deno.test("a dictionary index past the dictionary is refused naming the column", async () => {
  const bytes = richStream();
  const at = find(bytes, [...le32(0), ...le32(1), ...le32(0), ...le32(1)]);
  ok(at > 0);
  bytes.set(le32(99), at + 8);
  await encodeAll(bytes, 1000).then(
    () => {
      throw new Error("accepted");
    },
    (e) => {
      ok(e instanceof ColumnarInputError, String(e));
      equal(e.column, "d");
      ok(e.message.includes("dictionary entry 99"), e.message);
    },
  );
});

Deno.test("rows beyond the cap are refused before anything is allocated for them", () => {
  const t = new Table({ s: vectorFromArray(["a"], new Utf8()) });
  throws(() => encodeColumnarBatch(t.batches[0]!, 0), /at most 0 per batch/);
  // A list's values count too: one row of 200 nulls (a null child has no buffer to bound it).
  const nulls = new Table({
    l: vectorFromArray([new Array(200).fill(null)], new List(new Field("item", new Null(), true))),
  });
  throws(() => encodeColumnarBatch(nulls.batches[0]!, 100), (e) => {
    ok(e instanceof ColumnarInputError, String(e));
    ok(/200 values \(at most 100\)/.test(e.message), e.message);
    return true;
  });
  equal(encodeColumnarBatch(nulls.batches[0]!, 200).length > 0, true);
});

Deno.test("mutated IPC streams encode within a bound of their size, or fail at once", async () => {
  const base = richStream();
  const value = fc.oneof(
    fc.constantFrom(0, 1, -1, 2 ** 31 - 1, 2 ** 32 - 1, 2 ** 40, -(2 ** 40), 2 ** 53 - 1),
    fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
  );
  const mutation = fc.record({
    at: fc.integer({ min: 0, max: base.length - 1 }),
    width: fc.constantFrom(1, 4, 8),
    value,
  });
  await fc.assert(
    fc.asyncProperty(fc.array(mutation, { minLength: 1, maxLength: 3 }), async (ms) => {
      const bytes = base.slice();
      const v = new DataView(bytes.buffer);
      for (const m of ms) {
        if (m.at + m.width > bytes.length) continue;
        if (m.width === 1) v.setUint8(m.at, m.value & 255);
        else if (m.width === 4) v.setInt32(m.at, m.value | 0, true);
        else v.setBigInt64(m.at, BigInt(m.value), true);
      }
      let total = 0;
      try {
        total = await encodeAll(bytes, 8 * bytes.length);
      } catch (e) {
        // Any failure is fine here (the server reports it as APPLY_INVALID_INPUT): what matters
        // is that it comes at once, and is an Error with a message.
        ok(e instanceof Error && e.message.length > 0, String(e));
        return;
      }
      // What was encoded is bounded by what was sent (validity and bool values take a byte per
      // bit; headers are small).
      ok(total <= 16 * bytes.length + 64 * 1024, `${total} bytes from ${bytes.length}`);
    }),
    { numRuns: 400 },
  );
});

Deno.test("a schema claiming more fields than its bytes hold is refused before apache-arrow sees it", () => {
  const bytes = richStream();
  // The schema's fields vector: its length is the u32 before the offsets to its 4 fields.
  const meta = bytes.subarray(8, 8 + new DataView(bytes.buffer).getInt32(4, true));
  let hit = 0;
  for (let i = 0; i + 4 <= meta.length; i += 4) {
    if (new DataView(meta.buffer, meta.byteOffset).getUint32(i, true) !== 4) continue;
    const lied = bytes.slice();
    new DataView(lied.buffer).setUint32(8 + i, 0x7fffffff, true);
    try {
      verifyIpcMessages(lied);
    } catch (e) {
      ok(e instanceof IpcMetadataError, String(e));
      hit++;
    }
  }
  ok(hit > 0, "no vector length was found to lie about");
});
