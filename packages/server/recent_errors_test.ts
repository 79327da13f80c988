import { deepEqual, equal, throws } from "node:assert/strict";
import { RecentErrors } from "./recent_errors.ts";

Deno.test("RecentErrors keeps the newest, oldest first, bounded in count and length", () => {
  const r = new RecentErrors(3);
  for (let i = 0; i < 7; i++) r.record("s/M", "Internal", `e${i}`, i);
  deepEqual(r.list().map((e) => e.message), ["e4", "e5", "e6"]);
  equal(r.total, 7);
  r.record("s/M", "Internal", "x".repeat(10_000));
  equal(r.list().at(-1)!.message.length, 500);
  equal(r.list().length, 3);
  throws(() => new RecentErrors(0), RangeError);
});
