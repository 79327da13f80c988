// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The PySpark stand-in (`tests/python/spark_artifacts.py`, which the upload benchmark and the
 * broken-stream tests drive) and the grpcio reference server (`bench/grpcio_ref_server.py`): the
 * stand-in's requests checked against the protocol's rules and against what the real PySpark
 * client sends for the same calls, then the real client's uploads to the reference server checked
 * on disk, byte for byte, and broken streams refused.
 *
 * @module
 */
import { deepEqual as assertEquals, ok as assert } from "node:assert/strict";
import { VENV_PYTHON, venvMissing } from "./_python.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const PY = "/usr/bin/python3";
const CLIENT = `${ROOT}tests/python/spark_artifacts.py`;
const REF_SERVER = `${ROOT}bench/grpcio_ref_server.py`;
const RECORD = `${ROOT}tests/python/record_pyspark_artifacts.py`;
const OPS = `${ROOT}tests/python/pyspark_ops.py`;
const missing = venvMissing();

/** A test that needs the real PySpark client of `.venv/`; ignored, saying why, without it. */
function venvTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name: missing ? `${name} (ignored: ${missing})` : name, ignore: !!missing, fn });
}

type Json = Record<string, unknown> & { ok: boolean };

async function run(args: string[]): Promise<{ code: number; out: Json; stderr: string }> {
  const res = await new Deno.Command(PY, { args, stdout: "piped", stderr: "piped" }).output();
  const stdout = new TextDecoder().decode(res.stdout);
  const stderr = new TextDecoder().decode(res.stderr);
  let out: Json;
  try {
    out = JSON.parse(stdout) as Json;
  } catch {
    throw new Error(`not JSON from ${args.join(" ")}: ${stdout}\n${stderr}`);
  }
  return { code: res.code, out, stderr };
}

interface Server {
  port: number;
  stop(): Promise<void>;
}

/** Starts a process that prints `... listening on <host>:<port>` on stdout. */
async function startServer(cmd: string, args: string[]): Promise<Server> {
  const child = new Deno.Command(cmd, { args, stdout: "piped", stderr: "inherit" }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let port = 0;
  while (!port) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`${cmd} ${args.join(" ")} exited before listening: ${buf}`);
    buf += value;
    const m = buf.match(/listening on [^\s]+:(\d+)/);
    if (m) port = Number(m[1]);
  }
  // Keep draining stdout so the server never blocks on a full pipe.
  const drain = (async () => {
    while (!(await reader.read()).done) { /* discard */ }
  })();
  return {
    port,
    async stop() {
      child.kill("SIGTERM");
      await child.status;
      await drain;
    },
  };
}

async function sha256(path: string): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", await Deno.readFile(path));
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      const p = `${dir}/${e.name}`;
      if (e.isDirectory) out.push(...await listFiles(p));
      else out.push(p);
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return out.sort();
}

function randomBytes(n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) crypto.getRandomValues(b.subarray(i, Math.min(n, i + 65536)));
  return b;
}

Deno.test("spark_artifacts stand-in follows the protocol rules (recording server)", async () => {
  const res = await new Deno.Command(PY, {
    args: [`${ROOT}tests/python/spark_artifacts_selftest.py`],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(res.stderr);
  assert(res.success, text);
  assert(/\nOK/.test(text), text);
});

interface Described {
  kind: string;
  client_type?: string;
  [k: string]: unknown;
}

/** The streams a client sends for one addArtifacts call, without the client's name. */
function streamsOf(out: string): Described[][] {
  const streams = (JSON.parse(out) as { streams: Described[][] }).streams;
  return streams.map((s) =>
    s.map((m) => {
      const { client_type: _, ...rest } = m;
      return rest;
    })
  );
}

venvTest("the stand-in sends exactly what the real PySpark client sends", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "valise_standin_" });
  try {
    const bytes: Record<string, Uint8Array> = {
      "dep.py": new TextEncoder().encode("X = 1\n"),
      "small.txt": new TextEncoder().encode("small"),
      "exact.bin": randomBytes(32768),
      "big.bin": randomBytes(100_001),
      "env.tar.gz": randomBytes(40_000),
      "lib.zip": randomBytes(1000),
    };
    for (const [n, b] of Object.entries(bytes)) await Deno.writeFile(`${tmp}/${n}`, b);
    const cases: [string, string[]][] = [
      ["--pyfile", [`${tmp}/dep.py`]],
      ["--pyfile", [`${tmp}/lib.zip`]],
      ["--file", [`${tmp}/small.txt`, `${tmp}/exact.bin`, `${tmp}/big.bin`]],
      ["--archive", [`${tmp}/env.tar.gz#environment`]],
    ];
    const session = crypto.randomUUID();
    for (const [flag, paths] of cases) {
      const args = ["--session", session, "--user", "ada"];
      const real = await new Deno.Command(VENV_PYTHON, {
        args: [RECORD, ...args, flag, ...paths],
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert(real.success, new TextDecoder().decode(real.stderr));
      const stand = await new Deno.Command(PY, {
        args: [CLIENT, ...args, "plan", flag, ...paths],
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert(stand.success, new TextDecoder().decode(stand.stderr));
      const want = streamsOf(new TextDecoder().decode(real.stdout));
      assert(want.flat().length > 0, `${flag} ${paths}: PySpark sent nothing`);
      assertEquals(streamsOf(new TextDecoder().decode(stand.stdout)), want, `${flag} ${paths}`);
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

venvTest(
  "reference server stores what the real PySpark client uploads, byte for byte",
  async () => {
    const tmp = await Deno.makeTempDir({ prefix: "valise_ref_" });
    const data = `${tmp}/data`;
    const server = await startServer(PY, [REF_SERVER, "--port", "0", "--data-dir", data]);
    try {
      const session = crypto.randomUUID();
      const files: Record<string, Uint8Array> = {
        "dep.py": new TextEncoder().encode("X = 1\n"),
        "exact.bin": randomBytes(32768),
        "big.bin": randomBytes(100_001),
        "env.tar.gz": randomBytes(40_000),
      };
      for (const [n, b] of Object.entries(files)) await Deno.writeFile(`${tmp}/${n}`, b);
      const remote = `sc://127.0.0.1:${server.port}/;session_id=${session}`;
      const ops = [
        { op: "add", paths: [`${tmp}/dep.py`], pyfile: true },
        { op: "add", paths: [`${tmp}/exact.bin`, `${tmp}/big.bin`], file: true },
        { op: "add", paths: [`${tmp}/env.tar.gz#environment`], archive: true },
      ];
      const out = await new Deno.Command(VENV_PYTHON, {
        args: [OPS, "--remote", remote, JSON.stringify(ops)],
        stdout: "piped",
        stderr: "piped",
      }).output();
      const r = JSON.parse(new TextDecoder().decode(out.stdout)) as { ok: boolean };
      assert(r.ok, JSON.stringify(r) + new TextDecoder().decode(out.stderr));
      const root = `${data}/sessions/${session}`;
      const want: Record<string, string> = {
        "pyfiles/dep.py": "dep.py",
        "files/exact.bin": "exact.bin",
        "files/big.bin": "big.bin",
        "archives/env.tar.gz": "env.tar.gz",
      };
      assertEquals(await listFiles(root), Object.keys(want).map((k) => `${root}/${k}`).sort());
      for (const [stored, src] of Object.entries(want)) {
        assertEquals(await sha256(`${root}/${stored}`), await sha256(`${tmp}/${src}`), stored);
      }
    } finally {
      await server.stop();
      await Deno.remove(tmp, { recursive: true });
    }
  },
);

// Broken streams: the real client never sends them, so the stand-in does.
Deno.test("reference server refuses broken streams from the stand-in and keeps nothing staged", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "valise_ref_" });
  const data = `${tmp}/data`;
  const server = await startServer(PY, [REF_SERVER, "--port", "0", "--data-dir", data]);
  try {
    const remote = `sc://127.0.0.1:${server.port}`;
    const session = crypto.randomUUID();
    const base = ["--remote", remote, "--session", session];
    const root = `${data}/sessions/${session}`;
    let r: Awaited<ReturnType<typeof run>>;
    // Broken streams: errors come back as JSON and nothing is committed or left staged.
    const broken: [string, unknown[], string][] = [
      ["chunk without begin", [{ chunk: { data: "abc" } }], "INTERNAL"],
      [
        "too few chunks",
        [{ artifact: { name: "files/few", size: 100_000, drop_chunks: 1 } }],
        "INTERNAL",
      ],
      [
        "stream ends with a chunked artifact open",
        [{
          begin_chunk: {
            name: "files/open",
            total_bytes: 10,
            num_chunks: 2,
            initial_chunk: { data: "ab" },
          },
        }],
        "INTERNAL",
      ],
      [
        "cancelled mid-upload",
        [{ artifact: { name: "files/cancel", size: 100_000, drop_chunks: 1 } }, { cancel: true }],
        "CANCELLED",
      ],
    ];
    for (const [what, steps, code] of broken) {
      r = await run([CLIENT, ...base, "raw", JSON.stringify(steps)]);
      assertEquals(r.code, 1, what);
      assertEquals((r.out.error as { code: string }).code, code, what);
    }
    r = await run([
      CLIENT,
      ...base,
      "raw",
      JSON.stringify([
        { artifact: { name: "files/badcrc", size: 70_000, corrupt_chunk: 1 } },
        { artifact: { name: "files/ok", data: "fine" } },
      ]),
    ]);
    assertEquals(r.code, 0, JSON.stringify(r.out));
    assertEquals((r.out.response as { artifacts: unknown[] }).artifacts, [
      { name: "files/badcrc", is_crc_successful: false },
      { name: "files/ok", is_crc_successful: true },
    ]);
    assertEquals(await listFiles(root), [`${root}/files/ok`]);
    // A cancelled RPC is cleaned up by the server after the client has gone; wait for it
    // by polling the staging area (no timing assertion: the test only needs it to happen).
    for (let i = 0; (await listFiles(`${data}/staging`)).length && i < 200; i++) {
      await new Promise((ok) => setTimeout(ok, 50));
    }
    assertEquals(await listFiles(`${data}/staging`), []);
  } finally {
    await server.stop();
    await Deno.remove(tmp, { recursive: true });
  }
});
