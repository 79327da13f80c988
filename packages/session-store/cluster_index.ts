// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * What a node knows of every session record of the cluster, kept in memory from the registry's
 * watch: enough to count sessions and bytes per user over the whole cluster, to find sessions
 * idle on every node, and to know which digests a user's sessions hold, without a read per
 * question.
 *
 * @module
 */
import { SessionError } from "./errors.ts";
import type { RecordIndex, RecordSummary, SharedSession } from "./registry.ts";

/** Options of {@linkcode ClusterIndex}. */
export interface ClusterIndexOptions {
  /**
   * How long {@linkcode ClusterIndex.caughtUp} waits for the watch to deliver its barrier.
   * @default {60_000}
   */
  timeoutMs?: number;
  /**
   * After this long without the barrier, `onStall` is called (and again after each such
   * period): a watch whose consumer lived on a NATS member that died delivers nothing more
   * until it is watched again.
   * @default {2_000}
   */
  stallMs?: number;
  /**
   * Restarts the watch from where it stopped.
   * @default {undefined} nothing
   */
  onStall?: (() => void) | undefined;
}

function pairKey(userId: string, sessionId: string): string {
  return `${userId}\u0000${sessionId}`;
}

/**
 * A {@linkcode RecordIndex} fed by a registry: `apply` with every record it reads, writes or
 * watches (already decoded and checked), `seen` with every revision its watch delivered, in
 * order. `caughtUp` writes a barrier (through `barrier`, which returns the barrier's revision)
 * and waits until the watch has delivered it: the stream is ordered, so every write before the
 * barrier has been applied by then.
 */
export class ClusterIndex implements RecordIndex {
  #records = new Map<string, RecordSummary>();
  #byUser = new Map<string, Set<string>>();
  /** The newest revision applied per registry key (open, closed or invalid), to ignore older. */
  #revisions = new Map<string, number>();
  /** The registry key each pair's record was applied from. */
  #keyOf = new Map<string, string>();
  #seen = 0;
  #waiters: { revision: number; resolve: () => void }[] = [];
  #barrier: () => Promise<number>;
  #timeoutMs: number;
  #stallMs: number;
  #onStall: (() => void) | undefined;

  /** Creates an empty index; `barrier` writes a marker and returns its revision. */
  constructor(barrier: () => Promise<number>, options: ClusterIndexOptions = {}) {
    this.#barrier = barrier;
    this.#timeoutMs = options.timeoutMs ?? 60_000;
    this.#stallMs = options.stallMs ?? 2_000;
    this.#onStall = options.onStall;
  }

  /**
   * Applies what the registry holds under `key` at `revision`: a record (decoded and checked),
   * or `undefined` when the key was deleted or its record failed the checks (then nothing of it
   * counts). Revisions older than one already applied for that key are ignored.
   */
  apply(key: string, revision: number, value: SharedSession | undefined): void {
    if ((this.#revisions.get(key) ?? 0) >= revision) return;
    this.#revisions.set(key, revision);
    this.#remove(key);
    if (!value || value.closed) return;
    const pair = pairKey(value.userId, value.sessionId);
    const other = this.#keyOf.get(pair);
    // Two registry keys naming one pair: the registry refuses that, so this is defensive only.
    if (other !== undefined && other !== key) this.#remove(other);
    let bytes = 0;
    for (const a of value.artifacts) bytes += a.size + (a.treeBytes ?? 0);
    this.#records.set(key, {
      userId: value.userId,
      sessionId: value.sessionId,
      serverSideSessionId: value.serverSideSessionId,
      createdAt: value.createdAt,
      usedAt: value.usedAt,
      bytes,
      digests: [...new Set(value.artifacts.map((a) => a.sha256))],
      revision,
    });
    this.#keyOf.set(pair, key);
    let keys = this.#byUser.get(value.userId);
    if (!keys) this.#byUser.set(value.userId, keys = new Set());
    keys.add(key);
  }

  /** Records that the watch delivered everything up to `revision`. */
  seen(revision: number): void {
    if (revision <= this.#seen) return;
    this.#seen = revision;
    const ready = this.#waiters.filter((w) => w.revision <= revision);
    if (ready.length === 0) return;
    this.#waiters = this.#waiters.filter((w) => w.revision > revision);
    for (const w of ready) w.resolve();
  }

  /** The newest revision the watch delivered. */
  get revision(): number {
    return this.#seen;
  }

  #remove(key: string): void {
    const old = this.#records.get(key);
    if (!old) return;
    this.#records.delete(key);
    const pair = pairKey(old.userId, old.sessionId);
    if (this.#keyOf.get(pair) === key) this.#keyOf.delete(pair);
    const keys = this.#byUser.get(old.userId);
    keys?.delete(key);
    if (keys?.size === 0) this.#byUser.delete(old.userId);
  }

  /** {@inheritDoc RecordIndex.open} */
  open(userId?: string): RecordSummary[] {
    if (userId === undefined) return [...this.#records.values()];
    return [...this.#byUser.get(userId) ?? []].map((k) => this.#records.get(k)!);
  }

  /** {@inheritDoc RecordIndex.count} */
  count(userId?: string): number {
    return userId === undefined ? this.#records.size : this.#byUser.get(userId)?.size ?? 0;
  }

  /** {@inheritDoc RecordIndex.find} */
  find(userId: string, sessionId: string): RecordSummary | undefined {
    const key = this.#keyOf.get(pairKey(userId, sessionId));
    return key === undefined ? undefined : this.#records.get(key);
  }

  /** {@inheritDoc RecordIndex.caughtUp} */
  async caughtUp(): Promise<void> {
    const revision = await this.#barrier();
    if (revision <= this.#seen) return;
    const deadline = Date.now() + this.#timeoutMs;
    let entry!: { revision: number; resolve: () => void };
    const delivered = new Promise<void>((resolve) => {
      entry = { revision, resolve };
      this.#waiters.push(entry);
    });
    try {
      for (;;) {
        const wait = Math.min(this.#stallMs, deadline - Date.now());
        if (wait <= 0) {
          throw new SessionError(
            "CLUSTER_UNAVAILABLE",
            `The cluster's watch did not deliver this node's marker (revision ${revision}) ` +
              `within ${this.#timeoutMs / 1000} s, so its count of the cluster's sessions may ` +
              "be out of date; check the NATS cluster's health, then retry.",
          );
        }
        let timer: ReturnType<typeof setTimeout> | undefined;
        const late = await Promise.race([
          delivered.then(() => false),
          new Promise<boolean>((r) => timer = setTimeout(() => r(true), wait)),
        ]);
        clearTimeout(timer);
        if (!late) return;
        this.#onStall?.();
      }
    } finally {
      this.#waiters = this.#waiters.filter((w) => w !== entry);
    }
  }
}
