// A Valise cluster on a real NATS JetStream cluster (3 nats-server members, replicas 3) with
// real Valise processes, all on loopback: any node serves any session, environments reach every
// node, concurrent commits lose nothing, everything comes back from the cluster after a restart
// of every node, a release reaches every node, and tampered blobs are refused. One NATS cluster
// for the file; each step is one scenario.
import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { connect } from "@nats-io/transport-node";
import { Kvm } from "@nats-io/kv";
import { Objm } from "@nats-io/obj";
import { sessionKey } from "@valise/server";
import {
  addArtifactsRequests,
  type ArtifactSource,
  bytesArtifact,
  ConfigRequest_OperationSchema,
  RunRequestSchema,
  SessionService,
} from "@valise/protocol";
import { makeVenvPack, sha256File } from "./fixtures/envs.ts";
import { hasNatsServer, type NatsCluster, startNatsCluster, startValiseNodes } from "./_nats.ts";
import { needsVenv } from "./_python.ts";
import type { ServerProcess } from "./_server.ts";
import { fileArtifact, removeTree } from "./_util.ts";

const enc = new TextEncoder();
/** A session quota below what the hostile record below names. */
const NODE_ARGS = ["--max-session-bytes", "8G", "--metrics-port", "0"];

/** A node's counters from its /metrics endpoint. */
async function counters(node: ServerProcess): Promise<Record<string, number>> {
  const line = await node.waitForLog(/metrics on http:\/\/[\d.]+:\d+\/metrics/);
  const url = line.match(/http:\/\/[\d.]+:\d+\/metrics/)![0];
  const text = await (await fetch(url)).text();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^(valise_(?:cluster_\w+|unpacks_total)) (\d+)$/gm)) {
    out[m[1]!] = Number(m[2]);
  }
  return out;
}
const user = { userId: "ada" };

interface Ran {
  stdout: string;
  stderr: string;
  exitCode: number;
}

async function run(node: ServerProcess, sessionId: string, code: string): Promise<Ran> {
  const r: Ran = { stdout: "", stderr: "", exitCode: NaN };
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
    const e = ev.event;
    if (e.case === "stdout") r.stdout += dec.decode(e.value);
    else if (e.case === "stderr") r.stderr += dec.decode(e.value);
    else if (e.case === "exited") r.exitCode = e.value.exitCode;
  }
  return r;
}

async function add(
  node: ServerProcess,
  sessionId: string,
  artifacts: Parameters<typeof addArtifactsRequests>[0],
) {
  return await node.clients.spark.addArtifacts(
    addArtifactsRequests(artifacts, { sessionId, userId: user.userId }),
  );
}

async function setConf(node: ServerProcess, sessionId: string, key: string, value: string) {
  return await node.clients.spark.config({
    sessionId,
    userContext: user,
    operation: create(ConfigRequest_OperationSchema, {
      opType: { case: "set", value: { pairs: [{ key, value }] } },
    }),
  });
}

async function getConf(node: ServerProcess, sessionId: string, key: string) {
  return await node.clients.spark.config({
    sessionId,
    userContext: user,
    operation: create(ConfigRequest_OperationSchema, {
      opType: { case: "getOption", value: { keys: [key] } },
    }),
  });
}

async function present(node: ServerProcess, sessionId: string, names: string[]) {
  const st = await node.clients.spark.artifactStatus({ sessionId, userContext: user, names });
  return Object.fromEntries(Object.entries(st.statuses).map(([k, v]) => [k, v.exists]));
}

async function treesOf(dataDir: string): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const e of Deno.readDir(join(dataDir, "trees"))) {
      if (e.isDirectory) out.push(e.name);
    }
  } catch { /* none yet */ }
  return out;
}

async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

async function stagedBytes(dir: string): Promise<number> {
  let n = 0;
  for await (const e of Deno.readDir(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) n += await stagedBytes(p).catch(() => 0);
    else if (e.isFile) n += (await Deno.stat(p).catch(() => ({ size: 0 }))).size;
  }
  return n;
}

async function writeBig(dir: string, half: number): Promise<string> {
  const path = join(dir, "big.bin");
  const bytes = new Uint8Array(2 * half);
  bytes.fill(1, 0, half);
  bytes.fill(2, half);
  await Deno.writeFile(path, bytes);
  return path;
}

async function dirHolds(root: string, name: string): Promise<boolean> {
  for await (const u of Deno.readDir(root)) {
    if (await exists(join(root, u.name, name))) return true;
  }
  return false;
}

function sessions(node: ServerProcess) {
  return createClient(SessionService, createGrpcTransport({ baseUrl: node.baseUrl }));
}

function blobPath(dataDir: string, sha: string): string {
  return join(dataDir, "blobs", "sha256", sha.slice(0, 2), sha);
}

Deno.test({
  ...needsVenv("cluster: 3 Valise nodes on a 3-member NATS JetStream cluster"),
  ...(hasNatsServer() ? {} : {
    ignore: true,
    name: "cluster: IGNORED, nats-server is not installed (deno task setup installs it)",
  }),
  fn: async (t) => {
    const tmp = await Deno.makeTempDir({ prefix: "valise-cluster-" });
    let nats: NatsCluster | undefined;
    let nodes: Awaited<ReturnType<typeof startValiseNodes>> | undefined;
    const dirs = (gen: string) => ["a", "b", "c"].map((n) => join(tmp, `${gen}-${n}`));
    try {
      nats = await startNatsCluster();
      nodes = await startValiseNodes(nats, dirs("1"), { args: NODE_ARGS });
      let [a, b, c] = nodes.nodes as [ServerProcess, ServerProcess, ServerProcess];
      let [da, db, dc] = dirs("1") as [string, string, string];
      const envSession = crypto.randomUUID();
      const { archive } = await makeVenvPack(join(tmp, "fx"), {
        packages: { clusterlib: "VERSION = 'from-node-a'\n" },
      });
      const archiveSha = await sha256File(archive);
      let serverSideId = "";

      await t.step("an environment uploaded through A runs on B and on C", async () => {
        const res = await add(a, envSession, [
          fileArtifact("archives/env.tar.gz#environment", archive),
        ]);
        serverSideId = res.serverSideSessionId;
        await setConf(
          a,
          envSession,
          "spark.sql.execution.pyspark.python",
          "environment/bin/python",
        );
        ok(await exists(blobPath(da, archiveSha)), "A holds what it received");
        equal((await treesOf(db)).length, 0, "B holds no tree before it serves the session");
        for (const [node, dir] of [[b, db], [c, dc]] as const) {
          const r = await run(
            node,
            envSession,
            "import clusterlib, sys; print(clusterlib.VERSION)",
          );
          equal(r.stdout.trim(), "from-node-a", r.stderr);
          // The node fetched the blob (verified) and unpacked it into its own tree cache, once.
          ok(await exists(blobPath(dir, archiveSha)), "the blob is in the node's cache");
          deepEqual((await treesOf(dir)).map((k) => k.split("-")[0]), [archiveSha]);
          const again = await run(node, envSession, "import clusterlib; print('again')");
          equal(again.stdout.trim(), "again", again.stderr);
          equal((await treesOf(dir)).length, 1, "no second unpack");
          const n = await counters(node);
          equal(n.valise_cluster_blob_fetches_total, 1, JSON.stringify(n));
          equal(n.valise_unpacks_total, 1, JSON.stringify(n));
          equal(n.valise_cluster_blob_refused_total, 0);
        }
        const na = await counters(a);
        equal(na.valise_cluster_blob_fetches_total, 0, "A fetched nothing: it had the bytes");
        equal(na.valise_cluster_blob_puts_total, 1, "A copied the archive to the cluster once");
        const conf = await getConf(c, envSession, "spark.sql.execution.pyspark.python");
        equal(conf.pairs[0]?.value, "environment/bin/python");
        equal(conf.serverSideSessionId, serverSideId, "one server-side id on every node");
      });

      await t.step(
        "a session cloned through A is served by B and C; clone and source evolve apart",
        async () => {
          const res = await a.clients.spark.cloneSession({
            sessionId: envSession,
            userContext: user,
          });
          const cloneId = res.newSessionId;
          ok(cloneId !== "" && cloneId !== envSession, cloneId);
          ok(res.newServerSideSessionId !== serverSideId, "the clone is a session of its own");
          for (const [node, dir] of [[b, db], [c, dc]] as const) {
            const r = await run(node, cloneId, "import clusterlib; print(clusterlib.VERSION)");
            equal(r.stdout.trim(), "from-node-a", r.stderr);
            const conf = await getConf(node, cloneId, "spark.sql.execution.pyspark.python");
            equal(conf.pairs[0]?.value, "environment/bin/python");
            // By reference: the node serves the clone from the tree it already had.
            deepEqual((await treesOf(dir)).map((k) => k.split("-")[0]), [archiveSha]);
            equal((await counters(node)).valise_unpacks_total, 1, "no unpack for the clone");
          }
          const only = "pyfiles/only_in_clone.py";
          await add(b, cloneId, [bytesArtifact(only, enc.encode("X = 1\n"))]);
          deepEqual(await present(c, cloneId, [only]), { [only]: true });
          deepEqual(await present(c, envSession, [only]), { [only]: false }, "source unchanged");
          await setConf(c, envSession, "spark.valise.worker.timeoutMs", "31000");
          equal(
            (await getConf(a, cloneId, "spark.valise.worker.timeoutMs")).pairs[0]?.value,
            undefined,
          );
          // Releasing the clone (on C) leaves the source whole on every node.
          await c.clients.spark.releaseSession({ sessionId: cloneId, userContext: user });
          for (const node of [a, b]) {
            const r = await run(node, envSession, "import clusterlib; print('source')");
            equal(r.stdout.trim(), "source", r.stderr);
          }
          await rejects(
            a.clients.spark.cloneSession({
              sessionId: envSession,
              userContext: user,
              newSessionId: cloneId,
            }),
            (e) => {
              const err = ConnectError.from(e);
              equal(err.code, Code.AlreadyExists, err.message);
              return true;
            },
            "a released id is not taken again, on any node",
          );
        },
      );

      await t.step(
        "two nodes commit to one session at the same moment: nothing is lost",
        async () => {
          for (let round = 0; round < 5; round++) {
            const s = crypto.randomUUID();
            await Promise.all([
              add(a, s, [bytesArtifact("pyfiles/from_a.py", enc.encode("WHO = 'a'\n"))]),
              add(b, s, [bytesArtifact("pyfiles/from_b.py", enc.encode("WHO = 'b'\n"))]),
              setConf(c, s, "spark.valise.worker.timeoutMs", "30000"),
            ]);
            for (const node of [a, b, c]) {
              deepEqual(await present(node, s, ["pyfiles/from_a.py", "pyfiles/from_b.py"]), {
                "pyfiles/from_a.py": true,
                "pyfiles/from_b.py": true,
              });
            }
            const r = await run(c, s, "import from_a, from_b; print(from_a.WHO + from_b.WHO)");
            equal(r.stdout.trim(), "ab", r.stderr);
            const conf = await getConf(a, s, "spark.valise.worker.timeoutMs");
            equal(conf.pairs[0]?.value, "30000");
          }
        },
      );

      await t.step("one name, other bytes, on two nodes at once: one wins everywhere", async () => {
        const s = crypto.randomUUID();
        const results = await Promise.allSettled([
          add(a, s, [bytesArtifact("files/same.txt", enc.encode("A"))]),
          add(b, s, [bytesArtifact("files/same.txt", enc.encode("B"))]),
        ]);
        const lost = results.filter((r) => r.status === "rejected");
        const why = async () =>
          JSON.stringify({
            results: results.map((r) => r.status),
            a: await present(a, s, ["files/same.txt"]),
            logs: [a, b].map((n) => n.log.filter((l) => l.includes("AddArtifacts")).slice(-3)),
          });
        equal(lost.length, 1, await why());
        equal(
          ConnectError.from((lost[0] as PromiseRejectedResult).reason).code,
          Code.AlreadyExists,
        );
        const winner = results[0]!.status === "fulfilled" ? "A" : "B";
        for (const node of [a, b, c]) {
          const r = await run(node, s, "print(open('same.txt').read())");
          equal(r.stdout.trim(), winner, r.stderr);
        }
      });

      await t.step("a blob tampered with in the object store is refused, never used", async () => {
        const s = crypto.randomUUID();
        const good = enc.encode("SECRET = 'genuine'\n");
        await add(a, s, [bytesArtifact("pyfiles/tampered.py", good)]);
        const digest = Array.from(
          new Uint8Array(await crypto.subtle.digest("SHA-256", good)),
          (x) => x.toString(16).padStart(2, "0"),
        ).join("");
        // Whoever holds the cluster's credentials replaces the bytes under that name.
        const nc = await connect({ servers: nats!.members[1]!.url });
        try {
          const os = await new Objm(nc).open("valise_blobs");
          await os.putBlob({ name: digest }, enc.encode("SECRET = 'forged'  \n"));
          await rejects(run(c, s, "import tampered; print(tampered.SECRET)"), (e) => {
            const ce = ConnectError.from(e);
            equal(ce.code, Code.DataLoss, ce.message);
            ok(ce.message.includes(digest), ce.message);
            return true;
          });
          ok(!(await exists(blobPath(dc, digest))), "C did not keep the forged bytes");
          equal((await counters(c)).valise_cluster_blob_refused_total, 1);
          await c.clients.health.check({});
          // Put right again, the session works on C.
          await os.putBlob({ name: digest }, good);
          const r = await run(c, s, "import tampered; print(tampered.SECRET)");
          equal(r.stdout.trim(), "genuine", r.stderr);
        } finally {
          await nc.close();
        }
      });

      await t.step(
        "a record naming more bytes than a node's quota is refused before fetching",
        async () => {
          // Whoever holds the cluster's credentials writes a session record naming a 15 GiB blob
          // (within the largest artifact a record may name, above the nodes' 8G session quota).
          const s = crypto.randomUUID();
          const nc = await connect({ servers: nats!.members[2]!.url });
          try {
            const kv = await new Kvm(nc).open("valise_sessions");
            const record = {
              v: 1,
              userId: user.userId,
              sessionId: s,
              serverSideSessionId: crypto.randomUUID(),
              createdAt: Date.now(),
              artifacts: [{
                name: "pyfiles/big.py",
                sha256: "b".repeat(64),
                size: 15 * 2 ** 30,
                addedAt: 1,
              }],
              config: {},
            };
            await kv.put(sessionKey(user.userId, s), enc.encode(JSON.stringify(record)));
            await rejects(run(c, s, "print(1)"), (e) => {
              const ce = ConnectError.from(e);
              equal(ce.code, Code.ResourceExhausted, ce.message);
              ok(ce.message.includes("pyfiles/big.py"), ce.message);
              return true;
            });
            let staged = 0;
            for await (const _ of Deno.readDir(join(dc, "staging"))) staged++;
            equal(staged, 0, "nothing was fetched");
            await c.clients.health.check({});
          } finally {
            await nc.close();
          }
        },
      );

      await t.step(
        "a second session on B with the same environment: no second unpack",
        async () => {
          const s = crypto.randomUUID();
          await add(b, s, [fileArtifact("archives/env.tar.gz#environment", archive)]);
          await setConf(b, s, "spark.sql.execution.pyspark.python", "environment/bin/python");
          const r = await run(b, s, "import clusterlib; print(clusterlib.VERSION)");
          equal(r.stdout.trim(), "from-node-a", r.stderr);
          deepEqual((await treesOf(db)).map((k) => k.split("-")[0]), [archiveSha]);
        },
      );

      await t.step("an artifact removed on A is gone on B and C too", async () => {
        const s = crypto.randomUUID();
        await add(a, s, [
          bytesArtifact("pyfiles/kept.py", enc.encode("K = 1\n")),
          bytesArtifact("pyfiles/dropped.py", enc.encode("D = 2\n")),
        ]);
        equal(
          (await run(b, s, "import kept, dropped; print(kept.K + dropped.D)")).stdout.trim(),
          "3",
        );
        const removed = await sessions(a).removeArtifacts({
          sessionId: s,
          userContext: user,
          names: ["pyfiles/dropped.py"],
        });
        deepEqual(removed.removed.map((r) => r.name), ["pyfiles/dropped.py"]);
        for (const node of [b, c]) {
          const listed = await sessions(node).listArtifacts({ sessionId: s, userContext: user });
          deepEqual(listed.artifacts.map((r) => r.name), ["pyfiles/kept.py"]);
          deepEqual(await present(node, s, ["pyfiles/kept.py", "pyfiles/dropped.py"]), {
            "pyfiles/kept.py": true,
            "pyfiles/dropped.py": false,
          });
        }
        const r = await run(c, s, "import os, kept; print(kept.K, os.path.exists('dropped.py'))");
        equal(r.stdout.trim(), "1 False", r.stderr);
        // B ran with it before: its copy's view lost it when B brought the copy in line.
        const rb = await run(b, s, "import os; print(os.path.exists('dropped.py'))");
        equal(rb.stdout.trim(), "False", rb.stderr);
      });

      await t.step("release on A: B's copy and workers go (KV watch)", async () => {
        const s = crypto.randomUUID();
        await add(a, s, [bytesArtifact("pyfiles/gone.py", enc.encode("X = 1\n"))]);
        equal((await run(b, s, "import gone; print(gone.X)")).stdout.trim(), "1");
        // A worker of the session runs on B while A releases it.
        const stream = b.clients.worker.run(
          create(RunRequestSchema, {
            sessionId: s,
            userContext: user,
            target: {
              case: "code",
              value: "import time; print('started', flush=True); time.sleep(120)",
            },
          }),
        )[Symbol.asyncIterator]();
        for (;;) {
          const { value, done } = await stream.next();
          ok(!done, "the run ended before it started");
          if (value.event.case === "stdout") break;
        }
        const dropped = b.waitForLog(`cluster: workers of session ${s} stopped`);
        await a.clients.spark.releaseSession({ sessionId: s, userContext: user });
        await dropped;
        let exited: { exitCode: number; signal: string; timedOut: boolean } | undefined;
        try {
          for (;;) {
            const { value, done } = await stream.next();
            if (done) break;
            if (value.event.case === "exited") exited = value.event.value;
          }
        } catch { /* the stream may end with an error: the worker is gone either way */ }
        // Stopped by the release, not by its own end or the wall-time limit.
        ok(
          exited === undefined || (exited.exitCode !== 0 && !exited.timedOut),
          `B's worker was stopped: ${exited?.exitCode} ${exited?.signal} ${exited?.timedOut}`,
        );
        // A bind waits for a release under way: once refused, B's copy is gone.
        await rejects(run(b, s, "print(1)"), (e) => {
          equal(ConnectError.from(e).code, Code.FailedPrecondition);
          ok(ConnectError.from(e).message.includes("closed"), ConnectError.from(e).message);
          return true;
        });
        ok(!(await exists(join(db, "sessions"))) || !(await dirHolds(join(db, "sessions"), s)));
        await rejects(add(c, s, [bytesArtifact("pyfiles/x.py", enc.encode(""))]));
      });

      await t.step(
        "C SIGKILLed mid-upload: nothing of it anywhere, the upload goes through B",
        async () => {
          const s = crypto.randomUUID();
          await add(c, s, [bytesArtifact("pyfiles/before.py", enc.encode("B = 1\n"))]);
          const half = 4 * 2 ** 20;
          let finish!: () => void;
          const gate = new Promise<void>((r) => (finish = r));
          const big: ArtifactSource = {
            name: "files/big.bin",
            size: 2 * half,
            async *read() {
              yield new Uint8Array(half).fill(1);
              await gate; // the rest only once C is dead
              yield new Uint8Array(half).fill(2);
            },
          };
          // Observed, not timed: C's staging directory holds a first MiB of it (C writes in 1 MiB
          // batches).
          const staging = join(dc, "staging");
          const watcher = Deno.watchFs(staging, { recursive: true });
          const call = add(c, s, [big]).then(() => undefined, (e) => e);
          for await (const _ of watcher) {
            if (await stagedBytes(staging) >= 2 ** 20) break;
          }
          watcher.close();
          Deno.kill(c.pid, "SIGKILL");
          await c.child.status;
          finish();
          ok((await call) !== undefined, "the upload to C failed");
          for (const node of [a, b]) {
            deepEqual(await present(node, s, ["pyfiles/before.py", "files/big.bin"]), {
              "pyfiles/before.py": true,
              "files/big.bin": false,
            });
          }
          await add(b, s, [fileArtifact("files/big.bin", await writeBig(tmp, half))]);
          const r = await run(a, s, "import os; print(os.path.getsize('big.bin'))");
          equal(r.stdout.trim(), String(2 * half), r.stderr);
        },
      );

      await t.step("every node restarted on empty disks: sessions come back from KV", async () => {
        await nodes!.stop();
        nodes = await startValiseNodes(nats!, dirs("2"), { args: NODE_ARGS });
        [a, b, c] = nodes.nodes as [ServerProcess, ServerProcess, ServerProcess];
        [da, db, dc] = dirs("2") as [string, string, string];
        equal((await treesOf(da)).length + (await treesOf(db)).length, 0, "empty disks");
        const conf = await getConf(b, envSession, "spark.sql.execution.pyspark.python");
        equal(conf.pairs[0]?.value, "environment/bin/python");
        equal(conf.serverSideSessionId, serverSideId);
        const r = await run(c, envSession, "import clusterlib; print(clusterlib.VERSION)");
        equal(r.stdout.trim(), "from-node-a", r.stderr);
        deepEqual(await present(a, envSession, ["archives/env.tar.gz#environment"]), {
          "archives/env.tar.gz#environment": true,
        });
      });

      await t.step("one NATS member SIGKILLed (replicas 3): uploads and runs go on", async () => {
        await nats!.kill("n1");
        const s = crypto.randomUUID();
        await add(a, s, [bytesArtifact("pyfiles/survives.py", enc.encode("OK = 'yes'\n"))]);
        const r = await run(b, s, "import survives; print(survives.OK)");
        equal(r.stdout.trim(), "yes", r.stderr);
        await nats!.restart("n1");
      });
    } finally {
      await nodes?.stop();
      await nats?.stop();
      await removeTree(tmp);
    }
  },
});
