// Copyright 2026 the Valise authors. Apache-2.0 license.
// Cluster-wide quotas and idle expiry, with the stores of two nodes sharing one registry held in
// memory (with the index the NATS registry keeps). Time is passed in, so "an hour later" is a
// number, not a wait. Real NATS and real Valise processes: tests/cluster_wide_test.ts.
import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { isSessionError } from "./errors.ts";
import type { Quotas } from "./session.ts";
import { SessionStore } from "./store.ts";
import { addBytes } from "./_test_util.ts";
import { MemoryRegistry } from "./_memory_registry.ts";

const IDLE = 60_000;
/** Past the idle timeout and the quarter a record's last use may lag behind. */
const EXPIRED = IDLE + IDLE / 4 + 1;

async function twoNodes(
  quotas: Partial<Quotas>,
  fn: (a: SessionStore, b: SessionStore, reg: MemoryRegistry) => Promise<void>,
): Promise<void> {
  const tmp = await Deno.makeTempDir();
  const reg = new MemoryRegistry({ indexed: true });
  const options = { registry: reg, quotas, idleTimeoutMs: IDLE };
  const a = await SessionStore.open({ dataDir: join(tmp, "a"), ...options });
  const b = await SessionStore.open({ dataDir: join(tmp, "b"), ...options });
  try {
    await fn(a, b, reg);
  } finally {
    await a.close();
    await b.close();
    await new Deno.Command("chmod", { args: ["-R", "u+w", tmp] }).output();
    await Deno.remove(tmp, { recursive: true });
  }
}

const sid = () => crypto.randomUUID();
const quotaError = (reason: string) => (e: unknown) => {
  ok(isSessionError(e) && e.errorClass === "QUOTA_EXCEEDED" && e.reason === reason, String(e));
  return true;
};

Deno.test("sessions per user are counted over the cluster, not over one node's copies", async () => {
  await twoNodes({ maxSessionsPerUser: 2 }, async (a, b) => {
    const first = sid();
    await a.session({ userId: "ada", sessionId: first });
    await b.session({ userId: "ada", sessionId: sid() });
    // Each node holds one of ada's sessions; the cluster holds two.
    await rejects(a.session({ userId: "ada", sessionId: sid() }), (e) => {
      quotaError("USER_SESSIONS")(e);
      ok(String(e).includes("they hold 2 sessions in the cluster"), String(e));
      return true;
    });
    // Another user is not affected; a session the cluster already holds is served anywhere.
    await b.session({ userId: "bob", sessionId: sid() });
    await b.session({ userId: "ada", sessionId: first });
    // A release anywhere gives the slot back everywhere.
    await b.release("ada", first);
    await a.session({ userId: "ada", sessionId: sid() });
  });
});

Deno.test("sessions in all are counted over the cluster", async () => {
  await twoNodes({ maxSessions: 2 }, async (a, b) => {
    await a.session({ userId: "ada", sessionId: sid() });
    await b.session({ userId: "bob", sessionId: sid() });
    await rejects(a.session({ userId: "eve", sessionId: sid() }), quotaError("SESSIONS"));
  });
});

Deno.test("a node admits one new session at a time, each seeing the one before", async () => {
  await twoNodes({ maxSessionsPerUser: 3 }, async (a) => {
    const results = await Promise.allSettled(
      Array.from({ length: 8 }, () => a.session({ userId: "ada", sessionId: sid() })),
    );
    equal(results.filter((r) => r.status === "fulfilled").length, 3);
  });
});

Deno.test("bytes per user are counted over the cluster's records", async () => {
  await twoNodes({ maxUserBytes: 100 }, async (a, b) => {
    await addBytes(await a.session({ userId: "ada", sessionId: sid() }), [[
      "files/x",
      "x".repeat(60),
    ]]);
    const sb = await b.session({ userId: "ada", sessionId: sid() });
    const r = await addBytes(sb, [["files/y", "y".repeat(50)]]).catch((e) => e);
    ok(
      isSessionError(r) && r.errorClass === "QUOTA_EXCEEDED" && r.reason === "USER_BYTES",
      String(r),
    );
    ok(String(r).includes("110"), String(r));
    await addBytes(sb, [["files/y", "y".repeat(40)]]);
    // The session another node holds, brought here, is not counted twice.
    const again = await b.session({ userId: "ada", sessionId: a.sessions()[0]!.sessionId });
    equal(again.artifacts().length, 1);
  });
});

Deno.test("a record claiming more than a session may hold counts as one session's quota", async () => {
  await twoNodes({ maxSessionBytes: 1000, maxUserBytes: 1500 }, async (_a, b, reg) => {
    // Whoever holds the cluster's credentials writes a record of 10 GiB under bob's name.
    const forged = sid();
    reg.put("bob", forged, {
      userId: "bob",
      sessionId: forged,
      serverSideSessionId: crypto.randomUUID(),
      createdAt: 1,
      usedAt: Date.now(),
      artifacts: [{ name: "files/huge", sha256: "e".repeat(64), size: 10 * 2 ** 30, addedAt: 1 }],
      config: {},
    });
    const s = await b.session({ userId: "bob", sessionId: sid() });
    // Counted as 1000 bytes (one session's quota), not 10 GiB: bob keeps 500.
    await addBytes(s, [["files/mine", "m".repeat(400)]]);
    const r = await addBytes(s, [["files/more", "m".repeat(200)]]).catch((e) => e);
    ok(isSessionError(r) && r.reason === "USER_BYTES", String(r));
    ok(String(r).includes("1600"), String(r));
  });
});

Deno.test("a session idle on every node is released everywhere", async () => {
  await twoNodes({}, async (a, b, reg) => {
    const ids = { userId: "ada", sessionId: sid() };
    await addBytes(await a.session(ids), [["files/f", "f"]]);
    await b.session(ids);
    const used = reg.records!.find("ada", ids.sessionId)!.usedAt!;
    // Idle for the timeout only: the record's use may lag a quarter behind; kept.
    deepEqual(await a.expireSharedIdle(used + IDLE + 1), []);
    const dropped = new Promise<string>((r) => b.onRelease((s) => r(s.sessionId)));
    deepEqual(await a.expireSharedIdle(used + EXPIRED), [ids.sessionId]);
    equal(await dropped, ids.sessionId, "B's watch dropped its copy");
    equal(a.find("ada", ids.sessionId), undefined);
    equal(b.find("ada", ids.sessionId), undefined);
    equal((await reg.get("ada", ids.sessionId))?.value.closed, true);
    await rejects(b.session(ids), /closed/);
  });
});

Deno.test("used on B, a session idle on A is kept; idle on both, it goes", async () => {
  await twoNodes({}, async (a, b, reg) => {
    const ids = { userId: "ada", sessionId: sid() };
    await a.session(ids);
    const sb = await b.session(ids);
    const t0 = reg.records!.find("ada", ids.sessionId)!.usedAt!;
    // B used it two hours later (a run ended there); its round writes that to the record once.
    sb.lastAccess = t0 + 2 * IDLE;
    const writes = reg.writes;
    deepEqual(await b.expireSharedIdle(t0 + 2 * IDLE + 1), []);
    equal(reg.writes, writes + 1);
    deepEqual(await b.expireSharedIdle(t0 + 2 * IDLE + 2), []);
    equal(reg.writes, writes + 1, "no second write for the same use");
    // A, idle since t0, drops its own copy; the cluster keeps the session.
    deepEqual(await a.expireIdle(t0 + 2 * IDLE + 10), [ids.sessionId]);
    deepEqual(await a.expireSharedIdle(t0 + 2 * IDLE + 10), []);
    ok(b.find("ada", ids.sessionId));
    equal((await reg.get("ada", ids.sessionId))?.value.closed, undefined);
    // Then idle on both.
    const dropped = new Promise<string>((r) => b.onRelease((s) => r(s.sessionId)));
    deepEqual(await a.expireSharedIdle(t0 + 2 * IDLE + EXPIRED), [ids.sessionId]);
    equal(await dropped, ids.sessionId);
    equal(b.find("ada", ids.sessionId), undefined);
  });
});

Deno.test("a session busy on one node is never released by another", async () => {
  await twoNodes({}, async (a, b, reg) => {
    const ids = { userId: "ada", sessionId: sid() };
    await a.session(ids);
    const done = (await b.session(ids)).hold();
    const t0 = reg.records!.find("ada", ids.sessionId)!.usedAt!;
    for (const later of [1, 2, 3, 10]) {
      // Each round of B's records its busy session as used then; A finds it in use.
      const now = t0 + later * EXPIRED;
      await b.expireSharedIdle(now);
      deepEqual(await a.expireSharedIdle(now), []);
    }
    ok(b.find("ada", ids.sessionId));
    done();
  });
});

Deno.test("a use written first wins over an expiry that judged the record idle", async () => {
  await twoNodes({}, async (a, b, reg) => {
    const ids = { userId: "ada", sessionId: sid() };
    await a.session(ids);
    // The record says it was last used long ago (no node used it since).
    const cur = (await reg.get("ada", ids.sessionId))!.value;
    reg.put("ada", ids.sessionId, { ...cur, usedAt: 1 });
    // A finds it idle; before A's compare-and-set, a call binds the session on B.
    let bound: string | undefined;
    reg.beforeNextUpdate = async () => {
      bound = (await b.session(ids)).serverSideSessionId;
    };
    deepEqual(await a.expireSharedIdle(), []);
    equal(bound, cur.serverSideSessionId);
    const rec = (await reg.get("ada", ids.sessionId))!.value;
    equal(rec.closed, undefined, "the use landed first: the expiry found it used and left it");
    ok(rec.usedAt! > 1, "the use was written before the call was served");
    ok(b.find("ada", ids.sessionId));
  });
});

Deno.test("an expiry written first wins over a use: the call is refused, nothing served", async () => {
  await twoNodes({}, async (a, b, reg) => {
    const ids = { userId: "ada", sessionId: sid() };
    const sa = await a.session(ids);
    await addBytes(sa, [["files/f", "f"]]);
    await b.session(ids);
    const cur = (await reg.get("ada", ids.sessionId))!.value;
    reg.put("ada", ids.sessionId, { ...cur, usedAt: 1 });
    // B's next call finds the record idle and writes its use; A's expiry lands just before.
    reg.beforeNextUpdate = async () => {
      deepEqual(await a.expireSharedIdle(), [ids.sessionId]);
    };
    await rejects(b.session(ids), /closed/);
    equal(b.find("ada", ids.sessionId), undefined);
  });
});

Deno.test("a user's digests held on another node attach by digest, fetched and verified", async () => {
  await twoNodes({}, async (a, b, reg) => {
    const bytes = new TextEncoder().encode("SECRET = 1\n");
    const digest = createHash("sha256").update(bytes).digest("hex");
    await addBytes(await a.session({ userId: "ada", sessionId: sid() }), [["files/s.py", bytes]]);
    ok(b.heldDigests("ada").has(digest), "the cluster's records say ada holds it");
    equal(b.heldDigests("eve").has(digest), false);
    equal(await b.blobSize(digest, { cluster: false }), undefined);
    equal(await b.blobSize(digest), bytes.length);
    const sb = await b.session({ userId: "ada", sessionId: sid() });
    const letGo = await b.holdBlob(digest, sb, "files/s.py");
    try {
      ok(b.pinned(`b:${digest}`));
      await sb.attach("files/s.py", digest);
      equal(await Deno.readTextFile(join(sb.root, "s.py")), "SECRET = 1\n");
    } finally {
      letGo();
    }
    // Other bytes under that name in the cluster's store are refused, nothing kept.
    const forged = createHash("sha256").update("other").digest("hex");
    reg.blobs.set(forged, new TextEncoder().encode("not it"));
    await rejects(b.holdBlob(forged, sb, "files/x"), /CLUSTER_DATA_INVALID/);
    equal(await b.blobs.has(forged), false);
    equal(b.pinned(`b:${forged}`), false);
  });
});
