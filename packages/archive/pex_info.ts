// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * A PEX's `PEX-INFO`: the interpreter constraints and the wheels it was built with, read from
 * an unpacked PEX or straight out of a `.pex` file (its zip central directory, then one member,
 * at most 1 MiB inflated). Hostile bytes give an error string, never an exception or a large
 * read.
 *
 * @module
 */
import type { PexFacts } from "./env_facts.ts";
import { findZipEnd, readAt } from "./_zipdir.ts";

/** The largest PEX-INFO read (real ones are a few KiB). */
const MAX_PEX_INFO = 1 << 20;
/** The most central directory bytes scanned for the PEX-INFO record. */
const MAX_CD = 64 << 20;

/**
 * Parses PEX-INFO bytes.
 *
 * @param bytes The file's bytes (at most 1 MiB are accepted).
 * @returns The facts, or why they cannot be read.
 */
export function readPexInfo(bytes: Uint8Array): PexFacts | { error: string } {
  if (bytes.length > MAX_PEX_INFO) return { error: "is larger than 1 MiB" };
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    return { error: "is not JSON" };
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    return { error: "is not a JSON object" };
  }
  const o = json as Record<string, unknown>;
  const ics = o.interpreter_constraints ?? [];
  if (!Array.isArray(ics) || !ics.every((c) => typeof c === "string" && c.length <= 1024)) {
    return { error: "has interpreter_constraints that are not a list of strings" };
  }
  const dists = o.distributions ?? {};
  const distributions = typeof dists === "object" && dists !== null && !Array.isArray(dists)
    ? Object.keys(dists).filter((d) => d.length <= 1024).slice(0, 10_000)
    : [];
  return { interpreterConstraints: (ics as string[]).slice(0, 100), distributions };
}

/**
 * Reads `PEX-INFO` out of a `.pex` file (a zip, maybe behind a `#!` line).
 *
 * @param path The file.
 * @returns The facts, `undefined` when the file is no zip or holds no PEX-INFO, or an error.
 */
export async function readPexInfoFromZip(
  path: string,
): Promise<PexFacts | { error: string } | undefined> {
  const f = await Deno.open(path, { read: true });
  try {
    const size = (await f.stat()).size;
    const end = await findZipEnd(f, size);
    if (!end) return undefined;
    const cdLen = Math.min(end.cdSize, MAX_CD, Math.max(0, size - end.cdStart));
    const cd = await readAt(f, end.cdStart, cdLen);
    const dv = new DataView(cd.buffer, cd.byteOffset, cd.byteLength);
    let p = 0;
    // Every record moves p forward by at least 46 bytes: the loop ends.
    while (p + 46 <= cd.length && dv.getUint32(p, true) === 0x02014b50) {
      const n = dv.getUint16(p + 28, true);
      const m = dv.getUint16(p + 30, true);
      const k = dv.getUint16(p + 32, true);
      if (p + 46 + n > cd.length) break;
      const name = cd.subarray(p + 46, p + 46 + n);
      if (n === 8 && new TextDecoder().decode(name) === "PEX-INFO") {
        const method = dv.getUint16(p + 10, true);
        const csize = dv.getUint32(p + 20, true);
        const usize = dv.getUint32(p + 24, true);
        const local = dv.getUint32(p + 42, true) + end.preamble;
        if (csize > MAX_PEX_INFO || usize > MAX_PEX_INFO) return { error: "is larger than 1 MiB" };
        const lh = await readAt(f, local, 30);
        const lv = new DataView(lh.buffer, lh.byteOffset, lh.byteLength);
        if (lh.length < 30 || lv.getUint32(0, true) !== 0x04034b50) {
          return { error: "has a broken local header" };
        }
        const start = local + 30 + lv.getUint16(26, true) + lv.getUint16(28, true);
        const raw = await readAt(f, start, csize);
        if (raw.length < csize) return { error: "is cut short" };
        if (method === 0) return readPexInfo(raw);
        if (method !== 8) return { error: `is compressed with method ${method}` };
        const inflated = await inflateCapped(raw, MAX_PEX_INFO);
        return inflated === undefined ? { error: "does not inflate" } : readPexInfo(inflated);
      }
      p += 46 + n + m + k;
    }
    return undefined;
  } catch {
    return { error: "cannot be read" };
  } finally {
    f.close();
  }
}

/** Inflates raw deflate data, giving up past `max` bytes or on corrupt data. */
async function inflateCapped(raw: Uint8Array, max: number): Promise<Uint8Array | undefined> {
  const ds = new DecompressionStream("deflate-raw");
  const writer = ds.writable.getWriter();
  writer.write(raw as Uint8Array<ArrayBuffer>).catch(() => {});
  writer.close().catch(() => {});
  const chunks: Uint8Array[] = [];
  let total = 0;
  const reader = ds.readable.getReader();
  try {
    while (true) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.length;
      if (total > max) {
        await reader.cancel().catch(() => {});
        return undefined;
      }
      chunks.push(value);
    }
  } catch {
    return undefined;
  }
  const out = new Uint8Array(total);
  let o = 0;
  for (const c of chunks) {
    out.set(c, o);
    o += c.length;
  }
  return out;
}
