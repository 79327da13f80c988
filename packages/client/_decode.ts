// Copyright 2026 the Valise authors. Apache-2.0 license.

/**
 * Decodes bytes received in pieces as one UTF-8 text (a character may span two pieces).
 *
 * @param parts The pieces, in order.
 * @returns The text.
 */
export function decodeAll(parts: Uint8Array[]): string {
  const d = new TextDecoder();
  return parts.map((p) => d.decode(p, { stream: true })).join("") + d.decode();
}
