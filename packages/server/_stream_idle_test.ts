// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal, rejects } from "node:assert/strict";
import { idleLimited } from "./_stream_idle.ts";

class Idle extends Error {}

Deno.test("idleLimited() passes items through; the consumer's own time between items does not count", async () => {
  async function* source() {
    yield* [1, 2, 3];
  }
  const got: number[] = [];
  for await (const n of idleLimited(source(), 20, () => new Idle())) {
    got.push(n);
    // The consumer is slow (writing to disk, say): longer than the limit.
    await new Promise((r) => setTimeout(r, 60));
  }
  deepEqual(got, [1, 2, 3]);
});

Deno.test("idleLimited() fails with onIdle() when the peer goes quiet, and lets go of the source", async () => {
  let release!: () => void;
  let returned = false;
  const quiet: AsyncIterable<number> = {
    [Symbol.asyncIterator]() {
      let n = 0;
      return {
        next: () =>
          n++ === 0
            ? Promise.resolve({ value: 1, done: false })
            : new Promise((r) => (release = () => r({ value: 0, done: true }))),
        return: () => {
          returned = true;
          return Promise.resolve({ value: undefined, done: true });
        },
      };
    },
  };
  const got: number[] = [];
  await rejects(async () => {
    for await (const n of idleLimited(quiet, 20, () => new Idle("quiet"))) got.push(n);
  }, Idle);
  deepEqual(got, [1]);
  equal(returned, true);
  release();
});

Deno.test("idleLimited() with 0 waits forever", async () => {
  async function* source() {
    await new Promise((r) => setTimeout(r, 30));
    yield "late";
  }
  deepEqual(await Array.fromAsync(idleLimited(source(), 0, () => new Idle())), ["late"]);
});
