// Copyright 2026 the Valise authors. Apache-2.0 license.
// session.apply() and `valise apply` against a real server on loopback, with real Python.
import { deepEqual, equal, match, ok, rejects } from "node:assert/strict";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { addArtifactsRequests, bytesArtifact, SparkConnectService } from "@valise/protocol";
import {
  Field,
  Float64,
  Int32,
  Int64,
  type RecordBatch,
  RecordBatchReader,
  Schema,
  Table,
  tableFromArrays,
  tableFromIPC,
  tableToIPC,
  Utf8,
  vectorFromArray,
} from "apache-arrow";
import { connect, type Session, ValiseClientError } from "./mod.ts";
import { withServer, writeFile } from "./_test_util.ts";

const CLI = new URL("./cli.ts", import.meta.url).pathname;
const SYSTEM_PYTHON = "/usr/bin/python3";

const DOUBLE = `
import sys

def double(cols):
    print("batch of", len(cols["x"]), file=sys.stderr)
    return {"x": cols["x"], "y": [v * 2 for v in cols["x"]]}
`;

function rows(t: Table | RecordBatch): Record<string, unknown>[] {
  return t.toArray().map((r) => ({ ...r.toJSON() }));
}

function batchOf(from: number, n: number): RecordBatch {
  const x = Int32Array.from({ length: n }, (_, i) => from + i);
  return tableFromArrays({ x }).batches[0]!;
}

async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", new Uint8Array(bytes));
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function withSession(
  fn: (s: Session, t: { url: string; tmp: string; port: number }) => Promise<void>,
  opts: Parameters<typeof withServer>[1] = {},
): Promise<void> {
  await withServer(async ({ url, tmp, port }) => {
    await using session = connect(url, { userId: "ada" });
    await fn(session, { url, tmp, port });
  }, opts);
}

Deno.test("apply: a module function from a pyfile over a Table; the summary", async () => {
  await withSession(async (session, { tmp }) => {
    await session.addArtifacts(await writeFile(tmp, "util.py", DOUBLE), { pyfile: true });
    const input = tableFromArrays({ x: Int32Array.of(1, 2, 3) });
    const r = await session.applyCollect("util:double", input);
    deepEqual(rows(r.table), [{ x: 1n, y: 2n }, { x: 2n, y: 4n }, { x: 3n, y: 6n }]);
    equal(r.rowsIn, 3);
    equal(r.rowsOut, 3);
    equal(r.batchesIn, 1);
    equal(r.batches, 1);
    equal(r.transport, "columnar");
    ok(r.interpreter.includes("python"), r.interpreter);
    equal(r.stderr, "batch of 3\n");

    // The iterator form: batches, then the summary as the return value.
    const it = session.apply("util:double", input);
    const first = await it.next();
    ok(!first.done);
    equal(first.value.numRows, 3);
    const last = await it.next();
    ok(last.done);
    equal(last.value.rowsOut, 3);
  });
});

Deno.test("apply: inline code over streamed batches keeps their order; every input shape", async () => {
  await withSession(async (session) => {
    const fn = {
      code: "def f(c):\n    return {'x': [v + 1 for v in c['x']]}\n",
      functionName: "f",
    };
    const pulled: number[] = [];
    async function* batches(): AsyncGenerator<RecordBatch> {
      for (let i = 0; i < 8; i++) {
        pulled.push(i);
        yield batchOf(i * 100, 100);
      }
    }
    const out: RecordBatch[] = [];
    let stderr = "";
    const it = session.apply(fn, batches(), {
      onStderr: (d) => stderr += new TextDecoder().decode(d),
    });
    for await (const b of it) out.push(b);
    equal(out.length, 8);
    deepEqual(pulled, [0, 1, 2, 3, 4, 5, 6, 7]);
    const xs = out.flatMap((b) => [...(b.getChild("x")!.toArray() as BigInt64Array)]);
    deepEqual(xs.map(Number), Array.from({ length: 800 }, (_, i) => i + 1));
    equal(stderr, "");

    // A sync iterable of batches.
    const sync = await session.applyCollect(fn, [batchOf(0, 2), batchOf(2, 2)]);
    deepEqual(rows(sync.table).map((r) => r.x), [1n, 2n, 3n, 4n]);
    equal(sync.batchesIn, 2);

    // IPC stream bytes, whole and in odd-sized chunks; an IPC file.
    const table = new Table([batchOf(0, 5), batchOf(5, 5)]);
    const bytes = tableToIPC(table, "stream");
    const whole = await session.applyCollect(fn, bytes);
    equal(whole.rowsIn, 10);
    async function* chunks(): AsyncGenerator<Uint8Array> {
      for (let o = 0; o < bytes.length; o += 77) yield bytes.slice(o, o + 77);
    }
    const chunked = await session.applyCollect(fn, chunks());
    deepEqual(rows(chunked.table), rows(whole.table));
    equal(chunked.batchesIn, 2);
    const file = await session.applyCollect(fn, tableToIPC(table, "file"));
    deepEqual(rows(file.table), rows(whole.table));

    // Nothing at all, and an empty table (its schema only).
    equal((await session.applyCollect(fn, [])).rowsIn, 0);
    const empty = await session.applyCollect(
      fn,
      new Table(new Schema([new Field("x", new Int32())])),
    );
    equal(empty.rowsIn, 0);
    equal(empty.batches, 0);

    // A declared output schema.
    const schema = new Schema([new Field("x", new Int32(), true)]);
    const typed = await session.applyCollect(fn, table, { outputSchema: schema });
    equal(String(typed.table.schema.fields[0]!.type), "Int32");
    deepEqual(rows(typed.table).map((r) => r.x), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    const none = await session.applyCollect(
      { code: "def f(c):\n    return None\n", functionName: "f" },
      table,
      { outputSchema: schema },
    );
    equal(none.table.numRows, 0);
    equal(none.batches, 0);
    equal(none.table.schema.fields[0]!.name, "x");

    // Several output batches for one input batch (a generator).
    const gen = await session.applyCollect(
      {
        code: "def f(c):\n    for v in c['x']:\n        yield {'v': [str(v)]}\n",
        functionName: "f",
      },
      tableFromArrays({ x: Int32Array.of(7, 8, 9) }),
    );
    deepEqual(rows(gen.table).map((r) => r.v), ["7", "8", "9"]);
    equal(gen.batches, 3);
  });
});

Deno.test("apply: input from a cache/<sha256> artifact uploaded the way PySpark does", async () => {
  await withSession(async (session, { port }) => {
    const input = new Table({
      id: tableFromArrays({ id: BigInt64Array.from({ length: 1000 }, (_, i) => BigInt(i)) })
        .getChild("id")!,
      v: tableFromArrays({ v: Float64Array.from({ length: 1000 }, (_, i) => i / 2) })
        .getChild("v")!,
    });
    const bytes = tableToIPC(input, "stream");
    const name = `cache/${await sha256Hex(bytes)}`;
    const spark = createClient(
      SparkConnectService,
      createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }),
    );
    await spark.addArtifacts(
      addArtifactsRequests([bytesArtifact(name, bytes)], {
        sessionId: session.sessionId,
        userId: "ada",
      }),
    );
    const r = await session.applyCollect(
      { code: "def f(c):\n    return {'s': [sum(c['v'])]}\n", functionName: "f" },
      { cacheArtifact: name },
    );
    equal(r.rowsIn, 1000);
    equal(rows(r.table)[0]!.s, 249750);

    const missing = await rejects(
      session.applyCollect({ code: "def f(c):\n    return c\n", functionName: "f" }, {
        cacheArtifact: `cache/${"0".repeat(64)}`,
      }),
      (e: unknown) =>
        e instanceof ValiseClientError && e.errorClass === "APPLY_INPUT_NOT_FOUND" &&
        e.grpcCode === "NotFound",
    );
    equal(missing, undefined);
  });
});

Deno.test("apply: failures are typed errors; a raising function carries its traceback", async () => {
  await withServer(async ({ url }) => {
    const input = tableFromArrays({ x: Int32Array.of(7) });
    // One session per failing call: right after a function raised, the session's next call can
    // find its fork server gone (APPLY_WORKER_FAILED, a server-side race, reported separately).
    const attempt = async (...args: Parameters<Session["applyCollect"]>): Promise<unknown> => {
      await using session = connect(url, { userId: "ada" });
      try {
        await session.applyCollect(...args);
      } catch (e) {
        return e;
      }
      throw new Error("the call did not fail");
    };
    const code = `
def helper(x):
    raise ValueError("bad row %d" % x)

def f(cols):
    return {"y": [helper(x) for x in cols["x"]]}
`;
    const caught = await attempt({ code, functionName: "f" }, input);
    ok(caught instanceof ValiseClientError, String(caught));
    equal(caught.errorClass, "APPLY_FUNCTION_FAILED");
    equal(caught.grpcCode, "Unknown");
    match(caught.message, /ValueError: bad row 7/);
    const tb = caught.traceback ?? "";
    ok(tb.startsWith("Traceback (most recent call last):"), tb);
    ok(tb.includes('raise ValueError("bad row %d" % x)'), tb);
    ok(tb.includes("in helper"), tb);

    const classOf = (e: unknown) => e instanceof ValiseClientError ? e.errorClass : String(e);
    const notFound = await attempt("nosuchmodule:f", input);
    equal(classOf(notFound), "APPLY_FUNCTION_NOT_FOUND");
    equal((notFound as ValiseClientError).grpcCode, "InvalidArgument");
    const mismatch = await attempt(
      { code: "def f(c):\n    return {'x': ['a']}\n", functionName: "f" },
      input,
      { outputSchema: new Schema([new Field("x", new Int64())]) },
    );
    equal(classOf(mismatch), "APPLY_OUTPUT_TYPE_MISMATCH");
    ok((mismatch as Error).message.includes("'x'"), (mismatch as Error).message);
    const pyarrow = await attempt(
      { code: "def f(c):\n    return c\n", functionName: "f" },
      input,
      { form: "pyarrow" },
    );
    equal(classOf(pyarrow), "APPLY_PYARROW_UNAVAILABLE");
    equal((pyarrow as ValiseClientError).grpcCode, "FailedPrecondition");
    const garbage = await attempt(
      { code: "def f(c):\n    return c\n", functionName: "f" },
      new TextEncoder().encode("not arrow at all"),
    );
    equal(classOf(garbage), "APPLY_INVALID_INPUT");

    // Argument problems are built-ins, thrown before anything is sent.
    ok(await attempt("no-colon", input) instanceof TypeError);
    ok(await attempt("m:f", input, { form: "rows" as "columns" }) instanceof TypeError);
    ok(await attempt("m:f", input, { timeoutMs: -1 }) instanceof RangeError);
    ok(await attempt("m:f", "text" as unknown as Table) instanceof TypeError);
    const mixed = await attempt("m:f", [
      batchOf(0, 1),
      new Table({ s: vectorFromArray(["a"], new Utf8()) }).batches[0]!,
    ]);
    ok(mixed instanceof TypeError && /schema/.test(mixed.message), String(mixed));
    // What the caller's own input throws comes out as is.
    const boom = new Error("input broke");
    async function* broken(): AsyncGenerator<RecordBatch> {
      yield batchOf(0, 1);
      throw boom;
    }
    equal(await attempt({ code: "def f(c):\n    return c\n", functionName: "f" }, broken()), boom);
  });
});

Deno.test("apply: output streams back while the input is still being sent; no gzip offered", async () => {
  await withServer(async ({ url }) => {
    const accept: (string | null)[] = [];
    await using session = connect(url, {
      interceptors: [(next) => (req) => {
        if (req.method.name === "Apply") accept.push(req.header.get("grpc-accept-encoding"));
        return next(req);
      }],
    });
    // Each input batch is sent only once the output of the one before it has arrived: a client
    // that held back input or output would never finish (the server's time limit would end it).
    let seen = 0;
    let wake: (() => void) | undefined;
    async function* lockstep(): AsyncGenerator<RecordBatch> {
      for (let i = 0; i < 4; i++) {
        if (seen < i) await new Promise<void>((r) => wake = r);
        yield batchOf(i * 10, 10);
      }
    }
    const firsts: number[] = [];
    for await (
      const b of session.apply(
        { code: "def f(c):\n    return c\n", functionName: "f" },
        lockstep(),
        { timeoutMs: 15_000 },
      )
    ) {
      firsts.push(Number(b.getChild("x")!.get(0)));
      seen++;
      wake?.();
    }
    deepEqual(firsts, [0, 10, 20, 30]);
    equal(accept.length, 1);
    ok(!(accept[0] ?? "").includes("gzip"), String(accept[0]));
  });
});

Deno.test("apply: stopping early cancels the call; the session goes on", async () => {
  await withSession(async (session) => {
    let pulled = 0;
    async function* endless(): AsyncGenerator<RecordBatch> {
      for (let i = 0;; i++) {
        pulled++;
        yield batchOf(i, 10);
      }
    }
    let seen = 0;
    for await (
      const _ of session.apply({ code: "def f(c):\n    return c\n", functionName: "f" }, endless())
    ) {
      if (++seen === 3) break;
    }
    equal(seen, 3);
    ok(pulled >= 3);
    const r = await session.applyCollect(
      { code: "def f(c):\n    return c\n", functionName: "f" },
      batchOf(0, 4) as unknown as Table,
    );
    equal(r.rowsOut, 4);
    const ac = new AbortController();
    ac.abort();
    await rejects(
      session.applyCollect({ code: "def f(c):\n    return c\n", functionName: "f" }, endless(), {
        signal: ac.signal,
      }),
      (e: unknown) => e instanceof ValiseClientError && e.grpcCode === "Canceled",
    );
  });
});

async function pythonHas(python: string, module: string): Promise<boolean> {
  try {
    const r = await new Deno.Command(python, { args: ["-c", `import ${module}`] }).output();
    return r.success;
  } catch {
    return false;
  }
}

Deno.test("apply: pandas form with Debian's python3-pandas", async (t) => {
  if (!(await pythonHas(SYSTEM_PYTHON, "pandas"))) {
    await t.step({
      name: `skipped: pandas is not importable by ${SYSTEM_PYTHON}`,
      ignore: true,
      fn: () => {},
    });
    return;
  }
  await withSession(async (session) => {
    await session.conf.set("spark.sql.execution.pyspark.python", SYSTEM_PYTHON);
    const r = await session.applyCollect(
      {
        code: "import pandas as pd\ndef f(df):\n    return pd.DataFrame({'y': df['x'] * 2})\n",
        functionName: "f",
      },
      tableFromArrays({ x: Int32Array.of(1, 2) }),
      { form: "pandas" },
    );
    deepEqual(rows(r.table).map((x) => Number(x.y)), [2, 4]);
    equal(r.interpreter, SYSTEM_PYTHON);
  }, {
    workers: {
      allowedInterpreters: [SYSTEM_PYTHON],
      limits: { maxQueue: 64, maxWorkersPerSession: 4, wallTimeMs: 20_000 },
    },
  });
});

interface Ran {
  code: number;
  stdout: Uint8Array;
  stderr: string;
}

async function cli(
  args: string[],
  env: Record<string, string>,
  stdin?: Uint8Array,
): Promise<Ran> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    env: { NO_COLOR: "1", ...env },
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(stdin);
    await w.close();
  }
  const r = await child.output();
  return { code: r.code, stdout: r.stdout, stderr: new TextDecoder().decode(r.stderr) };
}

Deno.test("valise apply: files, stdin/stdout, a module function, errors", async () => {
  await withServer(async ({ url, tmp }) => {
    const work = join(tmp, "work");
    await Deno.mkdir(work);
    const env = { VALISE_STATE_FILE: join(tmp, "cli.json"), SPARK_REMOTE: url, INIT_CWD: work };
    const help = await cli(["apply", "--help"], env);
    equal(help.code, 0);
    match(new TextDecoder().decode(help.stdout), /^Usage: valise apply /);

    const input = new Table([batchOf(0, 3), batchOf(3, 3), batchOf(6, 3)]);
    await Deno.writeFile(join(work, "data.arrow"), tableToIPC(input, "file"));
    await writeFile(
      work,
      "fn.py",
      "def f(c):\n    return {'x': c['x'], 's': [str(v) for v in c['x']]}\n",
    );

    const r = await cli(
      ["apply", "--code", "fn.py", "--function", "f", "--in", "data.arrow", "--out", "out.arrow"],
      env,
    );
    equal(r.code, 0, r.stderr);
    match(r.stderr, /apply: 9 rows in \(3 batches\), 9 rows out \(3 batches\); columnar transport/);
    const bytes = await Deno.readFile(join(work, "out.arrow"));
    // A stream (not the file format), read back batch by batch.
    const reader = RecordBatchReader.from(bytes);
    const batches = [...reader];
    equal(batches.length, 3);
    const out = new Table(batches);
    deepEqual(
      rows(out),
      Array.from({ length: 9 }, (_, i) => ({ x: BigInt(i), s: String(i) })),
    );

    // A module function from a pyfile added with the CLI; stdin to stdout; --schema.
    await writeFile(work, "util.py", DOUBLE);
    equal((await cli(["add", "--pyfile", "util.py"], env)).code, 0);
    const schema = new Schema([new Field("x", new Int32()), new Field("y", new Float64())]);
    await Deno.writeFile(join(work, "schema.arrow"), tableToIPC(new Table(schema), "stream"));
    const piped = await cli(
      ["-q", "apply", "--fn", "util:double", "--schema", "schema.arrow", "--in", "-", "--out", "-"],
      env,
      tableToIPC(input, "stream"),
    );
    equal(piped.code, 0, piped.stderr);
    equal(piped.stderr, "batch of 3\n".repeat(3));
    const t = tableFromIPC(piped.stdout);
    equal(String(t.schema.fields[1]!.type), "Float64");
    deepEqual(rows(t).map((r) => r.y), Array.from({ length: 9 }, (_, i) => i * 2));

    // Every option also as --opt=value.
    const inline = await cli([
      "apply",
      "--fn=util:double",
      "--schema=schema.arrow",
      "--form=columns",
      "--timeout-ms=20000",
      "--in=data.arrow",
      "--out=inline.arrows",
      "--quiet",
    ], env);
    equal(inline.code, 0, inline.stderr);
    deepEqual(
      rows(tableFromIPC(await Deno.readFile(join(work, "inline.arrows")))).map((r) => r.y),
      Array.from({ length: 9 }, (_, i) => i * 2),
    );

    // A raising function: the traceback, one error line, a hint; no output file left.
    await writeFile(work, "bad.py", "def f(c):\n    raise KeyError('nope')\n");
    const bad = await cli(
      ["apply", "--code", "bad.py", "--function", "f", "--in", "data.arrow", "--out", "bad.arrow"],
      env,
    );
    equal(bad.code, 1);
    match(bad.stderr, /Traceback \(most recent call last\):[\s\S]*raise KeyError\('nope'\)/);
    match(bad.stderr, /\nvalise: \[APPLY_FUNCTION_FAILED\] KeyError: 'nope'\nhint: [^\n]+\n$/);
    await rejects(Deno.stat(join(work, "bad.arrow")), Deno.errors.NotFound);

    // Usage errors.
    const both = await cli(
      ["apply", "--fn", "a:b", "--code", "fn.py", "--in", "x", "--out", "y"],
      env,
    );
    equal(both.code, 2);
    match(
      both.stderr,
      /^Usage: valise apply .*\n.*\nvalise: \[USAGE\] give exactly one of --fn MOD:FN or --code FILE\nhint: see `valise help apply`\n$/,
    );
    const noIn = await cli(["apply", "--fn", "a:b", "--out", "y"], env);
    equal(noIn.code, 2);
    const form = await cli(
      ["apply", "--fn", "a:b", "--form", "rows", "--in", "x", "--out", "y"],
      env,
    );
    equal(form.code, 2);
    const missing = await cli(["apply", "--fn", "a:b", "--in", "nope.arrow", "--out", "y"], env);
    equal(missing.code, 2);
    match(missing.stderr, /^valise: \[FILE_NOT_FOUND\]/);
  });
});

Deno.test("apply: strings and nulls round-trip through columns form", async () => {
  await withSession(async (session) => {
    const input = new Table({ s: vectorFromArray(["a", "héllo", "", null], new Utf8()) });
    const r = await session.applyCollect(
      {
        code:
          "def f(c):\n    return {'s': [None if v == '' else v and v.upper() for v in c['s']]}\n",
        functionName: "f",
      },
      input,
    );
    deepEqual(rows(r.table).map((x) => x.s), ["A", "HÉLLO", null, null]);
  });
});
