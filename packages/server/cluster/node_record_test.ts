import { deepEqual, equal, ok, throws } from "node:assert/strict";
import fc from "fast-check";
import {
  decodeNodeRecord,
  encodeNodeRecord,
  MAX_NODE_RECORD_BYTES,
  MembershipError,
  nodeIdProblem,
  type NodeRecord,
} from "./node_record.ts";

const enc = new TextEncoder();

const RECORD: NodeRecord = {
  nodeId: "v1",
  instance: "0b6f9d1e-4f3a-4a8e-9c55-2f9d8f0e7a10",
  host: "host-1.example",
  pid: 4242,
  version: "0.1.0",
  address: "10.0.0.1:15002",
  startedAt: 1_700_000_000_000,
  heartbeatAt: 1_700_000_005_000,
  ttlMs: 15_000,
  sessions: 3,
  blobBytes: 1024,
  treeBytes: 4096,
  inFlight: 1,
};

function refused(bytes: Uint8Array, key = "v1", why?: RegExp): void {
  throws(() => decodeNodeRecord(bytes, key), (e) => {
    ok(e instanceof MembershipError);
    equal(e.code, "NODE_RECORD_INVALID");
    if (why) ok(why.test(e.message), e.message);
    return true;
  });
}

function withField(field: string, value: unknown): Uint8Array {
  return enc.encode(JSON.stringify({ v: 1, ...RECORD, [field]: value }));
}

Deno.test("node record: encoded and decoded back unchanged; later fields ignored", () => {
  deepEqual(decodeNodeRecord(encodeNodeRecord(RECORD), "v1"), RECORD);
  const { address: _, ...noAddress } = RECORD;
  deepEqual(decodeNodeRecord(encodeNodeRecord(noAddress), "v1"), noAddress);
  deepEqual(decodeNodeRecord(withField("zone", "eu-1"), "v1"), RECORD);
  ok(encodeNodeRecord(RECORD).length < 600, "a record is a few hundred bytes");
});

Deno.test("node record: a record under another key, or naming a path, is refused", () => {
  refused(encodeNodeRecord(RECORD), "v2", /another node/);
  refused(encodeNodeRecord({ ...RECORD, nodeId: "../../etc/passwd" }), "../../etc/passwd");
  refused(encodeNodeRecord({ ...RECORD, nodeId: "a/b" }), "a/b", /key/);
  refused(encodeNodeRecord({ ...RECORD, nodeId: "../../etc" }), "v1", /node id/);
  refused(withField("address", "http://evil/x"), "v1", /address/);
  refused(withField("address", 'h:1"} 1\nvalise_x{a="'), "v1", /address/);
  refused(withField("host", "<script>"), "v1", /host/);
  refused(withField("version", "1\n# HELP"), "v1", /version/);
});

Deno.test("node record: oversized, not JSON, wrong shape or ranges are refused", () => {
  const big = enc.encode(
    JSON.stringify({ v: 1, ...RECORD, pad: "x".repeat(MAX_NODE_RECORD_BYTES) }),
  );
  refused(big, "v1", /bytes/);
  refused(new Uint8Array([0xff, 0xfe, 0x00]), "v1", /JSON/);
  refused(enc.encode("[1,2]"), "v1", /object/);
  refused(enc.encode("null"), "v1", /object/);
  refused(enc.encode(JSON.stringify({ ...RECORD, v: 2 })), "v1", /format/);
  refused(withField("sessions", "many"), "v1", /session/);
  refused(withField("sessions", -1), "v1", /session/);
  refused(withField("blobBytes", 2 ** 60), "v1", /blob/);
  refused(withField("inFlight", 1.5), "v1", /flight/);
  refused(withField("ttlMs", 100), "v1", /TTL/);
  refused(withField("ttlMs", 365 * 86_400_000), "v1", /TTL/);
  refused(withField("instance", "x"), "v1", /instance/);
  refused(withField("pid", -3), "v1", /pid/);
  refused(withField("startedAt", null), "v1", /start/);
});

Deno.test("node ids: the rule --node-id has, and a KV key's", () => {
  for (const id of ["v1", "node-a", "a.b.c", "A_9", "x".repeat(64)]) {
    equal(nodeIdProblem(id), undefined, id);
  }
  for (const id of ["", ".a", "a.", "a..b", "a/b", "../x", "a b", "*", ">", "x".repeat(65), "é"]) {
    ok(nodeIdProblem(id), id);
  }
});

Deno.test("node record: arbitrary bytes and objects are refused with MembershipError only", () => {
  const check = (bytes: Uint8Array, key: string) => {
    try {
      decodeNodeRecord(bytes, key);
    } catch (e) {
      if (!(e instanceof MembershipError)) throw e;
    }
  };
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 5000 }), fc.string(), (bytes, key) => check(bytes, key)),
    { numRuns: 500 },
  );
  fc.assert(
    fc.property(fc.object(), (o) => check(enc.encode(JSON.stringify({ v: 1, ...o })), "v1")),
    { numRuns: 500 },
  );
  // A valid record with one field replaced by anything decodes to that record or is refused.
  fc.assert(
    fc.property(
      fc.constantFrom(...Object.keys(RECORD)),
      fc.jsonValue(),
      (field, value) => {
        try {
          const r = decodeNodeRecord(withField(field, value), "v1");
          deepEqual(r, JSON.parse(JSON.stringify({ ...RECORD, [field]: value })));
        } catch (e) {
          if (!(e instanceof MembershipError)) throw e;
        }
      },
    ),
    { numRuns: 500 },
  );
});
