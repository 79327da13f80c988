// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * Node membership: each node keeps a record of itself under its node id in the KV bucket
 * `valise_nodes`, written again every heartbeat, and watches the bucket to know the others.
 *
 * nats-server 2.9.10 has no per-message TTL (2.11 has) and tells no watcher when a record ages
 * out of a bucket, so: the bucket's age limit (`max_age`, the TTL) removes records of dead nodes
 * on the server, and every node decides liveness itself by its own clock ({@linkcode NodeView}).
 * A node deletes its record when it stops cleanly, which watchers see at once.
 *
 * A node id is one node's: joining under the id of a live record is refused. The claim is a
 * compare-and-set that nats-server before 2.9.21 does not serialize on clustered streams
 * (nats-io/nats-server#4320), so the key's history is checked after the write, as the session
 * registry does: a record another process wrote between the revision this one expected and its
 * own means that process claimed the id first.
 *
 * @module
 */
import type { NatsConnection } from "@nats-io/transport-node";
import { jetstream, type JetStreamManager } from "@nats-io/jetstream";
import { type KV, type KvEntry, Kvm } from "@nats-io/kv";
import { riding } from "./nats_registry.ts";
import {
  decodeNodeRecord,
  encodeNodeRecord,
  MAX_NODE_RECORD_BYTES,
  MembershipError,
  nodeIdProblem,
  type NodeRecord,
} from "./node_record.ts";
import { type NodeStatus, NodeView, type ViewEvent } from "./node_view.ts";

/** The KV bucket of node records. */
export const NODES_BUCKET = "valise_nodes";
/** Records kept per key: enough to find a claim a concurrent one overwrote. */
const HISTORY = 5;
/** The default heartbeat interval. */
export const DEFAULT_HEARTBEAT_MS = 5000;

/** What a node counts of itself at each heartbeat. */
export interface NodeCounts {
  /** Sessions it holds a copy of. */
  readonly sessions: number;
  /** Bytes of its blob cache. */
  readonly blobBytes: number;
  /** Bytes of its unpacked trees. */
  readonly treeBytes: number;
  /** Runs executing or waiting for a slot. */
  readonly inFlight: number;
}

/** Options of {@linkcode Membership.join}. */
export interface MembershipOptions {
  /** The node's NATS connection (the registry's). */
  connection: NatsConnection;
  /** This node's id. */
  nodeId: string;
  /**
   * JetStream replicas of the bucket when this node creates it.
   * @default {1}
   */
  replicas?: number;
  /**
   * How often the record is written.
   * @default {DEFAULT_HEARTBEAT_MS}
   */
  heartbeatMs?: number;
  /**
   * How long without a heartbeat before a node counts as gone.
   * @default {3 × heartbeatMs}
   */
  ttlMs?: number;
  /** The Valise version this node runs. */
  version: string;
  /** The counts the record carries, asked at every heartbeat. */
  counts: () => NodeCounts | Promise<NodeCounts>;
  /**
   * The process that held this node's data directory before and died (its lock record): a
   * live-looking record of it under this node id is this node's own, left by the crash.
   * @default {undefined}
   */
  previousHolder?: { readonly host: string; readonly pid: number } | undefined;
  /**
   * Receives the membership's notices (nodes joining, leaving, expiring; refused records).
   * @default {undefined}
   */
  log?: ((line: string) => void) | undefined;
}

/** Counters of a {@linkcode Membership}. */
export interface MembershipStats {
  /** Records read from the bucket and refused (failed checks, or no room). */
  readonly refusedRecords: number;
  /** Records seen under this node's id from another process. */
  readonly idConflicts: number;
  /** Heartbeats written. */
  readonly heartbeats: number;
  /** Heartbeats that could not be written. */
  readonly heartbeatFailures: number;
}

/** What the status views show of the cluster. */
export interface ClusterView {
  /** This node's id. */
  readonly nodeId: string;
  /** The heartbeat interval, in ms. */
  readonly heartbeatMs: number;
  /** This node's TTL, in ms. */
  readonly ttlMs: number;
  /** The nodes this node sees, by id. */
  readonly nodes: readonly NodeStatus[];
  /** The counters. */
  readonly stats: MembershipStats;
}

// Sanitized so that this node's own record always passes the checks it applies to others'.
function recordHost(name: string): string {
  const h = name.replace(/[^A-Za-z0-9._-]/g, "-").slice(0, 253);
  return /^[A-Za-z0-9]/.test(h) ? h : `h${h}`.slice(0, 253);
}

function hostName(): string {
  try {
    return recordHost(Deno.hostname());
  } catch {
    return "unknown"; // no permission to ask
  }
}

function seconds(ms: number): string {
  return `${Number((ms / 1000).toFixed(1))} s`;
}

/** This node's membership: its heartbeat, and its view of the other nodes. */
export class Membership {
  /** This node's id. */
  readonly nodeId: string;
  /** Random per process. */
  readonly instance: string = crypto.randomUUID();
  /** The heartbeat interval, in ms. */
  readonly heartbeatMs: number;
  /** The TTL this node declares, in ms. */
  readonly ttlMs: number;
  #kv: KV;
  #jsm: JetStreamManager;
  #options: MembershipOptions;
  #view: NodeView;
  #log: (line: string) => void;
  #startedAt = Date.now();
  #host = hostName();
  #address: string | undefined;
  #closed = false;
  #beatTimer: ReturnType<typeof setTimeout> | undefined;
  #sweepTimer: ReturnType<typeof setTimeout> | undefined;
  #sweepAt: number | undefined;
  #beating: Promise<void> = Promise.resolve();
  #watch: { stop(): void } | undefined;
  #watching: Promise<void> = Promise.resolve();
  #wakeWatch: (() => void) | undefined;
  #failing = false;
  #heartbeats = 0;
  #failures = 0;

  private constructor(kv: KV, jsm: JetStreamManager, options: MembershipOptions) {
    this.nodeId = options.nodeId;
    this.heartbeatMs = options.heartbeatMs ?? DEFAULT_HEARTBEAT_MS;
    this.ttlMs = options.ttlMs ?? 3 * this.heartbeatMs;
    this.#kv = kv;
    this.#jsm = jsm;
    this.#options = options;
    this.#log = options.log ?? (() => {});
    this.#view = new NodeView({ nodeId: this.nodeId, instance: this.instance });
  }

  /**
   * Joins: opens (or creates) the bucket, claims the node id, writes the first heartbeat, and
   * starts heartbeats and the watch.
   *
   * @param options The connection, the node's id, its heartbeat and its counts.
   * @returns The membership, until {@linkcode Membership.leave}.
   * @throws {MembershipError} `NODE_ID_IN_USE` when a live node has the id;
   *   `NODE_ID_INVALID` for an id that is not one; `CLUSTER_UNAVAILABLE` when NATS fails.
   */
  static async join(options: MembershipOptions): Promise<Membership> {
    const problem = nodeIdProblem(options.nodeId);
    if (problem) throw new MembershipError("NODE_ID_INVALID", `--node-id: ${problem}`);
    const heartbeatMs = options.heartbeatMs ?? DEFAULT_HEARTBEAT_MS;
    const ttlMs = options.ttlMs ?? 3 * heartbeatMs;
    if (!(heartbeatMs > 0) || !(ttlMs > heartbeatMs)) {
      throw new RangeError(`a TTL (${ttlMs} ms) longer than the heartbeat (${heartbeatMs} ms)`);
    }
    let kv: KV;
    let jsm: JetStreamManager;
    try {
      const js = jetstream(options.connection);
      jsm = await js.jetstreamManager();
      kv = await riding(() =>
        new Kvm(js).create(NODES_BUCKET, {
          replicas: options.replicas ?? 1,
          history: HISTORY,
          ttl: ttlMs,
          maxValueSize: MAX_NODE_RECORD_BYTES,
          // Reads go to the leader: a claim sees the last record written.
          allow_direct: false,
        })
      );
    } catch (e) {
      throw new MembershipError(
        "CLUSTER_UNAVAILABLE",
        `Could not open the cluster's KV bucket ${NODES_BUCKET}: ${(e as Error)?.message}. ` +
          "Check that a majority of the NATS cluster's members is up; then start again.",
        { cause: e },
      );
    }
    const m = new Membership(kv, jsm, { ...options, heartbeatMs, ttlMs });
    try {
      await m.#fitBucket();
      await m.#claim();
    } catch (e) {
      if (e instanceof MembershipError) throw e;
      throw new MembershipError(
        "CLUSTER_UNAVAILABLE",
        `Could not record node ${options.nodeId} in the cluster: ${(e as Error)?.message}`,
        { cause: e },
      );
    }
    m.#heartbeats++;
    m.#scheduleBeat();
    m.#watching = m.#watchLoop();
    return m;
  }

  /**
   * The bucket keeps records at least this node's TTL and enough history for the claim check
   * (another node, or an older version, may have created it otherwise).
   */
  async #fitBucket(): Promise<void> {
    const stream = `KV_${NODES_BUCKET}`;
    const info = await riding(() => this.#jsm.streams.info(stream));
    const maxAgeMs = info.config.max_age / 1e6;
    const history = info.config.max_msgs_per_subject;
    if (maxAgeMs > 0 && maxAgeMs >= this.ttlMs && history >= HISTORY) {
      this.#view.maxTtlMs = maxAgeMs;
      return;
    }
    const want = Math.max(maxAgeMs, this.ttlMs);
    try {
      await this.#jsm.streams.update(stream, {
        max_age: want * 1e6,
        max_msgs_per_subject: Math.max(history, HISTORY),
      });
      this.#view.maxTtlMs = want;
      this.#log(
        `cluster: KV bucket ${NODES_BUCKET} now keeps records ${seconds(want)} ` +
          `(was ${maxAgeMs > 0 ? seconds(maxAgeMs) : "forever"}), ${
            Math.max(history, HISTORY)
          } per node`,
      );
    } catch (e) {
      if (maxAgeMs > 0) this.#view.maxTtlMs = maxAgeMs;
      this.#log(
        `cluster: could not set KV bucket ${NODES_BUCKET}'s age limit to this node's TTL ` +
          `(${(e as Error)?.message}); records of dead nodes stay there until it is set`,
      );
    }
  }

  #record(counts: NodeCounts): NodeRecord {
    const record: NodeRecord = {
      nodeId: this.nodeId,
      instance: this.instance,
      host: this.#host,
      pid: Deno.pid,
      version: this.#options.version,
      ...(this.#address !== undefined ? { address: this.#address } : {}),
      startedAt: this.#startedAt,
      heartbeatAt: Date.now(),
      ttlMs: this.ttlMs,
      sessions: counts.sessions,
      blobBytes: counts.blobBytes,
      treeBytes: counts.treeBytes,
      inFlight: counts.inFlight,
    };
    // What this node writes passes what every node checks, or it would vanish from their views.
    decodeNodeRecord(encodeNodeRecord(record), this.nodeId);
    return record;
  }

  /** The record under this node's id, if it is another process's and live: who holds the id. */
  #liveOther(entry: KvEntry | null): NodeRecord | undefined {
    if (!entry || entry.operation !== "PUT") return undefined;
    let r: NodeRecord;
    try {
      r = decodeNodeRecord(entry.value, this.nodeId);
    } catch (e) {
      this.#log(
        `cluster: the record under this node's id fails its checks (${(e as Error).message}); ` +
          "it is replaced",
      );
      return undefined;
    }
    if (r.instance === this.instance) return undefined;
    const prev = this.#options.previousHolder;
    const age = Date.now() - entry.created.getTime();
    if (prev && recordHost(prev.host) === r.host && prev.pid === r.pid) {
      this.#log(
        `cluster: took over node id ${this.nodeId} from this data directory's previous ` +
          `server (pid ${r.pid}), which is no longer running`,
      );
      return undefined;
    }
    if (age < Math.min(r.ttlMs, this.#view.maxTtlMs)) return r;
    this.#log(
      `cluster: took over node id ${this.nodeId}: its record (host ${r.host}, pid ${r.pid}) ` +
        `expired, last heartbeat ${seconds(age)} ago`,
    );
    return undefined;
  }

  #inUse(r: NodeRecord, how: string): MembershipError {
    return new MembershipError(
      "NODE_ID_IN_USE",
      `Node id ${this.nodeId} is in use: ${how} (host ${r.host}, pid ${r.pid}, started ` +
        `${new Date(r.startedAt).toISOString()}, Valise ${r.version}` +
        `${r.address ? `, serving on ${r.address}` : ""}). Give this node another --node-id, or ` +
        `stop that one; a node that died frees its id ${seconds(r.ttlMs)} after its last ` +
        "heartbeat.",
    );
  }

  /**
   * Writes the first record under the id, unless another process holds it. A record of another
   * process that is not expired yet is watched until its TTL runs out: a heartbeat meanwhile
   * means that process runs (refused); none means it died (the id is taken over). So a node
   * restarted after a crash waits at most a TTL, and a duplicate is refused within a heartbeat.
   */
  async #claim(): Promise<void> {
    const key = this.nodeId;
    for (let attempt = 0; attempt < 10; attempt++) {
      const entry = await riding(() => this.#kv.get(key));
      const other = this.#liveOther(entry);
      if (other && entry) {
        const beat = await this.#nextBeat(entry, other);
        if (beat) {
          throw this.#inUse(beat, "a live node has it: its heartbeat came while this one waited");
        }
        continue; // read again: expired, deleted, or replaced
      }
      const expected = entry?.revision ?? 0;
      const bytes = encodeNodeRecord(this.#record(await this.#options.counts()));
      let revision: number;
      try {
        revision = await riding(() =>
          expected ? this.#kv.update(key, bytes, expected) : this.#kv.create(key, bytes)
        );
      } catch (e) {
        // Another process wrote under the id since it was read: read again.
        if (/wrong last sequence|key exists/i.test(String((e as Error)?.message))) continue;
        throw e;
      }
      const first = await this.#claimedBefore(key, expected, revision);
      if (first) throw this.#inUse(first, "another node claimed it at the same moment");
      return;
    }
    throw new MembershipError(
      "CLUSTER_UNAVAILABLE",
      `Could not claim node id ${key}: its record changed 10 times in a row while this node ` +
        "tried. Is another process starting with that id over and over?",
    );
  }

  /**
   * Waits until the record `entry` holds expires by its TTL (this node's clock); returns a newer
   * record of another process if one comes first (that process runs), `undefined` otherwise.
   */
  async #nextBeat(entry: KvEntry, held: NodeRecord): Promise<NodeRecord | undefined> {
    const ttl = Math.min(held.ttlMs, this.#view.maxTtlMs);
    const waitMs = Math.max(0, entry.created.getTime() + ttl - Date.now());
    this.#log(
      `cluster: node id ${this.nodeId} has a record of another process (host ${held.host}, ` +
        `pid ${held.pid}), not expired: waiting up to ${seconds(waitMs)} for its next ` +
        "heartbeat (one means the id is in use; none, that the process is gone)",
    );
    // From the last value on: a heartbeat written since the read is not missed.
    const w = await this.#kv.watch({ key: this.nodeId });
    const timer = setTimeout(() => w.stop(), waitMs + 50);
    try {
      for await (const e of w) {
        if (e.revision <= entry.revision) continue;
        if (e.operation !== "PUT") return undefined;
        try {
          const r = decodeNodeRecord(e.value, this.nodeId);
          if (r.instance !== this.instance) return r;
        } catch { /* a record that fails its checks holds nothing */ }
      }
      return undefined;
    } finally {
      clearTimeout(timer);
      w.stop();
    }
  }

  /**
   * A record of another instance written under `key` after revision `after` and before this
   * node's own at `before`: a claim nats-server accepted too and this node's overwrote.
   */
  async #claimedBefore(
    key: string,
    after: number,
    before: number,
  ): Promise<NodeRecord | undefined> {
    const subject = `$KV.${NODES_BUCKET}.${key}`;
    for (let seq = after + 1, n = 0; seq < before && n <= HISTORY; n++) {
      const m = await riding(() =>
        this.#jsm.streams.getMessage(
          `KV_${NODES_BUCKET}`,
          { seq, next_by_subj: subject } as unknown as { seq: number },
        )
      ).catch((e) => {
        if (/no message found/i.test(String(e?.message))) return null;
        throw e;
      });
      if (!m || m.seq >= before) return undefined;
      seq = m.seq + 1;
      try {
        const r = decodeNodeRecord(m.data, key);
        if (r.instance !== this.instance) return r;
      } catch { /* a deletion marker, or a record that fails its checks, claims nothing */ }
    }
    return undefined;
  }

  #scheduleBeat(): void {
    if (this.#closed) return;
    this.#beatTimer = setTimeout(() => {
      this.#beating = this.#beat().finally(() => this.#scheduleBeat());
    }, this.heartbeatMs);
  }

  async #beat(): Promise<void> {
    try {
      const record = this.#record(await this.#options.counts());
      if (this.#closed) return;
      await this.#kv.put(this.nodeId, encodeNodeRecord(record));
      this.#heartbeats++;
      if (this.#failing) this.#log("cluster: heartbeats are written again");
      this.#failing = false;
    } catch (e) {
      this.#failures++;
      if (!this.#failing) {
        this.#log(
          `cluster: a heartbeat could not be written (${(e as Error)?.message}); other nodes ` +
            `count this one as gone after ${seconds(this.ttlMs)} without one`,
        );
      }
      this.#failing = true;
    }
  }

  /** Watches the bucket; a watch that ends (NATS restarted) is started again. */
  async #watchLoop(): Promise<void> {
    let failing = false;
    while (!this.#closed) {
      try {
        const iter = await this.#kv.watch({ key: ">" });
        this.#watch = iter;
        if (this.#closed) iter.stop();
        failing = false;
        for await (const e of iter) {
          const created = e.created.getTime();
          const entry = { key: e.key, value: e.value, operation: e.operation, created };
          this.#report(this.#view.apply(entry, Date.now(), !e.isUpdate));
          this.#armSweep();
        }
      } catch (e) {
        if (!failing && !this.#closed) {
          this.#log(`cluster: the watch of ${NODES_BUCKET} failed (${(e as Error)?.message})`);
        }
        failing = true;
      }
      if (this.#closed) return;
      // Again after a heartbeat's time, or at once when leaving.
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, this.heartbeatMs);
        this.#wakeWatch = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  }

  /** Arms the sweep for the view's next deadline, unless it is armed for that or earlier. */
  #armSweep(): void {
    const next = this.#view.nextDeadline();
    if (this.#closed || next === undefined) return;
    // Heartbeats only push deadlines later: a sweep armed earlier finds nothing and re-arms.
    if (this.#sweepAt !== undefined && this.#sweepAt <= next) return;
    clearTimeout(this.#sweepTimer);
    this.#sweepAt = next;
    this.#sweepTimer = setTimeout(() => {
      this.#sweepAt = undefined;
      this.#report(this.#view.sweep(Date.now()));
      this.#armSweep();
    }, Math.max(0, next - Date.now()) + 5);
  }

  #report(events: ViewEvent[]): void {
    for (const ev of events) {
      switch (ev.kind) {
        case "joined": {
          const r = ev.record;
          const self = r.nodeId === this.nodeId && r.instance === this.instance;
          this.#log(
            `cluster: node ${r.nodeId} ${ev.live ? "is live" : "seen, expired"}` +
              `${self ? " (this node)" : ""} (host ${r.host}, Valise ${r.version}` +
              `${r.address ? `, serving on ${r.address}` : ""})`,
          );
          break;
        }
        case "back":
          this.#log(`cluster: node ${ev.record.nodeId} is live again`);
          break;
        case "expired":
          this.#log(
            `cluster: node ${ev.nodeId} expired: no heartbeat for ${seconds(ev.ageMs)} ` +
              `(TTL ${seconds(ev.ttlMs)})`,
          );
          break;
        case "left":
          this.#log(`cluster: node ${ev.nodeId} left`);
          break;
        case "forgotten":
          this.#log(`cluster: node ${ev.nodeId} forgotten, expired long ago`);
          break;
        case "conflict":
          this.#log(
            `cluster: another process writes under this node's id ${this.nodeId} (host ` +
              `${ev.record.host}, pid ${ev.record.pid}, started ` +
              `${new Date(ev.record.startedAt).toISOString()}): two nodes with one id, or a ` +
              "forged record; give each node its own --node-id",
          );
          break;
        case "refused":
          if (ev.log) {
            this.#log(
              `cluster: ignored a record in ${NODES_BUCKET} under key ` +
                `${JSON.stringify(ev.key.slice(0, 100))}: ${ev.reason} (logged once per key; ` +
                "valise_cluster_node_records_refused_total counts them)",
            );
          }
          break;
      }
    }
  }

  /** Where this node serves RPCs (`host:port`), for its record from the next heartbeat on. */
  set address(address: string | undefined) {
    // Only what every node's check accepts: an address that fails it would void the record.
    try {
      decodeNodeRecord(
        encodeNodeRecord({ ...this.#record(zero), ...(address ? { address } : {}) }),
        this.nodeId,
      );
      this.#address = address;
    } catch {
      this.#address = undefined;
    }
  }

  /** Where this node serves RPCs, as its record says. */
  get address(): string | undefined {
    return this.#address;
  }

  /** The nodes this node sees, and the counters. */
  view(): ClusterView {
    return {
      nodeId: this.nodeId,
      heartbeatMs: this.heartbeatMs,
      ttlMs: this.ttlMs,
      nodes: this.#view.nodes(Date.now()),
      stats: {
        refusedRecords: this.#view.refused,
        idConflicts: this.#view.conflicts,
        heartbeats: this.#heartbeats,
        heartbeatFailures: this.#failures,
      },
    };
  }

  /**
   * Stops heartbeats and the watch, and deletes this node's record when it is still this
   * process's, so that the other nodes see it leave at once. Never fails.
   */
  async leave(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#beatTimer);
    clearTimeout(this.#sweepTimer);
    this.#watch?.stop();
    this.#wakeWatch?.();
    // A heartbeat under way would write the record again after the deletion.
    await this.#beating;
    await this.#watching;
    try {
      const entry = await this.#kv.get(this.nodeId);
      if (entry?.operation !== "PUT") return;
      if (decodeNodeRecord(entry.value, this.nodeId).instance !== this.instance) return;
      await this.#kv.delete(this.nodeId, { previousSeq: entry.revision });
    } catch (e) {
      this.#log(
        `cluster: this node's record could not be deleted (${(e as Error)?.message}); the ` +
          `others count it as gone ${seconds(this.ttlMs)} after its last heartbeat`,
      );
    }
  }
}

const zero: NodeCounts = { sessions: 0, blobBytes: 0, treeBytes: 0, inFlight: 0 };
