// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal, rejects } from "node:assert/strict";
import { join } from "node:path";
import { WRITE_BEHIND_DEPTH, WRITE_BUFFER_BYTES, WriteBehind } from "./_write_behind.ts";

Deno.test("WriteBehind writes every buffer in order, reusing at most depth + 1 buffers", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "f");
    const w = new WriteBehind(await Deno.open(path, { write: true, createNew: true }));
    const seen = new Set<Uint8Array>();
    const want: number[] = [];
    for (let i = 0; i < 20; i++) {
      const b = w.buffer();
      seen.add(b);
      const n = i === 19 ? 100 : WRITE_BUFFER_BYTES;
      b.fill(i, 0, n);
      for (let k = 0; k < 3; k++) want.push(i);
      await w.push(b, n);
    }
    await w.close();
    const got = await Deno.readFile(path);
    equal(got.length, 19 * WRITE_BUFFER_BYTES + 100);
    // Sample the start, middle and end of each buffer's bytes.
    const sampled: number[] = [];
    for (let i = 0; i < 20; i++) {
      const at = i * WRITE_BUFFER_BYTES;
      const n = i === 19 ? 100 : WRITE_BUFFER_BYTES;
      sampled.push(got[at]!, got[at + (n >> 1)]!, got[at + n - 1]!);
    }
    deepEqual(sampled, want);
    equal(seen.size <= WRITE_BEHIND_DEPTH + 1, true, `${seen.size} buffers`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("WriteBehind reports a failed write at the next push or at close, and skips later writes", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "f");
    await Deno.writeFile(path, new Uint8Array(0));
    // Opened for reading only: every write fails.
    const w = new WriteBehind(await Deno.open(path, { read: true }));
    await rejects(async () => {
      for (let i = 0; i < 2 * WRITE_BEHIND_DEPTH; i++) await w.push(w.buffer(), 10);
    });
    await rejects(() => w.close());
    equal((await Deno.stat(path)).size, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("WriteBehind.abort() closes the file after the write in progress and refuses more", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "f");
    const w = new WriteBehind(await Deno.open(path, { write: true, createNew: true }));
    await w.push(w.buffer().fill(1), 1000);
    await w.abort();
    await rejects(() => w.push(w.buffer(), 10), /aborted/);
    const size = (await Deno.stat(path)).size;
    equal(size === 0 || size === 1000, true, `${size} bytes`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
