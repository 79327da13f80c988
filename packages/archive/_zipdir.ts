// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Finds a zip's end records, for detection and for the overlap check: where the central
 * directory is, how many bytes precede the zip (a `#!` preamble, an SFX stub), Zip64.
 * The records themselves are read by `_zipcd.ts`.
 */

/** Where a zip's central directory is. */
export interface ZipEnd {
  /** Absolute file offset of the central directory. */
  cdStart: number;
  /** Size of the central directory in bytes. */
  cdSize: number;
  /** Number of entries the end record announces. */
  entries: number;
  /** `cdStart - recorded offset`: bytes before a zip whose offsets were not adjusted. */
  preamble: number;
  /** Zip64 end records were used. */
  zip64: boolean;
  /** Offset of the first end record (Zip64 or classic): nothing may overlap it. */
  endStart: number;
}

async function readAt(f: Deno.FsFile, pos: number, len: number): Promise<Uint8Array> {
  const buf = new Uint8Array(len);
  await f.seek(pos, Deno.SeekMode.Start);
  let off = 0;
  while (off < len) {
    const n = await f.read(buf.subarray(off));
    if (n === null) break;
    off += n;
  }
  return buf.subarray(0, off);
}

export { readAt };

/** Locates the end of central directory record; `undefined` when there is none. */
export async function findZipEnd(f: Deno.FsFile, size: number): Promise<ZipEnd | undefined> {
  const tailLen = Math.min(size, 22 + 65535);
  const tailPos = size - tailLen;
  const tail = await readAt(f, tailPos, tailLen);
  const dv = new DataView(tail.buffer, tail.byteOffset, tail.byteLength);
  for (let i = tail.length - 22; i >= 0; i--) {
    if (tail[i] !== 0x50 || tail[i + 1] !== 0x4b || tail[i + 2] !== 5 || tail[i + 3] !== 6) {
      continue;
    }
    const commentLen = dv.getUint16(i + 20, true);
    if (i + 22 + commentLen > tail.length) continue; // a signature inside a comment
    let entries = dv.getUint16(i + 10, true);
    let cdSize = dv.getUint32(i + 12, true);
    let cdOffset = dv.getUint32(i + 16, true);
    const eocdPos = tailPos + i;
    let endStart = eocdPos;
    let zip64 = false;
    if (entries === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
      if (eocdPos >= 20) {
        const loc = await readAt(f, eocdPos - 20, 20);
        const lv = new DataView(loc.buffer, loc.byteOffset, loc.byteLength);
        if (loc.length === 20 && lv.getUint32(0, true) === 0x07064b50) {
          const recordedPos = Number(lv.getBigUint64(8, true));
          // The record is where the locator says, or (behind a preamble) right before it.
          for (const at of [recordedPos, eocdPos - 20 - 56]) {
            if (at < 0 || at > eocdPos - 20 - 56) continue;
            const rec = await readAt(f, at, 56);
            const rv = new DataView(rec.buffer, rec.byteOffset, rec.byteLength);
            if (rec.length === 56 && rv.getUint32(0, true) === 0x06064b50) {
              zip64 = true;
              entries = Number(rv.getBigUint64(32, true));
              cdSize = Number(rv.getBigUint64(40, true));
              cdOffset = Number(rv.getBigUint64(48, true));
              endStart = at;
              break;
            }
          }
        }
      }
    }
    const cdStart = endStart - cdSize;
    if (cdStart < 0) return undefined;
    const preamble = cdStart - cdOffset;
    if (preamble < 0) return undefined;
    return { cdStart, cdSize, entries, preamble, zip64, endStart };
  }
  return undefined;
}

/** Names of the central directory records (raw UTF-8/CP437 decoded leniently). */
export async function centralNames(
  f: Deno.FsFile,
  end: ZipEnd,
  maxBytes: number,
): Promise<{ names: string[]; complete: boolean; firstLocal: number }> {
  const len = Math.min(end.cdSize, maxBytes);
  const cd = await readAt(f, end.cdStart, len);
  const dv = new DataView(cd.buffer, cd.byteOffset, cd.byteLength);
  const dec = new TextDecoder();
  const names: string[] = [];
  let firstLocal = end.cdStart;
  let p = 0;
  while (p + 46 <= cd.length && dv.getUint32(p, true) === 0x02014b50) {
    const n = dv.getUint16(p + 28, true);
    const m = dv.getUint16(p + 30, true);
    const k = dv.getUint16(p + 32, true);
    if (p + 46 + n > cd.length) break;
    names.push(dec.decode(cd.subarray(p + 46, p + 46 + n)));
    const local = dv.getUint32(p + 42, true);
    if (local !== 0xffffffff) firstLocal = Math.min(firstLocal, local + end.preamble);
    p += 46 + n + m + k;
  }
  return { names, complete: names.length === end.entries, firstLocal };
}
