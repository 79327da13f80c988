// Copyright 2026 the Valise authors. Apache-2.0 license.
import { createHash } from "node:crypto";
import { join, resolve } from "node:path";
import { isSparkSessionId } from "@valise/protocol";
import { Mutex, removeAll, removeAtomicLeftovers, writeFileAtomic } from "./_fs.ts";
import { BlobStore } from "./blob_store.ts";
import { SessionError } from "./errors.ts";
import { readManifest, type SessionManifest, writeManifest } from "./manifest.ts";
import { statfsSync } from "node:fs";
import { type ArchiveUnpacker, type Quotas, Session, type SessionContext } from "./session.ts";
import { TreeStore } from "./tree_store.ts";
import { checkSharedQuota, clusterUserBytes, recordingUse } from "./_cluster_rules.ts";
import type { RecordSummary, RegistryEntry, SessionRegistry, SharedSession } from "./registry.ts";
import { type DataDirLock, lockDataDir, type LockHolder } from "./data_dir_lock.ts";
import { secureSessionDirs, WorkerIds } from "./_worker_ids.ts";

/** Options of {@linkcode SessionStore.open}. */
export interface SessionStoreOptions {
  /** The data directory; created if missing. */
  dataDir: string;
  /**
   * Sessions unused for this long are released (`0` or less: never).
   * @default {3_600_000}
   */
  idleTimeoutMs?: number;
  /**
   * How many released (user, session) pairs are remembered to answer `SESSION_CLOSED`.
   * @default {1000}
   */
  maxTombstones?: number;
  /**
   * The largest single artifact accepted, in bytes.
   * @default {17_179_869_184} (16 GiB)
   */
  maxArtifactBytes?: number;
  /**
   * Unpacks `archives/` artifacts into shared trees that sessions see in their working
   * directory.
   * @default {undefined} archives are stored but not unpacked
   */
  unpack?: ArchiveUnpacker | undefined;
  /**
   * Checks the environments adds bring (see `SessionContext.checkEnvironment`).
   * @default {undefined} no checks
   */
  checkEnvironment?: SessionContext["checkEnvironment"];
  /**
   * Bytes of blobs and trees no session refers to that are kept as a cache; beyond it the
   * least recently used are evicted.
   * @default {10_737_418_240} (10 GiB)
   */
  cacheBytes?: number;
  /**
   * Storage limits per session and per user, and the free-disk floor.
   * @default {{ maxSessionBytes: 64 GiB, maxSessionArtifacts: 10000, maxSessionEntries: 1000000, maxUserBytes: 256 GiB, maxSessionsPerUser: 100, maxSessions: 10000, minFreeBytes: 1 GiB }}
   */
  quotas?: Partial<Quotas>;
  /**
   * Give each session its own host uid and gid from this range, for its workers: the store
   * makes the session's working directory theirs and its other directories reachable only by
   * them and the server. Needs a store running as root.
   * @default {undefined} workers run as whatever the launcher chooses
   */
  workerIds?: { first: number; count: number } | undefined;
  /**
   * Workers reach their session only through a sandbox's binds (made with the server's rights),
   * never by path: then the data directory, the sessions and the trees are closed to every
   * other user (`0700`). Without it they are traversable (`0711`), not listable, so that an
   * unsandboxed worker of its own uid can reach its session by path.
   * @default {false}
   */
  workersReachByBinds?: boolean | undefined;
  /**
   * The cluster's registry, when this store is one node of several: sessions are recorded
   * there, any node serves any session (bringing its own copy in line first), and a release
   * closes the pair on every node. Idle expiry drops this node's copy of a session idle here,
   * and {@linkcode SessionStore.expireSharedIdle} releases sessions idle on every node; quotas
   * count the cluster's records when the registry keeps an index of them.
   * @default {undefined} a single node: the data directory is the only record
   */
  registry?: SessionRegistry | undefined;
}

/** What a garbage collection removed. */
export interface CollectResult {
  /** Digests of the blobs removed. */
  readonly blobs: string[];
  /** Keys of the trees removed. */
  readonly trees: string[];
  /** Keys of the pip layers removed. */
  readonly layers: string[];
  /** Bytes freed. */
  readonly bytes: number;
}

/** Called before a session's directory is removed (to stop its workers first). */
export type ReleaseHook = (session: Session) => Promise<void> | void;

/** How {@linkcode SessionStore.session} finds or creates a session. */
export interface SessionLookup {
  /** The client's user id (`""` when unset). */
  userId: string;
  /** The client's session id; must parse as a UUID. */
  sessionId: string;
  /** `client_observed_server_side_session_id`, when the client sent one. */
  clientObservedServerSideSessionId?: string | undefined;
}

/**
 * All sessions under one data directory: one directory per (user id, session id), created on
 * first use, restored after a restart from their manifests, removed on release or expiry.
 */
export class SessionStore {
  /** The data directory. */
  readonly dataDir: string;
  /** The content-addressed blobs. */
  readonly blobs: BlobStore;
  /** The shared unpacked archives. */
  readonly trees: TreeStore;
  /**
   * The shared pip layers: installed requirement sets, one read-only directory per key (the
   * interpreter, the requirements, the wheels, the index), built once and kept, pinned, counted
   * and evicted as trees are (ids `l:<key>`).
   */
  readonly layers: TreeStore;
  #pins = new Map<string, number>();
  #evicting = new Map<string, Promise<void>>();
  #lastUsed = new Map<string, number>();
  #hits = new Map<string, number>();
  #cacheBytes: number;
  #sessions = new Map<string, Session>();
  #creating = new Map<string, Promise<Session>>();
  #tombstones = new Map<string, number>();
  /** Clones under way, by their target's key: a second clone to the same id is refused. */
  #cloning = new Set<string>();
  #ctx: SessionContext;
  #idleTimeoutMs: number;
  /** A record's last use may lag this far behind a use on some node (a quarter of the above). */
  #useIntervalMs: number;
  #maxTombstones: number;
  #hooks: ReleaseHook[] = [];
  #releasing = new Map<string, Promise<unknown>>();
  /** Drops of this node's copy under way (a release another node made), per pair. */
  #dropping = new Map<string, Promise<void>>();
  #workerIds: WorkerIds | undefined;
  #traverse: number;
  /** Bytes of adds checked against a user's quota but not yet recorded, by user. */
  #heldBytes = new Map<string, number>();
  #registry: SessionRegistry | undefined;
  #unwatch: (() => void) | undefined;
  #lock: DataDirLock | undefined;
  /** New cluster records are admitted one at a time: each check sees the one before. */
  #admission = new Mutex();
  /** The write of a session's last use in flight, per pair: one at a time. */
  #touches = new Map<string, Promise<RegistryEntry | undefined>>();
  #closed = false;
  #collecting: Promise<void> = Promise.resolve();

  private constructor(dataDir: string, options: SessionStoreOptions) {
    this.dataDir = dataDir;
    this.blobs = new BlobStore(join(dataDir, "blobs", "sha256"));
    this.trees = new TreeStore(join(dataDir, "trees"), options.workersReachByBinds ? 0o700 : 0o711);
    this.layers = new TreeStore(
      join(dataDir, "layers"),
      options.workersReachByBinds ? 0o700 : 0o711,
    );
    this.#cacheBytes = options.cacheBytes ?? 10 * 2 ** 30;
    const quotas: Quotas = {
      maxSessionBytes: 64 * 2 ** 30,
      maxSessionArtifacts: 10_000,
      maxSessionEntries: 1_000_000,
      maxUserBytes: 256 * 2 ** 30,
      maxSessionsPerUser: 100,
      maxSessions: 10_000,
      minFreeBytes: 2 ** 30,
      ...options.quotas,
    };
    this.#traverse = options.workersReachByBinds ? 0o700 : 0o711;
    if (options.workerIds !== undefined) this.#workerIds = new WorkerIds(options.workerIds);
    this.#idleTimeoutMs = options.idleTimeoutMs ?? 3_600_000;
    this.#useIntervalMs = this.#idleTimeoutMs / 4;
    this.#maxTombstones = options.maxTombstones ?? 1000;
    this.#ctx = {
      blobs: this.blobs,
      stagingRoot: join(dataDir, "staging"),
      limits: { maxArtifactBytes: options.maxArtifactBytes ?? 16 * 2 ** 30 },
      unpack: options.unpack,
      ...(options.checkEnvironment ? { checkEnvironment: options.checkEnvironment } : {}),
      trees: this.trees,
      layers: this.layers,
      quotas,
      userBytes: (userId, except) => this.#userBytes(userId, except),
      holdUserBytes: (userId, bytes) => {
        this.#heldBytes.set(userId, (this.#heldBytes.get(userId) ?? 0) + bytes);
        let held = true;
        return () => {
          if (!held) return;
          held = false;
          const left = (this.#heldBytes.get(userId) ?? 0) - bytes;
          if (left > 0) this.#heldBytes.set(userId, left);
          else this.#heldBytes.delete(userId);
        };
      },
      freeBytes: () => {
        const st = statfsSync(dataDir);
        return Number(st.bavail) * Number(st.bsize);
      },
      pin: (id) => this.#pin(id),
      touch: (id) => void this.#lastUsed.set(id, Date.now()),
      registry: options.registry,
      hit: (id) => void this.#hits.set(id, (this.#hits.get(id) ?? 0) + 1),
      used: (session) => {
        if (this.#registry) this.#recordUse(session).catch(() => {});
      },
      collectSoon: () => {
        // One at a time, never after close (which forgets the sessions that hold references).
        this.#collecting = this.#collecting.then(async () => {
          if (!this.#closed) await this.collect();
        }).catch(() => {});
      },
    };
    this.#registry = options.registry;
  }

  /**
   * Opens (or creates) a data directory: removes staging left by a crash and restores every
   * session that was not released.
   *
   * @example
   * ```ts
   * import { SessionStore } from "@valise/session-store";
   * import { equal } from "node:assert/strict";
   *
   * const dataDir = await Deno.makeTempDir();
   * const store = await SessionStore.open({ dataDir });
   * const s = await store.session({ userId: "ada", sessionId: crypto.randomUUID() });
   * equal(s.artifacts().length, 0);
   * await store.close();
   * await Deno.remove(dataDir, { recursive: true });
   * ```
   */
  static async open(options: SessionStoreOptions): Promise<SessionStore> {
    const store = new SessionStore(resolve(options.dataDir), options);
    await Deno.mkdir(store.dataDir, { recursive: true });
    // Before anything is restored or cleaned: the directory may be another server's.
    store.#lock = await lockDataDir(store.dataDir);
    try {
      await store.#init();
    } catch (e) {
      await store.#lock.release();
      throw e;
    }
    return store;
  }

  /**
   * The server that held the data directory before and is gone (crashed, killed), when its
   * lock record was taken over at open.
   */
  get tookOverLockFrom(): LockHolder | undefined {
    return this.#lock?.tookOverFrom;
  }

  async #init(): Promise<void> {
    await Deno.mkdir(join(this.dataDir, "sessions"), { recursive: true });
    // Traversable, not listable, only when unsandboxed workers must reach their own session by
    // path; nobody learns the names of the others either way.
    await Deno.chmod(this.dataDir, this.#traverse);
    await Deno.chmod(join(this.dataDir, "sessions"), this.#traverse);
    await removeAtomicLeftovers(this.dataDir);
    await this.blobs.init();
    // Half-unpacked trees of a crash are removed here; complete ones are kept.
    await this.trees.init();
    // Half-built layers (staging directories, layers without their info file) likewise.
    await this.layers.init();
    // Nothing in staging was ever visible: a crash mid-upload leaves only this to clean.
    await removeAll(this.#ctx.stagingRoot);
    await Deno.mkdir(this.#ctx.stagingRoot, { recursive: true, mode: 0o700 });
    try {
      const saved = JSON.parse(await Deno.readTextFile(this.#tombstonePath())) as [
        string,
        number,
      ][];
      this.#tombstones = new Map(saved);
    } catch { /* none yet */ }
    const blobInodes = await this.blobs.inodes();
    for await (const u of Deno.readDir(join(this.dataDir, "sessions"))) {
      if (!u.isDirectory) continue;
      const userDir = join(this.dataDir, "sessions", u.name);
      for await (const s of Deno.readDir(userDir)) {
        const dir = join(userDir, s.name);
        if (s.name.startsWith(".")) {
          // A release interrupted half-way: finish it.
          await removeAll(dir);
          continue;
        }
        const manifest = await readManifest(join(dir, "manifest.json")).catch(() => undefined);
        if (!manifest) {
          // Created but never recorded: nothing in it was committed.
          await removeAll(dir);
          continue;
        }
        let assigned = false;
        if (this.#workerIds) assigned = this.#workerIds.restore(manifest);
        else delete manifest.worker;
        const session = new Session(dir, manifest, this.#ctx);
        await session.reconcile(blobInodes);
        await secureSessionDirs(session, this.#traverse, assigned);
        this.#sessions.set(keyOf(manifest.userId, manifest.sessionId), session);
      }
    }
    this.#unwatch = this.#registry?.watch?.((value) => this.#onShared(value));
  }

  /** Another node released a session, or made a new incarnation of it: this copy goes. */
  #onShared(value: SharedSession): void {
    const key = keyOf(value.userId, value.sessionId);
    const local = this.#sessions.get(key);
    if (value.closed) {
      if (!this.#tombstones.has(key)) {
        this.#drop(key, local, true).catch(() => {});
      }
    } else if (local && local.serverSideSessionId !== value.serverSideSessionId) {
      this.#drop(key, local, false).catch(() => {});
    }
  }

  /** The range of worker ids sessions get, if they get their own. */
  get workerIds(): Readonly<{ first: number; count: number }> | undefined {
    return this.#workerIds?.range;
  }

  /**
   * Lends a worker id of the store's range for work that is no session's (running an archive's
   * own code while it is unpacked); `undefined` without a range.
   *
   * @returns The id and a function that gives it back.
   */
  leaseWorkerId(): { uid: number; gid: number; release: () => void } | undefined {
    return this.#workerIds?.lease();
  }

  /**
   * Keeps a blob (`b:<sha256>`), tree (`t:<key>`) or pip layer (`l:<key>`) from eviction until
   * the returned function is called. Uploads and attaches pin what they use; callers with their own check-then-use
   * sequences can too.
   */
  pin(id: string): Promise<() => void> {
    return this.#pin(id);
  }

  async #pin(id: string): Promise<() => void> {
    // Pin first, synchronously, then wait out an eviction already under way: after this, the
    // collector skips the item until it is unpinned.
    this.#pins.set(id, (this.#pins.get(id) ?? 0) + 1);
    await this.#evicting.get(id);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const n = (this.#pins.get(id) ?? 1) - 1;
      if (n <= 0) this.#pins.delete(id);
      else this.#pins.set(id, n);
    };
  }

  /**
   * Removes blobs and trees that no live session refers to, least recently used first, until
   * what is left unreferenced fits in the cache (`cacheBytes`). References are derived from
   * the sessions' manifests each time, never from a counter a crash could leave wrong; pinned
   * items (being uploaded or attached) are never removed.
   */
  async collect(options: { cacheBytes?: number } = {}): Promise<CollectResult> {
    const budget = options.cacheBytes ?? this.#cacheBytes;
    const referenced = new Set<string>();
    for (const s of this.#sessions.values()) {
      for (const a of s.artifacts()) {
        referenced.add(`b:${a.sha256}`);
        if (a.tree) referenced.add(`t:${a.tree}`);
      }
      const pip = s.pipLayer();
      if (pip) referenced.add(`l:${pip.key}`);
    }
    const candidates: { id: string; bytes: number; used: number }[] = [];
    for (const d of await this.blobs.list()) {
      const id = `b:${d}`;
      if (referenced.has(id)) continue;
      const st = await Deno.stat(this.blobs.path(d)).catch(() => undefined);
      if (!st) continue;
      candidates.push({
        id,
        bytes: st.size,
        used: this.#lastUsed.get(id) ?? st.mtime?.getTime() ?? 0,
      });
    }
    for (const [prefix, trees] of [["t", this.trees], ["l", this.layers]] as const) {
      for (const k of await trees.list()) {
        const id = `${prefix}:${k}`;
        if (referenced.has(id)) continue;
        const info = await trees.info(k).catch(() => ({ bytes: 0, entries: 0 }));
        const st = await Deno.stat(`${trees.path(k)}.json`).catch(() => undefined);
        candidates.push({
          id,
          bytes: info.bytes,
          used: this.#lastUsed.get(id) ?? st?.mtime?.getTime() ?? 0,
        });
      }
    }
    candidates.sort((a, b) => a.used - b.used);
    let total = candidates.reduce((n, c) => n + c.bytes, 0);
    const removed = {
      blobs: [] as string[],
      trees: [] as string[],
      layers: [] as string[],
      bytes: 0,
    };
    for (const c of candidates) {
      if (total <= budget) break;
      if (this.#pins.has(c.id)) continue;
      let finish!: () => void;
      this.#evicting.set(c.id, new Promise<void>((r) => (finish = r)));
      try {
        if (c.id.startsWith("b:")) {
          await Deno.remove(this.blobs.path(c.id.slice(2))).catch(() => {});
          removed.blobs.push(c.id.slice(2));
        } else if (c.id.startsWith("l:")) {
          await this.layers.remove(c.id.slice(2));
          removed.layers.push(c.id.slice(2));
        } else {
          await this.trees.remove(c.id.slice(2));
          removed.trees.push(c.id.slice(2));
        }
      } finally {
        this.#evicting.delete(c.id);
        this.#lastUsed.delete(c.id);
        finish();
      }
      total -= c.bytes;
      removed.bytes += c.bytes;
    }
    return removed;
  }

  /**
   * How many adds since the store opened found a blob (`b:<sha256>`) or tree (`t:<key>`)
   * already there instead of storing or unpacking it again.
   *
   * @param id The blob or tree.
   * @returns The count.
   */
  hits(id: string): number {
    return this.#hits.get(id) ?? 0;
  }

  /**
   * Whether a blob (`b:<sha256>`) or tree (`t:<key>`) is kept from eviction right now (an add,
   * an attach, a removal waiting for runs).
   *
   * @param id The blob or tree.
   * @returns `true` when pinned.
   */
  pinned(id: string): boolean {
    return this.#pins.has(id);
  }

  /** The cache budget: bytes of unreferenced blobs and trees kept (`cacheBytes`). */
  get cacheBytes(): number {
    return this.#cacheBytes;
  }

  /** Registers a hook that runs before any session's directory is removed. */
  onRelease(hook: ReleaseHook): void {
    this.#hooks.push(hook);
  }

  /** The live sessions. */
  sessions(): Session[] {
    return [...this.#sessions.values()];
  }

  /** The directory of a (user, session) pair, whether or not it exists. */
  sessionDir(userId: string, sessionId: string): string {
    return join(this.dataDir, "sessions", userDirName(userId), sessionId);
  }

  /**
   * Finds or creates the session of (user id, session id), as Spark's session manager does:
   * the id must be a UUID (`INVALID_HANDLE.FORMAT`), a released pair stays closed
   * (`INVALID_HANDLE.SESSION_CLOSED`), and a client that saw another server-side id is told
   * the session changed (`INVALID_HANDLE.SESSION_CHANGED`).
   */
  async session(lookup: SessionLookup): Promise<Session> {
    const { userId, sessionId } = lookup;
    const key = await this.#checkLookup(lookup);
    let session = this.#registry
      ? await this.#clusterSession(userId, sessionId, true)
      : this.#sessions.get(key);
    if (!session) {
      let pending = this.#creating.get(key);
      if (!pending) {
        pending = this.#create(userId, sessionId).finally(() => this.#creating.delete(key));
        this.#creating.set(key, pending);
      }
      session = await pending;
    }
    return this.#checkObserved(lookup, session);
  }

  /**
   * Like {@linkcode SessionStore.session}, with the same checks, but never creates a session:
   * for requests that only look (listing artifacts) or only take away (removing them).
   *
   * @returns The live session, or `undefined` when there is none (yet).
   * @throws {SessionError} As `session()`; `INVALID_HANDLE.SESSION_CHANGED` also when the client
   *   saw a server-side id and the session no longer exists.
   */
  async existing(lookup: SessionLookup): Promise<Session | undefined> {
    const key = await this.#checkLookup(lookup);
    const session = this.#registry
      ? await this.#clusterSession(lookup.userId, lookup.sessionId, false)
      : this.#sessions.get(key) ?? await this.#creating.get(key)?.catch(() => undefined);
    if (session) return this.#checkObserved(lookup, session);
    if (lookup.clientObservedServerSideSessionId !== undefined) {
      throw new SessionError(
        "INVALID_HANDLE.SESSION_CHANGED",
        `The handle ${lookup.sessionId} is invalid: the client saw server-side session ` +
          `${lookup.clientObservedServerSideSessionId}, which the server no longer has.`,
      );
    }
    return undefined;
  }

  /**
   * CloneSession (Spark 4.1): a new session of the same user holding the source's artifacts
   * and config. Artifacts are shared by reference (hard links and symlinks to the same blobs and
   * trees), so a clone of a 1 GB environment costs no copy; the quotas count the clone's
   * artifacts as its own, as Spark (which copies them) would.
   *
   * @param lookup The source session (it must exist; it is never created here).
   * @param newSessionId The clone's id; a new UUID when undefined or empty.
   * @returns The source and the clone.
   * @throws {SessionError} `INVALID_HANDLE.SESSION_NOT_FOUND` (no such source for this user),
   *   the lookup's own classes, `INVALID_CLONE_SESSION_REQUEST.TARGET_SESSION_ID_FORMAT`,
   *   `INVALID_CLONE_SESSION_REQUEST.TARGET_SESSION_ID_ALREADY_EXISTS`, `QUOTA_EXCEEDED`.
   */
  async clone(
    lookup: SessionLookup,
    newSessionId?: string,
  ): Promise<{ source: Session; clone: Session }> {
    // Spark answers a source id that is no UUID as one it does not have.
    const source = isSparkSessionId(lookup.sessionId) ? await this.existing(lookup) : undefined;
    if (!source) {
      throw new SessionError(
        "INVALID_HANDLE.SESSION_NOT_FOUND",
        `The handle ${lookup.sessionId} is invalid: session not found. A session is cloned ` +
          `only once it exists (after its first call), and only by its own user.`,
        { parameters: { handle: lookup.sessionId } },
      );
    }
    const { userId } = lookup;
    const target = newSessionId ? newSessionId : crypto.randomUUID();
    if (!isSparkSessionId(target)) {
      throw new SessionError(
        "INVALID_CLONE_SESSION_REQUEST.TARGET_SESSION_ID_FORMAT",
        `Invalid session clone request: the target session id ${
          JSON.stringify(target.slice(0, 100))
        } must be a UUID such as 00112233-4455-6677-8899-aabbccddeeff.`,
        { parameters: { targetSessionId: target.slice(0, 100) } },
      );
    }
    const key = keyOf(userId, target);
    const taken = this.#sessions.has(key) || this.#creating.has(key) ||
      this.#cloning.has(key) || this.#tombstones.has(key) ||
      (this.#registry !== undefined && (await this.#registry.get(userId, target)) !== undefined);
    if (taken) {
      throw new SessionError(
        "INVALID_CLONE_SESSION_REQUEST.TARGET_SESSION_ID_ALREADY_EXISTS",
        `Invalid session clone request: cannot clone session ${lookup.sessionId} to ${target}: ` +
          `a session with this id exists (or existed and was released). Leave new_session_id ` +
          `unset for a fresh one.`,
        { parameters: { targetSessionId: target } },
      );
    }
    const q = this.#ctx.quotas;
    const bytes = source.bytes();
    const userBytes = this.#userBytes(userId);
    if (userBytes + bytes > q.maxUserBytes) {
      throw new SessionError(
        "QUOTA_EXCEEDED",
        `Cannot clone session ${lookup.sessionId}: a clone counts its artifacts as its own ` +
          `(${bytes} bytes), and the user's sessions would hold ${userBytes + bytes} bytes; ` +
          `the limit per user is ${q.maxUserBytes} bytes. Release sessions you no longer use.`,
        { reason: "USER_BYTES" },
      );
    }
    this.#cloning.add(key);
    try {
      const clone = await this.session({ userId, sessionId: target });
      const done = clone.hold();
      try {
        await clone.copyFrom(source);
        const pairs = Object.entries(source.config.toJSON()).map(([k, value]) => ({
          key: k,
          value,
        }));
        if (pairs.length > 0) await clone.config.set(pairs, true);
      } catch (e) {
        done();
        // Nothing of a failed clone stays; the id may be used again.
        await this.release(userId, target, { allowReconnect: true });
        throw e;
      }
      done();
      return { source, clone };
    } finally {
      this.#cloning.delete(key);
    }
  }

  /** Spark's checks of a (user, session) pair before it is used: format, release, tombstone. */
  async #checkLookup(lookup: SessionLookup): Promise<string> {
    const { userId, sessionId } = lookup;
    if (!isSparkSessionId(sessionId)) {
      throw new SessionError(
        "INVALID_HANDLE.FORMAT",
        `The handle ${JSON.stringify(sessionId)} is invalid: the session id must be a UUID.`,
        { parameters: { handle: sessionId } },
      );
    }
    const key = keyOf(userId, sessionId);
    // A release in progress finishes before the pair can be used again (allowReconnect).
    await this.#dropping.get(key)?.catch(() => {});
    await this.#releasing.get(key);
    if (this.#tombstones.has(key)) {
      throw new SessionError(
        "INVALID_HANDLE.SESSION_CLOSED",
        `The handle ${sessionId} is invalid: the session was closed. Please use a new session id.`,
        { parameters: { handle: sessionId } },
      );
    }
    return key;
  }

  #checkObserved(lookup: SessionLookup, session: Session): Session {
    const observed = lookup.clientObservedServerSideSessionId;
    if (observed !== undefined && observed !== session.serverSideSessionId) {
      throw new SessionError(
        "INVALID_HANDLE.SESSION_CHANGED",
        `The handle ${lookup.sessionId} is invalid: the existing session changed (the client saw ` +
          `server-side session ${observed}, the server has ${session.serverSideSessionId}).`,
        { parameters: { handle: lookup.sessionId } },
      );
    }
    session.lastAccess = Date.now();
    return session;
  }

  /**
   * The session as the cluster records it, created there if it is not yet, and this node's copy
   * brought in line with it (artifacts fetched, unpacked, linked; config; server-side id).
   * With `create` false, a session the cluster does not record is `undefined` (and this node's
   * copy of it, if any, is not recorded).
   */
  async #clusterSession(
    userId: string,
    sessionId: string,
    create: true,
  ): Promise<Session>;
  async #clusterSession(
    userId: string,
    sessionId: string,
    create: boolean,
  ): Promise<Session | undefined>;
  async #clusterSession(
    userId: string,
    sessionId: string,
    create: boolean,
  ): Promise<Session | undefined> {
    const registry = this.#registry!;
    const key = keyOf(userId, sessionId);
    let entry: RegistryEntry | undefined = await registry.get(userId, sessionId);
    let local = this.#sessions.get(key);
    if (!entry && !create) return undefined;
    const now = Date.now();
    if (!entry) {
      // First use anywhere (or a record lost with the cluster's storage: this copy is it then).
      const fresh: SharedSession = {
        ...(local?.shared() ?? {
          userId,
          sessionId,
          serverSideSessionId: crypto.randomUUID(),
          createdAt: now,
          artifacts: [],
          config: {},
        }),
        usedAt: now,
      };
      entry = await this.#admitShared(userId, sessionId, fresh);
    } else if (this.#useUnrecorded(entry.value, now)) {
      // Written before the call is served: an expiry that judged the record idle then fails
      // its compare-and-set, or this write finds the session closed (docs/architecture.md).
      entry = await this.#recordUseAt(userId, sessionId, entry.value.serverSideSessionId, now) ??
        entry;
    }
    const value = entry.value;
    if (value.closed) {
      await this.#drop(key, local, true);
      throw new SessionError(
        "INVALID_HANDLE.SESSION_CLOSED",
        `The handle ${sessionId} is invalid: the session was closed. Please use a new session id.`,
        { parameters: { handle: sessionId } },
      );
    }
    if (local && local.serverSideSessionId !== value.serverSideSessionId) {
      await this.#drop(key, local, false);
      local = undefined;
    }
    if (!local) {
      let pending = this.#creating.get(key);
      if (!pending) {
        pending = this.#create(userId, sessionId, value).finally(() => this.#creating.delete(key));
        this.#creating.set(key, pending);
      }
      local = await pending;
    }
    if (local.revision !== entry.revision) await local.sync(entry);
    local.recordedUseAt = value.usedAt;
    return local;
  }

  /** Whether a use at `now` must be written to the record before it is served. */
  #useUnrecorded(value: SharedSession, now: number): boolean {
    return this.#idleTimeoutMs > 0 && !value.closed &&
      (value.usedAt === undefined || now - value.usedAt > this.#useIntervalMs);
  }

  /**
   * Creates the cluster's record of a new session once the cluster-wide session quotas allow
   * it. One admission at a time on this node, each after the index caught up with every write
   * made before it: N nodes creating sessions at the same moment exceed a limit by at most
   * N - 1 (each sees all but the others' last creation; docs/architecture.md).
   */
  #admitShared(userId: string, sessionId: string, fresh: SharedSession): Promise<RegistryEntry> {
    const registry = this.#registry!;
    return this.#admission.run(async () => {
      const records = registry.records;
      if (records) {
        await records.caughtUp();
        // Created by another node meanwhile: nothing new is admitted.
        if (!records.find(userId, sessionId)) checkSharedQuota(records, this.#ctx.quotas, userId);
      }
      return await registry.update(userId, sessionId, (cur) => cur ?? fresh);
    });
  }

  /** Bytes the sessions of a user hold, but `except`'s, with the adds held for checks. */
  #userBytes(userId: string, except?: Session): number {
    const local = this.sessions().filter((s) => s.userId === userId && s !== except);
    const held = this.#heldBytes.get(userId) ?? 0;
    const records = this.#registry?.records;
    if (!records) return held + local.reduce((n, s) => n + s.bytes(), 0);
    return held + clusterUserBytes(records.open(userId), local, {
      except: except?.sessionId,
      cap: this.#ctx.quotas.maxSessionBytes,
    });
  }

  /**
   * Writes a session's last use on this node into the cluster's record when the record is
   * more than a quarter of the idle timeout behind it: at most one write per quarter per
   * session and node, never one per call.
   */
  async #recordUse(s: Session): Promise<void> {
    if (!this.#registry || this.#idleTimeoutMs <= 0 || s.closed) return;
    const indexed = this.#registry.records?.find(s.userId, s.sessionId);
    const known = Math.max(
      s.recordedUseAt ?? 0,
      indexed?.serverSideSessionId === s.serverSideSessionId ? indexed.usedAt ?? 0 : 0,
    );
    if (s.lastAccess - known <= this.#useIntervalMs) return;
    const e = await this.#recordUseAt(s.userId, s.sessionId, s.serverSideSessionId, s.lastAccess);
    if (e && !e.value.closed && e.value.serverSideSessionId === s.serverSideSessionId) {
      s.recordedUseAt = e.value.usedAt;
    }
  }

  /**
   * Writes a use at `at` into incarnation `id` of the record, unless the record, read once the
   * write in flight for the pair (if any) has ended, shows a use within the interval already:
   * one write at a time per pair, so a node never writes two uses for one interval.
   *
   * @returns The record as it is now, or `undefined` when there is none.
   */
  #recordUseAt(
    userId: string,
    sessionId: string,
    id: string,
    at: number,
  ): Promise<RegistryEntry | undefined> {
    const registry = this.#registry!;
    const key = keyOf(userId, sessionId);
    const before = this.#touches.get(key) ?? Promise.resolve(undefined);
    const write = before.catch(() => undefined).then(async () => {
      const cur = await registry.get(userId, sessionId);
      if (!cur || cur.value.serverSideSessionId !== id || !this.#useUnrecorded(cur.value, at)) {
        return cur;
      }
      return await registry.update(userId, sessionId, recordingUse(cur.value, at));
    });
    this.#touches.set(key, write);
    const forget = () => {
      if (this.#touches.get(key) === write) this.#touches.delete(key);
    };
    write.then(forget, forget);
    return write;
  }

  /**
   * In a cluster: writes this node's uses the records do not show yet (a busy session counts as
   * used now), then releases for the whole cluster every session whose record shows no use for
   * longer than the idle timeout and a quarter of it (the most a record may lag behind a use):
   * closed in the record with compare-and-set, as a release is, only if the record read at that
   * moment is still idle; every node's watch then drops its copy and workers.
   *
   * @returns The ids of the sessions this node released.
   */
  async expireSharedIdle(now: number = Date.now()): Promise<string[]> {
    const registry = this.#registry;
    if (!registry || this.#idleTimeoutMs <= 0) return [];
    for (const s of this.sessions()) {
      if (s.busy) s.lastAccess = now;
      await this.#recordUse(s);
    }
    const records = registry.records;
    if (!records) return [];
    const out: string[] = [];
    const limit = this.#idleTimeoutMs + this.#useIntervalMs;
    for (const r of records.open()) {
      if (r.usedAt === undefined || now - r.usedAt <= limit) continue;
      if (this.#sessions.get(keyOf(r.userId, r.sessionId))?.busy) continue;
      if (await this.#expireShared(r, now - limit)) out.push(r.sessionId);
    }
    return out;
  }

  /**
   * Closes a record found unused since before `before`, if the record read when it is written
   * still is; whether this call closed it.
   */
  async #expireShared(r: RecordSummary, before: number): Promise<boolean> {
    let idle = true;
    try {
      await this.#registry!.update(r.userId, r.sessionId, (cur) => {
        idle = cur !== undefined && !cur.closed &&
          cur.serverSideSessionId === r.serverSideSessionId && cur.usedAt !== undefined &&
          cur.usedAt < before;
        if (!idle) throw new Error("used meanwhile");
        return { ...cur!, closed: true, artifacts: [], config: {} };
      });
    } catch (e) {
      if (!idle) return false;
      throw e;
    }
    const key = keyOf(r.userId, r.sessionId);
    await this.#drop(key, this.#sessions.get(key), true);
    return true;
  }

  /**
   * The digests the live sessions of `userId` hold (in a cluster with an index, every one the
   * cluster's records name): content the user may attach by digest alone.
   */
  heldDigests(userId: string): Set<string> {
    const out = new Set<string>();
    for (const s of this.#sessions.values()) {
      if (s.userId !== userId || s.closed) continue;
      for (const a of s.artifacts()) out.add(a.sha256);
    }
    for (const r of this.#registry?.records?.open(userId) ?? []) {
      for (const d of r.digests) out.add(d);
    }
    return out;
  }

  /**
   * The size of blob `sha256` on this node, or else (unless `cluster` is false) in the
   * cluster's shared blob store.
   *
   * @returns The size, or `undefined` when neither holds it.
   */
  async blobSize(
    sha256: string,
    options: { cluster?: boolean } = {},
  ): Promise<number | undefined> {
    try {
      return (await Deno.stat(this.blobs.path(sha256))).size;
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    if (options.cluster === false) return undefined;
    return await this.#registry?.blobSize?.(sha256);
  }

  /**
   * Makes sure this node holds blob `sha256`, fetching it from the cluster's shared blob store
   * when it does not (after checking that `session` has room for it; verified by size and
   * sha256), and keeps it from eviction until the returned function is called.
   *
   * @param sha256 The digest.
   * @param session The session it is for (its quotas are checked before a fetch).
   * @param what What it is for (for messages).
   * @throws {SessionError} `BLOB_NOT_FOUND`, `QUOTA_EXCEEDED`, `CLUSTER_DATA_INVALID`.
   */
  async holdBlob(sha256: string, session: Session, what: string): Promise<() => void> {
    const unpin = await this.pin(`b:${sha256}`);
    try {
      if (await this.blobs.has(sha256)) return unpin;
      const size = await this.#registry?.blobSize?.(sha256);
      if (size === undefined) {
        throw new SessionError(
          "BLOB_NOT_FOUND",
          `Cannot attach ${what}: the server holds no blob with sha256 ${sha256}. Upload it.`,
        );
      }
      session.admitBytes(what, size);
      await Deno.mkdir(this.#ctx.stagingRoot, { recursive: true });
      const dest = join(this.#ctx.stagingRoot, `fetch-${crypto.randomUUID()}`);
      try {
        await this.#registry!.fetchBlob(sha256, size, dest);
        await this.blobs.adopt(dest, sha256, size);
      } finally {
        await Deno.remove(dest).catch(() => {});
      }
      return unpin;
    } catch (e) {
      unpin();
      throw e;
    }
  }

  /**
   * Removes this node's copy of a session (workers first); `closed` keeps the pair closed.
   * Drops of one pair run one after the other, and a bind waits for them: a call told the
   * session is closed finds this node's copy gone.
   */
  #drop(key: string, local: Session | undefined, closed: boolean): Promise<void> {
    const drop = async () => {
      if (closed && !this.#tombstones.has(key)) await this.#tombstone(key);
      await this.#releasing.get(key);
      if (!local || this.#sessions.get(key) !== local) return;
      const [userId, sessionId] = [local.userId, local.sessionId];
      await this.release(userId, sessionId, { allowReconnect: true, localOnly: true });
    };
    const p = (this.#dropping.get(key) ?? Promise.resolve()).catch(() => {}).then(drop);
    this.#dropping.set(key, p);
    const forget = () => {
      if (this.#dropping.get(key) === p) this.#dropping.delete(key);
    };
    p.then(forget, forget);
    return p;
  }

  /** The live session of (user id, session id), without creating one. */
  find(userId: string, sessionId: string): Session | undefined {
    return this.#sessions.get(keyOf(userId, sessionId));
  }

  async #create(userId: string, sessionId: string, shared?: SharedSession): Promise<Session> {
    const q = this.#ctx.quotas;
    const all = this.sessions();
    // Creations still under way count too (this one is not among them yet): concurrent
    // requests for new sessions must not all pass the same check.
    const inFlight = [...this.#creating.keys()];
    if (all.length + inFlight.length >= q.maxSessions) {
      throw new SessionError(
        "QUOTA_EXCEEDED",
        `Cannot create a session: the server holds ${all.length} sessions, the most it keeps ` +
          `is ${q.maxSessions}. Release sessions you no longer use.`,
        { reason: "SESSIONS" },
      );
    }
    const mine = all.filter((s) => s.userId === userId).length +
      inFlight.filter((k) => k.slice(0, k.lastIndexOf("\u0000")) === userId).length;
    if (mine >= q.maxSessionsPerUser) {
      throw new SessionError(
        "QUOTA_EXCEEDED",
        `Cannot create a session for user ${JSON.stringify(userId)}: they hold ${mine} ` +
          `sessions, the most one user may hold is ${q.maxSessionsPerUser}. Release sessions ` +
          "you no longer use (spark.stop()).",
        { reason: "USER_SESSIONS" },
      );
    }
    const dir = this.sessionDir(userId, sessionId);
    const manifest: SessionManifest = {
      version: 1,
      userId,
      sessionId,
      serverSideSessionId: shared?.serverSideSessionId ?? crypto.randomUUID(),
      createdAt: shared?.createdAt ?? Date.now(),
      artifacts: {},
      config: {},
    };
    if (this.#workerIds) {
      const id = this.#workerIds.allocate();
      manifest.worker = { uid: id, gid: id };
    }
    try {
      await Deno.mkdir(join(dir, "root"), { recursive: true });
      await Deno.mkdir(join(dir, "artifacts"), { recursive: true });
      await Deno.mkdir(join(dir, "ro"), { recursive: true });
      const session = new Session(dir, manifest, this.#ctx);
      await secureSessionDirs(session, this.#traverse, false);
      await writeManifest(join(dir, "manifest.json"), manifest);
      this.#sessions.set(keyOf(userId, sessionId), session);
      return session;
    } catch (e) {
      if (manifest.worker) this.#workerIds?.free(manifest.worker.uid);
      throw e;
    }
  }

  /**
   * Releases a session: stops its workers (release hooks), deletes its directory and
   * everything in it, and unless `allowReconnect` closes the pair for good. Releasing an
   * unknown session is not an error.
   *
   * In a cluster the pair is closed in the registry, so every node drops its copy; with
   * `localOnly` only this node's copy goes (the cluster keeps the session).
   *
   * @returns The server-side id of the session, if it existed.
   */
  async release(
    userId: string,
    sessionId: string,
    options: { allowReconnect?: boolean; localOnly?: boolean } = {},
  ): Promise<string | undefined> {
    const key = keyOf(userId, sessionId);
    while (this.#releasing.has(key)) await this.#releasing.get(key);
    let finish!: () => void;
    this.#releasing.set(key, new Promise<void>((r) => finish = r));
    let session: Session | undefined;
    try {
      let sharedId: string | undefined;
      if (this.#registry && !options.localOnly) {
        sharedId = await this.#closeShared(userId, sessionId, options.allowReconnect ?? false);
      }
      session = this.#sessions.get(key);
      if (!session) {
        if (sharedId !== undefined && !options.allowReconnect) await this.#tombstone(key);
        return sharedId;
      }
      this.#sessions.delete(key);
      // A commit or config write under way finishes first; none starts after this.
      await session.close();
      if (!options.allowReconnect) await this.#tombstone(key);
      for (const hook of this.#hooks) await hook(session);
      // Rename first so that a crash half-way through the delete is finished at start-up,
      // never restored as a session with missing files.
      const doomed = join(session.dir, "..", `.released-${crypto.randomUUID()}`);
      await Deno.rename(session.dir, doomed);
      await removeAll(doomed);
      if (session.worker) this.#workerIds?.free(session.worker.uid);
    } finally {
      this.#releasing.delete(key);
      finish();
    }
    const now = Date.now();
    for (const a of session.artifacts()) {
      this.#lastUsed.set(`b:${a.sha256}`, now);
      if (a.tree) this.#lastUsed.set(`t:${a.tree}`, now);
    }
    const pip = session.pipLayer();
    if (pip) this.#lastUsed.set(`l:${pip.key}`, now);
    await this.collect();
    return session.serverSideSessionId;
  }

  /**
   * Closes the pair in the cluster's registry (or, with `reconnect`, starts a new incarnation
   * with a new server-side id, as Spark does); every node's watch then drops its copy.
   *
   * @returns The server-side id the session had, if the registry held it open.
   */
  async #closeShared(
    userId: string,
    sessionId: string,
    reconnect: boolean,
  ): Promise<string | undefined> {
    const registry = this.#registry!;
    const entry = await registry.get(userId, sessionId);
    if (!entry || entry.value.closed) return undefined;
    await registry.update(userId, sessionId, (cur) =>
      reconnect
        ? {
          userId,
          sessionId,
          serverSideSessionId: crypto.randomUUID(),
          createdAt: Date.now(),
          usedAt: Date.now(),
          artifacts: [],
          config: {},
        }
        : { ...(cur ?? entry.value), closed: true, artifacts: [], config: {} });
    return entry.value.serverSideSessionId;
  }

  /**
   * Releases every session unused for longer than the idle timeout and not busy.
   *
   * In a cluster only this node's copy goes: other nodes may be serving the session
   * ({@linkcode SessionStore.expireSharedIdle} releases those idle on every node).
   *
   * @returns The released sessions' ids.
   */
  async expireIdle(now: number = Date.now()): Promise<string[]> {
    if (this.#idleTimeoutMs <= 0) return [];
    const out: string[] = [];
    const local = this.#registry !== undefined;
    for (const s of this.sessions()) {
      if (!s.busy && now - s.lastAccess > this.#idleTimeoutMs) {
        await this.release(
          s.userId,
          s.sessionId,
          local ? { allowReconnect: true, localOnly: true } : {},
        );
        out.push(s.sessionId);
      }
    }
    return out;
  }

  /**
   * Stops using the data directory and lets its lock go. Sessions stay on disk and are restored
   * on next open.
   */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#collecting;
    this.#unwatch?.();
    this.#sessions.clear();
    this.#ctx.unpack?.close?.();
    await this.#lock?.release();
  }

  async #tombstone(key: string): Promise<void> {
    this.#tombstones.set(key, Date.now());
    while (this.#tombstones.size > this.#maxTombstones) {
      this.#tombstones.delete(this.#tombstones.keys().next().value!);
    }
    await writeFileAtomic(this.#tombstonePath(), JSON.stringify([...this.#tombstones]));
  }

  #tombstonePath(): string {
    return join(this.dataDir, "closed-sessions.json");
  }
}

function keyOf(userId: string, sessionId: string): string {
  return `${userId}\u0000${sessionId}`;
}

/**
 * User ids are arbitrary strings; a digest gives a safe, fixed-length directory name that no
 * user id can steer out of `sessions/`.
 */
function userDirName(userId: string): string {
  return "u-" + createHash("sha256").update(userId).digest("hex").slice(0, 32);
}
