// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The blob GC's storage on NATS JetStream: intents and the lease in the KV bucket `valise_gc`,
 * session records read from `valise_sessions`, objects from `valise_blobs`. Point reads go to
 * the stream's leader (`STREAM.MSG.GET`); scans go through an ephemeral consumer, which
 * JetStream may place on a replica that lags, so a scan of the records first stores a fence
 * and is used only once it has delivered it (or something later).
 *
 * @module
 */
import {
  DeliverPolicy,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
  type StoredMsg,
} from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import type { ObjectStore } from "@nats-io/obj";
import type { GcStore, IntentRecord } from "./blob_gc.ts";
import {
  decodeIntent,
  encodeIntent,
  encodeLease,
  GC_BUCKET,
  intentKey,
  type IntentKind,
  intentPrefix,
  type IntentValue,
  isSha256,
  LEASE_KEY,
  type LeaseRecord,
  type LeaseValue,
  objectOf,
  recordDigests,
  type StoredObject,
} from "./gc_records.ts";

/** Most messages one scan reads: past it the pass fails rather than hold more in memory. */
const MAX_SCAN = 2_000_000;
/** How long one scan may take before it is given up. */
const SCAN_DEADLINE_MS = 5 * 60_000;
/** Messages asked for per fetch of a scan. */
const FETCH_BATCH = 1000;
/** How long a fetch waits for messages; one that gets none ends the scan. */
const FETCH_WAIT_MS = 1000;
/** Most writes of one blob's intents read back: past it the blob counts as in flight. */
const MAX_INTENT_READS = 256;
/** A scan that lagged behind its fence is tried this many times. */
const FENCE_ATTEMPTS = 5;

/** The name a `$O.<bucket>.M.<base64url>` subject encodes, or `undefined`. */
function metaName(subject: string): string | undefined {
  const token = subject.slice(subject.lastIndexOf(".") + 1);
  if (!/^[A-Za-z0-9_-]+=*$/.test(token) || token.length > 256) return undefined;
  try {
    const b64 = token.replaceAll("-", "+").replaceAll("_", "/").replace(/=+$/, "");
    return atob(b64.padEnd(Math.ceil(b64.length / 4) * 4, "="));
  } catch {
    return undefined;
  }
}

function operationOf(headers: { get(k: string): string } | undefined): string {
  return headers?.get("KV-Operation") || "PUT";
}

/** Options of {@linkcode NatsGcStore}. */
export interface NatsGcStoreOptions {
  /** The JetStream client. */
  js: JetStreamClient;
  /** Its manager (point reads, purges). */
  jsm: JetStreamManager;
  /** The bucket `valise_gc`. */
  gc: KV;
  /** The bucket of session records. */
  sessions: KV;
  /** Its name. */
  sessionsBucket: string;
  /** The object store of blobs. */
  blobs: ObjectStore;
  /** Its name. */
  blobsBucket: string;
  /** This node's id (names its fences). */
  node: string;
}

/** {@linkcode GcStore} on NATS JetStream. */
export class NatsGcStore implements GcStore {
  #o: NatsGcStoreOptions;

  /** A store over the given buckets. */
  constructor(options: NatsGcStoreOptions) {
    this.#o = options;
  }

  /** {@inheritDoc GcStore.now} */
  now(): number {
    return Date.now();
  }

  /** {@inheritDoc GcStore.sleep} */
  sleep(ms: number): Promise<void> {
    return new Promise((r) => setTimeout(r, ms));
  }

  /**
   * Reads the latest message of every subject under `filter` (or every message stored since
   * `since`), calling `each` on each, until the consumer has none left: it says none is pending,
   * or a fetch finds none (the pending count can stay above zero when a message is removed
   * while it is read). Returns the highest stream sequence read.
   */
  async #scan(
    stream: string,
    filter: string,
    since: Date | undefined,
    each: (m: JsMsg) => void,
  ): Promise<number> {
    const consumer = await this.#o.js.consumers.get(stream, {
      filter_subjects: filter,
      ...(since
        ? { opt_start_time: since.toISOString() }
        : { deliver_policy: DeliverPolicy.LastPerSubject }),
    });
    const deadline = Date.now() + SCAN_DEADLINE_MS;
    let n = 0;
    let maxSeq = 0;
    try {
      for (let done = false; !done;) {
        if (Date.now() > deadline) {
          throw new Error(`reading ${stream} took more than ${SCAN_DEADLINE_MS} ms`);
        }
        const batch = await consumer.fetch({ max_messages: FETCH_BATCH, expires: FETCH_WAIT_MS });
        let got = 0;
        for await (const m of batch) {
          got++;
          if (++n > MAX_SCAN) {
            throw new Error(`${stream} holds more than ${MAX_SCAN} entries to read`);
          }
          maxSeq = Math.max(maxSeq, m.seq);
          each(m);
          if (m.info.pending === 0) {
            done = true;
            break;
          }
        }
        if (got === 0) done = true;
      }
    } finally {
      await consumer.delete().catch(() => {});
    }
    return maxSeq;
  }

  /** {@inheritDoc GcStore.listObjects} */
  async listObjects(): Promise<StoredObject[]> {
    const bucket = this.#o.blobsBucket;
    const out = new Map<string, StoredObject>();
    await this.#scan(`OBJ_${bucket}`, `$O.${bucket}.M.>`, undefined, (m) => {
      const o = objectOf(m.data, m.time.getTime(), metaName(m.subject));
      if (o) out.set(o.sha256, o);
    });
    return [...out.values()];
  }

  /** {@inheritDoc GcStore.deleteObject} */
  async deleteObject(sha256: string): Promise<boolean> {
    const info = await this.#o.blobs.info(sha256);
    if (!info || info.deleted) return false;
    await this.#o.blobs.delete(sha256);
    return true;
  }

  /** {@inheritDoc GcStore.referenced} */
  async referenced(since: number): Promise<Set<string>> {
    const bucket = this.#o.sessionsBucket;
    const stream = `KV_${bucket}`;
    const prefix = `$KV.${bucket}.s.`;
    for (let attempt = 1;; attempt++) {
      // Everything written before this fence is delivered by a scan that delivers the fence.
      const fence = await this.#o.sessions.put(
        `gcfence.${this.#o.node}`,
        new TextEncoder().encode(String(this.now())),
      );
      const out = new Set<string>();
      const add = (m: JsMsg) => {
        if (!m.subject.startsWith(prefix) || operationOf(m.headers) !== "PUT") return;
        for (const d of recordDigests(m.data)) out.add(d);
      };
      const latest = await this.#scan(stream, `$KV.${bucket}.>`, undefined, add);
      const recent = await this.#scan(stream, `$KV.${bucket}.>`, new Date(since), add);
      if (latest >= fence && recent >= fence) return out;
      if (attempt >= FENCE_ATTEMPTS) {
        throw new Error(
          `the session records read from a NATS replica lag behind the leader (${attempt} tries)`,
        );
      }
      await this.sleep(100 * attempt);
    }
  }

  /** {@inheritDoc GcStore.putIntent} */
  async putIntent(
    kind: IntentKind,
    sha256: string,
    holder: string,
    value: IntentValue,
  ): Promise<number> {
    return await this.#o.gc.put(intentKey(kind, sha256, holder), encodeIntent(value));
  }

  /** {@inheritDoc GcStore.removeIntent} */
  async removeIntent(kind: IntentKind, sha256: string, holder: string): Promise<void> {
    // A purge of the subject leaves no marker behind (a KV delete would, for the bucket's age).
    await this.#o.jsm.streams.purge(`KV_${GC_BUCKET}`, {
      filter: `$KV.${GC_BUCKET}.${intentKey(kind, sha256, holder)}`,
    });
  }

  async #get(query: Record<string, unknown>): Promise<StoredMsg | null> {
    return await this.#o.jsm.streams.getMessage(
      `KV_${GC_BUCKET}`,
      query as unknown as { seq: number },
    ).catch((e) => {
      if (/no message found/i.test(String(e?.message))) return null;
      throw e;
    });
  }

  /** {@inheritDoc GcStore.intents} */
  async intents(kind: IntentKind, sha256: string, before?: number): Promise<IntentRecord[]> {
    if (!isSha256(sha256)) return [];
    const subject = `$KV.${GC_BUCKET}.${intentPrefix(kind)}.${sha256}.>`;
    const latest = new Map<string, IntentRecord>();
    let seq = 1;
    for (let n = 0;; n++) {
      const m = await this.#get({ seq, next_by_subj: subject });
      if (!m || (before !== undefined && m.seq >= before)) break;
      if (n >= MAX_INTENT_READS) {
        // More writes than any node makes: read as one intent that cannot be read (a commit
        // intent then keeps the blob; a delete intent is ignored).
        latest.set("", { seq: m.seq, storedAt: m.time.getTime(), sha256, value: undefined });
        break;
      }
      seq = m.seq + 1;
      if (operationOf(m.header) !== "PUT") {
        latest.delete(m.subject);
        continue;
      }
      latest.set(m.subject, {
        seq: m.seq,
        storedAt: m.time.getTime(),
        sha256,
        value: decodeIntent(m.data),
      });
    }
    return [...latest.values()];
  }

  #leaseRecord(m: StoredMsg | null): LeaseRecord | undefined {
    if (!m) return undefined;
    return {
      seq: m.seq,
      storedAt: m.time.getTime(),
      bytes: operationOf(m.header) === "PUT" ? m.data : undefined,
    };
  }

  /** {@inheritDoc GcStore.readLease} */
  async readLease(): Promise<LeaseRecord | undefined> {
    return this.#leaseRecord(await this.#get({ last_by_subj: `$KV.${GC_BUCKET}.${LEASE_KEY}` }));
  }

  /** {@inheritDoc GcStore.writeLease} */
  async writeLease(value: LeaseValue, expected: number): Promise<number | undefined> {
    try {
      const bytes = encodeLease(value);
      return expected === 0
        ? await this.#o.gc.create(LEASE_KEY, bytes)
        : await this.#o.gc.update(LEASE_KEY, bytes, expected);
    } catch (e) {
      if (/wrong last sequence|key exists/i.test(String((e as Error)?.message))) return undefined;
      throw e;
    }
  }

  /** {@inheritDoc GcStore.leaseAfter} */
  async leaseAfter(seq: number): Promise<LeaseRecord | undefined> {
    return this.#leaseRecord(
      await this.#get({ seq: seq + 1, next_by_subj: `$KV.${GC_BUCKET}.${LEASE_KEY}` }),
    );
  }
}
