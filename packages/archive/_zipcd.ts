// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Central directory reader (Zip64, preambles, UTF-8/CP437 names). It keeps a compact record per
 * entry, a few hundred bytes, so a 100k-entry environment lists in little memory (a library
 * tried first built ~2 KB of objects per entry: see docs/dependencies.md).
 */
import { UnpackError } from "./error.ts";
import type { ZipEnd } from "./_zipdir.ts";

/** What we keep of a central directory record. */
export interface CdEntry {
  /** Decoded name (UTF-8 when flagged or valid, else CP437). */
  filename: string;
  /** Name bytes as stored, compared with the local header's. */
  rawFilename: Uint8Array;
  /** General purpose bit flags. */
  flags: number;
  /** Absolute offset of the local header in the file. */
  offset: number;
  compressionMethod: number;
  compressedSize: number;
  uncompressedSize: number;
  crc32: number;
  /** Name ends with `/`. */
  directory: boolean;
  versionMadeBy: number;
  externalFileAttributes: number;
  /** Seconds since the epoch (extended timestamp field, else DOS time as local time). */
  mtime: number;
}

const CP437 =
  "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u00a0";
const utf8 = new TextDecoder("utf-8", { fatal: true });

function decodeName(b: Uint8Array, utf8Flag: boolean): string {
  let ascii = true;
  for (let i = 0; i < b.length; i++) {
    if (b[i]! > 0x7f) {
      ascii = false;
      break;
    }
  }
  if (ascii) return String.fromCharCode.apply(null, b as unknown as number[]);
  try {
    return utf8.decode(b);
  } catch (cause) {
    if (utf8Flag) {
      throw new UnpackError("BAD_NAME", "Cannot read zip: a name flagged UTF-8 is not UTF-8", {
        cause,
      });
    }
  }
  let s = "";
  for (const c of b) s += c < 0x80 ? String.fromCharCode(c) : CP437[c - 0x80];
  return s;
}

function dosTime(date: number, time: number): number {
  const d = new Date(
    1980 + (date >> 9),
    ((date >> 5) & 0xf) - 1,
    date & 0x1f,
    time >> 11,
    (time >> 5) & 0x3f,
    (time & 0x1f) * 2,
  );
  const t = Math.floor(d.getTime() / 1000);
  return Number.isFinite(t) ? t : 0;
}

function corrupt(msg: string, entry?: string): UnpackError {
  return new UnpackError(
    "CORRUPT",
    `Cannot read zip central directory: ${msg}`,
    entry === undefined ? {} : { entry },
  );
}

/** Reads and checks every central directory record. */
export function readCentralDirectory(cd: Uint8Array, end: ZipEnd, maxEntries: number): CdEntry[] {
  if (end.entries > maxEntries) {
    throw new UnpackError(
      "QUOTA_ENTRIES",
      `Cannot unpack archive: ${end.entries} entries, limit is ${maxEntries}`,
    );
  }
  const dv = new DataView(cd.buffer, cd.byteOffset, cd.byteLength);
  const out: CdEntry[] = [];
  let p = 0;
  while (p < cd.length) {
    if (p + 46 > cd.length || dv.getUint32(p, true) !== 0x02014b50) {
      throw corrupt(`bad record at central directory offset ${p}`);
    }
    if (out.length >= maxEntries) {
      throw new UnpackError(
        "QUOTA_ENTRIES",
        `Cannot unpack archive: more than ${maxEntries} entries`,
      );
    }
    const versionMadeBy = dv.getUint16(p + 4, true);
    const flags = dv.getUint16(p + 8, true);
    const method = dv.getUint16(p + 10, true);
    const time = dv.getUint16(p + 12, true);
    const date = dv.getUint16(p + 14, true);
    const crc32 = dv.getUint32(p + 16, true);
    let csize = dv.getUint32(p + 20, true);
    let usize = dv.getUint32(p + 24, true);
    const n = dv.getUint16(p + 28, true);
    const m = dv.getUint16(p + 30, true);
    const k = dv.getUint16(p + 32, true);
    let disk = dv.getUint16(p + 34, true);
    const ext = dv.getUint32(p + 38, true);
    let offset = dv.getUint32(p + 42, true);
    if (p + 46 + n + m + k > cd.length) throw corrupt("record runs past the central directory");
    // A view, not a copy: one backing store for all names (the directory stays in memory).
    const rawFilename = cd.subarray(p + 46, p + 46 + n);
    const filename = decodeName(rawFilename, (flags & 0x800) !== 0);
    let mtime = dosTime(date, time);
    // Extra fields: Zip64 sizes/offset, extended timestamp.
    let q = p + 46 + n;
    const extraEnd = q + m;
    while (q + 4 <= extraEnd) {
      const id = dv.getUint16(q, true);
      const len = dv.getUint16(q + 2, true);
      const body = q + 4;
      if (body + len > extraEnd) break;
      if (id === 0x0001) {
        let r = body;
        const take = (): number => {
          if (r + 8 > body + len) throw corrupt("short Zip64 extra field", filename);
          const v = Number(dv.getBigUint64(r, true));
          r += 8;
          return v;
        };
        if (usize === 0xffffffff) usize = take();
        if (csize === 0xffffffff) csize = take();
        if (offset === 0xffffffff) offset = take();
        if (disk === 0xffff && r + 4 <= body + len) disk = dv.getUint32(r, true);
      } else if (id === 0x5455 && len >= 5 && (dv.getUint8(body) & 1)) {
        mtime = dv.getUint32(body + 1, true);
      }
      q = body + len;
    }
    if (disk !== 0) {
      throw new UnpackError(
        "UNSUPPORTED",
        `Cannot unpack zip entry ${JSON.stringify(filename)}: split archives are not supported`,
        {
          entry: filename,
        },
      );
    }
    if (
      !Number.isSafeInteger(usize) || !Number.isSafeInteger(csize) || !Number.isSafeInteger(offset)
    ) {
      throw corrupt("sizes too large", filename);
    }
    out.push({
      filename,
      rawFilename,
      flags,
      offset: offset + end.preamble,
      compressionMethod: method,
      compressedSize: csize,
      uncompressedSize: usize,
      crc32,
      directory: filename.endsWith("/"),
      versionMadeBy,
      externalFileAttributes: ext,
      mtime,
    });
    p += 46 + n + m + k;
  }
  if (end.entries !== 0xffff && out.length !== end.entries) {
    throw corrupt(`${out.length} records, the end record says ${end.entries}`);
  }
  return out;
}
