// Copyright 2026 the Valise authors. Apache-2.0 license.
import { crc32 as zlibCrc32 } from "node:zlib";

/**
 * CRC-32 (ISO-HDLC, as `java.util.zip.CRC32` and Python's `zlib.crc32`) of `data`, unsigned.
 * Uses the runtime's native zlib.
 *
 * @example
 * ```ts
 * import { crc32 } from "@valise/protocol";
 * import { equal } from "node:assert/strict";
 * equal(crc32(new TextEncoder().encode("hello")), 907060870);
 * ```
 *
 * @param data The bytes.
 * @param previous The CRC of the bytes before `data`, to continue a running CRC.
 * @returns The CRC as an unsigned 32-bit integer.
 */
export function crc32(data: Uint8Array, previous = 0): number {
  return zlibCrc32(data, previous) >>> 0;
}

/**
 * Checks at start-up that the native CRC-32 gives the values Spark and PySpark compute, so a
 * runtime with a different or broken implementation fails loudly instead of marking every
 * upload as corrupt.
 *
 * @throws {Error} When the implementation disagrees with the known check values.
 */
export function assertCrc32Works(): void {
  const hello = crc32(new TextEncoder().encode("hello"));
  const empty = crc32(new Uint8Array(0));
  const check = crc32(new TextEncoder().encode("123456789"));
  if (hello !== 907060870 || empty !== 0 || check !== 0xcbf43926) {
    throw new Error(
      `Cannot use CRC-32: got ${hello}, ${empty}, ${check}; want 907060870, 0, ${0xcbf43926}`,
    );
  }
}
