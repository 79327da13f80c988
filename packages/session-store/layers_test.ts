// Copyright 2026 the Valise authors. Apache-2.0 license.
// Pip layers in the store: built once per key (concurrent asks wait for one build), read-only,
// referenced by the sessions that use them, counted in their quotas, kept as cache and evicted
// least recently used like trees; half-built ones never survive a restart.
import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import { join } from "node:path";
import { SessionError } from "./errors.ts";
import type { PipLayerRecord } from "./manifest.ts";
import { SessionStore } from "./store.ts";

const key = (c: string) => `${c.repeat(64)}-pip`;

async function cleanup(dir: string): Promise<void> {
  await new Deno.Command("chmod", { args: ["-R", "u+w", dir] }).output();
  await Deno.remove(dir, { recursive: true });
}

/** Builds a layer of `bytes` bytes under `key`, as the server's builder does (staging, rename). */
async function build(store: SessionStore, k: string, bytes: number): Promise<PipLayerRecord> {
  await store.layers.ensure(k, async (dest) => {
    const staging = join(store.layers.root, `.build-${crypto.randomUUID()}`);
    await Deno.mkdir(join(staging, "pkg"), { recursive: true });
    await Deno.writeTextFile(join(staging, "pkg", "__init__.py"), "x".repeat(bytes));
    await Deno.rename(staging, dest);
    return { bytes, entries: 2 };
  });
  return {
    key: k,
    requirements: "pkg==1",
    distributions: [{ name: "pkg", version: "1" }],
    bytes,
    entries: 2,
    usedAt: Date.now(),
  };
}

Deno.test("layers: built once for concurrent asks, read-only, recorded in the manifest and counted in the session's bytes", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "valise-layers-" });
  try {
    const store = await SessionStore.open({ dataDir });
    let builds = 0;
    const k = key("a");
    const results = await Promise.all(
      Array.from({ length: 5 }, () =>
        store.layers.ensure(k, async (dest) => {
          builds++;
          await Deno.mkdir(dest);
          await Deno.writeTextFile(join(dest, "m.py"), "X = 1\n");
          return { bytes: 6, entries: 1 };
        })),
    );
    equal(builds, 1);
    equal(store.layers.builds, 1);
    equal(new Set(results.map((r) => r.path)).size, 1);
    equal((await store.layers.ensure(k, () => Promise.reject(new Error("no")))).built, false);
    // Read-only: the server's own user gets no write bit either (root would still write it; the
    // sandbox binds layers read-only too).
    equal((await Deno.stat(join(store.layers.path(k), "m.py"))).mode! & 0o222, 0);
    equal((await Deno.stat(store.layers.path(k))).mode! & 0o222, 0);

    const s = await store.session({ userId: "u", sessionId: crypto.randomUUID() });
    const before = s.bytes();
    await s.setPipLayer({
      key: k,
      requirements: "m==1",
      distributions: [{ name: "m", version: "1" }],
      bytes: 6,
      entries: 1,
      usedAt: Date.now(),
    });
    equal(s.bytes(), before + 6);
    deepEqual(s.layerPaths(), [store.layers.path(k)]);
    const manifest = JSON.parse(await Deno.readTextFile(join(s.dir, "manifest.json")));
    equal(manifest.pip.key, k);
    await store.close();

    // Restored with the session after a restart; a half-built layer is not.
    await Deno.mkdir(join(dataDir, "layers", ".build-x"));
    await Deno.mkdir(join(dataDir, "layers", key("b")));
    const again = await SessionStore.open({ dataDir });
    equal(again.sessions()[0]!.pipLayer()?.key, k);
    deepEqual(await again.layers.list(), [k]);
    ok(!(await Deno.stat(join(dataDir, "layers", key("b"))).catch(() => undefined)));
    ok(!(await Deno.stat(join(dataDir, "layers", ".build-x")).catch(() => undefined)));
    await again.close();
  } finally {
    await cleanup(dataDir);
  }
});

Deno.test("layers: a referenced layer is never evicted; unreferenced ones go least recently used beyond the cache", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "valise-layers-" });
  try {
    const store = await SessionStore.open({ dataDir, cacheBytes: 1000 });
    const a = await store.session({ userId: "u", sessionId: crypto.randomUUID() });
    const b = await store.session({ userId: "u", sessionId: crypto.randomUUID() });
    const ra = await build(store, key("a"), 4000);
    const rb = await build(store, key("b"), 800);
    await a.setPipLayer(ra);
    await b.setPipLayer(rb);
    deepEqual((await store.collect({ cacheBytes: 0 })).layers, []);
    // B drops its layer: it stays as cache while it fits, then goes.
    await b.setPipLayer(undefined);
    deepEqual(b.layerPaths(), []);
    deepEqual((await store.collect()).layers, []);
    const unpin = await store.pin(`l:${key("b")}`);
    deepEqual((await store.collect({ cacheBytes: 0 })).layers, []);
    unpin();
    deepEqual((await store.collect({ cacheBytes: 0 })).layers, [key("b")]);
    // Releasing A leaves its layer as cache; over the budget it goes.
    await store.release("u", a.sessionId);
    deepEqual(await store.layers.list(), []);
    await store.close();
  } finally {
    await cleanup(dataDir);
  }
});

Deno.test("layers: a layer over the session's or the user's quota is refused (QUOTA_EXCEEDED) and not recorded", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "valise-layers-" });
  try {
    const store = await SessionStore.open({
      dataDir,
      quotas: { maxSessionBytes: 1000, maxUserBytes: 1500, maxSessionEntries: 10 },
    });
    const a = await store.session({ userId: "u", sessionId: crypto.randomUUID() });
    const big = await build(store, key("c"), 1200);
    await rejects(
      a.setPipLayer(big),
      (e) => e instanceof SessionError && e.reason === "SESSION_BYTES",
    );
    equal(a.pipLayer(), undefined);
    const ok1 = await build(store, key("d"), 900);
    await a.setPipLayer(ok1);
    const b = await store.session({ userId: "u", sessionId: crypto.randomUUID() });
    await rejects(
      b.setPipLayer({ ...ok1, key: key("d") }),
      (e) => e instanceof SessionError && e.reason === "USER_BYTES",
    );
    await rejects(
      b.setPipLayer({ ...ok1, bytes: 10, entries: 11 }),
      (e) => e instanceof SessionError && e.reason === "SESSION_ENTRIES",
    );
    await store.close();
  } finally {
    await cleanup(dataDir);
  }
});
