// Membership against one real nats-server with JetStream on loopback (started by the file): the
// claim of a node id, heartbeats seen by another member, leaving, taking over an expired record
// or one a crash left, and the bucket's age limit. Waits are on log lines, never on timers.
import { equal, ok, rejects } from "node:assert/strict";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { Membership, type MembershipOptions, NODES_BUCKET } from "./membership.ts";
import { encodeNodeRecord, MembershipError, type NodeRecord } from "./node_record.ts";
import { hasNats, startNats } from "./_nats_test_util.ts";

/** A log that tests wait on. */
class Log {
  lines: string[] = [];
  #waiters: { re: RegExp; resolve: (l: string) => void }[] = [];
  readonly fn = (line: string): void => {
    this.lines.push(line);
    this.#waiters = this.#waiters.filter((w) => !(w.re.test(line) && (w.resolve(line), true)));
  };
  wait(re: RegExp): Promise<string> {
    const seen = this.lines.find((l) => re.test(l));
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve) => this.#waiters.push({ re, resolve }));
  }
}

const counts = () => ({ sessions: 2, blobBytes: 10, treeBytes: 20, inFlight: 1 });

Deno.test({
  name: hasNats
    ? "membership: claim, heartbeats, leave, take-overs on a real nats-server"
    : "membership: IGNORED, nats-server is not installed (deno task setup installs it)",
  ignore: !hasNats,
  fn: async (t) => {
    const dir = await Deno.makeTempDir({ prefix: "valise-membership-" });
    const nats = await startNats((
      port,
    ) => ["-js", "-a", "127.0.0.1", "-p", String(port), "-sd", dir]);
    const conns: NatsConnection[] = [];
    const conn = async () => {
      const nc = await connect({ servers: nats.url });
      conns.push(nc);
      return nc;
    };
    const joined: Membership[] = [];
    const join = async (o: Partial<MembershipOptions> & { nodeId: string }) => {
      const m = await Membership.join({
        connection: await conn(),
        // Records of these nodes count as live for 10 s: no flapping under load. Records that
        // the steps write themselves declare their own TTL.
        heartbeatMs: 200,
        ttlMs: 10_000,
        version: "0.1.0",
        counts,
        ...o,
      });
      joined.push(m);
      return m;
    };
    try {
      const logA = new Log();
      const logB = new Log();
      const a = await join({ nodeId: "a", log: logA.fn });

      await t.step("the bucket keeps records for the TTL, with history", async () => {
        const kv = await new Kvm(await conn()).open(NODES_BUCKET);
        const st = await kv.status();
        equal(st.ttl, 10_000);
        ok(st.history >= 2, `history ${st.history}`);
      });

      await t.step("two nodes see each other's heartbeats and counts", async () => {
        const b = await join({ nodeId: "b", log: logB.fn });
        b.address = "127.0.0.1:15002";
        await logA.wait(/node b is live/);
        await logB.wait(/node a is live/);
        const seen = a.view().nodes.find((n) => n.nodeId === "b")!;
        ok(seen.live);
        equal(seen.self, false);
        equal(seen.record.sessions, 2);
        equal(seen.record.inFlight, 1);
        equal(a.view().nodes.find((n) => n.nodeId === "a")?.self, true);
        // The address reaches A with a later heartbeat: observed through B's record revisions.
        const kv = await new Kvm(await conn()).open(NODES_BUCKET);
        const w = await kv.watch({ key: "b" });
        for await (const e of w) {
          if (e.operation === "PUT" && e.json<NodeRecord>().address === "127.0.0.1:15002") break;
        }
        w.stop();
        b.address = "not an address/";
        equal(b.address, undefined, "an address others would refuse is not advertised");
      });

      await t.step("the id of a live node is refused after its next heartbeat", async () => {
        const log = new Log();
        await rejects(join({ nodeId: "a", log: log.fn }), (e) => {
          ok(e instanceof MembershipError);
          equal(e.code, "NODE_ID_IN_USE");
          ok(e.message.includes(`pid ${Deno.pid}`), e.message);
          ok(e.message.includes("--node-id"), e.message);
          ok(e.message.includes("its heartbeat came while this one waited"), e.message);
          return true;
        });
        ok(
          log.lines.some((l) =>
            /node id a has a record of another process .*waiting up to/.test(l)
          ),
        );
        await rejects(join({ nodeId: "a..b" }), (e) => {
          equal((e as MembershipError).code, "NODE_ID_INVALID");
          return true;
        });
      });

      await t.step("leaving deletes the record: the others see it at once", async () => {
        const b = joined.find((m) => m.nodeId === "b")!;
        await b.leave();
        await logA.wait(/node b left/);
        ok(!a.view().nodes.some((n) => n.nodeId === "b"));
        const kv = await new Kvm(await conn()).open(NODES_BUCKET);
        equal((await kv.get("b"))?.operation, "DEL");
        // The id is free again.
        await (await join({ nodeId: "b" })).leave();
      });

      await t.step("a crashed process's record under the id is taken over", async () => {
        const kv = await new Kvm(jetstream(await conn())).open(NODES_BUCKET);
        const dead: NodeRecord = {
          nodeId: "c",
          instance: crypto.randomUUID(),
          host: "deadhost",
          pid: 999_999,
          version: "0.1.0",
          startedAt: Date.now(),
          heartbeatAt: Date.now(),
          ttlMs: 60_000,
          sessions: 0,
          blobBytes: 0,
          treeBytes: 0,
          inFlight: 0,
        };
        await kv.put("c", encodeNodeRecord(dead));
        // Not expired by its TTL (capped by the bucket's 10 s), but this data directory's lock
        // says that process held it and is gone: taken over at once, no wait.
        const log = new Log();
        const c = await join({
          nodeId: "c",
          previousHolder: { host: "deadhost", pid: 999_999 },
          log: log.fn,
        });
        ok(log.lines.some((l) => /took over node id c .*no longer running/.test(l)));
        ok(!log.lines.some((l) => /waiting/.test(l)), log.lines.join("\n"));
        await c.leave();
      });

      await t.step("a record no heartbeat follows is taken over once its TTL ran out", async () => {
        const kv = await new Kvm(await conn()).open(NODES_BUCKET);
        const gone: NodeRecord = {
          nodeId: "e",
          instance: crypto.randomUUID(),
          host: "gonehost",
          pid: 5,
          version: "0.1.0",
          startedAt: Date.now(),
          heartbeatAt: Date.now(),
          ttlMs: 1000,
          sessions: 0,
          blobBytes: 0,
          treeBytes: 0,
          inFlight: 0,
        };
        await kv.put("e", encodeNodeRecord(gone));
        const log = new Log();
        const e = await join({ nodeId: "e", log: log.fn });
        const lines = log.lines.join("\n");
        ok(/node id e has a record of another process .*waiting up to/.test(lines), lines);
        ok(/took over node id e: .*expired/.test(lines), lines);
        equal(e.view().stats.heartbeats >= 1, true);
        await e.leave();
      });

      await t.step("an expired record under the id is taken over", async () => {
        const kv = await new Kvm(await conn()).open(NODES_BUCKET);
        const old: NodeRecord = {
          nodeId: "d",
          instance: crypto.randomUUID(),
          host: "elsewhere",
          pid: 7,
          version: "0.1.0",
          startedAt: 1,
          heartbeatAt: 1,
          ttlMs: 300,
          sessions: 0,
          blobBytes: 0,
          treeBytes: 0,
          inFlight: 0,
        };
        await kv.put("d", encodeNodeRecord(old));
        // Observed: A's view expires it (A's clock, the same TTL the claim applies).
        await logA.wait(/node d expired/);
        const log = new Log();
        const d = await join({ nodeId: "d", log: log.fn });
        // The bucket keeps the record 10 s: the claim found it, and took it over.
        ok(log.lines.some((l) => /took over node id d: .*expired/.test(l)), log.lines.join("\n"));
        await d.leave();
      });
    } finally {
      for (const m of joined) await m.leave();
      for (const nc of conns) await nc.close();
      await nats.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
