// Node membership on a real 3-member NATS JetStream cluster (replicas 3) with real Valise
// processes on loopback, heartbeat 1 s (TTL 3 s): nodes see each other (admin API, /metrics,
// /status), hostile records in the bucket are ignored and counted, a live node id is refused, a
// clean stop deletes the record at once, a SIGKILLed node expires after its TTL and its id is
// free again, and two processes claiming one id at the same moment on two members: one wins.
// Every wait is on an observed event: a log line, or a KV update of the bucket (heartbeats)
// after which the admin API is asked again; 30 s guards turn a hang into a failure.
import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
import {
  addArtifactsRequests,
  AdminService,
  bytesArtifact,
  type ListNodesResponse,
} from "@valise/protocol";
import {
  encodeNodeRecord,
  Membership,
  MembershipError,
  type NodeRecord,
  NODES_BUCKET,
} from "@valise/server";
import { hasNatsServer, type NatsCluster, startNatsCluster, startValiseNodes } from "./_nats.ts";
import { type ServerProcess, startServer } from "./_server.ts";
import { removeTree } from "./_util.ts";

const ADMIN = "membership-admin-token";
const enc = new TextEncoder();

function admin(node: ServerProcess) {
  return createClient(
    AdminService,
    createGrpcTransport({
      baseUrl: node.baseUrl,
      interceptors: [(next) => (req) => {
        req.header.set("authorization", `Bearer ${ADMIN}`);
        return next(req);
      }],
    }),
  );
}

async function httpBase(node: ServerProcess): Promise<string> {
  const line = await node.waitForLog(/metrics on http:\/\/[\d.]+:\d+\/metrics/);
  return line.match(/http:\/\/[\d.]+:\d+/)![0];
}

async function metric(node: ServerProcess, series: string): Promise<number> {
  const text = await (await fetch(`${await httpBase(node)}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  if (!line) throw new Error(`no ${series} in\n${text}`);
  return Number(line.slice(series.length + 1));
}

/** The node ids a node lists, with liveness: `{ v1: true, ... }`. */
function liveness(res: ListNodesResponse): Record<string, boolean> {
  return Object.fromEntries(res.nodes.map((n) => [n.nodeId, n.live]));
}

/**
 * Asks `check` now and again after every update of the nodes' bucket (the nodes' heartbeats),
 * until it answers something; fails after 30 s.
 */
async function until<T>(kv: KV, what: string, check: () => Promise<T | undefined>): Promise<T> {
  const w = await kv.watch({ include: "updates" });
  const guard = setTimeout(() => w.stop(), 30_000);
  try {
    let v = await check();
    if (v !== undefined) return v;
    for await (const _ of w) {
      v = await check();
      if (v !== undefined) return v;
    }
  } finally {
    clearTimeout(guard);
    w.stop();
  }
  throw new Error(`not within 30 s: ${what}`);
}

function forged(nodeId: string, more: Partial<NodeRecord> = {}): NodeRecord {
  return {
    nodeId,
    instance: crypto.randomUUID(),
    host: "forged-host",
    pid: 1,
    version: "0.1.0",
    startedAt: Date.now(),
    heartbeatAt: Date.now(),
    ttlMs: 3000,
    sessions: 0,
    blobBytes: 0,
    treeBytes: 0,
    inFlight: 0,
    ...more,
  };
}

Deno.test({
  name: "cluster membership: heartbeats, hostile records, duplicate ids, clean stop, SIGKILL",
  ...(hasNatsServer() ? {} : {
    ignore: true,
    name: "cluster membership: IGNORED, nats-server is not installed (deno task setup installs it)",
  }),
  fn: async (t) => {
    const tmp = await Deno.makeTempDir({ prefix: "valise-membership-" });
    const tokenFile = join(tmp, "admin-tokens");
    await Deno.writeTextFile(tokenFile, `${ADMIN}\n`);
    const args = [
      "--cluster-heartbeat",
      "1",
      "--admin-token-file",
      tokenFile,
      "--metrics-port",
      "0",
    ];
    let nats: NatsCluster | undefined;
    let nodes: Awaited<ReturnType<typeof startValiseNodes>> | undefined;
    const extra: ServerProcess[] = [];
    let nc: NatsConnection | undefined;
    try {
      nats = await startNatsCluster();
      nodes = await startValiseNodes(nats, ["a", "b", "c"].map((n) => join(tmp, n)), { args });
      const [v1, v2, v3] = nodes.nodes as [ServerProcess, ServerProcess, ServerProcess];
      nc = await connect({ servers: nats.members[0]!.url });
      const kv = await new Kvm(nc).open(NODES_BUCKET);

      await t.step("every node sees the three, live, with this node marked", async () => {
        for (const node of [v1, v2, v3]) {
          for (const id of ["v1", "v2", "v3"]) await node.waitForLog(`cluster: node ${id} is live`);
        }
        // A session on v1: its count reaches the others with a heartbeat.
        await v1.clients.spark.addArtifacts(
          addArtifactsRequests([bytesArtifact("files/x.txt", enc.encode("x"))], {
            sessionId: crypto.randomUUID(),
            userId: "ada",
          }),
        );
        const ports = { v1: v1.port, v2: v2.port, v3: v3.port };
        for (const [self, node] of [["v1", v1], ["v2", v2], ["v3", v3]] as const) {
          const res = await until(kv, `${self} sees three live nodes with addresses`, async () => {
            const r = await admin(node).listNodes({});
            const all = r.nodes.length === 3 && r.nodes.every((n) => n.live && n.address);
            const v1Sessions = r.nodes.find((n) => n.nodeId === "v1")?.sessions;
            return all && v1Sessions === 1n ? r : undefined;
          });
          equal(res.clustered, true);
          equal(res.nodeId, self);
          deepEqual(res.nodes.map((n) => n.nodeId), ["v1", "v2", "v3"]);
          deepEqual(res.nodes.filter((n) => n.self).map((n) => n.nodeId), [self]);
          for (const n of res.nodes) {
            equal(n.address, `127.0.0.1:${ports[n.nodeId as keyof typeof ports]}`);
            equal(n.ttlMs, 3000n);
            equal(n.version, "0.1.0");
            ok(n.heartbeatAgeMs < 3000n);
            ok(n.pid > 0);
          }
          equal(res.refusedRecords, 0n);
        }
        // Liveness is re-read on the next heartbeat if a node's was late (a loaded machine).
        await until(
          kv,
          "v2's /metrics counts three live nodes",
          async () => await metric(v2, "valise_cluster_nodes") === 3 ? true : undefined,
        );
        equal(await metric(v2, 'valise_cluster_node_sessions{node="v1"}'), 1);
        equal(await metric(v2, "valise_cluster_node_records_refused_total"), 0);
        const page = await fetch(`${await httpBase(v3)}/status`, {
          headers: { authorization: `Bearer ${ADMIN}` },
        });
        const html = await page.text();
        ok(html.includes("Cluster nodes (3 live of 3)"), html);
        ok(html.includes("<code>v3</code> (this node)"), html);
      });

      await t.step("hostile records in the bucket are ignored, counted, logged once", async () => {
        const before = (await admin(v1).listNodes({})).refusedRecords;
        // Whoever holds the cluster's credentials may also lift the bucket's size limit.
        const jsm = await jetstream(nc!).jetstreamManager();
        await jsm.streams.update(`KV_${NODES_BUCKET}`, { max_msg_size: 64 * 1024 });
        const hostile: [string, Uint8Array][] = [
          ["big", encodeNodeRecord({ ...forged("big"), pad: "x".repeat(8192) } as NodeRecord)],
          ["shape", enc.encode(JSON.stringify({ v: 1, nodeId: "shape", sessions: "many" }))],
          ["evil", encodeNodeRecord(forged("../../etc/passwd"))],
          ["etc/passwd", encodeNodeRecord(forged("etc/passwd"))],
          ["binary", crypto.getRandomValues(new Uint8Array(512))],
        ];
        for (const [key, value] of hostile) await kv.put(key, value);
        for (const [key] of hostile) {
          const line = await v1.waitForLog(`ignored a record in valise_nodes under key "${key}"`);
          ok(/logged once per key/.test(line), line);
        }
        // The same key again: counted, not logged again.
        await kv.put("shape", enc.encode("{}"));
        const res = await until(kv, "v1 counted six refusals", async () => {
          const r = await admin(v1).listNodes({});
          return r.refusedRecords === before + 6n ? r : undefined;
        });
        equal(v1.log.filter((l) => l.includes('under key "shape"')).length, 1);
        deepEqual(res.nodes.map((n) => n.nodeId), ["v1", "v2", "v3"], "none of them shown");
        equal(await metric(v1, "valise_cluster_node_records_refused_total"), Number(before) + 6);
        for (const node of [v1, v2, v3]) await node.clients.health.check({});
        await jsm.streams.update(`KV_${NODES_BUCKET}`, { max_msg_size: 4096 });
      });

      await t.step("a forged record under a live node's id: noticed, and overwritten", async () => {
        await kv.put("v2", encodeNodeRecord(forged("v2")));
        await v2.waitForLog(/another process writes under this node's id v2 \(host forged-host/);
        // v2's next heartbeat puts its own record back; v1 sees it.
        await until(kv, "v1 sees v2's own record again", async () => {
          const r = await admin(v1).listNodes({});
          const n = r.nodes.find((x) => x.nodeId === "v2");
          return n && n.host !== "forged-host" && n.live ? true : undefined;
        });
        ok((await admin(v2).listNodes({})).idConflicts >= 1n);
        await v2.clients.health.check({});
      });

      await t.step("a second process with a live node's id refuses to start", async () => {
        await rejects(
          startServer({
            dataDir: join(tmp, "dup"),
            args: ["--cluster", nats!.urls, "--node-id", "v1", "--cluster-replicas", "3", ...args],
          }),
          (e) => {
            const m = (e as Error).message;
            ok(/cannot start: Node id v1 is in use: a live node has it/.test(m), m);
            ok(m.includes(`serving on 127.0.0.1:${v1.port}`), m);
            ok(m.includes("another --node-id"), m);
            return true;
          },
        );
        await until(kv, "v1 is still there, live", async () => {
          const r = await admin(v2).listNodes({});
          return liveness(r).v1 ? true : undefined;
        });
        ok(v1.log.every((l) => !l.includes("another process writes under this node's id")));
      });

      await t.step("a clean stop deletes the node's record: the others see it leave", async () => {
        await v3.stop();
        await v1.waitForLog("cluster: node v3 left");
        await v2.waitForLog("cluster: node v3 left");
        equal((await kv.get("v3"))?.operation, "DEL");
        // It left: no TTL ran out.
        ok(!v1.log.some((l) => l.includes("node v3 expired")));
        await until(kv, "v1 lists v1 and v2, live", async () => {
          const r = liveness(await admin(v1).listNodes({}));
          return r.v1 && r.v2 && Object.keys(r).length === 2 ? true : undefined;
        });
      });

      await t.step("a SIGKILLed node expires after its TTL; then its id is free", async () => {
        Deno.kill(v2.pid, "SIGKILL");
        await v2.child.status;
        const line = await v1.waitForLog(
          /cluster: node v2 expired: no heartbeat for [\d.]+ s \(TTL 3 s\)/,
        );
        const age = Number(line.match(/for ([\d.]+) s/)![1]);
        ok(age >= 3, line);
        const r = await admin(v1).listNodes({});
        deepEqual(Object.keys(liveness(r)), ["v1", "v2"]);
        equal(liveness(r).v2, false);
        ok(r.nodes.find((n) => n.nodeId === "v2")!.heartbeatAgeMs >= 3000n);
        await until(
          kv,
          "v1 counts one live node",
          async () => await metric(v1, "valise_cluster_nodes") === 1 ? true : undefined,
        );
        equal(await metric(v1, 'valise_cluster_node_up{node="v2"}'), 0);
        // Another process takes the id: the record it finds (if the bucket still keeps it) expired.
        const again = await startServer({
          dataDir: join(tmp, "b2"),
          args: ["--cluster", nats!.urls, "--node-id", "v2", "--cluster-replicas", "3", ...args],
        });
        extra.push(again);
        await again.waitForLog(/cluster: node v2 joined/);
        await v1.waitForLog("cluster: node v2 is live again");
        const after = await admin(v1).listNodes({});
        equal(after.nodes.find((n) => n.nodeId === "v2")?.pid, again.pid);
      });

      await t.step(
        "three processes claim one id at the same moment on three members: one wins",
        async () => {
          const conns = await Promise.all(
            nats!.members.map((m) => connect({ servers: m.url })),
          );
          try {
            // nats-server 2.9.10 accepts two of these claims at once now and then (measured: 7
            // rounds in 30 without the history check; never with it): each round's id was
            // used before and left, so the claims are updates over its deletion marker (the
            // server serializes creates of a new key, not updates, nats-io/nats-server#4320).
            for (let round = 0; round < 20; round++) {
              const nodeId = `race-${round}`;
              await kv.put(nodeId, encodeNodeRecord(forged(nodeId)));
              await kv.delete(nodeId);
              const results = await Promise.allSettled(conns.map((connection) =>
                Membership.join({
                  connection,
                  nodeId,
                  replicas: 3,
                  // A loser that finds the winner's record waits for its next heartbeat.
                  heartbeatMs: 200,
                  version: "0.1.0",
                  counts: () => ({ sessions: 0, blobBytes: 0, treeBytes: 0, inFlight: 0 }),
                })
              ));
              const won = results.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
              const lost = results.flatMap((r) => (r.status === "rejected" ? [r.reason] : []));
              for (const m of won) await m.leave();
              equal(won.length, 1, `round ${round}: ${lost.map(String).join("; ")}`);
              for (const e of lost) {
                ok(e instanceof MembershipError && e.code === "NODE_ID_IN_USE", String(e));
              }
            }
          } finally {
            for (const c of conns) await c.close();
          }
        },
      );
    } finally {
      await nc?.close();
      for (const n of extra) await n.stop();
      await nodes?.stop();
      await nats?.stop();
      await removeTree(tmp);
    }
  },
});
