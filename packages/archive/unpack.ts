// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Safe, streaming unpacking of untrusted environment archives.
 *
 * @module
 */
import { basename, dirname, resolve } from "node:path";
import { detect, type Detection, type Flavor } from "./detect.ts";
import { isUnpackError, UnpackError } from "./error.ts";
import {
  type ChangeKind,
  type ChangeRecord,
  Extractor,
  freeBytes,
  type Policy,
} from "./_extract.ts";
import { openSource } from "./_source.ts";
import { TarParser } from "./_tar.ts";
import { findZipEnd } from "./_zipdir.ts";
export { prestartWriterThread, stopWriterThread } from "./_write_pool.ts";

export type { ChangeKind, ChangeRecord } from "./_extract.ts";

/** Options of {@linkcode unpack}. Every limit counts bytes actually produced. */
export interface UnpackOptions {
  /**
   * Most bytes written in total (regular file contents).
   * @default {21474836480} (20 GiB)
   */
  maxTotalBytes?: number;
  /**
   * Most bytes of one entry.
   * @default {4294967296} (4 GiB)
   */
  maxEntryBytes?: number;
  /**
   * Most entries (files, directories, links).
   * @default {1000000}
   */
  maxEntries?: number;
  /**
   * Most decompressed bytes per compressed byte, over the whole archive so far. Real
   * environments are 3–5:1; deflate alone cannot exceed ~1032:1.
   * @default {100}
   */
  maxRatio?: number;
  /**
   * Decompressed bytes produced before {@linkcode UnpackOptions.maxRatio} is enforced, so small
   * archives of very compressible files pass.
   * @default {67108864} (64 MiB)
   */
  ratioGraceBytes?: number;
  /**
   * Free bytes that must stay free on the destination's file system, checked before and
   * while writing.
   * @default {536870912} (512 MiB)
   */
  minFreeDiskBytes?: number;
  /**
   * Bytes written between two free-disk checks.
   * @default {67108864} (64 MiB)
   */
  diskCheckIntervalBytes?: number;
  /**
   * Longest entry name (and symlink target) in UTF-8 bytes.
   * @default {4096}
   */
  maxPathBytes?: number;
  /**
   * Longest name component in UTF-8 bytes.
   * @default {255}
   */
  maxComponentBytes?: number;
  /**
   * Most components in an entry name.
   * @default {256}
   */
  maxDepth?: number;
  /**
   * Allow the venv interpreter links `bin/python`, `bin/python3`, `bin/python3.X` to point at
   * an absolute path when the archive has a root `pyvenv.cfg`. They are created last, as
   * leaves, and listed in {@linkcode UnpackResult.interpreterLinks}.
   * @default {true}
   */
  allowInterpreterLinks?: boolean;
  /**
   * Allow symlink members at all (checked as described above). `false` refuses any with
   * `BAD_LINK`, as node-tar's advice for untrusted input goes; venvs need them.
   * @default {true}
   */
  allowSymlinks?: boolean;
  /**
   * Allow hardlink members at all (to regular files unpacked earlier). `false` refuses any
   * with `BAD_LINK`.
   * @default {true}
   */
  allowHardlinks?: boolean;
  /**
   * Set file modification times from the archive (Python checks `.pyc` files against them).
   * @default {true}
   */
  preserveMtime?: boolean;
  /**
   * Run `bin/conda-unpack` after the final rename when the flavor is `conda-pack`. That script
   * comes from the archive: for untrusted archives set `false` and run it in a sandbox (the
   * Valise server does, with the launcher).
   * @default {true}
   */
  condaUnpack?: boolean;
  /**
   * Interpreter that runs `bin/conda-unpack`.
   * @default {"<dest>/bin/python"}
   */
  condaUnpackPython?: string;
  /**
   * Milliseconds `bin/conda-unpack` may run.
   * @default {300000}
   */
  condaUnpackTimeoutMs?: number;
  /**
   * Most {@linkcode ChangeRecord}s kept in the result (all are counted).
   * @default {100}
   */
  maxReportedChanges?: number;
  /**
   * Small files unpacked before a writer thread takes over part of the file writes (so two
   * cores work: one decompresses and parses, one writes). `Infinity` disables it.
   * @default {256}
   */
  parallelWritesThreshold?: number;
  /**
   * Keep the writer thread after the unpack, for the next one (long-lived processes: a server
   * unpacking in a Worker saves about a second per unpack). Stop it with
   * {@linkcode stopWriterThread}: an idle thread keeps the process alive.
   * @default {false}
   */
  keepWriterThread?: boolean;
  /**
   * Aborts the unpack; the temporary directory is removed and `ABORTED` thrown.
   * @default {undefined}
   */
  signal?: AbortSignal;
}

/** What `bin/conda-unpack` did. */
export interface PostUnpackReport {
  /** The command line run. */
  command: string[];
  /** Exit code. */
  code: number;
  /** Its standard output (last 4 KiB). */
  stdout: string;
  /** Its standard error (last 4 KiB). */
  stderr: string;
}

/** Result of {@linkcode unpack}. */
export interface UnpackResult {
  /** Absolute destination directory. */
  dest: string;
  /** Detection made before unpacking. */
  detection: Detection;
  /** Flavor of the unpacked tree (definitive, unlike `detection.flavor` for tars). */
  flavor: Flavor;
  /** Members processed (files, directories, links). */
  entries: number;
  /** Regular files written. */
  files: number;
  /** Directories created from directory members. */
  directories: number;
  /** Symlinks created. */
  symlinks: number;
  /** Hardlinks created. */
  hardlinks: number;
  /** `symlinks + hardlinks`. */
  linksMade: number;
  /** Bytes of file content written. */
  bytesWritten: number;
  /** Compressed bytes read. */
  compressedBytes: number;
  /** Changes made to what the archive asked for (first `maxReportedChanges`). */
  changes: ChangeRecord[];
  /** Number of changes of each kind. */
  changeCounts: Record<ChangeKind, number>;
  /** Absolute interpreter links allowed by {@linkcode UnpackOptions.allowInterpreterLinks}. */
  interpreterLinks: { path: string; target: string }[];
  /** Present when `bin/conda-unpack` ran. */
  postUnpack?: PostUnpackReport;
}

const TEMP_MARK = ".valise-unpack-";

function num(v: number | undefined, d: number, name: string): number {
  if (v === undefined) return d;
  if (typeof v !== "number" || Number.isNaN(v) || v < 0) {
    throw new RangeError(`Cannot use option ${name}: expected a non-negative number, got ${v}`);
  }
  return v;
}

/** Fills in defaults and validates {@linkcode UnpackOptions}. */
function validateOptions(
  o: UnpackOptions,
): Required<Omit<UnpackOptions, "signal" | "condaUnpackPython">> & {
  signal: AbortSignal | undefined;
  condaUnpackPython: string | undefined;
} {
  return {
    maxTotalBytes: num(o.maxTotalBytes, 20 * 2 ** 30, "maxTotalBytes"),
    maxEntryBytes: num(o.maxEntryBytes, 4 * 2 ** 30, "maxEntryBytes"),
    maxEntries: num(o.maxEntries, 1_000_000, "maxEntries"),
    maxRatio: num(o.maxRatio, 100, "maxRatio"),
    ratioGraceBytes: num(o.ratioGraceBytes, 64 * 2 ** 20, "ratioGraceBytes"),
    minFreeDiskBytes: num(o.minFreeDiskBytes, 512 * 2 ** 20, "minFreeDiskBytes"),
    diskCheckIntervalBytes: num(o.diskCheckIntervalBytes, 64 * 2 ** 20, "diskCheckIntervalBytes"),
    maxPathBytes: num(o.maxPathBytes, 4096, "maxPathBytes"),
    maxComponentBytes: num(o.maxComponentBytes, 255, "maxComponentBytes"),
    maxDepth: num(o.maxDepth, 256, "maxDepth"),
    allowInterpreterLinks: o.allowInterpreterLinks ?? true,
    allowSymlinks: o.allowSymlinks ?? true,
    allowHardlinks: o.allowHardlinks ?? true,
    preserveMtime: o.preserveMtime ?? true,
    condaUnpack: o.condaUnpack ?? true,
    condaUnpackPython: o.condaUnpackPython,
    condaUnpackTimeoutMs: num(o.condaUnpackTimeoutMs, 300_000, "condaUnpackTimeoutMs"),
    maxReportedChanges: num(o.maxReportedChanges, 100, "maxReportedChanges"),
    parallelWritesThreshold: num(o.parallelWritesThreshold, 256, "parallelWritesThreshold"),
    keepWriterThread: o.keepWriterThread ?? false,
    signal: o.signal,
  };
}

function exists(p: string): boolean {
  try {
    Deno.lstatSync(p);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

function aborted(signal: AbortSignal): UnpackError {
  return new UnpackError("ABORTED", "Cannot unpack archive: aborted", { cause: signal.reason });
}

/**
 * Unpacks the archive at `path` into the new directory `dest`, safely and in streaming
 * fashion (memory stays flat). Works in a fresh sibling temporary directory and renames it
 * to `dest` when complete; on any failure nothing is left at `dest` and the temporary
 * directory is removed. For conda-pack archives `bin/conda-unpack` runs after the rename
 * (it makes the env non-relocatable); when it fails, `dest` is removed again.
 *
 * @param path Archive file (tar, optionally gzip/bzip2/xz/zstd compressed, or zip).
 * @param dest Destination directory; must not exist, its parent must.
 * @param options Quotas, policy switches and an abort signal.
 * @returns What was unpacked and what was changed.
 * @throws {UnpackError} With a stable `code`; see {@linkcode UnpackErrorCode}.
 * @throws {RangeError} For invalid options.
 *
 * @example Unpack a tar
 * ```ts
 * import { unpack } from "@valise/archive";
 * import assert from "node:assert/strict";
 * const dir = await Deno.makeTempDir();
 * await Deno.writeTextFile(`${dir}/hello.txt`, "hi");
 * await new Deno.Command("tar", { args: ["-cf", `${dir}/a.tar`, "-C", dir, "hello.txt"] }).output();
 * const r = await unpack(`${dir}/a.tar`, `${dir}/out`);
 * assert.equal(r.files, 1);
 * assert.equal(await Deno.readTextFile(`${dir}/out/hello.txt`), "hi");
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function unpack(
  path: string,
  dest: string,
  options: UnpackOptions = {},
): Promise<UnpackResult> {
  const o = validateOptions(options);
  const signal = o.signal;
  if (signal?.aborted) throw aborted(signal);
  const destAbs = resolve(dest);
  const parent = dirname(destAbs);
  if (exists(destAbs)) {
    throw new UnpackError(
      "DEST_EXISTS",
      `Cannot unpack into ${JSON.stringify(destAbs)}: it exists already`,
    );
  }
  const detection = await detect(path, { scanBytes: 0 });
  if (detection.container === "unknown") {
    throw new UnpackError(
      "UNSUPPORTED",
      `Cannot unpack ${
        JSON.stringify(path)
      }: neither a tar (compression: ${detection.compression}) nor a zip`,
    );
  }
  let free: number;
  try {
    free = freeBytes(parent);
  } catch (e) {
    throw new UnpackError(
      "IO",
      `Cannot unpack into ${JSON.stringify(destAbs)}: ${(e as Error).message}`,
      {
        cause: e,
      },
    );
  }
  if (free < o.minFreeDiskBytes + detection.size) {
    throw new UnpackError(
      "QUOTA_DISK",
      `Cannot unpack archive: ${free} bytes free, need at least ${
        o.minFreeDiskBytes + detection.size
      }`,
    );
  }
  const tmp = `${parent}/.${basename(destAbs)}${TEMP_MARK}${crypto.randomUUID().slice(0, 8)}`;
  try {
    Deno.mkdirSync(tmp, { mode: 0o700 });
  } catch (e) {
    throw new UnpackError(
      "IO",
      `Cannot unpack into ${JSON.stringify(destAbs)}: ${(e as Error).message}`,
      {
        cause: e,
      },
    );
  }
  const policy: Policy = {
    limits: {
      maxPathBytes: o.maxPathBytes,
      maxComponentBytes: o.maxComponentBytes,
      maxDepth: o.maxDepth,
    },
    maxEntries: o.maxEntries,
    maxTotalBytes: o.maxTotalBytes,
    maxEntryBytes: o.maxEntryBytes,
    allowInterpreterLinks: o.allowInterpreterLinks,
    allowSymlinks: o.allowSymlinks,
    allowHardlinks: o.allowHardlinks,
    preserveMtime: o.preserveMtime,
    minFreeDiskBytes: o.minFreeDiskBytes,
    diskCheckIntervalBytes: o.diskCheckIntervalBytes,
    maxReportedChanges: o.maxReportedChanges,
    parallelWritesThreshold: o.parallelWritesThreshold,
    keepWriterThread: o.keepWriterThread,
  };
  const x = new Extractor(tmp, policy);
  let compressedBytes = 0;
  try {
    if (detection.container === "tar") {
      compressedBytes = await unpackTar(path, detection, x, o);
    } else {
      const f = await Deno.open(path);
      let end;
      try {
        end = await findZipEnd(f, detection.size);
      } finally {
        f.close();
      }
      if (end === undefined) {
        throw new UnpackError("CORRUPT", "Cannot read zip: no end of central directory record");
      }
      // Loaded on demand: tar-only users skip loading the zip reader and node:zlib's inflate.
      const { unpackZip } = await import("./_zip.ts");
      const r = await unpackZip(path, end, x, {
        maxRatio: o.maxRatio,
        ratioGraceBytes: o.ratioGraceBytes,
        maxEntries: o.maxEntries,
        maxEntryBytes: o.maxEntryBytes,
        signal,
      });
      compressedBytes = r.compressed;
    }
    if (signal?.aborted) throw aborted(signal);
    x.finish();
    Deno.chmodSync(tmp, 0o755);
    if (exists(destAbs)) {
      throw new UnpackError(
        "DEST_EXISTS",
        `Cannot unpack into ${JSON.stringify(destAbs)}: it appeared meanwhile`,
      );
    }
    Deno.renameSync(tmp, destAbs);
  } catch (e) {
    x.abort();
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    if (isUnpackError(e)) throw e;
    throw new UnpackError(
      "IO",
      `Cannot unpack into ${JSON.stringify(destAbs)}: ${(e as Error).message}`,
      {
        cause: e,
      },
    );
  }
  const zip = detection.container === "zip";
  const flavor: Flavor = x.isFile("bin/conda-unpack")
    ? "conda-pack"
    : x.isFile("pyvenv.cfg")
    ? "venv"
    : zip && x.isFile("PEX-INFO") && x.isFile("__main__.py")
    ? "pex"
    : zip && x.isFile("__main__.py")
    ? "zipapp"
    : "plain";
  const result: UnpackResult = {
    dest: destAbs,
    detection,
    flavor,
    entries: x.entries,
    files: x.files,
    directories: x.dirs,
    symlinks: x.symlinks,
    hardlinks: x.hardlinks,
    linksMade: x.symlinks + x.hardlinks,
    bytesWritten: x.bytesWritten,
    compressedBytes,
    changes: x.changes,
    changeCounts: x.changeCounts,
    interpreterLinks: x.interpreterLinks,
  };
  if (flavor === "conda-pack" && o.condaUnpack) {
    try {
      result.postUnpack = await runCondaUnpack(
        destAbs,
        o.condaUnpackPython,
        o.condaUnpackTimeoutMs,
        signal,
      );
    } catch (e) {
      await Deno.remove(destAbs, { recursive: true }).catch(() => {});
      throw e;
    }
  }
  return result;
}

async function unpackTar(
  path: string,
  detection: Detection,
  x: Extractor,
  o: ReturnType<typeof validateOptions>,
): Promise<number> {
  const src = openSource(path, detection.compression);
  const parser = new TarParser(x);
  const signal = o.signal;
  const ratioed = detection.compression !== "none";
  let produced = 0;
  try {
    for await (const chunk of src.chunks) {
      if (signal?.aborted) throw aborted(signal);
      produced += chunk.length;
      if (
        ratioed && produced > o.ratioGraceBytes &&
        produced > o.maxRatio * Math.max(1, src.compressedRead())
      ) {
        throw new UnpackError(
          "QUOTA_RATIO",
          `Cannot unpack archive: ${produced} bytes from ${src.compressedRead()} compressed bytes exceeds ratio ${o.maxRatio}`,
        );
      }
      parser.push(chunk);
      if (parser.done) break;
    }
    parser.finish();
    return src.compressedRead();
  } finally {
    await src.close();
  }
}

function tail(s: string): string {
  return s.length > 4096 ? s.slice(-4096) : s;
}

async function runCondaUnpack(
  dest: string,
  python: string | undefined,
  timeoutMs: number,
  signal: AbortSignal | undefined,
): Promise<PostUnpackReport> {
  const exe = python ?? `${dest}/bin/python`;
  const command = [exe, `${dest}/bin/conda-unpack`];
  const timeout = AbortSignal.timeout(timeoutMs);
  const sig = signal ? AbortSignal.any([signal, timeout]) : timeout;
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(exe, {
      args: command.slice(1),
      cwd: dest,
      clearEnv: true,
      env: { PATH: `${dest}/bin:/usr/local/bin:/usr/bin:/bin`, LANG: "C.UTF-8", HOME: dest },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      signal: sig,
    }).output();
  } catch (e) {
    throw new UnpackError(
      "POST_UNPACK",
      `Cannot run bin/conda-unpack with ${JSON.stringify(exe)}: ${(e as Error).message}`,
      { cause: e },
    );
  }
  const dec = new TextDecoder();
  const report: PostUnpackReport = {
    command,
    code: out.code,
    stdout: tail(dec.decode(out.stdout)),
    stderr: tail(dec.decode(out.stderr)),
  };
  if (!out.success) {
    const why = timeout.aborted
      ? `timed out after ${timeoutMs} ms`
      : signal?.aborted
      ? "aborted"
      : `exit code ${out.code}${out.signal ? ` (signal ${out.signal})` : ""}`;
    throw new UnpackError(
      "POST_UNPACK",
      `Cannot finish conda-pack environment: bin/conda-unpack failed, ${why}: ${
        report.stderr.trim().slice(-500)
      }`,
      { cause: report },
    );
  }
  return report;
}

/**
 * Removes temporary directories left in `dir` by unpacks that were killed (a crash cannot
 * clean up after itself). Call it at startup, when no unpack into `dir` is running.
 *
 * @param dir Directory holding destinations.
 * @returns Names removed.
 */
export async function removeStaleTemps(dir: string): Promise<string[]> {
  const removed: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.name.startsWith(".") && e.name.includes(TEMP_MARK)) {
      await Deno.remove(`${dir}/${e.name}`, { recursive: true });
      removed.push(e.name);
    }
  }
  return removed;
}
