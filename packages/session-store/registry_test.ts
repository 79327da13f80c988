// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal, ok, throws } from "node:assert/strict";
import fc from "fast-check";
import {
  decodeSharedSession,
  encodeSharedSession,
  MAX_SHARED_RECORD_BYTES,
  mergeAdds,
  mergeConfig,
  type SharedArtifact,
  type SharedSession,
} from "./registry.ts";
import { isSessionError } from "./errors.ts";

const limits = { maxArtifactBytes: 2 ** 34, maxArtifacts: 10_000 };
const sid = "6d3e1c0a-4b7f-4a51-9c1e-2f0a8b9d7e11";
const base: SharedSession = {
  userId: "ada",
  sessionId: sid,
  serverSideSessionId: "0b6f2f9e-8a0c-4c1d-b3e2-5f4a6c7d8e90",
  createdAt: 1,
  artifacts: [],
  config: {},
};

function art(name: string, sha = "a", addedAt = 0): SharedArtifact {
  return { name, sha256: sha.repeat(64).slice(0, 64), size: 1, addedAt };
}

Deno.test("a record a node wrote reads back the same", () => {
  const rec: SharedSession = {
    ...base,
    usedAt: 7,
    artifacts: [
      { ...art("archives/env.tar.gz#environment"), treeBytes: 3000 },
      art("pyfiles/x.py", "b", 2),
    ],
    config: { "spark.sql.execution.pyspark.python": "environment/bin/python" },
  };
  deepEqual(decodeSharedSession(encodeSharedSession(rec), limits, rec), rec);
});

Deno.test("any bytes decode to a checked record or CLUSTER_DATA_INVALID, nothing else", () => {
  const good = new TextDecoder().decode(
    encodeSharedSession({ ...base, artifacts: [art("files/f")] }),
  );
  fc.assert(
    fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 512 }),
        // Mutations of a valid record: one character replaced or cut short.
        fc.tuple(fc.nat(good.length - 1), fc.string({ minLength: 1, maxLength: 1 })).map(([i, c]) =>
          new TextEncoder().encode(good.slice(0, i) + c + good.slice(i + 1))
        ),
        fc.nat(good.length).map((n) => new TextEncoder().encode(good.slice(0, n))),
      ),
      (bytes) => {
        try {
          const r = decodeSharedSession(bytes, limits);
          ok(/^[0-9a-f-]{36}$/.test(r.serverSideSessionId));
          for (const a of r.artifacts) ok(/^[0-9a-f]{64}$/.test(a.sha256));
        } catch (e) {
          ok(isSessionError(e) && e.errorClass === "CLUSTER_DATA_INVALID", String(e));
        }
      },
    ),
    { numRuns: 2000 },
  );
});

Deno.test("hostile records are refused, naming the problem", () => {
  const bad: [unknown, RegExp][] = [
    [{ ...base, artifacts: [art("files/../../etc/passwd")] }, /artifact name/],
    [{ ...base, artifacts: [art("forward_to_fs/etc/x")] }, /forward_to_fs/],
    [{ ...base, artifacts: [{ ...art("files/f"), size: 2 ** 40 }] }, /size/],
    [{ ...base, artifacts: [art("files/f"), art("files/f", "b")] }, /clashes/],
    [{ ...base, artifacts: [art("files/x"), art("pyfiles/x")] }, /clashes/],
    [{ ...base, config: { "spark.pythonWorkerEnv.PATH": "/tmp" } }, /config/],
    [{ ...base, config: { "spark.master": "local" } }, /config/],
    [{ ...base, sessionId: "x" }, /session id/],
    [{ ...base, closed: "yes" }, /closed/],
    [{ ...base, usedAt: -1 }, /time last used/],
    [{ ...base, usedAt: "now" }, /time last used/],
    [{ ...base, usedAt: 2 ** 60 }, /time last used/],
    [{ ...base, artifacts: [{ ...art("files/f"), treeBytes: -5 }] }, /tree bytes/],
    [{ ...base, artifacts: [{ ...art("files/f"), treeBytes: 1.5 }] }, /tree bytes/],
  ];
  for (const [rec, why] of bad) {
    const bytes = new TextEncoder().encode(JSON.stringify({ v: 1, ...(rec as object) }));
    throws(() => decodeSharedSession(bytes, limits), (e) => {
      ok(isSessionError(e) && e.errorClass === "CLUSTER_DATA_INVALID");
      ok(why.test((e as Error).message), (e as Error).message);
      return true;
    });
  }
  throws(
    () => decodeSharedSession(encodeSharedSession(base), limits, { userId: "eve", sessionId: sid }),
    /another session/,
  );
  throws(() => decodeSharedSession(new Uint8Array(MAX_SHARED_RECORD_BYTES + 1), limits));
});

Deno.test("a record too large for the registry is refused when written", () => {
  const many = Array.from({ length: 9000 }, (_, i) => art(`files/${"n".repeat(100)}${i}`));
  throws(() => encodeSharedSession({ ...base, artifacts: many }), (e) => {
    ok(isSessionError(e) && e.errorClass === "QUOTA_EXCEEDED");
    return true;
  });
});

Deno.test("adds from two nodes in any interleaving: every distinct one is kept", () => {
  fc.assert(
    fc.property(
      fc.uniqueArray(fc.stringMatching(/^[a-z]{1,6}$/), { minLength: 1, maxLength: 12 }),
      fc.array(fc.boolean(), { minLength: 12, maxLength: 12 }),
      (names, side) => {
        const adds = names.map((n, i) => art(`pyfiles/${n}.py`, "c", i));
        const fromA = adds.filter((_, i) => side[i]);
        const fromB = adds.filter((_, i) => !side[i]);
        // Each node's commit applied to whatever the other left, in both orders.
        const ab = mergeAdds(mergeAdds(base, fromA).next, fromB);
        const ba = mergeAdds(mergeAdds(base, fromB).next, fromA);
        equal(ab.refused.length + ba.refused.length, 0);
        deepEqual(
          ab.next.artifacts.map((a) => a.name).sort(),
          names.map((n) => `pyfiles/${n}.py`).sort(),
        );
        deepEqual(new Set(ab.next.artifacts), new Set(ba.next.artifacts));
      },
    ),
  );
});

Deno.test("the same name with other bytes: the one recorded first stays, the other is refused", () => {
  const first = mergeAdds(base, [art("files/a.txt", "1")]).next;
  const m = mergeAdds(first, [art("files/a.txt", "2"), art("files/b.txt", "3")]);
  deepEqual(m.next.artifacts.map((a) => a.sha256[0]), ["1", "3"]);
  equal(m.refused.length, 1);
  equal(m.refused[0]!.error.errorClass, "ARTIFACT_ALREADY_EXISTS");
  // A name taking another's place in the workers' directory is refused too.
  equal(mergeAdds(first, [art("pyfiles/a.txt", "4")]).refused.length, 1);
  // The same bytes again are no change.
  deepEqual(mergeAdds(first, [art("files/a.txt", "1")]).next, first);
});

Deno.test("config changes of two nodes to different keys are both kept", () => {
  const cur = { a: "1", b: "2", gone: "x" };
  deepEqual(mergeConfig({ ...cur, c: "other node" }, cur, { a: "9", b: "2" }), {
    a: "9",
    b: "2",
    c: "other node",
  });
});
