// Copyright 2026 the Valise authors. Apache-2.0 license.
// The blob GC protocol (blob_gc.ts) on an in-memory model of the cluster's storage: what one
// pass deletes and leaves, the lease, and a property over interleavings: whatever order an
// adversarial scheduler gives the steps of nodes committing blobs, sessions dropping them and
// one or two collectors, every blob a session's record names is in the object store at the end.
// The same property fails at once for the commit protocols that skip a part of it.
import { deepEqual, equal, ok } from "node:assert/strict";
import fc from "fast-check";
import { BlobCollector, type GcStore, IntentKeeper } from "./blob_gc.ts";
import { CLOCK_MARGIN_MS, DELETE_INTENT_TTL_MS, encodeIntent, encodeLease } from "./gc_records.ts";
import { GcModel, ModelGcStore, type Step } from "./_gc_model_test_util.ts";

const GRACE = 1000;
const sha = (n: number) => n.toString(16).padStart(64, "0");

/** A model with objects `n` old enough to collect; session `k0` names the first. */
function oldObjects(n: number): GcModel {
  const m = new GcModel();
  for (let i = 0; i < n; i++) m.objects.set(sha(i), { size: 10 + i, storedAt: m.clock - 10_000 });
  m.versions.push({ key: "k0", digests: [sha(0)], at: m.clock - 10_000 });
  return m;
}

function collector(store: GcStore, node = "c1", log?: (l: string) => void): BlobCollector {
  return new BlobCollector(store, { node, graceMs: GRACE, intervalMs: 1000, log });
}

Deno.test("a pass deletes old objects no record names, and nothing else", async () => {
  const m = oldObjects(3);
  m.objects.set(sha(7), { size: 5, storedAt: m.clock - 10 }); // young
  const store = new ModelGcStore(m);
  const lines: string[] = [];
  const c = collector(store, "c1", (l) => lines.push(l));
  ok(await c.holdLease());
  const r = await c.pass();
  deepEqual(r.deleted.sort(), [sha(1), sha(2)]);
  ok(m.objects.has(sha(0)), "named by k0");
  ok(m.objects.has(sha(7)), "younger than the grace period");
  deepEqual(c.stats, { runs: 0, deleted: 2, deletedBytes: 23, skippedInFlight: 0 });
  equal(m.intents.size, 0, "its delete intents are withdrawn");
  ok(lines.some((l) => l.includes(`gc deleted blob ${sha(1)} (11 bytes)`)), lines.join("\n"));
});

Deno.test("a record written within the grace period keeps what it named", async () => {
  const m = oldObjects(2);
  // sha(1) was named a moment ago by a record since overwritten (the 2.9.10 case its writer
  // repairs): it stays until that record is older than the grace period.
  m.versions.push({ key: "k1", digests: [sha(1)], at: m.clock - 10 });
  m.versions.push({ key: "k1", digests: [], at: m.clock - 5 });
  const store = new ModelGcStore(m);
  const c = collector(store);
  ok(await c.holdLease());
  deepEqual((await c.pass()).deleted, []);
  m.clock += GRACE;
  deepEqual((await c.pass()).deleted, [sha(1)]);
});

Deno.test("a blob with a live commit intent is left, and counted", async () => {
  const m = oldObjects(3);
  const store = new ModelGcStore(m);
  await store.putIntent("commit", sha(1), "n2.x", { node: "n2", ttlMs: 60_000 });
  // Unreadable: believed for the longest an intent may live.
  m.intents.set(`commit.${sha(2)}.m.y`, {
    key: `commit.${sha(2)}.m.y`,
    seq: ++m.seq,
    storedAt: m.clock,
    sha256: sha(2),
    value: undefined,
  });
  const lines: string[] = [];
  const c = collector(store, "c1", (l) => lines.push(l));
  ok(await c.holdLease());
  const r = await c.pass();
  deepEqual(r.deleted, []);
  deepEqual(r.inFlight.sort(), [sha(1), sha(2)]);
  equal(c.stats.skippedInFlight, 2);
  ok(lines.some((l) => l.includes("in flight on node n2")), lines.join("\n"));
  // A lapsed intent (its node died) no longer keeps the blob.
  m.clock += 11 * 60_000 + CLOCK_MARGIN_MS;
  deepEqual((await c.pass()).deleted.sort(), [sha(1), sha(2)]);
});

Deno.test("a collector past its delete intents' time stops deleting", async () => {
  const m = oldObjects(4);
  let calls = 0;
  // Every deletion takes a long while: past the intents' time minus the margin, the rest wait.
  const store = new (class extends ModelGcStore {
    override async deleteObject(s: string): Promise<boolean> {
      calls++;
      m.clock += (DELETE_INTENT_TTL_MS - CLOCK_MARGIN_MS) / 2;
      return await super.deleteObject(s);
    }
  })(m);
  const c = new BlobCollector(store, {
    node: "c1",
    graceMs: GRACE,
    leaseTtlMs: 10 * 60_000,
  });
  ok(await c.holdLease());
  equal((await c.pass()).deleted.length, 2);
  equal(calls, 2);
  equal(m.intents.size, 0);
});

Deno.test("the lease: one holder; renewed by it; taken over only once it lapsed", async () => {
  const m = new GcModel();
  const a = collector(new ModelGcStore(m), "a");
  const b = collector(new ModelGcStore(m), "b");
  ok(await a.holdLease());
  equal(await b.holdLease(), false);
  m.clock += 5000;
  ok(await a.holdLease(), "renewed");
  equal(await b.holdLease(), false);
  // a stops renewing: b takes over once the lease is past its time plus the clock margin.
  m.clock += 15_000 + CLOCK_MARGIN_MS - 1;
  equal(await b.holdLease(), false);
  m.clock += 1;
  ok(await b.holdLease());
  equal(await a.holdLease(), false, "a sees b's lease");
});

Deno.test("the lease: two writes accepted for one revision (nats-server < 2.9.21): the first wins", async () => {
  const m = new GcModel();
  // Both writes pass the revision check, as on a clustered stream before 2.9.21.
  const buggy = () =>
    new (class extends ModelGcStore {
      override writeLease(value: Parameters<GcStore["writeLease"]>[0]) {
        const seq = ++m.seq;
        m.lease.push({ seq, storedAt: m.clock, bytes: encodeLease(value) });
        return Promise.resolve(seq);
      }
    })(m);
  const a = collector(buggy(), "a");
  const b = collector(buggy(), "b");
  const [wa, wb] = await Promise.all([a.holdLease(), b.holdLease()]);
  equal(Number(wa) + Number(wb), 1, `a ${wa}, b ${wb}`);
});

Deno.test("the lease: a garbage or oversized lease is nobody's", async () => {
  for (const bytes of [new TextEncoder().encode("{not json"), new Uint8Array(512 * 1024)]) {
    const m = new GcModel();
    m.lease.push({ seq: ++m.seq, storedAt: m.clock, bytes });
    ok(await collector(new ModelGcStore(m)).holdLease());
  }
  // A well-formed foreign lease naming a huge time is believed for this node's lease time only.
  const m = new GcModel();
  m.lease.push({
    seq: ++m.seq,
    storedAt: m.clock,
    bytes: encodeLease({ node: "mallory", nonce: "x", ttlMs: 10 ** 12 }),
  });
  const c = collector(new ModelGcStore(m));
  equal(await c.holdLease(), false);
  m.clock += 15_000 + CLOCK_MARGIN_MS;
  ok(await c.holdLease());
});

Deno.test("a commit waits for a deletion decided before its intent, not for later ones", async () => {
  const m = oldObjects(2);
  const store = new ModelGcStore(m);
  const before = await store.putIntent("delete", sha(1), "c1.x", {
    node: "c1",
    ttlMs: DELETE_INTENT_TTL_MS,
  });
  // Each of the keeper's polls sleeps a macrotask here, moving the model's clock.
  const slow = new (class extends ModelGcStore {
    override async sleep(ms: number): Promise<void> {
      m.clock += ms;
      await new Promise((r) => setTimeout(r, 0));
    }
  })(m);
  const keeper = new IntentKeeper(slow, "n1", { renew: false });
  const start = m.clock;
  let done = false;
  const begun = keeper.begin([sha(1)]).then((r) => (done = true, r));
  while (m.clock < start + 3000) await new Promise((r) => setTimeout(r, 0));
  equal(done, false, "still waiting for the deletion decided before it");
  m.intents.delete(`delete.${sha(1)}.c1.x`);
  const release = await begun;
  ok(before > 0);
  // A delete intent stored after the commit intent does not hold it up.
  await store.putIntent("delete", sha(0), "c1.y", { node: "c1", ttlMs: DELETE_INTENT_TTL_MS });
  await (await keeper.begin([sha(0)]))();
  await release();
  equal([...m.intents.keys()].filter((k) => k.startsWith("commit.")).length, 0);
  // An unreadable delete intent is nobody's: no wait.
  m.intents.set(`delete.${sha(1)}.m.z`, {
    key: `delete.${sha(1)}.m.z`,
    seq: ++m.seq,
    storedAt: m.clock,
    sha256: sha(1),
    value: undefined,
  });
  await (await keeper.begin([sha(1)]))();
  ok(encodeIntent({ node: "n", ttlMs: 1 }).length > 0);
});

/** How a node commits a blob in the property below. */
type Commit = "full" | "no-post-check" | "intent-without-wait" | "none";

/**
 * A node committing `sha` to session `key`, as `Session.#publish` does: announce (or not), put
 * the blob unless the store has it, write the record, put it again if it went, withdraw.
 */
async function commitAs(
  how: Commit,
  store: ModelGcStore,
  keeper: IntentKeeper,
  key: string,
  d: string,
): Promise<void> {
  let release: (() => Promise<void>) | undefined;
  if (how === "full" || how === "no-post-check") release = await keeper.begin([d]);
  if (how === "intent-without-wait") {
    await store.putIntent("commit", d, "n.w", { node: "n", ttlMs: 60_000 });
    release = () => store.removeIntent("commit", d, "n.w");
  }
  if (!(await store.hasObject(d))) await store.putObject(d);
  await store.writeRecord(key, (cur) => [...new Set([...cur, d])]);
  if (how === "full" && !(await store.hasObject(d))) await store.putObject(d);
  await release?.();
}

// Each actor starts after a number of steps of its own: picking uniformly among pending steps,
// the scheduler would otherwise finish a short actor long before a long one gets far.
const delay = fc.nat({ max: 40 });
const scenario = fc.record({
  commits: fc.array(fc.record({ key: fc.constantFrom("k0", "k1"), d: fc.nat(2), delay }), {
    minLength: 1,
    maxLength: 3,
  }),
  removals: fc.array(fc.record({ key: fc.constantFrom("k0", "k1"), d: fc.nat(2), delay }), {
    maxLength: 2,
  }),
  collectors: fc.array(fc.record({ passes: fc.integer({ min: 1, max: 2 }), delay }), {
    minLength: 1,
    maxLength: 2,
  }),
});

function property(how: Commit) {
  return fc.asyncProperty(fc.scheduler(), scenario, async (s, sc) => {
    const m = oldObjects(3);
    // Each call takes effect at one point the scheduler picks and answers at another.
    const step: Step = async (fn) => {
      await s.schedule(Promise.resolve(), "effect");
      const r = fn();
      await s.schedule(Promise.resolve(), "answer");
      return r;
    };
    const actors: Promise<void>[] = [];
    const after = async (steps: number, fn: () => Promise<void>) => {
      for (let i = 0; i < steps; i++) await s.schedule(Promise.resolve(), "idle");
      await fn();
    };
    sc.commits.forEach((c, i) => {
      const store = new ModelGcStore(m, step);
      const keeper = new IntentKeeper(store, `n${i}`, { renew: false });
      actors.push(after(c.delay, () => commitAs(how, store, keeper, c.key, sha(c.d))));
    });
    for (const r of sc.removals) {
      const store = new ModelGcStore(m, step);
      actors.push(
        after(r.delay, () => store.writeRecord(r.key, (cur) => cur.filter((x) => x !== sha(r.d)))),
      );
    }
    sc.collectors.forEach(({ passes, delay }, i) => {
      // A lease of its own each: both collectors run, as the CAS bug can let them.
      const c = collector(new ModelGcStore(m, step, true), `c${i}`);
      actors.push(after(delay, async () => {
        for (let p = 0; p < passes; p++) if (await c.holdLease()) await c.pass();
      }));
    });
    const all = Promise.all(actors);
    await s.waitIdle();
    await all;
    for (const [key, digests] of m.latest()) {
      for (const d of digests) {
        ok(m.objects.has(d), `${key} names ${d.slice(-1)}, deleted (${m.deletions})`);
      }
    }
    equal([...m.intents.keys()].length, 0, "every intent withdrawn");
  });
}

Deno.test("property: whatever the interleaving, every blob a record names is in the store", async () => {
  await fc.assert(property("full"), { numRuns: 2000 });
  // The store-and-load handshake alone is enough on a linearizable store; the check after the
  // record only covers reads that were not.
  await fc.assert(property("no-post-check"), { numRuns: 2000 });
});

Deno.test("property: it fails for a commit without intents, or with one but without the wait", async () => {
  for (const how of ["none", "intent-without-wait"] as const) {
    const out = await fc.check(property(how), { numRuns: 1000 });
    ok(out.failed, `${how}: no interleaving lost a blob in ${out.numRuns} runs`);
  }
});
