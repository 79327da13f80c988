// Copyright 2026 the Valise authors. Apache-2.0 license.
import assert from "node:assert/strict";
import fc from "fast-check";
import { FramingError, isFramingError } from "@valise/protocol";
import { OUTPUT_PIECE } from "./_bootstrap.ts";
import {
  encodeFrame,
  encodeRunPayload,
  type Frame,
  FrameDecoder,
  MAX_FRAME_BYTES,
} from "./_frames.ts";

Deno.test("FrameDecoder.push() reassembles frames split at any byte", () => {
  const frames = [
    encodeFrame(12, 1, new TextEncoder().encode("hello")),
    encodeFrame(14, 2),
    encodeFrame(13, 0xffffffff, new Uint8Array(100_000).fill(7)),
  ];
  const all = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
  let o = 0;
  for (const f of frames) {
    all.set(f, o);
    o += f.length;
  }
  for (const step of [1, 3, 9, 4096, all.length]) {
    const d = new FrameDecoder();
    const got = [];
    for (let i = 0; i < all.length; i += step) got.push(...d.push(all.subarray(i, i + step)));
    assert.deepEqual(got.map((f) => [f.type, f.id, f.payload.length]), [
      [12, 1, 5],
      [14, 2, 0],
      [13, 0xffffffff, 100_000],
    ]);
    assert.equal(new TextDecoder().decode(got[0]!.payload), "hello");
    assert.equal(d.pending, 0);
  }
});

Deno.test("FrameDecoder.push() rejects a frame shorter than its header", () => {
  assert.throws(() => new FrameDecoder().push(new Uint8Array([0, 0, 0, 1, 0])), SyntaxError);
});

/** Splits `bytes` at the given cut points (taken modulo its length). */
function chunked(bytes: Uint8Array, cuts: number[]): Uint8Array[] {
  const at = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  return [...at, bytes.length].map((c, i, all) => bytes.subarray(i ? all[i - 1] : 0, c));
}

function join(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) out.set(p, (o += p.length) - p.length);
  return out;
}

/** Pushes every chunk, checking what is held after each; the frames, or the framing error. */
function decodeAll(d: FrameDecoder, chunks: Uint8Array[]): Frame[] | FramingError {
  const got: Frame[] = [];
  try {
    for (const c of chunks) {
      got.push(...d.push(c));
      assert.ok(d.pending <= d.maxFrameBytes, `holds ${d.pending} bytes, cap ${d.maxFrameBytes}`);
    }
    d.end();
    return got;
  } catch (e) {
    if (!isFramingError(e)) throw e;
    return e;
  }
}

Deno.test("FrameDecoder gives back encoded frames however they are chunked", () => {
  fc.assert(
    fc.property(
      fc.array(
        fc.tuple(fc.nat(255), fc.nat(0xffffffff), fc.uint8Array({ maxLength: 400 })),
        { maxLength: 15 },
      ),
      fc.array(fc.nat(), { maxLength: 30 }),
      (frames, cuts) => {
        const bytes = join(frames.map(([t, id, p]) => encodeFrame(t, id, p)));
        const got = decodeAll(new FrameDecoder(409), chunked(bytes, cuts));
        assert.ok(Array.isArray(got), String(got));
        assert.deepEqual(
          got.map((f) => [f.type, f.id, [...f.payload]]),
          frames.map(([t, id, p]) => [t, id, [...p]]),
        );
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("FrameDecoder ends arbitrary and forged bytes with frames or a FramingError, within its cap", () => {
  fc.assert(
    fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 3000 }),
        // What a hostile fork server sends: a forged length, then a stream of bytes.
        fc.tuple(
          fc.oneof(fc.constantFrom(0, 4, 5, 0xfffffff0, 0xffffffff), fc.nat(0xffffffff)),
          fc.nat(30),
        )
          .map(([n, k]) => {
            const head = new Uint8Array(9);
            new DataView(head.buffer).setUint32(0, n);
            head[4] = 12;
            return join([head, new Uint8Array(k * 100).fill(120)]);
          }),
      ),
      fc.array(fc.nat(), { maxLength: 30 }),
      (bytes, cuts) => {
        const got = decodeAll(new FrameDecoder(1024), chunked(bytes, cuts));
        if (Array.isArray(got)) { for (const f of got) assert.ok(f.payload.length + 9 <= 1024); }
        else assert.ok(got instanceof FramingError, String(got));
      },
    ),
    { numRuns: 500 },
  );
});

Deno.test("FrameDecoder takes the largest frame the fork server sends, and refuses a forged 4 GiB one", () => {
  assert.equal(MAX_FRAME_BYTES, 9 + OUTPUT_PIECE);
  const d = new FrameDecoder();
  const [f] = d.push(encodeFrame(12, 1, new Uint8Array(OUTPUT_PIECE)));
  assert.equal(f?.payload.length, OUTPUT_PIECE);
  const head = encodeFrame(12, 1).subarray(0, 9);
  new DataView(head.buffer).setUint32(0, 0xfffffff0);
  assert.throws(() => d.push(head), (e) => {
    assert.ok(e instanceof FramingError && e.code === "TOO_LARGE", String(e));
    assert.equal(d.pending, 0);
    return true;
  });
});

Deno.test("encodeRunPayload() puts the JSON length, JSON, then stdin", () => {
  const p = encodeRunPayload({ a: 1 }, new Uint8Array([9, 9]));
  assert.equal(new DataView(p.buffer).getUint32(0), 7);
  assert.equal(new TextDecoder().decode(p.subarray(4, 11)), '{"a":1}');
  assert.deepEqual([...p.subarray(11)], [9, 9]);
});
