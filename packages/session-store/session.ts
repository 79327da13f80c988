// Copyright 2026 the Valise authors. Apache-2.0 license.
import { dirname, join } from "node:path";
import { type ArtifactName, executorViewName, parseArtifactName } from "@valise/protocol";
import { Mutex, removeAtomicLeftovers } from "./_fs.ts";
import type { BlobStore } from "./blob_store.ts";
import type { TreeInfo, TreeStore } from "./tree_store.ts";
import { PYTHON_EXEC_KEY, SessionConfig } from "./config.ts";
import { SessionError } from "./errors.ts";
import { type ArtifactRecord, type SessionManifest, writeManifest } from "./manifest.ts";
import type { StagedArtifact, UploadLimits } from "./upload.ts";
import { Upload } from "./upload.ts";

/** Unpacks archive blobs into shared trees. */
export interface ArchiveUnpacker {
  /**
   * Identifies the unpack options (lowercase letters and digits, at most 32): a tree is shared
   * only between adds unpacked with the same options.
   */
  readonly fingerprint: string;
  /** Unpacks `archive` into `dest`, which does not exist yet, atomically. */
  unpack(archive: string, dest: string, options: { signal?: AbortSignal }): Promise<TreeInfo>;
  /** Frees what the unpacker holds (threads); called when the store closes. */
  close?(): void;
}

/** Limits on what sessions and users may store. */
export interface Quotas {
  /** Most bytes of artifacts one session may hold. */
  readonly maxSessionBytes: number;
  /** Most artifacts one session may hold. */
  readonly maxSessionArtifacts: number;
  /** Most bytes of artifacts all sessions of one user may hold. */
  readonly maxUserBytes: number;
  /** Uploads are refused, and stopped, when the data directory's free space falls below this. */
  readonly minFreeBytes: number;
}

/** What a session needs from its store. */
export interface SessionContext {
  /** Content-addressed blobs. */
  readonly blobs: BlobStore;
  /** Where uploads stage their bytes. */
  readonly stagingRoot: string;
  /** Upload limits. */
  readonly limits: UploadLimits;
  /** Unpacks `archives/` artifacts; without it archives are stored but not unpacked. */
  readonly unpack: ArchiveUnpacker | undefined;
  /** Shared unpacked archives. */
  readonly trees: TreeStore;
  /** Storage limits. */
  readonly quotas: Quotas;
  /** Bytes held by all sessions of a user. */
  userBytes(userId: string): number;
  /** Free bytes on the data directory's file system. */
  freeBytes(): number;
  /**
   * Keeps a blob (`b:<sha256>`) or tree (`t:<key>`) from eviction until the returned
   * function is called; waits for an eviction of it that is already under way.
   */
  pin(id: string): Promise<() => void>;
  /** Records that a blob or tree was just used (for least-recently-used eviction). */
  touch(id: string): void;
}

/** The outcome of committing one stream's artifacts. */
export interface CommitResult {
  /** One entry per artifact received, in order: its name and whether its CRC matched. */
  readonly summaries: { name: string; crcOk: boolean }[];
  /** Artifacts that were refused; the others were committed. */
  readonly errors: SessionError[];
}

/** The key under which an artifact is held in a session. */
export function artifactKey(name: ArtifactName): string {
  return name.alias === undefined ? name.path : `${name.path}#${name.alias}`;
}

/**
 * One client session: a directory of its own, keyed by (user id, session id), holding the
 * session's artifacts, its working directory as Python workers see it, and its config.
 *
 * Layout under {@linkcode Session.dir}: `manifest.json` (the durable truth), `artifacts/`
 * (by artifact name, as Spark stores them) and `root/` (the executor view and the workers'
 * working directory: `files/x` and `pyfiles/x` as `x`, `archives/a.tar.gz#env` as `env/`).
 * Files in both are hard links to read-only, content-addressed blobs.
 */
export class Session {
  /** The client's user id. */
  readonly userId: string;
  /** The client's session id. */
  readonly sessionId: string;
  /** The id the server gave this session (stable, never equal to `sessionId`). */
  readonly serverSideSessionId: string;
  /** The session's own directory. */
  readonly dir: string;
  /** The working directory of the session's workers. */
  readonly root: string;
  /** Artifacts by name. */
  readonly artifactsDir: string;
  /** The session's config. */
  readonly config: SessionConfig;
  /** When the session was last used (ms since the epoch). */
  lastAccess: number;
  #ctx: SessionContext;
  #manifest: SessionManifest;
  #lock = new Mutex();
  #closed = false;
  #busy = 0;

  /** Use the store's `session()`; this constructor does not touch the disk. */
  constructor(dir: string, manifest: SessionManifest, ctx: SessionContext) {
    this.dir = dir;
    this.root = join(dir, "root");
    this.artifactsDir = join(dir, "artifacts");
    this.userId = manifest.userId;
    this.sessionId = manifest.sessionId;
    this.serverSideSessionId = manifest.serverSideSessionId;
    this.#manifest = manifest;
    this.#ctx = ctx;
    this.lastAccess = Date.now();
    this.config = new SessionConfig(manifest.config, () => this.#persist());
  }

  /** Whether the session was released. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Whether work is in progress (uploads, runs): idle expiry skips busy sessions. */
  get busy(): boolean {
    return this.#busy > 0;
  }

  /** Marks work in progress until the returned function is called. */
  hold(): () => void {
    this.#busy++;
    let done = false;
    return () => {
      if (!done) {
        done = true;
        this.#busy--;
        this.lastAccess = Date.now();
      }
    };
  }

  /** The committed artifacts. */
  artifacts(): ArtifactRecord[] {
    return Object.values(this.#manifest.artifacts);
  }

  /** The record for an artifact name, if the session holds it. */
  artifact(rawName: string): ArtifactRecord | undefined {
    let parsed: ArtifactName;
    try {
      parsed = parseArtifactName(rawName);
    } catch {
      return undefined;
    }
    return this.#manifest.artifacts[artifactKey(parsed)];
  }

  /**
   * Entries of the worker's `sys.path` after the working directory itself: `.zip`, `.egg`
   * and `.jar` pyfiles, as Spark's `pythonIncludes`.
   */
  pythonPath(): string[] {
    return this.artifacts()
      .filter((a) => a.kind === "pyfiles" && a.view && /\.(zip|egg|jar)$/i.test(a.view))
      .sort((a, b) => a.addedAt - b.addedAt)
      .map((a) => a.view!);
  }

  /** The interpreter the session chose (`spark.sql.execution.pyspark.python`), if any. */
  interpreter(): string | undefined {
    return this.config.value(PYTHON_EXEC_KEY);
  }

  /** Opens a staging area for one AddArtifacts stream. */
  beginUpload(): Promise<Upload> {
    try {
      this.#checkOpen();
      return Upload.create(this.#ctx.stagingRoot, this.#uploadLimits());
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * Makes the staged artifacts of a finished stream visible, each atomically. Artifacts whose
   * CRC failed are dropped and reported. A name the session already holds with the same bytes
   * is a no-op; with other bytes, or a name that would take another artifact's place in the
   * working directory, it is refused with `ARTIFACT_ALREADY_EXISTS` while the rest of the
   * stream is still committed.
   */
  commit(upload: Upload): Promise<CommitResult> {
    return this.#lock.run(async () => {
      this.#checkOpen();
      const summaries: { name: string; crcOk: boolean }[] = [];
      const errors: SessionError[] = [];
      let changed = false;
      for (const staged of upload.staged) {
        summaries.push({ name: staged.name.raw, crcOk: staged.crcOk });
        if (!staged.crcOk) {
          await Deno.remove(staged.file).catch(() => {});
          continue;
        }
        try {
          changed = (await this.#commitOne(staged)) || changed;
        } catch (e) {
          await Deno.remove(staged.file).catch(() => {});
          if (e instanceof SessionError) errors.push(e);
          else throw e;
        }
      }
      if (changed) await this.#writeManifest();
      return { summaries, errors };
    });
  }

  /**
   * Adds an artifact whose bytes the server already holds, by digest, without an upload.
   *
   * @throws {SessionError} `BLOB_NOT_FOUND` when the server does not hold the digest.
   */
  attach(rawName: string, sha256: string): Promise<void> {
    return this.#lock.run(async () => {
      this.#checkOpen();
      const name = parseArtifactName(rawName);
      let size = 0;
      try {
        size = (await Deno.stat(this.#ctx.blobs.path(sha256))).size;
      } catch { /* #place reports the missing blob once it holds the pin */ }
      if (await this.#place(name, sha256, size, undefined)) {
        await this.#writeManifest();
      }
    });
  }

  async #commitOne(staged: StagedArtifact): Promise<boolean> {
    return await this.#place(staged.name, staged.sha256, staged.size, staged.file);
  }

  /** Bytes of all committed artifacts. */
  bytes(): number {
    return this.artifacts().reduce((n, a) => n + a.size, 0);
  }

  /** Puts one artifact in place; returns whether the manifest changed. */
  async #place(
    name: ArtifactName,
    sha256: string,
    size: number,
    stagedFile: string | undefined,
  ): Promise<boolean> {
    const key = artifactKey(name);
    const existing = this.#manifest.artifacts[key];
    if (existing) {
      if (existing.sha256 === sha256) {
        if (stagedFile) await Deno.remove(stagedFile).catch(() => {});
        return false;
      }
      throw new SessionError(
        "ARTIFACT_ALREADY_EXISTS",
        `The artifact ${name.raw} already exists. Please choose a different name for the new ` +
          `artifact because it cannot be overwritten.`,
        { parameters: { normalizedRemoteRelativePath: name.path } },
      );
    }
    // In Spark's layout a name cannot be both a file and a directory of other names.
    const nested = this.artifacts().find((a) =>
      a.key.startsWith(`${key}/`) || key.startsWith(`${a.key}/`)
    );
    if (nested) {
      throw new SessionError(
        "ARTIFACT_ALREADY_EXISTS",
        `The artifact ${name.raw} cannot be stored: ${nested.name} is already stored under ` +
          `${key.startsWith(`${nested.key}/`) ? "a parent" : "a child"} of that path.`,
        { parameters: { normalizedRemoteRelativePath: name.path } },
      );
    }
    const view = executorViewName(name);
    if (view !== undefined) {
      const taken = this.artifacts().find((a) => a.view === view);
      if (taken) {
        throw new SessionError(
          "ARTIFACT_ALREADY_EXISTS",
          `The artifact ${name.raw} would appear as ./${view} in the session's working directory, ` +
            `where ${taken.name} already is. Please choose a different name.`,
        );
      }
    }
    if (name.kind === "cache" && name.rest !== sha256) {
      throw new SessionError(
        "CACHE_ARTIFACT_HASH_MISMATCH",
        `The artifact ${name.raw} is named by sha256 ${name.rest} but its bytes hash to ${sha256}.`,
      );
    }
    const q = this.#ctx.quotas;
    const count = this.artifacts().length;
    if (count + 1 > q.maxSessionArtifacts) {
      throw new SessionError(
        "QUOTA_EXCEEDED",
        `Cannot add ${name.raw}: the session holds ${count} artifacts, the most a session may ` +
          `hold is ${q.maxSessionArtifacts}.`,
        { reason: "SESSION_ARTIFACTS" },
      );
    }
    const unpacker = name.kind === "archives" && view !== undefined ? this.#ctx.unpack : undefined;
    const treeKey = unpacker ? `${sha256}-${unpacker.fingerprint}` : undefined;
    // Pinned from before the existence check to after the links are made: eviction cannot
    // slip in between (the race behind Ray's most common runtime_env failure).
    const unpinBlob = await this.#ctx.pin(`b:${sha256}`);
    const unpinTree = treeKey ? await this.#ctx.pin(`t:${treeKey}`) : () => {};
    try {
      if (!stagedFile && !(await this.#ctx.blobs.has(sha256))) {
        throw new SessionError(
          "BLOB_NOT_FOUND",
          `Cannot attach ${name.raw}: the server holds no blob with sha256 ${sha256}; upload it instead.`,
        );
      }
      const blob = stagedFile
        ? (await this.#ctx.blobs.adopt(stagedFile, sha256)).path
        : this.#ctx.blobs.path(sha256);
      const byName = join(this.artifactsDir, key);
      await linkFresh(blob, byName);
      if (view !== undefined) {
        const target = join(this.root, view);
        try {
          if (treeKey && unpacker) {
            // Not cancelled with this client's call: the tree is shared, and other sessions may
            // be waiting for it; a finished tree is kept for the next add.
            const tree = await this.#ctx.trees.ensure(
              treeKey,
              (dest) => unpacker.unpack(blob, dest, {}),
            );
            await symlinkFresh(tree.path, target);
          } else {
            await linkFresh(blob, target);
          }
        } catch (e) {
          await Deno.remove(byName).catch(() => {});
          if (e instanceof SessionError) throw e;
          const code = (e as { code?: unknown }).code;
          throw new SessionError(
            "ARTIFACT_UNPACK_FAILED",
            `Cannot add ${name.raw}: ${e instanceof Error ? e.message : String(e)}`,
            { cause: e, ...(typeof code === "string" ? { reason: code } : {}) },
          );
        }
      }
      this.#ctx.touch(`b:${sha256}`);
      if (treeKey) this.#ctx.touch(`t:${treeKey}`);
      const record: ArtifactRecord = {
        key,
        name: name.raw,
        path: name.path,
        kind: name.kind,
        ...(name.alias !== undefined ? { alias: name.alias } : {}),
        ...(view !== undefined ? { view } : {}),
        ...(treeKey !== undefined ? { tree: treeKey } : {}),
        sha256,
        size,
        addedAt: Date.now(),
      };
      this.#manifest.artifacts[key] = record;
      return true;
    } finally {
      unpinTree();
      unpinBlob();
    }
  }

  /**
   * Brings the directories back in line with the manifest after a restart: links an
   * interrupted commit made but never recorded are removed, recorded ones that are missing
   * are made again. Files the session's workers wrote are left alone.
   */
  async reconcile(blobInodes: Set<string>): Promise<void> {
    const records = this.artifacts();
    const keys = new Set(records.map((r) => r.key));
    const views = new Set(records.flatMap((r) => (r.view ? [r.view] : [])));
    await Deno.mkdir(this.root, { recursive: true });
    await Deno.mkdir(this.artifactsDir, { recursive: true });
    await removeAtomicLeftovers(this.dir);
    for (const rel of await listFiles(this.artifactsDir)) {
      if (!keys.has(rel)) await Deno.remove(join(this.artifactsDir, rel));
    }
    const leftovers: string[] = [];
    for await (const e of Deno.readDir(this.root)) {
      if (views.has(e.name)) continue;
      const path = join(this.root, e.name);
      const st = await Deno.lstat(path);
      const intoTrees = st.isSymlink &&
        (await Deno.readLink(path)).startsWith(this.#ctx.trees.root + "/");
      // A link to a blob, or to a tree, that no record names is the leftover of an interrupted
      // commit; anything else here was written by the session's workers and stays.
      if (intoTrees || (st.isFile && blobInodes.has(`${st.dev}:${st.ino}`))) leftovers.push(path);
    }
    for (const path of leftovers) await Deno.remove(path);
    for (const r of records) {
      const blob = this.#ctx.blobs.path(r.sha256);
      await linkFresh(blob, join(this.artifactsDir, r.key)).catch(() => {});
      if (r.view === undefined) continue;
      const target = join(this.root, r.view);
      if (r.tree) await symlinkFresh(this.#ctx.trees.path(r.tree), target).catch(() => {});
      else await linkFresh(blob, target).catch(() => {});
    }
  }

  /** Upload limits for one stream of this session: quotas and the free-disk floor. */
  #uploadLimits(): UploadLimits {
    const q = this.#ctx.quotas;
    const sessionBytes = this.bytes();
    const userBytes = this.#ctx.userBytes(this.userId);
    let incoming = 0;
    let sinceDiskCheck = 0;
    const checkDisk = (more: number) => {
      const free = this.#ctx.freeBytes();
      if (free - more < q.minFreeBytes) {
        throw new SessionError(
          "QUOTA_EXCEEDED",
          `Cannot store more artifacts: the server's disk has ${free} bytes free and keeps at ` +
            `least ${q.minFreeBytes} free.`,
          { reason: "DISK_FLOOR" },
        );
      }
    };
    checkDisk(0);
    return {
      maxArtifactBytes: this.#ctx.limits.maxArtifactBytes,
      admit: (n) => {
        incoming += n;
        if (sessionBytes + incoming > q.maxSessionBytes) {
          throw new SessionError(
            "QUOTA_EXCEEDED",
            `Cannot store more artifacts in session ${this.sessionId}: it would hold ` +
              `${
                sessionBytes + incoming
              } bytes, the limit per session is ${q.maxSessionBytes} bytes.`,
            { reason: "SESSION_BYTES" },
          );
        }
        if (userBytes + incoming > q.maxUserBytes) {
          throw new SessionError(
            "QUOTA_EXCEEDED",
            `Cannot store more artifacts for user ${JSON.stringify(this.userId)}: their sessions ` +
              `would hold ${
                userBytes + incoming
              } bytes, the limit per user is ${q.maxUserBytes} bytes.`,
            { reason: "USER_BYTES" },
          );
        }
        sinceDiskCheck += n;
        if (sinceDiskCheck >= 2 ** 20) {
          sinceDiskCheck = 0;
          checkDisk(0);
        }
      },
    };
  }

  /** Marks the session closed; the store removes its directory. */
  markClosed(): void {
    this.#closed = true;
  }

  #checkOpen(): void {
    if (this.#closed) {
      throw new SessionError(
        "INVALID_HANDLE.SESSION_CLOSED",
        `The session ${this.sessionId} was released and cannot be used.`,
      );
    }
  }

  #persist(): Promise<void> {
    return this.#lock.run(() => this.#writeManifest());
  }

  #writeManifest(): Promise<void> {
    this.#manifest.config = this.config.toJSON();
    return writeManifest(join(this.dir, "manifest.json"), this.#manifest);
  }
}

/** Points a symlink at `path` to `target`, replacing only a link to that same target. */
async function symlinkFresh(target: string, path: string): Promise<void> {
  try {
    await Deno.symlink(target, path);
  } catch (e) {
    if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
    const st = await Deno.lstat(path);
    if (st.isSymlink && (await Deno.readLink(path)) === target) return;
    throw new SessionError(
      "ARTIFACT_ALREADY_EXISTS",
      `Cannot place the archive at ${path}: something else is already there.`,
    );
  }
}

async function listFiles(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(prefix ? join(dir, prefix) : dir)) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory) out.push(...await listFiles(dir, rel));
    else out.push(rel);
  }
  return out;
}

/**
 * Hard-links `blob` at `path`, replacing a leftover of an interrupted commit (same content)
 * but never anything else.
 */
async function linkFresh(blob: string, path: string): Promise<void> {
  try {
    await Deno.mkdir(dirname(path), { recursive: true });
  } catch (e) {
    // A file where a directory of the path should be (an interrupted commit's leftover).
    throw new SessionError(
      "ARTIFACT_ALREADY_EXISTS",
      `Cannot place the artifact at ${path}: part of its path is already a file.`,
      { cause: e },
    );
  }
  try {
    await Deno.link(blob, path);
  } catch (e) {
    if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
    const [a, b] = await Promise.all([Deno.lstat(blob), Deno.lstat(path)]);
    if (a.ino === b.ino && a.dev === b.dev) return;
    throw new SessionError(
      "ARTIFACT_ALREADY_EXISTS",
      `Cannot place the artifact at ${path}: a different file is already there.`,
    );
  }
}
