// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal } from "node:assert/strict";
import fc from "fast-check";
import { grpcEnvelope, http2ErrorName } from "./grpc_wire.ts";

Deno.test("grpcEnvelope: flags 0, the length big endian, then the message", () => {
  fc.assert(fc.property(fc.uint8Array({ maxLength: 70_000 }), (m) => {
    const e = grpcEnvelope(m);
    equal(e[0], 0);
    equal(new DataView(e.buffer).getUint32(1), m.length);
    deepEqual(e.subarray(5), m);
  }));
});

Deno.test("http2ErrorName: RFC 9113's names, nothing for an undefined code", () => {
  equal(http2ErrorName(0x8), "CANCEL");
  equal(http2ErrorName(0xb), "ENHANCE_YOUR_CALM");
  equal(http2ErrorName(0xe), undefined);
  equal(http2ErrorName(-1), undefined);
});
