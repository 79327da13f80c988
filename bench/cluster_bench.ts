// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The cluster: a real 3-member NATS JetStream cluster on loopback (`tests/_nats.ts`, replicas 3,
 * every member's store on the same disk as everything else) and 3 Valise nodes (`--cluster`),
 * in one run:
 *
 * 1. The object store (`valise_blobs`), a random file of `VALISE_BENCH_CLUSTER_MIB` MiB
 *    (default 256): put as phase 1 did (the NATS client's `ObjectStore.put`: 512 KiB chunks,
 *    each acknowledged before the next is sent, its pure-JS SHA-256) and as the nodes do now
 *    (`NatsRegistry.putBlob`: 16 chunks in flight, `node:crypto`); get through
 *    `NatsRegistry.fetchBlob` (verified by size and sha256 with `node:crypto`, and by the NATS
 *    client with its pure-JS SHA-256, phase 1, or `node:crypto`, now); against the same bytes
 *    copied on the local disk (`Deno.copyFile`), and read, hashed and written (what keeping a
 *    verified copy costs locally).
 * 2. Environment ready: the 1 GB venv-like environment of `store_bench.ts` (`_venv_like.ts`,
 *    ~300 MB `.tar.gz`) added as `archives/env.tar.gz#environment` to node A over gRPC, then:
 *    A's first `Run` in the session; a fresh node B's first `Run` in it (B fetches the archive
 *    from the object store, verifies and unpacks it), and a second one; and a fresh node C given
 *    the same archive again by upload (a new session), then its first `Run`.
 *
 * Each step starts after `sync` (no step pays for another's writeback).
 *
 * Env: `VALISE_BENCH_SCALE` (default 1: the 1 GB environment; 0.25 for 256 MB),
 * `VALISE_BENCH_CLUSTER_MIB` (default 256), `VALISE_BENCH_CLUSTER_REPS` (default 3). Without
 * nats-server it says why and measures nothing.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { jetstream } from "@nats-io/jetstream";
import { Objm, setSha256Backend } from "@nats-io/obj";
import { connect } from "@nats-io/transport-node";
import { addArtifactsRequests, RunRequestSchema } from "@valise/protocol";
import { BLOBS_BUCKET, NatsRegistry } from "@valise/server";
import { hasNatsServer, startNatsCluster, startValiseNodes } from "../tests/_nats.ts";
import type { ServerProcess } from "../tests/_server.ts";
import { fileArtifact, removeTree } from "../tests/_util.ts";
import { median, writeRandomFile } from "./_peers.ts";
import { buildEnv } from "./_venv_like.ts";

const SCALE = Number(Deno.env.get("VALISE_BENCH_SCALE") ?? "1");
const OBJ_MIB = Number(Deno.env.get("VALISE_BENCH_CLUSTER_MIB") ?? "256");
const REPS = Number(Deno.env.get("VALISE_BENCH_CLUSTER_REPS") ?? "3");
const NAME = "archives/env.tar.gz#environment";
const MB = 1e6;
const dec = new TextDecoder();

if (!hasNatsServer()) {
  console.log("nats-server is not installed (deno task setup installs it): nothing measured.");
  Deno.exit(0);
}

const mbps = (bytes: number, s: number): string => (bytes / MB / s).toFixed(0);
const secs = (s: number): string => s.toFixed(2);

async function sha256File(path: string): Promise<string> {
  const h = createHash("sha256");
  using f = await Deno.open(path);
  for await (const chunk of f.readable) h.update(chunk);
  return h.digest("hex");
}

/**
 * Times `fn`, after `sync`: the disk is shared by 3 NATS members, 3 nodes and the bench, and a
 * step must not pay for the writeback of the one before (1 GB trees, 3 replicas of each put).
 */
async function timed<T>(fn: () => Promise<T>): Promise<[number, T]> {
  await new Deno.Command("sync").output();
  const t0 = performance.now();
  const out = await fn();
  return [(performance.now() - t0) / 1000, out];
}

/** Reads, hashes and writes a file: what a node does to keep a copy it verified. */
async function hashCopy(src: string, dest: string): Promise<void> {
  const h = createHash("sha256");
  using out = await Deno.open(dest, { write: true, createNew: true });
  using f = await Deno.open(src);
  for await (const chunk of f.readable) {
    h.update(chunk);
    for (let off = 0; off < chunk.length;) off += await out.write(chunk.subarray(off));
  }
  h.digest();
}

async function run(node: ServerProcess, sessionId: string, code: string): Promise<string> {
  let stdout = "";
  let stderr = "";
  for await (
    const ev of node.clients.worker.run(
      create(RunRequestSchema, {
        sessionId,
        userContext: { userId: "bench" },
        target: { case: "code", value: code },
      }),
    )
  ) {
    if (ev.event.case === "stdout") stdout += dec.decode(ev.event.value);
    else if (ev.event.case === "stderr") stderr += dec.decode(ev.event.value);
  }
  if (!stdout.trim()) throw new Error(`the run printed nothing: ${stderr}`);
  return stdout.trim();
}

function upload(node: ServerProcess, sessionId: string, archive: string) {
  return node.clients.spark.addArtifacts(
    addArtifactsRequests([fileArtifact(NAME, archive)], { sessionId, userId: "bench" }),
  );
}

/** What a worker sees of the environment: its file count (walks the whole unpacked tree). */
const PROBE = "import os\n" +
  "print(sum(len(f) for _, _, f in os.walk('environment')))\n";

const tmp = await Deno.makeTempDir({ prefix: "valise-cluster-bench-" });
const nats = await startNatsCluster();
try {
  const started = new Date();
  const load = (await Deno.readTextFile("/proc/loadavg")).split(" ").slice(0, 3).join(" ");
  console.log(
    `3 NATS members (nats-server 2.9.10, replicas 3), 3 Valise nodes, one machine; ` +
      `${started.toISOString().slice(0, 16)}Z, load average ${load} at the start.\n`,
  );

  // 1. Object store throughput.
  const registry = await NatsRegistry.connect({
    servers: nats.members.map((m) => m.url),
    nodeId: "bench",
    replicas: 3,
  });
  const bytes = OBJ_MIB * 2 ** 20;
  const rows: { what: string; runs: number[] }[] = [];
  const row = (what: string) => {
    const r = { what, runs: [] as number[] };
    rows.push(r);
    return r.runs;
  };
  const copy = row("local disk: `Deno.copyFile`");
  const verified = row("local disk: read + sha256 (`node:crypto`) + write");
  const puts = {
    js: row(
      "put: the NATS client's `ObjectStore.put` (512 KiB chunks acknowledged one at a time, " +
        "pure-JS SHA-256; phase 1)",
    ),
    native: row("put: `NatsRegistry.putBlob` (16 chunks in flight, `node:crypto`; the nodes now)"),
  };
  const gets = {
    js: row("get, verified: the NATS client's pure-JS SHA-256 (its default; phase 1)"),
    native: row('get, verified: `node:crypto` (`setSha256Backend("native")`; the nodes now)'),
  };
  const nc = await connect({ servers: nats.members.map((m) => m.url) });
  const clientStore = await new Objm(jetstream(nc)).open(BLOBS_BUCKET);
  try {
    for (let rep = 0; rep < REPS; rep++) {
      for (const backend of ["js", "native"] as const) {
        setSha256Backend(backend);
        // New bytes each time: a put of bytes the store holds is skipped.
        const src = join(tmp, `obj-${rep}-${backend}`);
        await writeRandomFile(src, bytes);
        const sha = await sha256File(src);
        const [put] = await timed(async () => {
          if (backend === "native") return await registry.putBlob(sha, src, bytes);
          using f = await Deno.open(src);
          await clientStore.put({ name: sha, options: { max_chunk_size: 512 * 1024 } }, f.readable);
        });
        const dest = join(tmp, `got-${rep}-${backend}`);
        const [get] = await timed(() => registry.fetchBlob(sha, bytes, dest));
        if (await sha256File(dest) !== sha) {
          throw new Error("the object store returned other bytes");
        }
        puts[backend].push(bytes / MB / put);
        gets[backend].push(bytes / MB / get);
        if (backend === "native") {
          const [c] = await timed(() => Deno.copyFile(src, join(tmp, `copy-${rep}`)));
          copy.push(bytes / MB / c);
          const [v] = await timed(() => hashCopy(src, join(tmp, `hcopy-${rep}`)));
          verified.push(bytes / MB / v);
          await Deno.remove(join(tmp, `copy-${rep}`));
          await Deno.remove(join(tmp, `hcopy-${rep}`));
        }
        await Deno.remove(src);
        await Deno.remove(dest);
      }
    }
  } finally {
    await nc.close();
  }
  const ref = median(copy);
  console.log(`### Object store throughput (${OBJ_MIB} MiB, ${REPS} runs each)\n`);
  console.log("| what | MB/s (median) | runs | vs local copy |");
  console.log("| --- | --- | --- | --- |");
  for (const r of rows) {
    console.log(
      `| ${r.what} | ${median(r.runs).toFixed(0)} | ${
        r.runs.map((x) => x.toFixed(0)).join(", ")
      } ` +
        `| ${(median(r.runs) / ref).toFixed(2)}x |`,
    );
  }

  // 2. Environment ready.
  const env = await buildEnv(tmp, { bytes: 1e9 * SCALE, files: Math.round(50_000 * SCALE) });
  const dirs = ["a", "b", "c"].map((n) => join(tmp, `node-${n}`));
  const nodes = await startValiseNodes(nats, dirs, {});
  try {
    const [a, b, c] = nodes.nodes as [ServerProcess, ServerProcess, ServerProcess];
    const s = crypto.randomUUID();
    const [addA] = await timed(() => upload(a, s, env.archive));
    const [runA, filesA] = await timed(() => run(a, s, PROBE));
    const [runB, filesB] = await timed(() => run(b, s, PROBE));
    const [runB2] = await timed(() => run(b, s, PROBE));
    const s2 = crypto.randomUUID();
    const [addC] = await timed(() => upload(c, s2, env.archive));
    const [runC, filesC] = await timed(() => run(c, s2, PROBE));
    if (filesA !== filesB || filesA !== filesC || Number(filesA) < env.files * 0.9) {
      throw new Error(`the nodes see different trees: ${filesA}, ${filesB}, ${filesC}`);
    }
    // What B's first Run spent fetching: the same get, from this process.
    setSha256Backend("native");
    const envSha = await sha256File(env.archive);
    const fetched = join(tmp, "fetched.tar.gz");
    const [fetchOnly] = await timed(() => registry.fetchBlob(envSha, env.archiveBytes, fetched));
    await Deno.remove(fetched);
    const ready = runB;
    const again = addC + runC;
    console.log(
      `\n### A fresh node making the environment ready\n\n` +
        `Environment: ${(env.bytes / MB).toFixed(0)} MB in ${env.files} files unpacked, ` +
        `${(env.archiveBytes / MB).toFixed(0)} MB \`.tar.gz\`; each Run walks the whole tree ` +
        `(${filesA} files).\n`,
    );
    console.log("| step | s | note |");
    console.log("| --- | --- | --- |");
    console.log(
      `| A: \`addArtifacts\` (upload, sha256, unpack, put to the object store, record) | ` +
        `${secs(addA)} | ${mbps(env.archiveBytes, addA)} MB/s of archive |`,
    );
    console.log(`| A: first Run in the session | ${secs(runA)} | tree already there |`);
    console.log(
      `| **B (fresh): first Run** (fetch from the object store, verify, unpack, run) | ` +
        `**${secs(runB)}** | |`,
    );
    console.log(`| B: second Run | ${secs(runB2)} | the run alone |`);
    console.log(
      `| the fetch alone (the same get, verified, from the bench's process) | ` +
        `${secs(fetchOnly)} | ${mbps(env.archiveBytes, fetchOnly)} MB/s; the rest of B's ` +
        `first Run is the unpack |`,
    );
    console.log(
      `| C (fresh): \`addArtifacts\` of the same archive (upload, sha256, unpack; the object ` +
        `store already holds it) | ${secs(addC)} | ${mbps(env.archiveBytes, addC)} MB/s |`,
    );
    console.log(`| C: first Run | ${secs(runC)} | |`);
    console.log(
      `\nFresh node ready from the cluster: ${secs(ready)} s, against uploading it to a fresh ` +
        `node again: ${secs(again)} s (upload + first Run) = **${(ready / again).toFixed(2)}x** ` +
        `the time; against the node that received the upload (its add + first Run, ` +
        `${secs(addA + runA)} s): ${(ready / (addA + runA)).toFixed(2)}x.`,
    );
  } finally {
    await nodes.stop();
    await registry.close();
  }
  const end = (await Deno.readTextFile("/proc/loadavg")).split(" ").slice(0, 3).join(" ");
  console.log(
    `\nWhole bench ${((Date.now() - started.getTime()) / 1000).toFixed(0)} s; load average ` +
      `${end} at the end.`,
  );
} finally {
  await nats.stop();
  await removeTree(tmp);
}
