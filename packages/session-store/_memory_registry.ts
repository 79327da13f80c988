// Copyright 2026 the Valise authors. Apache-2.0 license.
// Test helper: a cluster registry held in memory, records stored encoded (and decoded with the
// checks) as NATS would; with `indexed`, it keeps a ClusterIndex as the NATS registry does.
import { createHash } from "node:crypto";
import { ClusterIndex } from "./cluster_index.ts";
import { SessionError } from "./errors.ts";
import {
  decodeSharedSession,
  encodeSharedSession,
  type RegistryEntry,
  type SessionRegistry,
  type SharedSession,
} from "./registry.ts";

const limits = { maxArtifactBytes: 2 ** 34, maxArtifacts: 10_000 };

/** A registry in memory, for stores of several nodes in one test. */
export class MemoryRegistry implements SessionRegistry {
  /** Encoded records by pair. */
  stored = new Map<string, { bytes: Uint8Array; revision: number }>();
  /** Blobs by digest. */
  blobs = new Map<string, Uint8Array>();
  /** The last revision written. */
  revision = 0;
  /** Makes `putBlob` fail as an unavailable cluster does. */
  failPuts = false;
  /** Runs once at the start of the next `update` (to interleave another node's call). */
  beforeNextUpdate: (() => Promise<void>) | undefined;
  /** Writes so far (`update` calls that wrote). */
  writes = 0;
  listeners = new Set<(v: SharedSession) => void>();
  /** The index of every record, when made with `indexed`. */
  readonly records: ClusterIndex | undefined;

  /** Creates an empty registry. */
  constructor(options: { indexed?: boolean } = {}) {
    this.records = options.indexed
      ? new ClusterIndex(() => Promise.resolve(this.revision))
      : undefined;
  }

  get(userId: string, sessionId: string): Promise<RegistryEntry | undefined> {
    const r = this.stored.get(`${userId}\u0000${sessionId}`);
    if (!r) return Promise.resolve(undefined);
    return Promise.resolve({
      value: decodeSharedSession(r.bytes, limits, { userId, sessionId }),
      revision: r.revision,
    });
  }

  async update(
    userId: string,
    sessionId: string,
    change: (current: SharedSession | undefined) => SharedSession,
  ): Promise<RegistryEntry> {
    const hook = this.beforeNextUpdate;
    this.beforeNextUpdate = undefined;
    await hook?.();
    const cur = await this.get(userId, sessionId);
    const value = change(cur?.value);
    if (cur && value === cur.value) return cur;
    this.put(userId, sessionId, value);
    return { value, revision: this.revision };
  }

  /** Writes a record as is (as a holder of the cluster's credentials may). */
  put(userId: string, sessionId: string, value: SharedSession): void {
    const revision = ++this.revision;
    this.writes++;
    const key = `${userId}\u0000${sessionId}`;
    this.stored.set(key, { bytes: encodeSharedSession(value), revision });
    this.records?.apply(key, revision, value);
    this.records?.seen(revision);
    for (const l of this.listeners) l(value);
  }

  async putBlob(sha256: string, path: string): Promise<void> {
    if (this.failPuts) {
      throw new SessionError("CLUSTER_UNAVAILABLE", "The cluster's NATS service is down (test).");
    }
    this.blobs.set(sha256, await Deno.readFile(path));
  }

  async fetchBlob(sha256: string, size: number, dest: string): Promise<void> {
    const bytes = this.blobs.get(sha256);
    if (!bytes || bytes.length !== size) {
      throw new SessionError("CLUSTER_DATA_INVALID", `no blob ${sha256} of ${size} bytes`);
    }
    if (createHash("sha256").update(bytes).digest("hex") !== sha256) {
      throw new SessionError("CLUSTER_DATA_INVALID", `blob ${sha256} is not that content`);
    }
    await Deno.writeFile(dest, bytes, { createNew: true });
  }

  blobSize(sha256: string): Promise<number | undefined> {
    return Promise.resolve(this.blobs.get(sha256)?.length);
  }

  watch(listener: (v: SharedSession) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}
