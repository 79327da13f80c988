// Every common Arrow type through Apply's columnar transport (no pyarrow in the worker), in
// `columns` and `pandas` form, both ways, checked against real pyarrow (the project venv): the
// input is written by pyarrow, the values the function sees are compared with pyarrow's own
// `to_pydict()`, and the output is read back by pyarrow and compared with the input.
import { deepEqual, equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { type ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  ApplyForm,
  type ApplyRequest,
  ApplyRequestSchema,
  type ApplyStart,
  ConfigRequest_OperationSchema,
  SparkConnectService,
  WorkerService,
} from "@valise/protocol";
import { serve } from "@valise/server";
import { needsVenv, VENV_PYTHON } from "./_python.ts";

const SYSTEM_PYTHON = "/usr/bin/python3"; // has pandas, not pyarrow

/** Turns a value into JSON both sides agree on (same source in the worker and in pyarrow's). */
const CANON = `
import datetime, decimal
def canon(v):
    if v is None:
        return None
    if isinstance(v, dict):
        return {str(k): canon(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [canon(x) for x in v]
    if isinstance(v, datetime.datetime):
        return ['datetime', v.isoformat()]
    if isinstance(v, (datetime.date, datetime.time)):
        return [type(v).__name__, v.isoformat()]
    if isinstance(v, datetime.timedelta):
        return ['timedelta', v // datetime.timedelta(microseconds=1)]
    if isinstance(v, decimal.Decimal):
        return ['decimal', str(v)]
    if isinstance(v, bytes):
        return ['bytes', v.hex()]
    return v
`;

/** Two batches of one column per type, with nulls; written by pyarrow. */
const MAKE_INPUT = CANON + `
import sys, json, pyarrow as pa
D, dt = decimal.Decimal, datetime
paris = 'Europe/Paris'
def batch(k):
    o = 10 * k
    cols = {
        'dict_utf8': pa.array(['a', 'b', None, 'a'] if k == 0 else ['c', None, 'c', 'd']).dictionary_encode(),
        'dict_int8_idx': pa.DictionaryArray.from_arrays(pa.array([0, 1, None, 1], pa.int8()), pa.array(['x', 'y'])),
        'dict_uint16_idx': pa.DictionaryArray.from_arrays(pa.array([1, 0, 0, None], pa.uint16()), pa.array([10 + o, 20], pa.int64())),
        'dict_int64_idx': pa.DictionaryArray.from_arrays(pa.array([2, None, 0, 1], pa.int64()), pa.array([1.5, -2.0, 3.25])),
        'large_utf8': pa.array(['x', None, 'ü' * (k + 1), ''], pa.large_string()),
        'large_binary': pa.array([b'x', None, b'', b'\\x00\\xff'], pa.large_binary()),
        'list': pa.array([[1, 2 + o], None, [], [None, 3]], pa.list_(pa.int64())),
        'large_list': pa.array([['a'], None, [], ['b', None]], pa.large_list(pa.string())),
        'fixed_list': pa.array([[1, 2], None, [3, o], [None, 5]], pa.list_(pa.int32(), 2)),
        'struct': pa.array([{'a': 1, 'b': 'x'}, None, {'a': None, 'b': 'y'}, {'a': 2 + o, 'b': None}],
                           pa.struct([('a', pa.int64()), ('b', pa.string())])),
        'list_of_struct': pa.array([[{'v': 1.5, 'tags': ['p', None]}], None, [], [{'v': None, 'tags': None}]],
                                   pa.list_(pa.struct([('v', pa.float64()), ('tags', pa.list_(pa.string()))]))),
        'map': pa.array([[('k', 1)], None, [], [('a', None), ('b', 2 + o)]], pa.map_(pa.string(), pa.int64())),
        'decimal128': pa.array([D('1.23'), None, D('-4.50'), D('99999999.99')], pa.decimal128(10, 2)),
        'decimal256': pa.array([D('12345678901234567890123456789012345.12345'), None, D('-0.00001'), D(o)], pa.decimal256(40, 5)),
        'ts_tz': pa.array([dt.datetime(2024, 3, 31, 1, 30, o), None, dt.datetime(1960, 1, 1), dt.datetime(2024, 7, 1, 12)],
                          pa.timestamp('us', tz=paris)),
        'ts_ns_utc': pa.array([1_700_000_000_000_000_000 + o * 1000, None, 0, -1_000], pa.timestamp('ns', tz='UTC')),
        'time32_s': pa.array([0, None, 86399, 3600 + o], pa.time32('s')),
        'time32_ms': pa.array([1, None, 86399999, 45296789], pa.time32('ms')),
        'time64_us': pa.array([1, None, 86399999999, 45296789012], pa.time64('us')),
        'time64_ns': pa.array([1000, None, 86399999999000, 45296789012000], pa.time64('ns')),
        'duration_s': pa.array([1, None, -5, 86400 * 400], pa.duration('s')),
        'duration_ms': pa.array([1, None, -5, o], pa.duration('ms')),
        'duration_us': pa.array([1, None, -5, o], pa.duration('us')),
        'duration_ns': pa.array([1000, None, -5000, 3_000_000], pa.duration('ns')),
        'interval_mdn': pa.array([pa.MonthDayNano([1, 2, 3 + o]), None, pa.MonthDayNano([-1, 0, -7]), pa.MonthDayNano([0, 0, 0])],
                                 pa.month_day_nano_interval()),
        'fixed_binary': pa.array([b'abc', None, b'\\x00\\x01\\x02', b'xyz'], pa.binary(3)),
        'date64': pa.array([dt.date(2020, 1, 1), None, dt.date(1960, 5, 5), dt.date(2000, 2, 29)], pa.date64()),
        'date32': pa.array([dt.date(2020, 1, 1), None, dt.date(1, 1, 1), dt.date(9999, 12, 31)], pa.date32()),
        'int64': pa.array([1, None, -(2 ** 63), 2 ** 63 - 1], pa.int64()),
        'utf8': pa.array(['plain', None, '', 'é'], pa.string()),
    }
    return pa.RecordBatch.from_pydict(cols)
batches = [batch(0), batch(1), batch(0).slice(0, 0)]
with open(sys.argv[1], 'wb') as f:
    with pa.ipc.new_stream(f, batches[0].schema) as w:
        for b in batches:
            w.write_batch(b)
with open(sys.argv[2], 'wb') as f:
    pa.ipc.new_stream(f, batches[0].schema).close()
with open(sys.argv[3], 'w') as f:
    json.dump([canon(b.to_pydict()) for b in batches], f)
`;

/** Reads the output with pyarrow and compares it with the input: schema and every value. */
const CHECK_OUTPUT = `
import sys, pyarrow as pa
inp = pa.ipc.open_stream(open(sys.argv[1], 'rb').read()).read_all()
out = pa.ipc.open_stream(open(sys.argv[2], 'rb').read()).read_all()
if not out.schema.equals(inp.schema):
    print('schema differs:\\n%s\\n---\\n%s' % (out.schema, inp.schema))
    sys.exit(1)
for name in inp.column_names:
    a, b = inp.column(name).to_pylist(), out.column(name).to_pylist()
    if a != b:
        print('column %s differs: %r != %r' % (name, b, a))
        sys.exit(1)
print('ok', out.num_rows)
`;

/** Prints the types pyarrow reads from an output stream, one `name: type` per line. */
const TYPES_OF = `
import sys, pyarrow as pa
t = pa.ipc.open_stream(open(sys.argv[1], 'rb').read()).read_all()
for f in t.schema:
    print('%s: %s' % (f.name, f.type))
print('values', t.to_pylist())
`;

async function py(python: string, code: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(python, { args: ["-c", code, ...args], stderr: "piped" })
    .output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(`${python} failed: ${text}${new TextDecoder().decode(out.stderr)}`);
  }
  return text;
}

type Start = Partial<Omit<ApplyStart, "$typeName" | "userContext">> & { sessionId: string };

async function* requests(start: Start, input: Uint8Array): AsyncGenerator<ApplyRequest> {
  yield create(ApplyRequestSchema, {
    request: { case: "start", value: { ...start, input: { case: "streamed", value: true } } },
  });
  for (let off = 0; off < input.length; off += 1000) {
    yield create(ApplyRequestSchema, {
      request: { case: "arrowIpc", value: input.subarray(off, off + 1000) },
    });
  }
}

interface Result {
  output: Uint8Array;
  stderr: string;
  transport: string;
}

async function apply(
  workers: ReturnType<typeof createClient<typeof WorkerService>>,
  start: Start,
  input: Uint8Array,
): Promise<Result> {
  const parts: Uint8Array[] = [];
  let stderr = "";
  let transport = "";
  try {
    for await (const r of workers.apply(requests(start, input))) {
      const m = r.response;
      if (m.case === "arrowIpc") parts.push(m.value);
      else if (m.case === "stderr") stderr += new TextDecoder().decode(m.value);
      else if (m.case === "done") transport = m.value.transport;
    }
  } catch (e) {
    throw new Error(`${(e as ConnectError).rawMessage ?? e}\n${stderr}`);
  }
  const output = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    output.set(p, off);
    off += p.length;
  }
  return { output, stderr, transport };
}

Deno.test({
  ...needsVenv(
    "every common Arrow type goes through the columnar transport in columns and pandas form, both ways, as real pyarrow reads it",
  ),
  async fn(t) {
    const tmp = await Deno.makeTempDir({ prefix: "valise-apply-types-" });
    const server = await serve({
      dataDir: join(tmp, "data"),
      port: 0,
      workers: { allowedInterpreters: [SYSTEM_PYTHON], limits: { wallTimeMs: 60_000 } },
    });
    const transport = createGrpcTransport({ baseUrl: `http://127.0.0.1:${server.port}` });
    const workers = createClient(WorkerService, transport);
    const spark = createClient(SparkConnectService, transport);
    try {
      const [inputPath, schemaPath, expectedPath, outPath] = ["in", "schema", "exp", "out"].map((
        n,
      ) => join(tmp, n));
      await py(VENV_PYTHON, MAKE_INPUT, [inputPath!, schemaPath!, expectedPath!]);
      const input = await Deno.readFile(inputPath!);
      const schema = await Deno.readFile(schemaPath!);
      const expected = JSON.parse(await Deno.readTextFile(expectedPath!));
      const seen = (stderr: string) =>
        stderr.split("\n").filter((l) => l.startsWith("SEEN ")).map((l) => JSON.parse(l.slice(5)));

      await t.step("columns form: the function sees pyarrow's to_pydict() values", async () => {
        const r = await apply(workers, {
          sessionId: crypto.randomUUID(),
          function: {
            case: "code",
            value: CANON +
              "import sys, json\ndef f(c):\n" +
              "    sys.stderr.write('SEEN ' + json.dumps(canon(c)) + '\\n')\n    return c\n",
          },
          functionName: "f",
          form: ApplyForm.COLUMNS,
          outputSchema: schema,
        }, input);
        equal(r.transport, "columnar");
        deepEqual(seen(r.stderr), expected);
        await Deno.writeFile(outPath!, r.output);
        ok((await py(VENV_PYTHON, CHECK_OUTPUT, [inputPath!, outPath!])).startsWith("ok 8"));
      });

      await t.step("columns form with 2 workers: the same table, in order", async () => {
        const r = await apply(workers, {
          sessionId: crypto.randomUUID(),
          function: { case: "code", value: "def f(c):\n    return c\n" },
          functionName: "f",
          form: ApplyForm.COLUMNS,
          outputSchema: schema,
          parallelism: 2,
        }, input);
        equal(r.transport, "columnar");
        await Deno.writeFile(outPath!, r.output);
        ok((await py(VENV_PYTHON, CHECK_OUTPUT, [inputPath!, outPath!])).startsWith("ok 8"));
      });

      await t.step("pandas form without pyarrow: a DataFrame back to the same table", async () => {
        const sessionId = crypto.randomUUID();
        await spark.config({
          sessionId,
          operation: create(ConfigRequest_OperationSchema, {
            opType: {
              case: "set",
              value: {
                pairs: [{ key: "spark.sql.execution.pyspark.python", value: SYSTEM_PYTHON }],
              },
            },
          }),
        });
        const r = await apply(workers, {
          sessionId,
          function: {
            case: "code",
            value: "import sys\ndef f(df):\n" +
              "    sys.stderr.write('DTYPES %s\\n' % dict((k, str(v)) for k, v in df.dtypes.items()))\n" +
              "    return df\n",
          },
          functionName: "f",
          form: ApplyForm.PANDAS,
          outputSchema: schema,
        }, input);
        equal(r.transport, "columnar");
        // As pyarrow's to_pandas(): dictionaries are categoricals, durations timedelta64.
        ok(r.stderr.includes("'dict_utf8': 'category'"), r.stderr);
        ok(r.stderr.includes("'duration_s': 'timedelta64[ns]'"), r.stderr);
        await Deno.writeFile(outPath!, r.output);
        ok((await py(VENV_PYTHON, CHECK_OUTPUT, [inputPath!, outPath!])).startsWith("ok 8"));
      });

      await t.step("without a declared schema the types are inferred from the values", async () => {
        const r = await apply(workers, {
          sessionId: crypto.randomUUID(),
          function: {
            case: "code",
            value: "import datetime as dt, decimal\ndef f(c):\n" +
              "    n = len(c['int64'])\n" +
              "    return {'t': [dt.time(1, 2, 3, 4)] * n, 'd': [dt.timedelta(days=1, microseconds=5)] * n,\n" +
              "            'dec': ([decimal.Decimal('-12.345')] + [decimal.Decimal('1.5')] * n)[:n],\n" +
              "            'l': ([[1, None], []] + [None] * n)[:n],\n" +
              "            's': [{'a': 'x', 'b': 1.5}] * n, 'day': [dt.date(2024, 2, 29)] * n}\n",
          },
          functionName: "f",
          form: ApplyForm.COLUMNS,
        }, input);
        await Deno.writeFile(outPath!, r.output);
        const got = await py(VENV_PYTHON, TYPES_OF, [outPath!]);
        for (
          const line of [
            "t: time64[us]",
            "d: duration[us]",
            "dec: decimal128(5, 3)",
            "l: list<item: int64>",
            "s: struct<a: string, b: double>",
            "day: date32[day]",
          ]
        ) ok(got.includes(line), got);
        ok(got.includes("'dec': Decimal('-12.345')"), got);
        ok(got.includes("'l': [1, None]"), got);
      });
    } finally {
      await server.close();
      await new Deno.Command("chmod", { args: ["-R", "u+w", tmp] }).output();
      await Deno.remove(tmp, { recursive: true });
    }
  },
});
