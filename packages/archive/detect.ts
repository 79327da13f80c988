// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Content-based detection of archive formats and environment flavors.
 *
 * @module
 */
import { UnpackError } from "./error.ts";
import { type Compression, openSource } from "./_source.ts";
import { headerFormat, type TarMember, TarParser } from "./_tar.ts";
import { centralNames, findZipEnd, readAt } from "./_zipdir.ts";

export type { Compression } from "./_source.ts";

/** Container formats. `unknown` when neither tar nor zip. */
export type Container = "tar" | "zip" | "unknown";

/**
 * What the archive holds, by its content:
 * - `conda-pack`: has `bin/conda-unpack`;
 * - `venv`: has `pyvenv.cfg` at the root (venv-pack layout);
 * - `pex`: a zip with root `PEX-INFO` and `__main__.py`;
 * - `zipapp`: a zip with root `__main__.py`;
 * - `plain`: anything else.
 */
export type Flavor = "conda-pack" | "venv" | "pex" | "zipapp" | "plain";

/** Result of {@linkcode detect}. */
export interface Detection {
  /** Outer compression. */
  compression: Compression;
  /** Container inside the compression. */
  container: Container;
  /** Tar header format of the first member, for tar. */
  tarFormat?: "ustar" | "gnu" | "pax" | "v7";
  /** Bytes before the zip proper (a `#!` line, an SFX stub); `0` for a plain zip. */
  zipPreamble?: number;
  /** The zip uses Zip64 end records. */
  zip64?: boolean;
  /** Environment flavor, see {@linkcode Flavor}. */
  flavor: Flavor;
  /**
   * `true` when every entry name was seen. Zips: always (the central directory is read).
   * Tars: only the first {@linkcode DetectOptions.scanBytes} decompressed bytes are read, so a
   * `bin/conda-unpack` or `pyvenv.cfg` placed later is missed; {@linkcode unpack} reports the
   * definitive flavor.
   */
  flavorComplete: boolean;
  /** Entries seen while detecting. */
  entriesScanned: number;
  /** Size of the file in bytes. */
  size: number;
}

/** Options of {@linkcode detect}. */
export interface DetectOptions {
  /**
   * For tars: decompressed bytes to scan for flavor marker files.
   * @default {67108864}
   */
  scanBytes?: number;
  /**
   * For zips: most central-directory bytes to read for flavor marker files.
   * @default {268435456}
   */
  maxCentralDirectoryBytes?: number;
}

/** Compression by magic bytes. */
export function compressionOf(head: Uint8Array): Compression {
  const b = head;
  if (b.length >= 3 && b[0] === 0x1f && b[1] === 0x8b && b[2] === 8) return "gzip";
  if (
    b.length >= 4 && b[0] === 0x42 && b[1] === 0x5a && b[2] === 0x68 && b[3]! >= 0x31 &&
    b[3]! <= 0x39
  ) {
    return "bzip2";
  }
  if (
    b.length >= 6 && b[0] === 0xfd && b[1] === 0x37 && b[2] === 0x7a && b[3] === 0x58 &&
    b[4] === 0x5a && b[5] === 0
  ) {
    return "xz";
  }
  if (b.length >= 4 && b[0] === 0x28 && b[1] === 0xb5 && b[2] === 0x2f && b[3] === 0xfd) {
    return "zstd";
  }
  // zstd skippable frame
  if (b.length >= 4 && (b[0]! & 0xf0) === 0x50 && b[1] === 0x2a && b[2] === 0x4d && b[3] === 0x18) {
    return "zstd";
  }
  return "none";
}

/** Flavor from entry names (normalised: no leading `./`). */
export function flavorOf(names: Iterable<string>, container: Container): Flavor {
  let conda = false, venv = false, pexInfo = false, main = false;
  for (const n of names) {
    if (n === "bin/conda-unpack") conda = true;
    else if (n === "pyvenv.cfg") venv = true;
    else if (n === "PEX-INFO") pexInfo = true;
    else if (n === "__main__.py") main = true;
  }
  if (conda) return "conda-pack";
  if (venv) return "venv";
  if (container === "zip" && pexInfo && main) return "pex";
  if (container === "zip" && main) return "zipapp";
  return "plain";
}

/** Strips `./` and empty components, for flavor matching only. */
export function looseName(name: string): string {
  return name.split("/").filter((p) => p !== "" && p !== ".").join("/");
}

class Stop extends Error {}

/**
 * Detects compression, container and flavor of the archive at `path` from its content (never
 * its name). Reads the head and, for zips, the end records and central directory; for tars
 * it scans the first members (bounded by {@linkcode DetectOptions.scanBytes}).
 *
 * @param path Archive file.
 * @param options Scan bounds.
 * @returns The detection; `container` is `"unknown"` for anything else.
 * @throws {UnpackError} `IO` when the file cannot be read, `CORRUPT` when its compressed
 * head cannot be decompressed.
 *
 * @example Detect a zip
 * ```ts
 * import { detect } from "@valise/archive";
 * import assert from "node:assert/strict";
 * const dir = await Deno.makeTempDir();
 * // An empty zip is just an end record.
 * const eocd = new Uint8Array(22);
 * eocd.set([0x50, 0x4b, 5, 6]);
 * await Deno.writeFile(`${dir}/a.bin`, eocd);
 * const d = await detect(`${dir}/a.bin`);
 * assert.equal(d.container, "zip");
 * assert.equal(d.flavor, "plain");
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function detect(path: string, options: DetectOptions = {}): Promise<Detection> {
  const scanBytes = options.scanBytes ?? 64 * 1024 * 1024;
  let f: Deno.FsFile;
  try {
    f = await Deno.open(path);
  } catch (e) {
    throw new UnpackError(
      "IO",
      `Cannot detect archive ${JSON.stringify(path)}: ${(e as Error).message}`,
      {
        cause: e,
      },
    );
  }
  try {
    const size = (await f.stat()).size;
    const head = await readAt(f, 0, Math.min(size, 4096));
    const compression = compressionOf(head);
    const base = { compression, size };
    if (compression === "none") {
      const fmt = head.length >= 512 ? headerFormat(head.subarray(0, 512)) : undefined;
      if (fmt !== undefined || isEmptyTar(head, size) || hasUstarMagic(head)) {
        return await scanTar(path, compression, scanBytes, size);
      }
      const end = await findZipEnd(f, size);
      if (end !== undefined) {
        const { names, complete, firstLocal } = await centralNames(
          f,
          end,
          options.maxCentralDirectoryBytes ?? 256 * 1024 * 1024,
        );
        return {
          ...base,
          container: "zip",
          zipPreamble: names.length ? firstLocal : end.preamble,
          zip64: end.zip64,
          flavor: flavorOf(names.map(looseName), "zip"),
          flavorComplete: complete,
          entriesScanned: names.length,
        };
      }
      if (head[0] === 0x50 && head[1] === 0x4b && head[2] === 3 && head[3] === 4) {
        // Starts like a zip but has no end record: unpack will call it corrupt.
        return {
          ...base,
          container: "zip",
          flavor: "plain",
          flavorComplete: false,
          entriesScanned: 0,
        };
      }
      return {
        ...base,
        container: "unknown",
        flavor: "plain",
        flavorComplete: true,
        entriesScanned: 0,
      };
    }
    return await scanTar(path, compression, scanBytes, size);
  } finally {
    f.close();
  }
}

/** `ustar` magic at 257, even with a bad checksum: a (corrupt) tar rather than unknown. */
function hasUstarMagic(h: Uint8Array): boolean {
  return h.length >= 512 && h[257] === 0x75 && h[258] === 0x73 && h[259] === 0x74 &&
    h[260] === 0x61 &&
    h[261] === 0x72;
}

function isEmptyTar(head: Uint8Array, size: number): boolean {
  if (size < 1024 || size % 512 !== 0 || head.length < 1024) return false;
  for (let i = 0; i < 1024; i++) if (head[i] !== 0) return false;
  return true;
}

async function scanTar(
  path: string,
  compression: Compression,
  scanBytes: number,
  size: number,
): Promise<Detection> {
  const names: string[] = [];
  let first: Uint8Array | undefined;
  let fed = 0;
  let complete = false;
  let tarFormat: TarMember["format"] | undefined;
  let isTar: boolean | undefined;
  let conda = false;
  let firstMember: TarMember["format"] | undefined;
  const parser = new TarParser({
    entry(m) {
      const n = looseName(m.name);
      names.push(n);
      firstMember ??= m.format;
      if (n === "bin/conda-unpack") conda = true;
    },
    data() {},
    end() {},
  });
  const src = openSource(path, compression);
  try {
    for await (const chunk of src.chunks) {
      if (isTar === undefined) {
        first = first ? concat(first, chunk) : chunk;
        if (first.length < 512) continue;
        const fmt = headerFormat(first.subarray(0, 512));
        isTar = fmt !== undefined || first.subarray(0, 512).every((b) => b === 0) ||
          hasUstarMagic(first);
        if (!isTar) break;
        tarFormat = fmt;
        parser.push(first);
        fed += first.length;
      } else {
        parser.push(chunk);
        fed += chunk.length;
      }
      if (parser.done) {
        complete = true;
        break;
      }
      // conda-pack is the strongest flavor: nothing found later can change the answer.
      if (fed >= scanBytes || conda) throw new Stop();
    }
    if (isTar === undefined && first !== undefined) isTar = false;
    if (isTar && !parser.done) complete = true; // reached the end of input
  } catch (e) {
    if (!(e instanceof Stop)) {
      if (
        e instanceof UnpackError && e.code === "CORRUPT" && names.length === 0 &&
        isTar === undefined
      ) {
        throw e;
      }
      if (!(e instanceof UnpackError)) throw e;
      // A corrupt tar further on: detection reports what it saw; unpack will refuse it.
    }
  } finally {
    await src.close();
  }
  if (!isTar) {
    return {
      compression,
      container: "unknown",
      flavor: "plain",
      flavorComplete: true,
      entriesScanned: 0,
      size,
    };
  }
  if (conda) complete = true; // nothing later could change the flavor
  const d: Detection = {
    compression,
    container: "tar",
    flavor: flavorOf(names, "tar"),
    flavorComplete: complete,
    entriesScanned: names.length,
    size,
  };
  const fmt = firstMember ?? tarFormat;
  if (fmt !== undefined) d.tarFormat = fmt;
  return d;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
