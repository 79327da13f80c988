// The cluster's registry (packages/server/cluster/nats_registry.ts) against a real 3-member NATS
// JetStream cluster with replicas 3: concurrent compare-and-set from connections to different
// members loses no add, and everything read back from NATS is checked before use (records
// written by someone else, blobs with other bytes). One NATS cluster for the file.
import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import fc from "fast-check";
import { connect } from "@nats-io/transport-node";
import { Kvm } from "@nats-io/kv";
import { Objm } from "@nats-io/obj";
import { isSessionError, mergeConfig, type SharedSession } from "@valise/session-store";
import { NatsRegistry, sessionKey } from "../packages/server/cluster/nats_registry.ts";
import { readClusterCredentials } from "../packages/server/cluster/credentials.ts";
import { hasNatsServer, startNatsCluster } from "./_nats.ts";
import { startServer } from "./_server.ts";

const enc = new TextEncoder();

function fresh(userId: string, sessionId: string): SharedSession {
  return {
    userId,
    sessionId,
    serverSideSessionId: crypto.randomUUID(),
    createdAt: Date.now(),
    artifacts: [],
    config: {},
  };
}

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

Deno.test({
  name: hasNatsServer()
    ? "cluster registry: NATS KV and Object Store on a 3-member JetStream cluster"
    : "cluster registry: IGNORED, nats-server is not installed (deno task setup installs it)",
  ignore: !hasNatsServer(),
  fn: async (t) => {
    const auth = { user: "valise", password: crypto.randomUUID() };
    const nats = await startNatsCluster({ auth });
    const tmp = await Deno.makeTempDir({ prefix: "valise-registry-" });
    const credsFile = join(tmp, "nats.creds");
    await Deno.writeTextFile(credsFile, `# the nodes' NATS user\n${auth.user}:${auth.password}\n`);
    const credentials = readClusterCredentials(credsFile);
    const regs: NatsRegistry[] = [];
    const raw = await connect({
      servers: nats.members[0]!.url,
      user: auth.user,
      pass: auth.password,
    });
    try {
      // One registry per member, as three nodes connected to three members would be.
      for (const [i, m] of nats.members.entries()) {
        regs.push(
          await NatsRegistry.connect({
            servers: [m.url],
            nodeId: `t${i}`,
            replicas: 3,
            credentials,
          }),
        );
      }

      await t.step("a Valise node without the credentials file does not start", async () => {
        // In a process of its own: the NATS client's refused socket must not touch this one.
        const dataDir = join(tmp, "node");
        await rejects(
          startServer({ dataDir, args: ["--cluster", nats.urls, "--node-id", "nocreds"] }),
          (e) => {
            // Three URLs: the NATS client gives up sockets whose reset arrives later, which ended
            // the process on an uncaught `read ECONNRESET` before the sockets were guarded.
            ok(/exited before listening/.test(String(e)), String(e));
            ok(/cannot start: \[CLUSTER_UNAVAILABLE\]/.test(String(e)), String(e));
            ok(/--cluster-creds-file or VALISE_CLUSTER_CREDS_FILE/.test(String(e)), String(e));
            ok(!/ECONNRESET/.test(String(e)), String(e));
            return true;
          },
        );
        const node = await startServer({
          dataDir,
          args: ["--cluster", nats.urls, "--node-id", "withcreds"],
          env: { VALISE_CLUSTER_CREDS_FILE: credsFile },
        });
        try {
          await node.waitForLog("cluster: node withcreds joined");
        } finally {
          await node.stop();
        }
      });

      await t.step("adds committed at once from three members are all kept", async () => {
        await fc.assert(
          fc.asyncProperty(
            fc.array(fc.integer({ min: 0, max: 2 }), { minLength: 2, maxLength: 24 }),
            async (who) => {
              const sessionId = crypto.randomUUID();
              const base = fresh("ada", sessionId);
              await Promise.all(who.map((r, i) =>
                regs[r]!.update("ada", sessionId, (cur) => {
                  const c = cur ?? base;
                  return {
                    ...c,
                    artifacts: [
                      ...c.artifacts.filter((a) => a.name !== `pyfiles/m${i}.py`),
                      { name: `pyfiles/m${i}.py`, sha256: "a".repeat(64), size: 1, addedAt: i },
                    ],
                  };
                })
              ));
              for (const reg of regs) {
                const got = await reg.get("ada", sessionId);
                deepEqual(
                  got!.value.artifacts.map((a) => a.name).sort(),
                  who.map((_, i) => `pyfiles/m${i}.py`).sort(),
                );
              }
            },
          ),
          { numRuns: 12 },
        );
        const conflicts = regs.reduce((n, r) => n + r.stats.conflicts, 0);
        const repairs = regs.reduce((n, r) => n + r.stats.repairs, 0);
        console.log(
          `compare-and-set conflicts ${conflicts}, overwritten writes repaired ${repairs}`,
        );
        ok(conflicts > 0, "the property met concurrent writes");
      });

      await t.step("config keys set at once from three members are all kept", async () => {
        await fc.assert(
          fc.asyncProperty(
            fc.array(fc.integer({ min: 0, max: 2 }), { minLength: 2, maxLength: 16 }),
            async (who) => {
              const sessionId = crypto.randomUUID();
              const base = fresh("ada", sessionId);
              await regs[0]!.update("ada", sessionId, () => ({ ...base, config: { kept: "0" } }));
              // Each writer changes one key of its own from the config it last saw, as a node's
              // SessionConfig does (mergeConfig: its own change on top of the current record).
              await Promise.all(who.map((r, i) =>
                regs[r]!.update("ada", sessionId, (cur) => ({
                  ...(cur ?? base),
                  config: mergeConfig((cur ?? base).config, { kept: "0" }, {
                    kept: "0",
                    [`k${i}`]: String(i),
                  }),
                }))
              ));
              const expected = Object.fromEntries([
                ["kept", "0"],
                ...who.map((_, i) => [`k${i}`, String(i)]),
              ]);
              for (const reg of regs) {
                deepEqual((await reg.get("ada", sessionId))!.value.config, expected);
              }
            },
          ),
          { numRuns: 8 },
        );
      });

      await t.step(
        "a session created at once on three members gets one server-side id",
        async () => {
          for (let round = 0; round < 10; round++) {
            const sessionId = crypto.randomUUID();
            const got = await Promise.all(
              [0, 1, 2, 0, 1, 2].map((r) =>
                regs[r]!.update("ada", sessionId, (cur) => cur ?? fresh("ada", sessionId))
              ),
            );
            const stored = (await regs[0]!.get("ada", sessionId))!.value.serverSideSessionId;
            deepEqual(got.map((e) => e.value.serverSideSessionId), got.map(() => stored));
          }
        },
      );

      await t.step("a record someone else wrote into the bucket is refused", async () => {
        const kv = await new Kvm(raw).open("valise_sessions");
        const sessionId = crypto.randomUUID();
        const key = sessionKey("ada", sessionId);
        const good = fresh("ada", sessionId);
        const hostile: unknown[] = [
          "not json",
          {
            v: 1,
            ...good,
            artifacts: [{ name: "../../etc/passwd", sha256: "a".repeat(64), size: 1, addedAt: 0 }],
          },
          {
            v: 1,
            ...good,
            artifacts: [{ name: "pyfiles/x.py", sha256: "zz", size: 1, addedAt: 0 }],
          },
          {
            v: 1,
            ...good,
            artifacts: [{
              name: "pyfiles/x.py",
              sha256: "a".repeat(64),
              size: 2 ** 60,
              addedAt: 0,
            }],
          },
          { v: 1, ...good, config: { "spark.pythonWorkerEnv.LD_PRELOAD": "/tmp/evil.so" } },
          { v: 1, ...good, userId: "mallory" },
          { v: 1, ...good, serverSideSessionId: "../x" },
        ];
        for (const h of hostile) {
          await kv.put(key, enc.encode(typeof h === "string" ? h : JSON.stringify(h)));
          await rejects(regs[1]!.get("ada", sessionId), (e) => {
            ok(isSessionError(e) && e.errorClass === "CLUSTER_DATA_INVALID", String(e));
            return true;
          });
        }
        // Written by a node, it reads back whole.
        await kv.put(key, enc.encode(JSON.stringify({ v: 1, ...good })));
        deepEqual((await regs[1]!.get("ada", sessionId))!.value, good);
      });

      await t.step(
        "a blob is stored once and fetched verified; other bytes are refused",
        async () => {
          const bytes = enc.encode("x".repeat(3 * 512 * 1024 + 7));
          const digest = sha256(bytes);
          const src = join(tmp, "src");
          await Deno.writeFile(src, bytes);
          await regs[0]!.putBlob(digest, src, bytes.length);
          const dest = join(tmp, "fetched");
          await regs[2]!.fetchBlob(digest, bytes.length, dest);
          deepEqual(await Deno.readFile(dest), bytes);
          // The same name, other bytes (as whoever holds the credentials could put them).
          const os = await new Objm(raw).open("valise_blobs");
          const forged = bytes.slice();
          forged[5] = 0x79;
          await os.putBlob({ name: digest }, forged);
          const dest2 = join(tmp, "fetched2");
          await rejects(regs[2]!.fetchBlob(digest, bytes.length, dest2), (e) => {
            ok(isSessionError(e) && e.errorClass === "CLUSTER_DATA_INVALID", String(e));
            ok(String(e).includes(digest));
            return true;
          });
          equal(await Deno.stat(dest2).then(() => true, () => false), false, "no file is left");
          // Longer than the record says: refused before it is all read.
          await os.putBlob({ name: digest }, enc.encode("y".repeat(bytes.length + 1)));
          await rejects(regs[1]!.fetchBlob(digest, bytes.length, dest2));
          // putBlob puts the genuine bytes back when the held object is not them.
          await regs[0]!.putBlob(digest, src, bytes.length);
          await regs[1]!.fetchBlob(digest, bytes.length, dest2);
          deepEqual(await Deno.readFile(dest2), bytes);
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
