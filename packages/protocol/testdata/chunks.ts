// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Test helpers: cutting bytes into the arbitrary chunks a stream may deliver.
 *
 * @module
 */

/**
 * Splits `bytes` at the given cut points (taken modulo its length, deduplicated).
 *
 * @param bytes The bytes.
 * @param cuts Cut points, e.g. from `fc.array(fc.nat())`.
 * @returns The chunks, in order; some may be empty.
 */
export function chunked(bytes: Uint8Array, cuts: number[]): Uint8Array[] {
  const at = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  return [...at, bytes.length].map((c, i, all) => bytes.subarray(i ? all[i - 1] : 0, c));
}

/**
 * Joins byte arrays into one.
 *
 * @param parts The pieces.
 * @returns Their concatenation.
 */
export function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}
