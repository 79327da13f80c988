// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Zip unpacking: the central directory (`_zipcd.ts`) says what is there; we read each local
 * header to cross-check it against the central record, refuse encrypted and overlapping
 * entries, and inflate with `node:zlib` while counting the bytes produced and checking the
 * CRC-32.
 */
import fs from "node:fs";
import zlib from "node:zlib";
import { UnpackError } from "./error.ts";
import type { Extractor, Member } from "./_extract.ts";
import type { ZipEnd } from "./_zipdir.ts";
import { type CdEntry, readCentralDirectory } from "./_zipcd.ts";

const SCRATCH_MIN = 1 << 16;

let scratch = new Uint8Array(SCRATCH_MIN);

/**
 * Reads `len` bytes at `pos`. With `reuse`, into a shared buffer valid until the next call
 * (fewer short-lived allocations: GC lag on them showed up as peak RSS).
 */
function pread(fd: number, pos: number, len: number, reuse = false): Uint8Array {
  if (reuse && scratch.length < len) scratch = new Uint8Array(Math.max(len, scratch.length * 2));
  const buf = reuse ? scratch.subarray(0, len) : new Uint8Array(len);
  let off = 0;
  while (off < len) {
    const n = fs.readSync(fd, buf, off, len - off, pos + off);
    if (n === 0) break;
    off += n;
  }
  return off === len ? buf : buf.subarray(0, off);
}

/** Limits the zip reader needs beyond the extractor's. */
export interface ZipLimits {
  maxRatio: number;
  ratioGraceBytes: number;
  maxEntries: number;
  maxEntryBytes: number;
  signal: AbortSignal | undefined;
}

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
const SMALL = 1 << 20;

type Entry = CdEntry;

interface Planned {
  e: Entry;
  dataStart: number;
  dataEnd: number;
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function checkAbort(signal: AbortSignal | undefined): void {
  if (signal?.aborted) {
    throw new UnpackError("ABORTED", "Cannot unpack archive: aborted", { cause: signal.reason });
  }
}

/** Unpacks every entry of the zip at `path` through `x`. Returns compressed bytes read. */
export async function unpackZip(
  path: string,
  end: ZipEnd,
  x: Extractor,
  lim: ZipLimits,
): Promise<{ compressed: number; produced: number }> {
  const fd = fs.openSync(path, "r");
  try {
    const cd = pread(fd, end.cdStart, end.cdSize);
    if (cd.length !== end.cdSize) {
      throw new UnpackError("CORRUPT", "Cannot read zip central directory: truncated file");
    }
    const entries = readCentralDirectory(cd, end, lim.maxEntries);
    checkAbort(lim.signal);
    const plan: Planned[] = [];
    for (const e of entries) {
      const entry = e.filename;
      if (e.flags & 0x41 || e.flags & 0x2000) {
        throw new UnpackError(
          "ENCRYPTED",
          `Cannot unpack zip entry ${JSON.stringify(entry)}: it is encrypted`,
          {
            entry,
          },
        );
      }
      const lh = pread(fd, e.offset, 30, true);
      const dv = new DataView(lh.buffer, lh.byteOffset, lh.byteLength);
      if (lh.length < 30 || dv.getUint32(0, true) !== 0x04034b50) {
        throw new UnpackError(
          "CORRUPT",
          `Cannot unpack zip entry ${JSON.stringify(entry)}: no local header at ${e.offset}`,
          {
            entry,
          },
        );
      }
      const flags = dv.getUint16(6, true);
      const method = dv.getUint16(8, true);
      const n = dv.getUint16(26, true);
      const m = dv.getUint16(28, true);
      if (flags & 1) {
        throw new UnpackError(
          "ENCRYPTED",
          `Cannot unpack zip entry ${JSON.stringify(entry)}: it is encrypted`,
          {
            entry,
          },
        );
      }
      if (method !== e.compressionMethod) {
        throw new UnpackError(
          "CORRUPT",
          `Cannot unpack zip entry ${
            JSON.stringify(entry)
          }: local header says method ${method}, central directory ${e.compressionMethod}`,
          { entry },
        );
      }
      const localName = pread(fd, e.offset + 30, n);
      if (!bytesEqual(localName, e.rawFilename)) {
        throw new UnpackError(
          "CORRUPT",
          `Cannot unpack zip entry ${JSON.stringify(entry)}: local header names it differently`,
          { entry },
        );
      }
      const dataStart = e.offset + 30 + n + m;
      const dataEnd = dataStart + e.compressedSize;
      if (dataEnd > end.cdStart) {
        throw new UnpackError(
          "OVERLAP",
          `Cannot unpack zip entry ${
            JSON.stringify(entry)
          }: its data overlaps the central directory`,
          { entry },
        );
      }
      plan.push({ e, dataStart, dataEnd });
    }
    const sorted = [...plan].sort((a, b) => a.e.offset - b.e.offset);
    for (let i = 1; i < sorted.length; i++) {
      if (sorted[i]!.e.offset < sorted[i - 1]!.dataEnd) {
        const entry = sorted[i]!.e.filename;
        throw new UnpackError(
          "OVERLAP",
          `Cannot unpack zip entry ${JSON.stringify(entry)}: it shares bytes with ${
            JSON.stringify(sorted[i - 1]!.e.filename)
          } (a zip bomb?)`,
          { entry },
        );
      }
    }
    let compressed = 0;
    let produced = 0;
    for (const p of plan) {
      checkAbort(lim.signal);
      const out = await entryOut(fd, p, x, lim, compressed, produced);
      compressed += p.dataEnd - p.dataStart;
      produced += out;
    }
    return { compressed, produced };
  } finally {
    fs.closeSync(fd);
  }
}

function checkRatio(lim: ZipLimits, produced: number, compressed: number, entry: string): void {
  if (produced > lim.ratioGraceBytes && produced > lim.maxRatio * Math.max(compressed, 1)) {
    throw new UnpackError(
      "QUOTA_RATIO",
      `Cannot unpack archive: ${produced} bytes from ${compressed} compressed bytes exceeds ratio ${lim.maxRatio}`,
      { entry },
    );
  }
}

async function entryOut(
  fd: number,
  p: Planned,
  x: Extractor,
  lim: ZipLimits,
  compressedBefore: number,
  producedBefore: number,
): Promise<number> {
  const e = p.e;
  const entry = e.filename;
  const unix = (e.versionMadeBy >> 8) === 3 ? (e.externalFileAttributes >>> 16) : 0;
  const type = unix & S_IFMT;
  let kind: Member["kind"];
  if (e.directory || type === S_IFDIR) kind = "dir";
  else if (type === S_IFLNK) kind = "symlink";
  else if (type === 0 || type === S_IFREG) kind = "file";
  else kind = "special";
  // Zips made on other systems carry no Unix mode: plain files then.
  const mode = unix & 0o7777 ? unix & 0o7777 : kind === "dir" ? 0o755 : 0o644;
  const mtime = e.mtime;
  const base: Member = {
    name: entry,
    linkname: "",
    kind,
    typeflag: type.toString(8),
    size: 0,
    mode,
    mtime,
  };
  if (kind === "dir" || kind === "special") {
    x.entry(base, new Uint8Array(0));
    return 0;
  }
  const declared = e.uncompressedSize;
  if (declared > lim.maxEntryBytes && kind === "file") {
    // Let the extractor raise its QUOTA_BYTES with the usual message.
    x.entry({ ...base, size: declared }, undefined);
  }
  const clen = p.dataEnd - p.dataStart;
  if (e.compressionMethod !== 0 && e.compressionMethod !== 8 && e.compressionMethod !== 93) {
    throw new UnpackError(
      "UNSUPPORTED",
      `Cannot unpack zip entry ${JSON.stringify(entry)}: compression method ${e.compressionMethod}`,
      { entry },
    );
  }
  if (e.compressionMethod === 0 && clen !== declared) {
    throw new UnpackError(
      "CORRUPT",
      `Cannot unpack zip entry ${JSON.stringify(entry)}: stored size mismatch`,
      {
        entry,
      },
    );
  }
  if (clen <= SMALL && declared <= SMALL * 8) {
    const raw = pread(fd, p.dataStart, clen, true);
    if (raw.length !== clen) {
      throw new UnpackError(
        "CORRUPT",
        `Cannot unpack zip entry ${JSON.stringify(entry)}: truncated`,
        { entry },
      );
    }
    let data: Uint8Array;
    try {
      data = e.compressionMethod === 0
        ? raw
        : e.compressionMethod === 8
        ? zlib.inflateRawSync(raw, {
          maxOutputLength: Math.max(declared, 1),
          chunkSize: Math.max(declared, 64),
        })
        // The options object is typed loosely: Deno's and npm's @types/node (pulled in by
        // apache-arrow's types) disagree on the name of this parameter's type.
        : zlib.zstdDecompressSync(
          raw,
          { maxOutputLength: Math.max(declared, 1) } as Parameters<
            typeof zlib.zstdDecompressSync
          >[1],
        );
    } catch (cause) {
      throw new UnpackError(
        "CORRUPT",
        `Cannot unpack zip entry ${
          JSON.stringify(entry)
        }: bad compressed data or larger than the declared ${declared} bytes`,
        { entry, cause },
      );
    }
    verify(data.length, declared, e.crc32, zlib.crc32(data), entry);
    checkRatio(lim, producedBefore + data.length, compressedBefore + clen, entry);
    if (kind === "symlink") {
      let target: string;
      try {
        target = new TextDecoder("utf-8", { fatal: true }).decode(data);
      } catch (cause) {
        throw new UnpackError(
          "BAD_NAME",
          `Cannot unpack symlink ${JSON.stringify(entry)}: target is not UTF-8`,
          {
            entry,
            cause,
          },
        );
      }
      x.entry({ ...base, linkname: target }, undefined);
      return 0;
    }
    x.entry({ ...base, size: data.length }, data);
    return data.length;
  }
  if (kind === "symlink") {
    throw new UnpackError(
      "BAD_NAME",
      `Cannot unpack symlink ${JSON.stringify(entry)}: target is too long`,
      {
        entry,
      },
    );
  }
  // Large entry: stream it.
  x.entry({ ...base, size: declared }, undefined);
  let crc = 0;
  let out = 0;
  let read = 0;
  const dec = e.compressionMethod === 8
    ? zlib.createInflateRaw({ chunkSize: 1 << 18 })
    : e.compressionMethod === 93
    ? zlib.createZstdDecompress({ chunkSize: 1 << 18 })
    : undefined;
  const feed = async function* (): AsyncGenerator<Uint8Array> {
    for (let pos = p.dataStart; pos < p.dataEnd; pos += 1 << 20) {
      const chunk = pread(fd, pos, Math.min(1 << 20, p.dataEnd - pos)); // zlib may hold it: no reuse
      if (chunk.length === 0) break;
      read += chunk.length;
      yield chunk;
    }
  };
  const consume = (c: Uint8Array): void => {
    out += c.length;
    if (out > declared) {
      throw new UnpackError(
        "CORRUPT",
        `Cannot unpack zip entry ${
          JSON.stringify(entry)
        }: more than the declared ${declared} bytes`,
        { entry },
      );
    }
    checkRatio(lim, producedBefore + out, compressedBefore + read, entry);
    crc = zlib.crc32(c, crc);
    x.data(c);
  };
  try {
    if (dec === undefined) {
      for await (const c of feed()) consume(c);
    } else {
      const src = (async () => {
        try {
          for await (const c of feed()) {
            if (!dec.write(c)) await new Promise((r) => dec.once("drain", r));
          }
          dec.end();
        } catch (err) {
          dec.destroy(err as Error);
        }
      })();
      for await (const c of dec as AsyncIterable<Uint8Array>) {
        checkAbort(lim.signal);
        consume(c);
      }
      await src;
    }
  } catch (cause) {
    dec?.destroy();
    if (cause instanceof UnpackError) throw cause;
    throw new UnpackError(
      "CORRUPT",
      `Cannot unpack zip entry ${JSON.stringify(entry)}: bad compressed data`,
      {
        entry,
        cause,
      },
    );
  }
  x.end();
  verify(out, declared, e.crc32, crc, entry);
  return out;
}

function verify(
  got: number,
  declared: number,
  want: number | undefined,
  crc: number,
  entry: string,
): void {
  if (got !== declared) {
    throw new UnpackError(
      "CORRUPT",
      `Cannot unpack zip entry ${
        JSON.stringify(entry)
      }: ${got} bytes, central directory says ${declared}`,
      { entry },
    );
  }
  if (want !== undefined && (want >>> 0) !== (crc >>> 0)) {
    throw new UnpackError(
      "CORRUPT",
      `Cannot unpack zip entry ${JSON.stringify(entry)}: CRC-32 mismatch`,
      {
        entry,
      },
    );
  }
}
