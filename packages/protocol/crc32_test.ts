// Copyright 2026 the Valise authors. Apache-2.0 license.
import { equal } from "node:assert/strict";
import fc from "fast-check";
import { assertCrc32Works, crc32 } from "./crc32.ts";

// A table-driven CRC-32 written from the polynomial, independent of zlib.
const TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function reference(data: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of data) c = TABLE[(c ^ b) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

Deno.test("crc32() gives the values Spark and PySpark compute", () => {
  equal(crc32(new TextEncoder().encode("hello")), 907060870);
  equal(crc32(new Uint8Array(0)), 0);
  assertCrc32Works();
});

Deno.test("crc32() matches a reference implementation and continues running CRCs", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 4096 }), fc.uint8Array({ maxLength: 512 }), (a, b) => {
      equal(crc32(a), reference(a));
      const joined = new Uint8Array([...a, ...b]);
      equal(crc32(b, crc32(a)), reference(joined));
      return crc32(a) >= 0;
    }),
  );
});
