// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal, ok, throws } from "node:assert/strict";
import fc from "fast-check";
import { ByteQueue, FrameReader, FramingError, isFramingError, u32Frames } from "./framing.ts";
import { chunked, concat } from "./testdata/chunks.ts";

/** `u32 length | u8 type | payload`, as the Apply driver frames. */
function encode(type: number, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(5 + payload.length);
  new DataView(out.buffer).setUint32(0, 1 + payload.length);
  out[4] = type;
  out.set(payload, 5);
  return out;
}

const typed = () => u32Frames("test frame", 1, (b) => ({ type: b[0]!, payload: b.slice(1) }));

/**
 * Pushes every chunk, checking after each that no more than the cap is held; returns the
 * frames, or the error that ended the stream (anything but a FramingError fails the property).
 */
function drive<F>(reader: FrameReader<F>, chunks: Uint8Array[]): F[] | FramingError {
  const out: F[] = [];
  try {
    for (const c of chunks) {
      out.push(...reader.push(c));
      ok(
        reader.pending <= reader.maxFrameBytes,
        `holds ${reader.pending} > ${reader.maxFrameBytes}`,
      );
    }
    reader.end();
    return out;
  } catch (e) {
    if (!isFramingError(e)) throw e;
    return e;
  }
}

Deno.test("FrameReader gives back the frames it was given, however they are chunked", () => {
  fc.assert(
    fc.property(
      fc.array(fc.tuple(fc.nat(255), fc.uint8Array({ maxLength: 300 })), { maxLength: 20 }),
      fc.array(fc.nat(), { maxLength: 30 }),
      (frames, cuts) => {
        const bytes = concat(frames.map(([t, p]) => encode(t, p)));
        const got = drive(new FrameReader(typed(), { maxFrameBytes: 305 }), chunked(bytes, cuts));
        ok(Array.isArray(got), String(got));
        deepEqual(got.map((f) => [f.type, [...f.payload]]), frames.map(([t, p]) => [t, [...p]]));
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("FrameReader ends arbitrary bytes with frames or a FramingError, holding at most the cap", () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ maxLength: 2000 }),
      fc.array(fc.nat(), { maxLength: 30 }),
      fc.integer({ min: 5, max: 400 }),
      (bytes, cuts, cap) => {
        const got = drive(new FrameReader(typed(), { maxFrameBytes: cap }), chunked(bytes, cuts));
        if (Array.isArray(got)) {
          for (const f of got) ok(f.payload.length + 5 <= cap);
        } else {
          ok(["TOO_LARGE", "BAD_LENGTH", "TRUNCATED"].includes(got.code), got.message);
        }
      },
    ),
    { numRuns: 500 },
  );
});

Deno.test("FrameReader refuses adversarial lengths at the header, before buffering the frame", () => {
  fc.assert(
    fc.property(
      fc.oneof(
        fc.constantFrom(0, 0xffffffff, 0xfffffff0, 0x80000000, 2 ** 31 - 1),
        fc.integer({ min: 0, max: 0xffffffff }),
      ),
      fc.nat(200_000),
      (length, streamed) => {
        const reader = new FrameReader(typed(), { maxFrameBytes: 1024 });
        const head = new Uint8Array(5);
        new DataView(head.buffer).setUint32(0, length);
        head[4] = 2;
        // A worker that forges a header and then streams: every byte pushed is checked.
        const flood = new Uint8Array(4096).fill(120);
        const chunks = [head, ...Array.from({ length: streamed >> 12 }, () => flood)];
        const got = drive(reader, chunks);
        if (length < 1) ok(got instanceof FramingError && got.code === "BAD_LENGTH");
        else if (length + 4 > 1024) {
          ok(got instanceof FramingError && got.code === "TOO_LARGE", String(got));
          equal(got.limit, 1024);
          ok(got.message.includes(String(length + 4)), got.message);
        }
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("FrameReader fails for good after its first error", () => {
  const r = new FrameReader(typed(), { maxFrameBytes: 16 });
  throws(() => r.push(new Uint8Array([0, 0, 1, 0])), FramingError);
  throws(() => r.push(encode(1, new Uint8Array(2))), /larger than the limit of 16 bytes/);
  throws(() => r.end(), FramingError);
});

Deno.test("FrameReader stops at a last frame and ignores what follows", () => {
  const fmt = { ...typed(), last: (f: { type: number }) => f.type === 9 };
  const r = new FrameReader(fmt, { maxFrameBytes: 16 });
  const got = r.push(
    concat([
      encode(1, new Uint8Array(1)),
      encode(9, new Uint8Array()),
      encode(2, new Uint8Array()),
    ]),
  );
  deepEqual(got.map((f) => f.type), [1, 9]);
  ok(r.done);
  deepEqual(r.push(new Uint8Array([255, 255, 255, 255])), []);
  r.end();
});

Deno.test("ByteQueue refuses to hold more than its cap and hands bytes back in order", () => {
  fc.assert(
    fc.property(
      fc.array(fc.uint8Array({ maxLength: 50 }), { maxLength: 20 }),
      fc.array(fc.nat(60), { maxLength: 20 }),
      fc.nat(300),
      (chunks, takes, cap) => {
        const q = new ByteQueue(cap);
        const pushed: number[] = [];
        const taken: number[] = [];
        let t = 0;
        for (const c of chunks) {
          try {
            q.push(c);
            pushed.push(...c);
          } catch (e) {
            ok(e instanceof FramingError && e.code === "TOO_LARGE");
            ok(q.length + c.length > cap);
          }
          ok(q.length <= cap);
          ok(q.capacity <= cap, `allocated ${q.capacity} bytes, cap ${cap}`);
          const n = Math.min(takes[t++ % Math.max(1, takes.length)] ?? 0, q.length);
          deepEqual([...q.peek(n)], pushed.slice(taken.length, taken.length + n));
          taken.push(...q.take(n));
        }
        taken.push(...q.take(q.length));
        deepEqual(taken, pushed);
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("ByteQueue memory follows the bytes held, not the number of pieces", () => {
  const q = new ByteQueue(1 << 20);
  for (let i = 0; i < 100_000; i++) q.push(Uint8Array.of(i & 0xff));
  equal(q.length, 100_000);
  ok(q.capacity < 2 * 100_000 + 1024, `capacity ${q.capacity}`);
  const all = q.take(100_000);
  equal(all[99_999], 99_999 & 0xff);
});
