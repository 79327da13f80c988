// Copyright 2026 the Valise authors. Apache-2.0 license.
// This module is browser compatible.

/**
 * The Levenshtein distance of two strings: how many one-letter edits turn one into the other.
 *
 * @param a One string.
 * @param b The other.
 * @returns The distance.
 */
export function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      const same = a[i - 1] === b[j - 1] ? 0 : 1;
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + same);
    }
    prev = cur;
  }
  return prev[b.length]!;
}
