// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Apply against one Python process doing the same work in-process (issue 16, goal 3).
 *
 * Case: 2 M rows × (`id` int64, `x` float64, `s` utf8 with a null every 10th row), 65,536 rows
 * per batch, a function building two new columns (`y = x * 2.0`, `n = len(s)` or None) and
 * passing `id` through.
 *
 * - **columns form** (default interpreter, no pyarrow: the columnar transport), over RPC, next
 *   to one Python process (same interpreter) running the same driver code on the same rows
 *   read from a file in the columnar encoding: decode to lists, call, encode the output (no
 *   server, no gRPC, no pipes between processes).
 * - **pyarrow form** (the project venv's Python, which has pyarrow: the IPC bytes pass through
 *   untouched), an identity function, over RPC, next to real pyarrow in one process reading the
 *   same IPC stream from a file, calling the function per batch and writing the output stream.
 *
 * For each RPC call, the CPU time of the client (this process), the server, and the Python
 * processes under it (fork server and worker) — where the time goes. Beside them, the floor of
 * the RPC itself: the same client against a server with the same HTTP/2 settings and Connect
 * adapter that echoes the pyarrow form's input back (`_apply_echo_server.ts`: no worker at all).
 * The load averages before and after are printed (the machine may be shared). Then the stage profile of
 * the columnar path, each stage timed alone on the same rows: server decode (IPC → columnar),
 * Python decode, the function, Python encode, server encode (columnar → IPC), client decode.
 *
 * Env: VALISE_BENCH_SCALE (default 1: 2 M rows), VALISE_BENCH_REPEATS (default 3: medians),
 * VALISE_BENCH_SERVER_FLAGS (flags for the server's `deno run`, e.g. `--inspect`).
 *
 * @module
 */
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import {
  ApplyForm,
  type ApplyRequest,
  ApplyRequestSchema,
  ConfigRequest_OperationSchema,
  ipcRecordBatches,
  SparkConnectService,
  WorkerService,
} from "@valise/protocol";
import {
  Float64,
  Int64,
  makeData,
  makeVector,
  type RecordBatch,
  RecordBatchReader,
  Table,
  Utf8,
  vectorFromArray,
} from "apache-arrow";
import {
  decodeColumnarBatch,
  encodeColumnarBatch,
  readColumnarBatch,
} from "../packages/server/_columnar.ts";
import { schemaOfHeader } from "../packages/server/_columnar.ts";
import { IpcStreamPieces } from "../packages/server/_ipc_pieces.ts";
import { DRIVER_STUB, DriverFrame, driverFrameHeader } from "../packages/server/_apply_driver.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const SCALE = Number(Deno.env.get("VALISE_BENCH_SCALE") ?? "1");
const ROWS = Math.round(2_000_000 * SCALE);
const BATCH = 65_536;
const REPEATS = Number(Deno.env.get("VALISE_BENCH_REPEATS") ?? "3");
const VENV_PYTHON = `${ROOT}.venv/bin/python`;

const COLUMNS_FN = "def f(c):\n" +
  "    return {'id': c['id'], 'y': [v * 2.0 for v in c['x']],\n" +
  "            'n': [None if s is None else len(s) for s in c['s']]}\n";
const PYARROW_FN = "def f(b):\n    return b\n";

function makeBatch(start: number, n: number): RecordBatch {
  const id = new BigInt64Array(n);
  const x = new Float64Array(n);
  const s: (string | null)[] = new Array(n);
  for (let i = 0; i < n; i++) {
    id[i] = BigInt(start + i);
    x[i] = (start + i) * 0.5;
    s[i] = (start + i) % 10 === 3 ? null : `name-${(start + i) % 9973}`;
  }
  return new Table({
    id: makeVector(makeData({ type: new Int64(), length: n, nullCount: 0, data: id })),
    x: makeVector(makeData({ type: new Float64(), length: n, nullCount: 0, data: x })),
    s: vectorFromArray(s, new Utf8()),
  }).batches[0]!;
}

/** The input as IPC stream pieces (schema, each batch, end), built once. */
function inputPieces(): Uint8Array[] {
  const out: Uint8Array[] = [];
  let pieces: IpcStreamPieces | undefined;
  for (let start = 0; start < ROWS; start += BATCH) {
    const b = makeBatch(start, Math.min(BATCH, ROWS - start));
    if (!pieces) {
      pieces = new IpcStreamPieces(b.schema);
      out.push(pieces.start());
    }
    out.push(pieces.batch(b));
  }
  out.push(pieces!.end());
  return out;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

async function* requests(
  sessionId: string,
  code: string,
  form: ApplyForm,
  input: Uint8Array[],
): AsyncGenerator<ApplyRequest> {
  yield create(ApplyRequestSchema, {
    request: {
      case: "start",
      value: {
        sessionId,
        userContext: { userId: "bench" },
        function: { case: "code", value: code },
        functionName: "f",
        form,
        input: { case: "streamed", value: true },
      },
    },
  });
  for (const bytes of input) {
    yield create(ApplyRequestSchema, { request: { case: "arrowIpc", value: bytes } });
  }
}

/** CPU seconds (user + system) of a process, from /proc; 0 when it is gone. */
async function cpuOf(pid: number | "self"): Promise<number> {
  try {
    const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return 0;
  }
}

/** The processes below `root`: pid → parent, from /proc. */
async function descendants(root: number): Promise<number[]> {
  const parent = new Map<number, number>();
  for await (const e of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const s = await Deno.readTextFile(`/proc/${e.name}/stat`);
      parent.set(Number(e.name), Number(s.slice(s.lastIndexOf(")") + 2).split(" ")[1]));
    } catch { /* gone */ }
  }
  const out: number[] = [];
  for (const pid of parent.keys()) {
    let p = parent.get(pid);
    while (p !== undefined && p > 1 && p !== root) p = parent.get(p);
    if (p === root) out.push(pid);
  }
  return out;
}

/**
 * Samples the CPU time of every process below `root` until stopped: the last value seen per
 * process (a worker that exits keeps its last sample), summed. The processes are looked up in
 * /proc every 500 ms and their CPU read every 50 ms (a full scan at that rate would cost the
 * client a third of its CPU).
 */
function cpuBelow(root: number): { stop(): Promise<number> } {
  const last = new Map<number, number>();
  const first = new Map<number, number>();
  let going = true;
  const loop = (async () => {
    // Processes already running (the fork server) count from now; new ones (workers) from 0.
    for (const pid of await descendants(root)) first.set(pid, await cpuOf(pid));
    let pids = [...first.keys()];
    let scanned = performance.now();
    while (going) {
      if (performance.now() - scanned > 500) {
        pids = await descendants(root);
        scanned = performance.now();
      }
      for (const pid of pids) {
        const c = await cpuOf(pid);
        if (c) last.set(pid, c);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    for (const pid of pids) {
      const c = await cpuOf(pid);
      if (c) last.set(pid, c);
    }
  })();
  return {
    async stop() {
      going = false;
      await loop;
      let total = 0;
      for (const [pid, c] of last) total += c - (first.get(pid) ?? 0);
      return total;
    },
  };
}

interface Call {
  seconds: number;
  client: number;
  server: number;
  python: number;
}

async function viaRpc(
  port: number,
  serverPid: number,
  sessionId: string,
  code: string,
  form: ApplyForm,
  input: Uint8Array[],
  echo = false,
): Promise<Call> {
  const baseUrl = `http://127.0.0.1:${port}`;
  const sessionManager = new Http2SessionManager(baseUrl);
  const workers = createClient(
    WorkerService,
    createGrpcTransport({ baseUrl, sessionManager, acceptCompression: [] }),
  );
  const c0 = await cpuOf("self");
  const s0 = await cpuOf(serverPid);
  const below = cpuBelow(serverPid);
  const t0 = performance.now();
  let rowsOut = 0;
  const out: Uint8Array[] = [];
  for await (const res of workers.apply(requests(sessionId, code, form, input))) {
    const m = res.response;
    if (m.case === "arrowIpc") out.push(m.value);
    else if (m.case === "done") rowsOut = Number(m.value.rowsOut);
    else if (m.case === "error") throw new Error(`${m.value.message}\n${m.value.traceback}`);
  }
  // The client reads what it got, as a user's would.
  let read = 0;
  for await (const b of ipcRecordBatches<RecordBatch>(out, RecordBatchReader)) read += b.numRows;
  const seconds = (performance.now() - t0) / 1000;
  const client = await cpuOf("self") - c0;
  const server = await cpuOf(serverPid) - s0;
  const python = await below.stop();
  sessionManager.abort();
  if ((!echo && rowsOut !== ROWS) || read !== ROWS) {
    throw new Error(`got ${rowsOut} rows, read ${read}`);
  }
  return { seconds, client, server, python };
}

async function run(cmd: string, args: string[], stdin?: string): Promise<string> {
  const child = new Deno.Command(cmd, {
    args,
    stdin: stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  if (stdin) {
    using f = await Deno.open(stdin);
    await f.readable.pipeTo(child.stdin);
  }
  const out = await child.output();
  if (!out.success) throw new Error(`${cmd} exited with ${out.code}`);
  return new TextDecoder().decode(out.stdout);
}

/** The driver's own input for the columns reference: START, the columnar batches, END. */
async function writeColumnarFrames(path: string, input: Uint8Array[]): Promise<void> {
  const parts: Uint8Array[] = [];
  const start = new TextEncoder().encode(JSON.stringify({
    function: { code: COLUMNS_FN, name: "f" },
    form: "columns",
    transport: "columnar",
    fields: null,
    schemaIpc: null,
  }));
  parts.push(driverFrameHeader(DriverFrame.START, start.length), start);
  for await (const b of ipcRecordBatches<RecordBatch>(input, RecordBatchReader)) {
    const enc = encodeColumnarBatch(b);
    parts.push(driverFrameHeader(DriverFrame.DATA, enc.reduce((n, p) => n + p.length, 0)), ...enc);
  }
  parts.push(driverFrameHeader(DriverFrame.END, 0));
  await Deno.writeFile(path, concat(parts));
}

/** Runs the driver on stdin with stdout to /dev/null; prints the CPU seconds it used. */
const CPU_OF_DRIVER = `
import resource, subprocess, sys
p = subprocess.run([sys.executable, '-c', sys.argv[1]], stdout=subprocess.DEVNULL)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(p.returncode, r.ru_utime + r.ru_stime)
`;

/** Wall and CPU seconds of a reference run. */
interface Ref {
  seconds: number;
  cpu: number;
}

/** One Python process: the driver on the columnar frames from a file (output to /dev/null). */
async function columnsReference(python: string, frames: string): Promise<Ref> {
  const t0 = performance.now();
  const [code, cpu] = (await run(python, ["-c", CPU_OF_DRIVER, DRIVER_STUB], frames)).trim()
    .split(" ");
  if (code !== "0") throw new Error("the columns reference failed");
  return { seconds: (performance.now() - t0) / 1000, cpu: Number(cpu) };
}

const PYARROW_REFERENCE = `
import sys, time, pyarrow as pa
ns = {}
exec(sys.argv[2], ns)
f = ns['f']
t0 = time.perf_counter()
with open(sys.argv[1], 'rb') as src, open('/dev/null', 'wb') as sink:
    reader = pa.ipc.open_stream(src)
    writer = None
    rows = 0
    for batch in reader:
        out = f(batch)
        if writer is None:
            writer = pa.ipc.new_stream(sink, out.schema)
        writer.write_batch(out)
        rows += out.num_rows
    writer.close()
print(rows, time.perf_counter() - t0, time.process_time())
`;

/** Stage times of the columnar path, each alone on the same rows (seconds). */
async function stages(python: string, input: Uint8Array[], frames: string, tmp: string) {
  // Server: IPC → columnar (as the server does with the input).
  let t = performance.now();
  const encoded: Uint8Array[][] = [];
  for await (const b of ipcRecordBatches<RecordBatch>(input, RecordBatchReader)) {
    encoded.push(encodeColumnarBatch(b));
  }
  const serverDecode = (performance.now() - t) / 1000;
  // Python: decode, function, encode (the driver's functions, in one process).
  const fn = `${tmp}/fn.py`;
  await Deno.writeTextFile(fn, COLUMNS_FN);
  const outFrames = `${tmp}/out.frames`;
  const py = JSON.parse(
    await run(python, [
      "-c",
      PROFILE_PY,
      frames,
      fn,
      outFrames,
      `${ROOT}packages/server/apply_driver.py`,
    ]),
  );
  // Server: columnar output → IPC (as the server does with the output).
  const out = await Deno.readFile(outFrames);
  const payloads: Uint8Array[] = [];
  for (let pos = 0; pos < out.length;) {
    const n = new DataView(out.buffer, pos).getUint32(0);
    payloads.push(out.slice(pos + 4, pos + 4 + n));
    pos += 4 + n;
  }
  t = performance.now();
  const schema = schemaOfHeader(readColumnarBatch(payloads[0]!).header);
  const pieces = new IpcStreamPieces(schema);
  const ipc: Uint8Array[] = [pieces.start()];
  for (const p of payloads) ipc.push(pieces.batch(decodeColumnarBatch(p, schema)));
  ipc.push(pieces.end());
  const serverEncode = (performance.now() - t) / 1000;
  // Client: read the output stream.
  t = performance.now();
  let rows = 0;
  for await (const b of ipcRecordBatches<RecordBatch>(ipc, RecordBatchReader)) rows += b.numRows;
  const clientDecode = (performance.now() - t) / 1000;
  if (rows !== ROWS) throw new Error(`stages: ${rows} rows`);
  return { serverDecode, ...py, serverEncode, clientDecode, inputBytes: concat(input).length };
}

/** The driver's decode, call and encode, timed apart; writes the output payloads. */
const PROFILE_PY = `
import sys, os, time, json, struct
src = open(sys.argv[4]).read()
src = src[:src.index('# ---- main ----')]
g = {'VALISE': {'frames': {'START': 1, 'DATA': 2, 'END': 3, 'HELLO': 10, 'OUT': 11, 'ERROR': 12,
                           'DONE': 13, 'MARK': 14}, 'file': 'driver'}, '__name__': 'driver'}
out_fd = os.dup(1)
exec(compile(src, 'driver', 'exec'), g)
frames = open(sys.argv[1], 'rb').read()
ns = {}
exec(open(sys.argv[2]).read(), ns)
f = ns['f']
pos, payloads = 0, []
while pos < len(frames):
    n, kind = struct.unpack_from('>IB', frames, pos)
    if kind == 2:
        payloads.append(frames[pos + 5:pos + 4 + n])
    pos += 4 + n
t = {'pythonDecode': 0.0, 'function': 0.0, 'pythonEncode': 0.0}
fields = None
with open(sys.argv[3], 'wb') as sink:
    for p in payloads:
        t0 = time.perf_counter()
        header, rows, cols = g['decode_batch'](p)
        t1 = time.perf_counter()
        res = f(dict(cols))
        t2 = time.perf_counter()
        columns = g['columns_of'](res)
        if fields is None:
            fields = [g['infer_field'](n, v) for n, v in columns]
        parts = g['encode_batch'](columns, fields, rows)
        t3 = time.perf_counter()
        data = b''.join(bytes(x) for x in parts)
        sink.write(struct.pack('>I', len(data)) + data)
        t['pythonDecode'] += t1 - t0
        t['function'] += t2 - t1
        t['pythonEncode'] += t3 - t2
os.write(out_fd, json.dumps(t).encode())
`;

async function median<T>(f: () => Promise<T>, key: (t: T) => number): Promise<T> {
  const runs: T[] = [];
  for (let i = 0; i < REPEATS; i++) runs.push(await f());
  runs.sort((a, b) => key(a) - key(b));
  return runs[Math.floor(runs.length / 2)]!;
}

async function realPython(): Promise<string> {
  return (await run("python3", ["-c", "import sys; print(sys.executable)"])).trim();
}

/** Spawns a server process; its port, from its `listening on host:port` line. */
async function listening(
  child: Deno.ChildProcess,
): Promise<{ port: number; drain: Promise<void> }> {
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
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
  return { port, drain };
}

const loadavg = async () => (await Deno.readTextFile("/proc/loadavg")).split(" ").slice(0, 3);
const loadBefore = await loadavg();
const tmp = await Deno.makeTempDir({ prefix: "valise-apply-inproc-" });
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
    "--allow-interpreter",
    VENV_PYTHON,
    "--quiet",
  ],
  stdout: "piped",
  stderr: "inherit",
}).spawn();
const { port, drain } = await listening(server);
const echoServer = new Deno.Command(Deno.execPath(), {
  args: ["run", "-A", `${ROOT}bench/_apply_echo_server.ts`],
  stdout: "piped",
  stderr: "inherit",
}).spawn();
const echo = await listening(echoServer);

const python = await realPython();
const input = inputPieces();
const inputFile = `${tmp}/input.arrow`;
await Deno.writeFile(inputFile, concat(input));
const frames = `${tmp}/input.frames`;
await writeColumnarFrames(frames, input);
const lines: string[] = [];
const fmt = (n: number) => `${(n / 1e6).toFixed(3)} M`;
try {
  // Columns form.
  const colSession = crypto.randomUUID();
  await viaRpc(port, server.pid, colSession, COLUMNS_FN, ApplyForm.COLUMNS, input); // warm-up
  const col = await median(
    () => viaRpc(port, server.pid, colSession, COLUMNS_FN, ApplyForm.COLUMNS, input),
    (c) => c.seconds,
  );
  const colRef = await median(() => columnsReference(python, frames), (r) => r.seconds);
  // pyarrow form: the session's interpreter is the venv's Python, which has pyarrow.
  const paSession = crypto.randomUUID();
  const baseUrl = `http://127.0.0.1:${port}`;
  const sm = new Http2SessionManager(baseUrl);
  await createClient(SparkConnectService, createGrpcTransport({ baseUrl, sessionManager: sm }))
    .config({
      sessionId: paSession,
      userContext: { userId: "bench" },
      operation: create(ConfigRequest_OperationSchema, {
        opType: {
          case: "set",
          value: { pairs: [{ key: "spark.sql.execution.pyspark.python", value: VENV_PYTHON }] },
        },
      }),
    });
  sm.abort();
  await viaRpc(port, server.pid, paSession, PYARROW_FN, ApplyForm.PYARROW, input);
  const pa = await median(
    () => viaRpc(port, server.pid, paSession, PYARROW_FN, ApplyForm.PYARROW, input),
    (c) => c.seconds,
  );
  const paRef = await median(async (): Promise<Ref> => {
    const t0 = performance.now();
    const [rows, , cpu] = (await run(VENV_PYTHON, ["-c", PYARROW_REFERENCE, inputFile, PYARROW_FN]))
      .trim().split(" ");
    if (Number(rows) !== ROWS) throw new Error(`pyarrow reference: ${rows} rows`);
    return { seconds: (performance.now() - t0) / 1000, cpu: Number(cpu) };
  }, (r) => r.seconds);
  await viaRpc(echo.port, echoServer.pid, "", PYARROW_FN, ApplyForm.PYARROW, input, true);
  const floor = await median(
    () => viaRpc(echo.port, echoServer.pid, "", PYARROW_FN, ApplyForm.PYARROW, input, true),
    (c) => c.seconds,
  );
  const st = await stages(python, input, frames, tmp);

  const row = (name: string, c: Call, ref: Ref, refName: string) => {
    const cpu = c.client + c.server + c.python;
    return `| ${name} | ${fmt(ROWS / c.seconds)} | ${c.seconds.toFixed(2)} s | ${refName} ${
      fmt(ROWS / ref.seconds)
    } (${ref.seconds.toFixed(2)} s) | **${(ref.seconds / c.seconds).toFixed(2)}×** | ${
      c.client.toFixed(2)
    } + ${c.server.toFixed(2)} + ${c.python.toFixed(2)} = ${cpu.toFixed(2)} | ${
      ref.cpu.toFixed(2)
    } | ${(ref.cpu / cpu).toFixed(2)}× |`;
  };
  lines.push(
    `### Apply vs in-process: ${
      ROWS.toLocaleString("en")
    } rows × (int64, float64, utf8 with nulls), ${BATCH} rows per batch\n`,
    `Columns form: default interpreter ${python} (no pyarrow). pyarrow form: ${VENV_PYTHON}. ` +
      `Input ${(st.inputBytes / 1e6).toFixed(0)} MB of Arrow IPC. Medians of ${REPEATS}.\n`,
    "| form | RPC rows/s | RPC time | reference (same run) | wall ratio | RPC CPU s: client + server + Python (fork server, worker) | reference CPU s | CPU ratio |",
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
    row("columns (two new columns)", col, colRef, "driver in one process"),
    row("pyarrow (identity)", pa, paRef, "pyarrow in one process"),
    row("RPC floor: the same calls echoed, no worker", floor, paRef, "pyarrow in one process"),
    "",
    `The floor is the same client against a server of the same HTTP/2 settings and Connect ` +
      `adapter that sends each input message straight back: the best the pyarrow form can do over ` +
      `this RPC is ${(paRef.seconds / floor.seconds).toFixed(2)}× in wall time and ${
        (paRef.cpu / (floor.client + floor.server)).toFixed(2)
      }× in CPU. Beyond the floor, Valise's pyarrow identity costs ${
        (pa.seconds - floor.seconds).toFixed(2)
      } s and ${
        (pa.client + pa.server + pa.python - floor.client - floor.server).toFixed(2)
      } CPU-s. Load average before ${loadBefore.join(" ")}, after ${(await loadavg()).join(" ")}.`,
    "",
    "Stage profile of the columns form, each stage alone on the same rows (seconds):\n",
    "| server: IPC → columnar | Python decode | function | Python encode | server: columnar → IPC | client: read IPC |",
    "| --- | --- | --- | --- | --- | --- |",
    `| ${st.serverDecode.toFixed(2)} | ${st.pythonDecode.toFixed(2)} | ${
      st.function.toFixed(2)
    } | ${st.pythonEncode.toFixed(2)} | ${st.serverEncode.toFixed(2)} | ${
      st.clientDecode.toFixed(2)
    } |`,
  );
} finally {
  server.kill("SIGTERM");
  echoServer.kill("SIGTERM");
  await server.status;
  await echoServer.status;
  await drain;
  await echo.drain;
  await Deno.remove(tmp, { recursive: true });
}
console.log(lines.join("\n"));
