// End-to-end Apply RPC: Python functions over Arrow record batches in each session's own
// interpreter and path, over real gRPC (a real server on loopback), with real Python.
import { deepEqual, equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  addArtifactsRequests,
  type ApplyDone,
  type ApplyError,
  ApplyForm,
  type ApplyRequest,
  ApplyRequestSchema,
  type ApplyStart,
  bytesArtifact,
  ConfigRequest_OperationSchema,
  ErrorInfoSchema,
  SparkConnectService,
  WorkerService,
} from "@valise/protocol";
import { serve } from "@valise/server";
import { makeVenvPack } from "./fixtures/envs.ts";
import { needsVenv, pinned } from "./_python.ts";
import { fileArtifact } from "./_util.ts";
import {
  Binary,
  Bool,
  type DataType,
  DateDay,
  Decimal,
  Dictionary,
  Field,
  Float16,
  Float32,
  Float64,
  Int16,
  Int32,
  Int64,
  Int8,
  List,
  makeData,
  makeVector,
  Null,
  RecordBatch,
  Schema,
  Struct,
  Table,
  tableFromIPC,
  tableToIPC,
  Timestamp,
  TimeUnit,
  Uint16,
  Uint32,
  Uint64,
  Uint8,
  Utf8,
  vectorFromArray,
} from "apache-arrow";

type Spark = ReturnType<typeof createClient<typeof SparkConnectService>>;
type Workers = ReturnType<typeof createClient<typeof WorkerService>>;

const SYSTEM_PYTHON = "/usr/bin/python3";
const INTERPRETER_KEY = "spark.sql.execution.pyspark.python";

async function withServer(
  fn: (c: { spark: Spark; workers: Workers; running: () => number }) => Promise<void>,
): Promise<void> {
  const tmp = await Deno.makeTempDir({ prefix: "valise-apply-" });
  const server = await serve({
    dataDir: join(tmp, "data"),
    port: 0,
    workers: {
      allowedInterpreters: [SYSTEM_PYTHON],
      limits: { wallTimeMs: 60_000 },
    },
  });
  const transport = createGrpcTransport({ baseUrl: `http://127.0.0.1:${server.port}` });
  try {
    await fn({
      spark: createClient(SparkConnectService, transport),
      workers: createClient(WorkerService, transport),
      running: () => server.valise.launcher.stats().running,
    });
  } finally {
    await server.close();
    await new Deno.Command("chmod", { args: ["-R", "u+w", tmp] }).output();
    await Deno.remove(tmp, { recursive: true });
  }
}

async function setConf(spark: Spark, sessionId: string, key: string, value: string) {
  await spark.config({
    sessionId,
    operation: create(ConfigRequest_OperationSchema, {
      opType: { case: "set", value: { pairs: [{ key, value }] } },
    }),
  });
}

type StartInit = Partial<Omit<ApplyStart, "$typeName" | "userContext">> & { sessionId: string };

interface Applied {
  table: Table | undefined;
  ipcBytes: number;
  errors: ApplyError[];
  done: ApplyDone | undefined;
  stderr: string;
  failure: ConnectError | undefined;
}

/** Sends `input` split into `chunk`-byte pieces (anywhere, not at message boundaries). */
async function* requests(
  start: StartInit,
  input: Uint8Array | undefined,
  chunk: number,
): AsyncGenerator<ApplyRequest> {
  const init = { ...start };
  if (input && !init.input) init.input = { case: "streamed", value: true };
  yield create(ApplyRequestSchema, { request: { case: "start", value: init } });
  if (!input) return;
  for (let off = 0; off < input.length; off += chunk) {
    yield create(ApplyRequestSchema, {
      request: { case: "arrowIpc", value: input.subarray(off, off + chunk) },
    });
  }
}

async function apply(
  workers: Workers,
  start: StartInit,
  input?: Uint8Array,
  chunk = 777,
): Promise<Applied> {
  const r: Applied = {
    table: undefined,
    ipcBytes: 0,
    errors: [],
    done: undefined,
    stderr: "",
    failure: undefined,
  };
  const pieces: Uint8Array[] = [];
  try {
    for await (const res of workers.apply(requests(start, input, chunk))) {
      const m = res.response;
      if (m.case === "arrowIpc") pieces.push(m.value);
      else if (m.case === "error") r.errors.push(m.value);
      else if (m.case === "done") r.done = m.value;
      else if (m.case === "stderr") r.stderr += new TextDecoder().decode(m.value);
    }
  } catch (e) {
    r.failure = ConnectError.from(e);
  }
  const bytes = new Uint8Array(pieces.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of pieces) {
    bytes.set(p, off);
    off += p.length;
  }
  r.ipcBytes = bytes.length;
  if (bytes.length) r.table = tableFromIPC(bytes);
  return r;
}

function succeeded(r: Applied): Table {
  ok(!r.failure, `${r.failure?.rawMessage}\n${r.errors.map((e) => e.traceback).join("\n")}`);
  ok(r.done, "no done response");
  ok(r.table, "no output");
  return r.table;
}

function errorClassOf(e: ConnectError | undefined): string | undefined {
  return e?.findDetails(ErrorInfoSchema)[0]?.metadata.errorClass;
}

const inline = (code: string, name = "f") => ({
  function: { case: "code" as const, value: code },
  functionName: name,
});

function schemaBytes(schema: Schema): Uint8Array {
  return tableToIPC(new Table(schema), "stream");
}

/** Raw values of a column: bigints for 64-bit and timestamps, bytes as arrays. */
function raw(table: Table, name: string): unknown[] {
  const v = table.getChild(name);
  ok(v, `no column ${name}`);
  const out: unknown[] = [];
  for (const data of v.data) {
    for (let i = 0; i < data.length; i++) {
      if (!data.getValid(i)) out.push(null);
      else if (String(data.type).startsWith("Timestamp")) {
        out.push((data.values as BigInt64Array)[data.offset + i]);
      } else {
        const x = makeVector(data).get(i);
        out.push(x instanceof Uint8Array ? Array.from(x) : x);
      }
    }
  }
  return out;
}

function column(type: DataType, values: unknown[]) {
  return vectorFromArray(values, type);
}

function timestamps(unit: TimeUnit, tz: string | null, values: (bigint | null)[]) {
  const n = values.length;
  const valid = new Uint8Array((n + 7) >> 3);
  values.forEach((v, i) => {
    if (v !== null) valid[i >> 3]! |= 1 << (i & 7);
  });
  return makeVector(makeData({
    type: new Timestamp(unit, tz),
    length: n,
    nullCount: values.filter((v) => v === null).length,
    nullBitmap: valid,
    data: BigInt64Array.from(values, (v) => v ?? 0n),
  }));
}

/** Four rows of every supported type, each with a null. */
// deno-lint-ignore no-explicit-any
function everyType(offset = 0): Record<string, any> {
  const k = BigInt(offset);
  return {
    i8: column(new Int8(), [1 + offset, -128, null, 127]),
    i16: column(new Int16(), [2, -32768, null, 32767]),
    i32: column(new Int32(), [3, -(2 ** 31), null, 2 ** 31 - 1]),
    i64: column(new Int64(), [4n + k, -(2n ** 63n), null, 2n ** 63n - 1n]),
    u8: column(new Uint8(), [0, 255, null, 7]),
    u16: column(new Uint16(), [0, 65535, null, 8]),
    u32: column(new Uint32(), [0, 2 ** 32 - 1, null, 9]),
    u64: column(new Uint64(), [0n, 2n ** 64n - 1n, null, 10n]),
    f32: column(new Float32(), [1.5, -0.25, null, 2 ** 100]),
    f64: column(new Float64(), [Math.PI, -1e300, null, NaN]),
    b: column(new Bool(), [true, false, null, true]),
    s: column(new Utf8(), ["a", "héllo ✓ 日本", null, ""]),
    bin: column(new Binary(), [
      Uint8Array.of(0, 1, 2),
      new Uint8Array(0),
      null,
      Uint8Array.of(255),
    ]),
    d: column(new DateDay(), [Date.UTC(2020, 0, 2), Date.UTC(1969, 11, 31), null, 0]),
    ts_s: timestamps(TimeUnit.SECOND, null, [1577934245n + k, -1n, null, 0n]),
    ts_ms: timestamps(TimeUnit.MILLISECOND, "UTC", [1577934245123n, -1000n, null, 0n]),
    ts_us: timestamps(TimeUnit.MICROSECOND, "Europe/Paris", [1577934245123456n, -1n, null, 0n]),
    // Python's datetime has microseconds: nanoseconds that are whole microseconds survive.
    ts_ns: timestamps(TimeUnit.NANOSECOND, "+05:30", [1577934245123456000n, -1000n, null, 0n]),
    nul: makeVector(makeData({ type: new Null(), length: 4, nullCount: 4 })),
  };
}

function everyTypeTable(): Table {
  const cols = everyType();
  delete (cols as Record<string, unknown>).nul;
  const a = new Table(cols);
  const b = new Table(everyType(1)).select(Object.keys(cols));
  const schema = a.schema;
  const empty = new RecordBatch(
    schema,
    makeData({
      type: new Struct(schema.fields),
      length: 0,
      nullCount: 0,
      children: schema.fields.map((f) => makeData({ type: f.type, length: 0, nullCount: 0 })),
    }),
  );
  return new Table(schema, [...a.batches, empty, ...b.batches]);
}

function assertSameTable(got: Table, want: Table) {
  deepEqual(
    got.schema.fields.map((f) => `${f.name}:${f.type}`),
    want.schema.fields.map((f) => `${f.name}:${f.type}`),
  );
  equal(got.numRows, want.numRows);
  for (const f of want.schema.fields) {
    const g = raw(got, f.name);
    const w = raw(want, f.name);
    equal(g.length, w.length);
    g.forEach((x, i) => {
      if (typeof w[i] === "number" && Number.isNaN(w[i])) ok(Number.isNaN(x), `${f.name}[${i}]`);
      else deepEqual(x, w[i], `${f.name}[${i}]: ${x} != ${w[i]}`);
    });
  }
}

async function pythonHas(python: string, module: string): Promise<boolean> {
  const out = await new Deno.Command(python, {
    args: ["-c", `import ${module}`],
    stdout: "null",
    stderr: "null",
  }).output().catch(() => undefined);
  return out?.success ?? false;
}

Deno.test("every supported type, nulls and an empty batch round-trip through columns form", async () => {
  await withServer(async ({ workers }) => {
    const sessionId = crypto.randomUUID();
    const input = everyTypeTable();
    const bytes = tableToIPC(input, "stream");
    const r = await apply(workers, {
      sessionId,
      ...inline("def f(cols):\n    return cols\n"),
      form: ApplyForm.COLUMNS,
      outputSchema: schemaBytes(input.schema),
    }, bytes);
    const out = succeeded(r);
    assertSameTable(out, input);
    equal(out.batches.length, 3);
    equal(out.batches[1]!.numRows, 0);
    equal(r.done!.rowsIn, 8n);
    equal(r.done!.rowsOut, 8n);
    equal(r.done!.batchesIn, 3n);
    equal(r.done!.batchesOut, 3n);
    equal(r.done!.transport, (await pythonHas("python3", "pyarrow")) ? "pyarrow" : "columnar");
  });
});

Deno.test("columns form hands Python plain lists of the natural Python types", async () => {
  await withServer(async ({ workers }) => {
    const input = new Table(everyType());
    const code = `
import datetime as dt
def f(cols):
    utc = dt.timezone.utc
    assert isinstance(cols, dict) and all(type(v) is list for v in cols.values()), cols
    assert cols["i64"] == [4, -2**63, None, 2**63 - 1], cols["i64"]
    assert cols["u64"][1] == 2**64 - 1
    assert cols["f64"][0] == 3.141592653589793
    assert cols["b"] == [True, False, None, True]
    assert cols["s"] == ["a", "héllo ✓ 日本", None, ""], cols["s"]
    assert cols["bin"] == [b"\\x00\\x01\\x02", b"", None, b"\\xff"]
    assert cols["d"] == [dt.date(2020, 1, 2), dt.date(1969, 12, 31), None, dt.date(1970, 1, 1)]
    assert cols["ts_s"][0] == dt.datetime(2020, 1, 2, 3, 4, 5), cols["ts_s"][0]
    assert cols["ts_ms"][0] == dt.datetime(2020, 1, 2, 3, 4, 5, 123000, tzinfo=utc)
    assert cols["ts_us"][0].utcoffset() == dt.timedelta(hours=1), cols["ts_us"][0]
    assert cols["ts_us"][0] == dt.datetime(2020, 1, 2, 3, 4, 5, 123456, tzinfo=utc)
    assert cols["ts_ns"][0].utcoffset() == dt.timedelta(hours=5, minutes=30)
    assert cols["nul"] == [None] * 4
    print("checked", len(cols), "columns")
    return {"ok": [True]}
`;
    const r = await apply(workers, {
      sessionId: crypto.randomUUID(),
      ...inline(code),
      form: ApplyForm.COLUMNS,
    }, tableToIPC(input, "stream"));
    const out = succeeded(r);
    deepEqual(raw(out, "ok"), [true]);
    // The function's print() went to stderr, not into the output stream.
    ok(r.stderr.includes("checked 19 columns"), r.stderr);
  });
});

Deno.test("without a declared schema the output's types are inferred from the first batch", async () => {
  await withServer(async ({ workers }) => {
    const input = new Table({ x: column(new Int32(), [1, 2, 3]) });
    const code = `
import datetime as dt
def f(cols):
    xs = cols["x"]
    return {
        "n": [x * 10 for x in xs],
        "half": [x / 2 for x in xs],
        "mixed": [1, 2.5, None],
        "s": [str(x) for x in xs],
        "flag": [x % 2 == 0 for x in xs],
        "raw": [bytes([x]) for x in xs],
        "day": [dt.date(2024, 1, x) for x in xs],
        "at": [dt.datetime(2024, 1, x, tzinfo=dt.timezone.utc) for x in xs],
        "none": [None] * len(xs),
    }
`;
    const out = succeeded(
      await apply(
        workers,
        { sessionId: crypto.randomUUID(), ...inline(code) },
        tableToIPC(input, "stream"),
      ),
    );
    deepEqual(Object.fromEntries(out.schema.fields.map((f) => [f.name, String(f.type)])), {
      n: "Int64",
      half: "Float64",
      mixed: "Float64",
      s: "Utf8",
      flag: "Bool",
      raw: "Binary",
      day: "Date32<DAY>",
      at: "Timestamp<MICROSECOND, UTC>",
      none: "Null",
    });
    deepEqual(raw(out, "n"), [10n, 20n, 30n]);
    deepEqual(raw(out, "mixed"), [1, 2.5, null]);
    deepEqual(raw(out, "at"), [1704067200000000n, 1704153600000000n, 1704240000000000n]);
  });
});

Deno.test("pandas form with Debian's python3-pandas as the session's interpreter", async (t) => {
  if (!(await pythonHas(SYSTEM_PYTHON, "pandas"))) {
    await t.step({
      name: `skipped: pandas is not importable by ${SYSTEM_PYTHON}`,
      ignore: true,
      fn() {},
    });
    return;
  }
  await withServer(async ({ spark, workers }) => {
    const sessionId = crypto.randomUUID();
    await setConf(spark, sessionId, INTERPRETER_KEY, SYSTEM_PYTHON);
    const cols = everyType();
    const input = new Table({
      i64: cols.i64,
      i8: cols.i8,
      f64: column(new Float64(), [1.5, -2, null, 4]),
      b: cols.b,
      s: cols.s,
      bin: cols.bin,
      d: cols.d,
      ts_us: cols.ts_us,
      ts_ms: cols.ts_ms,
    });
    const code = `
import pandas as pd
def f(df):
    assert isinstance(df, pd.DataFrame), type(df)
    assert str(df["i64"].dtype) == "Int64", df.dtypes
    assert str(df["ts_us"].dtype) == "datetime64[ns, Europe/Paris]", df.dtypes
    return df
`;
    const r = await apply(workers, {
      sessionId,
      ...inline(code),
      form: ApplyForm.PANDAS,
      outputSchema: schemaBytes(input.schema),
    }, tableToIPC(input, "stream"));
    const out = succeeded(r);
    assertSameTable(out, input);
    ok(r.done!.interpreter === SYSTEM_PYTHON, r.done!.interpreter);

    // Arithmetic, with the output types inferred from the DataFrame's dtypes.
    const arith = await apply(workers, {
      sessionId,
      ...inline(
        "def f(df):\n    return pd.DataFrame({'y': df['x'] * 2 + 1, 'z': df['x'] / 4})\nimport pandas as pd\n",
      ),
      form: ApplyForm.PANDAS,
    }, tableToIPC(new Table({ x: column(new Int64(), [1n, 2n, 3n]) }), "stream"));
    const a = succeeded(arith);
    equal(String(a.schema.fields[0]!.type), "Int64");
    deepEqual(raw(a, "y"), [3n, 5n, 7n]);
    deepEqual(raw(a, "z"), [0.25, 0.5, 0.75]);
  });
});

/**
 * A session whose interpreter is a venv-pack environment added as `archives/env.tar.gz#env`,
 * the way users bring pyarrow (built once, then from the fixture cache).
 */
async function sessionWithEnv(
  spark: Spark,
  requirements: string[],
): Promise<{ sessionId: string; interpreter: string }> {
  const out = await Deno.makeTempDir({ prefix: "valise-apply-env-" });
  try {
    const { archive } = await makeVenvPack(out, { creator: "uv", requirements });
    const sessionId = crypto.randomUUID();
    await spark.addArtifacts(
      addArtifactsRequests([fileArtifact("archives/env.tar.gz#env", archive)], { sessionId }),
    );
    await setConf(spark, sessionId, INTERPRETER_KEY, "env/bin/python");
    return { sessionId, interpreter: "env/bin/python" };
  } finally {
    await Deno.remove(out, { recursive: true });
  }
}

Deno.test(
  needsVenv("pyarrow form without pyarrow in the environment is FAILED_PRECONDITION naming it"),
  async () => {
    await withServer(async ({ spark, workers }) => {
      const { sessionId, interpreter } = await sessionWithEnv(spark, []);
      const r = await apply(workers, {
        sessionId,
        ...inline("def f(batch):\n    return batch\n"),
        form: ApplyForm.PYARROW,
      }, tableToIPC(new Table({ x: column(new Int64(), [1n]) }), "stream"));
      equal(r.failure?.code, Code.FailedPrecondition, r.failure?.rawMessage);
      equal(errorClassOf(r.failure), "APPLY_PYARROW_UNAVAILABLE");
      ok(r.failure!.rawMessage.includes(`/${interpreter}`), r.failure!.rawMessage);
      ok(r.failure!.rawMessage.includes("add pyarrow"), r.failure!.rawMessage);
    });
  },
);

Deno.test(
  needsVenv("pyarrow form: Arrow IPC reaches pyarrow in a venv-pack environment untouched"),
  async (t) => {
    await withServer(async ({ spark, workers }) => {
      const { sessionId, interpreter } = await sessionWithEnv(spark, [pinned("pyarrow")]);
      const start = { sessionId, form: ApplyForm.PYARROW };

      await t.step("every type, nulls and an empty batch, as RecordBatches", async () => {
        const input = everyTypeTable();
        const r = await apply(workers, {
          ...start,
          ...inline(
            "import pyarrow as pa\n" +
              "def f(batch):\n    assert isinstance(batch, pa.RecordBatch), type(batch)\n" +
              "    return batch\n",
          ),
        }, tableToIPC(input, "stream"));
        assertSameTable(succeeded(r), input);
        equal(r.done!.transport, "pyarrow");
        ok(r.done!.interpreter.endsWith(`/${interpreter}`), r.done!.interpreter);
        equal(r.done!.batchesIn, BigInt(input.batches.length));
        equal(r.done!.rowsOut, BigInt(input.numRows));
      });

      await t.step(
        "types and metadata the columnar encoding cannot carry pass both ways",
        async () => {
          // Decimal, list, struct and dictionary columns, and schema/field metadata: the columnar
          // transport refuses the types and drops the metadata, so what comes back shows that
          // the IPC stream went through as written, into pyarrow and out of it.
          const price = makeVector(makeData({
            type: new Decimal(2, 10, 128),
            length: 2,
            nullCount: 0,
            data: Uint32Array.of(1234, 0, 0, 0, (-5) >>> 0, 0xffffffff, 0xffffffff, 0xffffffff),
          }));
          const tags = vectorFromArray([[1, 2, 3], []], new List(new Field("item", new Int32())));
          const point = vectorFromArray(
            [{ x: 1.5, y: -2 }, { x: 0, y: 8 }],
            new Struct([new Field("x", new Float64()), new Field("y", new Float64())]),
          );
          const kind = vectorFromArray(["a", "b"], new Dictionary(new Utf8(), new Int32()));
          const base = new Table({ price, tags, point, kind });
          const schema = new Schema(
            base.schema.fields.map((f) =>
              f.name === "price" ? f.clone({ metadata: new Map([["unit", "EUR"]]) }) : f
            ),
            new Map([["origin", "valise-test"]]),
          );
          const input = new Table(schema, base.batches.map((b) => new RecordBatch(schema, b.data)));
          const code = `
import decimal
import pyarrow as pa, pyarrow.compute as pc
def f(batch):
    s = batch.schema
    assert s.metadata == {b'origin': b'valise-test'}, s.metadata
    assert s.field('price').metadata == {b'unit': b'EUR'}, s.field('price').metadata
    assert s.field('price').type == pa.decimal128(10, 2), s.field('price').type
    assert pa.types.is_list(s.field('tags').type), s.field('tags').type
    assert pa.types.is_struct(s.field('point').type), s.field('point').type
    assert pa.types.is_dictionary(s.field('kind').type), s.field('kind').type
    prices = batch.column('price').to_pylist()
    assert prices == [decimal.Decimal('12.34'), decimal.Decimal('-0.05')], prices
    assert batch.column('tags').to_pylist() == [[1, 2, 3], []]
    n = pc.list_value_length(batch.column('tags'))
    out = batch.append_column('n', n)
    return out.replace_schema_metadata({'origin': 'valise-test', 'via': pa.__version__})
`;
          const r = await apply(
            workers,
            { ...start, ...inline(code) },
            tableToIPC(input, "stream"),
          );
          const out = succeeded(r);
          equal(r.done!.transport, "pyarrow");
          deepEqual(
            out.schema.fields.map((f) => `${f.name}:${f.type}`),
            [
              "price:Decimal[10e+2]",
              "tags:List<Int32>",
              "point:Struct<{x:Float64, y:Float64}>",
              "kind:Dictionary<Int32, Utf8>",
              "n:Int32",
            ],
          );
          equal(out.schema.metadata.get("origin"), "valise-test");
          equal(out.schema.metadata.get("via"), pinned("pyarrow").split("==")[1]);
          deepEqual(raw(out, "n"), [3, 0]);
          deepEqual(raw(out, "kind"), ["a", "b"]);
          deepEqual(out.getChild("point")!.toArray().map((p: { x: number }) => p.x), [1.5, 0]);
          deepEqual(Array.from(out.getChild("price")!.data[0]!.values as Uint32Array), [
            1234,
            0,
            0,
            0,
            (-5) >>> 0,
            0xffffffff,
            0xffffffff,
            0xffffffff,
          ]);
        },
      );

      await t.step("a Table, None, or an iterable of them", async () => {
        const input = new Table({ x: column(new Int64(), [1n, 2n, 3n]) });
        const twice = new Table(input.schema, [...input.batches, ...input.batches]);
        const code = `
import pyarrow as pa
calls = 0
def f(batch):
    global calls
    calls += 1
    if calls == 1:
        return None
    yield pa.Table.from_batches([batch])
    yield pa.record_batch({'x': pa.array([0], pa.int64())})
`;
        const r = await apply(workers, { ...start, ...inline(code) }, tableToIPC(twice, "stream"));
        const out = succeeded(r);
        deepEqual(raw(out, "x"), [1n, 2n, 3n, 0n]);
        equal(r.done!.batchesIn, 2n);
        equal(r.done!.batchesOut, 2n);
      });

      await t.step(
        "a declared schema is enforced by casting, and a misfit names the column",
        async () => {
          const input = tableToIPC(new Table({ x: column(new Int64(), [1n, 2n]) }), "stream");
          const outputSchema = schemaBytes(
            new Schema([new Field("x", new Int64(), true), new Field("y", new Float64(), true)]),
          );
          const cast = await apply(workers, {
            ...start,
            ...inline(
              "import pyarrow as pa\ndef f(b):\n" +
                "    return pa.record_batch({'x': b.column('x').cast(pa.int32()), " +
                "'y': pa.array([1, 2], pa.int8())})\n",
            ),
            outputSchema,
          }, input);
          const out = succeeded(cast);
          deepEqual(out.schema.fields.map((f) => `${f.name}:${f.type}`), ["x:Int64", "y:Float64"]);
          deepEqual(raw(out, "y"), [1, 2]);
          const misfit = await apply(workers, {
            ...start,
            ...inline(
              "import pyarrow as pa\ndef f(b):\n" +
                "    return pa.record_batch({'x': b.column('x'), 'y': pa.array(['one', 'two'])})\n",
            ),
            outputSchema,
          }, input);
          equal(misfit.failure?.code, Code.InvalidArgument, misfit.failure?.rawMessage);
          equal(errorClassOf(misfit.failure), "APPLY_OUTPUT_TYPE_MISMATCH");
          ok(
            misfit.failure!.rawMessage.includes("column 'y' is double"),
            misfit.failure!.rawMessage,
          );
        },
      );

      await t.step("columns form in the same environment goes through pyarrow too", async () => {
        const input = new Table({ x: column(new Int64(), [5n, 6n]) });
        const r = await apply(workers, {
          sessionId,
          ...inline("def f(c):\n    return {'y': [v * 2 for v in c['x']]}\n"),
        }, tableToIPC(input, "stream"));
        deepEqual(raw(succeeded(r), "y"), [10n, 12n]);
        equal(r.done!.transport, "pyarrow");
      });
    });
  },
);

Deno.test("input from a cache/<sha256> artifact uploaded the way PySpark does", async () => {
  await withServer(async ({ spark, workers }) => {
    const sessionId = crypto.randomUUID();
    const n = 50_000;
    const input = new Table({
      id: column(new Int64(), Array.from({ length: n }, (_, i) => BigInt(i))),
      v: column(new Float64(), Array.from({ length: n }, (_, i) => i / 2)),
    });
    const bytes = tableToIPC(input, "stream");
    const sha = Array.from(
      new Uint8Array(await crypto.subtle.digest("SHA-256", new Uint8Array(bytes))),
      (b) => b.toString(16).padStart(2, "0"),
    ).join("");
    const name = `cache/${sha}`;
    await spark.addArtifacts(addArtifactsRequests([bytesArtifact(name, bytes)], { sessionId }));
    const r = await apply(workers, {
      sessionId,
      ...inline("def f(c):\n    return {'s': [sum(c['v'])], 'n': [len(c['id'])]}\n"),
      input: { case: "cacheArtifact", value: name },
    });
    const out = succeeded(r);
    deepEqual(raw(out, "n").reduce((a, b) => (a as bigint) + (b as bigint), 0n), BigInt(n));
    equal(r.done!.rowsIn, BigInt(n));

    const missing = await apply(workers, {
      sessionId,
      ...inline("def f(c):\n    return c\n"),
      input: { case: "cacheArtifact", value: `cache/${"0".repeat(64)}` },
    });
    equal(missing.failure?.code, Code.NotFound);
    equal(errorClassOf(missing.failure), "APPLY_INPUT_NOT_FOUND");
  });
});

Deno.test("a function that raises: an error response with the Python traceback, then APPLY_FUNCTION_FAILED", async () => {
  await withServer(async ({ workers }) => {
    const code = `
def helper(x):
    raise ValueError("bad row %d" % x)

def f(cols):
    return {"y": [helper(x) for x in cols["x"]]}
`;
    const r = await apply(
      workers,
      { sessionId: crypto.randomUUID(), ...inline(code) },
      tableToIPC(new Table({ x: column(new Int64(), [7n]) }), "stream"),
    );
    equal(r.failure?.code, Code.Unknown, r.failure?.rawMessage);
    equal(errorClassOf(r.failure), "APPLY_FUNCTION_FAILED");
    ok(r.failure!.rawMessage.includes("ValueError: bad row 7"), r.failure!.rawMessage);
    equal(r.errors.length, 1);
    const e = r.errors[0]!;
    equal(e.errorClass, "APPLY_FUNCTION_FAILED");
    equal(e.message, "ValueError: bad row 7");
    ok(e.traceback.startsWith("Traceback (most recent call last):"), e.traceback);
    ok(e.traceback.includes('raise ValueError("bad row %d" % x)'), e.traceback);
    ok(e.traceback.includes("in helper"), e.traceback);
    ok(!e.traceback.includes("<valise-apply>"), e.traceback);
    equal(r.done, undefined);
  });
});

Deno.test("a function in one session's own pyfile cannot be imported by another session", async () => {
  await withServer(async ({ spark, workers }) => {
    const a = crypto.randomUUID();
    const b = crypto.randomUUID();
    await spark.addArtifacts(addArtifactsRequests([
      bytesArtifact(
        "pyfiles/mylib_apply.py",
        new TextEncoder().encode(
          "def double(cols):\n    return {'y': [x * 2 for x in cols['x']]}\n",
        ),
      ),
    ], { sessionId: a }));
    const input = tableToIPC(new Table({ x: column(new Int64(), [1n, 2n]) }), "stream");
    const start = { function: { case: "moduleFunction" as const, value: "mylib_apply:double" } };
    const ra = await apply(workers, { sessionId: a, ...start }, input);
    deepEqual(raw(succeeded(ra), "y"), [2n, 4n]);
    const rb = await apply(workers, { sessionId: b, ...start }, input);
    equal(rb.failure?.code, Code.InvalidArgument, rb.failure?.rawMessage);
    equal(errorClassOf(rb.failure), "APPLY_FUNCTION_NOT_FOUND");
    ok(rb.failure!.rawMessage.includes("No module named 'mylib_apply'"), rb.failure!.rawMessage);
  });
});

Deno.test("output that does not fit the declared schema is an error naming the column", async () => {
  await withServer(async ({ workers }) => {
    const sessionId = crypto.randomUUID();
    const input = tableToIPC(new Table({ x: column(new Int64(), [1n, 2n]) }), "stream");
    const schema = schemaBytes(
      new Schema([new Field("x", new Int64(), true), new Field("label", new Utf8(), true)]),
    );
    const wrongType = await apply(workers, {
      sessionId,
      ...inline("def f(c):\n    return {'x': c['x'], 'label': [1, 'two']}\n"),
      outputSchema: schema,
    }, input);
    equal(wrongType.failure?.code, Code.InvalidArgument, wrongType.failure?.rawMessage);
    equal(errorClassOf(wrongType.failure), "APPLY_OUTPUT_TYPE_MISMATCH");
    ok(
      wrongType.failure!.rawMessage.includes("column 'label' is utf8, but row 0 holds int 1"),
      wrongType.failure!.rawMessage,
    );

    const missing = await apply(workers, {
      sessionId,
      ...inline("def f(c):\n    return {'x': c['x']}\n"),
      outputSchema: schema,
    }, input);
    equal(errorClassOf(missing.failure), "APPLY_OUTPUT_TYPE_MISMATCH");
    ok(missing.failure!.rawMessage.includes("'label'"), missing.failure!.rawMessage);

    // Inferred from the first batch, then fixed: a later batch must keep the types.
    const two = new Table({ x: column(new Int64(), [1n]) });
    const twoBatches = new Table(two.schema, [...two.batches, ...two.batches]);
    const drift = await apply(workers, {
      sessionId,
      ...inline(
        "n = 0\ndef f(c):\n    global n\n    n += 1\n    return {'v': [1] if n == 1 else ['one']}\n",
      ),
    }, tableToIPC(twoBatches, "stream"));
    equal(errorClassOf(drift.failure), "APPLY_OUTPUT_TYPE_MISMATCH");
    ok(
      drift.failure!.rawMessage.includes("column 'v' is int64, but row 0 holds str 'one'"),
      drift.failure!.rawMessage,
    );
  });
});

Deno.test("an input type without a columnar form is INVALID_ARGUMENT naming the column", async (t) => {
  if (await pythonHas("python3", "pyarrow")) {
    await t.step({
      name: "skipped: pyarrow is importable, every type passes",
      ignore: true,
      fn() {},
    });
    return;
  }
  await withServer(async ({ workers }) => {
    const half = makeVector(makeData({
      type: new Float16(),
      length: 1,
      nullCount: 0,
      data: new Uint16Array(1),
    }));
    const r = await apply(workers, {
      sessionId: crypto.randomUUID(),
      ...inline("def f(c):\n    return c\n"),
    }, tableToIPC(new Table({ half }), "stream"));
    equal(r.failure?.code, Code.InvalidArgument, r.failure?.rawMessage);
    equal(errorClassOf(r.failure), "APPLY_UNSUPPORTED_TYPE");
    ok(r.failure!.rawMessage.includes('"half"'), r.failure!.rawMessage);
    ok(r.failure!.rawMessage.includes("add pyarrow"), r.failure!.rawMessage);
  });
});

Deno.test("many batches stream through, one call per batch, in order", async () => {
  await withServer(async ({ workers }) => {
    const batches = 120;
    const rows = 5000;
    const tables = Array.from({ length: batches }, (_, b) =>
      new Table({
        x: column(new Int64(), Array.from({ length: rows }, (_, i) => BigInt(b * rows + i))),
      }));
    const input = new Table(tables[0]!.schema, tables.flatMap((t) => t.batches));
    const r = await apply(
      workers,
      {
        sessionId: crypto.randomUUID(),
        ...inline(
          "calls = 0\ndef f(c):\n    global calls\n    calls += 1\n    return {'call': [calls], 'first': c['x'][:1], 'sum': [sum(c['x'])]}\n",
        ),
        timeoutMs: 60_000,
      },
      tableToIPC(input, "stream"),
      1 << 16,
    );
    const out = succeeded(r);
    equal(out.numRows, batches);
    deepEqual(raw(out, "call"), Array.from({ length: batches }, (_, i) => BigInt(i + 1)));
    deepEqual(raw(out, "first"), Array.from({ length: batches }, (_, b) => BigInt(b * rows)));
    equal(r.done!.batchesIn, BigInt(batches));
  });
});

Deno.test("malformed requests are INVALID_ARGUMENT", async () => {
  await withServer(async ({ workers }) => {
    const sessionId = crypto.randomUUID();
    const noFn = await apply(workers, { sessionId }, new Uint8Array(8));
    equal(noFn.failure?.code, Code.InvalidArgument);
    equal(errorClassOf(noFn.failure), "APPLY_INVALID_REQUEST");
    const badName = await apply(workers, {
      sessionId,
      function: { case: "moduleFunction", value: "no colon here" },
      input: { case: "streamed", value: true },
    });
    equal(errorClassOf(badName.failure), "APPLY_INVALID_REQUEST");
    const garbage = await apply(workers, {
      sessionId,
      ...inline("def f(c):\n    return c\n"),
    }, new TextEncoder().encode("this is not arrow at all, not even close"));
    equal(garbage.failure?.code, Code.InvalidArgument, garbage.failure?.rawMessage);
  });
});

Deno.test("a worker past its time limit is APPLY_TIMEOUT; a cancelled call kills its worker", async () => {
  await withServer(async ({ workers, running }) => {
    const sessionId = crypto.randomUUID();
    const input = tableToIPC(new Table({ x: column(new Int64(), [1n]) }), "stream");
    const slow = await apply(workers, {
      sessionId,
      ...inline("import time\ndef f(c):\n    time.sleep(60)\n"),
      timeoutMs: 300,
    }, input);
    equal(slow.failure?.code, Code.DeadlineExceeded, slow.failure?.rawMessage);
    equal(errorClassOf(slow.failure), "APPLY_TIMEOUT");

    // The input never ends: the function has its first batch and waits for more.
    const abort = new AbortController();
    async function* endless(): AsyncGenerator<ApplyRequest> {
      yield* requests(
        { sessionId, ...inline("def f(c):\n    print('got', flush=True)\n    return c\n") },
        input.subarray(0, input.length - 8),
        1 << 16,
      );
      await new Promise(() => {});
    }
    let printed = false;
    try {
      for await (const res of workers.apply(endless(), { signal: abort.signal })) {
        if (res.response.case === "stderr") {
          printed = true;
          equal(running(), 1);
          abort.abort();
        }
      }
    } catch (e) {
      equal(ConnectError.from(e).code, Code.Canceled);
    }
    ok(printed);
    for (let i = 0; i < 200 && running() > 0; i++) await new Promise((r) => setTimeout(r, 25));
    equal(running(), 0, "the worker outlived its cancelled call");
  });
});
