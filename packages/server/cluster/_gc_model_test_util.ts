// Copyright 2026 the Valise authors. Apache-2.0 license.
// An in-memory GcStore for the GC protocol's tests: one totally ordered log of writes (as a
// JetStream stream is), reads that see every write made before them, and a clock that moves
// only when someone sleeps. With a scheduler, every call takes effect at a point the scheduler
// picks and answers at another, so each interleaving of the actors' steps can come up.
import type { GcStore, IntentRecord } from "./blob_gc.ts";
import {
  decodeIntent,
  encodeIntent,
  encodeLease,
  type IntentKind,
  type IntentValue,
  type LeaseRecord,
  type LeaseValue,
  type StoredObject,
} from "./gc_records.ts";

/** A record version: the digests a session's record named, and when it was written. */
interface Version {
  readonly key: string;
  readonly digests: readonly string[];
  readonly at: number;
}

/** The model's state, shared by every actor. */
export class GcModel {
  seq = 0;
  clock: number;
  objects = new Map<string, { size: number; storedAt: number }>();
  versions: Version[] = [];
  intents = new Map<string, IntentRecord & { key: string }>();
  lease: LeaseRecord[] = [];
  /** Objects deleted, in order. */
  deletions: string[] = [];

  constructor(clock = 1_000_000_000) {
    this.clock = clock;
  }

  /** The digests each session's latest record names. */
  latest(): Map<string, readonly string[]> {
    const out = new Map<string, readonly string[]>();
    for (const v of this.versions) out.set(v.key, v.digests);
    return out;
  }

  /** Writes a session record: `change` maps what it named to what it names now. */
  writeRecord(key: string, change: (cur: readonly string[]) => readonly string[]): void {
    this.seq++;
    this.versions.push({ key, digests: change(this.latest().get(key) ?? []), at: this.clock });
  }

  /** Puts an object (a node's putBlob). */
  putObject(sha256: string): void {
    this.seq++;
    this.objects.set(sha256, { size: 1, storedAt: this.clock });
  }
}

/** Runs `fn` as one step: its effect and its answer at points the scheduler picks. */
export type Step = <T>(fn: () => T) => Promise<T>;

/** A step at once (no scheduler). */
export const immediate: Step = (fn) => Promise.resolve().then(fn);

/** The GcStore one node sees of a model. */
export class ModelGcStore implements GcStore {
  #m: GcModel;
  #step: Step;
  #lease: LeaseRecord[];

  /**
   * @param ownLease Give this store a lease of its own: its collector always takes it, as two
   *   collectors both do when nats-server < 2.9.21 accepts both of their writes.
   */
  constructor(model: GcModel, step: Step = immediate, ownLease = false) {
    this.#m = model;
    this.#step = step;
    this.#lease = ownLease ? [] : model.lease;
  }

  now(): number {
    return this.#m.clock;
  }

  sleep(ms: number): Promise<void> {
    return this.#step(() => {
      this.#m.clock += ms;
    });
  }

  listObjects(): Promise<StoredObject[]> {
    return this.#step(() =>
      [...this.#m.objects].map(([sha256, o]) => ({ sha256, size: o.size, storedAt: o.storedAt }))
    );
  }

  deleteObject(sha256: string): Promise<boolean> {
    return this.#step(() => {
      const had = this.#m.objects.delete(sha256);
      if (had) {
        this.#m.seq++;
        this.#m.deletions.push(sha256);
      }
      return had;
    });
  }

  referenced(since: number): Promise<Set<string>> {
    return this.#step(() => {
      const out = new Set<string>();
      for (const d of this.#m.latest().values()) d.forEach((x) => out.add(x));
      for (const v of this.#m.versions) if (v.at >= since) v.digests.forEach((x) => out.add(x));
      return out;
    });
  }

  putIntent(kind: IntentKind, sha256: string, holder: string, value: IntentValue): Promise<number> {
    return this.#step(() => {
      const key = `${kind}.${sha256}.${holder}`;
      const seq = ++this.#m.seq;
      this.#m.intents.set(key, {
        key,
        seq,
        storedAt: this.#m.clock,
        sha256,
        value: decodeIntent(encodeIntent(value)),
      });
      return seq;
    });
  }

  removeIntent(kind: IntentKind, sha256: string, holder: string): Promise<void> {
    return this.#step(() => {
      this.#m.intents.delete(`${kind}.${sha256}.${holder}`);
    });
  }

  intents(kind: IntentKind, sha256: string, before?: number): Promise<IntentRecord[]> {
    return this.#step(() =>
      [...this.#m.intents.values()].filter((i) =>
        i.key.startsWith(`${kind}.${sha256}.`) && (before === undefined || i.seq < before)
      )
    );
  }

  readLease(): Promise<LeaseRecord | undefined> {
    return this.#step(() => this.#lease.at(-1));
  }

  writeLease(value: LeaseValue, expected: number): Promise<number | undefined> {
    return this.#step(() => {
      if ((this.#lease.at(-1)?.seq ?? 0) !== expected) return undefined;
      const seq = ++this.#m.seq;
      this.#lease.push({ seq, storedAt: this.#m.clock, bytes: encodeLease(value) });
      return seq;
    });
  }

  leaseAfter(seq: number): Promise<LeaseRecord | undefined> {
    return this.#step(() => this.#lease.find((l) => l.seq > seq));
  }

  /** Whether the object is there (a node's putBlob checks first). */
  hasObject(sha256: string): Promise<boolean> {
    return this.#step(() => this.#m.objects.has(sha256));
  }

  /** Puts an object. */
  putObject(sha256: string): Promise<void> {
    return this.#step(() => this.#m.putObject(sha256));
  }

  /** Writes a session record with compare-and-set: `change` maps what it named to what now. */
  writeRecord(key: string, change: (cur: readonly string[]) => readonly string[]): Promise<void> {
    return this.#step(() => this.#m.writeRecord(key, change));
  }
}
