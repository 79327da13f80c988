// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal, ok, rejects, throws } from "node:assert/strict";
import {
  Binary,
  Bool,
  DateDay,
  Field,
  Float16,
  Float64,
  Int64,
  Int8,
  makeData,
  makeVector,
  Null,
  type RecordBatch,
  RecordBatchReader,
  Schema,
  Table,
  tableFromIPC,
  Timestamp,
  TimeUnit,
  Uint64,
  Utf8,
  vectorFromArray,
} from "apache-arrow";
import {
  columnarField,
  ColumnarTypeError,
  decodeColumnarBatch,
  encodeColumnarBatch,
  readColumnarBatch,
  schemaOfHeader,
} from "./_columnar.ts";
import { driverFrameHeader, DriverFrameReader } from "./_apply_driver.ts";
import { IpcStreamPieces } from "./_ipc_pieces.ts";
import fc from "fast-check";
import { FramingError, ipcRecordBatches, isFramingError } from "@valise/protocol";

const batchesOf = (source: AsyncIterable<Uint8Array>) =>
  ipcRecordBatches<RecordBatch>(source, RecordBatchReader);

function join(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

function values(b: RecordBatch, name: string): unknown[] {
  const v = b.getChild(name)!;
  return Array.from({ length: v.length }, (_, i) => {
    const x = v.get(i);
    return x instanceof Uint8Array ? Array.from(x) : x;
  });
}

function sample(): Table {
  return new Table({
    i8: vectorFromArray([1, null, -3, 4, 5], new Int8()),
    i64: vectorFromArray([1n, 2n, null, -(2n ** 63n), 9n], new Int64()),
    u64: vectorFromArray([2n ** 64n - 1n, 0n, 1n, null, 3n], new Uint64()),
    f: vectorFromArray([0.5, null, NaN, -1, 2], new Float64()),
    b: vectorFromArray([true, false, null, true, false], new Bool()),
    s: vectorFromArray(["a", "ü", null, "", "日本語"], new Utf8()),
    bin: vectorFromArray(
      [Uint8Array.of(1), null, new Uint8Array(0), Uint8Array.of(2, 3), null],
      new Binary(),
    ),
    d: vectorFromArray([0, 86_400_000, null, -86_400_000, 1e12], new DateDay()),
    ts: makeVector(makeData({
      type: new Timestamp(TimeUnit.NANOSECOND, "UTC"),
      length: 5,
      nullCount: 0,
      data: BigInt64Array.of(1n, 2n, 3n, -4n, 5n),
    })),
    n: makeVector(makeData({ type: new Null(), length: 5, nullCount: 5 })),
  });
}

Deno.test("a batch survives encode and decode, sliced (non-zero offsets) or not", () => {
  const table = sample();
  const whole = table.batches[0]!;
  for (const batch of [whole, whole.slice(1, 4), whole.slice(3, 5)]) {
    const payload = join(encodeColumnarBatch(batch));
    const { header, body } = readColumnarBatch(payload);
    for (const c of header.columns) {
      for (const [off] of c.buffers) equal(off % 8, 0, `${c.name} buffer at ${off}`);
    }
    equal(body.byteOffset % 8, 0);
    const back = decodeColumnarBatch(payload, batch.schema);
    equal(back.numRows, batch.numRows);
    for (const f of batch.schema.fields) {
      deepEqual(values(back, f.name), values(batch, f.name), f.name);
    }
    deepEqual(
      header.columns.map((c) => c.nulls),
      // Counted, not nullCount: apache-arrow reports -1 for a sliced Null column.
      batch.schema.fields.map((f) => values(batch, f.name).filter((v) => v === null).length),
    );
  }
});

Deno.test("the header names columns and types; the schema is rebuilt from it", () => {
  const payload = join(encodeColumnarBatch(sample().batches[0]!));
  const { header } = readColumnarBatch(payload);
  deepEqual(header.columns.map((c) => c.type), [
    "int8",
    "int64",
    "uint64",
    "float64",
    "bool",
    "utf8",
    "binary",
    "date32",
    "timestamp",
    "null",
  ]);
  equal(header.columns[8]!.unit, "ns");
  equal(header.columns[8]!.tz, "UTC");
  deepEqual(
    schemaOfHeader(header).fields.map((f) => String(f.type)),
    sample().schema.fields.map((f) => String(f.type)),
  );
});

Deno.test("decoding against another schema names the column", () => {
  const t = new Table({
    x: vectorFromArray([1n], new Int64()),
    y: vectorFromArray(["a"], new Utf8()),
  });
  const payload = join(encodeColumnarBatch(t.batches[0]!));
  const wrongType = new Schema([
    new Field("x", new Int64(), true),
    new Field("y", new Int64(), true),
  ]);
  throws(() => decodeColumnarBatch(payload, wrongType), (e) => {
    ok(e instanceof ColumnarTypeError);
    equal(e.column, "y");
    ok(
      e.message.includes('"y" is int64 in the output schema, but the function produced utf8'),
      e.message,
    );
    return true;
  });
  const missing = new Schema([
    new Field("x", new Int64(), true),
    new Field("y", new Utf8(), true),
    new Field("z", new Utf8(), true),
  ]);
  throws(() => decodeColumnarBatch(payload, missing), /"z" of the output schema is missing/);
  const nonNull = new Schema([
    new Field("x", new Int64(), false),
    new Field("y", new Utf8(), true),
  ]);
  const withNull = new Table({
    x: vectorFromArray([null], new Int64()),
    y: vectorFromArray(["a"], new Utf8()),
  });
  throws(
    () => decodeColumnarBatch(join(encodeColumnarBatch(withNull.batches[0]!)), nonNull),
    /"x" is declared non-nullable, but has 1 nulls/,
  );
});

Deno.test("types without a columnar form are refused naming the column", () => {
  throws(() => columnarField(new Field("half", new Float16(), true)), (e) => {
    ok(e instanceof ColumnarTypeError);
    equal(e.column, "half");
    ok(e.message.includes("Float16") && e.message.includes("add pyarrow"), e.message);
    return true;
  });
});

Deno.test("IpcStreamPieces make one valid Arrow IPC stream", () => {
  const t = sample();
  const pieces = new IpcStreamPieces(t.schema);
  const b = t.batches[0]!;
  const stream = join([pieces.start(), pieces.batch(b), pieces.batch(b.slice(0, 2)), pieces.end()]);
  const back = tableFromIPC(stream);
  equal(back.numRows, 7);
  equal(back.batches.length, 2);
  deepEqual(values(back.batches[1]!, "s"), ["a", "ü"]);
  const empty = tableFromIPC(join([pieces.start(), pieces.end()]));
  equal(empty.numRows, 0);
  equal(empty.schema.fields.length, 10);
});

Deno.test("DriverFrameReader reassembles frames split at any byte", () => {
  const payloads = [new Uint8Array(0), Uint8Array.of(1, 2, 3), new Uint8Array(9_000).fill(7)];
  const bytes = join(payloads.flatMap((p, i) => [driverFrameHeader(10 + i, p.length), p]));
  for (const step of [1, 2, 5, 6, 4096, bytes.length]) {
    const r = new DriverFrameReader();
    const got: { type: number; payload: Uint8Array }[] = [];
    for (let off = 0; off < bytes.length; off += step) {
      got.push(...r.push(bytes.subarray(off, off + step)));
    }
    deepEqual(got.map((f) => f.type), [10, 11, 12], `step ${step}`);
    deepEqual(got.map((f) => f.payload.length), payloads.map((p) => p.length));
    deepEqual(Array.from(got[1]!.payload), [1, 2, 3]);
    equal(r.pending, 0);
  }
});

Deno.test("ipcRecordBatches yields each batch as soon as its message is whole", async () => {
  const t = sample();
  const b = t.batches[0]!;
  const pieces = new IpcStreamPieces(t.schema);
  const stream = join([pieces.start(), pieces.batch(b), pieces.batch(b.slice(2, 5)), pieces.end()]);
  for (const step of [1, 7, 64, stream.length]) {
    const chunks = async function* () {
      for (let off = 0; off < stream.length; off += step) yield stream.subarray(off, off + step);
    };
    const rows = [];
    for await (const got of batchesOf(chunks())) rows.push(got.numRows);
    deepEqual(rows, [5, 3], `step ${step}`);
  }
  // Without the end-of-stream marker and with more input pending, the first batch is out.
  let release!: () => void;
  const more = new Promise<void>((r) => release = r);
  async function* open() {
    yield join([pieces.start(), pieces.batch(b)]);
    await more;
  }
  const it = batchesOf(open());
  equal((await it.next()).value?.numRows, 5);
  release();
  equal((await it.next()).done, true);
  await rejects(async () => {
    for await (
      const _ of batchesOf((async function* () {
        yield stream.subarray(0, stream.length - 20);
      })())
    ) { /* drain */ }
  }, /the stream ends inside one/);
});

/** Splits `bytes` at the given cut points (taken modulo its length). */
function chunked(bytes: Uint8Array, cuts: number[]): Uint8Array[] {
  const at = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  return [...at, bytes.length].map((c, i, all) => bytes.subarray(i ? all[i - 1] : 0, c));
}

/** Pushes every chunk, checking what is held after each; the frames, or the framing error. */
function readDriver(r: DriverFrameReader, chunks: Uint8Array[]) {
  const got: { type: number; payload: Uint8Array }[] = [];
  try {
    for (const c of chunks) {
      got.push(...r.push(c));
      ok(r.pending <= r.maxFrameBytes, `holds ${r.pending} bytes, cap ${r.maxFrameBytes}`);
    }
    r.end();
    return got;
  } catch (e) {
    if (!isFramingError(e)) throw e;
    return e;
  }
}

Deno.test("DriverFrameReader gives back what the driver framed, however it is chunked", () => {
  fc.assert(
    fc.property(
      fc.array(fc.tuple(fc.integer({ min: 10, max: 13 }), fc.uint8Array({ maxLength: 500 })), {
        maxLength: 12,
      }),
      fc.array(fc.nat(), { maxLength: 30 }),
      (frames, cuts) => {
        const bytes = join(frames.flatMap(([t, p]) => [driverFrameHeader(t, p.length), p]));
        const got = readDriver(new DriverFrameReader(505), chunked(bytes, cuts));
        ok(Array.isArray(got), String(got));
        deepEqual(got.map((f) => [f.type, [...f.payload]]), frames.map(([t, p]) => [t, [...p]]));
        // Own copies, 8-byte aligned: the columnar decoder puts typed arrays over them.
        for (const f of got) equal(f.payload.byteOffset % 8, 0);
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("DriverFrameReader ends arbitrary and forged bytes with frames or a FramingError, within its cap", () => {
  fc.assert(
    fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 3000 }),
        // A forged header (huge, zero, just above the cap), then a stream of bytes.
        fc.tuple(
          fc.oneof(
            fc.constantFrom(0, 0xfffffff0, 0xffffffff, 1020, 1021),
            fc.nat(0xffffffff),
          ),
          fc.nat(40),
        ).map(([n, k]) => join([driverFrameHeader(2, n - 1), new Uint8Array(k * 100).fill(120)])),
      ),
      fc.array(fc.nat(), { maxLength: 30 }),
      (bytes, cuts) => {
        const got = readDriver(new DriverFrameReader(1024), chunked(bytes, cuts));
        if (Array.isArray(got)) { for (const f of got) ok(f.payload.length + 5 <= 1024); }
        else ok(got instanceof FramingError, String(got));
      },
    ),
    { numRuns: 500 },
  );
  // The attack of issue 10.5: a 4 GiB header fails as it arrives, not after 4 GiB.
  const r = new DriverFrameReader();
  throws(() => r.push(driverFrameHeader(2, 0xfffffff0 - 1)), (e) => {
    ok(e instanceof FramingError && e.code === "TOO_LARGE" && e.size === 0xfffffff0 + 4);
    return true;
  });
});
