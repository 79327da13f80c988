// Copyright 2026 the Valise authors. Apache-2.0 license.
import { UnpackError } from "./error.ts";

/** Limits applied to entry names. */
export interface NameLimits {
  maxPathBytes: number;
  maxComponentBytes: number;
  maxDepth: number;
}

// deno-lint-ignore no-control-regex -- control characters are exactly what we refuse
export const CONTROL = /[\x00-\x1f\x7f]/;
const DRIVE = /^[A-Za-z]:/;
const encoder = new TextEncoder();

function byteLength(s: string): number {
  // Only encode when the UTF-16 length could hide a longer UTF-8 form.
  for (let i = 0; i < s.length; i++) {
    if (s.charCodeAt(i) > 0x7f) return encoder.encode(s).length;
  }
  return s.length;
}

/**
 * Normalises an archive entry name to a relative `a/b/c` path ("" for the root), or throws.
 * Rejects rather than repairs: absolute names, drive letters, `..`, `\`, NUL and control
 * characters, over-long names and over-deep paths.
 */
export function normalizeName(raw: string, limits: NameLimits, entry: string = raw): string {
  if (raw.length === 0) {
    throw new UnpackError("BAD_NAME", "Cannot unpack entry: its name is empty", { entry });
  }
  if (CONTROL.test(raw)) {
    throw new UnpackError(
      "BAD_NAME",
      `Cannot unpack entry ${JSON.stringify(entry)}: name holds NUL or control characters`,
      { entry },
    );
  }
  if (raw[0] === "/" || raw[0] === "\\" || DRIVE.test(raw)) {
    throw new UnpackError(
      "ABSOLUTE_PATH",
      `Cannot unpack entry ${JSON.stringify(entry)}: name is absolute`,
      { entry },
    );
  }
  if (raw.includes("\\")) {
    throw new UnpackError(
      "BAD_NAME",
      `Cannot unpack entry ${JSON.stringify(entry)}: name holds a backslash`,
      { entry },
    );
  }
  if (byteLength(raw) > limits.maxPathBytes) {
    throw new UnpackError(
      "BAD_NAME",
      `Cannot unpack entry ${
        JSON.stringify(entry.slice(0, 80))
      }...: name is longer than ${limits.maxPathBytes} bytes`,
      { entry },
    );
  }
  const parts = raw.split("/");
  let out = "";
  let depth = 0;
  for (const p of parts) {
    if (p === "" || p === ".") continue;
    if (p === "..") {
      throw new UnpackError(
        "PATH_ESCAPE",
        `Cannot unpack entry ${JSON.stringify(entry)}: name has a ".." component`,
        { entry },
      );
    }
    if (p.length > limits.maxComponentBytes / 3 && byteLength(p) > limits.maxComponentBytes) {
      throw new UnpackError(
        "BAD_NAME",
        `Cannot unpack entry ${
          JSON.stringify(entry)
        }: a name component is longer than ${limits.maxComponentBytes} bytes`,
        { entry },
      );
    }
    depth++;
    out = out === "" ? p : out + "/" + p;
  }
  if (depth > limits.maxDepth) {
    throw new UnpackError(
      "BAD_NAME",
      `Cannot unpack entry ${
        JSON.stringify(entry)
      }: ${depth} levels deep, limit is ${limits.maxDepth}`,
      { entry },
    );
  }
  return out;
}

/** Parent of a normalised relative path ("" for top-level names). */
export function parentOf(rel: string): string {
  const i = rel.lastIndexOf("/");
  return i < 0 ? "" : rel.slice(0, i);
}
