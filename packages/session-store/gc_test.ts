// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal, ok } from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import fc from "fast-check";
import { SessionError } from "./errors.ts";
import { SessionStore, type SessionStoreOptions } from "./store.ts";
import { addBytes } from "./_test_util.ts";

const sha = (b: Uint8Array | string) => createHash("sha256").update(b).digest("hex");
const uid = () => crypto.randomUUID();

async function cleanup(dir: string): Promise<void> {
  await new Deno.Command("chmod", { args: ["-R", "u+w", dir] }).output();
  await Deno.remove(dir, { recursive: true });
}

async function withStore(
  options: Omit<SessionStoreOptions, "dataDir">,
  fn: (store: SessionStore, dataDir: string) => Promise<void>,
): Promise<void> {
  const dataDir = await Deno.makeTempDir({ prefix: "valise-gc-" });
  const store = await SessionStore.open({ dataDir, ...options });
  try {
    await fn(store, dataDir);
  } finally {
    await store.close();
    await cleanup(dataDir);
  }
}

function quotaReason(e: unknown): string {
  if (e instanceof SessionError && e.errorClass === "QUOTA_EXCEEDED") return e.reason ?? "";
  throw e;
}

Deno.test("quotas: bytes and artifacts per session, bytes per user, with the figures named", async () => {
  await withStore(
    { quotas: { maxSessionBytes: 1000, maxSessionArtifacts: 3, maxUserBytes: 1500 } },
    async (store) => {
      const a = await store.session({ userId: "u", sessionId: uid() });
      await addBytes(a, [["files/a", "x".repeat(600)]]);
      let reason = "";
      let message = "";
      try {
        await addBytes(a, [["files/b", "y".repeat(500)]]);
      } catch (e) {
        reason = quotaReason(e);
        message = (e as Error).message;
      }
      equal(reason, "SESSION_BYTES");
      ok(message.includes("1100 bytes") && message.includes("1000 bytes"), message);
      // What was stored before is intact.
      equal(await Deno.readTextFile(join(a.root, "a")), "x".repeat(600));
      equal(a.artifact("files/b"), undefined);

      const r = await addBytes(a, [["files/c", "1"], ["files/d", "2"], ["files/e", "3"]]);
      deepEqual(r.errors.map((e) => e.reason), ["SESSION_ARTIFACTS"]);
      equal(a.artifacts().length, 3);

      const b = await store.session({ userId: "u", sessionId: uid() });
      try {
        await addBytes(b, [["files/big", "z".repeat(950)]]);
        reason = "none";
      } catch (e) {
        reason = quotaReason(e);
      }
      equal(reason, "USER_BYTES");
      // Another user is not affected.
      const c = await store.session({ userId: "v", sessionId: uid() });
      deepEqual((await addBytes(c, [["files/big", "z".repeat(950)]])).errors, []);
    },
  );
});

Deno.test("quotas: uploads stop when the disk floor is crossed (small tmpfs)", async (t) => {
  if (Deno.uid() !== 0) {
    t.step({ name: "skipped: mounting a tmpfs needs root", ignore: true, fn: () => {} });
    return;
  }
  const dir = await Deno.makeTempDir({ prefix: "valise-tmpfs-" });
  const mount = await new Deno.Command("mount", {
    args: ["-t", "tmpfs", "-o", "size=24m", "tmpfs", dir],
  }).output();
  if (!mount.success) {
    await Deno.remove(dir);
    t.step({ name: "skipped: cannot mount tmpfs here", ignore: true, fn: () => {} });
    return;
  }
  try {
    const store = await SessionStore.open({
      dataDir: join(dir, "data"),
      quotas: { minFreeBytes: 12 * 2 ** 20 },
    });
    const s = await store.session({ userId: "", sessionId: uid() });
    const small = new Uint8Array(4 * 2 ** 20).fill(1);
    deepEqual((await addBytes(s, [["files/small", small]])).errors, []);
    let reason = "";
    try {
      await addBytes(s, [["files/big", new Uint8Array(10 * 2 ** 20).fill(2)]]);
    } catch (e) {
      reason = quotaReason(e);
    }
    equal(reason, "DISK_FLOOR");
    // Refused mid-way: nothing of it stays, the earlier artifact is intact.
    equal(s.artifact("files/big"), undefined);
    deepEqual(await Deno.readFile(join(s.root, "small")), small);
    deepEqual(await Array.fromAsync(Deno.readDir(join(dir, "data", "staging"))), []);
    await store.close();
  } finally {
    // A failed assertion leaves the store (and its lock file) open: detach the mount lazily
    // then, so that the assertion, not the cleanup, is what the test reports.
    const u = await new Deno.Command("umount", { args: [dir] }).output();
    if (!u.success) await new Deno.Command("umount", { args: ["-l", dir] }).output();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("collect() evicts unreferenced blobs least recently used first, never referenced or pinned ones", async () => {
  await withStore({ cacheBytes: 250 }, async (store) => {
    const live = await store.session({ userId: "", sessionId: uid() });
    await addBytes(live, [["files/live", "L".repeat(100)]]);
    const ids = [uid(), uid(), uid()];
    for (const [i, id] of ids.entries()) {
      const s = await store.session({ userId: "", sessionId: id });
      await addBytes(s, [[`files/f${i}`, String(i).repeat(100)]]);
    }
    // Released in order 0, 1, 2: blob 0 is the least recently used.
    for (const id of ids) {
      await store.release("", id, { allowReconnect: true });
      await new Promise((r) => setTimeout(r, 5));
    }
    const digests = ids.map((_, i) => sha(String(i).repeat(100)));
    const have = new Set(await store.blobs.list());
    // 300 unreferenced bytes against a 250-byte cache: exactly the oldest went.
    equal(have.has(digests[0]!), false);
    equal(have.has(digests[1]!), true);
    equal(have.has(digests[2]!), true);
    ok(have.has(sha("L".repeat(100))));
    const removed = await store.collect({ cacheBytes: 0 });
    deepEqual(removed.blobs.sort(), [digests[1]!, digests[2]!].sort());
    deepEqual(await store.blobs.list(), [sha("L".repeat(100))]);
    equal(await Deno.readTextFile(join(live.root, "live")), "L".repeat(100));
  });
});

Deno.test("pin() keeps a blob from eviction until it is released", async () => {
  await withStore({ cacheBytes: 0 }, async (store) => {
    const a = await store.session({ userId: "", sessionId: uid() });
    await addBytes(a, [["files/x", "pinned"]]);
    const digest = sha("pinned");
    const unpin = await store.pin(`b:${digest}`);
    await store.release("", a.sessionId);
    equal((await store.collect({ cacheBytes: 0 })).blobs.length, 0);
    ok((await store.blobs.list()).includes(digest));
    unpin();
    deepEqual((await store.collect({ cacheBytes: 0 })).blobs, [digest]);
  });
});

Deno.test("an attach racing an eviction either gets the blob whole or a clear BLOB_NOT_FOUND", async () => {
  await withStore({ cacheBytes: 0 }, async (store) => {
    const a = await store.session({ userId: "", sessionId: uid() });
    await addBytes(a, [["files/x", "shared"]]);
    await store.release("", a.sessionId, { allowReconnect: true });
    // Eviction ran at release; upload it again and attach from a second session while a
    // collection runs concurrently: the attach must find what it checked.
    const b = await store.session({ userId: "", sessionId: uid() });
    await addBytes(b, [["files/x", "shared"]]);
    const c = await store.session({ userId: "", sessionId: uid() });
    await store.release("", b.sessionId, { allowReconnect: true }).catch(() => {});
    const digest = sha("shared");
    const results = await Promise.allSettled([
      c.attach("files/y", digest),
      store.collect({ cacheBytes: 0 }),
    ]);
    const attached = results[0]!.status === "fulfilled";
    if (attached) {
      equal(await Deno.readTextFile(join(c.root, "y")), "shared");
      ok((await store.blobs.list()).includes(digest));
    } else {
      // Evicted before the pin: the attach says so and leaves nothing behind.
      const e = (results[0] as PromiseRejectedResult).reason as SessionError;
      equal(e.errorClass, "BLOB_NOT_FOUND");
      equal(c.artifact("files/y"), undefined);
    }
  });
});

const names = ["files/a", "files/b", "pyfiles/m.py", "jars/j.jar"];
const bodies = ["one", "two", "three"];
type Op =
  | { op: "add"; who: number; name: number; body: number }
  | { op: "release"; who: number }
  | { op: "evict" }
  | { op: "restart" };
const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({
      op: fc.constant("add" as const),
      who: fc.integer({ min: 0, max: 3 }),
      name: fc.integer({ min: 0, max: names.length - 1 }),
      body: fc.integer({ min: 0, max: bodies.length - 1 }),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant("release" as const),
      who: fc.integer({ min: 0, max: 3 }),
    }),
  },
  { weight: 2, arbitrary: fc.record({ op: fc.constant("evict" as const) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant("restart" as const) }) },
);

Deno.test("any interleaving of add, release, eviction and restart keeps every live session whole", async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 20 }), async (ops) => {
      const dataDir = await Deno.makeTempDir({ prefix: "valise-gcprop-" });
      let store = await SessionStore.open({ dataDir, cacheBytes: 0 });
      const ids = [uid(), uid(), uid(), uid()];
      // The model: what each live session must hold.
      const model = new Map<number, Map<string, string>>();
      try {
        for (const o of ops) {
          if (o.op === "add") {
            const s = await store.session({ userId: "", sessionId: ids[o.who]! });
            const have = model.get(o.who) ?? new Map<string, string>();
            const r = await addBytes(s, [[names[o.name]!, bodies[o.body]!]]);
            const prev = have.get(names[o.name]!);
            if (prev === undefined || prev === bodies[o.body]) {
              deepEqual(r.errors, []);
              have.set(names[o.name]!, bodies[o.body]!);
            } else {
              equal(r.errors[0]?.errorClass, "ARTIFACT_ALREADY_EXISTS");
            }
            model.set(o.who, have);
          } else if (o.op === "release") {
            await store.release("", ids[o.who]!, { allowReconnect: true });
            model.delete(o.who);
          } else if (o.op === "evict") {
            await store.collect({ cacheBytes: 0 });
          } else {
            await store.close();
            store = await SessionStore.open({ dataDir, cacheBytes: 0 });
          }
          for (const [who, have] of model) {
            const s = store.find("", ids[who]!)!;
            ok(s, "a live session disappeared");
            deepEqual(new Set(s.artifacts().map((a) => a.path)), new Set(have.keys()));
            for (const [name, body] of have) {
              const rec = s.artifact(name)!;
              equal(rec.sha256, sha(body));
              equal(await Deno.readTextFile(store.blobs.path(rec.sha256)), body);
              equal(await Deno.readTextFile(join(s.artifactsDir, name)), body);
              if (rec.view) equal(await Deno.readTextFile(join(s.root, rec.view)), body);
            }
          }
        }
      } finally {
        await store.close();
        await cleanup(dataDir);
      }
    }),
    { numRuns: 40 },
  );
});
