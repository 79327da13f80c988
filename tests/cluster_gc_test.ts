// The cluster's blob GC (packages/server/cluster/blob_gc.ts) on a real 3-member NATS JetStream
// cluster with 3 Valise nodes, a short grace period (--cluster-gc-grace 3s), all on loopback: an
// environment a session no longer holds leaves the object store, deleted by one node, after the
// grace period; a blob another session still holds stays; a blob whose upload is in flight on
// a node stays, and the upload commits and runs on another node; garbage in the GC bucket (the
// lease, intents) and foreign objects neither crash nor stall GC. Everything is observed (the
// object store, KV, log lines, /metrics), never timed. One NATS cluster for the file.
import { deepEqual, equal, ok } from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstream, type JetStreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { type ObjectStore, Objm } from "@nats-io/obj";
import {
  addArtifactsRequests,
  type ArtifactSource,
  bytesArtifact,
  RunRequestSchema,
  SessionService,
} from "@valise/protocol";
import { hasNatsServer, type NatsCluster, startNatsCluster, startValiseNodes } from "./_nats.ts";
import type { ServerProcess } from "./_server.ts";
import { removeTree } from "./_util.ts";

const GRACE_MS = 3000;
const NODE_ARGS = [
  "--cluster-gc-grace",
  `${GRACE_MS / 1000}s`,
  "--metrics-port",
  "0",
  // The in-flight upload below stays silent while GC runs: it must not be cut as idle.
  "--stream-idle-timeout-s",
  "0",
];
const user = { userId: "ada" };
/** Turns a hang into a failure; nothing below waits on it otherwise. */
const GUARD_MS = 90_000;

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

function randomBytes(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let at = 0; at < n; at += 65536) crypto.getRandomValues(out.subarray(at, at + 65536));
  return out;
}

/** What the nodes logged of GC, for a failure's message. */
let gcLog = (): string => "";

function guard<T>(what: string, p: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout>;
  return Promise.race([
    p,
    new Promise<T>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`gave up waiting for ${what}; the nodes' GC log:\n${gcLog()}`)),
        GUARD_MS,
      );
    }),
  ]).finally(() => clearTimeout(timer));
}

/** A node's counters from its /metrics endpoint. */
async function counters(node: ServerProcess): Promise<Record<string, number>> {
  const line = await node.waitForLog(/metrics on http:\/\/[\d.]+:\d+\/metrics/);
  const url = line.match(/http:\/\/[\d.]+:\d+\/metrics/)![0];
  const text = await (await fetch(url)).text();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^(valise_cluster_\w+) (\d+)$/gm)) out[m[1]!] = Number(m[2]);
  return out;
}

async function add(node: ServerProcess, sessionId: string, artifacts: ArtifactSource[]) {
  return await node.clients.spark.addArtifacts(
    addArtifactsRequests(artifacts, { sessionId, userId: user.userId }),
  );
}

function sessions(node: ServerProcess) {
  return createClient(SessionService, createGrpcTransport({ baseUrl: node.baseUrl }));
}

async function run(node: ServerProcess, sessionId: string, code: string): Promise<string> {
  let out = "";
  let err = "";
  const dec = new TextDecoder();
  for await (
    const ev of node.clients.worker.run(
      create(RunRequestSchema, {
        sessionId,
        userContext: user,
        target: { case: "code", value: code },
      }),
    )
  ) {
    if (ev.event.case === "stdout") out += dec.decode(ev.event.value);
    if (ev.event.case === "stderr") err += dec.decode(ev.event.value);
  }
  equal(err.includes("Traceback"), false, err);
  return out.trim();
}

/** The Python that prints a file's sha256 in the session's working directory. */
const hashOf = (file: string) =>
  `import hashlib; print(hashlib.sha256(open(${JSON.stringify(file)}, 'rb').read()).hexdigest())`;

/** The object's metadata as NATS stored it last: when, its nuid, whether deleted. */
async function meta(
  jsm: JetStreamManager,
  sha: string,
): Promise<{ time: number; nuid: string; deleted: boolean } | undefined> {
  const token = btoa(sha).replaceAll("+", "-").replaceAll("/", "_");
  const m = await jsm.streams.getMessage("OBJ_valise_blobs", {
    last_by_subj: `$O.valise_blobs.M.${token}`,
  }).catch(() => null);
  if (!m) return undefined;
  const info = JSON.parse(new TextDecoder().decode(m.data));
  return { time: m.time.getTime(), nuid: info.nuid, deleted: info.deleted === true };
}

/** Resolves once the object store shows `sha` deleted (watching its metadata). */
async function deletedFromStore(os: ObjectStore, sha: string): Promise<void> {
  const watch = await os.watch({ includeHistory: true });
  try {
    for await (const info of watch) {
      if (info.name === sha && info.deleted) return;
    }
  } finally {
    watch.stop();
  }
}

function linesOf(nodes: ServerProcess[], text: string): { node: number; line: string }[] {
  return nodes.flatMap((n, i) =>
    n.log.filter((l) => l.includes(text)).map((line) => ({ node: i, line }))
  );
}

Deno.test({
  name: hasNatsServer()
    ? "cluster blob GC: 3 Valise nodes on a 3-member NATS JetStream cluster"
    : "cluster blob GC: IGNORED, nats-server is not installed (deno task setup installs it)",
  ignore: !hasNatsServer(),
  fn: async (t) => {
    const tmp = await Deno.makeTempDir({ prefix: "valise-cluster-gc-" });
    let nats: NatsCluster | undefined;
    let nodes: Awaited<ReturnType<typeof startValiseNodes>> | undefined;
    let nc: NatsConnection | undefined;
    try {
      nats = await startNatsCluster();
      nodes = await startValiseNodes(nats, ["a", "b", "c"].map((n) => join(tmp, n)), {
        args: NODE_ARGS,
      });
      const all = nodes.nodes;
      gcLog = () =>
        all.flatMap((n, i) =>
          n.log.filter((l) => l.includes("cluster: gc")).map((l) => `v${i + 1} ${l}`)
        )
          .join("\n");
      const [a, b, c] = all as [ServerProcess, ServerProcess, ServerProcess];
      nc = await connect({ servers: nats.members[0]!.url });
      const jsm = await jetstream(nc).jetstreamManager();
      const os = await new Objm(nc).open("valise_blobs");
      const gc = await new Kvm(nc).open("valise_gc");

      await t.step(
        "an environment removed from a session leaves the object store after the grace period, deleted by one node",
        async () => {
          // A small environment (an archive unpacked on the nodes that use it).
          const dir = join(tmp, "env");
          await Deno.mkdir(join(dir, "pkg"), { recursive: true });
          await Deno.writeFile(join(dir, "pkg", "salt.bin"), randomBytes(4096));
          await Deno.writeTextFile(join(dir, "pkg", "VERSION"), "1\n");
          const archive = join(tmp, "env.tar.gz");
          const tar = await new Deno.Command("tar", { args: ["czf", archive, "-C", dir, "pkg"] })
            .output();
          ok(tar.success);
          const bytes = await Deno.readFile(archive);
          const env = sha256(bytes);
          const s = crypto.randomUUID();
          await add(a, s, [bytesArtifact("archives/env.tar.gz#env", bytes)]);
          equal(await run(b, s, "print(open('env/pkg/VERSION').read().strip())"), "1");
          const put = await meta(jsm, env);
          ok(put && !put.deleted, "A put the environment in the object store");
          const gone = deletedFromStore(os, env);
          // Removed through another node than the one that received it.
          const removed = await sessions(c).removeArtifacts({
            sessionId: s,
            userContext: user,
            names: ["archives/env.tar.gz#env"],
          });
          equal(removed.removed.length, 1);
          await guard("the environment's deletion", gone);
          const del = await meta(jsm, env);
          ok(del?.deleted, "deleted in the object store");
          // Both times are the NATS server's: never before the grace period.
          ok(del.time - put.time >= GRACE_MS, `deleted ${del.time - put.time} ms after its put`);
          await guard(
            "the deletion's log line",
            Promise.race(all.map((n) => n.waitForLog(`gc deleted blob ${env}`))),
          );
          const by = linesOf(all, `gc deleted blob ${env}`);
          equal(by.length, 1, `deleted by exactly one node: ${JSON.stringify(by)}`);
          const n = await counters(all[by[0]!.node]!);
          ok(n.valise_cluster_gc_deleted_total! >= 1, JSON.stringify(n));
          ok(n.valise_cluster_gc_deleted_bytes_total! >= bytes.length, JSON.stringify(n));
          ok(n.valise_cluster_gc_runs_total! >= 1, JSON.stringify(n));
          // Every deletion any node logged is counted once, on that node.
          const counts = await Promise.all(all.map(counters));
          equal(
            counts.reduce((sum, x) => sum + x.valise_cluster_gc_deleted_total!, 0),
            linesOf(all, "gc deleted blob").length,
          );
          // The session itself goes on without it.
          equal(await run(c, s, "import os; print(os.path.exists('env'))"), "False");
        },
      );

      await t.step(
        "a blob another session still holds stays; the released session's go",
        async () => {
          const shared = randomBytes(100_000);
          const marker = randomBytes(50_000);
          const [sd, md] = [sha256(shared), sha256(marker)];
          const [s1, s2] = [crypto.randomUUID(), crypto.randomUUID()];
          await add(a, s1, [
            bytesArtifact("files/shared.bin", shared),
            bytesArtifact("files/marker.bin", marker),
          ]);
          await add(a, s2, [bytesArtifact("files/shared-too.bin", shared)]);
          const before = await meta(jsm, sd);
          ok(before && !before.deleted);
          const markerGone = deletedFromStore(os, md);
          await a.clients.spark.releaseSession({ sessionId: s1, userContext: user });
          // The marker was only s1's: once it is gone, GC has passed over the shared blob too.
          await guard("the released session's blob to go", markerGone);
          deepEqual(await meta(jsm, sd), before, "the shared blob was never deleted nor put again");
          // C never served s2: it fetches the blob from the object store.
          const fetchesBefore = (await counters(c)).valise_cluster_blob_fetches_total!;
          equal(await run(c, s2, hashOf("shared-too.bin")), sd);
          equal((await counters(c)).valise_cluster_blob_fetches_total, fetchesBefore + 1);
        },
      );

      await t.step(
        "a blob whose upload is in flight is not deleted; the upload commits and runs on another node",
        async () => {
          const payload = randomBytes(256 * 1024);
          const f = sha256(payload);
          const [s3, s4] = [crypto.randomUUID(), crypto.randomUUID()];
          await add(a, s3, [bytesArtifact("files/f.bin", payload)]);
          const put = await meta(jsm, f);
          ok(put && !put.deleted);
          // On B, an upload of the same bytes, held open after them by a second artifact.
          let open!: () => void;
          const gate = new Promise<void>((r) => (open = r));
          const held: ArtifactSource = {
            name: "files/after.bin",
            size: 64 * 1024,
            async *read() {
              await gate;
              yield new Uint8Array(64 * 1024).fill(7);
            },
          };
          // B announces the blob as soon as its bytes are in: observed in the GC bucket.
          const intents = await gc.watch({ key: `i.${f}.>` });
          const upload = add(b, s4, [bytesArtifact("files/f-again.bin", payload), held]);
          for await (const e of intents) {
            if (e.operation === "PUT" && e.key.startsWith(`i.${f}.v2.`)) break;
          }
          intents.stop();
          // Now only the upload in flight holds it: s3 no longer does.
          await sessions(a).removeArtifacts({
            sessionId: s3,
            userContext: user,
            names: ["files/f.bin"],
          });
          const skipped = await guard(
            "GC to pass over the blob in flight",
            Promise.race(
              all.map((n) =>
                n.waitForLog(`gc skipped blob ${f}: an upload of it is in flight on node v2`)
              ),
            ),
          );
          ok(skipped.includes("v2"), skipped);
          deepEqual(await meta(jsm, f), put, "still there, never deleted");
          const holder = all.find((n) => n.log.some((l) => l.includes(`gc skipped blob ${f}`)))!;
          ok((await counters(holder)).valise_cluster_gc_skipped_in_flight_total! >= 1);
          open();
          const res = await upload;
          deepEqual(res.artifacts.map((x) => x.isCrcSuccessful), [true, true]);
          equal(await run(c, s4, hashOf("f-again.bin")), f);
          deepEqual(await meta(jsm, f), put, "the upload had nothing to put again");
          equal(linesOf(all, `gc deleted blob ${f}`).length, 0);
        },
      );

      await t.step(
        "garbage in the GC bucket (lease, intents) and foreign objects neither crash nor stall GC",
        async () => {
          const enc = new TextEncoder();
          const [x, y, z] = [randomBytes(40_000), randomBytes(41_000), randomBytes(42_000)];
          const [xd, yd, zd] = [sha256(x), sha256(y), sha256(z)];
          // Whoever holds the cluster's credentials writes garbage where GC keeps its state.
          await gc.put("gc.lease", enc.encode("{not json"));
          await gc.put("gc.lease", randomBytes(512 * 1024));
          await gc.put(`i.${xd}.mallory.1`, enc.encode("\u0000garbage"));
          await gc.put(`i.${xd}.mallory.2`, randomBytes(512 * 1024));
          await gc.put("i.not-a-digest.mallory", enc.encode("{}"));
          await gc.put(`d.${zd}.mallory.1`, enc.encode("[1,2"));
          // An object that is not Valise's (not named by a sha256), old and named by nothing.
          await os.putBlob({ name: "not-a-digest" }, enc.encode("someone else's"));
          const s = crypto.randomUUID();
          await add(b, s, [bytesArtifact("files/x.bin", x), bytesArtifact("files/y.bin", y)]);
          const yGone = deletedFromStore(os, yd);
          await sessions(b).removeArtifacts({
            sessionId: s,
            userContext: user,
            names: ["files/x.bin", "files/y.bin"],
          });
          // GC goes on: the lease taken over, y collected.
          await guard("y's deletion despite the garbage", yGone);
          // x has an intent GC cannot read: kept (the safe side), for the longest an intent lives.
          await guard(
            "GC to pass over x",
            Promise.race(all.map((n) => n.waitForLog(`gc skipped blob ${xd}`))),
          );
          ok(!(await meta(jsm, xd))?.deleted, "x is kept");
          ok(!(await os.info("not-a-digest"))?.deleted, "a foreign object is never touched");
          // A delete intent nobody can read does not hold up a commit of that blob.
          await add(c, s, [bytesArtifact("files/z.bin", z)]);
          equal(await run(a, s, hashOf("z.bin")), zd);
          // Every node still serves, and one of them holds a readable lease.
          for (const n of all) await n.clients.health.check({});
          const lease = JSON.parse(new TextDecoder().decode((await gc.get("gc.lease"))!.value));
          ok(["v1", "v2", "v3"].includes(lease.node), JSON.stringify(lease));
        },
      );
    } finally {
      await nc?.close();
      await nodes?.stop();
      await nats?.stop();
      await removeTree(tmp);
    }
  },
});
