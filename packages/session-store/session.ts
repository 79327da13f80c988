// Copyright 2026 the Valise authors. Apache-2.0 license.
import { dirname, join } from "node:path";
import { type ArtifactName, executorViewName, parseArtifactName } from "@valise/protocol";
import { exists, Mutex, removeAll } from "./_fs.ts";
import type { BlobStore } from "./blob_store.ts";
import { PYTHON_EXEC_KEY, SessionConfig } from "./config.ts";
import { SessionError } from "./errors.ts";
import { type ArtifactRecord, type SessionManifest, writeManifest } from "./manifest.ts";
import type { StagedArtifact, UploadLimits } from "./upload.ts";
import { Upload } from "./upload.ts";

/** Unpacks an archive blob into a directory that does not exist yet. */
export type ArchiveUnpacker = (
  archive: string,
  dest: string,
  options: { signal?: AbortSignal },
) => Promise<void>;

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
    this.#checkOpen();
    return Upload.create(this.#ctx.stagingRoot, this.#ctx.limits);
  }

  /**
   * Makes the staged artifacts of a finished stream visible, each atomically. Artifacts whose
   * CRC failed are dropped and reported. A name the session already holds with the same bytes
   * is a no-op; with other bytes, or a name that would take another artifact's place in the
   * working directory, it is refused with `ARTIFACT_ALREADY_EXISTS` while the rest of the
   * stream is still committed.
   */
  commit(upload: Upload, options: { signal?: AbortSignal } = {}): Promise<CommitResult> {
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
          changed = (await this.#commitOne(staged, options.signal)) || changed;
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
  attach(rawName: string, sha256: string, options: { signal?: AbortSignal } = {}): Promise<void> {
    return this.#lock.run(async () => {
      this.#checkOpen();
      const name = parseArtifactName(rawName);
      if (!(await this.#ctx.blobs.has(sha256))) {
        throw new SessionError(
          "BLOB_NOT_FOUND",
          `Cannot attach ${rawName}: the server holds no blob with sha256 ${sha256}; upload it instead.`,
        );
      }
      const st = await Deno.stat(this.#ctx.blobs.path(sha256));
      if (await this.#place(name, sha256, st.size, undefined, options.signal)) {
        await this.#writeManifest();
      }
    });
  }

  async #commitOne(staged: StagedArtifact, signal: AbortSignal | undefined): Promise<boolean> {
    return await this.#place(staged.name, staged.sha256, staged.size, staged.file, signal);
  }

  /** Puts one artifact in place; returns whether the manifest changed. */
  async #place(
    name: ArtifactName,
    sha256: string,
    size: number,
    stagedFile: string | undefined,
    signal: AbortSignal | undefined,
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
    const blob = stagedFile
      ? (await this.#ctx.blobs.adopt(stagedFile, sha256)).path
      : this.#ctx.blobs.path(sha256);
    const byName = join(this.artifactsDir, key);
    await linkFresh(blob, byName);
    if (view !== undefined) {
      const target = join(this.root, view);
      try {
        if (name.kind === "archives" && this.#ctx.unpack) {
          if (await exists(target)) await removeAll(target);
          await this.#ctx.unpack(blob, target, signal ? { signal } : {});
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
    const record: ArtifactRecord = {
      key,
      name: name.raw,
      path: name.path,
      kind: name.kind,
      ...(name.alias !== undefined ? { alias: name.alias } : {}),
      ...(view !== undefined ? { view } : {}),
      sha256,
      size,
      addedAt: Date.now(),
    };
    this.#manifest.artifacts[key] = record;
    return true;
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

/**
 * Hard-links `blob` at `path`, replacing a leftover of an interrupted commit (same content)
 * but never anything else.
 */
async function linkFresh(blob: string, path: string): Promise<void> {
  await Deno.mkdir(dirname(path), { recursive: true });
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
