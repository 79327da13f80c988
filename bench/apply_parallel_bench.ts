// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Parallel Apply: rows/s of `WorkerService/Apply` with `parallelism` 1, 2 and 3 on one node, and
 * on a 3-node cluster (a real 3-member NATS JetStream cluster and 3 Valise nodes, all on this
 * machine), for a light function (the data plane dominates) and a CPU-heavy one (Python work
 * dominates). Reference, in the same run: the same driver and function run directly by one
 * Python process on the same columnar batches read from a file (no server, no gRPC). Every
 * result is checked: the rows out, and their order (the output's `id` column is the input's).
 *
 * Each figure is the median of VALISE_BENCH_REPEATS runs (default 3): the machine is shared.
 *
 * Env: VALISE_BENCH_SCALE (default 1: 2 M rows light, 400 k rows heavy), VALISE_BENCH_BATCH_ROWS
 * (default 16384), VALISE_BENCH_REPEATS (default 3), VALISE_BENCH_CLUSTER=0 skips the cluster.
 *
 * @module
 */
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { ApplyForm, type ApplyRequest, ApplyRequestSchema, WorkerService } from "@valise/protocol";
import { Float64, Int64, makeData, makeVector, type RecordBatch, Table } from "apache-arrow";
import { join } from "node:path";
import { encodeColumnarBatch } from "../packages/server/_columnar.ts";
import { IpcStreamPieces } from "../packages/server/_ipc_pieces.ts";
import { DRIVER_STUB, DriverFrame, driverFrameHeader } from "../packages/server/_apply_driver.ts";
import { hasNatsServer, startNatsCluster, startValiseNodes } from "../tests/_nats.ts";
import { startServer } from "../tests/_server.ts";

const SCALE = Number(Deno.env.get("VALISE_BENCH_SCALE") ?? "1");
const BATCH = Number(Deno.env.get("VALISE_BENCH_BATCH_ROWS") ?? "16384");
const CLUSTER = Deno.env.get("VALISE_BENCH_CLUSTER") !== "0" && hasNatsServer();
const REPEATS = Number(Deno.env.get("VALISE_BENCH_REPEATS") ?? "3");

/** The median of `REPEATS` runs of `f` (seconds). */
async function median(f: () => Promise<number>): Promise<number> {
  const runs: number[] = [];
  for (let i = 0; i < REPEATS; i++) runs.push(await f());
  runs.sort((a, b) => a - b);
  return runs[Math.floor(runs.length / 2)]!;
}

const FUNCTIONS = {
  light: {
    rows: Math.round(2_000_000 * SCALE),
    code: "def f(c):\n    return {'id': c['id'], 'y': [v * 2.0 for v in c['x']]}\n",
  },
  heavy: {
    rows: Math.round(400_000 * SCALE),
    code: "import math\n" +
      "def f(c):\n" +
      "    return {'id': c['id'],\n" +
      "            'y': [sum(math.sqrt(v + i) for i in range(40)) for v in c['x']]}\n",
  },
};

function makeBatch(start: number, n: number): RecordBatch {
  const id = new BigInt64Array(n);
  const x = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    id[i] = BigInt(start + i);
    x[i] = (start + i) % 1000;
  }
  return new Table({
    id: makeVector(makeData({ type: new Int64(), length: n, nullCount: 0, data: id })),
    x: makeVector(makeData({ type: new Float64(), length: n, nullCount: 0, data: x })),
  }).batches[0]!;
}

async function* ipcInput(rows: number): AsyncGenerator<Uint8Array> {
  let pieces: IpcStreamPieces | undefined;
  for (let start = 0; start < rows; start += BATCH) {
    const b = makeBatch(start, Math.min(BATCH, rows - start));
    if (!pieces) {
      pieces = new IpcStreamPieces(b.schema);
      yield pieces.start();
    }
    yield pieces.batch(b);
  }
  if (pieces) yield pieces.end();
}

async function* requests(
  sessionId: string,
  code: string,
  rows: number,
  parallelism: number,
): AsyncGenerator<ApplyRequest> {
  yield create(ApplyRequestSchema, {
    request: {
      case: "start",
      value: {
        sessionId,
        userContext: { userId: "bench" },
        function: { case: "code", value: code },
        functionName: "f",
        form: ApplyForm.COLUMNS,
        input: { case: "streamed", value: true },
        parallelism,
      },
    },
  });
  for await (const bytes of ipcInput(rows)) {
    yield create(ApplyRequestSchema, { request: { case: "arrowIpc", value: bytes } });
  }
}

/** One call; its rows/s. The output's ids are checked to be 0, 1, 2, … (order kept). */
async function viaRpc(
  port: number,
  sessionId: string,
  code: string,
  rows: number,
  parallelism: number,
): Promise<{ seconds: number; used: number }> {
  const baseUrl = `http://127.0.0.1:${port}`;
  const sessionManager = new Http2SessionManager(baseUrl);
  const workers = createClient(
    WorkerService,
    createGrpcTransport({ baseUrl, sessionManager, acceptCompression: [] }),
  );
  const t0 = performance.now();
  let rowsOut = 0;
  let used = 0;
  const parts: Uint8Array[] = [];
  for await (const res of workers.apply(requests(sessionId, code, rows, parallelism))) {
    const m = res.response;
    if (m.case === "arrowIpc") parts.push(m.value);
    else if (m.case === "done") {
      rowsOut = Number(m.value.rowsOut);
      used = m.value.parallelism;
    } else if (m.case === "error") throw new Error(`${m.value.message}\n${m.value.traceback}`);
  }
  const seconds = (performance.now() - t0) / 1000;
  sessionManager.abort();
  if (rowsOut !== rows) throw new Error(`got ${rowsOut} rows of ${rows}`);
  const { tableFromIPC } = await import("apache-arrow");
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    all.set(p, off);
    off += p.length;
  }
  const ids = tableFromIPC(all).getChild("id")!.toArray() as BigInt64Array;
  for (let i = 0; i < ids.length; i++) {
    if (ids[i] !== BigInt(i)) throw new Error(`row ${i} holds id ${ids[i]}: order lost`);
  }
  return { seconds, used };
}

async function reference(code: string, rows: number, tmp: string): Promise<number> {
  const path = join(tmp, "frames");
  {
    using f = await Deno.open(path, { write: true, create: true, truncate: true });
    const w = async (b: Uint8Array) => {
      let off = 0;
      while (off < b.length) off += await f.write(b.subarray(off));
    };
    const start = new TextEncoder().encode(JSON.stringify({
      function: { code, name: "f" },
      form: "columns",
      transport: "columnar",
      fields: null,
      schemaIpc: null,
    }));
    await w(driverFrameHeader(DriverFrame.START, start.length));
    await w(start);
    for (let s = 0; s < rows; s += BATCH) {
      const parts = encodeColumnarBatch(makeBatch(s, Math.min(BATCH, rows - s)));
      await w(driverFrameHeader(DriverFrame.DATA, parts.reduce((n, p) => n + p.length, 0)));
      for (const p of parts) await w(p);
    }
    await w(driverFrameHeader(DriverFrame.END, 0));
  }
  const t0 = performance.now();
  using file = await Deno.open(path);
  const child = new Deno.Command(python, {
    args: ["-c", DRIVER_STUB],
    stdin: "piped",
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  await file.readable.pipeTo(child.stdin);
  const status = await child.status;
  const seconds = (performance.now() - t0) / 1000;
  await Deno.remove(path);
  if (!status.success) throw new Error(`the reference exited with ${status.code}`);
  return seconds;
}

interface Row {
  where: string;
  fn: string;
  p: number;
  rate: number;
  seconds: number;
}

/** The interpreter `python3` names, itself (a pyenv shim's own start-up is not the work). */
async function realPython(): Promise<string> {
  const out = await new Deno.Command("python3", {
    args: ["-c", "import sys; print(sys.executable)"],
    stdout: "piped",
  }).output();
  return new TextDecoder().decode(out.stdout).trim();
}

const python = await realPython();
const tmp = await Deno.makeTempDir({ prefix: "valise-apply-parallel-bench-" });
const results: Row[] = [];
const refs: Record<string, number> = {};
const FLAGS = ["--worker-timeout-ms", "3600000", "--quiet"];
try {
  for (const [name, f] of Object.entries(FUNCTIONS)) {
    refs[name] = f.rows / await median(() => reference(f.code, f.rows, tmp));
  }
  const one = await startServer({ dataDir: join(tmp, "one"), args: FLAGS });
  try {
    const session = crypto.randomUUID();
    for (const [name, f] of Object.entries(FUNCTIONS)) {
      await viaRpc(one.port, session, f.code, BATCH, 1); // warm the fork server
      for (const p of [1, 2, 3]) {
        const seconds = await median(async () => {
          const r = await viaRpc(one.port, session, f.code, f.rows, p);
          if (r.used !== p) throw new Error(`asked for ${p} workers, got ${r.used}`);
          return r.seconds;
        });
        results.push({ where: "one node", fn: name, p, rate: f.rows / seconds, seconds });
      }
    }
  } finally {
    await one.stop();
  }
  if (CLUSTER) {
    const nats = await startNatsCluster();
    let nodes;
    try {
      nodes = await startValiseNodes(
        nats,
        ["a", "b", "c"].map((n) => join(tmp, `cluster-${n}`)),
        { args: ["--worker-timeout-ms", "3600000"], replicas: 1 },
      );
      const a = nodes.nodes[0]!;
      const session = crypto.randomUUID();
      for (const [name, f] of Object.entries(FUNCTIONS)) {
        // Warm every node's fork server for the session (a parallel call opens them all).
        await viaRpc(a.port, session, f.code, BATCH * 6, 3);
        for (const p of [1, 2, 3]) {
          const seconds = await median(async () =>
            (await viaRpc(a.port, session, f.code, f.rows, p)).seconds
          );
          results.push({ where: "3-node cluster", fn: name, p, rate: f.rows / seconds, seconds });
        }
      }
    } finally {
      await nodes?.stop();
      await nats.stop();
    }
  }
} finally {
  await new Deno.Command("rm", { args: ["-rf", tmp] }).output();
}

console.log(
  `### Parallel Apply: light ${FUNCTIONS.light.rows.toLocaleString("en")} rows, heavy ${
    FUNCTIONS.heavy.rows.toLocaleString("en")
  } rows; ${BATCH} rows per batch; columns form, columnar transport; median of ${REPEATS} runs\n`,
);
console.log(
  `Machine: ${navigator.hardwareConcurrency} cores shared by the client, the server(s), NATS and ` +
    "every worker. Reference: one Python process running the driver and function on the same " +
    "batches from a file.\n",
);
console.log("| where | function | parallelism | rows/s | s | vs parallelism 1 | vs reference |");
console.log("| --- | --- | --- | --- | --- | --- | --- |");
for (const r of results) {
  const base = results.find((x) => x.where === r.where && x.fn === r.fn && x.p === 1)!;
  console.log(
    `| ${r.where} | ${r.fn} | ${r.p} | ${(r.rate / 1e6).toFixed(3)} M | ${r.seconds.toFixed(2)} | ${
      (r.rate / base.rate).toFixed(2)
    }x | ${(r.rate / refs[r.fn]!).toFixed(2)}x |`,
  );
}
for (const [name, rate] of Object.entries(refs)) {
  console.log(`\nReference ${name}: ${(rate / 1e6).toFixed(3)} M rows/s.`);
}
