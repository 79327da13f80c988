// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Upload anchor, versus Apache Spark: one random file uploaded as `files/big.bin` by the real
 * PySpark client (`spark.addArtifacts(path, file=True)` in `bench/pyspark_client.py`, the
 * project's `.venv/`) to the real Spark Connect server (`tests/_spark.ts`, the pyspark wheel's
 * jars), to the grpcio reference server (`bench/grpcio_ref_server.py`) and to Valise
 * (`packages/server/main.ts`), alternating, in the same run. Reports MB/s (the client's time
 * of the call), the peak RSS of each server's process tree (polled every 20 ms; Spark's JVM and
 * whatever it started) and the server's CPU per GiB.
 *
 * Env: VALISE_BENCH_SPARK_UPLOAD_MB (default 256), VALISE_BENCH_SPARK_UPLOAD_REPS (default 5).
 * Without `.venv/` or Java it says why and measures nothing.
 *
 * @module
 */
import { join } from "node:path";
import { sparkMissing, type SparkServer, startSpark } from "../tests/_spark.ts";
import { type ServerProcess, startServer } from "../tests/_server.ts";
import {
  cpuOf,
  Driver,
  hasCopyOf,
  median,
  MiB,
  mib,
  peakRssOf,
  type Peer,
  pollTreeRss,
  startReference,
  treeRss,
  writeRandomFile,
} from "./_peers.ts";

const SIZE_MB = Number(Deno.env.get("VALISE_BENCH_SPARK_UPLOAD_MB") ?? "256");
const REPS = Number(Deno.env.get("VALISE_BENCH_SPARK_UPLOAD_REPS") ?? "5");
const WARM_MB = Math.min(64, SIZE_MB);

interface Upload {
  seconds: number;
  peakRss: number;
  cpu: number;
}

/** One upload in a new session; the stored copy is checked before the session is released. */
async function upload(peer: Peer, file: string): Promise<Upload> {
  const cpu0 = await cpuOf(peer.pid);
  const poll = pollTreeRss(peer.pid);
  const noStop = peer.addOnly ? ["--no-stop"] : [];
  const driver = new Driver(["upload", "--remote", peer.remote, "--file", file, ...noStop]);
  try {
    const added = await driver.next("added");
    const peakRss = await poll.stop();
    const cpu = await cpuOf(peer.pid) - cpu0;
    if (!await hasCopyOf(peer.dir, file)) {
      throw new Error(`${peer.name}: no stored copy of ${file} under ${peer.dir}`);
    }
    await driver.finish();
    if (peer.addOnly) {
      await Deno.remove(join(peer.dir, "sessions", String(added.session_id)), { recursive: true });
    }
    return { seconds: Number(added.elapsed_s), peakRss, cpu };
  } catch (e) {
    await poll.stop();
    await driver.kill();
    throw e;
  }
}

function sparkPeer(s: SparkServer): Peer {
  return { name: "Apache Spark", pid: s.pid, remote: s.remote, dir: s.dir, stop: s.stop };
}

function valisePeer(s: ServerProcess, dir: string): Peer {
  return {
    name: "Valise",
    pid: s.pid,
    remote: `sc://127.0.0.1:${s.port}/;user_id=bench`,
    dir,
    stop: async () => void await s.stop(),
  };
}

const missing = sparkMissing();
if (missing) {
  console.log(`Not measured: ${missing}.`);
  Deno.exit(0);
}

const tmp = await Deno.makeTempDir({ prefix: "valise_spark_upload_bench_" });
const peers: Peer[] = [];
try {
  const big = join(tmp, "big", "big.bin");
  const warm = join(tmp, "warm", "big.bin");
  await Deno.mkdir(join(tmp, "big"));
  await Deno.mkdir(join(tmp, "warm"));
  await writeRandomFile(warm, WARM_MB * MiB);

  peers.push(sparkPeer(await startSpark()));
  peers.push(await startReference(join(tmp, "ref")));
  const valiseDir = join(tmp, "valise");
  peers.push(valisePeer(await startServer({ dataDir: valiseDir, args: ["--quiet"] }), valiseDir));

  const idle = new Map<string, number>();
  for (const p of peers) idle.set(p.name, await treeRss(p.pid));
  // A warm-up upload each (Spark's JIT, connection set-up), not counted.
  for (const p of peers) await upload(p, warm);

  const runs = new Map<string, Upload[]>(peers.map((p) => [p.name, []]));
  for (let i = 0; i < REPS; i++) {
    // New bytes each round (Valise keeps released sessions' blobs as a cache), the same file
    // for every server.
    await writeRandomFile(big, SIZE_MB * MiB);
    for (const p of peers) runs.get(p.name)!.push(await upload(p, big));
  }
  const hwm = new Map<string, number>();
  for (const p of peers) hwm.set(p.name, await peakRssOf(p.pid));

  const mbps = (u: Upload) => SIZE_MB * MiB / 1e6 / u.seconds;
  const med = (name: string) => median(runs.get(name)!.map(mbps));
  console.log(
    `${SIZE_MB} MiB random file added as \`files/big.bin\` by the real PySpark client ` +
      `(\`spark.addArtifacts(path, file=True)\`, pyspark 4.2.1 on grpcio from .venv/), one new ` +
      `session per upload, ${REPS} rounds of one upload per server (new random bytes each ` +
      `round) after a ${WARM_MB} MiB warm-up each; MB/s = 10^6 bytes/s of the client's time of the call, median. Peak RSS = highest ` +
      `summed VmRSS of the server's process tree polled every 20 ms during the uploads ` +
      `(VmHWM of the main process in brackets); CPU = user+system seconds of the server ` +
      `process per GiB, median. Client and servers share ${navigator.hardwareConcurrency} CPUs.\n`,
  );
  console.log(
    "| server | MB/s (median) | runs (MB/s) | RSS idle | peak RSS (VmHWM) | CPU s/GiB | " +
      "Valise vs it |",
  );
  console.log("|---|---|---|---|---|---|---|");
  for (const p of peers) {
    const u = runs.get(p.name)!;
    const ratio = p.name === "Valise" ? "—" : `${(med("Valise") / med(p.name)).toFixed(2)}x`;
    console.log(
      `| ${p.name} | ${med(p.name).toFixed(1)} | ${u.map((r) => mbps(r).toFixed(1)).join(", ")} | ${
        mib(idle.get(p.name)!)
      } MiB | ${mib(Math.max(...u.map((r) => r.peakRss)))} MiB (${mib(hwm.get(p.name)!)} MiB) | ${
        median(u.map((r) => r.cpu / (SIZE_MB / 1024))).toFixed(2)
      } | ${ratio} |`,
    );
  }
} finally {
  for (const p of peers) await p.stop();
  await Deno.remove(tmp, { recursive: true });
}
