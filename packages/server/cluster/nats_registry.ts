// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The cluster's registry on NATS JetStream: session records in a KV bucket (compare-and-set on
 * the revision), blobs in an Object Store bucket named by sha256. Everything read back is
 * treated as written by an attacker who holds the cluster's credentials: records are decoded
 * with the store's checks, blobs are verified by size and sha256 before a node uses them.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { connect, headers, type NatsConnection } from "@nats-io/transport-node";
import { jetstream, type JetStreamClient, type JetStreamManager } from "@nats-io/jetstream";
import { type KV, type KvEntry, Kvm, type KvWatchEntry } from "@nats-io/kv";
import { type ObjectStore, Objm, setSha256Backend } from "@nats-io/obj";
import {
  ClusterIndex,
  decodeSharedSession,
  encodeSharedSession,
  isSessionError,
  MAX_SHARED_RECORD_BYTES,
  mergeAdds,
  type RegistryEntry,
  SessionError,
  type SessionRegistry,
  type SharedRecordLimits,
  type SharedSession,
} from "@valise/session-store";
import type { ClusterCredentials } from "./credentials.ts";
import { guardAbandonedSockets } from "./_socket_guard.ts";
import { BlobCollector, type GcStats, IntentKeeper } from "./blob_gc.ts";
import { GC_BUCKET } from "./gc_records.ts";
import { NatsGcStore } from "./nats_gc_store.ts";
import { riding, UNAVAILABLE_BUDGET_MS } from "./nats_retry.ts";

// Membership rides with the same rules; it imported them from here first.
export { riding } from "./nats_retry.ts";

/** The KV bucket of session records. */
export const SESSIONS_BUCKET = "valise_sessions";
/** The Object Store bucket of blobs. */
export const BLOBS_BUCKET = "valise_blobs";
/** Object Store chunk size: below NATS's default 1 MiB message limit, with room for headers. */
const CHUNK_BYTES = 512 * 1024;
/** Object Store chunks sent before the first is acknowledged. */
const PUT_WINDOW = 16;
/** Compare-and-set attempts before giving up: each conflict means another node wrote. */
const MAX_ATTEMPTS = 200;
/** Records kept per session key: enough to find writes a concurrent one overwrote. */
const HISTORY = 16;
/**
 * How long anything in the GC bucket lives: intents and the lease are rewritten well within it;
 * what a dead node or anyone else left there goes by itself.
 */
const GC_BUCKET_MAX_AGE_MS = 60 * 60_000;
/** The key of the blob-proof secret every node shares (in the sessions bucket). */
export const PROOF_KEY = "k.blob-proofs";
/** The bytes of that secret. */
const PROOF_KEY_BYTES = 32;
/** Waits between attempts to watch the bucket again after the watch ended. */
const REWATCH_MS = 1000;

/** Options of {@linkcode NatsRegistry.connect}. */
export interface NatsRegistryOptions {
  /** NATS server URLs (`nats://host:port`), any members of the cluster. */
  servers: readonly string[];
  /** This node's name, shown to NATS as the connection's name. */
  nodeId: string;
  /**
   * JetStream replicas of Valise's buckets when this node creates them (1, 3 or 5).
   * @default {1}
   */
  replicas?: number;
  /**
   * How to authenticate to NATS.
   * @default {undefined} no credentials
   */
  credentials?: ClusterCredentials | undefined;
  /**
   * Caps on what a record read back may hold.
   * @default {{ maxArtifactBytes: 16 GiB, maxArtifacts: 10000 }}
   */
  limits?: SharedRecordLimits;
  /**
   * Receives notices (connection lost and back).
   * @default {undefined}
   */
  log?: ((line: string) => void) | undefined;
  /**
   * How long a call rides out NATS being unavailable (a member died and its streams elect new
   * leaders, a reconnect) before it fails with `CLUSTER_UNAVAILABLE`.
   * @default {UNAVAILABLE_BUDGET_MS} (60 s)
   */
  unavailableBudgetMs?: number | undefined;
}

/** Options of {@linkcode NatsRegistry.startGc}. */
export interface GcOptions {
  /**
   * Objects younger than this, and records written within it, are never collected.
   * @default {86_400_000} (24 h)
   */
  graceMs?: number | undefined;
  /**
   * Receives what the collector did (deletions, skips, failures, the lease taken).
   * @default {undefined}
   */
  log?: ((line: string) => void) | undefined;
}

function unavailable(what: string, e: unknown): SessionError {
  if (e instanceof SessionError) return e;
  return new SessionError(
    "CLUSTER_UNAVAILABLE",
    `The cluster's NATS service could not ${what}: ${e instanceof Error ? e.message : e}. ` +
      (/authorization|authentication|credentials|permissions/i.test(String(e))
        ? "Give the node the NATS credentials the cluster expects, in a file named by " +
          "--cluster-creds-file or VALISE_CLUSTER_CREDS_FILE (a .creds file, user:password or a " +
          "token)."
        : "Check that a majority of the NATS cluster's members is up and reachable; then retry."),
    { cause: e },
  );
}

function corrupt(message: string): SessionError {
  return new SessionError(
    "CLUSTER_DATA_INVALID",
    `${message}; it was not used. Something other than a Valise node wrote the cluster's ` +
      "object store: check who holds the cluster's credentials.",
  );
}

/** The KV key of a pair: user ids are arbitrary strings, KV keys are not. */
export function sessionKey(userId: string, sessionId: string): string {
  const user = createHash("sha256").update(userId).digest("hex").slice(0, 32);
  return `s.${user}.${sessionId}`;
}

/** Base64url with padding, as the Object Store encodes digests and names. */
function base64UrlPadded(bytes: Uint8Array): string {
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replaceAll("+", "-").replaceAll("/", "_");
}

/** The Object Store's digest (`SHA-256=<base64url>`) as lowercase hex, or `undefined`. */
function digestHex(digest: string): string | undefined {
  const m = /^SHA-256=([A-Za-z0-9_-]{43}=?)$/i.exec(digest);
  if (!m) return undefined;
  const b64 = m[1]!.replaceAll("-", "+").replaceAll("_", "/");
  const bin = atob(b64.endsWith("=") ? b64 : `${b64}=`);
  return [...bin].map((c) => c.charCodeAt(0).toString(16).padStart(2, "0")).join("");
}

/** A record a concurrent write overwrote, and the record both writes were made from. */
interface Overwritten {
  /** The overwritten record. */
  readonly value: SharedSession;
  /** The record at the revision the overwriting write expected (the bug lets both expect it). */
  readonly base: SharedSession | undefined;
}

/**
 * `cur` with the records a concurrent write overwrote folded in, as if they had been written
 * first (they were, by revision): their artifacts first (the earlier commit of a name keeps
 * it), their config changes (against the record both writes were made from) where `cur` did
 * not change the same key, the latest use, a release among them stays a release, and when they
 * are another incarnation of the session than `cur` (two nodes created it at once) the
 * earliest one's identity is kept.
 */
function foldOverwritten(cur: SharedSession, overwritten: Overwritten[]): SharedSession {
  const first = overwritten[0]?.value;
  if (!first) return cur;
  // A use recorded in an overwritten write stays recorded.
  const used = Math.max(cur.usedAt ?? -1, ...overwritten.map((o) => o.value.usedAt ?? -1));
  const usedAt = used >= 0 ? { usedAt: used } : {};
  if (cur.closed || overwritten.some((o) => o.value.closed)) {
    return { ...cur, ...usedAt, closed: true, artifacts: [], config: {} };
  }
  const id = first.serverSideSessionId;
  const same = cur.serverSideSessionId === id;
  let acc: SharedSession = { ...(same ? cur : first), ...usedAt, artifacts: [] };
  const config = new Map(Object.entries(acc.config));
  for (const o of overwritten) {
    if (o.value.serverSideSessionId !== id) continue;
    acc = mergeAdds(acc, o.value.artifacts).next;
    const base = o.base?.serverSideSessionId === id ? o.base.config : {};
    const keys = new Set([...Object.keys(base), ...Object.keys(o.value.config)]);
    for (const k of keys) {
      const was = base[k];
      const now = o.value.config[k];
      // Changed by the overwritten write, and left as it was by the one that overwrote it.
      if (now === was || (same && cur.config[k] !== was)) continue;
      if (now === undefined) config.delete(k);
      else config.set(k, now);
    }
  }
  acc = { ...acc, config: Object.fromEntries(config) };
  return same ? mergeAdds(acc, cur.artifacts).next : acc;
}

/** Counters of a {@linkcode NatsRegistry}. */
export interface RegistryStats {
  /** Compare-and-set writes that met another node's write and were made again. */
  conflicts: number;
  /** Accepted writes found to have overwritten another's (nats-server < 2.9.21), repaired. */
  repairs: number;
  /** Blobs fetched from the object store and verified. */
  fetches: number;
  /** Bytes of those blobs. */
  fetchedBytes: number;
  /** Blobs the object store returned with other bytes or another size: refused. */
  refusedBlobs: number;
  /** Blobs copied to the object store. */
  puts: number;
  /** Bytes of those blobs. */
  putBytes: number;
  /** Blob GC passes this node ran holding the lease. */
  gcRuns: number;
  /** Objects this node's blob GC deleted. */
  gcDeleted: number;
  /** Bytes of those objects. */
  gcDeletedBytes: number;
  /** Unreferenced objects left because an upload of them was in flight. */
  gcSkippedInFlight: number;
}

/** A {@linkcode SessionRegistry} on NATS JetStream. */
export class NatsRegistry implements SessionRegistry {
  /** The connection. */
  readonly connection: NatsConnection;
  /** The replicas the buckets have. */
  readonly replicas: number;
  #kv: KV;
  #js: JetStreamClient;
  #jsm: JetStreamManager;
  #blobs: ObjectStore;
  #limits: SharedRecordLimits;
  #listeners = new Set<(value: SharedSession) => void>();
  #closing = false;
  #stopWatch: (() => void) | undefined;
  /** Set when the watch was stopped to be watched again at once. */
  #restarting = false;
  #nodeId: string;
  #budgetMs: number;
  #gcStore: NatsGcStore;
  #intents: IntentKeeper;
  #collector: BlobCollector | undefined;
  /** {@inheritDoc SessionRegistry.records} */
  readonly records: ClusterIndex;
  #stats: Omit<RegistryStats, `gc${string}`> = {
    conflicts: 0,
    repairs: 0,
    fetches: 0,
    fetchedBytes: 0,
    refusedBlobs: 0,
    puts: 0,
    putBytes: 0,
  };

  private constructor(
    nc: NatsConnection,
    js: JetStreamClient,
    jsm: JetStreamManager,
    kv: KV,
    blobs: ObjectStore,
    limits: SharedRecordLimits,
    replicas: number,
    gcStore: NatsGcStore,
    nodeId: string,
    budgetMs: number,
  ) {
    this.connection = nc;
    this.#js = js;
    this.#kv = kv;
    this.#jsm = jsm;
    this.#blobs = blobs;
    this.#limits = limits;
    this.replicas = replicas;
    this.#gcStore = gcStore;
    this.#nodeId = nodeId;
    this.#budgetMs = budgetMs;
    this.#intents = new IntentKeeper(gcStore, nodeId);
    this.records = new ClusterIndex(() => this.#barrier(), {
      onStall: () => {
        this.#restarting = true;
        this.#stopWatch?.();
      },
    });
  }

  /**
   * Connects to the NATS cluster and opens (creating them if missing) Valise's buckets.
   *
   * @throws {SessionError} `CLUSTER_UNAVAILABLE` when NATS or JetStream cannot be reached.
   */
  static async connect(options: NatsRegistryOptions): Promise<NatsRegistry> {
    const replicas = options.replicas ?? 1;
    // The object store client verifies what it reads with SHA-256 too: with node:crypto, not
    // its pure-JS default (5x the get throughput here, docs/BENCHMARKS.md). Process-wide.
    setSha256Backend("native");
    let nc: NatsConnection;
    guardAbandonedSockets();
    try {
      nc = await connect({
        servers: [...options.servers],
        name: `valise-${options.nodeId}`,
        // A node outlives a NATS restart: it keeps trying, calls fail meanwhile.
        maxReconnectAttempts: -1,
        ...(options.credentials ?? {}),
      });
    } catch (e) {
      throw unavailable(`be reached at ${options.servers.join(", ")}`, e);
    }
    try {
      const js = jetstream(nc);
      const kvm = new Kvm(js);
      let kv: KV;
      try {
        // Reads go to the stream's leader (no direct get from a lagging replica): a node that
        // was just told of a commit sees it.
        kv = await kvm.create(SESSIONS_BUCKET, {
          replicas,
          history: HISTORY,
          maxValueSize: MAX_SHARED_RECORD_BYTES,
          allow_direct: false,
        });
      } catch {
        // Made by another node with other settings: use it as it is.
        kv = await kvm.open(SESSIONS_BUCKET);
      }
      const objm = new Objm(js);
      let blobs: ObjectStore;
      try {
        blobs = await objm.create(BLOBS_BUCKET, { replicas });
      } catch {
        blobs = await objm.open(BLOBS_BUCKET);
      }
      let gc: KV;
      try {
        gc = await kvm.create(GC_BUCKET, {
          replicas,
          // The lease's compare-and-set is checked against the writes after the one it read.
          history: HISTORY,
          ttl: GC_BUCKET_MAX_AGE_MS,
          allow_direct: false,
        });
      } catch {
        gc = await kvm.open(GC_BUCKET);
      }
      const limits = options.limits ?? { maxArtifactBytes: 16 * 2 ** 30, maxArtifacts: 10_000 };
      const jsm = await js.jetstreamManager();
      const gcStore = new NatsGcStore({
        js,
        jsm,
        gc,
        sessions: kv,
        sessionsBucket: SESSIONS_BUCKET,
        blobs,
        blobsBucket: BLOBS_BUCKET,
        node: options.nodeId,
      });
      const registry = new NatsRegistry(
        nc,
        js,
        jsm,
        kv,
        blobs,
        limits,
        replicas,
        gcStore,
        options.nodeId,
        options.unavailableBudgetMs ?? UNAVAILABLE_BUDGET_MS,
      );
      if (options.log) registry.#logStatus(options.log);
      registry.#watchAll(options.log);
      // Every record written before this node joined is in its index before it serves.
      await registry.records.caughtUp();
      return registry;
    } catch (e) {
      await nc.close().catch(() => {});
      throw unavailable("open JetStream's buckets (is the server started with -js?)", e);
    }
  }

  /** Runs `fn` again while NATS is unavailable, within this registry's budget. */
  #ride<T>(fn: () => Promise<T>): Promise<T> {
    return riding(fn, { budgetMs: this.#budgetMs });
  }

  async #logStatus(log: (line: string) => void): Promise<void> {
    for await (const s of this.connection.status()) {
      if (s.type === "disconnect" || s.type === "reconnect") {
        log(`cluster: NATS ${s.type === "disconnect" ? "connection lost" : "reconnected"}`);
      }
    }
  }

  #decode(entry: KvEntry, pair?: { userId: string; sessionId: string }): SharedSession {
    const value = decodeSharedSession(entry.value, this.#limits, pair);
    if (entry.key !== sessionKey(value.userId, value.sessionId)) {
      throw new SessionError(
        "CLUSTER_DATA_INVALID",
        `The cluster's session record under ${entry.key} names another session; it was not used.`,
      );
    }
    return value;
  }

  /** {@inheritDoc SessionRegistry.get} */
  async get(userId: string, sessionId: string): Promise<RegistryEntry | undefined> {
    let entry: KvEntry | null;
    try {
      entry = await this.#ride(() => this.#kv.get(sessionKey(userId, sessionId)));
    } catch (e) {
      throw unavailable("read the session's record", e);
    }
    if (!entry || entry.operation !== "PUT") return undefined;
    const value = this.#decode(entry, { userId, sessionId });
    this.records.apply(entry.key, entry.revision, value);
    return { value, revision: entry.revision };
  }

  /**
   * {@inheritDoc SessionRegistry.update}
   *
   * nats-server before 2.9.21 (Debian has 2.9.10) checks the expected revision of a clustered
   * stream before Raft, not in it (nats-io/nats-server#4320): two writes expecting the same
   * revision can both be accepted, the later one overwriting the earlier. So every accepted
   * write is checked against the key's history: when records were written between the revision
   * this one expected and its own, they were overwritten, and the change is made again on top of
   * them (their artifacts first: the earlier commit of a name keeps it; their config changes
   * where this write left the key alone; the latest use). A change that returns the record it
   * was given unchanged writes nothing.
   */
  async update(
    userId: string,
    sessionId: string,
    change: (current: SharedSession | undefined) => SharedSession,
  ): Promise<RegistryEntry> {
    const key = sessionKey(userId, sessionId);
    let overwritten: Overwritten[] = [];
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const cur = await this.get(userId, sessionId);
      const next = change(cur ? foldOverwritten(cur.value, overwritten) : cur);
      // Nothing to change (a creation another node made first, a use already recorded).
      if (cur && next === cur.value) return cur;
      const bytes = encodeSharedSession(next);
      let revision: number;
      try {
        revision = await this.#ride(() =>
          cur ? this.#kv.update(key, bytes, cur.revision) : this.#kv.create(key, bytes)
        );
      } catch (e) {
        // Another node wrote first: read its record and apply the change to it.
        if (/wrong last sequence|key exists/i.test(String((e as Error)?.message))) {
          this.#stats.conflicts++;
          continue;
        }
        throw unavailable("record the session", e);
      }
      const lost = await this.#between(key, cur?.revision ?? 0, revision);
      if (!lost.length) {
        this.records.apply(key, revision, next);
        return { value: next, revision };
      }
      this.#stats.repairs++;
      overwritten = [...overwritten, ...lost.map((value) => ({ value, base: cur?.value }))];
    }
    throw new SessionError(
      "CLUSTER_UNAVAILABLE",
      `Could not record session ${sessionId} in the cluster: other nodes changed it ` +
        `${MAX_ATTEMPTS} times in a row while this one tried. Retry.`,
    );
  }

  /** What this node did with the cluster so far (for `/metrics`). */
  get stats(): Readonly<RegistryStats> {
    const gc = this.#collector?.stats ??
      { runs: 0, deleted: 0, deletedBytes: 0, skippedInFlight: 0 } satisfies GcStats;
    return {
      ...this.#stats,
      gcRuns: gc.runs,
      gcDeleted: gc.deleted,
      gcDeletedBytes: gc.deletedBytes,
      gcSkippedInFlight: gc.skippedInFlight,
    };
  }

  /**
   * Starts this node's blob collector: each interval it takes or renews the cluster's GC lease
   * and, holding it, deletes objects no session record refers to that are older than the grace
   * period (see `blob_gc.ts`).
   */
  startGc(options: GcOptions = {}): void {
    if (this.#collector) return;
    this.#collector = new BlobCollector(this.#gcStore, {
      node: this.#nodeId,
      graceMs: options.graceMs ?? 86_400_000,
      log: options.log,
    });
    this.#collector.start();
  }

  /**
   * {@inheritDoc SessionRegistry.beginCommit}
   *
   * Stores a commit intent per blob in the GC bucket (renewed while held) and waits out
   * deletions a collector decided before it could see them.
   */
  async beginCommit(sha256s: readonly string[]): Promise<() => Promise<void>> {
    try {
      return await this.#ride(() => this.#intents.begin(sha256s));
    } catch (e) {
      throw unavailable("announce the upload to the cluster's blob GC", e);
    }
  }

  /** Records of `key` written after revision `after` and before `before`, oldest first. */
  async #between(key: string, after: number, before: number): Promise<SharedSession[]> {
    const out: SharedSession[] = [];
    const subject = `$KV.${SESSIONS_BUCKET}.${key}`;
    // One request per record found (the stream's sequence is shared by every key, so the gap
    // alone says nothing); each moves past the record it found.
    for (let seq = after + 1; seq < before && out.length <= HISTORY;) {
      const m = await this.#ride(() =>
        this.#jsm.streams.getMessage(
          `KV_${SESSIONS_BUCKET}`,
          { seq, next_by_subj: subject } as unknown as { seq: number },
        )
      ).catch((e) => {
        if (/no message found/i.test(String(e?.message))) return null;
        throw e;
      });
      if (!m || m.seq >= before) break;
      seq = m.seq + 1;
      try {
        const entry = { key, value: m.data, revision: m.seq, operation: "PUT" } as KvEntry;
        out.push(this.#decode(entry));
      } catch { /* a deletion marker or a record that fails its checks is never folded in */ }
    }
    return out;
  }

  /** {@inheritDoc SessionRegistry.putBlob} */
  async putBlob(sha256: string, path: string, size: number): Promise<void> {
    try {
      await this.#ride(() => this.#putBlob(sha256, path, size));
    } catch (e) {
      throw unavailable(`store blob ${sha256}`, e);
    }
  }

  /**
   * Puts a blob in the object store's own format (chunks under `$O.<bucket>.C.<id>`, then the
   * object's metadata under `$O.<bucket>.M.<name>`, rolling up the previous one), so that any
   * object store client reads it; unlike the NATS client's `put`, which waits for each chunk's
   * acknowledgement before sending the next (one Raft round trip per 512 KiB), up to
   * {@linkcode PUT_WINDOW} chunks are in flight (measured: 3.4x the throughput with replicas 3,
   * `docs/BENCHMARKS.md`). Chunks of one connection are stored in the order sent; a failure
   * removes the chunks sent and fails the whole put.
   */
  async #putBlob(sha256: string, path: string, size: number): Promise<void> {
    const held = await this.#blobs.info(sha256);
    if (held && !held.deleted && held.size === size && digestHex(held.digest) === sha256) return;
    const id = crypto.randomUUID().replaceAll("-", "");
    const chunkSubject = `$O.${BLOBS_BUCKET}.C.${id}`;
    const stream = `OBJ_${BLOBS_BUCKET}`;
    const hash = createHash("sha256");
    const inFlight: Promise<unknown>[] = [];
    let n = 0;
    let chunks = 0;
    try {
      using file = await Deno.open(path);
      const buf = new Uint8Array(CHUNK_BYTES);
      for (;;) {
        let filled = 0;
        while (filled < buf.length) {
          const got = await file.read(buf.subarray(filled));
          if (got === null) break;
          filled += got;
        }
        if (filled === 0) break;
        // A copy: the buffer is refilled while this chunk is still being sent.
        const chunk = buf.slice(0, filled);
        hash.update(chunk);
        n += filled;
        chunks++;
        inFlight.push(this.#js.publish(chunkSubject, chunk));
        if (inFlight.length >= PUT_WINDOW) await inFlight.shift();
        if (filled < buf.length) break;
      }
      await Promise.all(inFlight.splice(0));
      const digest = hash.digest();
      if (n !== size || digest.toString("hex") !== sha256) {
        throw corrupt(`Blob ${sha256} changed while it was copied to the cluster`);
      }
      const info = {
        name: sha256,
        description: "",
        options: { max_chunk_size: CHUNK_BYTES },
        bucket: BLOBS_BUCKET,
        nuid: id,
        size: n,
        chunks,
        mtime: new Date().toISOString(),
        digest: `SHA-256=${base64UrlPadded(digest)}`,
        deleted: false,
      };
      const h = headers();
      h.set("Nats-Rollup", "sub");
      await this.#js.publish(
        `$O.${BLOBS_BUCKET}.M.${base64UrlPadded(new TextEncoder().encode(sha256))}`,
        JSON.stringify(info),
        { headers: h },
      );
    } catch (e) {
      await Promise.allSettled(inFlight);
      await this.#jsm.streams.purge(stream, { filter: chunkSubject }).catch(() => {});
      throw e;
    }
    // The object's earlier chunks (other bytes under this name) are no longer its.
    if (held) {
      await this.#jsm.streams.purge(stream, { filter: `$O.${BLOBS_BUCKET}.C.${held.nuid}` })
        .catch(() => {});
    }
    this.#stats.puts++;
    this.#stats.putBytes += size;
  }

  /** {@inheritDoc SessionRegistry.fetchBlob} */
  async fetchBlob(sha256: string, size: number, dest: string): Promise<void> {
    try {
      await this.#ride(() => this.#fetchBlob(sha256, size, dest));
    } catch (e) {
      if (isSessionError(e) && e.errorClass === "CLUSTER_DATA_INVALID") this.#stats.refusedBlobs++;
      throw unavailable(`fetch blob ${sha256}`, e);
    }
    this.#stats.fetches++;
    this.#stats.fetchedBytes += size;
  }

  async #fetchBlob(sha256: string, size: number, dest: string): Promise<void> {
    const result = await this.#blobs.get(sha256);
    if (!result) {
      throw corrupt(`The cluster's object store has no blob ${sha256}, which a session records`);
    }
    const reader = result.data.getReader();
    if (result.info.size !== size) {
      await reader.cancel().catch(() => {});
      throw corrupt(
        `Blob ${sha256} in the cluster's object store is ${result.info.size} bytes, its ` +
          `session records ${size}`,
      );
    }
    const hash = createHash("sha256");
    let n = 0;
    let ok = false;
    const file = await Deno.open(dest, { write: true, createNew: true, mode: 0o600 });
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        n += value.length;
        // Never more than the record says, whatever the object store sends.
        if (n > size) break;
        hash.update(value);
        for (let off = 0; off < value.length;) off += await file.write(value.subarray(off));
      }
      await reader.cancel().catch(() => {});
      const failed = await result.error.catch((e) => e);
      const got = hash.digest("hex");
      if (n !== size || got !== sha256) {
        throw corrupt(
          `Blob ${sha256} fetched from the cluster's object store is not that content ` +
            `(${n} bytes hashing to ${n > size ? "(stopped reading)" : got})`,
        );
      }
      if (failed) throw failed;
      ok = true;
    } finally {
      file.close();
      if (!ok) await Deno.remove(dest).catch(() => {});
    }
  }

  /** {@inheritDoc SessionRegistry.watch} */
  watch(listener: (value: SharedSession) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * Watches every key of the bucket, for as long as the registry is open: the index gets each
   * key's last value first, then every write; listeners get the writes of session records
   * (releases, new incarnations). A record that fails its checks is never acted on: its key
   * counts for nothing. Watched again from where it stopped if the watch ends.
   */
  #watchAll(log: ((line: string) => void) | undefined): void {
    (async () => {
      while (!this.#closing) {
        try {
          this.#restarting = false;
          const from = this.records.revision;
          const iter = await this.#kv.watch({
            key: ">",
            ...(from > 0 ? { resumeFromRevision: from + 1 } : {}),
          });
          this.#stopWatch = () => iter.stop();
          if (this.#closing) iter.stop();
          for await (const e of iter) {
            // After a resume every entry is a write made while the watch was away.
            if (e.key.startsWith("s.")) this.#watched(e, e.isUpdate || from > 0);
            this.records.seen(e.revision);
          }
          // Stopped to be watched again at once (it stalled), or ended by itself: after a pause.
          if (this.#restarting) {
            this.#restarting = false;
            continue;
          }
        } catch (e) {
          if (!this.#closing) log?.(`cluster: watching ${SESSIONS_BUCKET} failed (${e}); again`);
        }
        if (!this.#closing) await new Promise((r) => setTimeout(r, REWATCH_MS));
      }
    })();
  }

  #watched(e: KvWatchEntry, update: boolean): void {
    let value: SharedSession | undefined;
    if (e.operation === "PUT") {
      try {
        value = this.#decode(e);
      } catch {
        value = undefined; // a record that fails its checks is never acted on
      }
    }
    this.records.apply(e.key, e.revision, value);
    if (!value || !update) return;
    for (const l of this.#listeners) {
      try {
        l(value);
      } catch { /* a listener's failure is its own */ }
    }
  }

  /** Writes this node's marker and returns its revision (for {@linkcode ClusterIndex}). */
  async #barrier(): Promise<number> {
    const node = createHash("sha256").update(this.#nodeId).digest("hex").slice(0, 16);
    try {
      return await this.#ride(() => this.#kv.put(`b.${node}`, String(Date.now())));
    } catch (e) {
      throw unavailable("write this node's marker", e);
    }
  }

  /** {@inheritDoc SessionRegistry.blobSize} */
  async blobSize(sha256: string): Promise<number | undefined> {
    let info;
    try {
      info = await this.#ride(() => this.#blobs.info(sha256));
    } catch (e) {
      throw unavailable(`look up blob ${sha256}`, e);
    }
    // The object store's word, checked when the bytes are fetched; an object that does not
    // even say it is that content, or says it is larger than any artifact, is not offered.
    if (!info || info.deleted || digestHex(info.digest) !== sha256) return undefined;
    const size = info.size;
    if (!Number.isSafeInteger(size) || size < 0 || size > this.#limits.maxArtifactBytes) {
      return undefined;
    }
    return size;
  }

  /**
   * The secret every node keys its blob proofs with, so that a challenge one node issued is
   * verified on any other: made by the first node that asks (compare-and-set), kept in the
   * sessions bucket. Whoever can read it there can read every blob of the object store anyway;
   * tenants never hold the cluster's credentials.
   *
   * nats-server before 2.9.21 may accept two creations at once; every node takes the oldest
   * value under the key, so they agree.
   *
   * @throws {SessionError} `CLUSTER_DATA_INVALID` when the stored value is not a secret of 32
   *   bytes; `CLUSTER_UNAVAILABLE`.
   */
  async proofKey(): Promise<Uint8Array> {
    const subject = `$KV.${SESSIONS_BUCKET}.${PROOF_KEY}`;
    for (let attempt = 0; attempt < 3; attempt++) {
      let seq = 1;
      for (let step = 0; step <= HISTORY; step++) {
        const m = await this.#ride(() =>
          this.#jsm.streams.getMessage(
            `KV_${SESSIONS_BUCKET}`,
            { seq, next_by_subj: subject } as unknown as { seq: number },
          )
        ).catch((e) => {
          if (/no message found/i.test(String(e?.message))) return null;
          throw unavailable("read the blob-proof secret", e);
        });
        if (!m) break;
        seq = m.seq + 1;
        // Deletion and purge markers carry an operation header; a value is a plain put.
        if (m.header?.get("KV-Operation")) continue;
        if (m.data.length !== PROOF_KEY_BYTES) {
          throw new SessionError(
            "CLUSTER_DATA_INVALID",
            `The cluster's blob-proof secret (key ${PROOF_KEY} of ${SESSIONS_BUCKET}) is ` +
              `${m.data.length} bytes, not ${PROOF_KEY_BYTES}: something other than a Valise node ` +
              `wrote it. Purge it (nats kv purge ${SESSIONS_BUCKET} ${PROOF_KEY}) and restart ` +
              "every node.",
          );
        }
        return new Uint8Array(m.data);
      }
      const secret = crypto.getRandomValues(new Uint8Array(PROOF_KEY_BYTES));
      await this.#ride(() => this.#kv.create(PROOF_KEY, secret)).catch((e) => {
        if (!/wrong last sequence|key exists/i.test(String(e?.message))) {
          throw unavailable("store the blob-proof secret", e);
        }
      });
    }
    throw new SessionError(
      "CLUSTER_UNAVAILABLE",
      `Could not read or create the cluster's blob-proof secret (${PROOF_KEY}); retry.`,
    );
  }

  /** Stops the watch and the collector, and closes the connection. */
  async close(): Promise<void> {
    this.#closing = true;
    await this.#collector?.stop();
    this.#intents.close();
    this.#listeners.clear();
    this.#stopWatch?.();
    await this.connection.close().catch(() => {});
  }
}
