// Copyright 2026 the Valise authors. Apache-2.0 license.
import { deepEqual, equal, throws } from "node:assert/strict";
import fc from "fast-check";
import { StdinFeed } from "./_stdin_feed.ts";

Deno.test("StdinFeed hands over every chunk in order, holding at most one, then ends", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.uint8Array({ maxLength: 64 }), { maxLength: 20 }),
      async (chunks) => {
        const feed = new StdinFeed();
        let waiting = 0;
        let most = 0;
        const writer = (async () => {
          for (const c of chunks) {
            waiting++;
            most = Math.max(most, waiting);
            await feed.put(c);
            waiting--;
          }
          feed.end();
        })();
        const got: number[] = [];
        for await (const c of feed) got.push(...c);
        await writer;
        deepEqual(got, chunks.flatMap((c) => [...c]));
        equal(most <= 1, true);
      },
    ),
  );
});

Deno.test("StdinFeed.put waits until the chunk is taken; close() lets it go and drops it", async () => {
  const feed = new StdinFeed();
  let taken = false;
  const put = feed.put(Uint8Array.of(1)).then(() => taken = true);
  await Promise.resolve();
  equal(taken, false);
  throws(() => feed.put(Uint8Array.of(2)), RangeError);
  feed.close();
  await put;
  equal(taken, true);
  const left: Uint8Array[] = [];
  for await (const c of feed) left.push(c);
  deepEqual(left, []);
  // After close (the run is over) and after end, puts resolve at once: the bytes are dropped.
  await feed.put(Uint8Array.of(3));
  const ended = new StdinFeed();
  ended.end();
  await ended.put(Uint8Array.of(4));
});
