// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Blob garbage collection in the cluster's object store, as a protocol over a small store
 * interface ({@linkcode GcStore}), so that the same code runs on NATS and, in tests, on a
 * model whose every step an adversarial scheduler orders.
 *
 * Two sides, each announcing itself before it reads the other (a store-and-load handshake, as
 * in Dekker's mutual exclusion): a node about to put a blob and commit a record naming it first
 * stores a commit intent, then waits out the collectors' delete intents stored before it; a
 * collector first stores a delete intent per candidate, then skips candidates with a commit
 * intent, then reads the records again, and deletes only what no record names. Whichever store
 * comes second in the stream's order, its writer sees the other's intent. The lease only keeps
 * collectors from doing the same work twice: two collectors at once (nats-server < 2.9.21 can
 * let two nodes take it) are safe. See docs/architecture.md, "Blob GC".
 *
 * @module
 */
import {
  CLOCK_MARGIN_MS,
  DELETE_INTENT_TTL_MS,
  INTENT_TTL_MS,
  type IntentKind,
  intentLiveUntil,
  type IntentValue,
  isMine,
  type LeaseHolder,
  type LeaseRecord,
  leaseState,
  type LeaseValue,
  type StoredObject,
} from "./gc_records.ts";

/** An intent as read back. */
export interface IntentRecord {
  /** Its stream sequence: the order of every write to the bucket. */
  readonly seq: number;
  /** When NATS stored it (ms since the epoch). */
  readonly storedAt: number;
  /** The blob it is about. */
  readonly sha256: string;
  /** Its decoded value, `undefined` when unreadable. */
  readonly value: IntentValue | undefined;
}

/** What the GC protocol needs of the cluster's storage. Every call is one atomic step. */
export interface GcStore {
  /** This node's clock (ms since the epoch). */
  now(): number;
  /** Waits `ms`. */
  sleep(ms: number): Promise<void>;
  /** Objects named by a sha256 and not deleted, with when each was stored. */
  listObjects(): Promise<StoredObject[]>;
  /** Deletes an object; whether there was one to delete. */
  deleteObject(sha256: string): Promise<boolean>;
  /**
   * Digests session records refer to: every session's latest record, and every record written
   * at or after `since` (so that a record a concurrent write overwrote, and its writer repairs,
   * counts). Reads at least everything written before the call started.
   */
  referenced(since: number): Promise<Set<string>>;
  /** Stores (or renews) an intent; returns its stream sequence. */
  putIntent(kind: IntentKind, sha256: string, holder: string, value: IntentValue): Promise<number>;
  /** Removes an intent. */
  removeIntent(kind: IntentKind, sha256: string, holder: string): Promise<void>;
  /**
   * The intents of a blob (the latest write of each holder), from the stream's leader; only
   * those stored before sequence `before` when it is given.
   */
  intents(kind: IntentKind, sha256: string, before?: number): Promise<IntentRecord[]>;
  /** The lease's latest write, if any. */
  readLease(): Promise<LeaseRecord | undefined>;
  /**
   * Writes the lease if its latest write is still `expected` (0: none); the new sequence, or
   * `undefined` when another write came first.
   */
  writeLease(value: LeaseValue, expected: number): Promise<number | undefined>;
  /** The first write of the lease after sequence `seq`, if any. */
  leaseAfter(seq: number): Promise<LeaseRecord | undefined>;
}

function nonce(): string {
  return crypto.randomUUID().replaceAll("-", "");
}

/** Runs `fn` over `items`, at most `limit` at a time. */
async function eachLimited<T>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
}

/** Options of {@linkcode IntentKeeper}. */
export interface IntentKeeperOptions {
  /**
   * How long a commit intent lives unless renewed.
   * @default {INTENT_TTL_MS}
   */
  ttlMs?: number;
  /**
   * Renew live intents every third of their time to live (off in models without timers).
   * @default {true}
   */
  renew?: boolean;
}

/**
 * A node's commit intents: {@linkcode IntentKeeper.begin} announces blobs the node is about to
 * put and commit, waits for deletions of them already decided, and returns the function that
 * withdraws the announcement. Live intents are renewed until withdrawn.
 */
export class IntentKeeper {
  #store: GcStore;
  #node: string;
  #ttlMs: number;
  #renew: boolean;
  #live = new Map<string, { sha256: string; holder: string }>();
  #timer: ReturnType<typeof setInterval> | undefined;

  /** A keeper for node `node`. */
  constructor(store: GcStore, node: string, options: IntentKeeperOptions = {}) {
    this.#store = store;
    this.#node = node;
    this.#ttlMs = options.ttlMs ?? INTENT_TTL_MS;
    this.#renew = options.renew ?? true;
  }

  /**
   * Stores a commit intent per blob, then waits until every delete intent stored before it has
   * been withdrawn or has lapsed: a collector that decided to delete one of these blobs before
   * it could see this intent has finished by then, so a put made after this returns is never
   * deleted by that collector. Collectors that store their delete intent later see this one and
   * leave the blob alone.
   *
   * @param sha256s The blobs.
   * @returns Withdraws the intents (after the record is written, or the commit failed).
   */
  async begin(sha256s: readonly string[]): Promise<() => Promise<void>> {
    const holder = `${this.#node}.${nonce()}`;
    const value: IntentValue = { node: this.#node, ttlMs: this.#ttlMs };
    const mine = [...new Set(sha256s)];
    if (mine.length === 0) return () => Promise.resolve();
    const ids: string[] = [];
    const release = async () => {
      for (const id of ids.splice(0)) {
        const i = this.#live.get(id);
        this.#live.delete(id);
        if (i) await this.#store.removeIntent("commit", i.sha256, i.holder).catch(() => {});
      }
      if (this.#live.size === 0) this.#stopTimer();
    };
    try {
      const seqs = await Promise.all(mine.map(async (sha256) => {
        const id = `${sha256}.${holder}`;
        ids.push(id);
        this.#live.set(id, { sha256, holder });
        return await this.#store.putIntent("commit", sha256, holder, value);
      }));
      this.#startTimer();
      await Promise.all(mine.map((sha256, i) => this.#waitForDeletions(sha256, seqs[i]!)));
    } catch (e) {
      await release();
      throw e;
    }
    return release;
  }

  /** Waits until no delete intent of `sha256` stored before `seq` is live. */
  async #waitForDeletions(sha256: string, seq: number): Promise<void> {
    for (let wait = 50;; wait = Math.min(wait * 2, 1000)) {
      const now = this.#store.now();
      // Each one lapses at the latest a few minutes after it was stored, and none stored
      // before `seq` can appear later: the loop ends.
      const live = (await this.#store.intents("delete", sha256, seq)).filter((i) => {
        const until = intentLiveUntil("delete", i.storedAt, i.value);
        return until !== undefined && now < until;
      });
      if (live.length === 0) return;
      await this.#store.sleep(wait);
    }
  }

  #startTimer(): void {
    if (!this.#renew || this.#timer !== undefined) return;
    this.#timer = setInterval(() => {
      const value: IntentValue = { node: this.#node, ttlMs: this.#ttlMs };
      for (const i of this.#live.values()) {
        // A renewal that fails is tried again at the next tick; the intent holds until then.
        this.#store.putIntent("commit", i.sha256, i.holder, value).catch(() => {});
      }
    }, Math.max(1, Math.floor(this.#ttlMs / 3)));
    Deno.unrefTimer(this.#timer);
  }

  #stopTimer(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** Stops renewing (the node is closing; its intents lapse). */
  close(): void {
    this.#live.clear();
    this.#stopTimer();
  }
}

/** Counters of a {@linkcode BlobCollector}. */
export interface GcStats {
  /** Passes this node ran holding the lease. */
  runs: number;
  /** Objects it deleted. */
  deleted: number;
  /** Bytes of those objects. */
  deletedBytes: number;
  /** Unreferenced objects it left because an upload of them was in flight. */
  skippedInFlight: number;
}

/** What one pass did. */
export interface PassResult {
  /** Digests deleted. */
  readonly deleted: string[];
  /** Digests left because of a live commit intent. */
  readonly inFlight: string[];
}

/** Options of {@linkcode BlobCollector}. */
export interface BlobCollectorOptions {
  /** This node's id. */
  node: string;
  /** Objects younger than this, and records written within it, are never collected. */
  graceMs: number;
  /**
   * Time between passes.
   * @default {gcIntervalMs(graceMs)}
   */
  intervalMs?: number;
  /**
   * How long a lease this node takes lives unless renewed.
   * @default {gcLeaseTtlMs(intervalMs)}
   */
  leaseTtlMs?: number;
  /**
   * Most objects considered for deletion per pass; the rest wait for the next.
   * @default {1000}
   */
  maxPerPass?: number;
  /**
   * Receives what the collector did (deletions, skips, failures, the lease taken).
   * @default {undefined}
   */
  log?: ((line: string) => void) | undefined;
}

/** The time between GC passes for a grace period: a quarter of it, from 1 s to 15 min. */
export function gcIntervalMs(graceMs: number): number {
  return Math.min(15 * 60_000, Math.max(1000, Math.floor(graceMs / 4)));
}

/** The lease time for a pass interval: three intervals, at least 15 s. */
export function gcLeaseTtlMs(intervalMs: number): number {
  return Math.max(15_000, 3 * intervalMs);
}

/** A name safe to put in a log line, whoever wrote it. */
function printable(s: string): string {
  return /^[A-Za-z0-9_.-]{1,64}$/.test(s) ? s : JSON.stringify(s.slice(0, 64));
}

/**
 * The cluster's blob collector on one node: every interval it takes or renews the lease, and
 * while it holds it runs a pass.
 */
export class BlobCollector {
  #store: GcStore;
  #me: LeaseHolder;
  #graceMs: number;
  #intervalMs: number;
  #leaseTtlMs: number;
  #maxPerPass: number;
  #log: (line: string) => void;
  #holding = false;
  #renewedAt = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #running: Promise<void> = Promise.resolve();
  #stopped = false;
  #lastError = "";
  #stats: GcStats = { runs: 0, deleted: 0, deletedBytes: 0, skippedInFlight: 0 };

  /** A collector over `store`. */
  constructor(store: GcStore, options: BlobCollectorOptions) {
    this.#store = store;
    this.#me = { node: options.node, nonce: nonce() };
    this.#graceMs = options.graceMs;
    this.#intervalMs = options.intervalMs ?? gcIntervalMs(options.graceMs);
    this.#leaseTtlMs = options.leaseTtlMs ?? gcLeaseTtlMs(this.#intervalMs);
    this.#maxPerPass = options.maxPerPass ?? 1000;
    this.#log = options.log ?? (() => {});
  }

  /** What this node's collector did so far. */
  get stats(): Readonly<GcStats> {
    return { ...this.#stats };
  }

  /**
   * Takes the lease when nobody holds it (or it lapsed), renews it when this process does.
   * A write accepted with compare-and-set is not enough on nats-server < 2.9.21 (two writes
   * expecting the same revision can both be accepted): the first write after the revision
   * read is the one that took it, and every contender reads the same one.
   *
   * @returns Whether this process holds the lease.
   */
  async holdLease(): Promise<boolean> {
    const now = this.#store.now();
    const record = await this.#store.readLease();
    if (leaseState(record, this.#me, now, this.#leaseTtlMs) === "held") {
      this.#holding = false;
      return false;
    }
    const expected = record?.seq ?? 0;
    const seq = await this.#store.writeLease({ ...this.#me, ttlMs: this.#leaseTtlMs }, expected);
    const won = seq !== undefined && isMine(await this.#store.leaseAfter(expected), this.#me);
    if (won && !this.#holding) this.#log(`cluster: gc lease taken by node ${this.#me.node}`);
    this.#holding = won;
    if (won) this.#renewedAt = now;
    return won;
  }

  /** Renews the lease when a third of its time has passed; whether it is still held. */
  async #keepLease(): Promise<boolean> {
    if (this.#store.now() - this.#renewedAt < this.#leaseTtlMs / 3) return this.#holding;
    return await this.holdLease();
  }

  /**
   * One pass, by a node that holds the lease: objects older than the grace period that no
   * record refers to get a delete intent each; then those with a live commit intent are left
   * (an upload is in flight), the records are read again, and the rest deleted, while the
   * delete intents are surely still seen as live by every node.
   */
  async pass(): Promise<PassResult> {
    const store = this.#store;
    const start = store.now();
    const old = (await store.listObjects()).filter((o) => start - o.storedAt >= this.#graceMs);
    if (old.length === 0) return { deleted: [], inFlight: [] };
    const first = await store.referenced(start - this.#graceMs);
    const candidates = old.filter((o) => !first.has(o.sha256)).slice(0, this.#maxPerPass);
    if (candidates.length === 0) return { deleted: [], inFlight: [] };
    const holder = `${this.#me.node}.${nonce()}`;
    const announced = store.now();
    const deleted: string[] = [];
    const inFlight: string[] = [];
    try {
      const value: IntentValue = { node: this.#me.node, ttlMs: DELETE_INTENT_TTL_MS };
      await eachLimited(candidates, 64, async (c) => {
        await store.putIntent("delete", c.sha256, holder, value);
      });
      // Only now: a commit intent stored after ours waits for ours to go.
      const uploading = new Map<string, string>();
      await eachLimited(candidates, 64, async (c) => {
        const now = store.now();
        for (const i of await store.intents("commit", c.sha256)) {
          const until = intentLiveUntil("commit", i.storedAt, i.value);
          if (until !== undefined && now < until) uploading.set(c.sha256, i.value?.node ?? "?");
        }
      });
      const referenced = await store.referenced(store.now() - this.#graceMs);
      for (const c of candidates) {
        const node = uploading.get(c.sha256);
        if (node !== undefined) {
          inFlight.push(c.sha256);
          this.#stats.skippedInFlight++;
          this.#log(
            `cluster: gc skipped blob ${c.sha256}: an upload of it is in flight on node ` +
              printable(node),
          );
          continue;
        }
        if (referenced.has(c.sha256)) continue;
        // Nodes believe our delete intents until they lapse (minus the clocks' difference):
        // past that, a commit may no longer wait for us.
        if (store.now() >= announced + DELETE_INTENT_TTL_MS - CLOCK_MARGIN_MS) break;
        if (!(await this.#keepLease())) break;
        if (await store.deleteObject(c.sha256)) {
          deleted.push(c.sha256);
          this.#stats.deleted++;
          this.#stats.deletedBytes += c.size;
          this.#log(
            `cluster: gc deleted blob ${c.sha256} (${c.size} bytes): no session refers to it`,
          );
        }
      }
    } finally {
      await eachLimited(candidates, 64, async (c) => {
        await store.removeIntent("delete", c.sha256, holder).catch(() => {});
      });
    }
    return { deleted, inFlight };
  }

  /** Takes or renews the lease and, holding it, runs a pass; failures are logged. */
  async tick(): Promise<void> {
    try {
      if (!(await this.holdLease())) return;
      await this.pass();
      this.#stats.runs++;
      this.#lastError = "";
    } catch (e) {
      const message = e instanceof Error ? e.message : String(e);
      // Once per distinct failure: NATS being down must not flood the log every second.
      if (message !== this.#lastError) this.#log(`cluster: gc pass failed: ${message}`);
      this.#lastError = message;
    }
  }

  /** Runs {@linkcode BlobCollector.tick} every interval until stopped. */
  start(): void {
    const loop = () => {
      if (this.#stopped) return;
      this.#running = this.tick().finally(() => {
        if (!this.#stopped) this.#timer = setTimeout(loop, this.#intervalMs);
      });
    };
    this.#timer = setTimeout(loop, this.#intervalMs);
  }

  /** Stops the timer and waits for a pass under way. */
  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    await this.#running;
  }
}
