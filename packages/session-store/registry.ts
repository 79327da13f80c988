// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The seam between a store and a cluster: what a registry shared by several nodes records of a
 * session, how that record is read back (as untrusted bytes), and how concurrent adds merge.
 * The store works without one; `@valise/server` plugs in NATS JetStream with `--cluster`.
 *
 * @module
 */
import { type ArtifactName, executorViewName, isSparkSessionId } from "@valise/protocol";
import { checkConfigEntry } from "./config.ts";
import { SessionError } from "./errors.ts";
import { checkArtifactName } from "./upload.ts";

/** One artifact as a registry records it: only what a node cannot derive itself. */
export interface SharedArtifact {
  /** The name as the client sent it; view, tree and kind are derived from it on each node. */
  readonly name: string;
  /** sha256 of the bytes, lowercase hex; also the blob's object name. */
  readonly sha256: string;
  /** Size in bytes. */
  readonly size: number;
  /** When it was committed (ms since the epoch); orders `sys.path`. */
  readonly addedAt: number;
  /**
   * Bytes of the tree an archive unpacked to on the node that committed it: counted against
   * the user's bytes on every node (the record's word, capped there), never used for paths.
   */
  readonly treeBytes?: number;
}

/** A session as a registry records it: what every node needs to rebuild it. */
export interface SharedSession {
  /** The client's user id. */
  readonly userId: string;
  /** The client's session id. */
  readonly sessionId: string;
  /** The id the cluster gave the session; the same on every node. */
  readonly serverSideSessionId: string;
  /** When the session was created (ms since the epoch). */
  readonly createdAt: number;
  /** Set once the session was released: the pair stays closed on every node. */
  readonly closed?: true;
  /**
   * When the session was last used on some node, as far as the cluster knows (ms since the
   * epoch): nodes write it at most once per quarter of the idle timeout; a session whose
   * `usedAt` is older than the idle timeout and that quarter is released cluster-wide.
   */
  readonly usedAt?: number;
  /** Committed artifacts. */
  readonly artifacts: readonly SharedArtifact[];
  /** Explicitly set config values. */
  readonly config: Readonly<Record<string, string>>;
}

/** A record and the registry's revision of it (for compare-and-set). */
export interface RegistryEntry {
  /** The record. */
  readonly value: SharedSession;
  /** The revision it was read at; changes with every write. */
  readonly revision: number;
}

/** What the index keeps of one open record. */
export interface RecordSummary {
  /** The client's user id. */
  readonly userId: string;
  /** The client's session id. */
  readonly sessionId: string;
  /** The cluster's id of this incarnation. */
  readonly serverSideSessionId: string;
  /** When it was created (ms since the epoch). */
  readonly createdAt: number;
  /** When it was last used on some node, as recorded; `undefined` for records that never said. */
  readonly usedAt: number | undefined;
  /** Bytes the record names: artifacts and the trees they unpacked to (the record's word). */
  readonly bytes: number;
  /** The digests of its artifacts. */
  readonly digests: readonly string[];
  /** The registry's revision of it. */
  readonly revision: number;
}

/** The cluster's open records, as a node knows them. */
export interface RecordIndex {
  /** Open records, of one user or of every user. */
  open(userId?: string): RecordSummary[];
  /** How many open records there are, of one user or in all. */
  count(userId?: string): number;
  /** The open record of a pair, if any. */
  find(userId: string, sessionId: string): RecordSummary | undefined;
  /**
   * Resolves once the index holds every record written to the registry before the call (the
   * check a quota on session creation needs).
   *
   * @throws {SessionError} `CLUSTER_UNAVAILABLE` when the registry's watch does not catch up.
   */
  caughtUp(): Promise<void>;
}

/**
 * Sessions and blobs shared by the nodes of a cluster. Every value it returns was read back
 * from a service other nodes (and whoever else holds its credentials) can write: an
 * implementation decodes records with {@linkcode decodeSharedSession} and verifies blobs by
 * sha256 before returning them.
 */
export interface SessionRegistry {
  /** The record of a (user, session) pair, if there is one. */
  get(userId: string, sessionId: string): Promise<RegistryEntry | undefined>;
  /**
   * Writes `change(current)` with compare-and-set on the revision it read, reading again and
   * calling `change` again on a conflict, until a write succeeds. `change` must be pure: it may
   * run several times. It may throw to abandon the write.
   */
  update(
    userId: string,
    sessionId: string,
    change: (current: SharedSession | undefined) => SharedSession,
  ): Promise<RegistryEntry>;
  /** Makes sure the shared blob store holds the file's bytes under its sha256 (uploads if not). */
  putBlob(sha256: string, path: string, size: number): Promise<void>;
  /**
   * Writes the shared blob `sha256` to `dest` (a new file), checking that it is `size` bytes
   * that hash to `sha256`; refuses (`CLUSTER_DATA_INVALID`) and leaves no file otherwise.
   */
  fetchBlob(sha256: string, size: number, dest: string): Promise<void>;
  /**
   * Calls `listener` with every record other nodes write from now on (releases, new
   * incarnations), until the returned function is called.
   */
  watch?(listener: (value: SharedSession) => void): () => void;
  /**
   * Announces that this node is about to put these blobs and commit a record naming them, so
   * that the cluster's blob GC leaves them alone (waiting for a deletion of one of them that is
   * already under way). Call the returned function once the record is written and its blobs
   * checked, or the commit failed. A registry without blob GC has no such method.
   */
  beginCommit?(sha256s: readonly string[]): Promise<() => Promise<void>>;
  /**
   * Every record of the cluster, summarised and kept current (cluster-wide quotas, idle
   * expiry, the digests a user's sessions hold).
   * @default {undefined} counted over this node's copies only
   */
  readonly records?: RecordIndex | undefined;
  /**
   * The size of blob `sha256` in the shared blob store, if it holds one that says it is that
   * content (its bytes are verified when fetched).
   * @default {undefined} only this node's blobs are looked up
   */
  blobSize?(sha256: string): Promise<number | undefined>;
}

/**
 * The largest record accepted: NATS's default message size. A session with more artifacts than
 * fit is refused (`QUOTA_EXCEEDED`) rather than written in part.
 */
export const MAX_SHARED_RECORD_BYTES = 1024 * 1024;

const SHA256_HEX = /^[0-9a-f]{64}$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Limits on what a decoded record may hold. */
export interface SharedRecordLimits {
  /** The largest artifact the store accepts. */
  readonly maxArtifactBytes: number;
  /** The most artifacts a session may hold. */
  readonly maxArtifacts: number;
}

function invalid(problem: string): SessionError {
  return new SessionError(
    "CLUSTER_DATA_INVALID",
    `The cluster's session record is invalid (${problem}); it was not used. Something other ` +
      "than a Valise node wrote it: check who holds the cluster's credentials.",
  );
}

/**
 * Encodes a record for the registry.
 *
 * @throws {SessionError} `QUOTA_EXCEEDED` when the record exceeds
 *   {@linkcode MAX_SHARED_RECORD_BYTES}.
 */
export function encodeSharedSession(value: SharedSession): Uint8Array {
  const bytes = new TextEncoder().encode(JSON.stringify({ v: 1, ...value }));
  if (bytes.length > MAX_SHARED_RECORD_BYTES) {
    throw new SessionError(
      "QUOTA_EXCEEDED",
      `Cannot record session ${value.sessionId} in the cluster: its record would take ` +
        `${bytes.length} bytes, the most is ${MAX_SHARED_RECORD_BYTES}. Use fewer artifacts ` +
        "(pack them into an archive).",
      { reason: "CLUSTER_RECORD" },
    );
  }
  return bytes;
}

/**
 * Decodes a record read from the registry, checking everything a hostile writer could set:
 * its size, its shape, that it is the pair it was read for, every name by the rules an upload
 * is held to, digests, sizes (capped as uploads are), and config values by the rules `Config`
 * sets them with.
 *
 * @param bytes The stored bytes.
 * @param limits Caps on sizes and counts.
 * @param pair The (user, session) it was stored for, when known.
 * @throws {SessionError} `CLUSTER_DATA_INVALID` naming the first problem.
 */
export function decodeSharedSession(
  bytes: Uint8Array,
  limits: SharedRecordLimits,
  pair?: { userId: string; sessionId: string },
): SharedSession {
  if (bytes.length > MAX_SHARED_RECORD_BYTES) throw invalid(`${bytes.length} bytes`);
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw invalid("not JSON");
  }
  const r = raw as Record<string, unknown>;
  if (typeof r !== "object" || r === null || Array.isArray(r) || r.v !== 1) {
    throw invalid("unknown format");
  }
  const { userId, sessionId, serverSideSessionId, createdAt, closed, usedAt, artifacts, config } =
    r;
  if (typeof userId !== "string" || userId.length > 4096) throw invalid("user id");
  if (typeof sessionId !== "string" || !isSparkSessionId(sessionId)) throw invalid("session id");
  if (pair && (pair.userId !== userId || pair.sessionId !== sessionId)) {
    throw invalid("recorded for another session");
  }
  if (typeof serverSideSessionId !== "string" || !UUID.test(serverSideSessionId)) {
    throw invalid("server-side session id");
  }
  if (typeof createdAt !== "number" || !Number.isSafeInteger(createdAt) || createdAt < 0) {
    throw invalid("creation time");
  }
  if (closed !== undefined && closed !== true) throw invalid("closed flag");
  if (usedAt !== undefined && !isCount(usedAt)) throw invalid("time last used");
  if (!Array.isArray(artifacts) || artifacts.length > limits.maxArtifacts) {
    throw invalid("artifact list");
  }
  const out: SharedArtifact[] = [];
  let merged: SharedSession = {
    userId,
    sessionId,
    serverSideSessionId,
    createdAt,
    artifacts: [],
    config: {},
  };
  for (const a of artifacts as unknown[]) {
    const x = a as Record<string, unknown>;
    if (typeof x !== "object" || x === null) throw invalid("artifact entry");
    const { name, sha256, size, addedAt, treeBytes } = x;
    if (typeof name !== "string") throw invalid("artifact name");
    try {
      checkArtifactName(name);
    } catch (e) {
      throw invalid(`artifact name ${JSON.stringify(name.slice(0, 200))}: ${(e as Error).message}`);
    }
    if (typeof sha256 !== "string" || !SHA256_HEX.test(sha256)) throw invalid("sha256");
    if (
      typeof size !== "number" || !Number.isSafeInteger(size) || size < 0 ||
      size > limits.maxArtifactBytes
    ) {
      throw invalid(`size of ${name}`);
    }
    if (typeof addedAt !== "number" || !Number.isSafeInteger(addedAt) || addedAt < 0) {
      throw invalid("time added");
    }
    if (treeBytes !== undefined && !isCount(treeBytes)) throw invalid(`tree bytes of ${name}`);
    const one: SharedArtifact = {
      name,
      sha256,
      size,
      addedAt,
      ...(treeBytes !== undefined ? { treeBytes } : {}),
    };
    // Two entries that could not both have been committed (same key, same view) are refused
    // as a whole: a node never picks one of them.
    const m = mergeAdds(merged, [one]);
    if (m.refused.length || m.next.artifacts.length === merged.artifacts.length) {
      throw invalid(`artifact ${name} clashes with another`);
    }
    merged = m.next;
    out.push(one);
  }
  if (typeof config !== "object" || config === null || Array.isArray(config)) {
    throw invalid("config");
  }
  const conf: [string, string][] = [];
  const entries = Object.entries(config);
  if (entries.length > 10_000) throw invalid("config size");
  for (const [k, v] of entries) {
    if (typeof v !== "string") throw invalid(`config ${k}`);
    try {
      checkConfigEntry(k, v);
    } catch (e) {
      throw invalid(`config ${JSON.stringify(k.slice(0, 200))}: ${(e as Error).message}`);
    }
    conf.push([k, v]);
  }
  return {
    userId,
    sessionId,
    serverSideSessionId,
    createdAt,
    ...(closed ? { closed: true as const } : {}),
    ...(usedAt !== undefined ? { usedAt } : {}),
    artifacts: out,
    config: Object.fromEntries(conf),
  };
}

function isCount(n: unknown): n is number {
  return typeof n === "number" && Number.isSafeInteger(n) && n >= 0;
}

function artifactKeyOf(name: ArtifactName): string {
  return name.alias === undefined ? name.path : `${name.path}#${name.alias}`;
}

/**
 * Adds artifacts to a record with the rules a commit applies on one node: a name already held
 * with the same bytes is a no-op; with other bytes, a name nested in another's path, or one
 * taking another's place in the workers' view is refused (`ARTIFACT_ALREADY_EXISTS`).
 *
 * @returns The new record and the adds refused, with why.
 */
export function mergeAdds(
  current: SharedSession,
  adds: readonly SharedArtifact[],
): { next: SharedSession; refused: { add: SharedArtifact; error: SessionError }[] } {
  const held = current.artifacts.map((a) => {
    const n = checkArtifactName(a.name);
    return { a, key: artifactKeyOf(n), view: executorViewName(n) };
  });
  const refused: { add: SharedArtifact; error: SessionError }[] = [];
  const exists = (add: SharedArtifact, why: string) =>
    refused.push({
      add,
      error: new SessionError(
        "ARTIFACT_ALREADY_EXISTS",
        `The artifact ${add.name} already exists in the cluster's record of the session (${why}); ` +
          "another node committed it at the same time. Please choose a different name.",
      ),
    });
  for (const add of adds) {
    const n = checkArtifactName(add.name);
    const key = artifactKeyOf(n);
    const view = executorViewName(n);
    const same = held.find((h) => h.key === key);
    if (same) {
      if (same.a.sha256 !== add.sha256) exists(add, "with other bytes");
      continue;
    }
    if (held.some((h) => h.key.startsWith(`${key}/`) || key.startsWith(`${h.key}/`))) {
      exists(add, "under a parent or child path");
      continue;
    }
    if (view !== undefined && held.some((h) => h.view === view)) {
      exists(add, `as ./${view} in the working directory`);
      continue;
    }
    held.push({ a: add, key, view });
  }
  return { next: { ...current, artifacts: held.map((h) => h.a) }, refused };
}

/**
 * Applies the config changes a node made (from `base` to `now`) to the record's config, so
 * that changes other nodes made to other keys meanwhile are kept.
 */
export function mergeConfig(
  current: Readonly<Record<string, string>>,
  base: Readonly<Record<string, string>>,
  now: Readonly<Record<string, string>>,
): Record<string, string> {
  const out = new Map(Object.entries(current));
  for (const [k, v] of Object.entries(now)) if (base[k] !== v) out.set(k, v);
  for (const k of Object.keys(base)) if (!Object.hasOwn(now, k)) out.delete(k);
  return Object.fromEntries(out);
}
