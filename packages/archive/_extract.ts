// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The safety layer: every member of a tar or zip goes through {@linkcode Extractor}, which
 * owns the destination tree. It writes into a fresh temporary directory that only this
 * process writes to, and keeps a model of everything it created there, so it never needs to
 * ask the file system what a path is:
 *
 * - Regular files, directories and hardlinks are created as they come. No symlink exists in
 *   the tree while they are written (symlinks are created last), so no path can lead through
 *   one; files are opened with `O_CREAT|O_EXCL`, so nothing existing is ever followed.
 * - Symlinks are recorded and created at the end, after every target was checked by a
 *   virtual `realpath` over the model (components that are recorded symlinks are expanded,
 *   `..` is applied after expansion), so chains such as `s -> .`, `e -> s/s/../..` are seen
 *   for what they are.
 * - Duplicates: the later member wins, as in tar, but by unlinking the earlier file (so a
 *   hardlink made to it keeps the old bytes) or dropping the pending symlink; nothing is
 *   written through a link. A directory is never replaced by a non-directory nor the reverse
 *   (`CONFLICT`); a member below a symlink member is refused (`THROUGH_LINK`).
 *
 * Over 600 lines on purpose: the extraction policy (names, links, modes, quotas, the atomic
 * rename) is one concept, applied entry by entry to tar and zip alike; splitting it would put the
 * checks of one entry in several files.
 *
 * @module
 */
import fs from "node:fs";
import { UnpackError } from "./error.ts";
import { CONTROL, type NameLimits, normalizeName, parentOf } from "./_paths.ts";
import type { TarMember, TarSink } from "./_tar.ts";
import { type BatchFailure, WritePool } from "./_write_pool.ts";

/** Resolved limits and switches the extractor enforces. */
export interface Policy {
  limits: NameLimits;
  maxEntries: number;
  maxTotalBytes: number;
  maxEntryBytes: number;
  allowInterpreterLinks: boolean;
  allowSymlinks: boolean;
  allowHardlinks: boolean;
  preserveMtime: boolean;
  minFreeDiskBytes: number;
  diskCheckIntervalBytes: number;
  maxReportedChanges: number;
  parallelWritesThreshold: number;
  keepWriterThread: boolean;
}

/** Kinds of change reported in {@linkcode ChangeRecord}. */
export type ChangeKind = "mode-stripped" | "replaced" | "interpreter-link";

/** One change the unpacker made to what the archive asked for. */
export interface ChangeRecord {
  /** What was changed. */
  kind: ChangeKind;
  /** Normalised entry path. */
  entry: string;
  /** Details, e.g. `"0o4777 -> 0o755"`. */
  detail: string;
}

type Node =
  | { kind: "dir" }
  | { kind: "file" }
  | { kind: "symlink"; target: string; raw: string };

const INTERPRETER = /^bin\/python(3(\.[0-9]+)?)?$/;
const MAX_HOPS = 40;
/**
 * Budget of path components walked while checking all symlinks: bounds the CPU a crafted
 * archive (many links, long chains, long targets) can make the check take (~1 s).
 */
const RESOLVE_BUDGET = 20_000_000;

function sanitizeMode(mode: number): number {
  let m = (mode & 0o777) | 0o600;
  m &= ~0o022;
  if (!(m & 0o100)) m &= ~0o011;
  return m;
}

/** Link target (as written in the archive) split into components, `.`/empty dropped. */
function targetParts(t: string): string[] {
  return t.split("/").filter((p) => p !== "" && p !== ".");
}

function isBatchFailure(e: unknown): e is BatchFailure {
  return typeof e === "object" && e !== null && !(e instanceof Error) && "entry" in e &&
    "message" in e;
}

function ioError(e: unknown, action: string, entry?: string): UnpackError {
  if (e instanceof UnpackError) return e;
  if (isBatchFailure(e)) return ioError(new Error(e.message), action, e.entry);
  const msg = e instanceof Error ? e.message : String(e);
  const code = /ENOSPC|No space left|EDQUOT|quota/i.test(msg) ? "QUOTA_DISK" : "IO";
  return new UnpackError(
    code,
    `Cannot ${action}${entry ? ` ${JSON.stringify(entry)}` : ""}: ${msg}`,
    entry === undefined ? { cause: e } : { cause: e, entry },
  );
}

/**
 * `0o666 & ~umask`, read from `/proc/self/status`: `Deno.umask()` (like Node's) reads the mask
 * by setting it and setting it back, a window in which another thread could create a file with
 * the wrong mode. -1 (never equal to a mode, so modes are always passed) when it cannot tell.
 */
function plainFileMode(): number {
  try {
    const m = /^Umask:\s+([0-7]+)$/m.exec(Deno.readTextFileSync("/proc/self/status"));
    return m ? 0o666 & ~parseInt(m[1]!, 8) : -1;
  } catch {
    return -1;
  }
}

/** Free bytes for unprivileged users on the file system holding `path`. */
export function freeBytes(path: string): number {
  const s = fs.statfsSync(path);
  return Number(s.bavail) * Number(s.bsize);
}

/** Entry kinds the extractor accepts from both parsers. */
export type Member = Pick<
  TarMember,
  "name" | "linkname" | "kind" | "typeflag" | "size" | "mode" | "mtime"
>;

/** Writes members under `root` (a fresh private directory), enforcing {@linkcode Policy}. */
export class Extractor implements TarSink {
  readonly root: string;
  #p: Policy;
  #nodes = new Map<string, Node>();
  #symlinks = new Map<string, { target: string; raw: string; entry: string }>();
  #file: Deno.FsFile | undefined;
  #fileRel = "";
  #fileEntry = "";
  #fileMtime = 0;
  #fileBytes = 0;
  #nextDiskCheck: number;
  /** Mode a file gets without an explicit mode; passing none saves an `fchmod`. */
  #plainMode = plainFileMode();
  #pool: WritePool | undefined;
  #implied = 0;
  #resolveSteps = 0;
  #smallFiles = 0;
  entries = 0;
  files = 0;
  dirs = 0;
  symlinks = 0;
  hardlinks = 0;
  bytesWritten = 0;
  changeCounts: Record<ChangeKind, number> = {
    "mode-stripped": 0,
    "replaced": 0,
    "interpreter-link": 0,
  };
  changes: ChangeRecord[] = [];
  interpreterLinks: { path: string; target: string }[] = [];

  constructor(root: string, policy: Policy) {
    this.root = root;
    this.#p = policy;
    this.#nextDiskCheck = policy.diskCheckIntervalBytes;
  }

  #change(kind: ChangeKind, entry: string, detail: string): void {
    this.changeCounts[kind]++;
    if (this.changes.length < this.#p.maxReportedChanges) {
      this.changes.push({ kind, entry, detail });
    }
  }

  /** Barrier: every queued file is on disk (or its failure thrown). */
  #drain(): void {
    if (this.#pool === undefined) return;
    try {
      this.#pool.drain();
    } catch (e) {
      throw ioError(e, "write");
    }
  }

  /** Kind of the node at a normalised path, as unpacked so far. */
  kindOf(rel: string): Node["kind"] | undefined {
    return this.#nodes.get(rel)?.kind;
  }

  #ensureDir(rel: string, entry: string): void {
    if (rel === "") return;
    const n = this.#nodes.get(rel);
    if (n !== undefined) {
      if (n.kind === "dir") return;
      if (n.kind === "symlink") {
        throw new UnpackError(
          "THROUGH_LINK",
          `Cannot unpack entry ${
            JSON.stringify(entry)
          }: "${rel}" is a symlink of the archive and nothing is written through links`,
          { entry },
        );
      }
      throw new UnpackError(
        "CONFLICT",
        `Cannot unpack entry ${JSON.stringify(entry)}: "${rel}" is a regular file, not a directory`,
        { entry },
      );
    }
    this.#ensureDir(parentOf(rel), entry);
    // Implied directories are inodes too: without this, deep names multiply the entry quota.
    if (++this.#implied > this.#p.maxEntries) {
      throw new UnpackError(
        "QUOTA_ENTRIES",
        `Cannot unpack archive: more than ${this.#p.maxEntries} directories, counting implied ones`,
        { entry },
      );
    }
    try {
      Deno.mkdirSync(this.root + "/" + rel, { mode: 0o755 });
    } catch (e) {
      throw ioError(e, "create directory", entry);
    }
    this.#nodes.set(rel, { kind: "dir" });
  }

  /** Clears the way for a non-directory at `rel`: later members win, never through links. */
  #clearForLeaf(rel: string, entry: string): void {
    const n = this.#nodes.get(rel);
    if (n === undefined) return;
    if (n.kind === "dir") {
      throw new UnpackError(
        "CONFLICT",
        `Cannot unpack entry ${JSON.stringify(entry)}: it would replace the directory "${rel}"`,
        { entry },
      );
    }
    if (n.kind === "symlink") {
      this.#symlinks.delete(rel);
    } else {
      this.#drain();
      try {
        Deno.removeSync(this.root + "/" + rel);
      } catch (e) {
        throw ioError(e, "replace", entry);
      }
    }
    this.#nodes.delete(rel);
    this.#change("replaced", rel, `earlier ${n.kind} replaced by a later member`);
  }

  #count(entry: string): void {
    if (++this.entries > this.#p.maxEntries) {
      throw new UnpackError(
        "QUOTA_ENTRIES",
        `Cannot unpack archive: more than ${this.#p.maxEntries} entries`,
        { entry },
      );
    }
  }

  #checkBytes(size: number, entry: string): void {
    if (size > this.#p.maxEntryBytes) {
      throw new UnpackError(
        "QUOTA_BYTES",
        `Cannot unpack entry ${
          JSON.stringify(entry)
        }: ${size} bytes, limit per entry is ${this.#p.maxEntryBytes}`,
        { entry },
      );
    }
    if (this.bytesWritten + size > this.#p.maxTotalBytes) {
      throw new UnpackError(
        "QUOTA_BYTES",
        `Cannot unpack archive: more than ${this.#p.maxTotalBytes} bytes in total`,
        { entry },
      );
    }
  }

  #diskCheck(entry: string): void {
    if (this.bytesWritten < this.#nextDiskCheck) return;
    this.#nextDiskCheck = this.bytesWritten + this.#p.diskCheckIntervalBytes;
    const free = freeBytes(this.root);
    if (free < this.#p.minFreeDiskBytes) {
      throw new UnpackError(
        "QUOTA_DISK",
        `Cannot unpack archive: ${free} bytes free on disk, the reserve is ${this.#p.minFreeDiskBytes}`,
        { entry },
      );
    }
  }

  /** Handles a member; `whole` is its full content when already at hand. */
  entry(m: Member, whole: Uint8Array | undefined): void {
    const entry = m.name;
    this.#count(entry);
    if (m.kind === "special") {
      throw new UnpackError(
        "SPECIAL_FILE",
        `Cannot unpack entry ${JSON.stringify(entry)}: device, FIFO or socket (type ${
          JSON.stringify(m.typeflag)
        })`,
        { entry },
      );
    }
    if (m.kind === "other") {
      throw new UnpackError(
        "UNSUPPORTED",
        `Cannot unpack entry ${JSON.stringify(entry)}: unsupported entry type ${
          JSON.stringify(m.typeflag)
        }`,
        { entry },
      );
    }
    const rel = normalizeName(m.name, this.#p.limits, entry);
    if (rel === "") {
      if (m.kind === "dir") return; // the root itself ("./"): nothing to do
      throw new UnpackError(
        "BAD_NAME",
        `Cannot unpack entry ${JSON.stringify(entry)}: names the destination itself`,
        {
          entry,
        },
      );
    }
    switch (m.kind) {
      case "dir": {
        const n = this.#nodes.get(rel);
        if (n?.kind === "symlink") this.#clearForLeaf(rel, entry);
        else if (n?.kind === "file") {
          throw new UnpackError(
            "CONFLICT",
            `Cannot unpack entry ${
              JSON.stringify(entry)
            }: it would replace the regular file "${rel}" by a directory`,
            { entry },
          );
        }
        if (this.#nodes.get(rel) === undefined) this.dirs++;
        this.#ensureDir(rel, entry);
        return;
      }
      case "file":
        this.#startFile(rel, m, whole);
        return;
      case "hardlink":
        if (!this.#p.allowHardlinks) throw this.#linksOff(entry, "hardlinks", "allowHardlinks");
        this.#hardlink(rel, m);
        return;
      case "symlink":
        if (!this.#p.allowSymlinks) throw this.#linksOff(entry, "symlinks", "allowSymlinks");
        this.#symlink(rel, m);
        return;
    }
  }

  #linksOff(entry: string, what: string, option: string): UnpackError {
    return new UnpackError(
      "BAD_LINK",
      `Cannot unpack entry ${JSON.stringify(entry)}: ${what} are not allowed (${option}: false)`,
      { entry },
    );
  }

  #startFile(rel: string, m: Member, whole: Uint8Array | undefined): void {
    const entry = m.name;
    this.#checkBytes(m.size, entry);
    this.#clearForLeaf(rel, entry);
    this.#ensureDir(parentOf(rel), entry);
    const mode = sanitizeMode(m.mode);
    if ((m.mode & 0o7022) !== 0) {
      this.#change("mode-stripped", rel, `0o${m.mode.toString(8)} -> 0o${mode.toString(8)}`);
    }
    const path = this.root + "/" + rel;
    this.#nodes.set(rel, { kind: "file" });
    this.files++;
    try {
      if (
        whole !== undefined && this.#pool === undefined &&
        ++this.#smallFiles > this.#p.parallelWritesThreshold
      ) {
        this.#pool = new WritePool(this.#p.keepWriterThread);
      }
      if (whole !== undefined && this.#pool !== undefined) {
        this.#pool.add(
          path,
          whole,
          mode === this.#plainMode ? -1 : mode,
          this.#p.preserveMtime ? m.mtime : null,
          entry,
        );
        this.bytesWritten += whole.length;
        this.#diskCheck(entry);
        return;
      }
      if (whole !== undefined) {
        // One op for open+write+close; the tree holds no symlinks yet, so the path is safe.
        Deno.writeFileSync(
          path,
          whole,
          mode === this.#plainMode ? { createNew: true } : { mode, createNew: true },
        );
        if (this.#p.preserveMtime) Deno.utimeSync(path, m.mtime, m.mtime);
        this.bytesWritten += whole.length;
        this.#diskCheck(entry);
        return;
      }
      this.#file = Deno.openSync(path, { write: true, createNew: true, mode });
    } catch (e) {
      throw ioError(e, "write", entry);
    }
    this.#fileRel = rel;
    this.#fileEntry = entry;
    this.#fileMtime = m.mtime;
    this.#fileBytes = 0;
  }

  /** Next content bytes of the current file. */
  data(chunk: Uint8Array): void {
    const f = this.#file;
    if (f === undefined) return;
    this.#fileBytes += chunk.length;
    this.bytesWritten += chunk.length;
    if (this.#fileBytes > this.#p.maxEntryBytes || this.bytesWritten > this.#p.maxTotalBytes) {
      this.#checkBytes(this.#fileBytes, this.#fileEntry);
    }
    try {
      let off = 0;
      while (off < chunk.length) off += f.writeSync(chunk.subarray(off));
    } catch (e) {
      throw ioError(e, "write", this.#fileEntry);
    }
    this.#diskCheck(this.#fileEntry);
  }

  /** The current file is complete. */
  end(): void {
    const f = this.#file;
    if (f === undefined) return;
    this.#file = undefined;
    try {
      if (this.#p.preserveMtime) f.utimeSync(this.#fileMtime, this.#fileMtime);
    } catch (e) {
      throw ioError(e, "set the time of", this.#fileEntry);
    } finally {
      f.close();
    }
  }

  /** Closes a file left open by a failure and stops the writer thread. */
  abort(): void {
    this.#pool?.close(true);
    try {
      this.#file?.close();
    } catch {
      // already closed
    }
    this.#file = undefined;
  }

  /** Bytes written to the file being streamed so far. */
  get currentFileBytes(): number {
    return this.#fileBytes;
  }

  #hardlink(rel: string, m: Member): void {
    const entry = m.name;
    if (m.linkname === "") {
      throw new UnpackError(
        "BAD_LINK",
        `Cannot unpack hardlink ${JSON.stringify(entry)}: empty target`,
        { entry },
      );
    }
    let target: string;
    try {
      target = normalizeName(m.linkname, this.#p.limits, entry);
    } catch (e) {
      if (e instanceof UnpackError && (e.code === "ABSOLUTE_PATH" || e.code === "PATH_ESCAPE")) {
        throw new UnpackError(
          "LINK_ESCAPE",
          `Cannot unpack hardlink ${JSON.stringify(entry)}: target ${
            JSON.stringify(m.linkname)
          } is outside the destination`,
          { entry, cause: e },
        );
      }
      throw e;
    }
    if (this.#nodes.get(target)?.kind !== "file" || target === rel) {
      throw new UnpackError(
        "BAD_LINK",
        `Cannot unpack hardlink ${JSON.stringify(entry)}: target ${
          JSON.stringify(m.linkname)
        } is not a regular file unpacked before it`,
        { entry },
      );
    }
    this.#clearForLeaf(rel, entry);
    this.#ensureDir(parentOf(rel), entry);
    this.#drain();
    try {
      Deno.linkSync(this.root + "/" + target, this.root + "/" + rel);
    } catch (e) {
      throw ioError(e, "create hardlink", entry);
    }
    this.#nodes.set(rel, { kind: "file" });
    this.hardlinks++;
  }

  #symlink(rel: string, m: Member): void {
    const entry = m.name;
    const raw = m.linkname;
    if (raw === "") {
      throw new UnpackError(
        "BAD_LINK",
        `Cannot unpack symlink ${JSON.stringify(entry)}: empty target`,
        { entry },
      );
    }
    if (CONTROL.test(raw) || raw.length > this.#p.limits.maxPathBytes) {
      throw new UnpackError(
        "BAD_NAME",
        `Cannot unpack symlink ${
          JSON.stringify(entry)
        }: target holds control characters or is too long`,
        { entry },
      );
    }
    this.#clearForLeaf(rel, entry);
    this.#ensureDir(parentOf(rel), entry);
    const parts = targetParts(raw);
    const target = (raw.startsWith("/") ? "/" : "") + parts.join("/");
    this.#nodes.set(rel, { kind: "symlink", target, raw });
    this.#symlinks.set(rel, { target, raw, entry });
  }

  /**
   * Resolves the link at `rel` over the model: returns the inside path it ends at, or
   * `"interpreter"` when it ends at an allowed absolute interpreter link; throws when it
   * leaves the destination or loops.
   */
  #resolve(rel: string, entry: string, interpreterOk: (p: string) => boolean): string {
    const first = this.#symlinks.get(rel)!;
    const stack = rel.split("/").slice(0, -1);
    // Components still to walk, in reverse so that taking the next one is a pop().
    const todo = targetParts(first.target).reverse();
    let hops = 0;
    if (first.target.startsWith("/")) {
      if (interpreterOk(rel)) return "interpreter";
      throw this.#escape(entry, first.raw, "is absolute");
    }
    while (todo.length) {
      this.#resolveSteps += stack.length + 1;
      if (this.#resolveSteps > RESOLVE_BUDGET) {
        throw new UnpackError(
          "BAD_LINK",
          `Cannot unpack symlink ${
            JSON.stringify(entry)
          }: the archive's symlinks are too many or too convoluted to check`,
          { entry },
        );
      }
      const c = todo.pop()!;
      if (c === "..") {
        if (stack.length === 0) throw this.#escape(entry, first.raw, "leaves the destination");
        stack.pop();
        continue;
      }
      stack.push(c);
      const here = stack.join("/");
      const link = this.#symlinks.get(here);
      if (link === undefined) continue;
      if (++hops > MAX_HOPS) {
        throw new UnpackError(
          "BAD_LINK",
          `Cannot unpack symlink ${
            JSON.stringify(entry)
          }: more than ${MAX_HOPS} links to follow (a loop?)`,
          { entry },
        );
      }
      if (link.target.startsWith("/")) {
        if (interpreterOk(here) && todo.length === 0) return "interpreter";
        throw this.#escape(
          entry,
          first.raw,
          `leads through ${JSON.stringify(here)} to an absolute path`,
        );
      }
      stack.pop();
      const parts = targetParts(link.target);
      for (let i = parts.length - 1; i >= 0; i--) todo.push(parts[i]!);
    }
    if (stack.length === 0) {
      throw this.#escape(entry, first.raw, "points at the destination itself");
    }
    return stack.join("/");
  }

  #escape(entry: string, target: string, why: string): UnpackError {
    return new UnpackError(
      "LINK_ESCAPE",
      `Cannot unpack symlink ${JSON.stringify(entry)}: target ${JSON.stringify(target)} ${why}`,
      { entry },
    );
  }

  /** Checks and creates the recorded symlinks. Call once, after the last member. */
  finish(): void {
    this.end();
    this.#drain();
    this.#pool?.close(false);
    const venv = this.#nodes.get("pyvenv.cfg")?.kind === "file";
    const allow = this.#p.allowInterpreterLinks && venv;
    const interpreterOk = (p: string): boolean => allow && INTERPRETER.test(p);
    for (const [rel, link] of this.#symlinks) {
      const r = this.#resolve(rel, link.entry, interpreterOk);
      if (r === "interpreter" && link.target.startsWith("/")) {
        this.interpreterLinks.push({ path: rel, target: link.target });
        this.#change("interpreter-link", rel, `absolute interpreter link to ${link.target} kept`);
      } else if (r === "interpreter" && !interpreterOk(rel)) {
        throw this.#escape(link.entry, link.raw, "leads to an absolute interpreter link");
      }
    }
    for (const [rel, link] of this.#symlinks) {
      try {
        Deno.symlinkSync(link.target, this.root + "/" + rel);
      } catch (e) {
        throw ioError(e, "create symlink", link.entry);
      }
      this.symlinks++;
    }
  }

  /** Whether a normalised path ended up as a regular file (or hardlink). */
  isFile(rel: string): boolean {
    return this.#nodes.get(rel)?.kind === "file";
  }
}
