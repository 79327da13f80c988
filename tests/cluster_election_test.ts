// The cluster's write path rides through JetStream leader elections, against a real 3-member
// NATS JetStream cluster with replicas 3: the member that leads a bucket's stream is SIGKILLed
// and, at once, a whole commit runs (the blob GC's commit announcement, the blob put, the
// record's compare-and-set, the announcement withdrawn) and is read back through another
// registry. Until the stream has a new leader every write to it finds nobody to answer ("jetstream
// is not enabled" in the NATS client's words): a node that did not ride that failed the upload
// (tests/cluster_test.ts "one NATS member SIGKILLed", 2 of 6 runs before). With two members
// down there is no quorum: a commit fails with CLUSTER_UNAVAILABLE once its budget is spent, and
// works again once they are back. One NATS cluster for the file.
import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { connect } from "@nats-io/transport-node";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { isSessionError, type SharedSession } from "@valise/session-store";
import {
  BLOBS_BUCKET,
  NatsRegistry,
  SESSIONS_BUCKET,
} from "../packages/server/cluster/nats_registry.ts";
import { GC_BUCKET } from "../packages/server/cluster/gc_records.ts";
import { isTransient } from "../packages/server/cluster/nats_retry.ts";
import { hasNatsServer, startNatsCluster } from "./_nats.ts";

const USER = "ada";

/** A session record that holds `name` → `sha256` besides what it held. */
function adding(sessionId: string, name: string, sha256: string, size: number) {
  return (cur: SharedSession | undefined): SharedSession => {
    const c = cur ?? {
      userId: USER,
      sessionId,
      serverSideSessionId: crypto.randomUUID(),
      createdAt: Date.now(),
      artifacts: [],
      config: {},
    };
    return {
      ...c,
      artifacts: [
        ...c.artifacts.filter((a) => a.name !== name),
        { name, sha256, size, addedAt: Date.now() },
      ],
    };
  };
}

Deno.test({
  name: hasNatsServer()
    ? "cluster election: commits ride through a JetStream leader election"
    : "cluster election: IGNORED, nats-server is not installed (deno task setup installs it)",
  ignore: !hasNatsServer(),
  fn: async (t) => {
    const nats = await startNatsCluster();
    const tmp = await Deno.makeTempDir({ prefix: "valise-election-" });
    const servers = nats.urls.split(",");
    const regs: NatsRegistry[] = [];
    const raw = await connect({ servers });
    try {
      const a = await NatsRegistry.connect({ servers, nodeId: "a", replicas: 3 });
      regs.push(a);
      const b = await NatsRegistry.connect({ servers, nodeId: "b", replicas: 3 });
      regs.push(b);
      const jsm = await jetstreamManager(raw);

      /** A whole commit through `a` of fresh bytes, read back through `b`. */
      const commit = async (reg: NatsRegistry, label: string) => {
        const bytes = new TextEncoder().encode(`${label} ${crypto.randomUUID()}\n`.repeat(4096));
        const sha = createHash("sha256").update(bytes).digest("hex");
        const src = join(tmp, `${sha}.src`);
        await Deno.writeFile(src, bytes);
        const sessionId = crypto.randomUUID();
        const name = `files/${label}.bin`;
        const release = await reg.beginCommit(Object.freeze([sha]));
        try {
          await reg.putBlob(sha, src, bytes.length);
          await reg.update(USER, sessionId, adding(sessionId, name, sha, bytes.length));
        } finally {
          await release();
        }
        const got = await b.get(USER, sessionId);
        deepEqual(got?.value.artifacts.map((x) => [x.name, x.sha256]), [[name, sha]]);
        const dest = join(tmp, `${sha}.fetched`);
        await b.fetchBlob(sha, bytes.length, dest);
        deepEqual(await Deno.readFile(dest), bytes);
      };

      const streams = [`KV_${GC_BUCKET}`, `KV_${SESSIONS_BUCKET}`, `OBJ_${BLOBS_BUCKET}`];
      /**
       * Waits until every bucket's stream has a leader and both other replicas are current. A
       * member restarted a moment ago may still be catching up; killing another one then leaves
       * no quorum, which under load lasted longer than a commit's 60 s budget (seen in CI).
       */
      const whole = async () => {
        const deadline = Date.now() + 180_000;
        for (;;) {
          const states = await Promise.all(streams.map(async (s) => {
            const c = (await jsm.streams.info(s).catch(() => undefined))?.cluster;
            const replicas = c?.replicas ?? [];
            return !!c?.leader && replicas.length === 2 &&
              replicas.every((r) => r.current && !r.offline);
          }));
          if (states.every(Boolean)) return;
          if (Date.now() > deadline) {
            throw new Error("the NATS cluster did not become whole again within 180 s");
          }
          await new Promise((r) => setTimeout(r, 200));
        }
      };

      await commit(a, "before");

      for (const stream of streams) {
        await t.step(
          `the leader of ${stream} SIGKILLed: a commit at once goes through`,
          async () => {
            await whole();
            const leader = (await jsm.streams.info(stream)).cluster?.leader;
            ok(leader, `${stream} has a leader`);
            await nats.kill(leader);
            try {
              await commit(a, stream);
            } finally {
              await nats.restart(leader);
            }
          },
        );
      }

      await t.step(
        "two members SIGKILLed: no quorum, CLUSTER_UNAVAILABLE after the budget; back, it works",
        async () => {
          const short = await NatsRegistry.connect({
            servers,
            nodeId: "short",
            replicas: 3,
            unavailableBudgetMs: 3000,
          });
          regs.push(short);
          await whole();
          const [n1, n2, n3] = nats.members;
          // Opened while the cluster is whole: opening asks the (soon gone) metadata leader.
          const survivor = await connect({ servers: n3!.url });
          const gc = await new Kvm(jetstream(survivor)).open(GC_BUCKET);
          const survivorJsm = await jetstreamManager(survivor);
          await nats.kill(n1!.name);
          await nats.kill(n2!.name);
          try {
            // What the NATS client throws now, as a node meets it, is read as transient.
            try {
              const put = await gc.put("probe", "x").then(() => undefined, (e) => e);
              ok(put instanceof Error, "a write without quorum fails");
              ok(isTransient(put), `${put?.name}: ${put?.message}`);
              const read = await survivorJsm.streams
                .getMessage(`KV_${GC_BUCKET}`, { last_by_subj: `$KV.${GC_BUCKET}.probe` })
                .then(() => undefined, (e) => e);
              // The old leader may still answer a read from its own store for a moment.
              if (read !== undefined) ok(isTransient(read), `${read?.name}: ${read?.message}`);
            } finally {
              await survivor.close();
            }
            await rejects(short.beginCommit(["b".repeat(64)]), (e) => {
              ok(isSessionError(e) && e.errorClass === "CLUSTER_UNAVAILABLE", String(e));
              ok(/announce the upload/.test(String(e)), String(e));
              ok(/stayed unavailable for 3 s/.test(String(e)), String(e));
              ok(/majority of the NATS cluster's members/.test(String(e)), String(e));
              return true;
            });
          } finally {
            await nats.restart(n1!.name);
            await nats.restart(n2!.name);
          }
          // The same registries, nothing restarted on their side: they ride back.
          await whole();
          await commit(a, "after");
          equal(typeof (await short.blobSize("c".repeat(64))), "undefined");
        },
      );
    } finally {
      for (const r of regs) await r.close();
      await raw.close();
      await nats.stop();
      await Deno.remove(tmp, { recursive: true });
    }
  },
});
