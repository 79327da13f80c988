// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * What an unpacked environment says about where it can run, read from headers only: the binary
 * format and machine of its executables and shared objects, its venv/conda layout, the Python
 * version it was built for. Everything here is hostile input: the walk never follows a link,
 * reads at most a few bytes of each file it looks at, and stops at an entry and time budget
 * (reporting that it stopped) instead of going on.
 *
 * @module
 */
import { join } from "node:path";
import { readPexInfo } from "./pex_info.ts";

/** A binary format a file was recognised as. */
export type BinaryFormat = "elf" | "mach-o" | "pe";

/** One binary the walk recognised. */
export interface BinaryFact {
  /** Path relative to the environment's root. */
  path: string;
  /** Its format. */
  format: BinaryFormat;
  /** ELF: `e_machine`; others: `undefined`. */
  machine?: number;
  /** ELF: 32 or 64. */
  bits?: 32 | 64;
  /** ELF `e_type` (2 executable, 3 shared object); others: `undefined`. */
  elfType?: number;
  /** The header was cut short (a truncated file): its reading is uncertain. */
  truncated?: boolean;
}

/** What {@linkcode inspectEnvironment} found. */
export interface EnvFacts {
  /** Binaries that matter for where the env runs (at most `maxBinaries` kept). */
  binaries: BinaryFact[];
  /** How many binaries were seen in all. */
  binaryCount: number;
  /** How many of them `keep` kept (more than `binaries.length` when capped). */
  keptCount: number;
  /** `pyvenv.cfg` at the root: its `home`, `version`/`version_info`, `executable`. */
  pyvenv?: { home?: string; version?: string; executable?: string };
  /** Links `bin/python*` (relative path → target as stored). */
  interpreterLinks: { path: string; target: string }[];
  /** Real files `bin/python*` (a conda env ships its interpreter). */
  interpreterFiles: string[];
  /** `X.Y` of each `lib/pythonX.Y` directory (and `lib64/`). */
  libVersions: string[];
  /** A `conda-meta/` directory at the root. */
  conda: boolean;
  /** A Windows layout (`Scripts/python.exe`, `Lib/site-packages`). */
  windowsLayout: boolean;
  /** The root's `PEX-INFO`, when it parses. */
  pex?: PexFacts;
  /** The root has a `PEX-INFO` that does not parse (why). */
  pexInfoError?: string;
  /** The walk stopped at its budget (entries or time): what it found is a part. */
  incomplete?: "entries" | "time";
}

/** A PEX's declared needs. */
export interface PexFacts {
  /** `interpreter_constraints`, as written (e.g. `CPython==3.12.*`). */
  interpreterConstraints: string[];
  /** File names of the wheels it carries (their tags say platform and ABI). */
  distributions: string[];
}

/** Budgets of {@linkcode inspectEnvironment}. */
export interface InspectOptions {
  /**
   * Most entries looked at.
   * @default {1000000}
   */
  maxEntries?: number;
  /**
   * Give up after this many milliseconds (the facts so far are kept, marked incomplete).
   * @default {10000}
   */
  timeoutMs?: number;
  /**
   * Most binaries kept in the result.
   * @default {64}
   */
  maxBinaries?: number;
  /**
   * Which binaries to keep in the result (the rest are only counted): a caller that looks for
   * binaries unlike its own platform keeps those.
   * @default {() => true}
   */
  keep?: (binary: BinaryFact) => boolean;
}

/** ELF `e_machine` values by name, for messages. */
export const ELF_MACHINES: Readonly<Record<number, string>> = {
  3: "x86",
  8: "mips",
  20: "ppc",
  21: "ppc64",
  22: "s390x",
  40: "arm",
  62: "x86_64",
  183: "aarch64",
  243: "riscv64",
  258: "loongarch64",
};

/** How many bytes of a file the walk reads: enough for every header it recognises. */
const HEAD = 64;
/** A pyvenv.cfg is a few lines; a larger one is read only this far. */
const PYVENV_MAX = 16 * 1024;
/** Deepest directory the walk enters (the unpack policy allows 256). */
const MAX_DEPTH = 256;

/** Names of shared objects and extension modules. */
const SHARED = /\.(so(\.[0-9]+)*|dylib|pyd|dll|bundle)$/i;

/**
 * Whether a file is one whose format decides where the env runs: shared objects and extension
 * modules by name, and the environment's own programs (`bin/`, `sbin/`, `libexec/`, Windows'
 * `Scripts/`). Judged by name alone, so the walk costs one `readDir` per directory and no `stat`
 * per file (a 50k-file environment is walked in a fraction of a second).
 */
function worthReading(rel: string, name: string): boolean {
  return SHARED.test(name) || /^(bin|sbin|libexec|Scripts)\//.test(rel);
}

/**
 * Reads the header of a file and says which binary format it is, if any.
 *
 * @param head Up to 64 bytes of the file's start.
 * @param peAt Reads 4 bytes at an offset (for the PE signature), or `undefined`.
 * @returns The format and what it says, or `undefined` for anything else.
 */
export function classifyHeader(
  head: Uint8Array,
  peAt?: (offset: number) => Uint8Array | undefined,
): Omit<BinaryFact, "path"> | undefined {
  if (
    head.length >= 4 && head[0] === 0x7f && head[1] === 0x45 && head[2] === 0x4c && head[3] === 0x46
  ) {
    if (head.length < 20) return { format: "elf", truncated: true };
    const bits = head[4] === 1 ? 32 : head[4] === 2 ? 64 : undefined;
    const le = head[5] === 1 ? true : head[5] === 2 ? false : undefined;
    if (bits === undefined || le === undefined) return { format: "elf", truncated: true };
    const dv = new DataView(head.buffer, head.byteOffset, head.byteLength);
    return { format: "elf", bits, elfType: dv.getUint16(16, le), machine: dv.getUint16(18, le) };
  }
  if (head.length >= 4) {
    const dv = new DataView(head.buffer, head.byteOffset, head.byteLength);
    const m = dv.getUint32(0, false);
    if (m === 0xfeedface || m === 0xfeedfacf || m === 0xcefaedfe || m === 0xcffaedfe) {
      return { format: "mach-o" };
    }
    // 0xcafebabe is a fat Mach-O and also a Java class file: a class file's next word is its
    // version (45 and up), a fat binary's its architecture count (a handful).
    if (m === 0xcafebabe && head.length >= 8 && dv.getUint32(4, false) < 45) {
      return { format: "mach-o" };
    }
  }
  if (head.length >= 2 && head[0] === 0x4d && head[1] === 0x5a) {
    if (head.length < 64) return { format: "pe", truncated: true };
    const dv = new DataView(head.buffer, head.byteOffset, head.byteLength);
    const at = dv.getUint32(0x3c, true);
    const sig = at < 1 << 16 ? peAt?.(at) : undefined;
    if (sig && sig.length === 4 && sig[0] === 0x50 && sig[1] === 0x45 && !sig[2] && !sig[3]) {
      return { format: "pe" };
    }
    return { format: "pe", truncated: true };
  }
  return undefined;
}

/** Reads up to `len` bytes at `pos` of an open file. */
function readSome(f: Deno.FsFile, pos: number, len: number): Uint8Array {
  const buf = new Uint8Array(len);
  f.seekSync(pos, Deno.SeekMode.Start);
  let off = 0;
  while (off < len) {
    const n = f.readSync(buf.subarray(off));
    if (n === null || n === 0) break;
    off += n;
  }
  return buf.subarray(0, off);
}

/** The header of a regular file (never through a link: the walk only opens lstat'ed files). */
function headOf(path: string): Omit<BinaryFact, "path"> | undefined {
  let f: Deno.FsFile;
  try {
    f = Deno.openSync(path, { read: true });
  } catch {
    return undefined;
  }
  try {
    const head = readSome(f, 0, HEAD);
    return classifyHeader(head, (at) => readSome(f, at, 4));
  } catch {
    return undefined;
  } finally {
    f.close();
  }
}

/**
 * Parses a `pyvenv.cfg` (`key = value` lines), reading at most 16 KiB of it.
 *
 * @param path The file (a regular file: the caller checked it is no link).
 * @returns `home`, `version` (or `version_info`) and `executable`.
 */
export function readPyvenvCfg(
  path: string,
): { home?: string; version?: string; executable?: string } {
  let f: Deno.FsFile;
  try {
    f = Deno.openSync(path, { read: true });
  } catch {
    return {};
  }
  let text: string;
  try {
    text = new TextDecoder().decode(readSome(f, 0, PYVENV_MAX));
  } finally {
    f.close();
  }
  const out: { home?: string; version?: string; executable?: string } = {};
  for (const line of text.split(/\r?\n/).slice(0, 200)) {
    const m = /^\s*([A-Za-z_]+)\s*=\s*(.*?)\s*$/.exec(line);
    if (!m) continue;
    const key = m[1]!.toLowerCase();
    const value = m[2]!.slice(0, 4096);
    if (key === "home") out.home = value;
    else if (key === "executable") out.executable = value;
    else if (key === "version" || (key === "version_info" && out.version === undefined)) {
      out.version = value;
    }
  }
  return out;
}

/**
 * Walks an unpacked environment (without following links) and reads the headers that say where
 * it can run.
 *
 * @param dir The environment's root (a tree the server unpacked).
 * @param options Budgets.
 * @returns The facts.
 */
export async function inspectEnvironment(
  dir: string,
  options: InspectOptions = {},
): Promise<EnvFacts> {
  const maxEntries = options.maxEntries ?? 1_000_000;
  const deadline = Date.now() + (options.timeoutMs ?? 10_000);
  const maxBinaries = options.maxBinaries ?? 64;
  const keep = options.keep ?? (() => true);
  const facts: EnvFacts = {
    binaries: [],
    binaryCount: 0,
    keptCount: 0,
    interpreterLinks: [],
    interpreterFiles: [],
    libVersions: [],
    conda: false,
    windowsLayout: false,
  };
  let seen = 0;
  const stack: { rel: string; depth: number }[] = [{ rel: "", depth: 0 }];
  walk: while (stack.length > 0) {
    const { rel, depth } = stack.pop()!;
    let entries: Deno.DirEntry[];
    try {
      entries = [];
      for await (const e of Deno.readDir(rel === "" ? dir : join(dir, rel))) {
        entries.push(e);
        if (seen + entries.length > maxEntries) break;
      }
    } catch {
      continue;
    }
    for (const e of entries) {
      if (++seen > maxEntries) {
        facts.incomplete = "entries";
        break walk;
      }
      // Checked every entry, so a huge directory cannot run past the deadline either.
      if ((seen & 255) === 0 && Date.now() > deadline) {
        facts.incomplete = "time";
        break walk;
      }
      const path = rel === "" ? e.name : `${rel}/${e.name}`;
      if (e.isSymlink) {
        if (/^bin\/python[0-9.]*$/.test(path)) {
          try {
            facts.interpreterLinks.push({
              path,
              target: (await Deno.readLink(join(dir, path))).slice(0, 4096),
            });
          } catch { /* gone meanwhile: nothing to say */ }
        }
        continue;
      }
      if (e.isDirectory) {
        if (depth === 0 && e.name === "conda-meta") facts.conda = true;
        const lib = /^lib(64)?\/python([0-9]+\.[0-9]+)$/.exec(path);
        if (lib && !facts.libVersions.includes(lib[2]!)) facts.libVersions.push(lib[2]!);
        if (path === "Lib/site-packages" || path === "Scripts") facts.windowsLayout = true;
        if (depth + 1 < MAX_DEPTH) stack.push({ rel: path, depth: depth + 1 });
        continue;
      }
      if (!e.isFile) continue;
      const full = join(dir, path);
      if (depth === 0 && e.name === "pyvenv.cfg") facts.pyvenv = readPyvenvCfg(full);
      if (depth === 0 && e.name === "PEX-INFO") {
        const r = readPexInfoFile(full);
        if ("error" in r) facts.pexInfoError = r.error;
        else facts.pex = r;
      }
      if (/^bin\/python[0-9.]*$/.test(path)) facts.interpreterFiles.push(path);
      if (/^Scripts\/python(w)?\.exe$/i.test(path)) facts.windowsLayout = true;
      if (!worthReading(path, e.name)) continue;
      const fact = headOf(full);
      if (!fact) continue;
      facts.binaryCount++;
      const b = { path, ...fact };
      if (keep(b)) {
        facts.keptCount++;
        if (facts.binaries.length < maxBinaries) facts.binaries.push(b);
      }
    }
  }
  return facts;
}

/** Reads a PEX-INFO file of a tree (at most 1 MiB). */
function readPexInfoFile(path: string): PexFacts | { error: string } {
  let f: Deno.FsFile;
  try {
    f = Deno.openSync(path, { read: true });
  } catch {
    return { error: "cannot be read" };
  }
  try {
    const bytes = readSome(f, 0, (1 << 20) + 1);
    if (bytes.length > 1 << 20) return { error: "is larger than 1 MiB" };
    return readPexInfo(bytes);
  } finally {
    f.close();
  }
}
