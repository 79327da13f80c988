// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Valise's own client on loopback: a random file added by `@valise/client`
 * (`session.addArtifacts(path, { fastPath: false })`: one AddArtifacts stream in 1 MiB
 * chunks, after hashing the file) to the Valise server (`packages/server/main.ts`, another
 * process), a new session per upload. Reports MB/s of the upload phase (first byte sent to the
 * server's answer, from the client's progress reports) and of the whole call (hash included),
 * median of the runs.
 *
 * Beside it, in alternating runs, the ceiling of the platform: the same bytes written in 1 MiB
 * pieces from this process over one `node:http2` stream to a bare sink in another process
 * (`h2_sink.ts`: Deno's `node:http2` with the server's window settings, no gRPC, no hashing, no
 * disk). Valise's server runs on that layer, so its upload cannot be faster than the sink.
 *
 * Then the server's memory during one large upload (default 4 GiB, a sparse file: the server
 * receives, hashes and stages every byte all the same), VmRSS polled every 20 ms: before any
 * upload, after the timed uploads (warm), and the highest seen during the large one.
 *
 * Beside the rates, the CPU each side spent per GB of the timed uploads (user + system time from
 * `/proc`, the client's including its hashing pass): unlike MB/s, it hardly moves with what else
 * runs on the machine.
 *
 * Env: VALISE_BENCH_CLIENT_UPLOAD_MB (default 256), VALISE_BENCH_CLIENT_UPLOAD_REPS (default 5),
 * VALISE_BENCH_RSS_UPLOAD_MB (default 4096; 0 skips it), VALISE_BENCH_UPLOAD_TMP (where the
 * server's data directory and the files go; default the system's temporary directory — e.g.
 * `/dev/shm` takes the disk out of the measure: writes to a disk slow down as its dirty pages
 * grow, and the server's system time with them).
 *
 * @module
 */
import { createHash } from "node:crypto";
import http2 from "node:http2";
import { join } from "node:path";
import { connect } from "@valise/client";
import { startServer } from "../tests/_server.ts";
import { median, MiB, mib, writeRandomFile } from "./_peers.ts";

const SIZE_MB = Number(Deno.env.get("VALISE_BENCH_CLIENT_UPLOAD_MB") ?? "256");
const REPS = Number(Deno.env.get("VALISE_BENCH_CLIENT_UPLOAD_REPS") ?? "5");
const RSS_MB = Number(Deno.env.get("VALISE_BENCH_RSS_UPLOAD_MB") ?? "4096");

interface Timed {
  /** Seconds from the first byte sent to the answer. */
  upload: number;
  /** Seconds of the whole call, hashing included. */
  whole: number;
}

/** CPU seconds (user + system) a process has used so far. */
function cpuSeconds(pid: number | "self"): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // utime and stime, in clock ticks (100 per second on Linux).
  return (Number(f[11]) + Number(f[12])) / 100;
}

async function add(remote: string, file: string): Promise<Timed> {
  const session = connect(remote);
  try {
    let first = 0;
    const t0 = performance.now();
    await session.addArtifacts(file, {
      file: true,
      fastPath: false,
      onProgress: (p) => {
        if (p.phase === "upload" && first === 0) first = performance.now();
      },
    });
    const t1 = performance.now();
    return { upload: (t1 - first) / 1000, whole: (t1 - t0) / 1000 };
  } finally {
    await session.release().catch(() => {});
  }
}

/** Hashes `file` in 1 MiB reads; returns its size. */
async function sha256File(file: string): Promise<number> {
  using f = await Deno.open(file);
  const h = createHash("sha256");
  const buf = new Uint8Array(MiB);
  let size = 0;
  for (;;) {
    const n = await f.read(buf);
    if (n === null) break;
    h.update(buf.subarray(0, n));
    size += n;
  }
  h.digest();
  return size;
}

/** Starts the bare sink; returns its port and a stop function. */
async function startSink(): Promise<{ port: number; pid: number; stop: () => Promise<void> }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("./h2_sink.ts", import.meta.url).pathname],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let line = "";
  while (!line.includes("\n")) {
    const r = await reader.read();
    if (r.done) throw new Error("h2_sink ended before printing its port");
    line += r.value;
  }
  reader.releaseLock();
  child.stdout.cancel().catch(() => {});
  return {
    port: Number(line.trim()),
    pid: child.pid,
    stop: async () => {
      child.kill("SIGTERM");
      await child.status;
    },
  };
}

/** Seconds to send `file` over one HTTP/2 stream to the sink, in 1 MiB writes. */
async function sinkUpload(port: number, file: string): Promise<number> {
  const client = http2.connect(`http://127.0.0.1:${port}`, {
    settings: { initialWindowSize: 4 << 20 },
  });
  try {
    await new Promise<void>((ok, fail) => client.once("connect", () => ok()).once("error", fail));
    using f = await Deno.open(file);
    const t0 = performance.now();
    const req = client.request({ ":method": "POST", ":path": "/sink" });
    let answer = "";
    const done = new Promise<void>((ok, fail) => {
      req.on("data", (d) => answer += d);
      req.on("end", () => ok());
      req.on("error", fail);
    });
    const buf = new Uint8Array(MiB);
    for (;;) {
      let n = 0;
      while (n < buf.length) {
        const r = await f.read(buf.subarray(n));
        if (r === null) break;
        n += r;
      }
      if (n === 0) break;
      // node:http2 keeps the buffer until it is written: a copy per piece, as a client makes.
      if (!req.write(buf.slice(0, n))) await new Promise((ok) => req.once("drain", ok));
      if (n < buf.length) break;
    }
    req.end();
    await done;
    const secs = (performance.now() - t0) / 1000;
    if (Number(answer) !== (await Deno.stat(file)).size) {
      throw new Error(`the sink counted ${answer} bytes`);
    }
    return secs;
  } finally {
    client.close();
  }
}

const tmpRoot = Deno.env.get("VALISE_BENCH_UPLOAD_TMP");
const tmp = await Deno.makeTempDir({
  prefix: "valise_client_upload_bench_",
  ...(tmpRoot ? { dir: tmpRoot } : {}),
});
const server = await startServer({ dataDir: join(tmp, "data"), args: ["--quiet"] });
try {
  const remote = `sc://127.0.0.1:${server.port}/;user_id=bench`;
  await Deno.mkdir(join(tmp, "f"));
  const file = join(tmp, "f", "big.bin");
  const rssFresh = server.rss();
  await writeRandomFile(file, 64 * MiB);
  await add(remote, file); // warm-up, not counted
  const runs: Timed[] = [];
  const sinkRuns: number[] = [];
  const sink = await startSink();
  let serverCpu = 0;
  let clientCpu = 0;
  let sinkCpu = 0;
  let senderCpu = 0;
  try {
    await sinkUpload(sink.port, file); // warm-up, not counted
    for (let i = 0; i < REPS; i++) {
      // New bytes each time: the server keeps released sessions' blobs as a cache.
      await writeRandomFile(file, SIZE_MB * MiB);
      const s0 = cpuSeconds(server.pid);
      const c0 = cpuSeconds("self");
      runs.push(await add(remote, file));
      serverCpu += cpuSeconds(server.pid) - s0;
      clientCpu += cpuSeconds("self") - c0;
      const k0 = cpuSeconds(sink.pid);
      const e0 = cpuSeconds("self");
      sinkRuns.push(await sinkUpload(sink.port, file));
      sinkCpu += cpuSeconds(sink.pid) - k0;
      senderCpu += cpuSeconds("self") - e0;
    }
  } finally {
    await sink.stop();
  }
  const rate = (s: number) => SIZE_MB * MiB / 1e6 / s;
  console.log(
    `${SIZE_MB} MiB random file added by \`@valise/client\` (\`addArtifacts(path, ` +
      `{ file: true, fastPath: false })\`, 1 MiB chunks, one stream) to \`packages/server/main.ts\` on ` +
      `loopback, a new session each, ${REPS} runs after a 64 MiB warm-up; MB/s = 10^6 bytes/s; ` +
      `${navigator.hardwareConcurrency} CPUs shared by client and server; data directory under ` +
      `${tmpRoot ?? "the system's temporary directory"}.\n`,
  );
  console.log("| measure | MB/s (median) | runs (MB/s) |");
  console.log("|---|---|---|");
  console.log(
    `| upload (first byte sent → answer) | ${
      rate(median(runs.map((r) => r.upload))).toFixed(1)
    } | ${runs.map((r) => rate(r.upload).toFixed(1)).join(", ")} |`,
  );
  console.log(
    `| whole call (hash + upload) | ${rate(median(runs.map((r) => r.whole))).toFixed(1)} | ${
      runs.map((r) => rate(r.whole).toFixed(1)).join(", ")
    } |`,
  );
  const gb = REPS * SIZE_MB * MiB / 1e9;
  console.log(
    `| CPU per GB uploaded: server / client (hash pass included) | ${
      (serverCpu / gb).toFixed(2)
    } s / ${(clientCpu / gb).toFixed(2)} s | (sum of the ${REPS} runs) |`,
  );
  const sinkRate = rate(median(sinkRuns));
  console.log(
    `| reference: bare \`node:http2\` stream to a sink process (no gRPC, hash or disk) | ${
      sinkRate.toFixed(1)
    } | ${sinkRuns.map((s) => rate(s).toFixed(1)).join(", ")} |`,
  );
  console.log(
    `| CPU per GB, bare sink: sink / sender (file read included) | ${
      (sinkCpu / gb).toFixed(2)
    } s / ${(senderCpu / gb).toFixed(2)} s | (sum of the ${REPS} runs) |`,
  );
  // What the content address costs on this CPU, once per side: the server hashes what it stores,
  // the client what it offers (HasBlobs).
  const h0 = cpuSeconds("self");
  const hashed = await sha256File(file);
  console.log(
    `| sha256 of the file in this process (node:crypto) | ${
      (hashed / 1e6 / (cpuSeconds("self") - h0)).toFixed(0)
    } MB per CPU second | |`,
  );
  console.log(
    `\nValise upload / bare node:http2 in the same run: **${
      (rate(median(runs.map((r) => r.upload))) / sinkRate).toFixed(2)
    }x**; load average ${Deno.loadavg().map((l) => l.toFixed(2)).join(" ")}.`,
  );

  if (RSS_MB > 0) {
    const big = join(tmp, "f", "huge.bin");
    await Deno.remove(file);
    // Sparse: costs no disk to make, reads as zeros.
    await Deno.truncate(big, RSS_MB * MiB).catch(async () => {
      await Deno.writeFile(big, new Uint8Array(0));
      await Deno.truncate(big, RSS_MB * MiB);
    });
    const warm = server.rss();
    let peak = warm;
    let polling = true;
    const poll = (async () => {
      while (polling) {
        peak = Math.max(peak, server.rss());
        await new Promise((ok) => setTimeout(ok, 20));
      }
    })();
    const t = await add(remote, big);
    polling = false;
    await poll;
    const after = server.rss();
    console.log(
      `\nServer memory during one ${RSS_MB} MiB upload (${
        (RSS_MB * MiB / 1e6 / t.upload).toFixed(1)
      } MB/s): VmRSS fresh ${mib(rssFresh)} MiB, warm (after the runs above) ${
        mib(warm)
      } MiB, peak during the upload ${mib(peak)} MiB (**+${mib(peak - warm)} MiB** over warm, +${
        mib(peak - rssFresh)
      } MiB over fresh), after ${mib(after)} MiB.`,
    );
  }
} finally {
  await server.stop();
  await Deno.remove(tmp, { recursive: true });
}
