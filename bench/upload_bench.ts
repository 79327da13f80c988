// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Artifact upload: a large file uploaded by the PySpark stand-in (`tests/python/spark_artifacts.py`,
 * grpcio, 32 KiB chunks, as `files/big.bin`) to the grpcio reference server
 * (`bench/grpcio_ref_server.py`: staging dir, CRC per chunk, streaming write, rename commit) and
 * to the Valise server, alternating, in the same run. Reports MB/s of each, the ratio, and the
 * servers' peak RSS during a 64 MiB and a full-size upload (VmRSS polled from /proc).
 *
 * Env: VALISE_BENCH_UPLOAD_MB (default 256), VALISE_BENCH_UPLOAD_REPS (default 3).
 *
 * @module
 */
const ROOT = new URL("../", import.meta.url).pathname;
const PY = "/usr/bin/python3";
const CLIENT = `${ROOT}tests/python/spark_artifacts.py`;
const MiB = 1024 * 1024;
const SIZE_MB = Number(Deno.env.get("VALISE_BENCH_UPLOAD_MB") ?? "256");
const REPS = Number(Deno.env.get("VALISE_BENCH_UPLOAD_REPS") ?? "3");
const SMALL_MB = Math.min(64, SIZE_MB);

interface Server {
  name: string;
  pid: number;
  port: number;
  dataDir: string;
  stop(): Promise<void>;
}

async function startServer(name: string, cmd: string, args: string[], dataDir: string) {
  const child = new Deno.Command(cmd, { args, stdout: "piped", stderr: "inherit" }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let port = 0;
  while (!port) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`${name} exited before listening: ${buf}`);
    buf += value;
    const m = buf.match(/listening on [^\s]+:(\d+)/);
    if (m) port = Number(m[1]);
  }
  const drain = (async () => {
    while (!(await reader.read()).done) { /* discard */ }
  })();
  const server: Server = {
    name,
    pid: child.pid,
    port,
    dataDir,
    async stop() {
      child.kill("SIGTERM");
      await child.status;
      await drain;
    },
  };
  return server;
}

/** VmRSS and VmHWM of a process, in bytes. */
async function memOf(pid: number): Promise<{ rss: number; hwm: number }> {
  const text = await Deno.readTextFile(`/proc/${pid}/status`);
  const kb = (k: string) => Number(text.match(new RegExp(`^${k}:\\s+(\\d+) kB`, "m"))?.[1] ?? 0);
  return { rss: kb("VmRSS") * 1024, hwm: kb("VmHWM") * 1024 };
}

async function writeRandomFile(path: string, bytes: number): Promise<void> {
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  const buf = new Uint8Array(MiB);
  for (let done = 0; done < bytes; done += MiB) {
    for (let i = 0; i < buf.length; i += 65536) crypto.getRandomValues(buf.subarray(i, i + 65536));
    const n = Math.min(MiB, bytes - done);
    let off = 0;
    while (off < n) off += await f.write(buf.subarray(off, n));
  }
  f.close();
}

async function findFileOfSize(dir: string, size: number): Promise<boolean> {
  for await (const e of Deno.readDir(dir)) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory && await findFileOfSize(p, size)) return true;
    if (e.isFile && (await Deno.stat(p)).size === size) return true;
  }
  return false;
}

/** User + system CPU seconds the process has used so far (clock ticks are 1/100 s on Linux). */
async function cpuOf(pid: number): Promise<number> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

interface Upload {
  seconds: number;
  peakRss: number;
  serverCpu: number;
}

/** Uploads `file` as `files/big.bin` in a new session while polling the server's RSS. */
async function upload(server: Server, file: string, bytes: number): Promise<Upload> {
  const session = crypto.randomUUID();
  const remote = `sc://127.0.0.1:${server.port}`;
  let peakRss = (await memOf(server.pid)).rss;
  const cpu0 = await cpuOf(server.pid);
  let polling = true;
  const poll = (async () => {
    while (polling) {
      peakRss = Math.max(peakRss, (await memOf(server.pid)).rss);
      await new Promise((ok) => setTimeout(ok, 20));
    }
  })();
  const res = await new Deno.Command(PY, {
    args: [CLIENT, "--remote", remote, "--session", session, "add", "--file", file],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  polling = false;
  await poll;
  const serverCpu = await cpuOf(server.pid) - cpu0;
  const out = JSON.parse(new TextDecoder().decode(res.stdout));
  const arts = out.responses?.[0]?.artifacts;
  if (
    !out.ok || arts?.length !== 1 || arts[0].name !== "files/big.bin" ||
    !arts[0].is_crc_successful
  ) {
    throw new Error(`${server.name}: upload failed: ${JSON.stringify(out)}`);
  }
  if (!await findFileOfSize(server.dataDir, bytes)) {
    throw new Error(`${server.name}: no stored file of ${bytes} bytes under ${server.dataDir}`);
  }
  // Free the disk space between repetitions.
  if (server.name === "reference") {
    await Deno.remove(`${server.dataDir}/sessions/${session}`, { recursive: true });
  } else {
    await new Deno.Command(PY, {
      args: [CLIENT, "--remote", remote, "--session", session, "release"],
      stdout: "null",
      stderr: "inherit",
    }).output();
  }
  return { seconds: out.elapsed_s as number, peakRss, serverCpu };
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const mib = (b: number): string => (b / MiB).toFixed(0);

const tmp = await Deno.makeTempDir({ prefix: "valise_upload_bench_" });
const servers: Server[] = [];
try {
  const bigDir = `${tmp}/big`;
  const smallDir = `${tmp}/small`;
  await Deno.mkdir(bigDir);
  await Deno.mkdir(smallDir);
  const big = `${bigDir}/big.bin`;
  const small = `${smallDir}/big.bin`;
  await writeRandomFile(big, SIZE_MB * MiB);
  await writeRandomFile(small, SMALL_MB * MiB);

  servers.push(
    await startServer("reference", PY, [
      `${ROOT}bench/grpcio_ref_server.py`,
      "--port",
      "0",
      "--data-dir",
      `${tmp}/ref`,
    ], `${tmp}/ref`),
  );
  let valiseMissing = false;
  try {
    await Deno.stat(`${ROOT}packages/server/main.ts`);
    servers.push(
      await startServer("valise", Deno.execPath(), [
        "run",
        "-A",
        `${ROOT}packages/server/main.ts`,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--data-dir",
        `${tmp}/valise`,
        "--quiet",
      ], `${tmp}/valise`),
    );
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    valiseMissing = true;
  }

  const idle = new Map<string, number>();
  const smallPeak = new Map<string, number>();
  for (const s of servers) idle.set(s.name, (await memOf(s.pid)).rss);
  // Warm-up and the 64 MiB RSS figure, on fresh servers.
  for (const s of servers) smallPeak.set(s.name, (await upload(s, small, SMALL_MB * MiB)).peakRss);

  const runs = new Map<string, Upload[]>(servers.map((s) => [s.name, []]));
  for (let i = 0; i < REPS; i++) {
    for (const s of servers) runs.get(s.name)!.push(await upload(s, big, SIZE_MB * MiB));
  }

  const mbps = (u: Upload[]) => median(u.map((r) => SIZE_MB * MiB / 1e6 / r.seconds));
  console.log(
    `${SIZE_MB} MiB random file uploaded as \`files/big.bin\` by the PySpark stand-in ` +
      `(grpcio ${"1.51"}, 32 KiB chunks, one stream), ${REPS} runs per server, alternating; ` +
      `median MB/s (10^6 bytes/s, client-side time of the RPC). Peak RSS = highest VmRSS of ` +
      `the server process polled every 20 ms during the upload; server CPU = user+system ` +
      `seconds of the server process per GiB uploaded (median). Client and server share ` +
      `${navigator.hardwareConcurrency} CPUs.\n`,
  );
  console.log(
    `| server | MB/s (median) | runs (MB/s) | RSS idle | peak RSS, ${SMALL_MB} MiB upload | ` +
      `peak RSS, ${SIZE_MB} MiB uploads | server CPU s/GiB |`,
  );
  console.log("|---|---|---|---|---|---|---|");
  for (const s of servers) {
    const u = runs.get(s.name)!;
    const label = s.name === "reference" ? "grpcio reference (C core, Python handler)" : "Valise";
    console.log(
      `| ${label} | ${mbps(u).toFixed(1)} | ${
        u.map((r) => (SIZE_MB * MiB / 1e6 / r.seconds).toFixed(1)).join(", ")
      } | ${mib(idle.get(s.name)!)} MiB | ${mib(smallPeak.get(s.name)!)} MiB | ${
        mib(Math.max(...u.map((r) => r.peakRss)))
      } MiB | ${median(u.map((r) => r.serverCpu / (SIZE_MB / 1024))).toFixed(2)} |`,
    );
  }
  if (valiseMissing) {
    console.log("\nValise server not measured: packages/server/main.ts does not exist yet.");
  } else {
    const ratio = mbps(runs.get("valise")!) / mbps(runs.get("reference")!);
    console.log(`\nValise / reference throughput: **${ratio.toFixed(2)}x**`);
  }
} finally {
  for (const s of servers) await s.stop();
  await Deno.remove(tmp, { recursive: true });
}
