// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal } from "node:assert/strict";
import fc from "fast-check";
import { grpcEnvelope, GrpcEnvelopeReader, http2ErrorName } from "./grpc_wire.ts";

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

function split(bytes: Uint8Array, cuts: number[]): Uint8Array[] {
  const points = [...new Set(cuts.map((c) => Math.min(c, bytes.length)))].sort((a, b) => a - b);
  const pieces: Uint8Array[] = [];
  let prev = 0;
  for (const p of points) {
    pieces.push(bytes.subarray(prev, p));
    prev = p;
  }
  pieces.push(bytes.subarray(prev));
  return pieces;
}

function readAll(pieces: Uint8Array[], max: number): { messages: number[][]; fault?: unknown } {
  const r = new GrpcEnvelopeReader(max);
  const messages: number[][] = [];
  for (const p of pieces) r.push(p, (m) => messages.push([...m]));
  r.end();
  return r.fault ? { messages, fault: r.fault } : { messages };
}

Deno.test("GrpcEnvelopeReader: arbitrary bytes split anywhere read alike, nothing over the cap", () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ maxLength: 400 }),
      fc.array(fc.nat({ max: 400 }), { maxLength: 10 }),
      fc.integer({ min: 0, max: 64 }),
      (bytes, cuts, max) => {
        const whole = readAll([bytes], max);
        deepEqual(readAll(split(bytes, cuts), max), whole);
        for (const m of whole.messages) equal(m.length <= max, true);
      },
    ),
  );
});

Deno.test("GrpcEnvelopeReader: messages out as they went in; faults named", () => {
  fc.assert(
    fc.property(
      fc.array(fc.uint8Array({ maxLength: 50 }), { maxLength: 6 }),
      fc.array(fc.nat({ max: 400 }), { maxLength: 10 }),
      (messages, cuts) => {
        const bytes = new Uint8Array(messages.reduce((n, m) => n + 5 + m.length, 0));
        let at = 0;
        for (const m of messages) (bytes.set(grpcEnvelope(m), at), at += 5 + m.length);
        deepEqual(readAll(split(bytes, cuts), 50), { messages: messages.map((m) => [...m]) });
      },
    ),
  );
  deepEqual(readAll([new Uint8Array([0, 0xff, 0xff, 0xff, 0xff])], 64).fault, {
    kind: "too_large",
    length: 4294967295,
    max: 64,
  });
  deepEqual(readAll([new Uint8Array([1, 0, 0, 0, 1, 9])], 64).fault, { kind: "compressed" });
  deepEqual(readAll([new Uint8Array([0, 0, 0, 0, 2, 9])], 64).fault, { kind: "incomplete" });
  deepEqual(readAll([new Uint8Array([0, 0])], 64).fault, { kind: "incomplete" });
});

Deno.test("GrpcEnvelopeReader: a body of empty messages costs no array apiece", () => {
  // 13,107 empty messages in 64 KiB: each must not be a fresh array (a hostile body of them was
  // hundreds of MiB of the server's memory).
  const body = new Uint8Array(65_535);
  const reader = new GrpcEnvelopeReader(1024);
  const seen = new Set<Uint8Array>();
  let count = 0;
  reader.push(body, (m) => (count++, seen.add(m)));
  equal(count, 13_107);
  equal(seen.size, 1);
  equal([...seen][0]!.length, 0);
});
