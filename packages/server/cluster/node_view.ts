// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * What one node knows of the cluster's nodes: the heartbeat records it read from the bucket,
 * and whether each is live by this node's own clock. nats-server before 2.11 removes a record
 * whose bucket age ran out without telling watchers, so expiry is decided here: a node is live
 * while its last record was seen less than its TTL ago (the TTL the record declares, never more
 * than the bucket keeps records). Pure: the caller feeds entries and the time, and acts on the
 * events returned.
 *
 * @module
 */
import {
  decodeNodeRecord,
  MAX_NODE_TTL_MS,
  MembershipError,
  type NodeRecord,
} from "./node_record.ts";

/** One node as this node sees it. */
export interface NodeStatus {
  /** Its node id. */
  readonly nodeId: string;
  /** Whether its last heartbeat is within its TTL. */
  readonly live: boolean;
  /** Whether it is this node (this process). */
  readonly self: boolean;
  /** How long ago its last heartbeat was seen, in ms. */
  readonly heartbeatAgeMs: number;
  /** The TTL applied to it, in ms. */
  readonly ttlMs: number;
  /** Its last record. */
  readonly record: NodeRecord;
}

/** A change in the view, for the log. */
export type ViewEvent =
  | { readonly kind: "joined"; readonly record: NodeRecord; readonly live: boolean }
  | { readonly kind: "back"; readonly record: NodeRecord }
  | {
    readonly kind: "expired";
    readonly nodeId: string;
    readonly ageMs: number;
    readonly ttlMs: number;
  }
  | { readonly kind: "left"; readonly nodeId: string }
  | { readonly kind: "forgotten"; readonly nodeId: string }
  | { readonly kind: "conflict"; readonly record: NodeRecord }
  | {
    readonly kind: "refused";
    readonly key: string;
    readonly reason: string;
    readonly log: boolean;
  };

/** An entry of the bucket, as a watch delivers it. */
export interface NodeEntry {
  /** Its key. */
  readonly key: string;
  /** Its value (empty for a deletion). */
  readonly value: Uint8Array;
  /** What it is. */
  readonly operation: "PUT" | "DEL" | "PURGE";
  /** When the NATS server stored it (ms since the epoch, the server's clock). */
  readonly created: number;
}

/** Options of {@linkcode NodeView}. */
export interface NodeViewOptions {
  /** This node's id. */
  nodeId: string;
  /** This process's instance. */
  instance: string;
  /**
   * Nodes kept at most; a new key beyond them replaces the longest-expired node, or is refused.
   * @default {1000}
   */
  maxNodes?: number;
  /**
   * The longest TTL applied, whatever a record declares (the bucket's age limit: the server
   * removes older records anyway).
   * @default {MAX_NODE_TTL_MS}
   */
  maxTtlMs?: number;
  /**
   * How long an expired node stays in the view before it is forgotten.
   * @default {3_600_000}
   */
  forgetAfterMs?: number;
  /**
   * Distinct keys whose refused records are logged; later ones are only counted.
   * @default {100}
   */
  maxLoggedKeys?: number;
}

interface Known {
  record: NodeRecord;
  seenAt: number;
  live: boolean;
}

/** The nodes one node sees, their liveness, and the records it refused. */
export class NodeView {
  readonly #nodeId: string;
  readonly #instance: string;
  readonly #maxNodes: number;
  readonly #forgetAfterMs: number;
  readonly #maxLoggedKeys: number;
  #maxTtlMs: number;
  #nodes = new Map<string, Known>();
  #loggedKeys = new Set<string>();
  #conflicting = new Set<string>();
  #refused = 0;
  #conflicts = 0;

  /** @param options This node's identity and the view's caps. */
  constructor(options: NodeViewOptions) {
    this.#nodeId = options.nodeId;
    this.#instance = options.instance;
    this.#maxNodes = options.maxNodes ?? 1000;
    this.#maxTtlMs = options.maxTtlMs ?? MAX_NODE_TTL_MS;
    this.#forgetAfterMs = options.forgetAfterMs ?? 3_600_000;
    this.#maxLoggedKeys = options.maxLoggedKeys ?? 100;
  }

  /** Records refused so far (failed checks, or no room in the view). */
  get refused(): number {
    return this.#refused;
  }

  /** Records seen under this node's id from another process. */
  get conflicts(): number {
    return this.#conflicts;
  }

  /** The longest TTL applied: the bucket's age limit, once known. */
  get maxTtlMs(): number {
    return this.#maxTtlMs;
  }

  set maxTtlMs(ms: number) {
    if (ms > 0) this.#maxTtlMs = Math.min(ms, MAX_NODE_TTL_MS);
  }

  #ttl(r: NodeRecord): number {
    return Math.min(r.ttlMs, this.#maxTtlMs);
  }

  #refuse(key: string, reason: string): ViewEvent {
    this.#refused++;
    let log = false;
    if (!this.#loggedKeys.has(key) && this.#loggedKeys.size < this.#maxLoggedKeys) {
      this.#loggedKeys.add(key);
      log = true;
    }
    return { kind: "refused", key, reason, log };
  }

  /**
   * Takes an entry in: a record (checked), a deletion (the node left).
   *
   * @param entry The entry.
   * @param now This node's clock (ms since the epoch).
   * @param initial Whether it is a value the watch started with (its age is then taken from
   *   when it was stored) rather than an update (seen now).
   * @returns What changed.
   */
  apply(entry: NodeEntry, now: number, initial: boolean): ViewEvent[] {
    if (entry.operation !== "PUT") {
      const had = this.#nodes.delete(entry.key);
      return had ? [{ kind: "left", nodeId: entry.key }] : [];
    }
    let record: NodeRecord;
    try {
      record = decodeNodeRecord(entry.value, entry.key);
    } catch (e) {
      if (!(e instanceof MembershipError)) throw e;
      return [this.#refuse(entry.key, e.message)];
    }
    const events: ViewEvent[] = [];
    if (record.nodeId === this.#nodeId && record.instance !== this.#instance) {
      this.#conflicts++;
      if (!this.#conflicting.has(record.instance) && this.#conflicting.size < 100) {
        this.#conflicting.add(record.instance);
        events.push({ kind: "conflict", record });
      }
    }
    const seenAt = initial ? Math.min(now, entry.created) : now;
    const live = now - seenAt < this.#ttl(record);
    const known = this.#nodes.get(record.nodeId);
    if (known) {
      if (seenAt < known.seenAt) return events; // an older record than the one held
      if (!known.live && live) events.push({ kind: "back", record });
      known.record = record;
      known.seenAt = seenAt;
      known.live = live;
      return events;
    }
    if (this.#nodes.size >= this.#maxNodes && !this.#evictOne(now)) {
      return [
        ...events,
        this.#refuse(entry.key, `no room: the view holds ${this.#maxNodes} nodes`),
      ];
    }
    this.#nodes.set(record.nodeId, { record, seenAt, live });
    events.push({ kind: "joined", record, live });
    return events;
  }

  /** Removes the node that expired longest ago; `false` when every node is live. */
  #evictOne(now: number): boolean {
    let oldest: string | undefined;
    let at = Infinity;
    for (const [id, k] of this.#nodes) {
      if (now - k.seenAt >= this.#ttl(k.record) && k.seenAt < at) {
        oldest = id;
        at = k.seenAt;
      }
    }
    if (oldest === undefined) return false;
    this.#nodes.delete(oldest);
    return true;
  }

  /**
   * Marks nodes whose TTL ran out as expired, and forgets those expired long ago.
   *
   * @param now This node's clock.
   * @returns What changed.
   */
  sweep(now: number): ViewEvent[] {
    const events: ViewEvent[] = [];
    for (const [id, k] of this.#nodes) {
      const ttl = this.#ttl(k.record);
      const age = now - k.seenAt;
      if (k.live && age >= ttl) {
        k.live = false;
        events.push({ kind: "expired", nodeId: id, ageMs: age, ttlMs: ttl });
      }
      if (!k.live && age >= ttl + this.#forgetAfterMs) {
        this.#nodes.delete(id);
        events.push({ kind: "forgotten", nodeId: id });
      }
    }
    return events;
  }

  /** When {@linkcode NodeView.sweep} next has something to do, or `undefined`. */
  nextDeadline(): number | undefined {
    let next: number | undefined;
    for (const k of this.#nodes.values()) {
      const at = k.seenAt + this.#ttl(k.record) + (k.live ? 0 : this.#forgetAfterMs);
      if (next === undefined || at < next) next = at;
    }
    return next;
  }

  /**
   * The nodes, by id; liveness by `now`.
   *
   * @param now This node's clock.
   * @returns One entry per node.
   */
  nodes(now: number): NodeStatus[] {
    return [...this.#nodes.values()]
      .map((k) => {
        const ttlMs = this.#ttl(k.record);
        const heartbeatAgeMs = Math.max(0, now - k.seenAt);
        return {
          nodeId: k.record.nodeId,
          live: heartbeatAgeMs < ttlMs,
          self: k.record.nodeId === this.#nodeId && k.record.instance === this.#instance,
          heartbeatAgeMs,
          ttlMs,
          record: k.record,
        };
      })
      .sort((a, b) => (a.nodeId < b.nodeId ? -1 : a.nodeId > b.nodeId ? 1 : 0));
  }
}
