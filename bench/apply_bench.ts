// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Apply: 10 million rows × 4 columns (int64, float64, float64, int32) streamed through
 * `WorkerService/Apply` in `columns` form to an identity function and a small arithmetic one,
 * by a gRPC client in this process against the Valise server (`packages/server/main.ts`) in
 * another, with the default interpreter (no pyarrow: the columnar transport). Reference: the
 * same driver and function run directly by one Python process on the same columnar batches
 * read from a file (no server, no Arrow, no pipes between processes) — so the ratio is the
 * cost of the data plane. Reports rows/s, the ratio, and the peak RSS of the server and of the
 * worker (VmRSS polled from /proc every 50 ms).
 *
 * Env: VALISE_BENCH_SCALE (default 1: 10 million rows), VALISE_BENCH_BATCH_ROWS (default
 * 65536).
 *
 * @module
 */
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { ApplyForm, type ApplyRequest, ApplyRequestSchema, WorkerService } from "@valise/protocol";
import { Float64, Int32, Int64, makeData, makeVector, type RecordBatch, Table } from "apache-arrow";
import { encodeColumnarBatch } from "../packages/server/_columnar.ts";
import { IpcStreamPieces } from "../packages/server/_ipc_pieces.ts";
import { DRIVER_STUB, DriverFrame, driverFrameHeader } from "../packages/server/_apply_driver.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const SCALE = Number(Deno.env.get("VALISE_BENCH_SCALE") ?? "1");
const ROWS = Math.round(10_000_000 * SCALE);
const BATCH = Number(Deno.env.get("VALISE_BENCH_BATCH_ROWS") ?? "65536");
const MiB = 1024 * 1024;

const FUNCTIONS = {
  identity: "def f(c):\n    return c\n",
  arithmetic: "def f(c):\n" +
    "    x, y = c['x'], c['y']\n" +
    "    return {'id': c['id'], 'x': [v * 2.0 for v in x],\n" +
    "            'y': [a + b for a, b in zip(x, y)], 'k': [v + 1 for v in c['k']]}\n",
};

const DISTINCT = 16;
const made = new Map<string, RecordBatch>();

/**
 * The batch that starts at row `start`: one of 16 distinct batches (made once), so that the
 * client's own work stays small next to the server's.
 */
function batchAt(start: number): RecordBatch {
  const n = Math.min(BATCH, ROWS - start);
  const key = `${(start / BATCH) % DISTINCT}/${n}`;
  let b = made.get(key);
  if (!b) made.set(key, b = makeBatch(((start / BATCH) % DISTINCT) * BATCH, n));
  return b;
}

function makeBatch(start: number, n: number): RecordBatch {
  const id = new BigInt64Array(n);
  const x = new Float64Array(n);
  const y = new Float64Array(n);
  const k = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    id[i] = BigInt(start + i);
    x[i] = (start + i) * 0.5;
    y[i] = i % 1000;
    k[i] = i & 0xffff;
  }
  return new Table({
    id: makeVector(makeData({ type: new Int64(), length: n, nullCount: 0, data: id })),
    x: makeVector(makeData({ type: new Float64(), length: n, nullCount: 0, data: x })),
    y: makeVector(makeData({ type: new Float64(), length: n, nullCount: 0, data: y })),
    k: makeVector(makeData({ type: new Int32(), length: n, nullCount: 0, data: k })),
  }).batches[0]!;
}

/** The input as one Arrow IPC stream, produced batch by batch (never all in memory). */
async function* ipcInput(): AsyncGenerator<Uint8Array> {
  let pieces: IpcStreamPieces | undefined;
  const ipc = new Map<RecordBatch, Uint8Array>();
  for (let start = 0; start < ROWS; start += BATCH) {
    const b = batchAt(start);
    if (!pieces) {
      pieces = new IpcStreamPieces(b.schema);
      yield pieces.start();
    }
    let bytes = ipc.get(b);
    if (!bytes) ipc.set(b, bytes = pieces.batch(b));
    yield bytes;
  }
  if (pieces) yield pieces.end();
}

async function* requests(sessionId: string, code: string): AsyncGenerator<ApplyRequest> {
  yield create(ApplyRequestSchema, {
    request: {
      case: "start",
      value: {
        sessionId,
        function: { case: "code", value: code },
        functionName: "f",
        form: ApplyForm.COLUMNS,
        input: { case: "streamed", value: true },
      },
    },
  });
  for await (const bytes of ipcInput()) {
    yield create(ApplyRequestSchema, { request: { case: "arrowIpc", value: bytes } });
  }
}

async function rssOf(pid: number): Promise<number> {
  try {
    const text = await Deno.readTextFile(`/proc/${pid}/status`);
    return Number(text.match(/^VmRSS:\s+(\d+) kB/m)?.[1] ?? 0) * 1024;
  } catch {
    return 0;
  }
}

/** Python processes below `root` (the fork servers and their workers). */
async function pythonDescendants(root: number): Promise<number[]> {
  const parent = new Map<number, number>();
  const comm = new Map<number, string>();
  for await (const e of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const stat = await Deno.readTextFile(`/proc/${e.name}/stat`);
      const close = stat.lastIndexOf(")");
      comm.set(Number(e.name), stat.slice(stat.indexOf("(") + 1, close));
      parent.set(Number(e.name), Number(stat.slice(close + 2).split(" ")[1]));
    } catch {
      // gone
    }
  }
  const out: number[] = [];
  for (const pid of parent.keys()) {
    let p = parent.get(pid);
    while (p !== undefined && p > 1 && p !== root) p = parent.get(p);
    if (p === root && (comm.get(pid) ?? "").startsWith("python")) out.push(pid);
  }
  return out;
}

interface Result {
  seconds: number;
  rowsOut: number;
  serverPeak: number;
  workerPeak: number;
}

async function viaRpc(port: number, serverPid: number, code: string): Promise<Result> {
  const baseUrl = `http://127.0.0.1:${port}`;
  const sessionManager = new Http2SessionManager(baseUrl);
  const workers = createClient(
    WorkerService,
    createGrpcTransport({ baseUrl, sessionManager, acceptCompression: [] }),
  );
  let serverPeak = 0;
  let workerPeak = 0;
  let polling = true;
  const poll = (async () => {
    while (polling) {
      serverPeak = Math.max(serverPeak, await rssOf(serverPid));
      for (const pid of await pythonDescendants(serverPid)) {
        workerPeak = Math.max(workerPeak, await rssOf(pid));
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  const t0 = performance.now();
  let rowsOut = 0;
  let bytes = 0;
  for await (const res of workers.apply(requests(crypto.randomUUID(), code))) {
    const m = res.response;
    if (m.case === "arrowIpc") bytes += m.value.length;
    else if (m.case === "done") rowsOut = Number(m.value.rowsOut);
    else if (m.case === "error") throw new Error(`${m.value.message}\n${m.value.traceback}`);
  }
  const seconds = (performance.now() - t0) / 1000;
  polling = false;
  await poll;
  // Closed before the server goes: a GOAWAY on an idle client session aborts Deno's nghttp2.
  sessionManager.abort();
  if (rowsOut !== ROWS || bytes === 0) throw new Error(`got ${rowsOut} rows, ${bytes} bytes`);
  return { seconds, rowsOut, serverPeak, workerPeak };
}

/** The driver's own input for the reference: START, the columnar batches, END. */
async function writeReferenceInput(path: string, code: string): Promise<void> {
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
  for (let s = 0; s < ROWS; s += BATCH) {
    const parts = encodeColumnarBatch(batchAt(s));
    await w(driverFrameHeader(DriverFrame.DATA, parts.reduce((n, p) => n + p.length, 0)));
    for (const p of parts) await w(p);
  }
  await w(driverFrameHeader(DriverFrame.END, 0));
}

async function reference(python: string, input: string): Promise<{ seconds: number; rss: number }> {
  const t0 = performance.now();
  using file = await Deno.open(input);
  const child = new Deno.Command(python, {
    args: ["-c", DRIVER_STUB],
    stdin: "piped",
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  let rss = 0;
  let polling = true;
  const poll = (async () => {
    while (polling) {
      rss = Math.max(rss, await rssOf(child.pid));
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  await file.readable.pipeTo(child.stdin);
  const status = await child.status;
  const seconds = (performance.now() - t0) / 1000;
  polling = false;
  await poll;
  if (!status.success) throw new Error(`reference exited with ${status.code}`);
  return { seconds, rss };
}

async function realPython(): Promise<string> {
  const out = await new Deno.Command("python3", {
    args: ["-c", "import sys; print(sys.executable)"],
    stdout: "piped",
  }).output();
  return new TextDecoder().decode(out.stdout).trim();
}

const tmp = await Deno.makeTempDir({ prefix: "valise-apply-bench-" });
const server = new Deno.Command(Deno.execPath(), {
  args: [
    "run",
    "-A",
    ...(Deno.env.get("VALISE_BENCH_SERVER_FLAGS") ?? "").split(" ").filter(Boolean),
    `${ROOT}packages/server/main.ts`,
    "--port",
    "0",
    "--data-dir",
    `${tmp}/data`,
    "--worker-timeout-ms",
    String(3_600_000),
    "--quiet",
  ],
  stdout: "piped",
  stderr: "inherit",
}).spawn();
const reader = server.stdout.pipeThrough(new TextDecoderStream()).getReader();
let port = 0;
let seen = "";
while (!port) {
  const { value, done } = await reader.read();
  if (done) throw new Error(`the server exited before listening: ${seen}`);
  seen += value;
  port = Number(seen.match(/listening on [^\s]+:(\d+)/)?.[1] ?? 0);
}
const drain = (async () => {
  while (!(await reader.read()).done) { /* discard */ }
})();

const python = await realPython();
const rows: string[] = [];
try {
  for (const [name, code] of Object.entries(FUNCTIONS)) {
    const rpc = await viaRpc(port, server.pid, code);
    const file = `${tmp}/${name}.frames`;
    await writeReferenceInput(file, code);
    const ref = await reference(python, file);
    await Deno.remove(file);
    const rpcRate = ROWS / rpc.seconds;
    const refRate = ROWS / ref.seconds;
    rows.push(
      `| ${name} | ${(rpcRate / 1e6).toFixed(2)} M | ${rpc.seconds.toFixed(1)} | ${
        (refRate / 1e6).toFixed(2)
      } M | ${ref.seconds.toFixed(1)} | ${(rpcRate / refRate).toFixed(2)}x | ${
        (rpc.serverPeak / MiB).toFixed(0)
      } MiB | ${(rpc.workerPeak / MiB).toFixed(0)} MiB | ${(ref.rss / MiB).toFixed(0)} MiB |`,
    );
  }
} catch (e) {
  console.error(e);
  throw e;
} finally {
  server.kill("SIGTERM");
  await server.status;
  await drain;
  await Deno.remove(tmp, { recursive: true });
}

console.log(
  `### Apply: ${
    ROWS.toLocaleString("en")
  } rows × 4 columns, columns form, ${BATCH} rows per batch\n`,
);
console.log(
  `Interpreter: ${python} (no pyarrow: columnar transport). Ratio = RPC rows/s ÷ reference rows/s.\n`,
);
console.log(
  "| function | RPC rows/s | RPC s | reference rows/s | reference s | ratio | server peak RSS | worker peak RSS | reference peak RSS |",
);
console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
for (const r of rows) console.log(r);
