// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Content-addressed store: a ~1 GB / ~50k-file venv-like environment archive (`.tar.gz` with a
 * root `pyvenv.cfg`, built from this machine's Python installation: `/usr/lib/python3.11` and
 * `/usr/lib/python3/dist-packages` copied until big enough, symlinks dereferenced, topped up with
 * small modules up to the file count) added as `archives/env.tar.gz#environment` to the Valise
 * server (a subprocess, data dir on tmpfs when there is room), over gRPC
 * (`createGrpcTransport`, PySpark's 32 KiB chunking via `addArtifactsRequests`), in one run:
 *
 * - (a) first add to a new session: total RPC time, and end of upload → answer (includes the
 *   unpack);
 * - (b) the same bytes sent again by a new session: end of upload → answer (the tree is shared);
 * - (c) hash-only fast path for a new session: `StoreService.hasBlobs` + `attachArtifacts`.
 *
 * (b) and (c) alternate, 10 and 9 times, so that 20 sessions hold the environment; then disk
 * used under the data dir (`du -sb`, hard links counted once) is compared with what a server that
 * copies and unpacks per session (Spark) would use: 20 × (archive + unpacked tree).
 *
 * "End of upload" is when the transport pulls the request stream past its last message, i.e.
 * the last message has been written to the HTTP/2 stream.
 *
 * Env: `VALISE_BENCH_SCALE` (default 1; 0.05 for a quick run), `VALISE_BENCH_STORE_DIR` (parent
 * of the temp dir; default `/dev/shm` when it has room, else the system temp dir).
 *
 * @module
 */
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import {
  type AddArtifactsRequest,
  addArtifactsRequests,
  type ArtifactSource,
  SparkConnectService,
  StoreService,
} from "@valise/protocol";
import { buildEnv, duBytes, freeBytes, q, sh } from "./_venv_like.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const SCALE = Number(Deno.env.get("VALISE_BENCH_SCALE") ?? "1");
const TARGET_BYTES = 1e9 * SCALE;
const TARGET_FILES = Math.round(50_000 * SCALE);
const REPS_B = 10;
const REPS_C = 9;
const SESSIONS = 1 + REPS_B + REPS_C;
const NAME = "archives/env.tar.gz#environment";
const MB = 1e6;

if (!(SCALE > 0)) throw new RangeError(`VALISE_BENCH_SCALE must be positive, got "${SCALE}"`);

interface Server {
  pid: number;
  port: number;
  stop(): Promise<void>;
}

async function startServer(dataDir: string): Promise<Server> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      `${ROOT}packages/server/main.ts`,
      "--port",
      "0",
      "--data-dir",
      dataDir,
      "--quiet",
    ],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    try {
      Deno.kill(child.pid, "SIGTERM");
    } catch { /* already gone */ }
    const timer = setTimeout(() => {
      try {
        Deno.kill(child.pid, "SIGKILL");
      } catch { /* already gone */ }
    }, 10_000);
    await child.status;
    clearTimeout(timer);
    await reader.cancel().catch(() => {});
  };
  let buf = "";
  let port = 0;
  try {
    while (!port) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`valise exited before listening: ${buf}`);
      buf += value;
      const m = buf.match(/listening on [^\s]+:(\d+)/);
      if (m) port = Number(m[1]);
    }
  } catch (e) {
    await stop();
    throw e;
  }
  (async () => {
    while (!(await reader.read().catch(() => ({ done: true }))).done) { /* discard */ }
  })();
  return { pid: child.pid, port, stop };
}

async function rssOf(pid: number): Promise<number> {
  const text = await Deno.readTextFile(`/proc/${pid}/status`);
  return Number(text.match(/^VmRSS:\s+(\d+) kB/m)?.[1] ?? 0) * 1024;
}

function fileArtifact(name: string, path: string, size: number): ArtifactSource {
  return {
    name,
    size,
    async *read() {
      using f = await Deno.open(path);
      yield* f.readable;
    },
  };
}

/** Yields the requests and records when the transport pulled past the last one. */
async function* timed(
  reqs: AsyncIterable<AddArtifactsRequest>,
  mark: { end: number },
): AsyncGenerator<AddArtifactsRequest> {
  yield* reqs;
  mark.end = performance.now();
}

async function sha256Hex(path: string): Promise<string> {
  return (await sh(`sha256sum ${q(path)}`)).split(" ")[0]!;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
/** Nearest-rank p95 (with 10 samples, the largest). */
const p95 = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(0.95 * s.length) - 1)]!;
};
const ms = (x: number): string => x < 10 ? x.toFixed(1) : x.toFixed(0);
const mb = (b: number): string => (b / MB).toFixed(0);

// Where the temp dir goes: tmpfs when it holds the source tree, archive, blob and one tree
// twice over (plus the server's 1 GB free-disk floor); else the system temp dir (on disk).
const needed = 2 * (TARGET_BYTES * 1.6) + 2e9;
const parent = Deno.env.get("VALISE_BENCH_STORE_DIR") ??
  (await freeBytes("/dev/shm").catch(() => 0) > needed ? "/dev/shm" : undefined);
const tmp = await Deno.makeTempDir({
  prefix: "valise_store_bench_",
  ...(parent ? { dir: parent } : {}),
});
const fsType = (await sh(`stat -f -c %T ${q(tmp)}`)).trim();
let server: Server | undefined;
let http2: Http2SessionManager | undefined;
let cleaning: Promise<void> | undefined;
/** Stops the server and removes the temp dir, once, whether from the end, a failure or a signal. */
const cleanup = (): Promise<void> =>
  cleaning ??= (async () => {
    // Close the client's HTTP/2 session first: a GOAWAY from the stopping server aborts a Deno
    // process that still has the session open (nghttp2 assertion in find_stream_on_goaway_func).
    http2?.abort();
    await server?.stop();
    // Shared trees are read-only on disk.
    await sh(`chmod -R u+w ${q(tmp)} 2>/dev/null || true`);
    // A builder process stopped by the same signal may still be writing: retry once.
    await Deno.remove(tmp, { recursive: true }).catch(async () => {
      await new Promise((ok) => setTimeout(ok, 1000));
      await Deno.remove(tmp, { recursive: true });
    });
  })();
const onSignal = (sig: Deno.Signal) => () => {
  console.error(`store_bench: ${sig}, cleaning up`);
  cleanup().finally(() => Deno.exit(130));
};
Deno.addSignalListener("SIGINT", onSignal("SIGINT"));
Deno.addSignalListener("SIGTERM", onSignal("SIGTERM"));

let failed = false;
try {
  const tBuild = performance.now();
  const env = await buildEnv(tmp, { bytes: TARGET_BYTES, files: TARGET_FILES });
  const buildS = (performance.now() - tBuild) / 1000;
  const sha = await sha256Hex(env.archive);
  const dataDir = `${tmp}/data`;
  server = await startServer(dataDir);
  const srv = server;
  const baseUrl = `http://127.0.0.1:${srv.port}`;
  http2 = new Http2SessionManager(baseUrl);
  const transport = createGrpcTransport({ baseUrl, sessionManager: http2 });
  const spark = createClient(SparkConnectService, transport);
  const store = createClient(StoreService, transport);
  const sessions: string[] = [];

  /** One AddArtifacts of the whole archive by a new session. */
  const add = async (sessionId = crypto.randomUUID()): Promise<{ total: number; tail: number }> => {
    const mark = { end: 0 };
    const t0 = performance.now();
    const res = await spark.addArtifacts(
      timed(
        addArtifactsRequests([fileArtifact(NAME, env.archive, env.archiveBytes)], { sessionId }),
        mark,
      ),
    );
    const t1 = performance.now();
    if (res.artifacts.length !== 1 || !res.artifacts[0]!.isCrcSuccessful) {
      throw new Error(`AddArtifacts failed: ${JSON.stringify(res.artifacts)}`);
    }
    sessions.push(sessionId);
    return { total: t1 - t0, tail: t1 - mark.end };
  };

  /** The hash-only fast path by a new session. */
  const attach = async (): Promise<{ has: number; attach: number; total: number }> => {
    const sessionId = crypto.randomUUID();
    const t0 = performance.now();
    const has = await store.hasBlobs({ sessionId, sha256: [sha] });
    const t1 = performance.now();
    if (has.present[0] !== sha) throw new Error(`hasBlobs does not report ${sha}`);
    const res = await store.attachArtifacts({
      sessionId,
      clientObservedServerSideSessionId: has.serverSideSessionId,
      artifacts: [{ name: NAME, sha256: sha }],
    });
    const t2 = performance.now();
    if (res.attached[0] !== NAME) throw new Error(`attach failed: ${JSON.stringify(res)}`);
    sessions.push(sessionId);
    return { has: t1 - t0, attach: t2 - t1, total: t2 - t0 };
  };

  // (a) Session 1 asks first (as a client with the fast path would; it also opens the
  // connection), then uploads.
  const probeId = crypto.randomUUID();
  const probe = await store.hasBlobs({ sessionId: probeId, sha256: [sha] });
  if (probe.present.length) throw new Error("the server holds the archive before the first add");
  const idleRss = await rssOf(srv.pid);
  let peakRss = idleRss;
  let polling = true;
  const poll = (async () => {
    while (polling) {
      peakRss = Math.max(peakRss, await rssOf(srv.pid).catch(() => 0));
      await new Promise((ok) => setTimeout(ok, 20));
    }
  })();
  const a = await add(probeId).finally(() => polling = false);
  await poll;

  const b: { total: number; tail: number }[] = [];
  const c: { has: number; attach: number; total: number }[] = [];
  for (let i = 0; i < REPS_B; i++) {
    b.push(await add());
    if (i < REPS_C) c.push(await attach());
  }

  // Every session sees the one shared tree.
  const roots = (await sh(
    `find ${q(`${dataDir}/sessions`)} -mindepth 4 -maxdepth 4 -name environment -path '*/root/*'`,
  )).trim().split("\n").filter(Boolean);
  const targets = new Set(await Promise.all(roots.map((r) => Deno.realPath(r))));
  const trees = (await Array.fromAsync(Deno.readDir(`${dataDir}/trees`)))
    .filter((e) => e.isDirectory && !e.name.startsWith("."));
  if (
    sessions.length !== SESSIONS || roots.length !== SESSIONS || targets.size !== 1 ||
    trees.length !== 1
  ) {
    throw new Error(
      `expected ${SESSIONS} sessions viewing 1 tree, got ${roots.length} views of ${targets.size} ` +
        `trees (${trees.length} under trees/)`,
    );
  }
  await Deno.stat(`${[...targets][0]}/pyvenv.cfg`);

  const total = await duBytes(dataDir);
  const shared = await duBytes(`${dataDir}/trees`, `${dataDir}/blobs`);
  const treeBytes = await duBytes(`${dataDir}/trees/${trees[0]!.name}`);
  const perSession = env.archiveBytes + treeBytes;
  const spark20 = SESSIONS * perSession;

  const bTail = b.map((r) => r.tail);
  const bTotal = b.map((r) => r.total);
  const cTotal = c.map((r) => r.total);
  const cpu = (await sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2")).trim();
  const target = (x: number) => x < 50 ? "yes" : "**no**";
  console.log(
    `Environment: venv-like tree (\`pyvenv.cfg\` at the root) of ${mb(env.bytes)} MB in ` +
      `${env.files} files, \`.tar.gz\` of ${mb(env.archiveBytes)} MB (built in ${
        buildS.toFixed(0)
      } s), added as \`${NAME}\` over gRPC (connect-node, 32 KiB chunks). Server data dir on ` +
      `${fsType} (${tmp}). Scale ${SCALE}; ${navigator.hardwareConcurrency} cores (${cpu}) shared ` +
      `by client and server; Deno ${Deno.version.deno}. Tail = end of upload (last request ` +
      `message written) → the RPC's answer. (b) ${REPS_B} and (c) ${REPS_C} new sessions, ` +
      `alternating; p95 = nearest rank (the slowest of ${REPS_B}).\n`,
  );
  console.log("| case | tail ms (median) | tail ms (p95) | whole RPC ms (median) | vs (a) tail |");
  console.log("| --- | --- | --- | --- | --- |");
  console.log(
    `| (a) first add: upload + unpack | ${ms(a.tail)} | — | ${ms(a.total)} | 1.00x |`,
  );
  console.log(
    `| (b) same bytes, new session (tree shared) | ${ms(median(bTail))} | ${ms(p95(bTail))} | ${
      ms(median(bTotal))
    } | ${(median(bTail) / a.tail).toFixed(4)}x |`,
  );
  console.log(
    `| (c) hasBlobs + attachArtifacts by sha256, new session | — | — | ${ms(median(cTotal))} ` +
      `(p95 ${ms(p95(cTotal))}; hasBlobs ${ms(median(c.map((r) => r.has)))}, attach ${
        ms(median(c.map((r) => r.attach)))
      }) | ${(median(cTotal) / a.tail).toFixed(4)}x |`,
  );
  console.log(
    `\nUnder 50 ms (p95): (b) ${target(p95(bTail))}, (c) ${target(p95(cTotal))}. ` +
      `Upload rate of (b): ${(env.archiveBytes / MB / (median(bTotal) / 1000)).toFixed(0)} MB/s; ` +
      `server peak RSS during (a): ${mb(peakRss)} MB (idle ${mb(idleRss)} MB).`,
  );
  console.log(
    `\nRuns (ms): (b) tail ${bTail.map(ms).join(", ")}; (c) ${cTotal.map(ms).join(", ")}.`,
  );
  console.log(`\nDisk for ${SESSIONS} sessions holding the environment (MB = 10^6 bytes):\n`);
  console.log("| what | MB | vs copy per session |");
  console.log("| --- | --- | --- |");
  console.log(
    `| copy per session (Spark): ${SESSIONS} × (archive ${mb(env.archiveBytes)} + unpacked ${
      mb(treeBytes)
    }) | ${mb(spark20)} | 1.00x |`,
  );
  console.log(
    `| Valise, whole data dir (\`du -sb\`, hard links once) | ${mb(total)} | ${
      (total / spark20).toFixed(3)
    }x |`,
  );
  console.log(
    `| Valise, blobs + trees | ${mb(shared)} | ${(shared / spark20).toFixed(3)}x |`,
  );
  console.log(
    `\nValise stores ${(spark20 / total).toFixed(1)}× less; the rest of the data dir ` +
      `(sessions' manifests, links, dirs) is ${((total - shared) / 1e3).toFixed(0)} kB.`,
  );

  // (d) CloneSession of the first session (it holds the environment): the clone shares the
  // blob and the tree by reference, so it costs a directory, a manifest and links.
  const clones: number[] = [];
  const beforeClones = await duBytes(dataDir);
  for (let i = 0; i < REPS_B; i++) {
    const t0 = performance.now();
    const res = await spark.cloneSession({ sessionId: probeId });
    clones.push(performance.now() - t0);
    if (!res.newSessionId) throw new Error("CloneSession answered no new session id");
  }
  const afterClones = await duBytes(dataDir);
  console.log(
    `
(d) CloneSession of a session holding the environment, ${REPS_B} times: ` +
      `${ms(median(clones))} ms median, ${ms(p95(clones))} ms p95 (runs: ${
        clones.map(ms).join(", ")
      }); the data dir grew by ${((afterClones - beforeClones) / 1e3).toFixed(0)} kB for ` +
      `${REPS_B} clones (a copy per clone would be ${mb(REPS_B * perSession)} MB).`,
  );
} catch (e) {
  failed = true;
  // After a signal, the aborted RPC's error is noise.
  if (!cleaning) console.error(e);
} finally {
  await cleanup();
}
Deno.exit(failed ? 1 : 0);
