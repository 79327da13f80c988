// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Valise's own client on loopback: a random file added by `@valise/client`
 * (`session.addArtifacts(path, { fastPath: false })`: one AddArtifacts stream in 1 MiB
 * chunks, after hashing the file) to the Valise server (`packages/server/main.ts`, another
 * process), a new session per upload. Reports MB/s of the upload phase (first byte sent to the
 * server's answer, from the client's progress reports) and of the whole call (hash included),
 * median of the runs.
 *
 * Then the server's memory during one large upload (default 4 GiB, a sparse file: the server
 * receives, hashes and stages every byte all the same), VmRSS polled every 20 ms: before any
 * upload, after the timed uploads (warm), and the highest seen during the large one.
 *
 * Env: VALISE_BENCH_CLIENT_UPLOAD_MB (default 256), VALISE_BENCH_CLIENT_UPLOAD_REPS (default 5),
 * VALISE_BENCH_RSS_UPLOAD_MB (default 4096; 0 skips it).
 *
 * @module
 */
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

const tmp = await Deno.makeTempDir({ prefix: "valise_client_upload_bench_" });
const server = await startServer({ dataDir: join(tmp, "data"), args: ["--quiet"] });
try {
  const remote = `sc://127.0.0.1:${server.port}/;user_id=bench`;
  await Deno.mkdir(join(tmp, "f"));
  const file = join(tmp, "f", "big.bin");
  const rssFresh = server.rss();
  await writeRandomFile(file, 64 * MiB);
  await add(remote, file); // warm-up, not counted
  const runs: Timed[] = [];
  for (let i = 0; i < REPS; i++) {
    // New bytes each time: the server keeps released sessions' blobs as a cache.
    await writeRandomFile(file, SIZE_MB * MiB);
    runs.push(await add(remote, file));
  }
  const rate = (s: number) => SIZE_MB * MiB / 1e6 / s;
  console.log(
    `${SIZE_MB} MiB random file added by \`@valise/client\` (\`addArtifacts(path, ` +
      `{ file: true, fastPath: false })\`, 1 MiB chunks, one stream) to \`packages/server/main.ts\` on ` +
      `loopback, a new session each, ${REPS} runs after a 64 MiB warm-up; MB/s = 10^6 bytes/s; ` +
      `${navigator.hardwareConcurrency} CPUs shared by client and server.\n`,
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
