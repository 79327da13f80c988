// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * One session: a directory of its own, its manifest, and every change to it (commit, attach,
 * quotas, restore). Over 600 lines on purpose: each of these changes holds the session's lock
 * and writes its manifest, and splitting them would scatter that invariant; the links it is made
 * of are in `_links.ts`.
 *
 * @module
 */
import { join } from "node:path";
import {
  type ArtifactName,
  ArtifactNameError,
  executorViewName,
  parseArtifactName,
} from "@valise/protocol";
import { Mutex, removeAll, removeAtomicLeftovers } from "./_fs.ts";
import type { BlobStore } from "./blob_store.ts";
import type { TreeInfo, TreeStore } from "./tree_store.ts";
import { PYTHON_EXEC_KEY, SessionConfig } from "./config.ts";
import { SessionError } from "./errors.ts";
import {
  linkFresh,
  listFiles,
  placeInRoot,
  removeByName,
  symlinkFresh,
  unlinkViewSync,
} from "./_links.ts";
import {
  type ArtifactRecord,
  type PipLayerRecord,
  type SessionManifest,
  writeManifest,
} from "./manifest.ts";
import type { StagedArtifact, UploadLimits } from "./upload.ts";
import {
  mergeAdds,
  mergeConfig,
  type RegistryEntry,
  type SessionRegistry,
  type SharedArtifact,
  type SharedSession,
} from "./registry.ts";
import { Upload } from "./upload.ts";
import { WRITE_BEHIND_DEPTH, WRITE_BUFFER_BYTES } from "./_write_behind.ts";

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
  /** Most bytes of artifacts, and of the trees they unpack to, one session may hold. */
  readonly maxSessionBytes: number;
  /** Most artifacts one session may hold. */
  readonly maxSessionArtifacts: number;
  /** Most entries (files, directories, links) of unpacked trees one session may hold. */
  readonly maxSessionEntries: number;
  /** Most bytes of artifacts and unpacked trees all sessions of one user may hold. */
  readonly maxUserBytes: number;
  /** Most live sessions one user may have. */
  readonly maxSessionsPerUser: number;
  /** Most live sessions in all. */
  readonly maxSessions: number;
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
  /** Shared pip layers (installed requirement sets), built and kept as trees are. */
  readonly layers: TreeStore;
  /** Storage limits. */
  readonly quotas: Quotas;
  /**
   * Bytes held by all sessions of a user but `except` (in a cluster: over the cluster's
   * records), with adds held for quota checks.
   */
  userBytes(userId: string, except?: Session): number;
  /**
   * Counts `bytes` in `userBytes(userId)` from a quota check until the returned function is
   * called (once the add is recorded, or refused), so that adds running at once in several of
   * the user's sessions cannot all pass the same check.
   */
  holdUserBytes(userId: string, bytes: number): () => void;
  /** Free bytes on the data directory's file system. */
  freeBytes(): number;
  /**
   * Keeps a blob (`b:<sha256>`) or tree (`t:<key>`) from eviction until the returned
   * function is called; waits for an eviction of it that is already under way.
   */
  pin(id: string): Promise<() => void>;
  /** Records that a blob or tree was just used (for least-recently-used eviction). */
  touch(id: string): void;
  /**
   * The cluster's registry, when the store is one node of several: commits and config changes
   * are recorded there, and a session is brought in line with it before use.
   */
  readonly registry?: SessionRegistry | undefined;
  /**
   * Records that an add found a blob or tree already there (a cache hit).
   * @default {undefined} not counted
   */
  hit?(id: string): void;
  /**
   * Asks for a garbage collection soon (after a removal left blobs or trees unreferenced).
   * @default {undefined} none
   */
  collectSoon?(): void;
  /**
   * Checks an environment an add brings (an unpacked archive's tree, or a `.pex` file) against
   * the server that will run it, before the add is linked or recorded: throws a
   * `SessionError` (`ENVIRONMENT_*`) for a certain mismatch the session did not opt out of,
   * else returns the warnings to record with the artifact.
   * @default {undefined} no checks
   */
  checkEnvironment?(check: EnvironmentCheck): Promise<string[]>;
  /**
   * Told when work in the session ended (a use: the cluster's record may need to hear of it).
   * @default {undefined} nobody
   */
  used?(session: Session): void;
}

/** What {@linkcode SessionContext.checkEnvironment} is asked to check. */
export interface EnvironmentCheck {
  /** The session adding it (its config says whether to fail or warn). */
  readonly session: Session;
  /** The artifact's name as sent. */
  readonly name: string;
  /** The unpacked tree (store path), for an archive. */
  readonly tree?: string;
  /** The blob (store path), for a `.pex` added as a file. */
  readonly pexFile?: string;
}

/** The outcome of committing one stream's artifacts. */
export interface CommitResult {
  /** One entry per artifact received, in order: its name and whether its CRC matched. */
  readonly summaries: { name: string; crcOk: boolean }[];
  /** Artifacts that were refused; the others were committed. */
  readonly errors: SessionError[];
}

/** What {@linkcode Session.remove} did. */
export interface RemoveResult {
  /** The records removed, in request order. */
  readonly removed: ArtifactRecord[];
  /** Bytes given back to the session's and its user's quotas (artifacts and unpacked trees). */
  readonly freedBytes: number;
  /**
   * Work that was in progress (runs, uploads) when they were removed: the working directory
   * keeps showing the removed artifacts until all of it has ended.
   */
  readonly inProgress: number;
}

/** View entries that stay until the work that was in progress when they were removed ends. */
interface PendingUnlink {
  /** The holds still to end. */
  readonly waitFor: Set<number>;
  /** The entries' names in `ro/` and `root/`. */
  readonly views: string[];
  /** Lets the blobs and trees go (they are kept from eviction meanwhile). */
  readonly unpin: () => void;
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
  /**
   * The working directory of the session's workers, which they may write. The server puts only
   * symlinks here (`x` → `../ro/x`), never a link to shared bytes, and never follows anything
   * in it.
   */
  readonly root: string;
  /**
   * The session's read-only view of its artifacts (`<dir>/ro`): hard links to blobs and
   * symlinks to shared trees, written by the server only. Workers see it read-only.
   */
  readonly viewDir: string;
  /** Artifacts by name (Spark's layout; never shown to workers). */
  readonly artifactsDir: string;
  /** The session's config. */
  readonly config: SessionConfig;
  /** When the session was last used (ms since the epoch). */
  lastAccess: number;
  /**
   * The last use the cluster's record holds (`usedAt`), as this node last saw it; `undefined`
   * outside a cluster.
   */
  recordedUseAt: number | undefined;
  #ctx: SessionContext;
  #manifest: SessionManifest;
  #lock = new Mutex();
  #closed = false;
  #holdSeq = 0;
  #holds = new Set<number>();
  #pending: PendingUnlink[] = [];
  /** The registry revision the session was last brought in line with (cluster only). */
  #revision: number | undefined;
  /** The config as of that revision: what this node changed since is merged, not replaced. */
  #baseConfig: Record<string, string>;

  /** Use the store's `session()`; this constructor does not touch the disk. */
  constructor(dir: string, manifest: SessionManifest, ctx: SessionContext) {
    this.dir = dir;
    this.root = join(dir, "root");
    this.viewDir = join(dir, "ro");
    this.artifactsDir = join(dir, "artifacts");
    this.userId = manifest.userId;
    this.sessionId = manifest.sessionId;
    this.serverSideSessionId = manifest.serverSideSessionId;
    this.#manifest = manifest;
    this.#ctx = ctx;
    this.lastAccess = Date.now();
    this.config = new SessionConfig(manifest.config, () => this.#persist());
    this.#baseConfig = { ...manifest.config };
  }

  /** The cluster registry's revision this node's copy matches, if it was brought in line. */
  get revision(): number | undefined {
    return this.#revision;
  }

  /** The session as the cluster's registry records it (what this node holds). */
  shared(): SharedSession {
    return {
      userId: this.userId,
      sessionId: this.sessionId,
      serverSideSessionId: this.serverSideSessionId,
      createdAt: this.#manifest.createdAt,
      usedAt: this.lastAccess,
      artifacts: this.artifacts().map(toShared),
      config: this.config.toJSON(),
    };
  }

  /**
   * Brings this node's copy in line with the cluster's record: artifacts another node added
   * are fetched (verified by sha256), unpacked and linked; ones the record does not hold are
   * unlinked; the config is the record's.
   */
  sync(entry: RegistryEntry): Promise<void> {
    return this.#lock.run(async () => {
      this.#checkOpen();
      await this.#syncLocked(entry);
    });
  }

  /** Whether the session was released. */
  get closed(): boolean {
    return this.#closed;
  }

  /** When the session was created (ms since the epoch). */
  get createdAt(): number {
    return this.#manifest.createdAt;
  }

  /** The host uid and gid its workers run as, when it has its own. */
  get worker(): { uid: number; gid: number } | undefined {
    return this.#manifest.worker;
  }

  /** Whether work is in progress (uploads, runs): idle expiry skips busy sessions. */
  get busy(): boolean {
    return this.#holds.size > 0;
  }

  /** How many pieces of work (runs, uploads, attaches) are in progress. */
  get inProgress(): number {
    return this.#holds.size;
  }

  /**
   * Marks work in progress until the returned function is called. Work in progress keeps the
   * working directory as it was when it started: entries of artifacts removed meanwhile go when
   * it ends.
   */
  hold(): () => void {
    const id = ++this.#holdSeq;
    this.#holds.add(id);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.#holds.delete(id);
      this.lastAccess = Date.now();
      this.#settle(id);
      this.#ctx.used?.(this);
    };
  }

  /** Removes the view entries no longer waiting for work in progress. */
  #settle(id: number): void {
    if (this.#pending.length === 0) return;
    const ready = this.#pending.filter((p) => (p.waitFor.delete(id), p.waitFor.size === 0));
    if (ready.length === 0) return;
    this.#pending = this.#pending.filter((p) => p.waitFor.size > 0);
    for (const p of ready) {
      // Synchronously, so that a run or an add starting next sees the directory without them.
      try {
        for (const v of p.views) unlinkViewSync(this.viewDir, this.root, v);
      } catch {
        // Left for the next start's reconcile, which removes unrecorded links.
      } finally {
        p.unpin();
      }
    }
    this.#ctx.collectSoon?.();
  }

  /**
   * Removes artifacts from the session, all or none: the manifest first (so that listings, quotas
   * and a restart see them gone at once), then Spark's layout, then the workers' view — at once
   * when no work is in progress, else when the work that was in progress has ended (runs keep
   * the view they started with). Their blobs and trees stay while another session refers to
   * them, then as cache.
   *
   * @param names Artifact names as they were added (or their normalised keys).
   * @returns What was removed, the bytes freed, and the work in progress.
   * @throws {SessionError} `INVALID_ARTIFACT_NAME` for a malformed name or none at all,
   *   `ARTIFACT_NOT_FOUND` for a name the session does not hold (then nothing is removed).
   */
  remove(names: readonly string[]): Promise<RemoveResult> {
    return this.#lock.run(async () => {
      this.#checkOpen();
      if (names.length === 0) {
        throw new SessionError(
          "INVALID_ARTIFACT_NAME",
          "Cannot remove artifacts: the request names none.",
        );
      }
      const records: ArtifactRecord[] = [];
      const keys = new Set<string>();
      for (const raw of names) {
        const r = this.#lookup(raw);
        if (keys.has(r.key)) continue;
        keys.add(r.key);
        records.push(r);
      }
      const registry = this.#ctx.registry;
      let entry: RegistryEntry | undefined;
      if (registry) {
        // The cluster's record first: every node drops its copy when it sees the removal.
        entry = await registry.update(this.userId, this.sessionId, (cur) => {
          const rec = this.#liveRecord(cur);
          return {
            ...rec,
            artifacts: rec.artifacts.filter((a) =>
              !keys.has(artifactKey(parseArtifactName(a.name)))
            ),
          };
        });
      }
      const inProgress = await this.#drop(records, !registry);
      if (entry) await this.#syncLocked(entry);
      return {
        removed: records,
        freedBytes: records.reduce((n, r) => n + r.size + (r.treeBytes ?? 0), 0),
        inProgress,
      };
    });
  }

  /**
   * Drops artifacts from this node's copy: the manifest first (so that listings, quotas and a
   * restart see them gone at once), then Spark's layout, then the workers' view — at once when
   * no work is in progress, else when the work that was in progress has ended. Called with the
   * lock held.
   *
   * @param undoable Whether a manifest that cannot be written puts the records back and fails
   *   (a removal asked for here); otherwise (the cluster's record already says they are gone)
   *   the next start's reconcile finishes the job.
   * @returns How many pieces of work keep the view entries for now.
   */
  async #drop(records: ArtifactRecord[], undoable: boolean): Promise<number> {
    if (records.length === 0) return 0;
    const viewed = records.filter((r) => r.view !== undefined);
    const waitFor = new Set(this.#holds);
    let unpin = () => {};
    if (viewed.length > 0 && waitFor.size > 0) {
      // Pinned before the manifest lets them go, so no eviction can slip in between.
      const pins = await Promise.all(
        viewed.flatMap((r) => [
          this.#ctx.pin(`b:${r.sha256}`),
          ...(r.tree ? [this.#ctx.pin(`t:${r.tree}`)] : []),
        ]),
      );
      unpin = () => pins.forEach((u) => u());
    }
    for (const r of records) delete this.#manifest.artifacts[r.key];
    try {
      await this.#writeManifest();
    } catch (e) {
      if (undoable) {
        for (const r of records) this.#manifest.artifacts[r.key] = r;
        unpin();
        throw e;
      }
    }
    for (const r of records) {
      // Spark's layout is never shown to workers: it goes now.
      await removeByName(this.artifactsDir, r.key).catch(() => {});
      this.#ctx.touch(`b:${r.sha256}`);
      if (r.tree) this.#ctx.touch(`t:${r.tree}`);
    }
    const views = viewed.map((r) => r.view!);
    if (views.length > 0 && waitFor.size > 0) {
      this.#pending.push({ waitFor, views, unpin });
      return waitFor.size;
    }
    try {
      for (const v of views) unlinkViewSync(this.viewDir, this.root, v);
    } catch {
      // Recorded as removed already: the next start's reconcile removes what is left.
    }
    this.#ctx.collectSoon?.();
    return 0;
  }

  /** The record a name to remove names, or why there is none. */
  #lookup(raw: string): ArtifactRecord {
    let parsed: ArtifactName;
    try {
      parsed = parseArtifactName(raw);
    } catch (e) {
      if (e instanceof ArtifactNameError) {
        throw new SessionError("INVALID_ARTIFACT_NAME", `${e.message}.`, { cause: e });
      }
      throw e;
    }
    const found = this.#manifest.artifacts[artifactKey(parsed)];
    if (found) return found;
    // The same file under another alias, or named by its view: say which name to use.
    const near = this.artifacts().filter((a) =>
      a.path === parsed.path || a.view === raw || a.view === parsed.alias ||
      a.path.split("/").pop() === raw
    ).map((a) => a.name);
    throw new SessionError(
      "ARTIFACT_NOT_FOUND",
      `Cannot remove ${JSON.stringify(raw)}: the session holds no artifact of that name` +
        (near.length > 0
          ? `. Did you mean ${near.slice(0, 3).map((n) => JSON.stringify(n)).join(" or ")}?`
          : this.artifacts().length === 0
          ? " (it holds no artifacts)."
          : `. Names are as they were added, e.g. ${
            JSON.stringify(this.artifacts().map((a) => a.name).sort()[0])
          }; ` +
            "ListArtifacts lists them all."),
      { parameters: { name: raw } },
    );
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

  /** Store paths of the shared trees the session's archives unpacked to. */
  sharedTrees(): string[] {
    return this.artifacts().flatMap((a) => (a.tree ? [this.#ctx.trees.path(a.tree)] : []));
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
      const before = new Set(Object.keys(this.#manifest.artifacts));
      try {
        // Adds other nodes made are checked against too, not only this node's.
        await this.#refresh();
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
        if (changed) errors.push(...await this.#publish(before));
      } finally {
        if (changed) await this.#writeManifest();
      }
      return { summaries, errors };
    });
  }

  /**
   * Adds an artifact whose bytes the server already holds, by digest, without an upload.
   *
   * @throws {SessionError} `BLOB_NOT_FOUND` when the server does not hold the digest.
   */
  attach(rawName: string, sha256: string): Promise<void> {
    return this.attachAll([{ name: rawName, sha256 }]).then((r) => {
      if (r.error) throw r.error;
    });
  }

  /**
   * Adds artifacts by digest, in order, writing the manifest once. Stops at the first one that
   * is refused; those before it stay added.
   *
   * @param items Names and digests.
   * @returns The names added, and the error that stopped the rest, if any.
   */
  attachAll(
    items: readonly { name: string; sha256: string }[],
  ): Promise<{ attached: string[]; error: SessionError | undefined }> {
    return this.#lock.run(async () => {
      this.#checkOpen();
      const attached: string[] = [];
      let changed = false;
      let error: SessionError | undefined;
      const before = new Set(Object.keys(this.#manifest.artifacts));
      try {
        await this.#refresh();
        for (const item of items) {
          const name = parseArtifactName(item.name);
          let size = 0;
          try {
            size = (await Deno.stat(this.#ctx.blobs.path(item.sha256))).size;
          } catch { /* #place reports the missing blob once it holds the pin */ }
          changed = (await this.#place(name, item.sha256, size, undefined)) || changed;
          attached.push(item.name);
        }
        if (changed) {
          const refused = await this.#publish(before);
          if (refused.length) {
            const names = new Set(Object.values(this.#manifest.artifacts).map((a) => a.name));
            attached.splice(0, attached.length, ...attached.filter((n) => names.has(n)));
            error = refused[0];
          }
        }
      } catch (e) {
        if (!(e instanceof SessionError)) throw e;
        error = e;
      } finally {
        if (changed) await this.#writeManifest();
      }
      return { attached, error };
    });
  }

  /**
   * Gives this (new) session every artifact of `source` by reference — links to the same
   * blobs and trees, nothing copied or unpacked again — each checked against this session's
   * and its user's quotas as an add is, the warnings they were recorded with kept. The config
   * is the caller's to copy (a config change has its own path into the cluster).
   *
   * @param source The session cloned.
   * @throws {SessionError} `QUOTA_EXCEEDED`, `BLOB_NOT_FOUND` (the source's content went
   *   meanwhile); what was linked before stays, for the caller to release.
   */
  copyFrom(source: Session): Promise<void> {
    return this.#lock.run(async () => {
      this.#checkOpen();
      const before = new Set(Object.keys(this.#manifest.artifacts));
      let changed = false;
      try {
        await this.#refresh();
        const records = source.artifacts().sort((a, b) => a.addedAt - b.addedAt);
        for (const r of records) {
          const placed = await this.#place(
            parseArtifactName(r.name),
            r.sha256,
            r.size,
            undefined,
            r.addedAt,
            false,
          );
          changed = placed || changed;
          const mine = this.#manifest.artifacts[r.key];
          if (placed && mine && r.warnings) {
            this.#manifest.artifacts[r.key] = { ...mine, warnings: [...r.warnings] };
          }
        }
        if (changed) {
          const refused = await this.#publish(before);
          if (refused.length > 0) throw refused[0];
        }
      } finally {
        if (changed) await this.#writeManifest();
      }
    });
  }

  async #commitOne(staged: StagedArtifact): Promise<boolean> {
    return await this.#place(staged.name, staged.sha256, staged.size, staged.file);
  }

  /** Bytes of all committed artifacts, of the trees they unpacked to and of its pip layer. */
  bytes(): number {
    return this.artifacts().reduce((n, a) => n + a.size + (a.treeBytes ?? 0), 0) +
      (this.#manifest.pip?.bytes ?? 0);
  }

  /** Entries of the trees the session's archives unpacked to and of its pip layer. */
  entries(): number {
    return this.artifacts().reduce((n, a) => n + (a.treeEntries ?? 0), 0) +
      (this.#manifest.pip?.entries ?? 0);
  }

  /** The pip layer the session's workers see on this node, if any. */
  pipLayer(): PipLayerRecord | undefined {
    return this.#manifest.pip;
  }

  /** Store paths of the session's pip layers, in `sys.path` order (bound read-only). */
  layerPaths(): string[] {
    const pip = this.#manifest.pip;
    return pip ? [this.#ctx.layers.path(pip.key)] : [];
  }

  /**
   * Makes `record` the session's pip layer (or, with `undefined`, drops the one it has): checked
   * against the session's and its user's quotas as an add is, recorded in the manifest. The
   * layer must be built; the caller keeps it pinned until this returns. The layer dropped stays
   * in the store as cache, evicted least recently used.
   *
   * @param record The layer, or `undefined`.
   * @throws {SessionError} `QUOTA_EXCEEDED` when the layer would break a quota.
   */
  setPipLayer(record: PipLayerRecord | undefined): Promise<void> {
    return this.#lock.run(async () => {
      this.#checkOpen();
      const old = this.#manifest.pip;
      if (old?.key === record?.key && old?.requirements === record?.requirements) return;
      if (record) {
        const q = this.#ctx.quotas;
        const more = record.bytes - (old?.bytes ?? 0);
        const bytes = this.bytes() + more;
        const what = `the pip layer of ${record.distributions.length} distribution(s)`;
        if (bytes > q.maxSessionBytes) {
          throw new SessionError(
            "QUOTA_EXCEEDED",
            `Cannot use ${what}: the session would hold ${bytes} bytes of artifacts, unpacked ` +
              `archives and packages, the limit per session is ${q.maxSessionBytes} bytes.`,
            { reason: "SESSION_BYTES" },
          );
        }
        const entries = this.entries() + record.entries - (old?.entries ?? 0);
        if (entries > q.maxSessionEntries) {
          throw new SessionError(
            "QUOTA_EXCEEDED",
            `Cannot use ${what}: the session's unpacked archives and packages would hold ` +
              `${entries} files, the limit per session is ${q.maxSessionEntries}.`,
            { reason: "SESSION_ENTRIES" },
          );
        }
        const userBytes = this.#ctx.userBytes(this.userId) + more;
        if (more > 0 && userBytes > q.maxUserBytes) {
          throw new SessionError(
            "QUOTA_EXCEEDED",
            `Cannot use ${what}: the sessions of user ${JSON.stringify(this.userId)} would ` +
              `hold ${userBytes} bytes, the limit per user is ${q.maxUserBytes} bytes.`,
            { reason: "USER_BYTES" },
          );
        }
        this.#manifest.pip = record;
        this.#ctx.touch(`l:${record.key}`);
      } else {
        delete this.#manifest.pip;
      }
      if (old && old.key !== record?.key) {
        this.#ctx.touch(`l:${old.key}`);
        this.#ctx.collectSoon?.();
      }
      await this.#writeManifest();
    });
  }

  /**
   * Refuses adding `bytes` when a quota of the session or its user would break, or the disk
   * would fall below its floor: asked before bytes are brought to this node for the session
   * (a fetch from the cluster).
   *
   * @param what What would be added (for the message).
   * @param bytes Its size.
   * @throws {SessionError} `QUOTA_EXCEEDED`.
   */
  admitBytes(what: string, bytes: number): void {
    this.#checkQuota({ raw: what }, bytes, 0);
    const free = this.#ctx.freeBytes();
    if (free - bytes < this.#ctx.quotas.minFreeBytes) {
      throw new SessionError(
        "QUOTA_EXCEEDED",
        `Cannot bring ${what} (${bytes} bytes) to this node: its disk has ${free} bytes free ` +
          `and keeps at least ${this.#ctx.quotas.minFreeBytes} free.`,
        { reason: "DISK_FLOOR" },
      );
    }
  }

  /** Refuses adding `bytes` and `entries` when a quota of the session or its user would break. */
  #checkQuota(name: { raw: string }, bytes: number, entries: number): void {
    const q = this.#ctx.quotas;
    const sessionBytes = this.bytes() + bytes;
    if (sessionBytes > q.maxSessionBytes) {
      throw new SessionError(
        "QUOTA_EXCEEDED",
        `Cannot add ${name.raw}: the session would hold ${sessionBytes} bytes of artifacts and ` +
          `unpacked archives, the limit per session is ${q.maxSessionBytes} bytes.`,
        { reason: "SESSION_BYTES" },
      );
    }
    const sessionEntries = this.entries() + entries;
    if (sessionEntries > q.maxSessionEntries) {
      throw new SessionError(
        "QUOTA_EXCEEDED",
        `Cannot add ${name.raw}: the session's unpacked archives would hold ${sessionEntries} ` +
          `files, the limit per session is ${q.maxSessionEntries}.`,
        { reason: "SESSION_ENTRIES" },
      );
    }
    const userBytes = this.#ctx.userBytes(this.userId, this) + this.bytes() + bytes;
    if (userBytes > q.maxUserBytes) {
      throw new SessionError(
        "QUOTA_EXCEEDED",
        `Cannot add ${name.raw}: the sessions of user ${JSON.stringify(this.userId)} would hold ` +
          `${userBytes} bytes, the limit per user is ${q.maxUserBytes} bytes.`,
        { reason: "USER_BYTES" },
      );
    }
  }

  /** Puts one artifact in place; returns whether the manifest changed. */
  async #place(
    name: ArtifactName,
    sha256: string,
    size: number,
    stagedFile: string | undefined,
    addedAt: number = Date.now(),
    check = true,
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
    if (view !== undefined && this.#pending.some((p) => p.views.includes(view))) {
      throw new SessionError(
        "ARTIFACT_ALREADY_EXISTS",
        `The artifact ${name.raw} would appear as ./${view} in the session's working directory, ` +
          `where an artifact removed while runs were in progress stays until they end. Add it ` +
          `again once they have ended, or choose a different name.`,
      );
    }
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
    const made: string[] = [];
    let letGo: (() => void) | undefined;
    try {
      if (!stagedFile && !(await this.#ctx.blobs.has(sha256))) {
        throw new SessionError(
          "BLOB_NOT_FOUND",
          `Cannot attach ${name.raw}: the server holds no blob with sha256 ${sha256}; upload it instead.`,
        );
      }
      let blob = this.#ctx.blobs.path(sha256);
      if (stagedFile) {
        const adopted = await this.#ctx.blobs.adopt(stagedFile, sha256, size);
        blob = adopted.path;
        if (!adopted.added) this.#ctx.hit?.(`b:${sha256}`);
      } else {
        this.#ctx.hit?.(`b:${sha256}`);
      }
      let tree: { path: string; info: TreeInfo } | undefined;
      if (treeKey && unpacker) {
        try {
          // Not cancelled with this client's call: the tree is shared, and other sessions may
          // be waiting for it; a finished tree is kept for the next add.
          const t = await this.#ctx.trees.ensure(
            treeKey,
            (dest) => unpacker.unpack(blob, dest, {}),
          );
          if (!t.built) this.#ctx.hit?.(`t:${treeKey}`);
          tree = { path: t.path, info: await this.#ctx.trees.info(treeKey) };
        } catch (e) {
          if (e instanceof SessionError) throw e;
          const code = (e as { code?: unknown }).code;
          throw new SessionError(
            "ARTIFACT_UNPACK_FAILED",
            `Cannot add ${name.raw}: ${e instanceof Error ? e.message : String(e)}`,
            { cause: e, ...(typeof code === "string" ? { reason: code } : {}) },
          );
        }
      }
      // Before anything is linked or recorded: a refused environment leaves the session as it
      // was (its tree stays only as cache).
      const warnings = check && this.#ctx.checkEnvironment
        ? await this.#ctx.checkEnvironment({
          session: this,
          name: name.raw,
          ...(tree ? { tree: tree.path } : {}),
          ...(!tree && /\.pex$/i.test(name.path) ? { pexFile: blob } : {}),
        })
        : [];
      const adding = size + (tree?.info.bytes ?? 0);
      this.#checkQuota(name, adding, tree?.info.entries ?? 0);
      letGo = this.#ctx.holdUserBytes(this.userId, adding);
      const byName = join(this.artifactsDir, key);
      await linkFresh(blob, byName);
      made.push(byName);
      if (view !== undefined) {
        const inView = join(this.viewDir, view);
        if (tree) await symlinkFresh(tree.path, inView);
        else await linkFresh(blob, inView);
        made.push(inView);
        const inRoot = join(this.root, view);
        await placeInRoot(view, inRoot);
        made.push(inRoot);
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
        ...(tree ? { treeBytes: tree.info.bytes, treeEntries: tree.info.entries } : {}),
        ...(warnings.length > 0 ? { warnings } : {}),
        addedAt,
      };
      this.#manifest.artifacts[key] = record;
      made.length = 0;
      return true;
    } finally {
      // What a refused add made goes again, newest first; the manifest never named it.
      for (const p of made.reverse()) await Deno.remove(p).catch(() => {});
      // Recorded (now counted by the session itself) or refused: either way no longer held.
      letGo?.();
      unpinTree();
      unpinBlob();
    }
  }

  /**
   * Brings the directories back in line with the manifest after a restart: links an
   * interrupted commit made but never recorded are removed, recorded ones that are missing
   * are made again. Files the session's workers wrote are left alone. A session of an older
   * layout (links to shared blobs inside the workers' directory) is moved to this one.
   */
  async reconcile(blobInodes: Set<string>): Promise<void> {
    const records = this.artifacts();
    const keys = new Set(records.map((r) => r.key));
    const views = new Set(records.flatMap((r) => (r.view ? [r.view] : [])));
    await Deno.mkdir(this.root, { recursive: true });
    await Deno.mkdir(this.artifactsDir, { recursive: true });
    await Deno.mkdir(this.viewDir, { recursive: true });
    await removeAtomicLeftovers(this.dir);
    for (const rel of await listFiles(this.artifactsDir)) {
      if (!keys.has(rel)) await Deno.remove(join(this.artifactsDir, rel));
    }
    for await (const e of Deno.readDir(this.viewDir)) {
      if (!views.has(e.name)) await removeAll(join(this.viewDir, e.name));
    }
    const leftovers: string[] = [];
    for await (const e of Deno.readDir(this.root)) {
      const path = join(this.root, e.name);
      const st = await Deno.lstat(path);
      const target = st.isSymlink ? await Deno.readLink(path) : undefined;
      const ours = target !== undefined &&
        (target === `../ro/${e.name}` || target.startsWith(this.#ctx.trees.root + "/"));
      // A server-made link no record names is the leftover of an interrupted commit; a hard
      // link to a blob is the older layout's, which let a worker write shared bytes. Anything
      // else here was written by the session's workers and stays.
      const blobLink = st.isFile && blobInodes.has(`${st.dev}:${st.ino}`);
      if ((ours && !views.has(e.name)) || blobLink || (ours && target !== `../ro/${e.name}`)) {
        leftovers.push(path);
      }
    }
    for (const path of leftovers) await Deno.remove(path);
    for (const r of records) {
      const blob = this.#ctx.blobs.path(r.sha256);
      await linkFresh(blob, join(this.artifactsDir, r.key)).catch(() => {});
      if (r.view === undefined) continue;
      const inView = join(this.viewDir, r.view);
      if (r.tree) await symlinkFresh(this.#ctx.trees.path(r.tree), inView).catch(() => {});
      else await linkFresh(blob, inView).catch(() => {});
      await placeInRoot(r.view, join(this.root, r.view)).catch(() => {});
    }
  }

  /** Upload limits for one stream of this session: quotas and the free-disk floor. */
  #uploadLimits(): UploadLimits {
    const q = this.#ctx.quotas;
    const sessionBytes = this.bytes();
    const userBytes = this.#ctx.userBytes(this.userId, this) + sessionBytes;
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
    const registry = this.#ctx.registry;
    return {
      maxArtifactBytes: this.#ctx.limits.maxArtifactBytes,
      // In a cluster the blob GC learns of each blob as soon as its last byte is in.
      ...(registry?.beginCommit ? { announce: (sha) => registry.beginCommit!([sha]) } : {}),
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
          // The disk shows only what was written: up to the write-behind's queued buffers and
          // the one being filled are admitted and not there yet (without this, an upload
          // crossed the floor by up to 4 MiB, seen as a flaky tmpfs test).
          checkDisk((WRITE_BEHIND_DEPTH + 1) * WRITE_BUFFER_BYTES);
        }
      },
    };
  }

  /**
   * Marks the session closed once the change in progress (a commit, an attach, a config
   * write) has finished, so that nothing writes into its directory after the store removes it.
   */
  close(): Promise<void> {
    this.#closed = true;
    // The directory goes as a whole: nothing waits to be unlinked any more.
    for (const p of this.#pending.splice(0)) p.unpin();
    return this.#lock.run(() => Promise.resolve());
  }

  #checkOpen(): void {
    if (this.#closed) {
      throw new SessionError(
        "INVALID_HANDLE.SESSION_CLOSED",
        `The session ${this.sessionId} was released and cannot be used.`,
        { parameters: { handle: this.sessionId } },
      );
    }
  }

  #persist(): Promise<void> {
    return this.#lock.run(async () => {
      this.#checkOpen();
      const registry = this.#ctx.registry;
      if (registry) {
        const base = this.#baseConfig;
        const now = this.config.toJSON();
        let entry: RegistryEntry;
        try {
          entry = await registry.update(this.userId, this.sessionId, (cur) => {
            const rec = this.#liveRecord(cur);
            return { ...rec, config: mergeConfig(rec.config, base, now) };
          });
        } catch (e) {
          // Not recorded in the cluster: not in effect here either.
          this.config.reset(base);
          throw e;
        }
        await this.#syncLocked(entry);
      }
      await this.#writeManifest();
    });
  }

  /** The record to change: the current one, unless the session was closed or re-created. */
  #liveRecord(cur: SharedSession | undefined): SharedSession {
    if (cur?.closed || (cur && cur.serverSideSessionId !== this.serverSideSessionId)) {
      throw new SessionError(
        "INVALID_HANDLE.SESSION_CLOSED",
        `The session ${this.sessionId} was released on another node and cannot be used.`,
        { parameters: { handle: this.sessionId } },
      );
    }
    return cur ?? this.shared();
  }

  /** Reads the cluster's record and brings this copy in line with it (cluster only). */
  async #refresh(): Promise<void> {
    const registry = this.#ctx.registry;
    if (!registry) return;
    const entry = await registry.get(this.userId, this.sessionId);
    if (entry) {
      this.#liveRecord(entry.value);
      await this.#syncLocked(entry);
    }
  }

  /**
   * Records this node's new artifacts (those not in `before`) in the cluster: their blobs
   * first, then the record, with compare-and-set. Adds another node's commit made impossible
   * meanwhile are undone here and returned as errors; on any other failure all are undone.
   */
  async #publish(before: Set<string>): Promise<SessionError[]> {
    const registry = this.#ctx.registry;
    if (!registry) return [];
    const added = Object.values(this.#manifest.artifacts).filter((a) => !before.has(a.key));
    let refused: { add: SharedArtifact; error: SessionError }[] = [];
    let entry: RegistryEntry;
    let release: (() => Promise<void>) | undefined;
    try {
      release = await registry.beginCommit?.(added.map((a) => a.sha256));
      // An add is visible to other nodes only once its bytes are where they fetch them from.
      for (const a of added) {
        await registry.putBlob(a.sha256, this.#ctx.blobs.path(a.sha256), a.size);
      }
      entry = await registry.update(this.userId, this.sessionId, (cur) => {
        const m = mergeAdds(this.#liveRecord(cur), added.map(toShared));
        refused = m.refused;
        return m.next;
      });
    } catch (e) {
      await release?.();
      await this.#drop(added, false);
      throw e;
    }
    try {
      if (release) {
        // The cluster's blob GC may have judged a blob unreferenced just before this record:
        // this node still holds the bytes, so what is gone goes back (putBlob checks first).
        const recorded = new Set(entry.value.artifacts.map((a) => a.sha256));
        for (const a of added) {
          if (!recorded.has(a.sha256)) continue;
          await registry.putBlob(a.sha256, this.#ctx.blobs.path(a.sha256), a.size);
        }
      }
    } finally {
      await release?.();
    }
    // Brings in what other nodes added, and drops the adds the record refused.
    await this.#syncLocked(entry);
    return refused.map((r) => r.error);
  }

  async #syncLocked(entry: RegistryEntry): Promise<void> {
    if (this.#revision === entry.revision) return;
    const remote = new Map<string, SharedArtifact>();
    for (const a of entry.value.artifacts) remote.set(artifactKey(parseArtifactName(a.name)), a);
    await this.#drop(
      this.artifacts().filter((r) => remote.get(r.key)?.sha256 !== r.sha256),
      false,
    );
    const missing = [...remote].filter(([k]) => !this.#manifest.artifacts[k])
      .sort(([, a], [, b]) => a.addedAt - b.addedAt);
    try {
      for (const [, a] of missing) {
        const name = parseArtifactName(a.name);
        const fetched = await this.#fetch(a);
        try {
          // Checked by the node that took the add; this node only follows the record.
          await this.#place(name, a.sha256, a.size, fetched, a.addedAt, false);
        } finally {
          if (fetched) await Deno.remove(fetched).catch(() => {});
        }
      }
      this.config.reset(entry.value.config);
      this.#baseConfig = { ...entry.value.config };
      // Taken only once all of it is in place: a failure leaves the next use to try again.
      this.#revision = entry.revision;
    } finally {
      await this.#writeManifest();
    }
  }

  /** Fetches a blob this node does not hold into staging; `undefined` when it holds it. */
  async #fetch(a: SharedArtifact): Promise<string | undefined> {
    if (await this.#ctx.blobs.has(a.sha256)) return undefined;
    // The size is the record's word, checked against this node's quotas and disk before a byte
    // is fetched (and the fetch never takes more than it).
    this.admitBytes(a.name, a.size);
    await Deno.mkdir(this.#ctx.stagingRoot, { recursive: true });
    const dest = join(this.#ctx.stagingRoot, `fetch-${crypto.randomUUID()}`);
    await this.#ctx.registry!.fetchBlob(a.sha256, a.size, dest);
    return dest;
  }

  #writeManifest(): Promise<void> {
    this.#manifest.config = this.config.toJSON();
    return writeManifest(join(this.dir, "manifest.json"), this.#manifest);
  }
}

function toShared(a: ArtifactRecord): SharedArtifact {
  return {
    name: a.name,
    sha256: a.sha256,
    size: a.size,
    addedAt: a.addedAt,
    ...(a.treeBytes !== undefined ? { treeBytes: a.treeBytes } : {}),
  };
}
