// The direct Run path's request reader over arbitrary bytes: whatever the bytes and however they
// are split, it ends with one message or one error (Connect's codes), keeps no message over its
// cap, and reads every split alike.
import { deepEqual, equal, ok } from "node:assert/strict";
import fc from "fast-check";
import { Code } from "@connectrpc/connect";
import { EnvelopeReader } from "./_run_direct.ts";

function read(chunks: Uint8Array[], max: number): { message?: number[]; code?: Code } {
  const r = new EnvelopeReader(max);
  for (const c of chunks) r.push(c);
  r.end();
  if (r.error) return { code: r.error.code };
  return r.message ? { message: [...r.message] } : {};
}

function envelope(message: Uint8Array, flags = 0): Uint8Array {
  const out = new Uint8Array(5 + message.length);
  out[0] = flags;
  new DataView(out.buffer).setUint32(1, message.length);
  out.set(message, 5);
  return out;
}

Deno.test("EnvelopeReader: one message whole, split anywhere", () => {
  const msg = new Uint8Array([1, 2, 3, 4, 5, 6, 7]);
  const env = envelope(msg);
  for (let i = 0; i <= env.length; i++) {
    deepEqual(read([env.subarray(0, i), env.subarray(i)], 64), { message: [...msg] });
  }
  deepEqual(read([envelope(new Uint8Array())], 64), { message: [] });
});

Deno.test("EnvelopeReader: Connect's errors for what is wrong", () => {
  const env = envelope(new Uint8Array([1, 2, 3]));
  deepEqual(read([], 64), {});
  deepEqual(read([env.subarray(0, 6)], 64), { code: Code.InvalidArgument });
  deepEqual(read([env, env], 64), { code: Code.Unimplemented });
  deepEqual(read([envelope(new Uint8Array([1]), 1)], 64), { code: Code.Internal });
  deepEqual(read([envelope(new Uint8Array(65))], 64), { code: Code.ResourceExhausted });
  // A forged length is refused at its header, before a byte of it is kept.
  const r = new EnvelopeReader(64);
  r.push(new Uint8Array([0, 0xff, 0xff, 0xff, 0xff]));
  equal(r.error?.code, Code.ResourceExhausted);
  ok(r.error?.rawMessage.includes("4294967295 is larger than configured readMaxBytes 64"));
});

Deno.test("EnvelopeReader: arbitrary bytes in arbitrary pieces end in one outcome, capped", () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ maxLength: 300 }),
      fc.array(fc.nat({ max: 300 }), { maxLength: 8 }),
      fc.integer({ min: 0, max: 64 }),
      (bytes, cuts, max) => {
        const points = [...new Set(cuts.map((c) => Math.min(c, bytes.length)))].sort((a, b) =>
          a - b
        );
        const pieces: Uint8Array[] = [];
        let prev = 0;
        for (const p of points) {
          pieces.push(bytes.subarray(prev, p));
          prev = p;
        }
        pieces.push(bytes.subarray(prev));
        const whole = read([bytes], max);
        deepEqual(read(pieces, max), whole);
        if (whole.message) ok(whole.message.length <= max);
      },
    ),
  );
});
