import { deepEqual, equal, ok } from "node:assert/strict";
import { encodeNodeRecord, type NodeRecord } from "./node_record.ts";
import { type NodeEntry, NodeView, type ViewEvent } from "./node_view.ts";

const RECORD: NodeRecord = {
  nodeId: "v1",
  instance: "0b6f9d1e-4f3a-4a8e-9c55-2f9d8f0e7a10",
  host: "host-1",
  pid: 4242,
  version: "0.1.0",
  startedAt: 1_700_000_000_000,
  heartbeatAt: 1_700_000_005_000,
  ttlMs: 3000,
  sessions: 0,
  blobBytes: 0,
  treeBytes: 0,
  inFlight: 0,
};
const SELF = "11111111-1111-4111-8111-111111111111";
const OTHER = "22222222-2222-4222-8222-222222222222";
const T0 = 1_800_000_000_000;

function rec(nodeId: string, more: Partial<NodeRecord> = {}): NodeRecord {
  return { ...RECORD, nodeId, instance: OTHER, ttlMs: 3000, ...more };
}

function put(r: NodeRecord, created = T0): NodeEntry {
  return { key: r.nodeId, value: encodeNodeRecord(r), operation: "PUT", created };
}

function kinds(events: ViewEvent[]): string[] {
  return events.map((e) => e.kind);
}

Deno.test("node view: nodes join, expire after their TTL, come back, and leave", () => {
  const v = new NodeView({ nodeId: "v1", instance: SELF });
  deepEqual(kinds(v.apply(put(rec("v1", { instance: SELF })), T0, false)), ["joined"]);
  deepEqual(kinds(v.apply(put(rec("v2")), T0, false)), ["joined"]);
  deepEqual(v.nodes(T0).map((n) => [n.nodeId, n.live, n.self]), [["v1", true, true], [
    "v2",
    true,
    false,
  ]]);
  equal(v.nextDeadline(), T0 + 3000);
  deepEqual(v.sweep(T0 + 2999), []);
  // v1 beats, v2 does not.
  v.apply(put(rec("v1", { instance: SELF })), T0 + 2000, false);
  const expired = v.sweep(T0 + 3000);
  deepEqual(expired, [{ kind: "expired", nodeId: "v2", ageMs: 3000, ttlMs: 3000 }]);
  deepEqual(v.sweep(T0 + 3001), [], "expiry is reported once");
  deepEqual(v.nodes(T0 + 3000).map((n) => [n.nodeId, n.live, n.heartbeatAgeMs]), [
    ["v1", true, 1000],
    ["v2", false, 3000],
  ]);
  deepEqual(kinds(v.apply(put(rec("v2")), T0 + 4000, false)), ["back"]);
  deepEqual(
    v.apply({ key: "v2", value: new Uint8Array(), operation: "DEL", created: 0 }, T0, false),
    [
      { kind: "left", nodeId: "v2" },
    ],
  );
  deepEqual(v.nodes(T0 + 4000).map((n) => n.nodeId), ["v1"]);
  deepEqual(
    v.apply({ key: "zz", value: new Uint8Array(), operation: "PURGE", created: 0 }, T0, false),
    [],
  );
});

Deno.test("node view: an initial value's age is when it was stored; expired ones are forgotten", () => {
  const v = new NodeView({ nodeId: "v1", instance: SELF, forgetAfterMs: 60_000 });
  const [joined] = v.apply(put(rec("old"), T0 - 10_000), T0, true);
  deepEqual(joined && joined.kind === "joined" ? joined.live : undefined, false);
  // A server clock ahead of this one never makes a record younger than now.
  v.apply(put(rec("ahead"), T0 + 60_000), T0, true);
  equal(v.nodes(T0).find((n) => n.nodeId === "ahead")?.heartbeatAgeMs, 0);
  equal(v.nextDeadline(), T0 + 3000);
  deepEqual(kinds(v.sweep(T0 + 3000)), ["expired"]);
  deepEqual(v.sweep(T0 - 10_000 + 3000 + 60_000).map((e) => e.kind), ["forgotten"]);
  deepEqual(v.nodes(T0 + 60_000).map((n) => n.nodeId), ["ahead"]);
});

Deno.test("node view: a record's TTL is capped by the bucket's age limit", () => {
  const v = new NodeView({ nodeId: "v1", instance: SELF });
  v.maxTtlMs = 5000;
  v.apply(put(rec("ghost", { ttlMs: 30 * 60_000 })), T0, false);
  equal(v.nodes(T0 + 5000)[0]?.live, false);
  equal(v.nodes(T0)[0]?.ttlMs, 5000);
});

Deno.test("node view: hostile records are refused, counted, logged once per key", () => {
  const v = new NodeView({ nodeId: "v1", instance: SELF, maxLoggedKeys: 2 });
  v.apply(put(rec("v2")), T0, false);
  const bad = (key: string, value: Uint8Array): ViewEvent[] =>
    v.apply({ key, value, operation: "PUT", created: T0 }, T0, false);
  const first = bad("v2", new TextEncoder().encode("{}"));
  equal(first.length, 1);
  equal(first[0]!.kind, "refused");
  ok(first[0]!.kind === "refused" && first[0]!.log);
  const again = bad("v2", new Uint8Array(10_000));
  ok(again[0]!.kind === "refused" && !again[0]!.log, "a key's second refusal is not logged");
  equal(v.nodes(T0)[0]?.record.nodeId, "v2", "the last good record is kept");
  bad("a/b", encodeNodeRecord(rec("a/b")));
  const third = bad("etc", encodeNodeRecord(rec("../etc")));
  ok(third[0]!.kind === "refused" && !third[0]!.log, "past maxLoggedKeys, only counted");
  equal(v.refused, 4);
  deepEqual(v.nodes(T0).map((n) => n.nodeId), ["v2"]);
});

Deno.test("node view: bounded; a full view replaces the longest-expired node or refuses", () => {
  const v = new NodeView({ nodeId: "v1", instance: SELF, maxNodes: 2 });
  v.apply(put(rec("a")), T0, false);
  v.apply(put(rec("b")), T0 + 1000, false);
  const full = v.apply(put(rec("c")), T0 + 1000, false);
  ok(full[0]?.kind === "refused" && /no room/.test(full[0].reason));
  deepEqual(kinds(v.apply(put(rec("c")), T0 + 3500, false)), ["joined"]);
  deepEqual(v.nodes(T0 + 3500).map((n) => n.nodeId), ["b", "c"]);
});

Deno.test("node view: a record under this node's id from another process is a conflict", () => {
  const v = new NodeView({ nodeId: "v1", instance: SELF });
  v.apply(put(rec("v1", { instance: SELF })), T0, false);
  const ev = v.apply(put(rec("v1", { instance: OTHER, host: "elsewhere" })), T0 + 1, false);
  deepEqual(kinds(ev), ["conflict"]);
  deepEqual(kinds(v.apply(put(rec("v1", { instance: OTHER })), T0 + 2, false)), []);
  equal(v.conflicts, 2);
  equal(v.nodes(T0 + 2)[0]?.self, false, "the view shows the last record under the key");
});
