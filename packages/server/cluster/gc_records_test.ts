// Copyright 2026 the Valise authors. Apache-2.0 license.
// The blob GC's readers of what anyone holding NATS credentials can write: they never throw,
// cap what they read, and err towards keeping blobs (records, commit intents) or towards
// running GC (the lease, delete intents).
import { deepEqual, equal, ok } from "node:assert/strict";
import fc from "fast-check";
import {
  CLOCK_MARGIN_MS,
  decodeIntent,
  decodeLease,
  encodeIntent,
  encodeLease,
  intentKey,
  intentLiveUntil,
  leaseState,
  MAX_DELETE_INTENT_TTL_MS,
  MAX_INTENT_TTL_MS,
  objectOf,
  recordDigests,
} from "./gc_records.ts";

const enc = new TextEncoder();
const a = "a".repeat(64);
const b = "b".repeat(64);

Deno.test("recordDigests: a live record's artifacts, none for a closed one", () => {
  const record = {
    v: 1,
    userId: "ada",
    artifacts: [{ name: "pyfiles/x.py", sha256: a }, { name: "files/y", sha256: b }],
  };
  deepEqual(recordDigests(enc.encode(JSON.stringify(record))), [a, b]);
  deepEqual(recordDigests(enc.encode(JSON.stringify({ ...record, closed: true }))), []);
});

Deno.test("recordDigests: what it cannot read keeps every digest in it", () => {
  // Not JSON: every sha256-looking run counts.
  deepEqual(recordDigests(enc.encode(`{"artifacts":[{"sha256":"${a}"}, garbage ${b}`)), [a, b]);
  // An entry without a digest: the whole record is read as text.
  const odd = { artifacts: [{ sha256: a }, { digest: b }] };
  deepEqual(recordDigests(enc.encode(JSON.stringify(odd))).sort(), [a, b]);
  // A "closed" flag in a record that is not JSON is not believed.
  deepEqual(recordDigests(enc.encode(`closed: true, ${a}`)), [a]);
  // Longer hex runs are not digests.
  deepEqual(recordDigests(enc.encode("0".repeat(65))), []);
});

Deno.test("property: the readers never throw on arbitrary bytes", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 5000 }), fc.string(), (bytes, s) => {
      for (const x of [bytes, enc.encode(s)]) {
        recordDigests(x);
        decodeIntent(x);
        decodeLease(x);
        objectOf(x, 0);
        leaseState({ seq: 1, storedAt: 0, bytes: x }, { node: "n", nonce: "x" }, 0, 15_000);
      }
    }),
  );
});

Deno.test("property: a record's digests are found however it is mangled", () => {
  fc.assert(
    fc.property(
      fc.array(fc.stringMatching(/^[0-9a-f]{64}$/), { maxLength: 5 }),
      fc.string({ maxLength: 40 }),
      (digests, noise) => {
        const json = JSON.stringify({ v: 1, artifacts: digests.map((sha256) => ({ sha256 })) });
        // Valid, cut short, or with noise around it: never fewer digests than it holds.
        for (const text of [json, json.slice(0, -1), ` ${noise}${json}`]) {
          const found = new Set(recordDigests(enc.encode(text)));
          for (const d of digests) ok(found.has(d), `${d} in ${text}`);
        }
      },
    ),
  );
});

Deno.test("intents: decoded with caps; an unreadable commit intent keeps, a delete intent never waits", () => {
  const v = { node: "v1", ttlMs: 60_000 };
  deepEqual(decodeIntent(encodeIntent(v)), v);
  equal(decodeIntent(enc.encode(JSON.stringify({ v: 1, node: "x", ttlMs: -1 }))), undefined);
  equal(
    decodeIntent(enc.encode(JSON.stringify({ v: 1, node: "x".repeat(5000), ttlMs: 1 }))),
    undefined,
  );
  equal(decodeIntent(new Uint8Array(1024 * 1024)), undefined);
  equal(intentLiveUntil("commit", 1000, v), 1000 + 60_000 + CLOCK_MARGIN_MS);
  equal(intentLiveUntil("commit", 1000, undefined), 1000 + MAX_INTENT_TTL_MS + CLOCK_MARGIN_MS);
  equal(
    intentLiveUntil("commit", 1000, { node: "m", ttlMs: 10 ** 15 }),
    1000 + MAX_INTENT_TTL_MS + CLOCK_MARGIN_MS,
  );
  equal(intentLiveUntil("delete", 1000, undefined), undefined);
  equal(
    intentLiveUntil("delete", 1000, { node: "m", ttlMs: 10 ** 15 }),
    1000 + MAX_DELETE_INTENT_TTL_MS + CLOCK_MARGIN_MS,
  );
  equal(intentKey("commit", a, "v1.n"), `i.${a}.v1.n`);
  equal(intentKey("delete", a, "v1.n"), `d.${a}.v1.n`);
});

Deno.test("leaseState: mine, held, free; capped by this node's lease time", () => {
  const me = { node: "v1", nonce: "n1" };
  const rec = (node: string, nonce: string, ttlMs: number, storedAt = 0) => ({
    seq: 1,
    storedAt,
    bytes: encodeLease({ node, nonce, ttlMs }),
  });
  equal(leaseState(undefined, me, 0, 15_000), "free");
  equal(leaseState({ seq: 1, storedAt: 0, bytes: undefined }, me, 0, 15_000), "free");
  equal(leaseState(rec("v1", "n1", 15_000), me, 1000, 15_000), "mine");
  equal(leaseState(rec("v1", "old", 15_000), me, 1000, 15_000), "held", "an earlier process");
  equal(leaseState(rec("v2", "x", 15_000), me, 15_000 + CLOCK_MARGIN_MS - 1, 15_000), "held");
  equal(leaseState(rec("v2", "x", 15_000), me, 15_000 + CLOCK_MARGIN_MS, 15_000), "free");
  equal(leaseState(rec("v2", "x", 10 ** 12), me, 15_000 + CLOCK_MARGIN_MS, 15_000), "free");
  // The holder gives up before the others may take over.
  equal(leaseState(rec("v1", "n1", 60_000), me, 60_000 - CLOCK_MARGIN_MS / 2, 60_000), "free");
  equal(decodeLease(encodeLease({ node: "v", nonce: "n", ttlMs: 1 }))?.node, "v");
});

Deno.test("objectOf: only live objects named by a sha256, under their own subject", () => {
  const meta = (x: object) => enc.encode(JSON.stringify(x));
  deepEqual(objectOf(meta({ name: a, size: 3 }), 7, a), { sha256: a, size: 3, storedAt: 7 });
  equal(objectOf(meta({ name: a, size: 0, deleted: true }), 7), undefined);
  equal(objectOf(meta({ name: "env.tar.gz", size: 3 }), 7), undefined, "not Valise's");
  equal(objectOf(meta({ name: a, size: 3 }), 7, b), undefined, "under another name");
  equal(objectOf(meta({ name: a, size: -1 }), 7), undefined);
  equal(objectOf(new Uint8Array(100 * 1024), 7), undefined);
});
