// Apply with `parallelism` on one node, against a real server process: the same rows in the same
// order as with one worker, the batches spread over that many worker processes of the session
// (observed: each worker writes its pid), the request clamped to --apply-max-parallelism, the
// workers counted against the session's worker slots, a failure stopping every worker.
import { deepEqual, equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { connect, type Session, ValiseClientError } from "@valise/client";
import {
  Dictionary,
  Field,
  Float64,
  Int32,
  Int64,
  type RecordBatch,
  Schema,
  Table,
  tableFromArrays,
  Utf8,
  vectorFromArray,
} from "apache-arrow";
import { makeVenvPack } from "./fixtures/envs.ts";
import { needsVenv, pinned } from "./_python.ts";
import { type ServerProcess, startServer } from "./_server.ts";
import { removeTree } from "./_util.ts";

const SYSTEM_PYTHON = "/usr/bin/python3";

/**
 * y = 2x, after each worker announced itself (a file named by its pid) and until `want`
 * workers have: every batch waits for the others to start, so that each of the `want` workers
 * gets batches whatever the machine's pace. The 30 s bound only turns a hang into a failure.
 */
function doubler(tag: string, want: number): { code: string; functionName: string } {
  return {
    functionName: "f",
    code: `
import os, sys, time
def f(cols):
    me = "w-${tag}-%d" % os.getpid()
    if not os.path.exists(me):
        open(me, "w").close()
        sys.stderr.write("worker %d\\n" % os.getpid())
    deadline = time.time() + 30
    while len([n for n in os.listdir(".") if n.startswith("w-${tag}-")]) < ${want}:
        if time.time() > deadline:
            raise RuntimeError("only %d workers came" % len([n for n in os.listdir(".") if n.startswith("w-${tag}-")]))
        time.sleep(0.005)
    return {"x": cols["x"], "y": [v * 2 for v in cols["x"]], "s": [str(v) for v in cols["x"]]}
`,
  };
}

function batches(count: number, rows: number): RecordBatch[] {
  const all = tableFromArrays({ x: Int32Array.from({ length: count * rows }, (_, i) => i) });
  return Array.from({ length: count }, (_, i) => all.batches[0]!.slice(i * rows, (i + 1) * rows));
}

function rowsOf(t: Table): unknown[][] {
  return t.toArray().map((r) => Object.values(r.toJSON()).map((v) => String(v)));
}

function workersOf(stderr: string): Set<string> {
  return new Set([...stderr.matchAll(/^worker (\d+)$/gm)].map((m) => m[1]!));
}

async function metric(server: ServerProcess, name: string): Promise<number> {
  const line = await server.waitForLog(/metrics on http:\/\/[\d.]+:\d+\/metrics/);
  const url = line.match(/http:\/\/[\d.]+:\d+\/metrics/)![0];
  const text = await (await fetch(url)).text();
  const m = text.match(new RegExp(`^${name} (\\d+)$`, "m"));
  return m ? Number(m[1]) : NaN;
}

async function withNode(
  args: string[],
  fn: (s: Session, server: ServerProcess) => Promise<void>,
): Promise<void> {
  const tmp = await Deno.makeTempDir({ prefix: "valise-apply-parallel-" });
  const server = await startServer({
    dataDir: join(tmp, "data"),
    args: ["--allow-interpreter", SYSTEM_PYTHON, "--metrics-port", "0", "--quiet", ...args],
  });
  try {
    await using session = connect(`sc://127.0.0.1:${server.port}`, { userId: "ada" });
    await session.conf.set("spark.sql.execution.pyspark.python", SYSTEM_PYTHON);
    await fn(session, server);
  } finally {
    await server.stop();
    await removeTree(tmp);
  }
}

Deno.test("parallel Apply on one node: 1, 2 and 3 workers give the same rows in the same order", async () => {
  await withNode([], async (session) => {
    const input = batches(12, 25);
    const results = [];
    for (const p of [1, 2, 3]) {
      const r = await session.applyCollect(doubler(`p${p}`, p), input, { parallelism: p });
      equal(r.parallelism, p);
      equal(r.transport, "columnar");
      equal(r.rowsIn, 300);
      equal(r.rowsOut, 300);
      equal(r.batchesIn, 12);
      equal(r.batches, 12);
      // Each worker is a process of its own, forked by the session's fork server.
      equal(workersOf(r.stderr).size, p, r.stderr);
      results.push(rowsOf(r.table));
    }
    equal(results[0]!.length, 300);
    deepEqual(results[0]![7], ["7", "14", "7"]);
    deepEqual(results[1], results[0]);
    deepEqual(results[2], results[0]);
  });
});

Deno.test("parallel Apply: a request above --apply-max-parallelism gets that many workers", async () => {
  await withNode(["--apply-max-parallelism", "2"], async (session) => {
    const r = await session.applyCollect(doubler("clamp", 2), batches(8, 3), { parallelism: 5 });
    equal(r.parallelism, 2);
    equal(workersOf(r.stderr).size, 2);
    equal(r.rowsOut, 24);
  });
});

Deno.test("parallel Apply: the workers take the session's worker slots (a lane waits for one)", async () => {
  await withNode([], async (session) => {
    await session.conf.set("spark.valise.worker.maxConcurrent", "2");
    const r = await session.applyCollect(doubler("slots", 2), batches(10, 4), { parallelism: 3 });
    equal(r.parallelism, 3);
    // The third worker never got a slot while the first two held them: two processes ran it.
    equal(workersOf(r.stderr).size, 2);
    deepEqual(rowsOf(r.table).map((row) => row[0]), Array.from({ length: 40 }, (_, i) => `${i}`));
  });
});

Deno.test("parallel Apply: one worker's failure fails the call with its traceback; every worker stops", async () => {
  await withNode([], async (session, server) => {
    const code = `
import os, sys, time
def f(cols):
    if 13 in cols["x"]:
        raise ValueError("no thirteen")
    return cols
`;
    let failure: unknown;
    try {
      await session.applyCollect({ code, functionName: "f" }, batches(30, 5), { parallelism: 3 });
    } catch (e) {
      failure = e;
    }
    ok(failure instanceof ValiseClientError, String(failure));
    equal(failure.errorClass, "APPLY_FUNCTION_FAILED");
    ok(failure.message.includes("no thirteen"), failure.message);
    ok(failure.traceback?.includes("ValueError"), failure.traceback);
    // No worker outlives the call: observed on the server's own gauge (polled; the guard only
    // turns a hang into a failure).
    const deadline = Date.now() + 30_000;
    while (await metric(server, "valise_workers_running") !== 0) {
      ok(Date.now() < deadline, "workers still running 30 s after the call failed");
      await new Promise((r) => setTimeout(r, 50));
    }
  });
});

Deno.test(
  needsVenv(
    "parallel Apply with pyarrow: dictionaries, a declared schema and pandas come back as with one worker",
  ),
  async () => {
    const out = await Deno.makeTempDir({ prefix: "valise-apply-parallel-env-" });
    try {
      const { archive } = await makeVenvPack(out, {
        creator: "uv",
        requirements: [pinned("pyarrow"), pinned("pandas")],
      });
      await withNode([], async (session) => {
        await session.addArtifacts(`${archive}#env`, { archive: true });
        await session.conf.set("spark.sql.execution.pyspark.python", "env/bin/python");
        const type = new Dictionary(new Utf8(), new Int32());
        const words = ["ant", "bee", "cat", "dog", "eel", "fox", "gnu"];
        const input = Array.from({ length: 9 }, (_, i) =>
          new Table({
            k: vectorFromArray(Array.from({ length: 6 }, (_, j) => BigInt(i * 6 + j)), new Int64()),
            w: vectorFromArray(
              Array.from({ length: 6 }, (_, j) => words[(i * 6 + j) % (i % 3 + 2)]!),
              type,
            ),
          }).batches[0]!);
        const outputSchema = new Schema([
          new Field("k", new Int64(), true),
          new Field("w", type, true),
          new Field("half", new Float64(), true),
        ]);
        const code = `
def f(df):
    df["half"] = df["k"] / 2
    return df
`;
        const results = [];
        for (const p of [1, 3]) {
          const r = await session.applyCollect({ code, functionName: "f" }, input, {
            form: "pandas",
            outputSchema,
            parallelism: p,
          });
          equal(r.transport, "pyarrow");
          equal(r.parallelism, p);
          equal(r.rowsOut, 54);
          results.push(rowsOf(r.table));
        }
        deepEqual(results[1], results[0]);
        deepEqual(results[0]![13], ["13", "bee", "6.5"]);
      });
    } finally {
      await removeTree(out);
    }
  },
);
