// Cluster-wide quotas, attach by digest and idle expiry on a real NATS JetStream cluster (3
// nats-server members, replicas 3) with 3 real Valise nodes, all on loopback. One NATS cluster
// for the file; the nodes are started three times on it: with the default idle timeout (quotas,
// digests, a hostile record), again with it (a challenge answered after every node restarted),
// then with a 3 s idle timeout for the expiry scenarios, which wait on what they observe (a KV
// watch on the session's record, log lines), never on a timer.
import { deepEqual, equal, ok } from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { type KV, Kvm } from "@nats-io/kv";
import { Objm } from "@nats-io/obj";
import { sessionKey } from "@valise/server";
import {
  addArtifactsRequests,
  type BlobChallenge,
  bytesArtifact,
  ErrorInfoSchema,
  RunRequestSchema,
} from "@valise/protocol";
import { hasNatsServer, type NatsCluster, startNatsCluster, startValiseNodes } from "./_nats.ts";
import { needsVenv } from "./_python.ts";
import type { ServerProcess } from "./_server.ts";
import { removeTree } from "./_util.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();
const hex = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const MiB = 2 ** 20;
/** Quotas small enough to reach with a few MiB; sessions per user low enough to reach at all. */
const QUOTA_ARGS = [
  "--max-session-bytes",
  "4M",
  "--max-user-bytes",
  "6M",
  "--max-sessions-per-user",
  "3",
  "--metrics-port",
  "0",
];
/** 3 s: a record unused for 3.75 s (the timeout and a quarter) is released cluster-wide. */
const IDLE_MS = 3000;
const IDLE_ARGS = ["--idle-timeout-min", String(IDLE_MS / 60_000), "--metrics-port", "0"];
/** Turns a hang into a failure; nothing is asserted about how long anything took. */
const GUARD_MS = 90_000;

async function counters(node: ServerProcess): Promise<Record<string, number>> {
  const line = await node.waitForLog(/metrics on http:\/\/[\d.]+:\d+\/metrics/);
  const url = line.match(/http:\/\/[\d.]+:\d+\/metrics/)![0];
  const text = await (await fetch(url)).text();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^(valise_cluster_\w+) (\d+)$/gm)) out[m[1]!] = Number(m[2]);
  return out;
}

function add(
  node: ServerProcess,
  userId: string,
  sessionId: string,
  name: string,
  bytes: Uint8Array,
) {
  return node.clients.spark.addArtifacts(
    addArtifactsRequests([bytesArtifact(name, bytes)], { sessionId, userId }),
  );
}

async function run(node: ServerProcess, userId: string, sessionId: string, code: string) {
  let stdout = "";
  let stderr = "";
  for await (
    const ev of node.clients.worker.run(
      create(RunRequestSchema, {
        sessionId,
        userContext: { userId },
        target: { case: "code", value: code },
      }),
    )
  ) {
    if (ev.event.case === "stdout") stdout += dec.decode(ev.event.value);
    else if (ev.event.case === "stderr") stderr += dec.decode(ev.event.value);
  }
  return { stdout, stderr };
}

async function present(node: ServerProcess, userId: string, sessionId: string, name: string) {
  const st = await node.clients.spark.artifactStatus({
    sessionId,
    userContext: { userId },
    names: [name],
  });
  return st.statuses[name]?.exists ?? false;
}

/** The call's ConnectError, with its error class and reason. */
async function refused(p: Promise<unknown>) {
  try {
    await p;
  } catch (e) {
    const err = ConnectError.from(e);
    const info = err.findDetails(ErrorInfoSchema)[0];
    return {
      code: err.code,
      errorClass: info?.metadata.errorClass,
      reason: info?.metadata["valise.reason"],
      message: err.rawMessage,
    };
  }
  throw new Error("the call was expected to fail");
}

/** What a holder of `bytes` answers to a challenge. */
function prove(c: BlobChallenge, bytes: Uint8Array) {
  const h = createHash("sha256").update(c.nonce);
  for (const r of c.ranges) h.update(bytes.subarray(Number(r.offset), Number(r.offset + r.length)));
  return { nonce: c.nonce, sha256: new Uint8Array(h.digest()) };
}

function blobPath(dataDir: string, sha: string): string {
  return join(dataDir, "blobs", "sha256", sha.slice(0, 2), sha);
}

async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

/** One session's record as the cluster holds it, every write seen through a KV watch. */
interface Seen {
  closed?: boolean;
  usedAt?: number;
  createdAt: number;
}

/** Watches a session's record; `until` resolves with the first value (past or future) matching. */
async function watchRecord(kv: KV, userId: string, sessionId: string) {
  const values: Seen[] = [];
  const waiters: { match: (v: Seen) => boolean; resolve: (v: Seen) => void }[] = [];
  const iter = await kv.watch({ key: sessionKey(userId, sessionId) });
  (async () => {
    for await (const e of iter) {
      if (e.operation !== "PUT") continue;
      const v = JSON.parse(dec.decode(e.value)) as Seen;
      values.push(v);
      for (const w of [...waiters]) {
        if (w.match(v)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(v);
        }
      }
    }
  })();
  return {
    values,
    until(match: (v: Seen) => boolean): Promise<Seen> {
      const seen = values.find(match);
      if (seen) return Promise.resolve(seen);
      let timer: ReturnType<typeof setTimeout>;
      return Promise.race([
        new Promise<Seen>((resolve) => waiters.push({ match, resolve })),
        new Promise<never>((_, reject) =>
          timer = setTimeout(() => reject(new Error(`record ${sessionId}: not seen`)), GUARD_MS)
        ),
      ]).finally(() => clearTimeout(timer));
    },
    stop: () => iter.stop(),
  };
}

/** Every node refuses the session as closed, and none keeps a directory for it. */
async function closedEverywhere(nodes: ServerProcess[], dirs: string[], userId: string, s: string) {
  for (const [i, node] of nodes.entries()) {
    const e = await refused(present(node, userId, s, "files/x"));
    equal(e.code, Code.FailedPrecondition, e.message);
    ok(e.message.includes("closed"), e.message);
    const userDir = join(dirs[i]!, "sessions", "u-" + hex(enc.encode(userId)).slice(0, 32));
    ok(!(await exists(join(userDir, s))), `node ${i} still holds ${s}`);
  }
}

Deno.test({
  ...needsVenv("cluster-wide: quotas, digests and idle expiry over 3 nodes"),
  ...(hasNatsServer() ? {} : {
    ignore: true,
    name: "cluster-wide: IGNORED, nats-server is not installed (deno task setup installs it)",
  }),
  fn: async (t) => {
    const tmp = await Deno.makeTempDir({ prefix: "valise-cluster-wide-" });
    let nats: NatsCluster | undefined;
    let nodes: Awaited<ReturnType<typeof startValiseNodes>> | undefined;
    let nc: NatsConnection | undefined;
    const dirs = (gen: string) => ["a", "b", "c"].map((n) => join(tmp, `${gen}-${n}`));
    let pending: { digest: string; secret: Uint8Array } | undefined;
    try {
      nats = await startNatsCluster();
      nodes = await startValiseNodes(nats, dirs("1"), { args: QUOTA_ARGS });
      let [a, b, c] = nodes.nodes as [ServerProcess, ServerProcess, ServerProcess];
      const [, db, dc] = dirs("1") as [string, string, string];
      // The test's own client, as any holder of the cluster's credentials.
      nc = await connect({ servers: nats.members[0]!.url });
      const sessionsKv = await new Kvm(nc).open("valise_sessions");

      await t.step(
        "sessions per user are counted over the cluster: the 4th is refused",
        async () => {
          const user = "quo";
          const mine = [crypto.randomUUID(), crypto.randomUUID(), crypto.randomUUID()];
          for (const [i, node] of [a, b, c].entries()) {
            await add(node, user, mine[i]!, "files/n.txt", enc.encode(String(i)));
          }
          const e = await refused(
            add(a, user, crypto.randomUUID(), "files/n.txt", enc.encode("4")),
          );
          equal(e.code, Code.ResourceExhausted, e.message);
          equal(e.reason, "USER_SESSIONS");
          ok(e.message.includes("3 sessions in the cluster"), e.message);
          // Another user is not affected.
          await add(a, "other", crypto.randomUUID(), "files/n.txt", enc.encode("o"));
          // A release on B frees a slot on every node; three nodes then race for it.
          await b.clients.spark.releaseSession({
            sessionId: mine[1]!,
            userContext: { userId: user },
          });
          const raced = await Promise.allSettled(
            [a, b, c].map((node) =>
              add(node, user, crypto.randomUUID(), "files/r", enc.encode("r"))
            ),
          );
          const won = raced.filter((r) => r.status === "fulfilled").length;
          // One slot, three nodes racing: each sees every record but the others' last creation,
          // so at most 3 - 1 more than the limit (docs/architecture.md).
          ok(won >= 1 && won <= 3, `${won} creations won`);
          for (const r of raced) {
            if (r.status === "rejected") {
              equal(ConnectError.from(r.reason).code, Code.ResourceExhausted);
            }
          }
          // Once all are seen, no node admits another.
          for (const node of [a, b, c]) {
            const again = await refused(
              add(node, user, crypto.randomUUID(), "files/n", enc.encode("")),
            );
            equal(again.reason, "USER_SESSIONS", again.message);
          }
        },
      );

      await t.step("bytes per user are counted over the cluster's records", async () => {
        const user = "bytes";
        await add(a, user, crypto.randomUUID(), "files/one.bin", new Uint8Array(3 * MiB));
        const s2 = crypto.randomUUID();
        const e = await refused(add(b, user, s2, "files/two.bin", new Uint8Array(3.5 * MiB)));
        equal(e.code, Code.ResourceExhausted, e.message);
        equal(e.reason, "USER_BYTES", e.message);
        await add(b, user, s2, "files/two.bin", new Uint8Array(2.5 * MiB).fill(1));
        ok(await present(c, user, s2, "files/two.bin"));
      });

      await t.step(
        "a hostile record claiming 15 GiB for bob counts as one session's quota, no more",
        async () => {
          // Whoever holds the cluster's credentials writes a record under bob's name.
          const forged = crypto.randomUUID();
          const record = {
            v: 1,
            userId: "bob",
            sessionId: forged,
            serverSideSessionId: crypto.randomUUID(),
            createdAt: Date.now(),
            usedAt: Date.now(),
            artifacts: [{
              name: "files/huge",
              sha256: "f".repeat(64),
              size: 15 * 2 ** 30,
              addedAt: 1,
            }],
            config: {},
          };
          await sessionsKv.put(sessionKey("bob", forged), enc.encode(JSON.stringify(record)));
          // Bob's new session is admitted after B's index caught up with the record above.
          const s = crypto.randomUUID();
          await add(b, "bob", s, "files/a.bin", new Uint8Array(1.5 * MiB));
          // Counted as 4 MiB (a session's quota), not 15 GiB: 4 + 1.5 + 1 > 6, on any node, and
          // 4 + 1.5 + 0.25 fits.
          for (const node of [b, c]) {
            const e = await refused(
              add(node, "bob", s, "files/b.bin", new Uint8Array(MiB).fill(2)),
            );
            equal(e.code, Code.ResourceExhausted, e.message);
            equal(e.reason, "USER_BYTES", e.message);
          }
          await add(c, "bob", s, "files/c.bin", new Uint8Array(MiB / 4).fill(3));
          // The forged session itself is refused where it is used (its blob exceeds the quota).
          const used = await refused(present(a, "bob", forged, "files/huge"));
          equal(used.code, Code.ResourceExhausted, used.message);
        },
      );

      await t.step(
        "attach by digest on C of a blob only A uploaded; a forged proof is refused",
        async () => {
          // Over 1 MiB: proven by sampled ranges.
          const secret = new Uint8Array(randomBytes(1536 * 1024));
          const digest = hex(secret);
          const adaSession = crypto.randomUUID();
          await add(a, "ada", adaSession, "files/secret.bin", secret);
          ok(!(await exists(blobPath(dc, digest))), "C does not hold it");
          const eve = crypto.randomUUID();
          const has = await c.clients.store.hasBlobs({
            sessionId: eve,
            userContext: { userId: "eve" },
            sha256: [digest, "0".repeat(64)],
          });
          deepEqual(has.present, [digest], "C finds it in the object store");
          const challenge = has.challenges[0]!;
          equal(challenge.sha256, digest);
          const attach = (node: ServerProcess, proof?: { nonce: Uint8Array; sha256: Uint8Array }) =>
            node.clients.store.attachArtifacts({
              sessionId: eve,
              userContext: { userId: "eve" },
              artifacts: [{ name: "files/got.bin", sha256: digest, ...(proof ? { proof } : {}) }],
            });
          const fetchesBefore = (await counters(c)).valise_cluster_blob_fetches_total ?? 0;
          // A nonce no node issued: refused before a byte is fetched.
          const notIssued = await refused(
            attach(c, {
              nonce: crypto.getRandomValues(new Uint8Array(41)),
              sha256: new Uint8Array(32),
            }),
          );
          equal(notIssued.code, Code.PermissionDenied, notIssued.message);
          equal(notIssued.reason, "NOT_ISSUED");
          equal((await counters(c)).valise_cluster_blob_fetches_total ?? 0, fetchesBefore);
          ok(!(await exists(blobPath(dc, digest))));
          // The digest alone, and a genuine nonce answered without the bytes.
          equal((await refused(attach(c))).errorClass, "BLOB_PROOF_REQUIRED");
          const forged = prove(challenge, new Uint8Array(secret.length));
          const mismatch = await refused(attach(c, forged));
          equal(mismatch.code, Code.PermissionDenied, mismatch.message);
          equal(mismatch.reason, "MISMATCH");
          equal(await present(c, "eve", eve, "files/got.bin"), false, "nothing attached");
          // The holder's answer to C's challenge is accepted by B: one key for the cluster.
          const res = await attach(b, prove(challenge, secret));
          deepEqual(res.attached, ["files/got.bin"]);
          ok(await exists(blobPath(db, digest)), "B fetched it from the object store");
          const r = await run(
            c,
            "eve",
            eve,
            "import hashlib; print(hashlib.sha256(open('got.bin','rb').read()).hexdigest())",
          );
          equal(r.stdout.trim(), digest, r.stderr);
          // Ada's own content (her session is on A) attaches on C by digest alone.
          const own = await c.clients.store.attachArtifacts({
            sessionId: crypto.randomUUID(),
            userContext: { userId: "ada" },
            artifacts: [{ name: "files/again.bin", sha256: digest }],
          });
          deepEqual(own.attached, ["files/again.bin"]);
          // Another user who only knows the digest: still nothing.
          const mallory = await refused(c.clients.store.attachArtifacts({
            sessionId: crypto.randomUUID(),
            userContext: { userId: "mallory" },
            artifacts: [{ name: "files/stolen.bin", sha256: digest }],
          }));
          equal(mallory.errorClass, "BLOB_PROOF_REQUIRED");
          pending = { digest, secret };
        },
      );

      await t.step(
        "HasBlobs looks up the object store for at most 1024 digests a call",
        async () => {
          const { digest } = pending!;
          const others = Array.from({ length: 3000 }, () => hex(randomBytes(8)));
          const asker = crypto.randomUUID();
          const ask = (list: string[]) =>
            c.clients.store.hasBlobs({
              sessionId: asker,
              userContext: { userId: "ask" },
              sha256: list,
            });
          // A blob only the object store holds (as any node that uploaded it leaves it there).
          const lone = new Uint8Array(randomBytes(1000));
          const loneDigest = hex(lone);
          const os = await new Objm(nc!).open("valise_blobs");
          await os.putBlob({ name: loneDigest }, lone);
          deepEqual((await ask([loneDigest, ...others])).present, [loneDigest]);
          // Past the first 1024 digests, the object store is not asked: a client uploads those.
          deepEqual((await ask([...others, loneDigest])).present, []);
          // A blob C holds itself (it fetched it above) is found wherever it is in the list.
          deepEqual((await ask([...others, digest])).present, [digest]);
          await c.clients.health.check({});
          // An object stored under a name that is not its digest is not offered.
          const impostor = hex(randomBytes(8));
          await os.putBlob({ name: impostor }, enc.encode("not the bytes of that digest"));
          deepEqual((await ask([impostor])).present, []);
        },
      );

      // A challenge issued now, answered after every node restarted.
      const zed = crypto.randomUUID();
      const zedChallenge = (await a.clients.store.hasBlobs({
        sessionId: zed,
        userContext: { userId: "zed" },
        sha256: [pending!.digest],
      })).challenges[0]!;
      // The same NATS cluster, nodes started again (and on empty disks), after someone wrote
      // another value over the cluster's blob-proof secret. With the default idle timeout: the
      // challenge's session was last used before the restart, and a short timeout released it
      // while the nodes were still starting under load.
      await nodes.stop();
      await sessionsKv.put("k.blob-proofs", enc.encode("forged"));
      nodes = await startValiseNodes(nats, dirs("2"), { args: ["--metrics-port", "0"] });
      [a, b, c] = nodes.nodes as [ServerProcess, ServerProcess, ServerProcess];

      await t.step("the proof key is the cluster's: a challenge outlives every node", async () => {
        // The oldest value under the key is the secret: the one written over it is ignored.
        const res = await c.clients.store.attachArtifacts({
          sessionId: zed,
          userContext: { userId: "zed" },
          artifacts: [{
            name: "files/z.bin",
            sha256: pending!.digest,
            proof: prove(zedChallenge, pending!.secret),
          }],
        });
        deepEqual(res.attached, ["files/z.bin"]);
      });

      // The expiry scenarios: nodes started again with a 3 s idle timeout (and empty disks).
      await nodes.stop();
      nodes = await startValiseNodes(nats, dirs("3"), { args: IDLE_ARGS });
      [a, b, c] = nodes.nodes as [ServerProcess, ServerProcess, ServerProcess];
      const all = [a, b, c];

      await t.step("idle on every node: released everywhere", async () => {
        const s = crypto.randomUUID();
        const rec = await watchRecord(sessionsKv, "u1", s);
        try {
          await add(a, "u1", s, "files/x", enc.encode("x"));
          equal((await run(b, "u1", s, "print(open('x').read())")).stdout.trim(), "x");
          ok(await present(c, "u1", s, "files/x"));
          const closed = await rec.until((v) => v.closed === true);
          ok(!rec.values.slice(0, -1).some((v) => v.closed), "closed once, at the end");
          const lastUse = Math.max(...rec.values.map((v) => v.usedAt ?? 0));
          ok(Date.now() - lastUse > IDLE_MS, "not before the idle timeout");
          equal(closed.usedAt, lastUse);
          await Promise.race(
            all.map((n) => n.waitForLog(`cluster: session ${s} released: idle on every node`)),
          );
          await closedEverywhere(all, dirs("3"), "u1", s);
        } finally {
          rec.stop();
        }
      });

      await t.step(
        "used on B only: kept though idle on A for longer than the timeout",
        async () => {
          const s = crypto.randomUUID();
          const rec = await watchRecord(sessionsKv, "u2", s);
          try {
            await add(a, "u2", s, "files/x", enc.encode("x"));
            const created = (await rec.until(() => true)).createdAt;
            const aDropped = a.waitForLog(`session ${s} expired after being idle`);
            let aIdle = false;
            aDropped.then(() => aIdle = true);
            // B keeps using it until A dropped its own copy (idle there for the timeout) and the
            // record shows a use two timeouts after creation.
            let runs = 0;
            while (!aIdle || !rec.values.some((v) => (v.usedAt ?? 0) > created + 2 * IDLE_MS)) {
              const r = await run(b, "u2", s, "print(open('x').read())");
              equal(r.stdout.trim(), "x", r.stderr);
              ok(!rec.values.some((v) => v.closed), "released while in use on B");
              ok(++runs < 2000, "B's uses never reached the record");
            }
            // Not once per call: each use written is more than a quarter of the timeout after the
            // one before.
            const uses = [...new Set(rec.values.map((v) => v.usedAt ?? 0))].sort((x, y) => x - y);
            for (let i = 1; i < uses.length; i++) {
              ok(uses[i]! - uses[i - 1]! > IDLE_MS / 4, `uses written ${uses.join(", ")}`);
            }
            // Then idle on B too: released everywhere.
            await rec.until((v) => v.closed === true);
            await closedEverywhere(all, dirs("3"), "u2", s);
          } finally {
            rec.stop();
          }
        },
      );

      await t.step(
        "busy on B (a run in progress): never released; released once it ends",
        async () => {
          const s = crypto.randomUUID();
          const rec = await watchRecord(sessionsKv, "u3", s);
          const stop = new AbortController();
          try {
            await add(a, "u3", s, "files/x", enc.encode("x"));
            const created = (await rec.until(() => true)).createdAt;
            const aDropped = a.waitForLog(`session ${s} expired after being idle`);
            const stream = b.clients.worker.run(
              create(RunRequestSchema, {
                sessionId: s,
                userContext: { userId: "u3" },
                target: {
                  case: "code",
                  value: "import time; print('started', flush=True); time.sleep(50)",
                },
              }),
              { signal: stop.signal },
            )[Symbol.asyncIterator]();
            for (;;) {
              const { value, done } = await stream.next();
              ok(!done, "the run ended before it started");
              if (value.event.case === "stdout") break;
            }
            // No call at all for longer than the timeout, anywhere: B's run keeps it in use.
            await aDropped;
            await rec.until((v) => (v.usedAt ?? 0) > created + 2 * IDLE_MS);
            ok(!rec.values.some((v) => v.closed), "released while a run was in progress");
            stop.abort();
            await stream.return?.().catch(() => {});
            await rec.until((v) => v.closed === true);
            await closedEverywhere(all, dirs("3"), "u3", s);
          } finally {
            stop.abort();
            rec.stop();
          }
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
