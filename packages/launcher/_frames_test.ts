// Copyright 2026 the Valise authors. Apache-2.0 license.
import assert from "node:assert/strict";
import { BOOTSTRAP_SOURCE } from "./_bootstrap.ts";
import { encodeFrame, encodeRunPayload, FrameDecoder } from "./_frames.ts";

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

Deno.test("encodeRunPayload() puts the JSON length, JSON, then stdin", () => {
  const p = encodeRunPayload({ a: 1 }, new Uint8Array([9, 9]));
  assert.equal(new DataView(p.buffer).getUint32(0), 7);
  assert.equal(new TextDecoder().decode(p.subarray(4, 11)), '{"a":1}');
  assert.deepEqual([...p.subarray(11)], [9, 9]);
});

Deno.test("BOOTSTRAP_SOURCE is Python 3.8 syntax", async () => {
  const out = await new Deno.Command("/usr/bin/python3", {
    args: ["-c", "import ast, sys; ast.parse(sys.stdin.read(), feature_version=(3, 8))"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const w = out.stdin.getWriter();
  await w.write(new TextEncoder().encode(BOOTSTRAP_SOURCE));
  await w.close();
  const r = await out.output();
  assert.ok(r.success, new TextDecoder().decode(r.stderr));
});
