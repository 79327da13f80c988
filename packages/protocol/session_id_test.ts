// Copyright 2026 the Valise authors. Apache-2.0 license.
import { equal } from "node:assert/strict";
import fc from "fast-check";
import { isSparkSessionId } from "./session_id.ts";

Deno.test("isSparkSessionId() accepts what java.util.UUID.fromString accepts", () => {
  equal(isSparkSessionId(crypto.randomUUID()), true);
  equal(isSparkSessionId("1-2-3-4-5"), true);
  equal(isSparkSessionId("0B3F6C2E-7E61-4D0E-8A55-3F8F5F0C9F10"), true);
});

Deno.test("isSparkSessionId() refuses everything else", () => {
  for (
    const bad of ["", "abc", "1-2-3-4", "1-2-3-4-5-6", "g-2-3-4-5", "1--3-4-5", "../x-1-2-3-4"]
  ) {
    equal(isSparkSessionId(bad), false, bad);
  }
  equal(isSparkSessionId("123456789-2-3-4-5"), false);
  fc.assert(fc.property(fc.uuid(), (u) => isSparkSessionId(u)));
  // Accepted ids are safe as a directory name.
  fc.assert(fc.property(fc.string(), (s) => !isSparkSessionId(s) || /^[0-9a-fA-F-]+$/.test(s)));
});
