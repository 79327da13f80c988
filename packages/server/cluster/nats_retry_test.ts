// Which NATS errors are ridden out, against one real nats-server with JetStream on loopback
// (started by the file): every error is the one the NATS client throws for that situation. A
// write nobody answers (a stream without a leader: what a member's death does until the
// election ends) and a request timeout are transient; refusals (a wrong last sequence, no
// message, no stream), a connection closed by this process and a permissions violation are
// not. The errors a JetStream member answers with while it has no leader (10008 and its kin)
// are made by the client from the bytes nats-server 2.9.10 sends, served under another API
// prefix (the cluster tests meet the real ones: tests/cluster_election_test.ts).
import { equal, ok, rejects } from "node:assert/strict";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import fc from "fast-check";
import { SessionError } from "@valise/session-store";
import { isTransient, riding, UnavailableTooLong } from "./nats_retry.ts";
import { hasNats, type NatsProcess, startNats } from "./_nats_test_util.ts";

/** One nats-server with JetStream; user `valise` may not publish to `forbidden.>`. */
async function startNatsWithAuth(dir: string): Promise<NatsProcess> {
  const config = `${dir}/nats.conf`;
  return await startNats((port) => {
    const lines = [
      `listen: 127.0.0.1:${port}`,
      `jetstream { store_dir: "${dir}/js" }`,
      `authorization {`,
      `  users: [{ user: valise, password: secret, permissions: { publish: { deny: ["forbidden.>"] } } }]`,
      `}`,
      "",
    ];
    Deno.writeTextFileSync(config, lines.join("\n"));
    return ["-c", config];
  });
}

/** The error `fn` rejects with. */
async function thrown(fn: () => Promise<unknown>): Promise<unknown> {
  try {
    await fn();
  } catch (e) {
    return e;
  }
  throw new Error("it did not fail");
}

/**
 * What nats-server 2.9.10 answers a `STREAM.MSG.GET` with while its JetStream cluster has no
 * leader, and its kin (nats-server's errors.json).
 */
function apiError(code: number, errCode: number, description: string): Uint8Array {
  return new TextEncoder().encode(JSON.stringify({
    type: "io.nats.jetstream.api.v1.stream_msg_get_response",
    error: { code, err_code: errCode, description },
  }));
}

Deno.test({
  name: hasNats
    ? "nats retry: the NATS client's own errors, transient or not, from a real nats-server"
    : "nats retry: IGNORED, nats-server is not installed (deno task setup installs it)",
  ignore: !hasNats,
  fn: async (t) => {
    const dir = await Deno.makeTempDir({ prefix: "valise-retry-" });
    const nats = await startNatsWithAuth(dir);
    const conns: NatsConnection[] = [];
    const conn = async () => {
      const nc = await connect({ servers: nats.url, user: "valise", pass: "secret" });
      conns.push(nc);
      return nc;
    };
    try {
      const nc = await conn();
      const js = jetstream(nc);
      const jsm = await jetstreamManager(nc);
      const kv = await new Kvm(js).create("retry", { history: 4 });
      const rev = await kv.put("k", "v1");

      await t.step("a write nobody answers (no stream leader) is transient", async () => {
        // Exactly what a KV put meets while the bucket's stream elects a leader.
        const e = await thrown(() => js.publish("no.stream.here", "x"));
        equal((e as Error).name, "JetStreamNotEnabled");
        equal((e as Error).message, "jetstream is not enabled");
        ok(isTransient(e));
      });

      await t.step("a request that times out is transient", async () => {
        const sub = nc.subscribe("silent"); // there, and never answers
        const e = await thrown(() => nc.request("silent", "x", { timeout: 50 }));
        sub.unsubscribe();
        equal((e as Error).name, "TimeoutError");
        ok(isTransient(e));
      });

      await t.step("JetStream's answers while it has no leader are transient", async () => {
        const answers = new Map([
          ["NOLEADER", apiError(503, 10008, "JetStream system temporarily unavailable")],
          ["CANNOT", apiError(500, 10009, "JetStream cluster can not handle request")],
          ["OFFLINE", apiError(500, 10118, "stream is offline")],
          ["RESTORING", apiError(503, 10039, "JetStream not enabled for account")],
          // Refusals: waiting changes nothing.
          ["NOSTREAM", apiError(404, 10059, "stream not found")],
          ["BADREQ", apiError(400, 10003, "bad request")],
        ]);
        const sub = nc.subscribe("$FAKE.API.STREAM.MSG.GET.>", {
          callback: (_, m) => {
            m.respond(answers.get(m.subject.split(".").pop()!));
          },
        });
        await nc.flush();
        const fake = await jetstreamManager(nc, { apiPrefix: "$FAKE.API", checkAPI: false });
        const verdict = async (stream: string) => {
          const e = await thrown(() => fake.streams.getMessage(stream, { seq: 1 }));
          ok(e instanceof Error, String(e));
          return isTransient(e);
        };
        for (const s of ["NOLEADER", "CANNOT", "OFFLINE", "RESTORING"]) {
          equal(await verdict(s), true, s);
        }
        for (const s of ["NOSTREAM", "BADREQ"]) equal(await verdict(s), false, s);
        sub.unsubscribe();
      });

      await t.step("refusals are not transient", async () => {
        const stale = await thrown(() => kv.update("k", "v2", rev + 100));
        ok(/wrong last sequence/.test((stale as Error).message), String(stale));
        equal(isTransient(stale), false);
        const exists = await thrown(() => kv.create("k", "again"));
        equal(isTransient(exists), false, String(exists));
        const noStream = await thrown(() => jsm.streams.info("NOSUCHSTREAM"));
        equal(isTransient(noStream), false, String(noStream));
        const session = new SessionError("CLUSTER_DATA_INVALID", "timeout in a record's words");
        equal(isTransient(session), false);
      });

      await t.step("a publish the node's NATS user may not make is not transient", async () => {
        const e = await thrown(() => nc.request("forbidden.x", "x", { timeout: 5000 }));
        ok(/permissions violation/i.test(String(e)), String(e));
        equal(isTransient(e), false);
      });

      await t.step("a connection this process closed is not transient", async () => {
        const closed = await conn();
        const kv2 = await new Kvm(jetstream(closed)).open("retry");
        await closed.close();
        const e = await thrown(() => kv2.put("k", "v3"));
        equal((e as Error).name, "ClosedConnectionError");
        equal(isTransient(e), false);
      });

      await t.step("riding: rides transient errors, stops at a refusal", async () => {
        const noLeader = await thrown(() => js.publish("no.stream.here", "x"));
        let calls = 0;
        const got = await riding(async () => {
          if (++calls < 3) throw noLeader;
          return await kv.put("k", "after");
        });
        equal(calls, 3);
        ok(got > rev);
        calls = 0;
        await rejects(
          riding(() => (calls++, kv.update("k", "x", rev))),
          /wrong last sequence/,
        );
        equal(calls, 1, "a refusal is not tried again");
      });

      await t.step(
        "riding: past its budget, a clear error with the last one as cause",
        async () => {
          let calls = 0;
          const e = await thrown(() =>
            riding(() => (calls++, js.publish("no.stream.here", "x")), { budgetMs: 400 })
          );
          ok(e instanceof UnavailableTooLong, String(e));
          ok(calls >= 2, `${calls} attempts`);
          equal(e.attempts, calls);
          equal((e.cause as Error).name, "JetStreamNotEnabled");
          ok(/NATS stayed unavailable for 0.4 s/.test(e.message), e.message);
          ok(/no JetStream member answered/.test(e.message), e.message);
          // Once given up, it is not transient any more: callers around it do not ride it again.
          equal(isTransient(e), false);
        },
      );
    } finally {
      for (const nc of conns) await nc.close().catch(() => {});
      await nats.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("nats retry: any chain of causes, cycles included, gets a verdict", () => {
  fc.assert(
    fc.property(
      fc.array(fc.string({ maxLength: 40 }), { minLength: 1, maxLength: 20 }),
      fc.nat(),
      (messages, loop) => {
        const chain = messages.map((m) => new Error(m));
        for (let i = 0; i + 1 < chain.length; i++) chain[i]!.cause = chain[i + 1];
        // The last one points back into the chain: a cycle.
        chain[chain.length - 1]!.cause = chain[loop % chain.length];
        equal(typeof isTransient(chain[0]), "boolean");
      },
    ),
  );
});
