// Copyright 2026 the Valise authors. Apache-2.0 license.
// This module is browser compatible.

/**
 * Whether `id` parses as a UUID the way Spark's server checks session ids
 * (`java.util.UUID.fromString`): five `-`-separated groups of hex digits, at most 36
 * characters, each group fitting its field. Spark accepts `1-2-3-4-5`; so do we, because
 * clients that pass their own ids rely on it.
 *
 * @example
 * ```ts
 * import { isSparkSessionId } from "@valise/protocol";
 * import { equal } from "node:assert/strict";
 * equal(isSparkSessionId("0b3f6c2e-7e61-4d0e-8a55-3f8f5f0c9f10"), true);
 * equal(isSparkSessionId("not-a-uuid"), false);
 * ```
 *
 * @param id The session id the client sent.
 * @returns True when Spark would accept it.
 */
export function isSparkSessionId(id: string): boolean {
  if (id.length === 0 || id.length > 36) return false;
  const groups = id.split("-");
  if (groups.length !== 5) return false;
  // Java parses each group as a long and masks it into fields of 32/16/16/16/48 bits; a group
  // longer than its field would be silently truncated there, we refuse it instead.
  const widths = [8, 4, 4, 4, 12];
  return groups.every((g, i) => /^[0-9a-fA-F]+$/.test(g) && g.length <= widths[i]!);
}
