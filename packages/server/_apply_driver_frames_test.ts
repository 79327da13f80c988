// Copyright 2026 the Valise authors. Apache-2.0 license.
// The driver frame reader against the generic capped frame reader it replaced: the same frames
// and the same failures for any bytes, however they are cut, and payloads 8-byte aligned.
import { deepEqual, equal, ok, throws } from "node:assert/strict";
import fc from "fast-check";
import { FrameReader, isFramingError, u32Frames } from "@valise/protocol";
import { DriverFrameReader } from "./_apply_driver.ts";

const REFERENCE = u32Frames("driver frame", 1, (body) => ({
  type: body[0]!,
  payload: body.slice(1),
}));

type Seen = { frames: { type: number; payload: number[] }[]; error: string | undefined };

function run(
  r: { push(c: Uint8Array): { type: number; payload: Uint8Array }[]; end(): void },
  cuts: Uint8Array[],
) {
  const seen: Seen = { frames: [], error: undefined };
  try {
    for (const c of cuts) {
      for (const f of r.push(c)) seen.frames.push({ type: f.type, payload: [...f.payload] });
    }
    r.end();
  } catch (e) {
    ok(isFramingError(e), String(e));
    seen.error = `${e.code}: ${e.message}`;
  }
  return seen;
}

function cut(bytes: Uint8Array, at: number[]): Uint8Array[] {
  const points = [...new Set(at.map((a) => a % (bytes.length + 1)))].sort((a, b) => a - b);
  const out: Uint8Array[] = [];
  let prev = 0;
  for (const p of [...points, bytes.length]) {
    out.push(bytes.subarray(prev, p));
    prev = p;
  }
  return out;
}

function frame(type: number, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(5 + payload.length);
  new DataView(out.buffer).setUint32(0, payload.length + 1);
  out[4] = type;
  out.set(payload, 5);
  return out;
}

const concat = (parts: Uint8Array[]) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) out.set(p, (off += p.length) - p.length);
  return out;
};

Deno.test("driver frames: the same frames and failures as the generic reader, any cuts (fast-check)", () => {
  const honest = fc.array(
    fc.tuple(fc.integer({ min: 0, max: 255 }), fc.uint8Array({ maxLength: 300 })).map(([t, p]) =>
      frame(t, p)
    ),
    { maxLength: 6 },
  ).map(concat);
  // Honest frames, then maybe garbage: lengths of 0, past the cap, or anything.
  const stream = fc.tuple(honest, fc.uint8Array({ maxLength: 40 })).map(([a, b]) => concat([a, b]));
  fc.assert(
    fc.property(stream, fc.array(fc.nat(), { maxLength: 8 }), (bytes, at) => {
      const max = 200;
      const mine = new DriverFrameReader(max);
      const ref = new FrameReader(REFERENCE, { maxFrameBytes: max });
      const a = run(mine, cut(bytes, at));
      const b = run(ref, cut(bytes, at));
      deepEqual(a, b);
      if (a.error === undefined) equal(mine.pending, ref.pending);
    }),
    { numRuns: 2000 },
  );
});

Deno.test("driver frames: a lying length fails as soon as it is read, before any payload", () => {
  const r = new DriverFrameReader(1024);
  const head = new Uint8Array([0xff, 0xff, 0xff, 0xf0]);
  throws(() => r.push(head), (e: unknown) => isFramingError(e) && e.code === "TOO_LARGE");
  // And for good.
  throws(() => r.push(frame(1, new Uint8Array(3))), (e: unknown) => isFramingError(e));
  throws(
    () => new DriverFrameReader(1024).push(new Uint8Array(5)),
    (e: unknown) => isFramingError(e) && e.code === "BAD_LENGTH",
  );
});

Deno.test("driver frames: every payload is its own buffer at offset 0 (8-byte aligned)", () => {
  const bytes = concat([frame(11, new Uint8Array(17).fill(1)), frame(11, new Uint8Array(9))]);
  const r = new DriverFrameReader();
  const got = [...r.push(bytes.subarray(0, 7)), ...r.push(bytes.subarray(7))];
  equal(got.length, 2);
  for (const f of got) {
    equal(f.payload.byteOffset, 0);
    equal(f.payload.buffer.byteLength, f.payload.length);
  }
});
