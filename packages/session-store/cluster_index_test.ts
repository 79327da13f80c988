// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import { ClusterIndex } from "./cluster_index.ts";
import { isSessionError } from "./errors.ts";
import type { SharedSession } from "./registry.ts";

function record(userId: string, sessionId: string, more: Partial<SharedSession> = {}) {
  return {
    userId,
    sessionId,
    serverSideSessionId: crypto.randomUUID(),
    createdAt: 1,
    usedAt: 5,
    artifacts: [
      { name: "files/a", sha256: "a".repeat(64), size: 10, addedAt: 1 },
      { name: "archives/e.tar.gz#e", sha256: "b".repeat(64), size: 20, addedAt: 2, treeBytes: 70 },
    ],
    config: {},
    ...more,
  } satisfies SharedSession;
}

Deno.test("the index counts open records per user and in all, with their bytes and digests", () => {
  const index = new ClusterIndex(() => Promise.resolve(0));
  index.apply("s.1", 1, record("ada", "s1"));
  index.apply("s.2", 2, record("ada", "s2"));
  index.apply("s.3", 3, record("bob", "s3"));
  equal(index.count(), 3);
  equal(index.count("ada"), 2);
  equal(index.count("eve"), 0);
  const s1 = index.find("ada", "s1")!;
  equal(s1.bytes, 100, "artifacts and the trees they unpacked to");
  deepEqual(s1.digests, ["a".repeat(64), "b".repeat(64)]);
  equal(s1.usedAt, 5);
  // Closed, deleted or refused by the checks: counts for nothing.
  index.apply("s.1", 4, record("ada", "s1", { closed: true }));
  index.apply("s.3", 5, undefined);
  equal(index.count(), 1);
  equal(index.count("ada"), 1);
  equal(index.find("ada", "s1"), undefined);
  deepEqual(index.open().map((r) => r.sessionId), ["s2"]);
});

Deno.test("the index ignores a revision older than one it applied for that key", () => {
  const index = new ClusterIndex(() => Promise.resolve(0));
  // This node's own write (revision 7) is applied before the watch delivers older ones.
  index.apply("s.1", 7, record("ada", "s1", { usedAt: 700 }));
  index.apply("s.1", 6, record("ada", "s1", { usedAt: 600 }));
  index.apply("s.1", 6, undefined);
  equal(index.find("ada", "s1")?.usedAt, 700);
  index.apply("s.1", 8, record("ada", "s1", { closed: true }));
  index.apply("s.1", 7, record("ada", "s1"));
  equal(index.count(), 0, "a close is not undone by an older write");
});

Deno.test("caughtUp waits until the watch delivered the barrier, restarting a stalled watch", async () => {
  let barrier = 10;
  let stalls = 0;
  const index = new ClusterIndex(() => Promise.resolve(++barrier), {
    stallMs: 5,
    onStall: () => {
      stalls++;
      // The watch, restarted, delivers what it missed.
      if (stalls === 2) index.seen(barrier);
    },
  });
  index.seen(5);
  await index.caughtUp();
  equal(stalls, 2);
  equal(index.revision, 11);
  // A barrier the watch already passed: no wait at all.
  index.seen(100);
  await index.caughtUp();
  equal(stalls, 2);
});

Deno.test("caughtUp fails with CLUSTER_UNAVAILABLE when the watch never catches up", async () => {
  const index = new ClusterIndex(() => Promise.resolve(3), { timeoutMs: 30, stallMs: 10 });
  await rejects(index.caughtUp(), (e) => {
    ok(isSessionError(e) && e.errorClass === "CLUSTER_UNAVAILABLE", String(e));
    ok(String(e).includes("revision 3"), String(e));
    return true;
  });
});
