// Copyright 2026 the Valise authors. Apache-2.0 license.
// The driver on its own: a real Python process fed frames on stdin, as the launcher feeds it.
import { deepEqual, equal, ok } from "node:assert/strict";
import { Int64, Int8, type RecordBatch, Table, Utf8, vectorFromArray } from "apache-arrow";
import {
  type ColumnarField,
  decodeColumnarBatch,
  encodeColumnarBatch,
  readColumnarBatch,
  schemaOfHeader,
} from "./_columnar.ts";
import {
  DRIVER_FILENAME,
  DRIVER_STUB,
  DriverFrame,
  driverFrameHeader,
  DriverFrameReader,
} from "./_apply_driver.ts";

interface Driven {
  hello: Record<string, unknown>;
  out: RecordBatch[];
  /** In units mode: per frame, `out` (rows) or `mark` (the unit's counts), in order. */
  order: string[];
  error: { errorClass: string; message: string; traceback: string } | undefined;
  done: Record<string, number> | undefined;
  stderr: string;
  code: number;
}

async function drive(
  fn: string,
  batches: RecordBatch[],
  options: { form?: string; fields?: ColumnarField[]; units?: boolean } = {},
): Promise<Driven> {
  const start = new TextEncoder().encode(JSON.stringify({
    function: { code: fn, name: "f" },
    form: options.form ?? "columns",
    transport: "columnar",
    fields: options.fields ?? null,
    schemaIpc: null,
    ...(options.units ? { units: true } : {}),
  }));
  const parts: Uint8Array[] = [driverFrameHeader(DriverFrame.START, start.length), start];
  for (const b of batches) {
    const enc = encodeColumnarBatch(b);
    parts.push(driverFrameHeader(DriverFrame.DATA, enc.reduce((n, p) => n + p.length, 0)));
    parts.push(...enc);
  }
  parts.push(driverFrameHeader(DriverFrame.END, 0));
  const child = new Deno.Command("python3", {
    args: ["-c", DRIVER_STUB],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const w = child.stdin.getWriter();
  for (const p of parts) await w.write(p);
  await w.close();
  const res = await child.output();
  const r: Driven = {
    hello: {},
    out: [],
    order: [],
    error: undefined,
    done: undefined,
    stderr: new TextDecoder().decode(res.stderr),
    code: res.code,
  };
  const dec = new TextDecoder();
  for (const f of new DriverFrameReader().push(res.stdout)) {
    if (f.type === DriverFrame.HELLO) r.hello = JSON.parse(dec.decode(f.payload));
    else if (f.type === DriverFrame.ERROR) r.error = JSON.parse(dec.decode(f.payload));
    else if (f.type === DriverFrame.DONE) r.done = JSON.parse(dec.decode(f.payload));
    else if (f.type === DriverFrame.MARK) {
      r.order.push(`mark ${JSON.stringify(JSON.parse(dec.decode(f.payload)))}`);
    } else if (f.type === DriverFrame.OUT) {
      const b = decodeColumnarBatch(f.payload, schemaOfHeader(readColumnarBatch(f.payload).header));
      r.out.push(b);
      r.order.push(`out ${b.numRows}`);
    }
  }
  return r;
}

const xs = new Table({ x: vectorFromArray([1n, 2n, 3n], new Int64()) }).batches[0]!;

Deno.test("the driver says hello with its interpreter and what it can import", async () => {
  const r = await drive("def f(c):\n    return c\n", [xs]);
  equal(r.code, 0, r.stderr);
  ok(String(r.hello.executable).includes("python"), JSON.stringify(r.hello));
  ok("pyarrow" in r.hello && "pandas" in r.hello);
  deepEqual(r.done, { rowsIn: 3, rowsOut: 3, batchesIn: 1, batchesOut: 1 });
});

Deno.test("a function may return None, one batch, or a generator of batches", async () => {
  const none = await drive("def f(c):\n    return None\n", [xs, xs]);
  equal(none.out.length, 0);
  deepEqual(none.done, { rowsIn: 6, rowsOut: 0, batchesIn: 2, batchesOut: 0 });
  const gen = await drive(
    "def f(c):\n    for x in c['x']:\n        yield {'y': [x] * x}\n",
    [xs],
  );
  deepEqual(gen.out.map((b) => b.numRows), [1, 2, 3]);
  deepEqual(gen.done, { rowsIn: 3, rowsOut: 6, batchesIn: 1, batchesOut: 3 });
});

Deno.test("in units mode a mark follows each input batch's output, with that batch's counts", async () => {
  const empty = new Table({ x: vectorFromArray([], new Int64()) }).batches[0]!;
  const r = await drive(
    "def f(c):\n    for x in c['x']:\n        yield {'y': [x] * x}\n",
    [xs, empty, xs],
    { units: true },
  );
  equal(r.code, 0, r.stderr);
  const mark = (i: number, o: number, bo: number) =>
    `mark ${JSON.stringify({ rowsIn: i, rowsOut: o, batchesIn: 1, batchesOut: bo })}`;
  deepEqual(r.order, [
    "out 1",
    "out 2",
    "out 3",
    mark(3, 6, 3),
    mark(0, 0, 0),
    "out 1",
    "out 2",
    "out 3",
    mark(3, 6, 3),
  ]);
  deepEqual(r.done, { rowsIn: 6, rowsOut: 12, batchesIn: 3, batchesOut: 6 });
  // Without units mode, no marks (what one worker's Apply reads).
  const plain = await drive("def f(c):\n    return c\n", [xs, xs]);
  ok(plain.order.every((o) => o.startsWith("out")), plain.order.join());
});

Deno.test("output errors name the column and the row", async () => {
  const overflow = await drive("def f(c):\n    return {'v': [1, 300]}\n", [xs], {
    fields: [{ name: "v", type: "int8" }],
  });
  equal(overflow.error?.errorClass, "APPLY_OUTPUT_TYPE_MISMATCH");
  equal(overflow.error?.message, "column 'v' is int8, but row 1 holds int 300");
  const float = await drive("def f(c):\n    return {'v': [1, 2.5]}\n", [xs], {
    fields: [{ name: "v", type: "int64" }],
  });
  equal(float.error?.message, "column 'v' is int64, but row 1 holds float 2.5");
  const lengths = await drive("def f(c):\n    return {'a': [1], 'b': [1, 2]}\n", [xs]);
  ok(lengths.error?.message.includes("different lengths: a=1, b=2"), lengths.error?.message);
  const notDict = await drive("def f(c):\n    return [1, 2]\n", [xs]);
  equal(notDict.error?.errorClass, "APPLY_OUTPUT_TYPE_MISMATCH");
  const mixed = await drive("def f(c):\n    return {'m': [1, 'a']}\n", [xs]);
  ok(mixed.error?.message.includes("column 'm': cannot infer an Arrow type"), mixed.error?.message);
  const nonNull = await drive("def f(c):\n    return {'v': [None]}\n", [xs], {
    fields: [{ name: "v", type: "utf8", nullable: false }],
  });
  ok(
    nonNull.error?.message.includes("column 'v' is declared non-nullable"),
    nonNull.error?.message,
  );
});

Deno.test("an empty first output batch waits for a typed one; all-empty output gets null columns", async () => {
  const empty = new Table({ x: vectorFromArray([], new Int64()) }).batches[0]!;
  const r = await drive("def f(c):\n    return {'y': [v * 2 for v in c['x']]}\n", [empty, xs]);
  deepEqual(r.out.map((b) => [b.numRows, String(b.schema.fields[0]!.type)]), [[0, "Int64"], [
    3,
    "Int64",
  ]]);
  const only = await drive("def f(c):\n    return {'y': []}\n", [empty]);
  deepEqual(only.out.map((b) => [b.numRows, String(b.schema.fields[0]!.type)]), [[0, "Null"]]);
});

Deno.test("prints go to stderr, stdin reads see nothing, the frames stay intact", async () => {
  const r = await drive(
    "import sys\ndef f(c):\n    print('hi from f')\n    assert sys.stdin.read() == ''\n    return {'s': ['x']}\n",
    [
      new Table({ i: vectorFromArray([1], new Int8()), s: vectorFromArray(["a"], new Utf8()) })
        .batches[0]!,
    ],
  );
  equal(r.code, 0, r.stderr);
  ok(r.stderr.includes("hi from f"), r.stderr);
  equal(r.out.length, 1);
});

Deno.test("a missing function and a failing import are reported with their class", async () => {
  const missing = await drive("def g(c):\n    return c\n", [xs]);
  equal(missing.error?.errorClass, "APPLY_FUNCTION_NOT_FOUND");
  ok(missing.error?.message.includes("has no attribute 'f'"), missing.error?.message);
  const broken = await drive("raise RuntimeError('at import')\n", [xs]);
  equal(broken.error?.errorClass, "APPLY_FUNCTION_FAILED");
  ok(broken.error?.traceback.includes("RuntimeError: at import"), broken.error?.traceback);
  equal(broken.code, 1);
});

Deno.test("a driver traceback names apply_driver.py and the line that raised", async () => {
  const child = new Deno.Command("/usr/bin/python3", {
    args: ["-c", DRIVER_STUB],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // A START frame whose JSON is cut short: the driver's own code raises.
  const bad = new TextEncoder().encode('{"form": ');
  const w = child.stdin.getWriter();
  await w.write(driverFrameHeader(DriverFrame.START, bad.length));
  await w.write(bad);
  await w.close();
  const res = await child.output();
  const stderr = new TextDecoder().decode(res.stderr);
  equal(res.success, false);
  const source = await Deno.readTextFile(new URL("./apply_driver.py", import.meta.url));
  const lines = source.split("\n");
  const line = lines.findIndex((l) => l.includes("start = json.loads(payload")) + 1;
  ok(line > 0);
  ok(stderr.includes(`File "${DRIVER_FILENAME}", line ${line}, in main`), stderr);
});
